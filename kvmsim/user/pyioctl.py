"""CPython's ``fcntl.ioctl(fd, request, arg, mutate_flag)`` as a user-space caller of
``ioctl(2)``: how each kind of ``arg`` becomes the pointer the kernel sees.

From Modules/fcntlmodule.c (``IOCTL_BUFSZ`` is 1024):

* an ``int`` is passed as the raw argument;
* a mutable buffer with ``mutate_flag`` true is copied into a 1024-byte scratch area on
  CPython's stack when it is at most 1024 bytes (else passed in place), and copied back
  **before** ``OSError`` is raised, so a caller sees the E2BIG write-back;
* an immutable buffer (``bytes``, ``str``) or ``mutate_flag`` false: at most 1024 bytes
  (else ``ValueError``), copied to scratch, and a new ``bytes`` of the same length returned.

The scratch area past the caller's bytes is zero here (on CPython it is uninitialised stack),
or, with ``junk``, :data:`JUNK`: a size field larger than the buffer then reads non-zero bytes
past it, as it most likely would on CPython (E2BIG from check_zeroed_user, not a silent pass).
"""

from __future__ import annotations

import threading
import warnings
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
JUNK = memoryview(bytes((0xA5 + 37 * i) & 0xFF or 0x5A for i in range(IOCTL_BUFSZ + 1)))  # never a zero byte


class Scratch(threading.local):
    area: _Area | None = None


class WrotePastBuffer(UserWarning):
    """The kernel wrote past the caller's buffer, into CPython's stack scratch: the answer the
    caller sees is cut off (a struct's size field larger than the buffer passed)."""


def _check_past(cmd: int, area: _Area, n: int, fill: memoryview | None) -> None:
    """Warn when the kernel wrote into the scratch past the caller's ``n`` bytes (``fill``:
    what was there before; None: not asked)."""
    if fill is None:
        return
    tail = area.bytes[n:IOCTL_BUFSZ]
    if tail != fill[n:IOCTL_BUFSZ]:
        last = max(i for i in range(len(tail)) if tail[i] != fill[n + i]) + 1
        warnings.warn(
            WrotePastBuffer(
                f"ioctl {cmd:#x}: the kernel wrote {last} byte(s) past the {n}-byte buffer passed (its size field "
                "is larger than the buffer?): on CPython they land on its stack and the answer is cut off"
            ),
            stacklevel=4,
        )


def fcntl_ioctl(
    sys_ioctl: SysIoctl,
    mem: AddressSpace,
    scratch: Scratch,
    fd: int,
    request: int,
    arg: object = 0,
    mutate_flag: bool = True,
    *,
    junk: bool = False,
    warn_past: bool = False,
) -> int | bytes:
    """``fcntl.ioctl``; ``junk``: CPython's stack past the buffer is :data:`JUNK`, not zeros;
    ``warn_past``: a :class:`WrotePastBuffer` warning when the kernel wrote past the buffer."""
    fill = JUNK if junk else _ZEROS
    past = fill if warn_past else None
    cmd = request & 0xFFFFFFFF  # sys_ioctl(unsigned int fd, unsigned int cmd, unsigned long arg)
    if type(arg) is bytearray and mutate_flag and len(arg) <= IOCTL_BUFSZ:  # the common case, first
        area = _scratch(mem, scratch, arg, fill)
        try:
            return sys_ioctl(fd, cmd, area.addr)
        finally:
            arg[:] = area.bytes[: len(arg)]
            _check_past(cmd, area, len(arg), past)
    if not isinstance(arg, int | str | bytes | bytearray | memoryview):  # bool is an int, as in C
        try:
            view = memoryview(arg)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                "ioctl requires a file or file descriptor, an integer and optionally an integer or buffer argument"
            ) from None
        if not view.c_contiguous:  # neither "w*" nor "s*" takes it; then it is not an int either
            raise TypeError(f"'{type(arg).__name__}' object cannot be interpreted as an integer")
        return _buffer(sys_ioctl, mem, scratch, fd, cmd, view, mutate_flag, fill, past)
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
    return _buffer(sys_ioctl, mem, scratch, fd, cmd, view, mutate_flag, fill, past)


def _scratch(mem: AddressSpace, scratch: Scratch, data: bytes | bytearray, fill: memoryview = _ZEROS) -> _Area:
    """CPython's stack buffer for this thread, holding ``data`` then ``fill`` (zeros, or junk)."""
    area = scratch.area
    if area is None:
        area = scratch.area = _Area(mem)
    n = len(data)
    area.bytes[:n] = data
    area.bytes[n:] = fill[n:]
    return area


def _buffer(
    sys_ioctl: SysIoctl,
    mem: AddressSpace,
    scratch: Scratch,
    fd: int,
    cmd: int,
    view: memoryview,
    mutate_flag: bool,
    fill: memoryview,
    past: memoryview | None,
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
        area = _scratch(mem, scratch, data, fill)
        try:
            return sys_ioctl(fd, cmd, area.addr)
        finally:
            view.cast("B")[:] = area.bytes[:n]
            _check_past(cmd, area, n, past)
    if n > IOCTL_BUFSZ:
        raise ValueError("ioctl string arg too long")
    area = _scratch(mem, scratch, data, fill)
    try:
        sys_ioctl(fd, cmd, area.addr)
    finally:
        _check_past(cmd, area, n, past)
    return area.bytes[:n].tobytes()
