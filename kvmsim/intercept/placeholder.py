"""Placeholders: each simulated file a program holds is a real kernel object in it.

A simulated file (an open ``/dev/kvm``, a VM fd) is backed in the program by one end of an
``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair; this side keeps the other end.  The real kernel then
does whatever the program does to its fds — dup, fork, vfork, exec without O_CLOEXEC,
close_range, fclose inside any libc, SCM_RIGHTS to another process of the run — and nothing of
ours sees it.  A call on an fd finds its simulated file by the placeholder's **identity** (the
socket inode's dev/ino, which the program's ``fstat`` and ``/proc/PID/fd`` both show), never
by the fd number; when the last real reference is gone this side's end hangs up and the
simulated file is released (the kernel's fput at the last close).

The placeholder of a file whose ``.mmap`` maps pages (a vcpu's ``kvm_run``, a TCE table's
TCEs: kvmsim.kernel.anon_inodes, ``backing``) is a sealed memfd instead, of the size the file
maps, which this side maps too and the simulated file uses as its pages: the program's own
``mmap`` of it (never intercepted) shares them with the simulated kernel, as the real one does.
So is a file the program reads (a stats file): what it reads, which the simulated kernel keeps
current, the program's open of it read-only.  Their seals (no shrinking, no growing) keep a
program from making this side's mapping fault.  A memfd has no far
end to hang up; its release is seen through an open-file-description lock this side puts on the
program's file before handing it over (``F_OFD_SETLK``): the lock goes with that file's last
reference (its last fd closed *and* its last mapping gone, the kernel's ``__fput``), which this
side asks from a file of its own (``F_OFD_GETLK``) at every reap, and every call reaps first (a
LIOBN closed is free for the next KVM_CREATE_SPAPR_TCE at once, as in the kernel).

One table for both ways of catching calls (kvmsim.seccomp's supervisor and the preload
shim's server), over one simulated process: the simulated kernel's own fd numbers are its
business, what the program sees are the placeholders.  Its lock serialises every call into
the simulated kernel (a server answers many connections at once)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import mmap
import os
import resource
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..kernel.anon_inodes import DEV, FileKind
from ..kernel.errors import KvmError
from ..kernel.kvm_main import FOREIGN
from ..kernel.usermem import UserAccess

if TYPE_CHECKING:
    from ..kernel.kvm_main import BootedKernel, File, ForeignFile, Process

Identity = tuple[int, int]  # (st_dev, st_ino) of the program's end
PLACEHOLDER_TYPE = socket.SOCK_SEQPACKET  # a message socket: one end shut, reads are at their end at once
MAX_FILES_PER_PROGRAM = 4096  # simulated files one program (a run, a shim connection) may hold: then EMFILE
RESERVE = 64  # descriptors this process keeps for itself (connections, /proc, the host's files): then ENFILE
F_OFD_GETLK, F_OFD_SETLK = 36, 37  # fcntl.h (Python's fcntl module has them from 3.13 on Linux)
FLOCK = struct.Struct("hhqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid


def raise_fd_limit() -> int:
    """RLIMIT_NOFILE's soft limit raised to the hard one (a supervisor or server holds one end
    of every placeholder its programs hold); the limit now in force.  Called once the
    program is started, so it keeps the limit it was given."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@attrs.frozen
