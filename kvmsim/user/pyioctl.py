"""CPython's ``fcntl.ioctl(fd, request, arg, mutate_flag)`` as a user-space caller of
``ioctl(2)``: how each kind of ``arg`` becomes the pointer the kernel sees.

From Modules/fcntlmodule.c (``IOCTL_BUFSZ`` is 1024):

* an ``int`` is passed as the raw argument;
* a mutable buffer with ``mutate_flag`` true is copied into a 1024-byte scratch area on
  CPython's stack when it is at most 1024 bytes (else passed in place), and copied back
  **before** ``OSError`` is raised, so a caller sees the E2BIG write-back;
* an immutable buffer (``bytes``, ``str``) or ``mutate_flag`` false: at most 1024 bytes
  (else ``ValueError``), copied to scratch, and a new ``bytes`` of the same length returned.

The scratch area past the caller's bytes is zero here (on CPython it is uninitialised stack).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from ..kernel.usermem import AddressSpace

IOCTL_BUFSZ = 1024
ULONG_MASK = (1 << 64) - 1

INT_MAX, INT_MIN = (1 << 31) - 1, -(1 << 31)
SysIoctl = Callable[[int, int, int], int]  # (fd, cmd, unsigned long arg) -> result


class _Area:
    """One thread's scratch mapping; unmapped when the thread (its thread-local) goes."""

    def __init__(self, mem: AddressSpace) -> None:
        self.addr = mem.map(IOCTL_BUFSZ + 1)
        self.bytes = mem.view(self.addr, IOCTL_BUFSZ + 1)  # the process writes its own stack in place
        weakref.finalize(self, _unmap, self.bytes, mem, self.addr)


def _unmap(view: memoryview, mem: AddressSpace, addr: int) -> None:
    view.release()
    mem.unmap(addr)


_ZEROS = memoryview(bytes(IOCTL_BUFSZ + 1))


class Scratch(threading.local):
    area: _Area | None = None


def fcntl_ioctl(
    sys_ioctl: SysIoctl,
    mem: AddressSpace,
    scratch: Scratch,
    fd: int,
    request: int,
    arg: object = 0,
    mutate_flag: bool = True,
) -> int | bytes:
    cmd = request & 0xFFFFFFFF  # sys_ioctl(unsigned int fd, unsigned int cmd, unsigned long arg)
    if type(arg) is bytearray and mutate_flag and len(arg) <= IOCTL_BUFSZ:  # the common case, first
        area = _scratch(mem, scratch, arg)
        try:
            return sys_ioctl(fd, cmd, area.addr)
        finally:
            arg[:] = area.bytes[: len(arg)]
    if not isinstance(arg, int | str | bytes | bytearray | memoryview):  # bool is an int, as in C
        try:
            view = memoryview(arg)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                "ioctl requires a file or file descriptor, an integer and optionally an integer or buffer argument"
            ) from None
        if not view.c_contiguous:  # neither "w*" nor "s*" takes it; then it is not an int either
            raise TypeError(f"'{type(arg).__name__}' object cannot be interpreted as an integer")
        return _buffer(sys_ioctl, mem, scratch, fd, cmd, view, mutate_flag)
    if isinstance(arg, int):  # Python 3.11 parses an int argument as a C int ("i")
        if arg > INT_MAX:
            raise OverflowError("signed integer is greater than maximum")
        if arg < INT_MIN:
            raise OverflowError("signed integer is less than minimum")
        return sys_ioctl(fd, cmd, arg & ULONG_MASK)  # passed on as an unsigned long, sign-extended
    if isinstance(arg, str):
        arg = arg.encode()
    view = memoryview(arg)
    if not view.c_contiguous:
        raise TypeError(f"'{type(arg).__name__}' object cannot be interpreted as an integer")
    return _buffer(sys_ioctl, mem, scratch, fd, cmd, view, mutate_flag)


def _scratch(mem: AddressSpace, scratch: Scratch, data: bytes | bytearray) -> _Area:
    """CPython's stack buffer for this thread, holding ``data`` then zeros."""
    area = scratch.area
    if area is None:
        area = scratch.area = _Area(mem)
    n = len(data)
    area.bytes[:n] = data
    area.bytes[n:] = _ZEROS[n:]
    return area


def _buffer(
    sys_ioctl: SysIoctl, mem: AddressSpace, scratch: Scratch, fd: int, cmd: int, view: memoryview, mutate_flag: bool
) -> int | bytes:
    data = view.tobytes()
    n = len(data)
    if mutate_flag and not view.readonly:
        if n > IOCTL_BUFSZ:  # passed in place: the buffer itself is the mapping
            addr = mem.map(n, data=data)
            try:
                return sys_ioctl(fd, cmd, addr)
            finally:
                view.cast("B")[:] = mem.read(addr, n)
                mem.unmap(addr)
        area = _scratch(mem, scratch, data)
        try:
            return sys_ioctl(fd, cmd, area.addr)
        finally:
            view.cast("B")[:] = area.bytes[:n]
    if n > IOCTL_BUFSZ:
        raise ValueError("ioctl string arg too long")
    area = _scratch(mem, scratch, data)
    sys_ioctl(fd, cmd, area.addr)
    return area.bytes[:n].tobytes()
