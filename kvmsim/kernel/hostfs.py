"""The files a host shows its processes: ``/dev/kvm``, ``/proc/device-tree/cpus``,
``/proc/cpuinfo`` and ``/sys/module``, derived from a booted kernel's profile.

Data (path → bytes), and :func:`write_tree`, the one writer of them into a real directory:
``kvmsim run``/``serve`` show that copy to real programs, the pytest plugin maps it into a
pyfakefs filesystem."""

from __future__ import annotations

import contextlib
import posix
import struct
from collections.abc import Mapping

from ..uapi import DEV_KVM, mode_of_logical_pvr
from .kvm_main import BootedKernel
from .profile import Host

DEVICE_TREE = "/proc/device-tree"

MACHINES = {  # (platform, hypervisor kind) -> (platform line, model)
    ("pseries", "powervm"): ("pSeries", "IBM,9080-HEX"),
    ("pseries", "kvm"): ("pSeries", "IBM pSeries (emulated by qemu)"),
    ("pseries", "qemu"): ("pSeries", "IBM pSeries (emulated by qemu)"),
    ("powernv", "none"): ("PowerNV", "9105-22A"),
}
TIMEBASE = 512000000  # POWER9 and later
# The L1 caches a cpu node states (bytes: d-cache-size, i-cache-size), by processor generation:
# what QEMU's pseries machine puts in its guests' device tree for these processors
# (target/ppc's l1_dcache_size / l1_icache_size), so a host the lab boots under QEMU shows the same
L1_CACHES = {
    "power8": (0x10000, 0x8000),
    "power9": (0x8000, 0x8000),
    "power10": (0x8000, 0x8000),
    "power11": (0x8000, 0x8000),
}
CACHE_BLOCK = 128  # d-cache-block-size, i-cache-block-size (and the -line-size): POWER's 128-byte lines
DEC_BITS = 56  # ibm,dec-bits: ISA 3.0's large decrementer (POWER9 and later)


def _be32(value: int) -> bytes:
    return struct.pack(">I", value)


def _be_cells(value: int) -> bytes:
    """One cell when the value fits 32 bits, else two (clock-frequency past 4 GHz)."""
    return _be32(value) if value < 1 << 32 else struct.pack(">Q", value)


def cpu_properties(host: Host, node_reg: int) -> dict[str, bytes]:
    """The properties of a cpu node that QEMU's KVM start-up reads besides ``cpu-version``
    (kvmppc_get_clockfreq: ``clock-frequency``, else "Unknown host!"; the timebase; the large
    decrementer's ``ibm,dec-bits``; the L1 caches for the host CPU class), and the thread ids
    ``ibm,ppc-interrupt-server#s`` (one thread: the node's ``reg``)."""
    generation = host.cpu.generation
    props = {
        "clock-frequency": _be_cells(host.cpu.clock_mhz * 1_000_000),
        "timebase-frequency": _be32(TIMEBASE),
        "ibm,ppc-interrupt-server#s": _be32(node_reg),
    }
    if generation is not None and generation.name in L1_CACHES:
        dcache, icache = L1_CACHES[generation.name]
        props |= {
            "d-cache-size": _be32(dcache), "i-cache-size": _be32(icache),
            "d-cache-block-size": _be32(CACHE_BLOCK), "i-cache-block-size": _be32(CACHE_BLOCK),
            "d-cache-line-size": _be32(CACHE_BLOCK), "i-cache-line-size": _be32(CACHE_BLOCK),
        }  # fmt: skip
    if host.cpu.isa_300:
        props["ibm,dec-bits"] = _be32(DEC_BITS)
    if host.radix_ap_encodings:
        props["ibm,processor-radix-AP-encodings"] = b"".join(_be32(cell) for cell in host.radix_ap_encodings)
    return props


