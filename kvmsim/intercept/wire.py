"""The shim ↔ server protocol: length-prefixed binary frames, every field big-endian.

A frame is a 12-byte header then ``length`` bytes of payload::

    struct kvmsim_frame {            /* all fields big-endian */
            __u32 magic;             /* 0x4B564D53, "KVMS" */
            __u16 version;           /* 1 */
            __u16 type;              /* enum Msg */
            __u32 length;            /* payload bytes that follow, <= MAX_PAYLOAD */
    };

The shim sends OPEN, IOCTL, IDENTIFY and gets one RESULT each.  A simulated file is a real
placeholder in the program (kvmsim.intercept.placeholder): OPEN, and an IOCTL that makes a
file (KVM_CREATE_VM), answer with RESULT_NEW_FD and then pass the placeholder on the socket
(one byte with SCM_RIGHTS, after the RESULT, whichever channel carried it).  An IOCTL names
its file by the placeholder's identity (dev, ino), never by the fd number (that is only for
the trace); one that is no placeholder of this server's is answered RESULT_FOREIGN, and the
shim makes the real call.  IDENTIFY asks what a placeholder is: RESULT's ret is
:data:`NOT_OURS`, or the file's kind (kvmsim.kernel.anon_inodes: its ``code``) shifted by
:data:`KIND_SHIFT`, or'd with what its link is formatted with (a vcpu's id).
Nothing is ever closed by message: a simulated file is released when the program lets go of
its last placeholder (a vcpu's, a memfd, with the server's table).

``kvmsim env`` and ``kvmsim run --server`` send HELLO and get HOST: what the shim is told about
the served host besides the socket (a JSON object: ``name``, ``machine``, ``dev_kvm``,
``root``).  ``kvmsim run --server`` under seccomp then sends LISTENER on a connection of its
own, with its program's seccomp listener (SCM_RIGHTS), and gets a RESULT: 0 when the server
supervises the program from then on (the connection is the supervisor's), EINVAL for anything
but one listener, ENOSYS where the server cannot.

An IOCTL carries a read-ahead *window*: the bytes the shim could read at ``arg`` (up to
:data:`WINDOW`, stopping at the first unreadable byte).  The kernel's ``copy_from_user``
inside the window needs no round trip; outside it the server asks MEM_READ and the shim
answers MEM_DATA with an errno (EFAULT for a bad address).  The kernel's ``copy_to_user``
writes travel back with the RESULT, in order, and the shim applies them before returning; if
one faults, the call fails with EFAULT and the writes after it are not made.  That is exactly
the kernel's behaviour as long as a handler does nothing but return after writing user
memory, which holds for every ioctl kvmsim implements (a handler that reads after writing sees
its own writes: the server lays them over what it fetched; MEM_WRITE / MEM_ACK stay in the
protocol, and the shim answers them).

``shim/channel.c`` and ``shim/hooks.c`` are the other side of this file."""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Mapping

import attrs

from ..kernel.errors import KvmsimError
from ..uapi import ARCHES, MAX_PAGE_SIZE

MAGIC = 0x4B564D53
VERSION = 2
MAX_PAYLOAD = 1 << 20
WINDOW = 256  # read-ahead bytes at an ioctl's argument
MAX_USER_COPY = MAX_PAGE_SIZE  # no ioctl here copies more than this (the kernel reads at most PAGE_SIZE)

HEADER = struct.Struct("!IHHI")  # magic, version, type, length
OPEN = struct.Struct("!i")  # flags; then the path's bytes
IOCTL = struct.Struct("!iIQQQ")  # fd (the trace's), cmd, arg, the placeholder's dev and ino; then the window
IDENTIFY = struct.Struct("!QQ")  # a placeholder's dev and ino
RESULT = struct.Struct("!qiII")  # ret, errno (0 = success), flags, number of writes; then the writes
WRITE = struct.Struct("!QI")  # one write in a RESULT: addr, length; then its bytes
MEM_READ = struct.Struct("!QI")  # addr, length
MEM_DATA = struct.Struct("!i")  # errno; then the bytes read
MEM_WRITE = struct.Struct("!Q")  # addr; then the bytes to write
MEM_ACK = struct.Struct("!iI")  # errno, bytes written

