"""A file of a task, pinned: ``pidfd_open(2)`` of the thread and ``pidfd_getfd(2)`` of its fd.
The supervisor decides on the very file the fd named when it looked (a ``dup2`` racing the
decision changes nothing), and needs the ptrace access the task allows it: a task it may not
inspect (not dumpable, in a run without CAP_SYS_PTRACE) is EPERM, as ``process_vm_readv``."""

from __future__ import annotations

import ctypes
import errno
import os

SYS_PIDFD_GETFD = 438  # arch/x86/entry/syscalls/syscall_64.tbl
PIDFD_THREAD = os.O_EXCL  # include/uapi/linux/pidfd.h (Linux 6.9): a thread's own fd table

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def getfd(tid: int, fd: int) -> int:
    """A duplicate of thread ``tid``'s ``fd`` in this process (close it), or OSError: EBADF
    where the thread has no such fd (or it is an O_PATH one), EPERM where it may not be
    inspected, ESRCH where it is gone."""
    if fd < 0:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    try:
        pidfd = os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        pidfd = os.pidfd_open(tid)  # before Linux 6.9: the thread group's table
    try:
        got = _syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(got)
    finally:
        os.close(pidfd)
