"""The shim's side of kvmsim/intercept/wire.py in Python, for driving a server from tests: a client
process whose "user memory" is a dict of regions it answers MEM_READ/MEM_WRITE from; on the
socket, or (``shared=True``) on the shared-memory channel of kvmsim/intercept/channel.py.  The
placeholders the server passes are this process's real fds, named to it by their identity."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import time
from collections.abc import Callable
from os import close as os_close

from kvmsim.intercept import channel, wire
from kvmsim.intercept.wire import Msg


def read_frame(sock: socket.socket) -> tuple[Msg, bytes]:
    """One frame from ``sock``, reading exactly its bytes (no read-ahead), as a test reads it."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise wire.Disconnected("peer closed the connection")
            data += chunk
        return data

    msg, length = wire.check_header(exactly(wire.HEADER.size))
    return msg, exactly(length) if length else b""


def wake(shared: mmap.mmap, word: int) -> None:
    """Wake whoever sleeps on control word ``word`` of a mapped channel (as the C shim does)."""
    cell = ctypes.c_uint32.from_buffer(shared, 4 * word)
    try:
        channel._futex(ctypes.addressof(cell), channel.FUTEX_WAKE, 1)
    finally:
        del cell


class PyShim:
    def __init__(self, path: str, *, shared: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)  # blocking, as the C shim's: waits while the backlog is full
        self.sock.settimeout(10)
        self.memory: dict[int, bytearray] = {}
        self.shm: mmap.mmap | None = None
        if shared:
            self.sock.sendall(wire.frame(Msg.SHM))
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 16, 1)
            assert wire.check_header(data[:12]) == (Msg.SHM_READY, 4) and len(fds) == 1, (data, fds)
            assert channel.READY.unpack(data[12:]) == (channel.CAPACITY,)
            self.shm = mmap.mmap(fds[0], channel.SIZE)
            self.memfd = fds[0]  # kept: the hostile tests resize or reseal it
            self.ctl = memoryview(self.shm)[: channel.CONTROL].cast("I")
            self.rx_seq = self.ctl[channel.S2C_SEQ]

    def close(self) -> None:
        if self.shm is not None:
            self.ctl.release()
            self.shm.close()
            os_close(self.memfd)
        self.sock.close()

    def send(self, frame: bytes) -> None:
        """One frame to the server, as the shim sends it."""
        if self.shm is None:
            self.sock.sendall(frame)
            return
        self.shm[channel.C2S : channel.C2S + len(frame)] = frame
        self.ctl[channel.C2S_LEN] = len(frame)
        self.ctl[channel.C2S_SEQ] += 1
        if self.ctl[channel.C2S_WAIT]:
            wake(self.shm, channel.C2S_SEQ)

    def receive(self) -> tuple[Msg, bytes]:
        if self.shm is None:
            return read_frame(self.sock)
        deadline = time.monotonic() + 10
        while self.ctl[channel.S2C_SEQ] == self.rx_seq:
            assert time.monotonic() < deadline, "no answer on the shared channel"
            time.sleep(0)
        self.rx_seq = self.ctl[channel.S2C_SEQ]
        frame = self.shm[channel.S2C : channel.S2C + self.ctl[channel.S2C_LEN]]
        msg, n = wire.check_header(frame[: wire.HEADER.size])
        return msg, frame[wire.HEADER.size : wire.HEADER.size + n]

    def map(self, addr: int, data: bytes) -> int:
        self.memory[addr] = bytearray(data)
        return addr

    def _region(self, addr: int, n: int) -> tuple[bytearray, int] | None:
        for start, buf in self.memory.items():
            if start <= addr and addr + n <= start + len(buf):
                return buf, addr - start
        return None

    def call(self, msg: Msg, payload: bytes) -> tuple[int, int, int]:
        """Send one request, answer memory requests, return (ret, errno, flags); a placeholder
        that comes with the RESULT is the ret."""
        ret, err, flags = self._call(msg, payload)
        if flags & wire.RESULT_NEW_FD:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1, 1)
            assert data == b"\0" and len(fds) == 1, (data, fds)
            ret = fds[0]
        return ret, err, flags

    def _call(self, msg: Msg, payload: bytes) -> tuple[int, int, int]:
        self.send(wire.frame(msg, payload))
        while True:
            kind, body = self.receive()
            if kind == Msg.RESULT:
                ret, err, flags, count = wire.RESULT.unpack_from(body)
                off = wire.RESULT.size
                for _ in range(count):  # the kernel's writes, in order; a fault ends the call
                    addr, n = wire.WRITE.unpack_from(body, off)
                    data = body[off + wire.WRITE.size : off + wire.WRITE.size + n]
                    off += wire.WRITE.size + n
                    found = self._region(addr, n)
                    if found is None:
                        return -1, errno.EFAULT, flags
                    buf, start = found
                    buf[start : start + n] = data
                return ret, err, flags
            if kind == Msg.MEM_READ:
                addr, n = wire.MEM_READ.unpack(body)
                found = self._region(addr, n)
                if found is None:
                    reply = wire.MEM_DATA.pack(errno.EFAULT)
                else:
                    buf, off = found
                    reply = wire.MEM_DATA.pack(0) + bytes(buf[off : off + n])
                self.send(wire.frame(Msg.MEM_DATA, reply))
            elif kind == Msg.MEM_WRITE:
                (addr,) = wire.MEM_WRITE.unpack_from(body)
                data = body[wire.MEM_WRITE.size :]
                found = self._region(addr, len(data))
                if found is None:
                    ack = wire.MEM_ACK.pack(errno.EFAULT, 0)
                else:
                    buf, off = found
                    buf[off : off + len(data)] = data
                    ack = wire.MEM_ACK.pack(0, len(data))
                self.send(wire.frame(Msg.MEM_ACK, ack))
            else:
                raise AssertionError(f"unexpected {kind.name}")

    def open(self, path: str = "/dev/kvm") -> tuple[int, int, int]:
        return self.call(Msg.OPEN, wire.OPEN.pack(2) + path.encode())

    def ioctl(self, fd: int, cmd: int, arg: int = 0, *, window: bool = True) -> tuple[int, int, int]:
        ahead = b""
        found = self._region(arg, 1) if window else None
        if found is not None:  # read ahead, as the shim does
            buf, off = found
            ahead = bytes(buf[off : off + wire.WINDOW])
        return self.call(Msg.IOCTL, wire.IOCTL.pack(fd, cmd, arg, *identity(fd)) + ahead)

    def close_fd(self, fd: int) -> None:
        os.close(fd)  # the server releases the file when it sees its end hang up


def identity(fd: int) -> tuple[int, int]:
    """A placeholder's dev and ino; (0, 0) for a number that is no open fd (nobody's)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return 0, 0
    return st.st_dev, st.st_ino


class Placeholders:
    """A fake server's side of placeholders: what it answers an OPEN or KVM_CREATE_VM with —
    a RESULT_NEW_FD, then one end of a SOCK_SEQPACKET socketpair on the socket (the other end
    kept, as a server keeps it)."""

    def __init__(self) -> None:
        self.kept: list[socket.socket] = []

    def answer(self, sock: socket.socket, send: Callable[[bytes], None]) -> None:
        theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.kept.append(ours)
        send(wire.frame(Msg.RESULT, wire.RESULT.pack(0, 0, wire.RESULT_NEW_FD, 0)))
        socket.send_fds(sock, [b"\0"], [theirs.fileno()])
        theirs.close()

    def close(self) -> None:
        for s in self.kept:
            s.close()
