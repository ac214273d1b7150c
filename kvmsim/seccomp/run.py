"""``kvmsim run --intercept seccomp``: the command under the filter, this process its
supervisor; the run's directory holds the host's files (kvmsim.intercept.command's, shared by
both intercepts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..intercept.command import host_view, run_directory, wait_forwarding
from .launch import Launched, launch
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..intercept.trace import Call
    from ..kernel.kvm_main import BootedKernel
    from ..kernel.profile import Host
    from ..uapi import AbiRevision


def run(host: Host, rev: AbiRevision, command: Sequence[str], *, trace: Callable[[Call], None] | None = None) -> int:
    """Run ``command`` against a kernel of ``rev`` on ``host``, booted when the program first
    needs it; its exit code (128 + N when killed by signal N).  FileNotFoundError /
    PermissionError when it cannot be executed."""

    def boot() -> BootedKernel:
        from ..kernel.kvm_main import BootedKernel

        return BootedKernel(host, rev)

    with run_directory() as workdir:
        root = workdir.subdir("root")
        started = launch(command)
        supervisor = Supervisor(
            boot, host.arch, started.listener, root=root.path, host_files=lambda k: host_view(k, root), trace=trace
        )
        thread = supervisor.start()
        try:
            return _exit_code(started)
        finally:
            supervisor.stop()
            thread.join()
            supervisor.close()
            root.close()  # written and closed already, where the kernel booted


def run_attached(socket_path: str, command: Sequence[str]) -> int:
    """Run ``command`` under the filter with the running ``kvmsim serve`` at ``socket_path`` as
    its supervisor: the listener goes to the server over its socket (a server of this user's
    only, as the shim's), which answers from its kernel and the placeholders its other
    programs hold.  The exit code as :func:`run`'s."""
    import os
    import socket

    from ..intercept import wire
    from ..intercept.attach import CONNECT_TIMEOUT, AttachError, ask_host, connect
    from ..intercept.command import StartError
    from ..uapi import ARCHES
    from .standby import Standby

    host = ask_host(socket_path)  # the machine and the host's files, for the standby
    sock = connect(socket_path)
    try:
        started = launch(command)
        standby: Standby | None = None
        try:
            try:
                socket.send_fds(sock, [wire.frame(wire.Msg.LISTENER)], [started.listener])
                msg, payload = wire.FrameReader(sock, max_payload=4096, stall=CONNECT_TIMEOUT).read()
                (_ret, err, _flags, _count), _ = wire.unpack(wire.RESULT, payload, exact=False)
            except (OSError, wire.ProtocolError) as exc:
                started.proc.kill()
                raise AttachError(f"{socket_path}: did not take the program's listener: {exc}") from None
            if msg != wire.Msg.RESULT or err:
                started.proc.kill()
                why = os.strerror(err) if err else f"answered {msg.name}"
                raise StartError(f"{socket_path}: the server cannot supervise the program: {why}")
            standby = Standby(started.listener, sock, ARCHES[host.machine], host.root)  # our copy of the listener
            thread = standby.start()
            try:
                return _exit_code(started)
            finally:
                standby.stop()
                thread.join()
        finally:
            if standby is not None:
                standby.close()  # the listener copy with it
            else:
                os.close(started.listener)
    finally:
        sock.close()


def _exit_code(started: Launched) -> int:
    """The command's exit code once it runs (its exec's failure raised)."""
    failed = started.exec_error()
    if failed is not None:
        raise failed
    return wait_forwarding(started.proc)
