"""The shared-memory channel: the shim's frames without a socket round trip.

After connecting (and checking the server's uid), the shim sends SHM; a server that can
offers a memfd with SHM_READY (SCM_RIGHTS), else answers a RESULT with ENOSYS and the socket
stays the channel.  Both sides map the memfd; from then on every frame of kvmsim.intercept.wire travels
through it, one frame a message, one message each way at a time (the protocol is a strict
exchange: IOCTL → [MEM_READ → MEM_DATA ...] → RESULT)::

    struct kvmsim_shm {                  /* native byte order; one per connection */
            __u32 c2s_seq;               /* futex: the shim bumps it after writing c2s */
            __u32 c2s_len;               /* the frame's length in c2s */
            __u32 c2s_wait;              /* the server sleeps on c2s_seq: wake it */
            __u32 s2c_seq, s2c_len, s2c_wait;  /* the same, server to shim */
            __u32 pad[10];
            __u8  c2s[CAPACITY];         /* one frame, header included */
            __u8  s2c[CAPACITY];
    };

A receiver spins a short while on the sequence word (adaptive here, 50-500 us: longer while
messages keep arriving during the spin, shorter while they do not, the GIL released every
50 us of it), then sets its ``wait`` word and sleeps on a futex; a sender writes the frame,
the length, bumps the sequence, and wakes the receiver only if it is asleep.  Both sides
fence between their store and the other's word (Dekker), so no wake-up is lost.  The socket
stays open: EOF on it is how each side learns the other has gone (checked whenever a sleep
times out).

The memfd is sealed before it is handed over (``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``):
neither side can shrink it under the other's mapping (a SIGBUS there would take down the
whole server, or the program), and the shim checks those seals before it maps.  Each area
holds the largest frame a call can need (a full user copy, see kvmsim.intercept.wire.MAX_USER_COPY),
its pages are allocated only when touched, and a server maps at most ``MAX_SHARED`` bytes of
channels at once (past that a connection keeps the socket).  A peer that wakes the server's
futex without sending anything is slept on with a growing pause: its storm costs its own
calls, not its neighbours'.

The server side offers the channel only on x86_64: Python's stores to the mapping are plain
stores, ordered for the shim there (total store order) and not on weakly ordered machines,
where the socket is used.  ``KVMSIM_CHANNEL=socket`` makes the shim keep the socket.

Under qemu-user the shim is translated guest code and the channel holds as well: its loads and
stores reach the mapping in program order (TCG keeps them in order, x86_64 too), its futex calls
reach this machine's kernel with the address translated, and every control word has one writer,
so a single-threaded program's fetch-and-add (TCG may emulate it as a load and a store) loses
nothing; a fence TCG drops there can cost a wake-up, which the sleep's timeout (``SLEEP``) makes a
delay, never a hang.  The words are each side's native byte order, so a program of the other
byte order (ppc64 here) keeps the socket: the runner sets ``KVMSIM_CHANNEL=socket`` for it.
``shim/channel.c`` is the other side of this file."""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import platform
import socket
import struct
import threading
import time

from . import wire
from .wire import Msg, ProtocolError

# One frame of any size a call can need: a RESULT carrying a full user copy and the handful of
# small writes beside it (E2BIG's put_user, a cleared tail), or the shim's MEM_DATA of one.
CAPACITY = wire.HEADER.size + 2 * wire.MAX_USER_COPY + 4096
CONTROL = 64
C2S, S2C = CONTROL, CONTROL + CAPACITY  # offsets of the two frame areas
SIZE = CONTROL + 2 * CAPACITY
C2S_SEQ, C2S_LEN, C2S_WAIT, S2C_SEQ, S2C_LEN, S2C_WAIT = range(6)  # u32 words of the control block
READY = struct.Struct("!I")  # SHM_READY's payload: CAPACITY, for the shim to check
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
MAX_SHARED = 32 << 20  # bytes of channels one server maps at once (about 120 connections)
SPURIOUS_FREE = 4  # wake-ups with nothing sent a wait forgives before it pauses
PAUSE_MIN, PAUSE_MAX = 1e-3, 0.1  # seconds: the pause after each further one, doubling
_pause = time.sleep

_SYS_FUTEX = {"x86_64": 202}  # where the channel is offered (see the docstring)
FUTEX_WAIT, FUTEX_WAKE = 0, 1  # shared between processes: never FUTEX_PRIVATE_FLAG
SLEEP = 0.1  # seconds a futex sleep lasts before the socket is checked for the peer's exit
# A sleeping thread takes tens of microseconds to wake on a virtual machine: a call's next
# frame usually comes within a few, so spin long enough not to sleep between a burst's calls.
SPIN_MIN, SPIN_MAX = 50e-6, 500e-6
YIELD_EVERY = 50e-6  # while spinning, release the GIL this often


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def available() -> bool:
    """Can this server offer the channel?"""
    return platform.machine() in _SYS_FUTEX and hasattr(os, "memfd_create")


_libc: ctypes.CDLL | None = None


def _futex(addr: int, op: int, val: int, timeout: float | None = None) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    ts = None
    if timeout is not None:
        ts = ctypes.byref(_Timespec(int(timeout), int((timeout % 1) * 1e9)))
    return int(
        _libc.syscall(_SYS_FUTEX[platform.machine()], ctypes.c_void_p(addr), op, ctypes.c_uint32(val), ts, None, 0)
    )