MAX_FDS = 4  # descriptors taken with one read: a LISTENER brings one, anything more is closed
RESULT_NEW_FD = 1  # a placeholder follows on the socket: the caller's new fd
RESULT_FOREIGN = 2  # the fd is no placeholder of this server's: the real call answers
# with RESULT_NEW_FD: the new fd goes into the argument, a u32 at the offset RESULT's ret says, and
# the call returns 0 (KVM_CREATE_DEVICE's struct kvm_create_device.fd)
RESULT_FD_FIELD = 4
NOT_OURS = 0  # IDENTIFY's answer for anything but a placeholder of this server's; else identified()
KIND_SHIFT = 24  # ... a kind's code above the file's id (a vcpu's: ids are below KVM_MAX_VCPU_IDS)


def identified(code: int, file_id: int) -> int:
    """IDENTIFY's answer for a placeholder: its kind's code, and the id its link is formatted with."""
    if not 0 <= file_id < 1 << KIND_SHIFT:
        raise ValueError(f"a file id {file_id} past {KIND_SHIFT} bits")
    return code << KIND_SHIFT | file_id


class Msg(enum.IntEnum):
    OPEN = 1
    IOCTL = 2
    IDENTIFY = 3
    RESULT = 4
    MEM_READ = 5
    MEM_DATA = 6
    MEM_WRITE = 7
    MEM_ACK = 8
    HELLO = 9
    HOST = 10
    SHM = 11  # the shim asks for the shared-memory channel (kvmsim.intercept.channel)
    SHM_READY = 12  # the server's memfd, with SCM_RIGHTS; payload: the channel's capacity
    LISTENER = 13  # kvmsim run --server: a seccomp listener, with SCM_RIGHTS: the server supervises its program


class ProtocolError(KvmsimError):
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


_MSGS = {m.value: m for m in Msg}


def check_header(header: bytes) -> tuple[Msg, int]:
    magic, version, type_, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic:#010x}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"oversized frame: {length} bytes")
    msg = _MSGS.get(type_)
    if msg is None:
        raise ProtocolError(f"unknown message type {type_}")
    return msg, length


class FrameReader:
    """Frames from a socket with read-ahead: usually one ``recv`` a frame; ``sendall`` the
    other way (the socket transport: kvmsim.intercept.channel.SharedChannel is the other)."""

    def __init__(self, sock: socket.socket, *, max_payload: int = MAX_PAYLOAD, stall: float | None = None) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: list[int] = []  # descriptors that came with the bytes (SCM_RIGHTS), for the frame that wants them
        self.max_payload = max_payload  # what this side's peer can need to send
        self.stall = stall  # seconds a frame, once begun, may take to arrive
        self._timeout: float | None = sock.gettimeout()

    def _fill(self, n: int, deadline: float | None = None) -> None:
        while len(self.buf) < n:
            timeout = self.stall if self.buf else deadline  # idle between frames is fine, an awaited answer's is not
            if timeout != self._timeout:  # a syscall or two: only when it changes
                self.sock.settimeout(timeout)
                self._timeout = timeout
            try:
                chunk, fds, _flags, _addr = socket.recv_fds(self.sock, max(65536, n - len(self.buf)), MAX_FDS)
                self.fds += fds
            except TimeoutError:
                if not self.buf:
                    raise ProtocolError(f"no answer within {deadline} s") from None
                raise ProtocolError(f"stalled frame: {len(self.buf)} of {n} bytes after {self.stall} s") from None
            if not chunk:
                if not self.buf:
                    raise Disconnected("peer closed the connection")
                raise ProtocolError(f"truncated frame: {len(self.buf)} of {n} bytes")
            self.buf += chunk

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def take_fds(self) -> list[int]:
        """The descriptors received so far (the caller closes them)."""
        fds, self.fds = self.fds, []
        return fds

    def read(self, deadline: float | None = None) -> tuple[Msg, bytes]:
        """The next frame; ``deadline``: seconds it may take to begin (an answer awaited)."""
        self._fill(HEADER.size, deadline)
        msg, length = check_header(bytes(self.buf[: HEADER.size]))
        if length > self.max_payload:
            raise ProtocolError(f"oversized frame: {length} bytes (a {msg.name} needs at most {self.max_payload})")
        end = HEADER.size + length
        self._fill(end)
        payload = bytes(self.buf[HEADER.size : end])
        del self.buf[:end]
        return msg, payload


