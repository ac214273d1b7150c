"""``kvmsim serve``: one simulated kernel on a Unix stream socket.

Each connection is one process; its user memory stays in the caller and is reached through
the shim (:class:`RemoteMemory`).  The simulated files are the server's, not a connection's:
each is a placeholder the program really holds (kvmsim.intercept.placeholder), found by its
identity whichever process of the run asks, and released when the last one lets go.  The
socket is created mode 0600 and a peer whose uid differs from the server's is refused
(SO_PEERCRED).  A malformed frame closes that connection with a logged reason; the server
goes on."""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..kernel.errors import KvmError, KvmsimError
from ..kernel.kvm_main import BootedKernel
from ..kernel.usermem import ADDRESS_LIMIT, Fault
from ..uapi import U64_OF, ByteOrder
from . import channel, wire
from .channel import SharedChannel
from .placeholder import Deferring, Identity, MemoryWanted, Placeholder, Placeholders, identity, raise_fd_limit
from .trace import Call
from .wire import Msg, ProtocolError


class Supervising(Protocol):
    """A supervisor a way of catching calls runs for one program (seccomp's)."""

    def serve(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class Supervision(Protocol):
    """A way of catching calls that hands the server a program to supervise (LISTENER): the
    server takes it only through this, so the core never imports the way (kvmsim.seccomp's
    ``SeccompSupervision``; ``kvmsim serve`` gives it)."""

    def unavailable(self) -> str | None:
        """Why this machine cannot, or None."""

    def is_listener(self, fd: int) -> bool:
        """Is ``fd`` what this way supervises?"""

    def supervisor(
        self,
        listener: int,
        kernel: BootedKernel,
        placeholders: Placeholders,
        root: str | None,
        trace: Callable[[Call], None] | None,
    ) -> Supervising:
        """A supervisor of ``listener``'s program, answering from ``kernel`` over ``files``."""


log = logging.getLogger("kvmsim.serve")  # imported up front: it must log when out of descriptors
Transport = wire.FrameReader | SharedChannel  # read() a frame, sendall() one
_IOCTL, _RESULT = Msg.IOCTL, Msg.RESULT  # a call's two messages, looked up once (an enum member lookup is slow)
_NEW_FD = b"\0"  # the byte a placeholder travels with (SCM_RIGHTS)
MAX_CLIENT_PAYLOAD = 4 + wire.MAX_USER_COPY  # the largest frame a shim sends: MEM_DATA of a full copy
FRAME_STALL = 10.0  # seconds a begun frame may take; idle between calls is unlimited
CLIENT_DEADLINE = 10.0  # seconds a client may take to answer MEM_READ: then its connection closes
MAX_CONNECTIONS = 256  # processes served at once; more are dropped, logged
STOP_WAIT = 10.0  # seconds stop() waits, in all, for the connections it hung up to end


class RemoteMemory(Deferring):
    """The caller's address space, reached through the shim: reads inside the IOCTL's
    read-ahead window are served from it, others ask MEM_READ; writes are kept and sent back
    with the RESULT (see kvmsim.intercept.wire).  Under the table's lock a read outside what was
    fetched raises MemoryWanted: the table fetches it with its lock let go (``fetch``, within
    CLIENT_DEADLINE) and runs the call again, so no client is ever waited on while other
    programs wait for the lock."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.base = 0
        self.window = b""  # the IOCTL's read-ahead bytes, with the kernel's writes into it
        self.first = b""  # the window as the call began (a restart starts from it)
        self.pending: list[tuple[int, bytes]] = []
        self.fetched: dict[tuple[int, int], bytes | None] = {}  # (addr, n) -> bytes, None: it faults

    def begin(self, base: int, window: bytes) -> None:
        self.base, self.window, self.first, self.pending, self.fetched = base, window, window, [], {}

    def restart(self) -> None:
        self.window, self.pending = self.first, []

    def fetch(self, want: MemoryWanted) -> None:
        self.fetched[(want.addr, want.n)] = self._read_remote(want.addr, want.n)

    def get_user_u64(self, addr: int, byteorder: ByteOrder) -> int:
        off = addr - self.base
        if 0 <= off <= len(self.window) - 8:  # in the window: unpacked in place
            value: int = U64_OF[byteorder].unpack_from(self.window, off)[0]
            return value
        return super().get_user_u64(addr, byteorder)

    def copy_from_user(self, addr: int, n: int) -> bytes:
        if addr + n > ADDRESS_LIMIT:  # access_ok(): past the end of the address space
            raise Fault(addr, "read")
        off = addr - self.base
        if off >= 0 and off + n <= len(self.window):
            return self.window[off : off + n]
        if n > wire.MAX_USER_COPY:
            raise Fault(addr, "read")
        if (addr, n) not in self.fetched:
            if self.deferring:
                raise MemoryWanted(addr, n)
            self.fetched[(addr, n)] = self._read_remote(addr, n)  # no lock held: ask now
        data = self.fetched[(addr, n)]
        if data is None:
            raise Fault(addr, "read")
        for waddr, wdata in self.pending:  # this call's own writes, seen by its later reads
            lo, hi = max(addr, waddr), min(addr + n, waddr + len(wdata))
            if lo < hi:
                data = data[: lo - addr] + wdata[lo - waddr : hi - waddr] + data[hi - addr :]
        return data

    def _read_remote(self, addr: int, n: int) -> bytes | None:
        """MEM_READ, and its MEM_DATA within CLIENT_DEADLINE: the bytes, or None (a fault)."""
        self.transport.sendall(wire.frame(Msg.MEM_READ, wire.MEM_READ.pack(addr, n)))
        msg, payload = self.transport.read(deadline=CLIENT_DEADLINE)
        if msg != Msg.MEM_DATA:
            raise ProtocolError(f"expected MEM_DATA, got {msg.name}")
        (err,), data = wire.unpack(wire.MEM_DATA, payload, exact=False)
        if err:
            return None
        if len(data) != n:
            raise ProtocolError(f"MEM_DATA of {len(data)} bytes for a {n}-byte read")
        return data

    def copy_to_user(self, addr: int, data: bytes) -> None:
        if addr + len(data) > ADDRESS_LIMIT:
            raise Fault(addr, "write")
        off = addr - self.base
        window = self.window
        if 0 <= off < len(window):  # later reads of the window see this write
            end = min(len(window), off + len(data))
            self.window = window[:off] + data[: end - off] + window[end:]
        self.pending.append((addr, bytes(data)))

    def take_writes(self) -> tuple[int, bytes]:
        """The kept writes, encoded for a RESULT: (how many, their bytes)."""
        pending, self.pending = self.pending, []
        if len(pending) == 1:  # the usual: copy_to_user of the struct
            addr, data = pending[0]
            return 1, wire.WRITE.pack(addr, len(data)) + data
        pack = wire.WRITE.pack
        return len(pending), b"".join([pack(addr, len(data)) + data for addr, data in pending])


def host_answer(kernel: BootedKernel, root: str | None = None) -> wire.HostAnswer:
    """What HELLO answers for ``kernel``: the shim's view of its host (``root``: where its files
    were written)."""
    return wire.HostAnswer(
        kernel.host.name,
        kernel.arch.name,
        kernel.kvm.loaded,
        root,
        kernel.host.page_size,
        processor_of(kernel),
        address_space_of(kernel),
    )


def processor_of(kernel: BootedKernel) -> tuple[int, str] | None:
    """A POWER host's (PVR, generation): what qemu-user's CPU should be."""
    cpu = kernel.host.cpu
    generation = cpu.generation
    return (cpu.pvr, generation.name) if cpu.pvr is not None and generation is not None else None


X86_64_TASK_SIZE = 1 << 47  # this machine's user address space (4-level paging)


def address_space_of(kernel: BootedKernel) -> int | None:
    """A POWER host's TASK_SIZE_USER64 (64TB with 4K pages, 4PB with 64K) where it is below this
    machine's: qemu-user then keeps the program's mappings within it, as that kernel would."""
    limits = getattr(kernel.kvm, "memslot_limits", None)
    task = limits.task_size_max if limits is not None else None
    return task if task is not None and task < X86_64_TASK_SIZE else None


class ServerError(KvmsimError):
    """A socket path the server will not use; ``str()`` is one line."""


SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


def check_socket_path(path: str) -> None:
    """Refuse what another user could interfere with: a path in a directory others may write
    (unless it is sticky, like /tmp), an existing file or symlink, a missing directory, a
    path longer than a Unix socket's."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ServerError(f"{path}: longer than a Unix socket path may be ({SUN_PATH_MAX} bytes)")
    if os.path.lexists(path):
        _stale_socket(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise ServerError(f"{parent}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ServerError(f"{parent}: not a directory")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ServerError(
            f"{parent}: other users may write there (mode {st.st_mode & 0o7777:o}); use a private directory"
        )


def _stale_socket(path: str) -> None:
    """``path`` exists: remove it when it is provably a socket of ours that nobody listens on
    (a server killed with SIGKILL left it), else say what it is and how to clear it."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path}: already exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        if st.st_uid != os.getuid():
            raise ServerError(
                f"{path}: a socket of uid {st.st_uid} that nobody listens on; remove it: rm -- {path}"
            ) from None
        os.unlink(path)
        log.warning("%s: removed the socket a dead server left", path)
        return
    except OSError as exc:
        raise ServerError(f"{path}: already exists ({exc.strerror})") from None
    finally:
        probe.close()
    raise ServerError(f"{path}: already exists: a server is listening there")


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Connection:
    """One client process."""

    def __init__(
        self,
        placeholders: Placeholders,
        sock: socket.socket,
        name: str,
        calls: itertools.count[int] | None = None,
        trace: Callable[[Call], None] | None = None,
        hello: bytes = b"{}",
        budget: channel.Budget | None = None,
        root: str | None = None,
        supervision: Supervision | None = None,
        pid: int | None = None,
    ) -> None:
        self.placeholders, self.sock, self.name = placeholders, sock, name
        self.pid = pid  # the client's (SO_PEERCRED): task_pid_nr(current) of its calls
        self.root = root  # the host's files, for a supervised program (LISTENER)
        self.supervision = supervision  # how a program's listener is supervised (None: ENOSYS)
        self.supervisor: Supervising | None = None
        self.hello = hello
        self.budget = budget if budget is not None else channel.Budget()
        self.calls = calls if calls is not None else itertools.count()
        self.trace = trace
        self.transport: Transport = wire.FrameReader(sock, max_payload=MAX_CLIENT_PAYLOAD, stall=FRAME_STALL)
        self.memory = RemoteMemory(self.transport)

    def serve(self) -> None:
        try:
            while True:
                msg, payload = self.transport.read()
                if msg == Msg.HELLO:  # kvmsim env: what the shim needs to know besides the socket
                    self._empty(msg, payload)
                    self.transport.sendall(wire.frame(Msg.HOST, self.hello))
                elif msg == Msg.SHM:  # the shim asks for the shared-memory channel
                    self._empty(msg, payload)
                    self._share()
                elif msg == Msg.LISTENER:  # kvmsim run --server: a program under the seccomp filter
                    self._empty(msg, payload)
                    self._supervise()
                    return
                else:
                    answer, placeholder = self.dispatch(msg, payload)
                    self.transport.sendall(answer)
                    if placeholder is not None:
                        self._pass(placeholder)
                    next(self.calls)
                self._close_stray_fds()
        except wire.Disconnected:
            log.debug("%s: closed by the peer", self.name)
        except (ProtocolError, OSError) as exc:
            log.warning("%s: closing: %s", self.name, exc)
        finally:
            self._close_stray_fds()
            if isinstance(self.transport, SharedChannel):
                self.transport.close()
                self.budget.give_back()
            self.sock.close()

    def _close_stray_fds(self) -> None:
        """Descriptors a peer sent with a frame that takes none: closed, never used."""
        if isinstance(self.transport, wire.FrameReader):
            for fd in self.transport.take_fds():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _supervise(self) -> None:
        """A seccomp listener for a program ``kvmsim run --server`` started (same uid: checked
        at accept): this thread answers its notifications from the served kernel, over the same
        placeholders the shim's programs hold, until the program and its children are gone.
        Anything but one listener is refused (EINVAL); a server or machine without a way to
        supervise says ENOSYS."""
        fds = self.transport.take_fds() if isinstance(self.transport, wire.FrameReader) else []
        way = self.supervision
        err = errno.ENOSYS if way is None or way.unavailable() is not None else 0
        if not err and (len(fds) != 1 or way is None or not way.is_listener(fds[0])):
            err = errno.EINVAL
        if err:
            for fd in fds:
                os.close(fd)
            self.transport.sendall(wire.frame(Msg.RESULT, wire.RESULT.pack(-1, err, 0, 0)))
            return
        assert way is not None
        supervisor = way.supervisor(fds[0], self.placeholders.kernel, self.placeholders, self.root, self.trace)
        self.transport.sendall(wire.frame(Msg.RESULT, wire.RESULT.pack(0, 0, 0, 0)))
        log.debug("%s: supervising a program under the seccomp filter", self.name)
        self.supervisor = supervisor
        try:
            supervisor.serve()
        finally:
            supervisor.close()

    def hang_up(self) -> None:
        """End this connection from another thread (the server is stopping): the peer sees
        EOF, and the serving thread wakes from its read and closes (a supervisor stops)."""
        if self.supervisor is not None:
            self.supervisor.stop()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if isinstance(self.transport, SharedChannel):
            self.transport.interrupt()

    @staticmethod
    def _empty(msg: Msg, payload: bytes) -> None:
        if payload:
            raise ProtocolError(f"a {msg.name} with {len(payload)} bytes of payload")

    def _share(self) -> None:
        """Move to the shared-memory channel if this server can and its shared memory is under
        the cap (else ENOSYS: the socket stays)."""
        if isinstance(self.transport, SharedChannel) or not channel.available() or not self.budget.take():
            self.transport.sendall(wire.frame(Msg.RESULT, wire.RESULT.pack(-1, errno.ENOSYS, 0, 0)))
            return
        try:
            self.transport = self.memory.transport = SharedChannel(self.sock, max_payload=MAX_CLIENT_PAYLOAD)
        except BaseException:
            self.budget.give_back()
            raise
        log.debug("%s: on the shared-memory channel", self.name)

    def _pass(self, fd: int) -> None:
        """The new placeholder, after its RESULT: the program's end, then ours closed."""
        try:
            socket.send_fds(self.sock, [_NEW_FD], [fd])
        finally:
            os.close(fd)

    def _new(self, sim_fd: int, *, nonblock: bool = False) -> int:
        """A placeholder for this process's new simulated file; where none can be made (its
        share of the table is used up, or this server is out of descriptors) the file is
        released and the call fails with EMFILE or ENFILE: this process's only, its
        connection and every other process's go on."""
        try:
            return self.placeholders.new(sim_fd, nonblock=nonblock, owner=self)
        except OSError as exc:
            with contextlib.suppress(KvmError), self.placeholders.call(self.memory) as process:
                process.close(sim_fd)
            raise KvmError(exc.errno or errno.ENFILE, f"no descriptor for the new file: {exc.strerror}") from None

    def _fd_identity(self, fd: int) -> Identity | None:
        """What the client's ``fd`` is (an fd an ioctl's argument names): the identity of the file
        ``/proc/PID/fd/N`` of the client's pid reaches (its own fd: what it could fstat itself;
        the caller waits in the call, so the pid is its), None where it has no such fd or its
        /proc cannot be read (the kernel's EBADF: nothing of the client's is reached)."""
        if self.pid is None:
            return None
        try:
            return identity(os.stat(f"/proc/{self.pid}/fd/{fd}"))
        except OSError:
            return None

    def dispatch(self, msg: Msg, payload: bytes) -> tuple[bytes, int | None]:
        """The RESULT frame, and the placeholder to pass after it (or None)."""
        flags = 0
        fd: int | None = None
        cmd = arg = None
        window = b""
        reason = None
        new: int | None = None
        traced: int | None = None  # what the call returns where RESULT's ret says something else
        try:
            if msg == _IOCTL:
                (fd, cmd, arg, dev, ino), window = wire.unpack(wire.IOCTL, payload, exact=False)
                if len(window) > wire.WINDOW:
                    raise ProtocolError(f"a {len(window)}-byte window (at most {wire.WINDOW})")
                self.memory.begin(arg, window)
                placeholder, ret, creates, field = self.placeholders.ioctl(
                    (dev, ino), cmd, arg, self.memory, self.pid, self._fd_identity
                )
                if placeholder is None:
                    flags = wire.RESULT_FOREIGN  # the shim makes the real call
                elif creates and field is not None:  # the shim writes its new fd at the field, answers 0
                    new, ret, flags = self._new(ret), field, wire.RESULT_NEW_FD | wire.RESULT_FD_FIELD
                    traced = 0
                elif creates:
                    new, ret, flags = self._new(ret), 0, wire.RESULT_NEW_FD
            elif msg == Msg.OPEN:
                self.memory.begin(0, b"")
                (oflags,), path = wire.unpack(wire.OPEN, payload, exact=False)
                with self.placeholders.call(self.memory) as process:
                    sim_fd = process.open(path.decode(errors="replace"), oflags)
                new = self._new(sim_fd, nonblock=bool(oflags & os.O_NONBLOCK))
                ret, flags = 0, wire.RESULT_NEW_FD
            elif msg == Msg.IDENTIFY:
                self.memory.begin(0, b"")
                (dev, ino), _ = wire.unpack(wire.IDENTIFY, payload)
                found = self.placeholders.get((dev, ino))
                ret = wire.NOT_OURS if found is None else wire.identified(found.kind.code, found.file_id)
            else:
                raise ProtocolError(f"unexpected {msg.name} from a client")
        except KvmError as exc:
            ret, err, reason = -1, exc.errno or errno.EIO, exc.reason
        else:
            err = 0
        if self.trace is not None and msg != Msg.IDENTIFY and flags != wire.RESULT_FOREIGN:
            done = tuple(self.memory.pending)
            named = payload[wire.OPEN.size :].decode(errors="replace") if msg == Msg.OPEN else None
            shown = ret if traced is None else traced
            self.trace(Call(self.name, msg.name, fd, cmd, arg, window[:24], done, shown, err, reason, named))
        count, writes = self.memory.take_writes()  # E2BIG's write-back travels with its error
        return wire.frame(_RESULT, wire.RESULT.pack(ret, err, flags, count), writes), new


class Server:
    """Listen on ``path`` and serve ``kernel`` to every same-uid peer, one thread each."""

    def __init__(
        self,
        kernel: BootedKernel,
        path: str | Path,
        *,
        trace: Callable[[Call], None] | None = None,
        root: str | None = None,
        supervision: Supervision | None = None,
    ) -> None:
        self.kernel, self.path, self.trace, self.root = kernel, str(path), trace, root
        self.supervision = supervision  # LISTENER: a program to supervise (kvmsim run --server)
        raise_fd_limit()  # one end of every placeholder its programs hold is the server's
        self.placeholders = Placeholders(kernel, on_release=self._released)
        # what HELLO answers: the shim's view of the host (root: where its files were written)
        self.hello = host_answer(kernel, root).encode()
        check_socket_path(self.path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created 0600 (never chmod: it could be a symlink by then)
        try:
            self.listener.bind(self.path)
        except OSError as exc:
            self.listener.close()
            raise ServerError(f"{self.path}: cannot create the socket: {exc.strerror}") from None
        finally:
            os.umask(old)
        self.listener.listen(128)
        self.listener.settimeout(0.2)  # serve_forever polls for stop()
        self._stop = threading.Event()
        self._count = 0
        self.threads: list[threading.Thread] = []
        self.connections: dict[threading.Thread, Connection] = {}
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # for EMFILE
        self.calls = itertools.count()  # calls served, over every connection (next() is atomic)
        self.budget = channel.Budget()  # the shared memory all connections may map at once
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _shed(self, exc: OSError) -> None:
        """Out of descriptors: accept the pending connection on the spare one and drop it,
        so the peer is not left waiting, then back off."""
        self._warn_once("emfile", "out of file descriptors (%s): dropping new connections until some close", exc)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            with contextlib.suppress(OSError):
                self.listener.accept()[0].close()
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._stop.wait(0.05)

    def serve_forever(self) -> None:
        self.placeholders.watch()  # releases what programs let go of, beside the connections
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._shed(exc)
                    continue
                raise
            self._count += 1
            sock.settimeout(None)
            uid, pid = peer_uid(sock), peer_pid(sock)
            name = f"connection {self._count} (pid {pid})"
            if uid != os.getuid():
                log.warning("%s: refused: peer uid %d is not the server's uid %d", name, uid, os.getuid())
                sock.close()
                continue
            self.threads = [t for t in self.threads if t.is_alive()]
            self.connections = {t: c for t, c in self.connections.items() if t.is_alive()}
            if len(self.threads) >= MAX_CONNECTIONS:
                self._warn_once("cap", "%d processes connected: dropping more until some leave", MAX_CONNECTIONS)
                sock.close()
                continue
            connection = Connection(
                self.placeholders,
                sock,
                name,
                self.calls,
                self.trace,
                self.hello,
                self.budget,
                self.root,
                self.supervision,
                pid,
            )
            thread = threading.Thread(target=connection.serve, name=name, daemon=True)
            self.connections[thread] = connection
            thread.start()
            self.threads.append(thread)

    def _released(self, placeholder: Placeholder) -> None:
        if self.trace is not None:
            self.trace(Call("kernel", "RELEASE", placeholder.sim_fd, None, None, b"", (), 0, 0, None))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="kvmsim-serve", daemon=True)
        thread.start()
        return thread

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        connections = list(self.connections.items())
        for _thread, connection in connections:  # the processes still attached get EOF (then EIO)
            connection.hang_up()
        deadline = time.monotonic() + STOP_WAIT  # each hung-up thread ends in moments; bounded all the same
        for thread, _connection in connections:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.placeholders.close()