_fence_lock = threading.Lock()


def _fence() -> None:
    """A full memory barrier: taking an uncontended lock is a locked instruction on x86."""
    with _fence_lock:
        pass


class Budget:
    """How many more channels this server may map (``MAX_SHARED`` in all); thread-safe."""

    def __init__(self, limit: int = MAX_SHARED) -> None:
        self.left = limit // SIZE
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.left += 1


class SharedChannel:
    """The server's end: ``read()`` and ``sendall()`` as kvmsim.intercept.wire.FrameReader's."""

    def __init__(self, sock: socket.socket, *, max_payload: int = wire.MAX_PAYLOAD) -> None:
        self.sock, self.max_payload = sock, max_payload
        fd = os.memfd_create("kvmsim-channel", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, SIZE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)  # nobody resizes it under a mapping
            self.map = mmap.mmap(fd, SIZE)
            self._word = ctypes.c_uint32.from_buffer(self.map)  # keeps the futex words' address
            self.base = ctypes.addressof(self._word)
            self.ctl = memoryview(self.map)[:CONTROL].cast("I")
            self.seen = 0  # a fresh memfd is zeroes; set before the shim can write a frame
            self.spin = 50e-6
            self.closed = False
            socket.send_fds(sock, [wire.frame(Msg.SHM_READY, READY.pack(CAPACITY))], [fd])
        finally:
            os.close(fd)

    def _arrived(self) -> bool:
        return bool(self.ctl[C2S_SEQ] != self.seen)

    def _wait(self, limit: float | None = None) -> None:
        now = time.perf_counter()
        give_up = None if limit is None else now + limit
        deadline, breather = now + self.spin, now + YIELD_EVERY
        while not self._arrived():
            now = time.perf_counter()
            if now > deadline:
                break
            if now > breather:  # let the server's other threads (other processes) have the GIL
                time.sleep(0)
                breather = now + YIELD_EVERY
        else:
            self.spin = min(SPIN_MAX, self.spin * 2)  # messages come while we spin: spin longer
            return
        self.spin = max(SPIN_MIN, self.spin / 2)
        spurious = 0  # wake-ups in this wait with nothing sent
        while True:
            self.ctl[C2S_WAIT] = 1
            _fence()
            if self._arrived():
                break
            woken = _futex(self.base + 4 * C2S_SEQ, FUTEX_WAIT, self.seen, SLEEP) == 0
            if self._arrived():
                break
            self._check_peer()
            if give_up is not None and time.perf_counter() > give_up:
                self.ctl[C2S_WAIT] = 0
                raise ProtocolError(f"no answer within {limit} s")
            if woken:  # a wake-up with nothing sent: past a few, this peer waits for its answer
                spurious += 1
                if spurious > SPURIOUS_FREE:
                    _pause(min(PAUSE_MAX, PAUSE_MIN * 2 ** (spurious - SPURIOUS_FREE - 1)))
        self.ctl[C2S_WAIT] = 0

    def _check_peer(self) -> None:
        try:
            if self.sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                raise wire.Disconnected("peer closed the connection")
            raise ProtocolError("a frame on the socket while the shared channel is in use")
        except BlockingIOError:
            return

    def read(self, deadline: float | None = None) -> tuple[Msg, bytes]:
        """The next frame; ``deadline``: seconds it may take to come (an answer awaited)."""
        if not self._arrived():
            self._wait(deadline)
        self.seen = self.ctl[C2S_SEQ]
        length = self.ctl[C2S_LEN]
        if not wire.HEADER.size <= length <= CAPACITY:
            raise ProtocolError(f"a {length}-byte message in the shared channel")
        data = self.map[C2S : C2S + length]  # a copy: the peer may write again
        msg, payload_length = wire.check_header(data[: wire.HEADER.size])
        if payload_length != length - wire.HEADER.size:
            raise ProtocolError(f"a frame of {payload_length} bytes in a {length}-byte message")
        if payload_length > self.max_payload:
            raise ProtocolError(
                f"oversized frame: {payload_length} bytes (a {msg.name} needs at most {self.max_payload})"
            )
        return msg, data[wire.HEADER.size :]

    def sendall(self, data: bytes) -> None:
        if len(data) > CAPACITY:
            raise ProtocolError(f"a {len(data)}-byte frame does not fit the shared channel")
        self.map[S2C : S2C + len(data)] = data
        self.ctl[S2C_LEN] = len(data)
        self.ctl[S2C_SEQ] = (self.ctl[S2C_SEQ] + 1) & 0xFFFFFFFF
        _fence()
        if self.ctl[S2C_WAIT]:
            _futex(self.base + 4 * S2C_SEQ, FUTEX_WAKE, 1)

    def interrupt(self) -> None:
        """Wake the reader from another thread (it then finds the socket shut down)."""
        if not self.closed:
            _futex(self.base + 4 * C2S_SEQ, FUTEX_WAKE, 1)

    def close(self) -> None:
        self.closed = True
        self.ctl.release()
        del self._word
        self.map.close()
