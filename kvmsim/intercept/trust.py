"""Where kvmsim may keep what it runs and writes: the trust rule, and files made below an
open directory so that no rename or symlink of a path can redirect them.

Two rules, for two kinds of place:

- A **private** directory (a cache, a run's own directory): owned by this user, not a symlink,
  writable by nobody else (no group/other write bit).  Every level kvmsim creates is held to
  it, and so are the directories above (:func:`safe_ancestors`).
- A **temporary base** (``$TMPDIR``, ``/tmp``): owned by this user or root, and either
  writable by nobody else or sticky (others may add entries, but cannot rename ours).  A base
  that fails is skipped for the next one, said once (:func:`temp_base`).

Below a trusted directory, :class:`Dir` does everything through its fd (``openat``,
``mkdirat``, ``renameat``, ``O_NOFOLLOW``): a file is written to a fresh name and renamed into
place, never through a symlink and never half-written."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import io
import os
import stat
import sys
import time

from ..kernel.errors import KvmsimError

__all__ = ["Dir", "UntrustedError", "private_stat", "safe_ancestors", "sweep", "temp_base", "temp_dir"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _empty(fd: int) -> None:
    """Remove everything below the directory open at ``fd``, through fds: a symlink is
    unlinked, never followed (``O_NOFOLLOW``), as ``shutil.rmtree(dir_fd=)`` would."""
    for entry in os.listdir(fd):
        with contextlib.suppress(OSError):  # what cannot go is left; the rest still goes
            try:
                os.unlink(entry, dir_fd=fd)
            except IsADirectoryError:
                below = os.open(entry, _DIR, dir_fd=fd)
                try:
                    _empty(below)
                finally:
                    os.close(below)
                os.rmdir(entry, dir_fd=fd)


class UntrustedError(KvmsimError, OSError):
    """A place another user could have prepared; ``str()`` is one line naming it."""

    def __str__(self) -> str:
        return str(self.args[0])


def private_stat(st: os.stat_result) -> bool:
    """Owned by this user, not a symlink, writable by nobody else."""
    return st.st_uid == os.getuid() and not stat.S_ISLNK(st.st_mode) and not st.st_mode & 0o022


def _base_stat(st: os.stat_result) -> bool:
    """A directory another user cannot have prepared for us: ours or root's, and nobody
    else may rename entries in it (not writable by others, or sticky)."""
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.getuid(), 0):
        return False
    return not st.st_mode & 0o022 or bool(st.st_mode & stat.S_ISVTX)


def safe_ancestors(path: str | os.PathLike[str]) -> str | None:
    """None when every directory from / down to ``path``'s parent passes the temporary-base
    rule (so nobody else can swap ``path`` itself), else why not, in one line."""
    lexical = os.path.dirname(os.path.abspath(path))
    real = os.path.realpath(lexical)
    for parent in dict.fromkeys((lexical, real)):  # the path as written, and where it leads
        for d in _directories_down_to(parent):
            try:
                st = os.lstat(d)
                if stat.S_ISLNK(st.st_mode):  # a link is as safe as its owner (its target is checked too)
                    if st.st_uid in (os.getuid(), 0):
                        continue
                    return f"{d} is a symlink of uid {st.st_uid}"
            except OSError as exc:
                return f"{d}: {exc.strerror}"
            if not _base_stat(st):
                return f"{d} is owned by uid {st.st_uid} with mode {st.st_mode & 0o7777:o}"
    return None


def _directories_down_to(path: str) -> list[str]:
    """/, then each directory down to the absolute ``path`` itself."""
    found = [path]
    while (up := os.path.dirname(found[-1])) != found[-1]:
        found.append(up)
    return found[::-1]


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(f"kvmsim: {message}", file=sys.stderr)


def _private_base() -> str:
    """The last resort: a 0700 ``tmp`` in this user's cache."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(home, "kvmsim", "tmp")
    with contextlib.suppress(OSError):
        os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UntrustedError(f"{path}: {exc.strerror}") from None
    if not private_stat(st) or safe_ancestors(path):
        raise UntrustedError(f"no safe temporary directory: {path} is not private to uid {os.getuid()}")
    return path


def _env_temp_dirs() -> list[str]:
    """The first of $TMPDIR, $TEMP, $TMP that names a directory this user can write, as
    tempfile.gettempdir() takes it, without importing tempfile (random, shutil: a start-up's
    worth)."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value and os.path.isdir(value) and os.access(value, os.W_OK | os.X_OK):
            return [os.path.abspath(value)]
    return []


def _mkdtemp(base: str, prefix: str) -> str:
    """tempfile.mkdtemp's rule: a new 0700 directory with a random name (EEXIST: another)."""
    for _ in range(100):
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{base}: no fresh name for a {prefix}* directory")


