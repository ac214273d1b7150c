"""Placeholders: each simulated file a program holds is a real kernel object in it.

A simulated file (an open ``/dev/kvm``, a VM fd) is backed in the program by one end of an
``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair; this side keeps the other end.  The real kernel then
does whatever the program does to its fds — dup, fork, vfork, exec without O_CLOEXEC,
close_range, fclose inside any libc, SCM_RIGHTS to another process of the run — and nothing of
ours sees it.  A call on an fd finds its simulated file by the placeholder's **identity** (the
socket inode's dev/ino, which the program's ``fstat`` and ``/proc/PID/fd`` both show), never
by the fd number; when the last real reference is gone this side's end hangs up and the
simulated file is released (the kernel's fput at the last close).

One table for both ways of catching calls (kvmsim.seccomp's supervisor and the preload
shim's server), over one simulated process: the simulated kernel's own fd numbers are its
business, what the program sees are the placeholders.  Its lock serialises every call into
the simulated kernel (a server answers many connections at once)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..kernel.errors import KvmError
from ..kernel.usermem import UserAccess

if TYPE_CHECKING:
    from ..kernel.kvm_main import BootedKernel, Process

Identity = tuple[int, int]  # (st_dev, st_ino) of the program's end
PLACEHOLDER_TYPE = socket.SOCK_SEQPACKET  # a message socket: one end shut, reads are at their end at once


@attrs.frozen
class Placeholder:
    """A simulated file the program holds: its number in the simulated kernel's table and
    this side's end of the socketpair."""

    sim_fd: int
    peer: socket.socket
    is_vm: bool


def identity(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino


class _NoMemory(UserAccess):
    """The table's process between calls: every call brings the caller's memory."""


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
        self._epoll = select.epoll()

    def fileno(self) -> int:
        """Readable when a placeholder was written to or let go of: then :meth:`reap`."""
        return self._epoll.fileno()

    def new(self, sim_fd: int, *, is_vm: bool, nonblock: bool = False) -> int:
        """A placeholder for ``sim_fd``: the program's end is returned (the caller installs it
        in the program and closes its own copy)."""
        theirs, ours = socket.socketpair(socket.AF_UNIX, PLACEHOLDER_TYPE)
        ours.shutdown(socket.SHUT_WR)  # the program's reads end at once (EOF), never hang
        theirs.setblocking(not nonblock)
        key = identity(os.fstat(theirs.fileno()))
        with self.lock:
            self._files[key] = Placeholder(sim_fd, ours, is_vm)
            self._by_peer[ours.fileno()] = key
            self._epoll.register(ours.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        return theirs.detach()

    def get(self, key: Identity) -> Placeholder | None:
        with self.lock:
            return self._files.get(key)

    def of(self, st: os.stat_result) -> Placeholder | None:
        """The placeholder a real file (its stat) is, or None."""
        return self.get(identity(st))

    def ioctl(self, key: Identity, cmd: int, arg: int, memory: UserAccess) -> tuple[Placeholder | None, int, bool]:
        """``sys_ioctl`` on the file the placeholder ``key`` stands for, with the caller's
        memory, found and called under one hold of the lock (a release in between cannot hand
        its number to another file): (the placeholder, or None when ``key`` is none of ours;
        the return; whether the call made a file, anon_inode_getfd's: a VM).  KvmError as
        sys_ioctl raises it.  Every ioctl a program makes comes this way."""
        with self.lock:
            placeholder = self._files.get(key)
            if placeholder is None:
                return None, 0, False
            process = self.process
            process.memory = memory
            try:
                creates = process.returns_fd(placeholder.sim_fd, cmd)
                return placeholder, process.sys_ioctl(placeholder.sim_fd, cmd, arg), creates
            finally:
                process.memory = _NO_MEMORY

    def call(self, memory: UserAccess) -> _Call:
        """``with table.call(memory) as process:`` — the simulated process, with the caller's
        memory, under the table's lock."""
        return _Call(self, memory)

    def reap(self, timeout: float = 0) -> None:
        """Drain what programs wrote to placeholders (/dev/kvm would take nothing) and release
        the simulated files whose last real reference is gone."""
        for peer_fd, events in self._epoll.poll(timeout):
            with self.lock:
                key = self._by_peer.get(peer_fd)
                if key is None:
                    continue
                placeholder = self._files[key]
                if not events & (select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR):
                    with contextlib.suppress(OSError):
                        while placeholder.peer.recv(65536, socket.MSG_DONTWAIT):
                            pass
                    continue
                self._drop(key)
            if self.on_release is not None:
                self.on_release(placeholder)

    def _drop(self, key: Identity) -> None:
        placeholder = self._files.pop(key)
        self._by_peer.pop(placeholder.peer.fileno(), None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(placeholder.peer.fileno())
        placeholder.peer.close()
        with contextlib.suppress(KvmError):
            self.process.close(placeholder.sim_fd)

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
