"""virt/kvm/kvm_main.c: the fd table, the ``/dev/kvm`` file and VM files, and the
:class:`Kernel` facade that tests, the client and the servers call."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import attrs

from . import profile
from .errors import KvmError
from .powerpc import PowerpcKvm
from .profile import Host
from .pyioctl import Scratch, fcntl_ioctl
from .uapi import (
    DEFAULT_REVISION,
    GENERIC_CAPS,
    KVM_API_VERSION,
    KVM_PPC_COMPAT_CAPS_SIZE_VER0,
    AbiRevision,
    Arch,
    revision,
)
from .usermem import AddressSpace
from .x86 import X86Kvm

DEV_KVM = "/dev/kvm"


class KvmArch(Protocol):
    """What kvm_main calls into: PowerpcKvm or X86Kvm."""

    @property
    def loaded(self) -> bool: ...
    @property
    def loaded_modules(self) -> list[str]: ...
    def check_extension(self, ext: int) -> int: ...
    def init_vm(self, type_: int) -> object: ...
    def dev_ioctl(self, request: int, arg: int) -> int: ...
    def vm_ioctl(self, vm: Any, request: int, argp: int, mem: AddressSpace) -> int: ...


@attrs.frozen
class DevKvmFile:
    """An open ``/dev/kvm``."""


@attrs.frozen
class VmFile:
    """An anon-inode ``kvm-vm`` file; it holds its VM, not the /dev/kvm fd it came from."""

    vm: object


File = DevKvmFile | VmFile


class Kernel:
    """A simulated kernel for one host profile and one ABI revision."""

    def __init__(self, host: Host, rev: AbiRevision, *, ksize: int = KVM_PPC_COMPAT_CAPS_SIZE_VER0) -> None:
        if ksize < KVM_PPC_COMPAT_CAPS_SIZE_VER0 or ksize % 8:
            raise ValueError(f"kernel struct size {ksize} must be a multiple of 8, at least 24")
        self.host, self.rev, self.ksize = host, rev, ksize
        self.dmesg: list[str] = []
        self.memory = AddressSpace()
        self._scratch = Scratch()
        self._files: dict[int, File] = {}
        self._lock = threading.Lock()
        self.kvm: KvmArch = PowerpcKvm(host, rev, ksize, self.dmesg.append) if host.arch.is_powerpc else X86Kvm(host)
        arch = host.arch
        self.KVM_GET_API_VERSION = arch.kvm_get_api_version()
        self.KVM_CREATE_VM = arch.kvm_create_vm()
        self.KVM_CHECK_EXTENSION = arch.kvm_check_extension()
        self.KVM_PPC_GET_COMPAT_CAPS = rev.request(arch)

    @classmethod
    def from_profile(
        cls,
        name_or_path: str | Path,
        *,
        abi: str | AbiRevision = DEFAULT_REVISION,
        cap: int | None = None,
        ioctl_nr: int | None = None,
        ksize: int = KVM_PPC_COMPAT_CAPS_SIZE_VER0,
    ) -> Kernel:
        """Boot a kernel on a host profile (a name under fixtures/hosts/, or a path)."""
        rev = abi if isinstance(abi, AbiRevision) else revision(abi, cap=cap, nr=ioctl_nr)
        return cls(profile.load(name_or_path), rev, ksize=ksize)

    @property
    def arch(self) -> Arch:
        """The architecture this kernel is built for (its ioctl encoding and byte order)."""
        return self.host.arch

    def __repr__(self) -> str:
        return f"<Kernel {self.host.name} {self.host.arch.name} abi={self.rev.name}>"

    # -- the fd table ----------------------------------------------------

    def _install(self, file: File) -> int:
        with self._lock:
            fd = 3
            while fd in self._files:
                fd += 1
            self._files[fd] = file
            return fd

    def _file(self, fd: int) -> File:
        file = self._files.get(fd)
        if file is None:
            raise KvmError(errno.EBADF, f"fd {fd} is not open")
        return file

    def open(self, path: str = DEV_KVM, flags: int = os.O_RDWR) -> int:
        if path != DEV_KVM or not self.kvm.loaded:
            raise KvmError(errno.ENOENT, f"{path}: no such file (no KVM module loaded)" if path == DEV_KVM else path)
        return self._install(DevKvmFile())

    def close(self, fd: int) -> None:
        with self._lock:
            if self._files.pop(fd, None) is None:
                raise KvmError(errno.EBADF, f"fd {fd} is not open")

    def vm_of(self, fd: int) -> object:
        """The VM behind a VM fd (for tests and ``kvmsim show``)."""
        file = self._file(fd)
        if not isinstance(file, VmFile):
            raise KvmError(errno.EINVAL, f"fd {fd} is not a VM fd")
        return file.vm

    def fds(self) -> dict[int, str]:
        """The open fds and what they are (``/proc/self/fd``)."""
        return {fd: DEV_KVM if isinstance(f, DevKvmFile) else "anon_inode:kvm-vm" for fd, f in self._files.items()}

    # -- ioctl -------------------------------------------------------------

    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes:
        """``fcntl.ioctl`` against this kernel: same argument contract, OSError on failure."""
        return fcntl_ioctl(self.sys_ioctl, self.memory, self._scratch, fd, request, arg, mutate_flag)

    def sys_ioctl(self, fd: int, cmd: int, arg: int) -> int:
        """``ioctl(2)`` with the raw unsigned-long argument (a user address for pointers)."""
        file = self._file(fd)
        if isinstance(file, DevKvmFile):
            return self.kvm_dev_ioctl(cmd, arg)
        return self.kvm_vm_ioctl(file, cmd, arg)

    # kvm_dev_ioctl()
    def kvm_dev_ioctl(self, cmd: int, arg: int) -> int:
        if cmd == self.KVM_GET_API_VERSION:
            if arg:
                raise KvmError(errno.EINVAL, "KVM_GET_API_VERSION takes no argument")
            return KVM_API_VERSION
        if cmd == self.KVM_CREATE_VM:
            vm = self.kvm.init_vm(arg)
            return self._install(VmFile(vm))
        if cmd == self.KVM_CHECK_EXTENSION:
            return self.check_extension(arg)
        return self.kvm.dev_ioctl(cmd, arg)

    # kvm_vm_ioctl()
    def kvm_vm_ioctl(self, file: VmFile, cmd: int, arg: int) -> int:
        if cmd == self.KVM_CHECK_EXTENSION:
            return self.check_extension(arg)
        return self.kvm.vm_ioctl(file.vm, cmd, arg, self.memory)

    # kvm_vm_ioctl_check_extension_generic(), then the arch's
    def check_extension(self, ext: int) -> int:
        if ext in GENERIC_CAPS:
            return 1
        return self.kvm.check_extension(ext)
