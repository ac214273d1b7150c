"""A standby supervisor for a program attached to a server (``kvmsim run --server``).

The server supervises the program over the listener ``kvmsim run`` handed it; ``kvmsim run``
keeps its own copy and stands by.  Should the server go away (its connection ends) or stop
answering (a notification waits longer than ``STALL`` seconds: a SIGSTOPped server; then each
waits ``SAMPLE`` only, until the server takes one again), the standby answers instead, with no
kernel at all: a call on a path or fd that is not the simulated host's is the program's own
(CONTINUE, as ever), and one that is (the host's files, /dev/kvm, a KVM ioctl) is EIO, as
SECURITY.md promises for a program whose server is gone.  So an ordinary open, stat, exec or uname
is never held hostage by the server; without a listener the filter would answer every one of
them ENOSYS.  While ``kvmsim run`` lives: a background child of the program that outlives it
keeps the server's supervision only."""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from typing import TYPE_CHECKING

from ..kernel.errors import KvmError
from ..uapi import Arch
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..kernel.kvm_main import BootedKernel

STALL = 2.0  # seconds a notification may wait for the server before the standby answers it
SAMPLE = 0.05  # how often a waiting notification is looked at again


def _gone() -> BootedKernel:
    raise KvmError(errno.EIO, "the server is gone or stalled: the simulated host cannot answer")


class Standby:
    """Stands by ``listener`` (a copy of the one the server took) while ``server`` lives."""

    def __init__(self, listener: int, server: socket.socket, arch: Arch, root: str | None) -> None:
        self.listener, self.server = listener, server
        self.supervisor = Supervisor(_gone, arch, listener, root=root)  # its stop() and close() are ours
        self.server_gone = False

    def _server_hung_up(self) -> bool:
        try:
            return self.server.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self.server, select.POLLIN)
        poller.register(self.supervisor.stopping, select.POLLIN)
        waiting_since: float | None = None
        stalled = False
        while True:
            timeout = None if waiting_since is None else SAMPLE * 1000
            ready = dict(poller.poll(timeout))
            if self.supervisor.stopping in ready:
                return
            if not self.server_gone and self.server.fileno() in ready and self._server_hung_up():
                self.server_gone = True
                poller.unregister(self.server)
            events = ready.get(self.listener, 0)
            if events & (select.POLLHUP | select.POLLERR) and not events & select.POLLIN:
                return  # every task of the program is gone
            if not events & select.POLLIN:
                if waiting_since is not None:
                    stalled = False  # the server took what was waiting: it answers again
                waiting_since = None
                continue
            now = time.monotonic()
            if self.server_gone:
                self.supervisor._one()
            elif waiting_since is None:
                waiting_since = now
            elif now - waiting_since > (SAMPLE if stalled else STALL):
                self.supervisor._one()  # the server has left it waiting: answered here
                stalled, waiting_since = True, None  # the next waits only SAMPLE, till the server takes one
            if not self.server_gone and waiting_since is not None:
                time.sleep(SAMPLE)  # the server may take it meanwhile

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve, name="kvmsim-standby", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.supervisor.stop()

    def close(self) -> None:
        """The supervisor's pipe and pidfds, and the listener copy it was given."""
        self.supervisor.close()
