"""The shim ↔ server protocol: length-prefixed binary frames, every field big-endian.

A frame is a 12-byte header then ``length`` bytes of payload::

    struct kvmsim_frame {            /* all fields big-endian */
            __u32 magic;             /* 0x4B564D53, "KVMS" */
            __u16 version;           /* 1 */
            __u16 type;              /* enum Msg */
            __u32 length;            /* payload bytes that follow, <= MAX_PAYLOAD */
    };

The shim sends OPEN, IOCTL, CLOSE and gets one RESULT each.  While an IOCTL is in the kernel,
the server may ask MEM_READ / MEM_WRITE (the kernel's copy_from_user / copy_to_user on the
caller's memory); the shim answers MEM_DATA / MEM_ACK with an errno (EFAULT for a bad address).
``shim/kvmsim_shim.c`` is the other side of this file."""

from __future__ import annotations

import enum
import socket
import struct

MAGIC = 0x4B564D53
VERSION = 1
MAX_PAYLOAD = 1 << 20

HEADER = struct.Struct("!IHHI")  # magic, version, type, length
OPEN = struct.Struct("!i")  # flags; then the path's bytes
IOCTL = struct.Struct("!iIQ")  # fd, cmd, arg
CLOSE = struct.Struct("!i")  # fd
RESULT = struct.Struct("!qiI")  # ret, errno (0 = success), flags
MEM_READ = struct.Struct("!QI")  # addr, length
MEM_DATA = struct.Struct("!i")  # errno; then the bytes read
MEM_WRITE = struct.Struct("!Q")  # addr; then the bytes to write
MEM_ACK = struct.Struct("!iI")  # errno, bytes written

RESULT_NEW_FD = 1  # ret is a new kernel fd: the shim gives the caller a descriptor for it


class Msg(enum.IntEnum):
    OPEN = 1
    IOCTL = 2
    CLOSE = 3
    RESULT = 4
    MEM_READ = 5
    MEM_DATA = 6
    MEM_WRITE = 7
    MEM_ACK = 8


class ProtocolError(Exception):
    """A malformed, truncated or oversized frame: the connection is closed."""


class Disconnected(ProtocolError):
    """The peer closed the connection."""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            if got == 0:
                raise Disconnected("peer closed the connection")
            raise ProtocolError(f"truncated frame: {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> tuple[Msg, bytes]:
    magic, version, type_, length = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic:#010x}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"oversized frame: {length} bytes")
    try:
        msg = Msg(type_)
    except ValueError:
        raise ProtocolError(f"unknown message type {type_}") from None
    payload = _recv_exactly(sock, length) if length else b""
    return msg, payload


def frame(msg: Msg, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, VERSION, msg, len(payload)) + payload


def unpack(layout: struct.Struct, payload: bytes, *, exact: bool = True) -> tuple[tuple[int, ...], bytes]:
    """The fixed part and the rest; a short (or, when ``exact``, long) payload is an error."""
    if len(payload) < layout.size or (exact and len(payload) != layout.size):
        raise ProtocolError(f"payload of {len(payload)} bytes for a {layout.size}-byte message")
    return layout.unpack_from(payload), payload[layout.size :]
