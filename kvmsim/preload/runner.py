"""``kvmsim run --intercept preload``: a command run against a simulated host through the
preload shim and a server on a private socket (a fresh 0700 directory) — the way for POWER
binaries under qemu-user and kernels without seccomp user notification (kvmsim.seccomp is
the other way, below libc).  The command's exit code is returned; the server and the run's
directory are removed however the command ends (normal exit, crash, or Ctrl-C, which is
forwarded to it).

A POWER binary (``--arch ppc64le|ppc64``, or found from its ELF header) runs under the
matching qemu-user with a shim cross-built for it; its byte order must be the host
profile's."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from ..intercept.build import BuildError, preloadable
from ..intercept.command import (
    FOREIGN,
    Foreign,
    StartError,
    host_view,
    run_directory,
    target_arch,
    unreachable,
    wait_forwarding,
)
from ..intercept.server import Server, ServerError
from ..intercept.trace import Call
from ..intercept.wire import HostAnswer
from ..kernel.kvm_main import BootedKernel
from .library import build_shim


def qemu_binary(foreign: Foreign) -> str:
    for name in (f"{foreign.qemu}-static", foreign.qemu):
        if shutil.which(name):
            return name
    raise BuildError(f"{foreign.qemu}-static is not installed (apt-get install qemu-user-static)")


def host_answer(kernel: BootedKernel, root: str | None = None) -> HostAnswer:
    """What the shim is told about ``kernel``'s host (a server's HOST answer says the same)."""
    return HostAnswer(kernel.host.name, kernel.arch.name, kernel.kvm.loaded, root)


def prepare(
    host: HostAnswer,
    command: Sequence[str],
    socket_path: str,
    *,
    arch: str | None = None,
    allow_unreached: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``command`` against the server at ``socket_path``.
    A program the shim cannot reach is refused (it would talk to this machine's real
    /dev/kvm) unless ``allow_unreached``."""
    why = unreachable(shutil.which(command[0]) or command[0])
    if why is not None and not allow_unreached:
        raise StartError(
            f"{command[0]}: {why}: the preload shim cannot reach it, and it would see this machine's "
            "real /dev/kvm (--allow-unreached runs it anyway)"
        )
    arch = target_arch(host.name, host.machine, command, arch)
    if arch is None:
        return list(command), shim_environment(host, socket_path, build_shim())
    foreign = FOREIGN[arch]
    shim = build_shim(cc=f"{foreign.triplet}-gcc")
    argv = [qemu_binary(foreign), "-L", foreign.sysroot]
    # for the program, not qemu; the socket channel: TCG's atomics and futexes are not the host's
    for key, value in {**shim_variables(host, socket_path, shim), "KVMSIM_CHANNEL": "socket"}.items():
        argv += ["-E", f"{key}={value}"]
    return argv + list(command), dict(os.environ)


def run(
    kernel: BootedKernel,
    command: Sequence[str],
    *,
    arch: str | None = None,
    trace: Callable[[Call], None] | None = None,
    allow_unreached: bool = False,
) -> int:
    """Run ``command`` against ``kernel`` through the shim and a server of its own; its exit
    code (128 + N when killed by signal N)."""
    with run_directory() as workdir:
        view = host_view(kernel, workdir.subdir("root"))
        try:
            server = Server(kernel, workdir / "kvm.sock", trace=trace)
        except ServerError as exc:
            raise StartError(f"{exc} (set TMPDIR to a shorter directory)") from None
        try:
            argv, env = prepare(
                host_answer(kernel, view), command, server.path, arch=arch, allow_unreached=allow_unreached
            )
            server.start()
            return wait_forwarding(subprocess.Popen(argv, env=env, close_fds=False))  # the caller's fds 3+ pass
        finally:
            server.stop()


def shim_variables(host: HostAnswer, socket_path: str, shim: Path) -> dict[str, str]:
    """What the shim reads: the library, the server, the host's machine and /dev/kvm, its files."""
    return {
        "LD_PRELOAD": preloadable(shim),
        "KVMSIM_SOCKET": socket_path,
        "KVMSIM_MACHINE": host.machine,
        "KVMSIM_DEV_KVM": "1" if host.dev_kvm else "0",
        **({"KVMSIM_ROOT": host.root} if host.root is not None else {}),
    }


def shim_environment(host: HostAnswer, socket_path: str, shim: Path) -> dict[str, str]:
    """The environment that preloads ``shim`` into a native command (and, with ``host.root``
    from :func:`host_view`, shows it the simulated host's files)."""
    preload = os.environ.get("LD_PRELOAD", "")
    variables = shim_variables(host, socket_path, shim)
    return {**os.environ, **variables, "LD_PRELOAD": f"{variables['LD_PRELOAD']} {preload}".strip()}


def attached_environment(socket_path: str) -> tuple[HostAnswer, dict[str, str]]:
    """The host and the environment that attaches a native program to the server."""
    from ..intercept.attach import ask_host

    host = ask_host(socket_path)
    return host, shim_environment(host, os.path.abspath(socket_path), build_shim())
