"""A stopped task's address space, as the simulated kernel's uaccess sees it:
``process_vm_readv``/``process_vm_writev`` (mm/process_vm_access.c), which fault where the
task's own access would (an unmapped page, a write to a read-only one), unlike
/proc/PID/mem's FOLL_FORCE.  A copy is bounded as the shim's window is (``MAX_USER_COPY``)."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from ..intercept.wire import MAX_USER_COPY  # the shim's window: the same bound both ways
from ..kernel.usermem import ADDRESS_LIMIT, Fault, UserAccess


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_IOV_FN = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.POINTER(_Iovec),
    ctypes.c_ulong,
    ctypes.POINTER(_Iovec),
    ctypes.c_ulong,
    ctypes.c_ulong,
    use_errno=True,
)
_readv = _IOV_FN(("process_vm_readv", _libc))
_writev = _IOV_FN(("process_vm_writev", _libc))


def _transfer(fn: Any, pid: int, local: ctypes.Array[ctypes.c_char], addr: int, n: int) -> int:
    mine = _Iovec(ctypes.addressof(local), n)
    theirs = _Iovec(addr, n)
    done = fn(pid, ctypes.byref(mine), 1, ctypes.byref(theirs), 1, 0)
    if done < 0:
        err = ctypes.get_errno()
        if err in (errno.EFAULT, errno.ENOMEM, errno.EIO):
            return 0  # nothing mapped there: the task's own access faults
        raise OSError(err, os.strerror(err))
    return int(done)


class TaskMemory(UserAccess):
    """User memory of task ``pid`` (a thread id: the one that made the call)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.writes: list[tuple[int, bytes]] = []  # what the kernel wrote, for the trace

    def read(self, addr: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``addr``: fewer where the mapping ends (a path's page walk)."""
        if n <= 0 or addr <= 0 or addr + n > ADDRESS_LIMIT:
            return b""
        buf = ctypes.create_string_buffer(n)
        done = _transfer(_readv, self.pid, buf, addr, n)
        return buf.raw[:done]

    def copy_from_user(self, addr: int, n: int) -> bytes:
        if n == 0:
            return b""
        if n > MAX_USER_COPY or addr + n > ADDRESS_LIMIT:
            raise Fault(addr, "read")
        data = self.read(addr, n)
        if len(data) != n:
            raise Fault(addr + len(data), "read")
        return data

    def copy_to_user(self, addr: int, data: bytes) -> None:
        if not data:
            return
        if len(data) > MAX_USER_COPY or addr <= 0 or addr + len(data) > ADDRESS_LIMIT:
            raise Fault(addr, "write")
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        done = _transfer(_writev, self.pid, buf, addr, len(data))
        if done:
            self.writes.append((addr, bytes(data[:done])))
        if done != len(data):
            raise Fault(addr + done, "write")

    def read_string(self, addr: int, limit: int) -> bytes | None:
        """A NUL-terminated string of at most ``limit`` bytes with its NUL (strncpy_from_user);
        None when it faults before its end or is too long (the caller says EFAULT or
        ENAMETOOLONG from the length)."""
        out = b""
        while len(out) < limit:
            page_left = 4096 - (addr + len(out)) % 4096  # never read past a page that may end
            chunk = self.read(addr + len(out), min(page_left, limit - len(out)))
            if not chunk:
                return None
            nul = chunk.find(b"\0")
            if nul >= 0:
                return out + chunk[:nul]
            out += chunk
        return out  # no NUL within limit: len(out) == limit says "too long"