def temp_base() -> str:
    """The first of $TMPDIR, /tmp that no other user can have prepared; else a private one
    in this user's cache (said once)."""
    for candidate in dict.fromkeys((*_env_temp_dirs(), "/tmp")):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if _base_stat(st) and safe_ancestors(candidate) is None:
            return candidate
        fallback = _private_base()
        _say_once(f"{candidate} is not safe for uid {os.getuid()} (others may rename entries there); using {fallback}")
        return fallback
    return _private_base()


def temp_dir(prefix: str) -> Dir:
    """A fresh 0700 directory in :func:`temp_base`, held open and locked (``flock``) for as
    long as this process lives: :func:`sweep` knows a directory left by a dead one."""
    base = temp_base()
    sweep(base, prefix)
    path = _mkdtemp(base, prefix)
    d = Dir.open(path, created=True)
    fcntl.flock(d.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return d


SWEEP_AGE = 60.0  # seconds: a younger directory may be one another process has made but not yet locked


def sweep(base: str, prefix: str) -> list[str]:
    """Remove the ``prefix*`` directories of ours in ``base`` whose process has died (nobody
    holds their lock: killed with SIGKILL, say), once they are a minute old.  What was removed."""
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        try:
            d = Dir.open(os.path.join(base, name))
        except OSError:
            continue  # not ours, or not a directory: not ours to remove
        if time.time() - os.fstat(d.fd).st_mtime < SWEEP_AGE:
            d.close()
            continue
        try:
            fcntl.flock(d.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            d.close()  # alive
            continue
        d.remove()
        removed.append(d.path)
    return removed


class Dir:
    """A trusted directory held by its fd; names below it are resolved from the fd."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd, self.path = fd, path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, created: bool = False) -> Dir:
        """Open ``path`` (no symlink) and check it is private; ``created``: we just made it,
        so its ancestors are checked too."""
        path = os.path.abspath(path)
        try:
            fd = os.open(path, _DIR)
        except OSError as exc:
            raise UntrustedError(f"{path}: {exc.strerror}") from None
        d = cls(fd, path)
        d._check(path)
        if created and (why := safe_ancestors(path)):
            d.close()
            raise UntrustedError(f"{path}: {why}")
        return d

    @classmethod
    def private(cls, path: str | os.PathLike[str]) -> Dir:
        """``path`` and every level above it that does not exist yet, made 0700; each level
        that exists must be ours and private, or be a safe ancestor."""
        path = os.path.abspath(path)
        os.makedirs(path, mode=0o700, exist_ok=True)
        if why := safe_ancestors(path):
            raise UntrustedError(f"{path}: not private to uid {os.getuid()}: {why}")
        return cls.open(path)

    def _check(self, where: str) -> None:
        st = os.fstat(self.fd)
        if not private_stat(st):
            self.close()
            raise UntrustedError(
                f"{where} is not private to uid {os.getuid()} (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o})"
            )

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.path, name)

    def subdir(self, name: str, mode: int = 0o700) -> Dir:
        """The directory ``name`` below this one (made if missing), which must be private."""
        parts = [p for p in name.split("/") if p]
        current: Dir = self
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=current.fd)
            try:
                fd = os.open(part, _DIR, dir_fd=current.fd)
            except OSError as exc:
                raise UntrustedError(f"{current / part}: {exc.strerror} (a symlink or not a directory)") from None
            child = Dir(fd, current / part)
            if current is not self:
                current.close()
            child._check(child.path)
            current = child
        return current if current is not self else Dir(os.dup(self.fd), self.path)

    def write(self, name: str, data: bytes | str, mode: int = 0o600) -> str:
        """Write ``name`` atomically: a fresh file beside it, renamed over it (a symlink
        there is replaced, never followed).  Returns its path."""
        blob = data.encode() if isinstance(data, str) else data
        tmp = f".{name}.{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        return self / name

    def open_file(self, name: str) -> io.BufferedReader | None:
        """``name`` opened for reading if it is a regular file of ours that nobody else may
        write (never through a symlink), else None."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not private_stat(st):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")

    def read(self, name: str) -> bytes | None:
        """``name``'s bytes, as :meth:`open_file` finds it, else None."""
        f = self.open_file(name)
        if f is None:
            return None
        with f:
            return f.read()

    def stat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return None

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def remove(self) -> None:
        """Remove this directory and everything below it (through the fd: a symlink planted
        inside is unlinked, never followed), then close it."""
        if self.fd < 0:
            return
        _empty(self.fd)
        self.close()
        with contextlib.suppress(OSError):
            os.rmdir(self.path)

    def remove_at_exit(self) -> Dir:
        atexit.register(self.remove)
        return self
