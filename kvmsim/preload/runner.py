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

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ..kernel import hostfs
from ..kernel.errors import InvalidInput, KvmsimError
from ..kernel.kvm_main import BootedKernel
from ..kernel.uapi import ARCHES, DEV_KVM
from . import trust
from .build import BuildError, build_shim, preloadable
from .server import Server, ServerError
from .trace import Call
from .wire import HostAnswer


@attrs.frozen
class Foreign:
    """How to run a binary of another architecture here."""

    arch: str
    triplet: str  # the Debian cross toolchain's prefix
    qemu: str

    @property
    def sysroot(self) -> str:
        return f"/usr/{self.triplet}"


FOREIGN = {
    "ppc64le": Foreign("ppc64le", "powerpc64le-linux-gnu", "qemu-ppc64le"),
    "ppc64": Foreign("ppc64", "powerpc64-linux-gnu", "qemu-ppc64"),
}
EM_PPC64, EM_X86_64 = 21, 62


class RunError(InvalidInput):
    """The command cannot run against this host as asked; one line."""


class StartError(KvmsimError, RuntimeError):
    """This machine cannot start the run (no safe directory, a socket path too long); one line."""


def elf_arch(path: str) -> str | None:
    """``ppc64le``/``ppc64``/``x86_64`` from a 64-bit ELF file's header, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] != 2:
        return None
    order = {1: "little", 2: "big"}.get(head[5])
    if order is None:
        return None
    machine = int.from_bytes(head[18:20], order)  # type: ignore[arg-type]
    if machine == EM_PPC64:
        return "ppc64le" if order == "little" else "ppc64"
    return "x86_64" if machine == EM_X86_64 else None


PT_INTERP = 3
GO_BUILDINFO = b"\xff Go buildinf:"  # the start of a Go binary's .go.buildinfo section


def unreachable(path: str) -> str | None:
    """Why the preload shim cannot reach ``path``'s system calls, or None: a static ELF
    executable (no PT_INTERP: nothing loads LD_PRELOAD) or a Go program (it makes its system
    calls without libc).  A script or anything not ELF is left to its interpreter."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"\x7fELF" or m[4] != 2:
                return None
            order: Literal["little", "big"] = "little" if m[5] == 1 else "big"
            phoff = int.from_bytes(m[32:40], order)
            phentsize, phnum = int.from_bytes(m[54:56], order), int.from_bytes(m[56:58], order)
            types = [int.from_bytes(m[phoff + i * phentsize : phoff + i * phentsize + 4], order) for i in range(phnum)]
            if m.find(GO_BUILDINFO) >= 0:
                return "a Go program (it makes its system calls without libc)"
            if PT_INTERP not in types:
                return "statically linked (nothing loads the preload shim into it)"
    except (OSError, ValueError):
        return None
    return None


def qemu_binary(foreign: Foreign) -> str:
    for name in (f"{foreign.qemu}-static", foreign.qemu):
        if shutil.which(name):
            return name
    raise BuildError(f"{foreign.qemu}-static is not installed (apt-get install qemu-user-static)")


def target_arch(shim_host: HostAnswer, command: Sequence[str], arch: str | None) -> str | None:
    """The foreign arch to run ``command`` as (None: natively), checked against the host."""
    exe = shutil.which(command[0]) or command[0]
    found = elf_arch(exe)
    if arch is not None and found is not None and found != arch:
        raise RunError(f"{command[0]}: a {found} binary, not {arch}")
    arch = arch or (found if found in FOREIGN else None)
    if arch is None:
        return None
    host = ARCHES[shim_host.machine]
    if not host.is_powerpc:
        raise RunError(f"host {shim_host.name} is {host.name}: a {arch} binary needs a powerpc host profile")
    if FOREIGN[arch].arch != host.name:
        raise RunError(
            f"host {shim_host.name} is {host.name} ({host.byteorder}-endian) but {command[0]} is {arch}: "
            "byte orders differ"
        )
    return arch


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
    arch = target_arch(host, command, arch)
    if arch is None:
        return list(command), shim_environment(host, socket_path, build_shim())
    foreign = FOREIGN[arch]
    shim = build_shim(cc=f"{foreign.triplet}-gcc")
    argv = [qemu_binary(foreign), "-L", foreign.sysroot]
    # for the program, not qemu; the socket channel: TCG's atomics and futexes are not the host's
    for key, value in {**shim_variables(host, socket_path, shim), "KVMSIM_CHANNEL": "socket"}.items():
        argv += ["-E", f"{key}={value}"]
    return argv + list(command), dict(os.environ)


FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextlib.contextmanager
def run_directory() -> Iterator[trust.Dir]:
    """The run's private directory (0700, flock-held: kvmsim.preload.trust), removed however
    the run ends."""
    try:
        workdir = trust.temp_dir("kvmsim-run-")
    except OSError as exc:
        raise StartError(f"no private directory for the run: {exc}") from None
    try:
        yield workdir
    finally:
        workdir.remove()


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


def wait_forwarding(proc: subprocess.Popen[bytes]) -> int:
    """The command's exit code, with SIGTERM/SIGHUP/SIGQUIT and Ctrl-C passed on to it."""
    previous: dict[int, Any] = {}
    try:
        for signum in FORWARDED:  # SIGTERM/SIGHUP to kvmsim run reach CMD, which decides
            previous[signum] = signal.signal(signum, lambda s, _f: proc.send_signal(s))
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
        return code if code >= 0 else 128 - code
    finally:
        for forwarded, handler in previous.items():
            signal.signal(forwarded, handler)


def host_view(kernel: BootedKernel, directory: trust.Dir) -> str:
    """Write the simulated host's files (kvmsim.hostfs: /proc/device-tree, /proc/cpuinfo,
    /sys/module/kvm*) below ``directory``, through its fd (no rename of a path can redirect a
    write): what the shim shows the program instead of this machine's (KVMSIM_ROOT).
    Returns the directory's path; the directory is closed."""
    files = {path: data for path, data in hostfs.files(kernel).items() if path != DEV_KVM}  # the shim's own
    with directory:
        hostfs.write_tree(files, directory.fd)
    return directory.path


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
