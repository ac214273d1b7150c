"""The ABI's one error: input it cannot take."""

from __future__ import annotations


class InvalidInput(ValueError):
    """A revision name, number, struct size or kernel header the ABI cannot take: one line
    naming what was wrong and where.  Both command lines answer it with exit 2; the simulator's
    own bad inputs (a malformed profile, an unknown host) are its subclasses."""
