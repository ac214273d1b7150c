"""Which file a task's path names, walked as the kernel walks it (fs/namei.c), from the task's
own root, working directory or directory fd: this machine's file, the simulated /dev/kvm, or the
simulated host's copy of /proc/cpuinfo, /proc/device-tree or /sys/module/kvm* (kvmsim.kernel.hostfs,
written under the run's root).  The same walk as the preload shim's (``walk()`` in
shim/namei.c): component by component, each symlink's target spliced in where it was met,
and where a directory is this machine's /dev, /proc or /sys/module (by identity, not by
name) the next component decides.  /proc/self and /proc/thread-self are the task's, not the
supervisor's."""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Literal

import attrs

from .kstat import is_dev_kvm
from .uapi import (
    AT_FDCWD,
    PATH_MAX,
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
)

MAX_LINKS = 40  # the kernel's MAXSYMLINKS
NAME_MAX = 255
_OPATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC

Kind = Literal["real", "dev-kvm", "view"]


@attrs.frozen
class Found:
    kind: Kind
    base: str | None = None  # "view": the host tree's directory the file lies beneath (root/proc, ...)
    beneath: bytes = b""  # "view": the path below ``base``, never leaving it (see ``_beneath``)
    slash: bool = False  # "dev-kvm": named with a trailing slash (the kernel's ENOTDIR)


REAL = Found("real")
DEV_KVM = Found("dev-kvm")


def hinted(path: bytes) -> bool:
    """The cheap test, no system call: a component kvm, cpuinfo or device-tree, or kvm* after
    module (or first, for a relative walk that may start in /sys/module)."""
    parts = [p for p in path.split(b"/") if p]
    for i, p in enumerate(parts):
        if p in (b"kvm", b"cpuinfo", b"device-tree"):
            return True
        if p.startswith(b"kvm") and ((i and parts[i - 1] == b"module") or (i == 0 and not path.startswith(b"/"))):
            return True
    return False


def _id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _beneath(rest: bytes) -> bool:
    """Does ``rest`` (a simulated entry and what follows it: ``device-tree/cpus/..``) stay
    beneath its entry?  A ``..`` that climbs out of it leaves the host's files: that path is
    the program's own (the host tree holds no symlink, so the text decides)."""
    depth = 0
    for part in rest.split(b"/"):
        if part in (b"", b"."):
            continue
        depth += -1 if part == b".." else 1
        if depth <= 0:
            return False
    return True


