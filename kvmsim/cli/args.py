"""What ``kvmsim``'s subcommands parse beyond the family's shared pieces (:mod:`kvmcompat.args`):
the lab's counts and seed, and ``--hosts-dir``."""

from __future__ import annotations

import argparse

from kvmcompat.args import directory_arg, ranged

from ..kernel import profile

jobs_arg = ranged("a count of boots", 1, 1024)
fuzz_arg = ranged("a count of fuzz cases", 0, 100_000)
seed_arg = ranged("a seed (64 bits)", 0, 2**64 - 1)


def add_hosts_option(p: argparse.ArgumentParser, dest: str = "hosts_dir") -> None:
    """``--hosts-dir``; a subcommand's own (``dest="sub_hosts_dir"``) adds to the main one's."""
    p.add_argument(
        "--hosts-dir",
        dest=dest,
        type=directory_arg,
        action="append",
        default=[],
        metavar="DIR",
        help="also look up host profile names in DIR (repeatable; before $KVMSIM_HOSTS and the built-in ones)",
    )


def use_hosts_dirs(args: argparse.Namespace) -> None:
    """Put ``--hosts-dir`` first on the profile search path (``$KVMSIM_HOSTS``, which
    ``kvmsim run`` passes on to its command)."""
    profile.prepend_search_path(
        [*(getattr(args, "hosts_dir", None) or []), *(getattr(args, "sub_hosts_dir", None) or [])]
    )
