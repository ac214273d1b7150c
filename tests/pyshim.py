"""The shim's side of kvmsim/wire.py in Python, for driving a server from tests: a client
process whose "user memory" is a dict of regions it answers MEM_READ/MEM_WRITE from."""

from __future__ import annotations

import errno
import socket

from kvmsim import wire
from kvmsim.wire import Msg


class PyShim:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)  # blocking, as the C shim's: waits while the backlog is full
        self.sock.settimeout(10)
        self.memory: dict[int, bytearray] = {}

    def close(self) -> None:
        self.sock.close()

    def map(self, addr: int, data: bytes) -> int:
        self.memory[addr] = bytearray(data)
        return addr

    def _region(self, addr: int, n: int) -> tuple[bytearray, int] | None:
        for start, buf in self.memory.items():
            if start <= addr and addr + n <= start + len(buf):
                return buf, addr - start
        return None

    def call(self, msg: Msg, payload: bytes) -> tuple[int, int, int]:
        """Send one request, answer memory requests, return (ret, errno, flags)."""
        self.sock.sendall(wire.frame(msg, payload))
        while True:
            kind, body = wire.read_frame(self.sock)
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
                self.sock.sendall(wire.frame(Msg.MEM_DATA, reply))
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
                self.sock.sendall(wire.frame(Msg.MEM_ACK, ack))
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
        return self.call(Msg.IOCTL, wire.IOCTL.pack(fd, cmd, arg) + ahead)

    def close_fd(self, fd: int) -> tuple[int, int, int]:
        return self.call(Msg.CLOSE, wire.CLOSE.pack(fd))