class Placeholder:
    """A simulated file the program holds: its number in the simulated kernel's table, its
    kind, and this side's end: the socketpair's, or a memory file's (its bytes mapped here, and a
    file of this side's own that asks whether the program's still holds its lock)."""

    sim_fd: int  # -1: an O_PATH open of /dev/kvm (every ioctl EBADF)
    kind: FileKind
    peer: socket.socket | None  # None: a memory file, which has no far end
    owner: object = None  # the program it counts against (MAX_FILES_PER_PROGRAM)
    mapping: mmap.mmap | None = None  # a memory file's bytes, shared with the program
    file_id: int = 0  # what the kind's link is formatted with (a vcpu's id)
    watch: int = -1  # a memory file's: this side's own open of it (F_OFD_GETLK)

    @property
    def link(self) -> str:
        """What /proc/PID/fd/N of the placeholder reads: the simulated file's link."""
        return self.kind.link_of(self.file_id)

    def held(self) -> bool:
        """Does the program still hold a memory file (its lock is there)?"""
        try:
            got = fcntl.fcntl(self.watch, F_OFD_GETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        except OSError:
            return False
        return bool(FLOCK.unpack(got)[0] != fcntl.F_UNLCK)


def identity(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino


class _NoMemory(UserAccess):
    """The table's process between calls: every call brings the caller's memory."""


class MemoryWanted(Exception):
    """Raised by a :class:`Deferring` memory inside the table's lock: the call needs bytes
    only a client can send.  The table lets go of its lock, has them fetched, and runs the
    call again from the start (the simulated kernel reads before it acts, as the kernel's
    ioctls copy their arguments in first)."""

    def __init__(self, addr: int, n: int) -> None:
        super().__init__(addr, n)
        self.addr, self.n = addr, n


class Deferring(UserAccess):
    """A memory reached through a client (the shim's server): while the table's lock is
    held (``deferring``) it never waits on the client, it raises :class:`MemoryWanted`."""

    deferring = False

    def restart(self) -> None:
        """Forget what the last attempt wrote: the call runs again from its start."""

    def fetch(self, want: MemoryWanted) -> None:
        """Fetch the wanted bytes from the client (outside any lock, within a deadline)."""
        raise NotImplementedError


MAX_ATTEMPTS = 64  # a call's restarts, each after one fetch: an ioctl's reads are a handful


_NO_MEMORY = _NoMemory()


class Placeholders:
    """The simulated files of one simulated kernel's programs, by placeholder identity."""

    def __init__(self, kernel: BootedKernel, *, on_release: Callable[[Placeholder], None] | None = None) -> None:
        self.kernel = kernel
        self.process: Process = kernel.process(_NO_MEMORY)
        self.process.max_files = 1 << 30  # the program's own RLIMIT_NOFILE holds, where its placeholder lands
        self.lock = threading.Lock()
        self.on_release = on_release
        self._files: dict[Identity, Placeholder] = {}
        self._by_peer: dict[int, Identity] = {}
        self._held: dict[object, int] = {}  # owner -> simulated files it holds
        self._limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._epoll = select.epoll()

    def fileno(self) -> int:
        """Readable when a placeholder was written to or let go of: then :meth:`reap`."""
        return self._epoll.fileno()

    def new(self, sim_fd: int, *, nonblock: bool = False, owner: object = None) -> int:
        """A placeholder for ``sim_fd`` (-1: an O_PATH /dev/kvm): the program's end is returned
        (the caller installs it in the program and closes its own copy).  OSError EMFILE where
        ``owner`` holds MAX_FILES_PER_PROGRAM already, ENFILE where this process is within
        RESERVE of its descriptor limit: one program cannot starve the others, or the server."""
        with self.lock:
            if self._held.get(owner, 0) >= MAX_FILES_PER_PROGRAM:
                raise OSError(errno.EMFILE, f"{MAX_FILES_PER_PROGRAM} simulated files held already")
            kind = self.process.file_kind(sim_fd) if sim_fd >= 0 else DEV
            file_id = self.process.file_id(sim_fd) if sim_fd >= 0 else 0
        if kind.backing != "socket":
            return self._new_memory(sim_fd, kind, file_id, owner)
        try:
            theirs, ours = socket.socketpair(socket.AF_UNIX, PLACEHOLDER_TYPE)
        except OSError as exc:
            if exc.errno == errno.EMFILE:  # this process's, not the program's: the system's table
                raise OSError(errno.ENFILE, "the simulated kernel is out of descriptors") from None
            raise
        if max(theirs.fileno(), ours.fileno()) >= self._limit - RESERVE:  # the lowest free fds: near the limit
            theirs.close()
            ours.close()
            raise OSError(errno.ENFILE, "the simulated kernel is out of descriptors")
        ours.shutdown(socket.SHUT_WR)  # the program's reads end at once (EOF), never hang
        theirs.setblocking(not nonblock)
        key = identity(os.fstat(theirs.fileno()))
        with self.lock:
            self._files[key] = Placeholder(sim_fd, kind, ours, owner, file_id=file_id)
            self._by_peer[ours.fileno()] = key
            self._held[owner] = self._held.get(owner, 0) + 1
            self._epoll.register(ours.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        return theirs.detach()

    def _new_memory(self, sim_fd: int, kind: FileKind, file_id: int, owner: object) -> int:
        """A memory file's placeholder, sealed at its size, mapped here and made the simulated
        file's bytes (a mapped kind's pages; what a stats file reads, which the simulated kernel
        keeps current), locked (its release).  The program's file is an open of its own: read-write
        for pages it maps, read-only for a file it reads."""
        with self.lock:
            size = self.process.mapped_size(sim_fd)
        try:
            fd = os.memfd_create(kind.link.split(":")[1], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                raise OSError(errno.ENFILE, "the simulated kernel is out of descriptors") from None
            raise
        theirs = watch = -1
        try:
            if fd >= self._limit - RESERVE:
                raise OSError(errno.ENFILE, "the simulated kernel is out of descriptors")
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            mode = os.O_RDWR if kind.mapped else os.O_RDONLY
            theirs = os.open(f"/proc/self/fd/{fd}", mode | os.O_CLOEXEC)  # the program's file
            watch = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)  # ours: no lock
            fcntl.fcntl(theirs, F_OFD_SETLK, FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0))
            # a file of no pages (a TCE table whose size wrapped to none) has nothing to share
            shared = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) if size else None
            key = identity(os.fstat(theirs))
        except BaseException:
            for f in (theirs, watch):
                if f >= 0:
                    os.close(f)
            raise
        finally:
            os.close(fd)
        with self.lock:
            if shared is not None:
                self.process.share_mapping(sim_fd, shared)
            self._files[key] = Placeholder(sim_fd, kind, None, owner, shared, file_id, watch)
            self._held[owner] = self._held.get(owner, 0) + 1
        return theirs

    def get(self, key: Identity) -> Placeholder | None:
        with self.lock:
            return self._files.get(key)

    def of(self, st: os.stat_result) -> Placeholder | None:
        """The placeholder a real file (its stat) is, or None."""
        return self.get(identity(st))

    def ioctl(
        self,
        key: Identity,
        cmd: int,
        arg: int,
        memory: UserAccess,
        pid: int | None = None,
        fd_identity: Callable[[int], Identity | None] | None = None,
    ) -> tuple[Placeholder | None, int, bool, int | None]:
        """``sys_ioctl`` on the file the placeholder ``key`` stands for, with the caller's
        memory and pid (what a new VM's or vcpu's stats id says), found and called under one
        hold of the lock (a release in between cannot hand its number to another file): (the
        placeholder, or None when ``key`` is none of ours; the return; whether the call made a
        file, anon_inode_getfd's: a VM, a vcpu, a TCE table, a stats file, a device; where the
        new fd goes when not in the return, ``Process.fd_field``: then the return is the new
        file's number here, and the edge writes the program's at that offset and answers 0).
        ``fd_identity`` says what the program's fd an argument names is (None: not open): the
        simulated kernel's fget, here by the placeholder's identity.  KvmError as sys_ioctl
        raises it.  Every ioctl a program makes comes this way."""
        # what the programs let go of is released first: the kernel's fput at a last close is done
        # before the closer's next call (a socket's hang-up and a memfd's last reference are
        # visible here at once), and a call may depend on it (a LIOBN free again, a closed XICS
        # device's VM without an interrupt controller: KVM_IRQ_LINE's ENXIO)
        self.reap(0)
        for _attempt in range(MAX_ATTEMPTS):
            with self.lock:
                placeholder = self._files.get(key)
                if placeholder is None:
                    return None, 0, False, None
                process = self.process
                process.memory = memory
                process.resolve_fd = None if fd_identity is None else functools.partial(self._fget, fd_identity)
                if pid is not None:
                    process.pid = pid
                if isinstance(memory, Deferring):
                    memory.deferring = True
                try:
                    ret = process.sys_ioctl(placeholder.sim_fd, cmd, arg)
                    field = process.fd_field(placeholder.sim_fd, cmd) if process.new_fds else None
                    return placeholder, ret if field is None else process.new_fds[-1], bool(process.new_fds), field
                except MemoryWanted as exc:
                    want = exc
                finally:
                    process.memory = _NO_MEMORY
                    process.resolve_fd = None
                    if isinstance(memory, Deferring):
                        memory.deferring = False
            assert isinstance(memory, Deferring)
            memory.fetch(want)  # the lock is free meanwhile: a stalled client stalls itself only
            memory.restart()
        raise KvmError(errno.EFAULT, f"more than {MAX_ATTEMPTS} reads of user memory in one call")

    def _fget(self, fd_identity: Callable[[int], Identity | None], fd: int) -> File | ForeignFile | None:
        """fget() of the program's ``fd`` (under the lock): the simulated file its placeholder
        stands for, FOREIGN for any other file it has open, None where it has none (or an
        O_PATH /dev/kvm: fget refuses a path-only file)."""
        key = fd_identity(fd) if 0 <= fd < 1 << 31 else None
        if key is None:
            return None
        placeholder = self._files.get(key)
        if placeholder is None:
            return FOREIGN
        return self.process.file_at(placeholder.sim_fd) if placeholder.sim_fd >= 0 else None

    def call(self, memory: UserAccess) -> _Call:
        """``with table.call(memory) as process:`` — the simulated process, with the caller's
        memory, under the table's lock."""
        return _Call(self, memory)

    def _notify(self, released: list[Placeholder]) -> None:
        if self.on_release is not None:
            for placeholder in released:
                self.on_release(placeholder)

    def _reap_memory(self) -> list[Placeholder]:
        """Release the memory files the programs no longer hold (under the lock)."""
        gone = [key for key, p in self._files.items() if p.peer is None and not p.held()]
        return [self._drop(key) for key in gone]

    def reap(self, timeout: float = 0) -> None:
        """Drain what programs wrote to placeholders (/dev/kvm would take nothing) and release
        the simulated files whose last real reference is gone."""
        with self.lock:
            released = self._reap_memory()
        self._notify(released)
        if timeout:
            self._epoll.poll(timeout)  # wait for something, outside the lock (its events come again)
        dropped = []
        with self.lock:  # the events and what they name at once: an fd a drop frees, a new file may take
            for peer_fd, events in self._epoll.poll(0):
                key = self._by_peer.get(peer_fd)
                if key is None:
                    continue
                placeholder = self._files[key]
                if not events & (select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR):
                    assert placeholder.peer is not None  # only a socket's peer is polled
                    with contextlib.suppress(OSError):
                        while placeholder.peer.recv(65536, socket.MSG_DONTWAIT):
                            pass
                    continue
                dropped.append(self._drop(key))
        self._notify(dropped)

    def _drop(self, key: Identity) -> Placeholder:
        placeholder = self._files.pop(key)
        left = self._held.get(placeholder.owner, 1) - 1
        if left:
            self._held[placeholder.owner] = left
        else:
            self._held.pop(placeholder.owner, None)
        if placeholder.peer is not None:
            self._by_peer.pop(placeholder.peer.fileno(), None)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(placeholder.peer.fileno())
            placeholder.peer.close()
        if placeholder.watch >= 0:
            os.close(placeholder.watch)
        if placeholder.mapping is not None and placeholder.sim_fd >= 0:  # a copy goes; a file's own pages stay
            with contextlib.suppress(KvmError):
                if self.process.unshare_mapping(placeholder.sim_fd, placeholder.mapping):
                    placeholder.mapping.close()
        if placeholder.sim_fd >= 0:
            with contextlib.suppress(KvmError):
                self.process.close(placeholder.sim_fd)
        return placeholder

    def watch(self) -> threading.Thread:
        """Reap in a thread of its own (a server's connections never wait for it), until :meth:`close`."""

        def loop() -> None:
            with contextlib.suppress(OSError, ValueError):  # closed under it: done
                while not self._epoll.closed:
                    self.reap(timeout=0.2)

        thread = threading.Thread(target=loop, name="kvmsim-placeholders", daemon=True)
        thread.start()
        return thread

    def __len__(self) -> int:
        with self.lock:
            return len(self._files)

    def close(self) -> None:
        """Every simulated file released, this side's ends closed."""
        with self.lock:
            for key in list(self._files):
                self._drop(key)
            self._epoll.close()


class _Call:
    def __init__(self, table: Placeholders, memory: UserAccess) -> None:
        self.table, self.memory = table, memory

    def __enter__(self) -> Process:
        self.table.lock.acquire()
        self.table.process.memory = self.memory
        return self.table.process

    def __exit__(self, *exc: object) -> None:
        self.table.process.memory = _NO_MEMORY
        self.table.lock.release()
