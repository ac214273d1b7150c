"""The ``kvmsim`` command line (``main``, loaded on call); ``args`` holds its own options
beyond the family's shared ones (``kvmcompat.args``)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from .commands import main as run

    return run(argv)
