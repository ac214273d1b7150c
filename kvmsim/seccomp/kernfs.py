"""The host's files as procfs and sysfs (kernfs) serve them to a task, from the run's copy.

The supervisor often runs as root and acts for a task that may not be: it opens a host file
only **strictly beneath** the host tree (``openat2`` with ``RESOLVE_BENEATH``, no symlink, no
magic link, no other mount: a planted symlink or a ``..`` cannot lead it elsewhere), only
**read-only**, and answers a write open as the real kernel does, decided with the task's
credentials (kvmsim.seccomp.cred), never its own.  What this machine's kernel answered
(Linux 6.18, root with every capability and uid 65534 with none), and what follows here:

    open of            O_WRONLY/O_RDWR   O_RDONLY|O_TRUNC    O_CREAT (missing)   a directory for writing
    /proc/cpuinfo      root ok, else     root ok, else       EACCES              EISDIR
                       EACCES            EACCES
    sysfs (0444)       EACCES            root ok, else       EACCES              EISDIR
                                         EACCES

``O_CREAT|O_EXCL`` of an existing file is EEXIST; ``O_TMPFILE`` in a directory EOPNOTSUPP for
root, EACCES for others.  One choice: a write open of ``/proc/cpuinfo`` is EACCES for root too
(the real procfs opens it and fails the write with EIO); sysfs's answer, so that no program
can change the copy another program of the run (or of a server) reads.  ``O_TRUNC`` never
truncates the copy.  ``O_PATH`` gives a read-only fd: seccomp cannot install an O_PATH file."""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from . import uapi
from .cred import CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, Cred
from .kstat import Kstat

# the walk the supervisor allows itself below the host tree
BENEATH = uapi.RESOLVE_BENEATH | uapi.RESOLVE_NO_SYMLINKS | uapi.RESOLVE_NO_MAGICLINKS | uapi.RESOLVE_NO_XDEV
KEPT = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY  # what a read-only reopen keeps
MAY_EXEC, MAY_WRITE, MAY_READ = 1, 2, 4

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: bytes, flags: int, resolve: int) -> int:
    """openat2(2): the new fd, or OSError with the kernel's errno."""
    how = ctypes.create_string_buffer(uapi.OPEN_HOW.pack(flags, 0, resolve), uapi.OPEN_HOW.size)
    fd = _syscall(
        ctypes.c_long(uapi.NR["openat2"]), ctypes.c_int(dirfd), ctypes.c_char_p(path), how,
        ctypes.c_size_t(uapi.OPEN_HOW.size),
    )  # fmt: skip
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def _beneath(base: str, path: bytes, flags: int) -> int:
    dirfd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return openat2(dirfd, path, flags | os.O_CLOEXEC, BENEATH)
    finally:
        os.close(dirfd)


def open_file(base: str, path: bytes, flags: int, cred: Cred) -> int:
    """The task's ``open(path, flags)`` of a host file below ``base``: a read-only fd for the
    supervisor to install, or OSError with the kernel's errno (see the table above)."""
    if flags & uapi.O_TMPFILE_BIT and (not flags & os.O_DIRECTORY or flags & os.O_ACCMODE == os.O_RDONLY):
        raise OSError(errno.EINVAL, "O_TMPFILE")  # build_open_flags()
    try:
        found = _beneath(base, path, os.O_PATH | (flags & (os.O_DIRECTORY | os.O_NOFOLLOW)))
    except FileNotFoundError:
        if flags & os.O_CREAT and _parent_exists(base, path):
            raise OSError(errno.EACCES, "no create in procfs or sysfs") from None
        raise
    except NotADirectoryError:
        if flags & os.O_CREAT and path.endswith(b"/"):
            raise OSError(errno.EISDIR, "O_CREAT of a name with a trailing slash") from None
        raise
    try:
        mode = os.fstat(found).st_mode
    finally:
        os.close(found)
    if flags & os.O_PATH == os.O_PATH:  # a path fd: the other flags mean nothing (do_o_path)
        return _beneath(base, path, os.O_RDONLY | (flags & (os.O_DIRECTORY | os.O_NOFOLLOW)))
    privileged = cred.capable(CAP_DAC_OVERRIDE)
    writes = flags & os.O_ACCMODE != os.O_RDONLY
    if flags & os.O_CREAT and flags & os.O_EXCL:
        raise OSError(errno.EEXIST, "exists")
    if stat.S_ISDIR(mode):
        if flags & uapi.O_TMPFILE_BIT:
            raise OSError(errno.EOPNOTSUPP if privileged else errno.EACCES, "O_TMPFILE")
        if writes or flags & os.O_CREAT:
            raise OSError(errno.EISDIR, "a directory")
    elif writes:
        raise OSError(errno.EACCES, "read-only")  # kernfs_fop_open(): no write operation
    elif flags & os.O_TRUNC and not privileged:
        raise OSError(errno.EACCES, "O_TRUNC of a read-only file")  # may_open(): MAY_WRITE
    return _beneath(base, path, os.O_RDONLY | (flags & KEPT))


def _parent_exists(base: str, path: bytes) -> bool:
    parent = path.rstrip(b"/").rpartition(b"/")[0] or b"."
    try:
        os.close(_beneath(base, parent, os.O_PATH | os.O_DIRECTORY))
    except OSError:
        return False
    return True


def stat_file(base: str, path: bytes, *, follow: bool = True) -> Kstat:
    """A host file's stat as procfs and sysfs show it: root's, whoever wrote the copy."""
    found = _beneath(base, path, os.O_PATH | (0 if follow else os.O_NOFOLLOW))
    try:
        st = Kstat.of(os.fstat(found))
    finally:
        os.close(found)
    return Kstat(st.mode, st.ino, st.dev, st.rdev, st.nlink, 0, 0, st.size, st.blksize, st.blocks,
                 st.atime_ns, st.mtime_ns, st.ctime_ns)  # fmt: skip


def may_access(st: Kstat, cred: Cred, mask: int, *, eaccess: bool = False) -> int:
    """access(2)'s answer for the task (``generic_permission``): 0 or EACCES.  With the real
    uid, unless ``eaccess`` (AT_EACCESS); the file's owner and group are root."""
    mask &= MAY_READ | MAY_WRITE | MAY_EXEC
    uid = cred.fsuid if eaccess else cred.uid
    bits = (st.mode >> 6 if uid == st.uid else st.mode) & 7
    if not mask & ~bits:
        return 0
    is_dir = stat.S_ISDIR(st.mode)

    def capable(cap: int) -> bool:
        return cred.capable(cap, access=not eaccess)

    if capable(CAP_DAC_OVERRIDE) and (not mask & MAY_EXEC or is_dir or st.mode & 0o111):
        return 0
    if capable(CAP_DAC_READ_SEARCH) and not mask & MAY_WRITE and (is_dir or not mask & MAY_EXEC):
        return 0
    return errno.EACCES
