"""The argparse pieces every command line of this family parses the same way (``kvm-compat-caps``
and ``kvmsim``): one-line usage errors with exit 2, numbers that must fit the C type they end up
in, and the revision options (``--cap``, ``--ioctl-nr``, ``--header``) as ABI values."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, NoReturn

from kvmsim.uapi import REVISIONS, AbiRevision, InvalidInput, revision, revision_from_header

__all__ = [
    "EXIT_USAGE",
    "OneLineParser",
    "RawDescriptionFormatter",
    "TerminalWidth",
    "add_revision_options",
    "cap_arg",
    "directory_arg",
    "int_arg",
    "nr_arg",
    "ranged",
    "revisions",
    "terminal_columns",
    "u64_arg",
]

EXIT_USAGE = 2


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, found the same way, without importing shutil
    (and with it bz2 and lzma, a tenth of the client's start) as argparse does for each help."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(1).columns
    except OSError:
        return 80


class TerminalWidth(argparse.HelpFormatter):
    """A formatter at the terminal's width, less argparse's own margin of two."""

    def __init__(self, prog: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("width", terminal_columns() - 2)
        super().__init__(prog, *args, **kwargs)


class RawDescriptionFormatter(TerminalWidth, argparse.RawDescriptionHelpFormatter):
    """argparse's RawDescriptionHelpFormatter at the terminal's width."""


class OneLineParser(argparse.ArgumentParser):
    """Bad usage is one line on stderr and exit 2, not argparse's usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", TerminalWidth)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def int_arg(text: str) -> int:
    """An integer in any base Python reads (``250``, ``0xe4``)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def ranged(ctype: str, lo: int, hi: int) -> Callable[[str], int]:
    """An :func:`int_arg` that must fit the C type it ends up in (checked where it is parsed)."""

    def parse(text: str) -> int:
        value = int_arg(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} does not fit {ctype} ({lo}..{hi})")
        return value

    parse.__name__ = ctype  # argparse names the type in its messages
    return parse


# KVM_CHECK_EXTENSION's argument travels as a C int through fcntl.ioctl (and as the kernel's
# long); an ioctl's nr is its 8-bit field; a struct size is the struct's __u64 size field
cap_arg = ranged("a C int", -(2**31), 2**31 - 1)
nr_arg = ranged("an ioctl nr (8 bits)", 0, 0xFF)
u64_arg = ranged("a __u64", 0, 2**64 - 1)


def directory_arg(text: str) -> str:
    """A directory that must exist (``--hosts-dir``)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    return text


def add_revision_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cap", type=cap_arg, metavar="N", help="override KVM_CAP_PPC_COMPAT_CAPS (a C int)")
    p.add_argument("--ioctl-nr", type=nr_arg, metavar="NR", help="override the ioctl's nr (0..0xff, e.g. 0xb8)")
    p.add_argument("--header", metavar="PATH", help="read the numbers and struct layout from a kernel's <linux/kvm.h>")


def revisions(args: argparse.Namespace) -> dict[str, AbiRevision]:
    """Every revision with the command line's overrides; a ``--header`` replaces the revision
    its macro names (``_IOR``: v4, ``_IO``: v5), and ``--abi`` must then agree with it."""
    revs = {name: revision(name, cap=args.cap, nr=args.ioctl_nr) for name in REVISIONS}
    if args.header:
        try:
            with open(args.header) as f:
                text = f.read()
        except OSError as exc:
            raise InvalidInput(f"{args.header}: {exc.strerror}") from None
        rev = revision_from_header(text, args.header)
        if args.abi and args.abi != rev.name:
            raise InvalidInput(f"{args.header}: defines a {rev.name} ioctl, but --abi {args.abi} was given")
        revs[rev.name] = rev
        args.abi = rev.name
    return revs
