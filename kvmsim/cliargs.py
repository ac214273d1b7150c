"""What both command lines (``kvmsim``, ``kvm-compat-caps``) parse the same way."""

from __future__ import annotations

import argparse
from typing import NoReturn

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
