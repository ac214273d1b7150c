"""``kvmsim run --intercept seccomp``: the command under the filter, this process its
supervisor; the run's directory holds the host's files (kvmsim.preload.command's, shared by
both intercepts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..preload.command import host_view, run_directory, wait_forwarding
from .launch import launch
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..kernel.kvm_main import BootedKernel
    from ..kernel.profile import Host
    from ..kernel.revisions import AbiRevision
    from ..preload.trace import Call


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
            failed = started.exec_error()
            if failed is not None:
                raise failed
            return wait_forwarding(started.proc)
        finally:
            supervisor.stop()
            thread.join()
            supervisor.close()
            root.close()  # written and closed already, where the kernel booted
