"""Build the C pieces on demand with the system C compiler, into a cache directory.

``kvmsim run`` needs the preload shim; tests and ``make`` also build the C example client.
An output's name carries a hash of its source and compiler command, so a changed source or
compiler builds anew and concurrent builders never see a half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

SHIM_SOURCE = Path(__file__).resolve().parent / "shim" / "kvmsim_shim.c"


class BuildError(RuntimeError):
    """The compiler is missing or failed; ``str()`` is one line."""


def private(path: Path) -> bool:
    """Only this user can have put ``path`` there: ours, not a symlink, not group/world-writable."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not stat.S_ISLNK(st.st_mode) and not st.st_mode & 0o022


_fallback: list[Path] = []


def private_fallback(reason: str) -> Path:
    """A fresh 0700 directory of this process, when the cache cannot be trusted (said once)."""
    if not _fallback:
        _fallback.append(Path(tempfile.mkdtemp(prefix="kvmsim-private-")))
        print(f"kvmsim: {reason}; building into {_fallback[0]} instead", file=sys.stderr)
    return _fallback[0]


def cache_dir() -> Path:
    """``$KVMSIM_CACHE``, else ``~/.cache/kvmsim``: created 0700, and used only while it is
    this user's and nobody else can write it (else a private directory, said once)."""
    base = os.environ.get("KVMSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvmsim"
    )
    path = Path(base)
    with contextlib.suppress(OSError):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not private(path):
        return private_fallback(f"the cache {path} is not private to uid {os.getuid()}")
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
    if out.exists() or out.is_symlink():
        if private(out):
            return out
        out = private_fallback(f"{out} is not this user's own file") / out.name  # never run a planted file
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
