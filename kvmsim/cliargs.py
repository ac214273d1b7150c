"""What both command lines (``kvmsim``, ``kvm-compat-caps``) parse the same way."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NoReturn

from .uapi import REVISIONS, AbiRevision, revision, revision_from_header

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """Bad usage is one line on stderr and exit 2, not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def int_arg(text: str) -> int:
    """An integer in any base Python reads (``250``, ``0xe4``)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def add_revision_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cap", type=int_arg, metavar="N", help="override KVM_CAP_PPC_COMPAT_CAPS")
    p.add_argument("--ioctl-nr", type=int_arg, metavar="NR", help="override the ioctl's nr (e.g. 0xb8)")
    p.add_argument("--header", metavar="PATH", help="read the numbers and struct layout from a kernel's <linux/kvm.h>")


def add_hosts_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hosts-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="also look up host profile names in DIR (repeatable; before $KVMSIM_HOSTS and the built-in ones)",
    )


def use_hosts_dirs(args: argparse.Namespace) -> None:
    """Put ``--hosts-dir`` first on the profile search path (``$KVMSIM_HOSTS``, which
    ``kvmsim run`` passes on to its command)."""
    dirs = getattr(args, "hosts_dir", None) or []
    if dirs:
        current = os.environ.get("KVMSIM_HOSTS")
        os.environ["KVMSIM_HOSTS"] = os.pathsep.join([*dirs, *([current] if current else [])])


def revisions(args: argparse.Namespace) -> dict[str, AbiRevision]:
    """Every revision with the command line's overrides; a ``--header`` replaces the revision
    its macro names (``_IOR``: v4, ``_IO``: v5), and ``--abi`` must then agree with it."""
    revs = {name: revision(name, cap=args.cap, nr=args.ioctl_nr) for name in REVISIONS}
    if args.header:
        try:
            text = Path(args.header).read_text()
        except OSError as exc:
            raise ValueError(f"{args.header}: {exc.strerror}") from None
        rev = revision_from_header(text, args.header)
        if args.abi and args.abi != rev.name:
            raise ValueError(f"{args.header}: defines a {rev.name} ioctl, but --abi {args.abi} was given")
        revs[rev.name] = rev
        args.abi = rev.name
    return revs
