"""Build the C pieces on demand with the system C compiler, into a cache directory.

``kvmsim run`` needs the preload shim or the seccomp launcher; tests and ``make`` also build
the C example client.  An output's name carries a fingerprint of its sources and compiler
command, so a changed source or compiler builds anew and concurrent builders never see a
half-written file.  Paths are strings inside (``kvmsim run`` starts without pathlib);
:func:`compile_c` gives a Path (the preload shim's is kvmsim.preload.library's)."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..kernel.errors import KvmsimError
from . import trust

if TYPE_CHECKING:
    from pathlib import Path

StrPath = str | os.PathLike[str]


class BuildError(KvmsimError, RuntimeError):
    """The compiler is missing or failed, or a built file is not the one we built; ``str()``
    is one line."""


def private(path: StrPath) -> bool:
    """Only this user can have put ``path`` there: ours, not a symlink, not group/world-writable."""
    try:
        return trust.private_stat(os.lstat(path))
    except OSError:
        return False


_fallback: list[trust.Dir] = []


def private_fallback(reason: str) -> str:
    """A fresh 0700 directory of this process in a safe temporary base, when the cache cannot
    be trusted (said once); removed when the process exits."""
    if not _fallback:
        _fallback.append(trust.temp_dir("kvmsim-private-").remove_at_exit())
        print(f"kvmsim: {reason}; building into {_fallback[0].path} instead", file=sys.stderr)
    return _fallback[0].path


def cache_dir() -> str:
    """``$KVMSIM_CACHE``, else ``~/.cache/kvmsim``: created 0700, and used only while it is
    this user's and nobody else can write it or the directories above it (else a private
    directory, said once)."""
    base = os.environ.get("KVMSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvmsim"
    )
    path = base
    with contextlib.suppress(OSError):
        os.makedirs(path, mode=0o700, exist_ok=True)
    if not private(path) or trust.safe_ancestors(path):
        return private_fallback(f"the cache {path} is not private to uid {os.getuid()}")
    return path


# The identity (st_dev, st_ino) of each file this process built or accepted as its own:
# what preloadable() holds the file at that path to, right before it is loaded.
_identity: dict[str, tuple[int, int]] = {}


def _opened_stat(path: StrPath, mode: int | None = None) -> os.stat_result:
    """The stat of the file ``path`` opens to, never through a symlink (after ``fchmod`` to
    ``mode`` when given): the identity of what is there now."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _accept(path: str) -> bool:
    """Take a cached ``path`` as ours (a regular file of this user's that nobody else can
    write, in a directory nobody else can write) and remember its identity."""
    try:
        st = _opened_stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not trust.private_stat(st) or not private(os.path.dirname(path)):
        return False
    _identity[path] = (st.st_dev, st.st_ino)
    return True


def preloadable(path: StrPath) -> str:
    """``path`` as it may go into LD_PRELOAD: checked right before, that it is still the file
    this process built (its identity), this user's, and writable by nobody else."""
    why = "not built by this process"
    path = os.fspath(path)
    if path in _identity:
        try:
            st = _opened_stat(path)
        except OSError as exc:
            why = exc.strerror or "cannot open it"
        else:
            if (st.st_dev, st.st_ino) != _identity[path]:
                why = "it was replaced after it was built"
            elif not trust.private_stat(st) or not private(os.path.dirname(path)):
                why = "others may write it"
            else:
                return path
    raise BuildError(f"{path}: refusing to preload it: {why}")


def fingerprint(*parts: bytes) -> str:
    """A build's cache key: CRC-32 and Adler-32 of the same bytes, 64 bits.  A key, not a
    guard (what runs is held to its owner, mode and identity: :func:`preloadable`); hashlib
    would load OpenSSL, a start-up's worth for every ``kvmsim run``."""
    crc, adler = 0, 1
    for part in parts:
        crc, adler = zlib.crc32(part, crc), zlib.adler32(part, adler)
    return f"{crc:08x}{adler:08x}"


def build(
    sources: Sequence[StrPath],
    *,
    shared: bool = False,
    cc: str | None = None,
    flags: Sequence[str] = (),
    out_dir: StrPath | None = None,
    headers: Mapping[str, str] | None = None,
    name: str | None = None,
) -> str:
    """Compile ``sources`` to a program (or, ``shared``, a .so) and return its path.
    ``headers`` are generated headers (name -> text), written beside the output and found
    with ``-I``; their text is part of the cache key.  The output is named after ``name``, else
    the first source.  A build in the cache is used as it is (no compiler needed)."""
    cc = cc or os.environ.get("CC") or "cc"
    args = ["-O2", "-Wall", "-Wextra", *(["-shared", "-fPIC"] if shared else []), *flags]
    libs = ["-ldl", "-lpthread"] if shared else []
    paths = [os.fspath(src) for src in sources]
    parts = [repr((cc, args, libs, sorted((headers or {}).items()))).encode()]
    for src in paths:
        parts.append(_read(src))
        where = os.path.dirname(src) or "."
        parts += [_read(os.path.join(where, h)) for h in sorted(os.listdir(where)) if h.endswith(".h")]
    key = fingerprint(*parts)
    stem = name or os.path.splitext(os.path.basename(paths[0]))[0]
    out = os.path.join(
        os.fspath(out_dir) if out_dir is not None else cache_dir(), f"{stem}-{key}{'.so' if shared else ''}"
    )
    if os.path.lexists(out):
        if _accept(out):
            return out
        out = os.path.join(
            private_fallback(f"{out} is not this user's own file"), os.path.basename(out)
        )  # never run a planted file
    return _compile(cc, args, libs, paths, out, headers, key)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _compile(
    cc: str, args: list[str], libs: list[str], sources: list[str], out: str, headers: Mapping[str, str] | None, key: str
) -> str:
    import shutil
    import subprocess
    import tempfile

    if shutil.which(cc) is None:
        raise BuildError(f"the C compiler {cc!r} is not installed (set CC, or install gcc)")
    stem = os.path.basename(out).split("-")[0]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=f".{stem}-")
    os.close(fd)
    include: list[str] = []
    if headers:
        with trust.Dir.open(os.path.dirname(out)) as where, where.subdir(f"include-{key}") as d:
            for header, text in headers.items():
                d.write(header, text, 0o644)
            include = ["-I", d.path]
    try:
        proc = subprocess.run([cc, *args, *include, "-o", tmp, *sources, *libs], capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
            raise BuildError(f"{cc} failed on {os.path.basename(sources[0])}: {first}")
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
    _identity[out] = (st.st_dev, st.st_ino)
    return out


def compile_c(sources: Sequence[StrPath], **options: Any) -> Path:
    """:func:`build` (the same options), as a Path."""
    from pathlib import Path

    return Path(build(sources, **options))
