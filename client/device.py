"""The device seam: everything above it is the same code for a real ``/dev/kvm`` and the
simulator.  A :class:`Device` opens, ioctls and closes like ``os``/``fcntl`` do, knows the
architecture (ioctl encoding, byte order) of the kernel behind it, and can read the
partition's device tree (``/proc/device-tree/cpus``) for the fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kvmsim import DEV_KVM, Kernel
from kvmsim.probe import DeviceTarget
from kvmsim.uapi import Arch

PROC_DEVICE_TREE = "/proc/device-tree"


class Device(Protocol):
    """What the client needs of a KVM device."""

    @property
    def arch(self) -> Arch: ...
    @property
    def name(self) -> str: ...
    def open(self) -> int: ...
    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes: ...
    def close(self, fd: int) -> None: ...
    def cpu_versions(self) -> list[tuple[str, int]]:
        """(node, value) for every ``/cpus/*`` node with a ``cpu-version``, in node order."""
        ...


class RealDevice(DeviceTarget):
    """A character device (default ``/dev/kvm``) through ``os.open`` and ``fcntl.ioctl``."""

    def __init__(self, path: str = DEV_KVM, *, arch: Arch | None = None, device_tree: str = PROC_DEVICE_TREE) -> None:
        super().__init__(path, arch=arch)
        self.device_tree = device_tree

    @property
    def name(self) -> str:
        return self.path

    def cpu_versions(self) -> list[tuple[str, int]]:
        found = []
        cpus = Path(self.device_tree) / "cpus"
        try:
            nodes = [p for p in cpus.iterdir() if p.is_dir()]  # device-tree order, as procfs lists it
        except OSError:
            return []
        for node in nodes:
            try:
                raw = (node / "cpu-version").read_bytes()
            except OSError:
                continue
            if len(raw) == 4:
                found.append((node.name, int.from_bytes(raw, "big")))
        return found


class SimDevice:
    """A simulated kernel (:class:`kvmsim.Kernel`) behind the same interface."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    @property
    def arch(self) -> Arch:
        return self.kernel.host.arch

    @property
    def name(self) -> str:
        return f"sim:{self.kernel.host.name}"

    def open(self) -> int:
        return self.kernel.open(DEV_KVM)

    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes:
        return self.kernel.ioctl(fd, request, arg, mutate_flag)

    def close(self, fd: int) -> None:
        self.kernel.close(fd)

    def cpu_versions(self) -> list[tuple[str, int]]:
        return [(n.name, n.cpu_version) for n in self.kernel.host.cpu_nodes if n.cpu_version is not None]
