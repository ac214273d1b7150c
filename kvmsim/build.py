"""Build the C pieces on demand with the system C compiler, into a cache directory.

``kvmsim run`` needs the preload shim; tests and ``make`` also build the C example client.
An output's name carries a hash of its source and compiler command, so a changed source or
compiler builds anew and concurrent builders never see a half-written file."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

SHIM_SOURCE = Path(__file__).resolve().parent / "shim" / "kvmsim_shim.c"


class BuildError(RuntimeError):
    """The compiler is missing or failed; ``str()`` is one line."""


def cache_dir() -> Path:
    base = os.environ.get("KVMSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvmsim"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def compile_c(
    sources: Sequence[Path],
    *,
    shared: bool = False,
    cc: str | None = None,
    flags: Sequence[str] = (),
    out_dir: Path | None = None,
) -> Path:
    """Compile ``sources`` to a program (or, ``shared``, a .so) and return its path."""
    cc = cc or os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise BuildError(f"the C compiler {cc!r} is not installed (set CC, or install gcc)")
    args = ["-O2", "-Wall", "-Wextra", *(["-shared", "-fPIC"] if shared else []), *flags]
    libs = ["-ldl", "-lpthread"] if shared else []
    digest = hashlib.sha256(repr((cc, args, libs)).encode())
    for src in sources:
        digest.update(src.read_bytes())
        for header in src.parent.glob("*.h"):
            digest.update(header.read_bytes())
    stem = sources[0].stem
    out = (out_dir or cache_dir()) / f"{stem}-{digest.hexdigest()[:16]}{'.so' if shared else ''}"
    if out.exists():
        return out
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{stem}-")
    os.close(fd)
    proc = subprocess.run([cc, *args, "-o", tmp, *map(str, sources), *libs], capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
        raise BuildError(f"{cc} failed on {sources[0].name}: {first}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return out


def build_shim(cc: str | None = None, *, flags: Sequence[str] = ()) -> Path:
    return compile_c([SHIM_SOURCE], shared=True, cc=cc, flags=flags)