class Namei:
    """Path lookups for the tasks of one run; ``root`` is where the host's files were written."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self.dirs: dict[str, tuple[int, int] | None] = {}
        for name in ("/dev", "/proc", "/sys/module"):
            try:
                self.dirs[name] = _id(os.stat(name))
            except OSError:
                self.dirs[name] = None
        proc = self.dirs["/proc"]
        self.procfs = None if proc is None else proc[0]  # procfs's device: its symlinks below /proc are magic

    def _is(self, st: os.stat_result, name: str) -> bool:
        return self.dirs.get(name) == _id(st)

    def lookup(self, task: int, dirfd: int, path: bytes, *, follow: bool = True, resolve: int = 0) -> Found:
        """What ``path`` names for ``task``, walked from ``dirfd`` as openat2(2) would with
        ``resolve`` (RESOLVE_*): REAL wherever the real kernel decides (its answer is the
        program's own), including where ``resolve`` refuses the walk (EXDEV, ELOOP)."""
        if not path or not hinted(path):
            return REAL
        if path == b"/dev/kvm" and not resolve:
            return DEV_KVM
        if len(path) >= PATH_MAX:
            return REAL
        if path.startswith(b"/") and resolve & RESOLVE_BENEATH:
            return REAL  # the kernel's EXDEV
        # the walk's root: the task's, or openat2's dirfd for RESOLVE_BENEATH and RESOLVE_IN_ROOT
        scoped = resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT)
        top = start_dir(task, dirfd, b".") if scoped else f"/proc/{task}/root"
        try:
            cur = os.open(top if scoped else start_dir(task, dirfd, path), _OPATH_DIR)
        except OSError:
            return REAL  # the real call says why
        with _Cursor(cur) as at:
            return self._walk(at, task, path, follow, resolve, top)

    @staticmethod
    def lands_on_dev_kvm(task: int, dirfd: int, path: bytes, *, follow: bool = True) -> bool:
        """Does a path that names nothing simulated reach /dev/kvm all the same (a symlink
        called anything)?  One stat from the task's view: an open must never reach this
        machine's device."""
        try:
            if path.startswith(b"/"):  # one stat, through the task's root (every ordinary open pays it)
                return is_dev_kvm(os.stat(f"/proc/{task}/root".encode() + path, follow_symlinks=follow))
            at = os.open(start_dir(task, dirfd, path), _OPATH_DIR)
            try:
                return is_dev_kvm(os.stat(path, dir_fd=at, follow_symlinks=follow))
            finally:
                os.close(at)
        except OSError:
            return False

    def _walk(self, at: _Cursor, task: int, path: bytes, follow: bool, resolve: int, top: str) -> Found:
        rest, links = path, 0
        try:
            start_dev, top_id = os.fstat(at.fd).st_dev, _id(os.stat(top))
        except OSError:
            return REAL
        while True:
            rest = rest.lstrip(b"/")
            if not rest:
                return REAL
            name, slash, after = rest.partition(b"/")
            after = after.lstrip(b"/")
            last = not after
            try:
                here = os.fstat(at.fd)
            except OSError:
                return REAL
            if resolve & RESOLVE_NO_XDEV and here.st_dev != start_dev:
                return REAL  # the kernel's EXDEV
            if self._is(here, "/dev") and name == b"kvm":
                return Found("dev-kvm", slash=bool(slash)) if last else REAL
            if self.root is not None and (
                (self._is(here, "/proc") and name in (b"cpuinfo", b"device-tree"))
                or (self._is(here, "/sys/module") and name.startswith(b"kvm"))
            ):
                if not _beneath(rest):
                    return REAL  # it climbs out of the host's files: the program's own path
                under = "proc" if self._is(here, "/proc") else "sys/module"
                return Found("view", base=os.path.join(self.root, under), beneath=rest)
            if name == b".." and _id(here) == top_id:
                if resolve & RESOLVE_BENEATH:
                    return REAL  # the kernel's EXDEV
                rest = after  # ``..`` at the task's root (or openat2's) stays there
                continue
            if (last and not follow) or len(name) > NAME_MAX:
                return REAL
            target: bytes | None = None
            magic = False
            if self._is(here, "/proc") and name in (b"self", b"thread-self"):  # the task's, not ours
                group = tgid(task)
                target = str(group).encode() if name == b"self" else f"{group}/task/{task}".encode()
            try:
                st = os.stat(name, dir_fd=at.fd, follow_symlinks=False)
                if target is None and stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=at.fd)
                    magic = here.st_dev == self.procfs and not self._is(here, "/proc")  # /proc/PID/fd/N, cwd, ...
                if target is not None:  # splice the target in front of what is left
                    links += 1
                    if resolve & RESOLVE_NO_SYMLINKS or (magic and resolve & RESOLVE_NO_MAGICLINKS):
                        return REAL  # the kernel's ELOOP
                    if links > MAX_LINKS or not target or len(target) + 1 + len(after) >= PATH_MAX:
                        return REAL
                    rest = target + (b"/" + after if after else b"")
                    if target.startswith(b"/"):
                        if resolve & RESOLVE_BENEATH:
                            return REAL  # the kernel's EXDEV
                        at.move(os.open(top, _OPATH_DIR))  # RESOLVE_IN_ROOT: dirfd is "/"
                    continue
                if last or not stat.S_ISDIR(st.st_mode):
                    return REAL
                at.move(os.open(name, _OPATH_DIR | os.O_NOFOLLOW, dir_fd=at.fd))
            except OSError:
                return REAL
            rest = after


def start_dir(task: int, dirfd: int, path: bytes) -> str:
    """Where the task's walk of ``path`` starts: its root, its working directory or ``dirfd``."""
    if path.startswith(b"/"):
        return f"/proc/{task}/root"
    return f"/proc/{task}/cwd" if dirfd == AT_FDCWD else f"/proc/{task}/fd/{dirfd}"


def tgid(task: int) -> int:
    """The thread group (process) of thread ``task``: what its /proc/self is."""
    with open(f"/proc/{task}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    return task


class _Cursor:
    """The directory a walk is in: an O_PATH fd, closed when the walk moves on or ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def move(self, fd: int) -> None:
        os.close(self.fd)
        self.fd = fd

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
