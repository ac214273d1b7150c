"""``kvmsim run --intercept seccomp``: the command under the filter, this process its
supervisor; the run's directory holds the host's files (kvmsim.preload.command's, shared by
both intercepts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..kernel.kvm_main import BootedKernel
from ..preload.command import host_view, run_directory, wait_forwarding
from ..preload.trace import Call
from .launch import launch
from .supervisor import Supervisor


def run(kernel: BootedKernel, command: Sequence[str], *, trace: Callable[[Call], None] | None = None) -> int:
    """Run ``command`` against ``kernel``; its exit code (128 + N when killed by signal N).
    FileNotFoundError / PermissionError when it cannot be executed."""
    with run_directory() as workdir:
        started = launch(command)
        supervisor = Supervisor(kernel, started.listener, root=host_view(kernel, workdir.subdir("root")), trace=trace)
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
