"""KVM on a non-powerpc kernel (x86_64): the compat-caps capability and ioctl are unknown."""

from __future__ import annotations

import errno

import attrs

from .errors import KvmError
from .profile import Host
from .usermem import UserAccess


@attrs.frozen
class Vm:
    """An x86 ``struct kvm``; nothing of it matters here."""


class X86Kvm:
    def __init__(self, host: Host) -> None:
        self.host = host

    @property
    def loaded_modules(self) -> list[str]:
        return ["kvm", *self.host.modules] if self.host.modules else []

    @property
    def loaded(self) -> bool:
        return bool(self.host.modules)

    def check_extension(self, ext: int) -> int:
        return 0  # kvm_vm_ioctl_check_extension(): no powerpc capability exists here

    def init_vm(self, type_: int) -> Vm:
        if type_ != 0:  # KVM_X86_DEFAULT_VM; other types need CONFIG_KVM_SW_PROTECTED_VM etc.
            raise KvmError(errno.EINVAL, f"KVM_CREATE_VM type {type_} is not supported")
        return Vm()

    def dev_ioctl(self, request: int, arg: int) -> int:
        raise KvmError(errno.EINVAL, f"unknown /dev/kvm ioctl {request:#x} (kvm_arch_dev_ioctl)")

    def vm_ioctl(self, vm: Vm, request: int, argp: int, mem: UserAccess) -> int:
        raise KvmError(errno.ENOTTY, f"unknown VM ioctl {request:#x} (kvm_arch_vm_ioctl)")
