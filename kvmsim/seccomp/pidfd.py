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


class Pidfds:
    """The pidfds of the threads a supervisor answers, kept between calls (a thread makes many):
    a pidfd names its thread for good, so a reused tid is a new pidfd (the old one's
    ``pidfd_getfd`` is ESRCH, and it is opened again)."""

    MAX = 256  # threads remembered; past that the table starts again

    def __init__(self) -> None:
        self._open: dict[int, int] = {}

    def getfd(self, tid: int, fd: int) -> int:
        """A duplicate of thread ``tid``'s ``fd`` in this process (close it), or OSError: EBADF
        where the thread has no such fd (or it is an O_PATH one), EPERM where it may not be
        inspected, ESRCH where it is gone."""
        if fd < 0:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        for _attempt in range(2):
            pidfd = self._open.get(tid)
            if pidfd is None:
                if len(self._open) >= self.MAX:
                    self.close()
                pidfd = self._open[tid] = _pidfd_open(tid)
            try:
                return _getfd(pidfd, fd)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
                os.close(self._open.pop(tid))  # that thread is gone: its tid may be another's now
        raise OSError(errno.ESRCH, os.strerror(errno.ESRCH))

    def close(self) -> None:
        for pidfd in self._open.values():
            os.close(pidfd)
        self._open.clear()


def _pidfd_open(tid: int) -> int:
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return os.pidfd_open(tid)  # before Linux 6.9: the thread group's table


def _getfd(pidfd: int, fd: int) -> int:
    got = _syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(got)
