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
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..intercept import trust
from ..intercept.build import BuildError, cache_dir, fingerprint, preloadable
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
from ..intercept.server import Server, ServerError, host_answer
from ..intercept.trace import Call
from ..intercept.wire import HostAnswer
from ..kernel.kvm_main import BootedKernel
from ..uapi import ARCHES
from .library import build_shim


def qemu_binary(foreign: Foreign) -> str:
    for name in (f"{foreign.qemu}-static", foreign.qemu):
        if shutil.which(name):
            return name
    raise BuildError(f"{foreign.qemu}-static is not installed (apt-get install qemu-user-static)")


_MODEL = re.compile(r"^\s*(?:PowerPC\s+)?(\S+)\s+PVR\s+([0-9a-fA-F]{8})\s*$", re.M)


def cpu_listing(qemu: str) -> str:
    """qemu-user's ``-cpu help``, asked once for each binary (its path, inode, size and mtime) and
    kept in the private cache (kvmsim.intercept.build.cache_dir): a file there is read only where
    it is this user's and nobody else may write it (kvmsim.intercept.trust), else asked again."""
    try:
        st = os.stat(qemu)
    except OSError:
        st = None
    if st is None:
        return _ask_cpus(qemu)
    identity = f"{os.path.realpath(qemu)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    name = f"qemu-cpus-{fingerprint(identity.encode())}"
    try:
        with trust.Dir.open(cache_dir()) as cache:
            kept = cache.read(name)
            if kept is not None:
                return kept.decode(errors="replace")
            listing = _ask_cpus(qemu)
            cache.write(name, listing)
            return listing
    except OSError:  # no cache of ours to keep it in (UntrustedError is one): asked each time
        return _ask_cpus(qemu)


def _ask_cpus(qemu: str) -> str:
    return subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, check=False).stdout


def qemu_cpu(qemu: str, pvr: int, generation: str) -> tuple[str | None, str | None]:
    """qemu-user's ``-cpu`` for a profile's processor, so that the program's ``mfpvr`` reads the
    profile's PVR (QEMU's ``-cpu host`` and KVM_SET_SREGS depend on it): the model this qemu-user
    has with that PVR, else the generation's name and a notice saying which PVR the program
    will read instead."""
    models = {int(pvr_hex, 16): name for name, pvr_hex in _MODEL.findall(cpu_listing(qemu))}
    if pvr in models:
        return models[pvr], None
    near = next((p for p, name in models.items() if name.startswith(f"{generation}_")), None)
    what = f"{os.path.basename(qemu)} has no CPU model with the profile's PVR {pvr:#010x}"
    if near is None:  # not even the generation: qemu-user's default CPU
        return None, f"kvmsim run: {what}, nor a {generation}: the program's mfpvr reads qemu-user's default CPU"
    return generation, f"kvmsim run: {what}: the program's mfpvr reads {generation}'s ({near:#010x})"


def qemu_user_argv(qemu: str, sysroot: str, processor: tuple[int, str] | None, address_space: int | None) -> list[str]:
    """qemu-user with ``sysroot``'s libraries, ``processor`` (a profile's PVR and generation) as
    its CPU (a notice on stderr where it has no such model) and mappings below ``address_space``."""
    argv = [qemu, "-L", sysroot]
    if processor is not None:  # the profile's (pvr, generation): its mfpvr
        model, notice = qemu_cpu(qemu, *processor)
        if notice is not None:
            print(notice, file=sys.stderr)
        if model is not None:
            argv += ["-cpu", model]
    if address_space is not None:
        argv += ["-R", hex(address_space)]
    return argv


def prepare(
    host: HostAnswer,
    command: Sequence[str],
    socket_path: str,
    *,
    arch: str | None = None,
    allow_unreached: bool = False,
    sysroot: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``command`` against the server at ``socket_path``.
    A program the shim cannot reach is refused (it would talk to this machine's real
    /dev/kvm) unless ``allow_unreached``.  A POWER program runs with ``sysroot``'s libraries
    (qemu-user's ``-L``; its own qemu-user when it has one), else the cross toolchain's, with
    the host's processor (its PVR and generation) as qemu-user's CPU, and its mappings kept
    below the host's address space (qemu-user's ``-R``: the profile's TASK_SIZE where this
    machine's is larger, as a 4K-page POWER kernel's 64TB is)."""
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
    own = os.path.join(sysroot, "usr", "bin", foreign.qemu) if sysroot is not None else None
    if own is not None and os.access(own, os.X_OK):
        st = os.stat(own)
        if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:  # runs as this user: only a file it trusts
            raise StartError(f"{own}: owned by uid {st.st_uid} or writable by others: refusing to run it")
        qemu = own
    else:
        qemu = qemu_binary(foreign)
    argv = qemu_user_argv(qemu, sysroot or foreign.sysroot, host.processor, host.address_space)
    # for the program, not qemu: the host's page size, which qemu-user's auxv says is this
    # machine's; and the socket channel for a program of the other byte order (the shared
    # channel's words are each side's native order: kvmsim.intercept.channel)
    variables = {**shim_variables(host, socket_path, shim), "KVMSIM_PAGE_SIZE": str(host.page_size)}
    if ARCHES[arch].byteorder != sys.byteorder:
        variables["KVMSIM_CHANNEL"] = "socket"
    for key, value in variables.items():
        argv += ["-E", f"{key}={value}"]
    return argv + list(command), dict(os.environ)


def run(
    kernel: BootedKernel,
    command: Sequence[str],
    *,
    arch: str | None = None,
    trace: Callable[[Call], None] | None = None,
    allow_unreached: bool = False,
    sysroot: str | None = None,
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
                host_answer(kernel, view),
                command,
                server.path,
                arch=arch,
                allow_unreached=allow_unreached,
                sysroot=sysroot,
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
