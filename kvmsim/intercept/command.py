"""The command a run starts, whichever way it is reached: what binary it is (its ELF
architecture; static or Go, which the preload shim cannot reach), whether it runs natively or
under qemu-user, the run's private directory with the simulated host's files in it, and the
wait for the command's end with signals passed on.  Shared by ``kvmsim run``'s two intercepts
(kvmsim.preload.runner, kvmsim.seccomp.run), so neither loads the other."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ..kernel.errors import InvalidInput, KvmsimError
from ..uapi import ARCHES, DEV_KVM
from . import trust

if TYPE_CHECKING:
    from ..kernel.kvm_main import BootedKernel


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


class RunError(KvmsimError, InvalidInput):
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


def target_arch(host_name: str, machine: str, command: Sequence[str], arch: str | None) -> str | None:
    """The foreign arch to run ``command`` as (None: natively), checked against the host
    (its profile's name and uname machine)."""
    exe = shutil.which(command[0]) or command[0]
    found = elf_arch(exe)
    if arch is not None and found is not None and found != arch:
        raise RunError(f"{command[0]}: a {found} binary, not {arch}")
    arch = arch or (found if found in FOREIGN else None)
    if arch is None:
        return None
    host = ARCHES[machine]
    if not host.is_powerpc:
        raise RunError(f"host {host_name} is {host.name}: a {arch} binary needs a powerpc host profile")
    if FOREIGN[arch].arch != host.name:
        raise RunError(
            f"host {host_name} is {host.name} ({host.byteorder}-endian) but {command[0]} is {arch}: byte orders differ"
        )
    return arch


FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextlib.contextmanager
def run_directory() -> Iterator[trust.Dir]:
    """The run's private directory (0700, flock-held: kvmsim.intercept.trust), removed however
    the run ends."""
    try:
        workdir = trust.temp_dir("kvmsim-run-")
    except OSError as exc:
        raise StartError(f"no private directory for the run: {exc}") from None
    try:
        yield workdir
    finally:
        workdir.remove()


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
    """Write the simulated host's files (kvmsim.kernel.hostfs: /proc/device-tree, /proc/cpuinfo,
    /sys/module/kvm*) below ``directory``, through its fd (no rename of a path can redirect a
    write): what the shim shows the program instead of this machine's (KVMSIM_ROOT).
    Returns the directory's path; the directory is closed."""
    from ..kernel import hostfs

    files = {path: data for path, data in hostfs.files(kernel).items() if path != DEV_KVM}  # the shim's own
    with directory:
        hostfs.write_tree(files, directory.fd)
    return directory.path