def frame(msg: Msg, payload: bytes = b"", tail: bytes = b"") -> bytes:
    """A frame of ``payload`` and ``tail`` (one copy)."""
    return b"".join((HEADER.pack(MAGIC, VERSION, msg, len(payload) + len(tail)), payload, tail))


def unpack(layout: struct.Struct, payload: bytes, *, exact: bool = True) -> tuple[tuple[int, ...], bytes]:
    """The fixed part and the rest; a short (or, when ``exact``, long) payload is an error."""
    if len(payload) < layout.size or (exact and len(payload) != layout.size):
        raise ProtocolError(f"payload of {len(payload)} bytes for a {layout.size}-byte message")
    return layout.unpack_from(payload), payload[layout.size :]


@attrs.frozen
class HostAnswer:
    """HOST's payload, the answer to HELLO (JSON, exactly these seven keys): what a shim is told
    about the host besides the socket — the profile's name, the machine ``uname`` shows, whether
    /dev/kvm exists, where the host's files were written (KVMSIM_ROOT; null for none), the host
    kernel's page size (what a POWER program under qemu-user is told ``getpagesize`` is), and
    for a POWER host what qemu-user needs to run a program as that machine would: the
    processor's ``[PVR, generation]`` (its ``mfpvr``) and the kernel's TASK_SIZE where it is
    below this machine's (null where none is needed).  The one encoder and decoder: the server
    sends it, the runner and ``kvmsim env`` read it."""

    name: str
    machine: str
    dev_kvm: bool
    root: str | None = None
    page_size: int = 4096
    processor: tuple[int, str] | None = None
    address_space: int | None = None

    def encode(self) -> bytes:
        import json  # HELLO's answer alone: a call's frames never need it

        return json.dumps(attrs.asdict(self)).encode()

    @classmethod
    def decode(cls, payload: bytes) -> HostAnswer:
        """ProtocolError for anything kvmsim would never send."""
        not_ours = ProtocolError(f"a HOST answer that is not kvmsim's: {payload[:80]!r}")
        try:
            import json

            doc = json.loads(payload)
        except ValueError:
            raise not_ours from None
        if not isinstance(doc, Mapping) or set(doc) != {f.name for f in attrs.fields(cls)}:
            raise not_ours
        name, machine, dev_kvm, root = doc["name"], doc["machine"], doc["dev_kvm"], doc["root"]
        if not isinstance(name, str) or machine not in ARCHES or not isinstance(dev_kvm, bool):
            raise not_ours
        if root is not None and not isinstance(root, str):
            raise not_ours
        if doc["page_size"] not in (4096, 65536) or isinstance(doc["page_size"], bool):
            raise not_ours
        processor, space = doc["processor"], doc["address_space"]
        if processor is not None:  # [PVR, generation]: a u32 and a name qemu-user's models begin with
            if not (isinstance(processor, list) and len(processor) == 2 and _is_u(processor[0], 32)):
                raise not_ours
            if not (isinstance(processor[1], str) and processor[1].isalnum() and processor[1].isascii()):
                raise not_ours
            processor = (processor[0], processor[1])
        if space is not None and not (_is_u(space, 64) and space):
            raise not_ours
        return cls(name, machine, dev_kvm, root, doc["page_size"], processor, space)


def _is_u(value: object, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits
