"""The preload shim's library: ``shim/*.c`` (one file a job, ``shim.h`` between them), built
by the core's cached builder with its protocol constants generated from the Python side
(``shimdefs``: ``kvmsim_wire.h``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..intercept.build import compile_c

SHIM_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "shim")


def build_shim(cc: str | None = None, *, flags: Sequence[str] = ()) -> Path:
    """The preload shim, with its protocol constants generated from the Python side."""
    from .shimdefs import header

    return compile_c(
        shim_sources(),
        shared=True,
        cc=cc,
        flags=["-fvisibility=hidden", *flags],
        headers={"kvmsim_wire.h": header()},
        name="kvmsim_shim",
    )


def shim_sources() -> list[str]:
    return sorted(os.path.join(SHIM_DIR, n) for n in os.listdir(SHIM_DIR) if n.endswith(".c"))
