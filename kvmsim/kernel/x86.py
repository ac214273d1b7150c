"""KVM on a non-powerpc kernel (x86_64): the compat-caps capability and ioctl are unknown."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import attrs

from ..uapi import KVM_CAP_MAX_VCPUS, KVM_DEV_TYPE_VFIO
from .anon_inodes import VFIO
from .errors import KvmError
from .kvm_device import KvmDevice
from .profile import Host
from .usermem import UserAccess
from .vfio import kvm_vfio_ops

PAGE_SIZE = 4096
KVM_USER_MEM_SLOTS = 32764  # KVM_MEM_SLOTS_NUM minus x86's 3 internal slots


@attrs.define(eq=False)
class Vm:
    """An x86 ``struct kvm``: only its devices matter here."""

    devices: list[KvmDevice] = attrs.Factory(list)  # kvm->devices


class X86Kvm:
    user_mem_slots = KVM_USER_MEM_SLOTS

    def __init__(self, host: Host) -> None:
        self.host = host
        self.loaded = bool(host.modules)
        # kvm_device_ops_table: x86 registers VFIO's only (KVM selects KVM_VFIO), without SPAPR_TCE_IOMMU
        self.device_ops = {KVM_DEV_TYPE_VFIO: kvm_vfio_ops(VFIO, spapr_tce_iommu=False)}

    @property
    def loaded_modules(self) -> list[str]:
        return ["kvm", *self.host.modules] if self.host.modules else []

    def check_extension(self, ext: int, vm: Vm | None) -> int:
        if ext == KVM_CAP_MAX_VCPUS:
            return self.host.kvm_max_vcpus
        return 0  # kvm_vm_ioctl_check_extension(): no powerpc capability exists here

    def init_vm(self, type_: int) -> Vm:
        if type_ != 0:  # KVM_X86_DEFAULT_VM; other types need CONFIG_KVM_SW_PROTECTED_VM etc.
            raise KvmError(errno.EINVAL, f"KVM_CREATE_VM type {type_} is not supported")
        return Vm()

    def vcpu_mmap_size(self) -> int:
        return 2 * PAGE_SIZE  # kvm_run and the PIO data page (kvm_main adds the coalesced-MMIO ring)

    # kvm_vm_ioctl_irq_line(): only with an in-kernel irqchip (KVM_CREATE_IRQCHIP, not modelled)
    def irq_line(self, vm: Vm, irq: int, level: int) -> int:
        raise KvmError(errno.ENXIO, "KVM_IRQ_LINE: the VM has no in-kernel irqchip (KVM_CREATE_IRQCHIP)")

    def dev_ioctl(self, request: int, arg: int) -> int:
        raise KvmError(errno.EINVAL, f"unknown /dev/kvm ioctl {request:#x} (kvm_arch_dev_ioctl)")

    def vm_ioctl(self, vm: Vm, request: int, argp: int, mem: UserAccess, getfd: Callable[[Any], int]) -> int:
        raise KvmError(errno.ENOTTY, f"unknown VM ioctl {request:#x} (kvm_arch_vm_ioctl)")