def _cpu_name(host: Host) -> str:
    """The cpu line: the logical mode's name when architected, else the processor's (raw)."""
    version = next((n.cpu_version for n in host.cpu_nodes if n.cpu_version is not None), None)
    mode = mode_of_logical_pvr(version) if version is not None else None
    if mode is not None:
        return f"{mode.name.upper()} (architected)"
    return f"{host.cpu.model} (raw)"


def cpuinfo(host: Host) -> str:
    cpu = host.cpu
    if cpu.pvr is None:
        return (
            f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: {cpu.model}\n"
            f"cpu MHz\t\t: {cpu.clock_mhz:.3f}\n\n"
        )
    pvr = cpu.pvr
    revision = f"{(pvr >> 8) & 0xF}.{pvr & 0xFF} (pvr {pvr >> 16:04x} {pvr & 0xFFFF:04x})"
    lines = [
        "processor\t: 0",
        f"cpu\t\t: {_cpu_name(host)}, altivec supported",
        f"clock\t\t: {cpu.clock_mhz:.6f}MHz",
        f"revision\t: {revision}",
        "",
    ]
    platform, model = MACHINES[(host.platform, host.hypervisor.kind)]
    machine = f"CHRP {model}" if platform == "pSeries" else f"PowerNV {model}"
    lines += [f"timebase\t: {TIMEBASE}", f"platform\t: {platform}", f"model\t\t: {model}", f"machine\t\t: {machine}"]
    if platform == "PowerNV":
        lines.append("firmware\t: OPAL")
    lines.append(f"MMU\t\t: {(host.mmu or 'radix').capitalize()}")
    return "\n".join(lines) + "\n"


def files(kernel: BootedKernel) -> dict[str, bytes]:
    """Every file of the host, by absolute path."""
    host = kernel.host
    out: dict[str, bytes] = {"/proc/cpuinfo": cpuinfo(host).encode()}
    if kernel.kvm.loaded:
        out[DEV_KVM] = b""
    for module in kernel.kvm.loaded_modules:
        out[f"/sys/module/{module}/refcnt"] = b"0\n"
    if host.arch.is_powerpc:
        out[f"{DEVICE_TREE}/cpus/#address-cells"] = _be32(1)
        out[f"{DEVICE_TREE}/cpus/#size-cells"] = _be32(0)
        for node in host.cpu_nodes:
            base = f"{DEVICE_TREE}/cpus/{node.name}"
            out[f"{base}/name"] = node.name.split("@")[0].encode() + b"\0"
            out[f"{base}/device_type"] = b"cpu\0"
            out[f"{base}/reg"] = _be32(node.reg)
            if node.cpu_version is not None:
                out[f"{base}/cpu-version"] = _be32(node.cpu_version)
            for prop, value in cpu_properties(host, node.reg).items():
                out[f"{base}/{prop}"] = value
    return out


def write_tree(files: Mapping[str, bytes], root_fd: int) -> None:
    """Write ``files`` below the directory open at ``root_fd``: every directory made and
    opened relative to its parent's fd, every file made new (``O_EXCL | O_NOFOLLOW``), so no
    symlink or rename can redirect a write.  Through ``posix`` alone, which pyfakefs never
    patches: the plugin calls it while a test fakes ``os``, and it must write the real
    filesystem."""
    flags = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC
    create = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
    opened: dict[str, int] = {"": root_fd}
    try:
        for path, data in files.items():
            parent, _, name = path.rpartition("/")
            if parent not in opened:
                where = ""
                for part in parent.strip("/").split("/"):
                    below = f"{where}/{part}"
                    if below not in opened:
                        with contextlib.suppress(FileExistsError):
                            posix.mkdir(part, 0o755, dir_fd=opened[where])
                        opened[below] = posix.open(part, flags, dir_fd=opened[where])
                    where = below
            fd = posix.open(name, create, 0o444, dir_fd=opened[parent])  # read-only, as procfs and sysfs show them
            try:
                view = memoryview(data)
                while view:
                    view = view[posix.write(fd, view) :]
            finally:
                posix.close(fd)
    finally:
        for key, fd in opened.items():
            if key:
                posix.close(fd)
