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
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..kernel.errors import KvmsimError
from . import trust

SHIM_DIR = Path(__file__).resolve().parent / "shim"  # one .c file a job, shim.h between them


class BuildError(KvmsimError, RuntimeError):
    """The compiler is missing or failed, or a built file is not the one we built; ``str()``
    is one line."""


def private(path: Path) -> bool:
    """Only this user can have put ``path`` there: ours, not a symlink, not group/world-writable."""
    try:
        return trust.private_stat(os.lstat(path))
    except OSError:
        return False


_fallback: list[trust.Dir] = []


def private_fallback(reason: str) -> Path:
    """A fresh 0700 directory of this process in a safe temporary base, when the cache cannot
    be trusted (said once); removed when the process exits."""
    if not _fallback:
        _fallback.append(trust.temp_dir("kvmsim-private-").remove_at_exit())
        print(f"kvmsim: {reason}; building into {_fallback[0].path} instead", file=sys.stderr)
    return Path(_fallback[0].path)


def cache_dir() -> Path:
    """``$KVMSIM_CACHE``, else ``~/.cache/kvmsim``: created 0700, and used only while it is
    this user's and nobody else can write it or the directories above it (else a private
    directory, said once)."""
    base = os.environ.get("KVMSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvmsim"
    )
    path = Path(base)
    with contextlib.suppress(OSError):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not private(path) or trust.safe_ancestors(path):
        return private_fallback(f"the cache {path} is not private to uid {os.getuid()}")
    return path


# The identity (st_dev, st_ino) of each file this process built or accepted as its own:
# what preloadable() holds the file at that path to, right before it is loaded.
_identity: dict[str, tuple[int, int]] = {}


def _opened_stat(path: Path | str, mode: int | None = None) -> os.stat_result:
    """The stat of the file ``path`` opens to, never through a symlink (after ``fchmod`` to
    ``mode`` when given): the identity of what is there now."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _accept(path: Path) -> bool:
    """Take a cached ``path`` as ours (a regular file of this user's that nobody else can
    write, in a directory nobody else can write) and remember its identity."""
    try:
        st = _opened_stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not trust.private_stat(st) or not private(path.parent):
        return False
    _identity[str(path)] = (st.st_dev, st.st_ino)
    return True


def preloadable(path: Path) -> str:
    """``path`` as it may go into LD_PRELOAD: checked right before, that it is still the file
    this process built (its identity), this user's, and writable by nobody else."""
    why = "not built by this process"
    if str(path) in _identity:
        try:
            st = _opened_stat(path)
        except OSError as exc:
            why = exc.strerror or "cannot open it"
        else:
            if (st.st_dev, st.st_ino) != _identity[str(path)]:
                why = "it was replaced after it was built"
            elif not trust.private_stat(st) or not private(path.parent):
                why = "others may write it"
            else:
                return str(path)
    raise BuildError(f"{path}: refusing to preload it: {why}")


def compile_c(
    sources: Sequence[Path],
    *,
    shared: bool = False,
    cc: str | None = None,
    flags: Sequence[str] = (),
    out_dir: Path | None = None,
    headers: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Path:
    """Compile ``sources`` to a program (or, ``shared``, a .so) and return its path.
    ``headers`` are generated headers (name -> text), written beside the output and found
    with ``-I``; their text is part of the cache key.  The output is named after ``name``, else
    the first source."""
    cc = cc or os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise BuildError(f"the C compiler {cc!r} is not installed (set CC, or install gcc)")
    args = ["-O2", "-Wall", "-Wextra", *(["-shared", "-fPIC"] if shared else []), *flags]
    libs = ["-ldl", "-lpthread"] if shared else []
    digest = hashlib.sha256(repr((cc, args, libs, sorted((headers or {}).items()))).encode())
    for src in sources:
        digest.update(src.read_bytes())
        for header in src.parent.glob("*.h"):
            digest.update(header.read_bytes())
    stem = name or sources[0].stem
    out = (out_dir or cache_dir()) / f"{stem}-{digest.hexdigest()[:16]}{'.so' if shared else ''}"
    if out.exists() or out.is_symlink():
        if _accept(out):
            return out
        out = private_fallback(f"{out} is not this user's own file") / out.name  # never run a planted file
    import tempfile  # only when something is built

    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{stem}-")
    os.close(fd)
    include: list[str] = []
    if headers:
        with trust.Dir.open(out.parent) as where, where.subdir(f"include-{digest.hexdigest()[:16]}") as d:
            for name, text in headers.items():
                d.write(name, text, 0o644)
            include = ["-I", d.path]
    try:
        proc = subprocess.run(
            [cc, *args, *include, "-o", tmp, *map(str, sources), *libs], capture_output=True, text=True
        )
        if proc.returncode != 0:
            first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
            raise BuildError(f"{cc} failed on {sources[0].name}: {first}")
        # the linker writes a new inode: the one we take is what we open here, in our own directory
        st = _opened_stat(tmp, 0o755)
        try:
            # placed only if nobody has placed it meanwhile: a concurrent builder of the same
            # source (pytest -n 2) must not swap the file another process has just checked
            os.link(tmp, out)
        except FileExistsError:
            if _accept(out):  # the same build, placed first by someone else of ours
                return out
            raise BuildError(f"{out}: appeared while building, and is not this user's own file") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _identity[str(out)] = (st.st_dev, st.st_ino)
    return out


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


def shim_sources() -> list[Path]:
    return sorted(SHIM_DIR.glob("*.c"))
