"""The simulated kernel as a user calls it: :class:`Kernel` (a booted kernel plus its first
process, with CPython's ``fcntl.ioctl`` contract on top of ``sys_ioctl``) and
:class:`SimDevice`, the device seam's simulated side."""

from __future__ import annotations

import os
from collections.abc import Sequence

from kvmcompat import DeviceTree

from ..kernel import kvm_main, profile
from ..kernel.profile import Host
from ..kernel.usermem import AddressSpace
from ..uapi import DEV_KVM, KVM_PPC_COMPAT_CAPS_SIZE_VER0, AbiRevision, Arch
from .pyioctl import Scratch, fcntl_ioctl


class Kernel(kvm_main.BootedKernel):
    """A booted kernel (:class:`kvmsim.kernel.kvm_main.BootedKernel`) and the facade tests and
    users call: ``open``/``ioctl``/``close`` of its first process (``current``), whose user
    memory is :attr:`memory`."""

    def __init__(self, host: Host, rev: AbiRevision, *, ksize: int = KVM_PPC_COMPAT_CAPS_SIZE_VER0) -> None:
        super().__init__(host, rev, ksize=ksize)
        self.memory = AddressSpace()
        self.current = self.process(self.memory)
        self._scratch = Scratch()
        self.stack_junk = False  # CPython's stack past the caller's buffer: zeros, or junk (pyioctl.JUNK)
        self.warn_past_buffer = False  # a WrotePastBuffer warning when the kernel writes past it (the plugin's)

    def open(self, path: str = DEV_KVM, flags: int = os.O_RDWR) -> int:
        return self.current.open(path, flags)

    def close(self, fd: int) -> None:
        self.current.close(fd)

    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes:
        """``fcntl.ioctl`` against this kernel: same argument contract, OSError on failure."""
        return fcntl_ioctl(
            self.current.sys_ioctl, self.memory, self._scratch, fd, request, arg, mutate_flag,
            junk=self.stack_junk, warn_past=self.warn_past_buffer,
        )  # fmt: skip

    def sys_ioctl(self, fd: int, cmd: int, arg: int) -> int:
        return self.current.sys_ioctl(fd, cmd, arg)

    def mmap(self, fd: int, length: int, offset: int = 0) -> memoryview:
        """``mmap(NULL, length, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`` of a vcpu fd:
        its ``struct kvm_run`` (and the MMIO ring's page), shared with the kernel."""
        page = self.host.page_size
        if offset % page:
            raise OSError(22, f"mmap offset {offset} is not a multiple of PAGE_SIZE ({page})")
        return self.current.mmap(fd, length, offset // page)

    def fds(self) -> dict[int, str]:
        return self.current.fds()


class SimDevice:
    """A simulated kernel behind the device seam."""

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


def open_host(
    host: str, rev: AbiRevision, *, hosts_dirs: Sequence[str] = (), device_tree: bool = False
) -> tuple[SimDevice, DeviceTree]:
    """The client's ``--sim`` (entry point ``kvmcompat.simulators``): a kernel booted on
    ``host`` (a profile name, looked up in ``hosts_dirs`` first, or a path) with revision
    ``rev``, and its device tree when ``device_tree`` (built only when it will be read)."""
    profile.prepend_search_path(hosts_dirs)
    kernel = Kernel(profile.load(host), rev)
    if not device_tree:
        return SimDevice(kernel), DeviceTree()
    from ..kernel import hostfs

    return SimDevice(kernel), DeviceTree(files=hostfs.files(kernel))
