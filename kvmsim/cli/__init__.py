"""The ``kvmsim`` command line (``main``), and the options it shares with the client's
``kvm-compat-caps`` (``args``).  ``main`` loads on call: importing ``kvmsim.cli.args`` (what
the client does) loads nothing of the simulator."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from .commands import main as run

    return run(argv)
