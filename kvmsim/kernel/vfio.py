"""virt/kvm/vfio.c: the ``kvm-vfio`` device (``kvm_vfio_ops``, KVM_DEV_TYPE_VFIO), which every
powerpc kernel registers (KVM selects KVM_VFIO).  Userspace adds and removes VFIO files by fd
(``KVM_DEV_VFIO_FILE``); with CONFIG_SPAPR_TCE_IOMMU an IOMMU group is attached to a TCE table.

kvmsim has no VFIO files: every fd a program can name (a simulated file, or any of this
machine's) is one ``kvm_vfio_file_is_valid`` refuses (EINVAL), so the device's list stays empty."""

from __future__ import annotations

import errno

from ..uapi import (
    KVM_DEV_VFIO_FILE,
    KVM_DEV_VFIO_FILE_ADD,
    KVM_DEV_VFIO_FILE_DEL,
    KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE,
    KVM_VFIO_SPAPR_TCE,
)
from .anon_inodes import FileKind
from .errors import KvmError
from .kvm_device import AttrAccess, KvmDevice, KvmDeviceOps


def kvm_vfio_ops(kind: FileKind, *, spapr_tce_iommu: bool) -> KvmDeviceOps:
    """vfio.c's ``kvm_vfio_ops``: no get_attr (EPERM); SET_SPAPR_TCE with CONFIG_SPAPR_TCE_IOMMU."""
    attrs = (KVM_DEV_VFIO_FILE_ADD, KVM_DEV_VFIO_FILE_DEL) + (KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE,) * spapr_tce_iommu

    # kvm_vfio_create(): one per VM
    def create(dev: KvmDevice, type_: int) -> None:
        if any(other.ops.name == "kvm-vfio" for other in dev.kvm.devices):
            raise KvmError(errno.EBUSY, "KVM_CREATE_DEVICE: the VM has its VFIO device already")
        dev.private = []  # kv->file_list

    # kvm_vfio_set_attr() and kvm_vfio_set_file()
    def set_attr(dev: KvmDevice, attr: dict[str, int], access: AttrAccess) -> int:
        if attr["group"] != KVM_DEV_VFIO_FILE or attr["attr"] not in attrs:
            raise KvmError(errno.ENXIO, f"kvm-vfio sets no attribute {attr['attr']:#x} of group {attr['group']}")
        what = attr["attr"]
        if what == KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE:
            raw = access.copy_from_user(attr["addr"], KVM_VFIO_SPAPR_TCE.size, "struct kvm_vfio_spapr_tce")
            fd = KVM_VFIO_SPAPR_TCE.unpack(access.byteorder, raw)["groupfd"]
            if access.fget(fd & 0xFFFFFFFF) is None:
                raise KvmError(errno.EBADF, f"kvm-vfio: group fd {fd} is not open")
            raise KvmError(errno.ENOENT, f"kvm-vfio: group fd {fd} was never added")
        fd = access.get_user(attr["addr"], 4)  # an int32_t
        if access.fget(fd) is None:
            raise KvmError(errno.EBADF, f"kvm-vfio: fd {fd} is not open")
        if what == KVM_DEV_VFIO_FILE_ADD:  # kvm_vfio_file_is_valid()
            raise KvmError(errno.EINVAL, f"kvm-vfio: fd {fd} is not a VFIO file (kvmsim has none)")
        raise KvmError(errno.ENOENT, f"kvm-vfio: fd {fd} was never added")

    def has_attr(dev: KvmDevice, attr: dict[str, int], access: AttrAccess) -> int:
        if attr["group"] == KVM_DEV_VFIO_FILE and attr["attr"] in attrs:
            return 0
        raise KvmError(errno.ENXIO, f"kvm-vfio has no attribute {attr['attr']:#x} in group {attr['group']}")

    def release(dev: KvmDevice) -> None:
        dev.private.clear()

    return KvmDeviceOps("kvm-vfio", kind, create, set_attr, None, has_attr, release)
