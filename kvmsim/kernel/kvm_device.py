"""virt/kvm/kvm_main.c's KVM devices: ``struct kvm_device`` and ``struct kvm_device_ops``,
``kvm_ioctl_create_device`` (KVM_CREATE_DEVICE on a VM), the device file's ``kvm_device_fops``
(``kvm_device_ioctl``: KVM_SET/GET/HAS_DEVICE_ATTR, ``kvm_device_release``).

Which ops a kernel registers for which type (``kvm_device_ops_table``) is the arch's: a Book3S
kernel's are :func:`kvmsim.kernel.powerpc.device_ops_table`'s.  An ops value is data plus the
functions its device's C file gives it (book3s_xics.c's, vfio.c's)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from ..uapi import KVM_DEV_TYPE_MAX, ByteOrder
from .anon_inodes import FileKind
from .errors import KvmError


class AttrAccess(Protocol):
    """What an attribute accessor reads and writes at ``attr->addr`` (get_user/put_user: access_ok
    checked, EFAULT on a fault) and what else it needs of the caller: its files (fget)."""

    @property
    def byteorder(self) -> ByteOrder: ...

    def get_user(self, addr: int, size: int) -> int: ...
    def put_user(self, addr: int, value: int, size: int) -> None: ...
    def copy_from_user(self, addr: int, size: int, what: str) -> bytes: ...
    def fget(self, fd: int) -> object | None: ...


Accessor = Callable[["KvmDevice", dict[str, int], AttrAccess], int]


@attrs.frozen
class KvmDeviceOps:
    """``struct kvm_device_ops``: its name (the anon inode's), the file kind its fd is, and the
    callbacks its C file fills in (None: left out, as the kernel's NULL)."""

    name: str
    kind: FileKind
    create: Callable[[KvmDevice, int], None]  # raises KvmError (the ops' -errno)
    set_attr: Accessor | None = None
    get_attr: Accessor | None = None
    has_attr: Accessor | None = None
    release: Callable[[KvmDevice], None] | None = None
    # where kvmsim does not model the device: why (its create answers ENOTTY naming it)
    unmodelled: str | None = None


@attrs.define(eq=False)
class KvmDevice:
    """``struct kvm_device``: its ops, its VM (the arch's), and what its create made."""

    ops: KvmDeviceOps
    kvm: Any  # the arch's VM (kvm->arch), whose ``devices`` lists it
    private: Any = None


@attrs.define(eq=False)
class KvmDeviceFile:
    """A device's anon-inode file (``kvm_device_fops``): it holds its device."""

    dev: KvmDevice

    @property
    def kind(self) -> FileKind:
        return self.dev.ops.kind

    @property
    def link(self) -> str:
        return self.dev.ops.kind.link

    # kvm_device_release(): the ops' release, which takes the device off its VM's list
    def release(self) -> None:
        dev = self.dev
        if dev.ops.release is not None:
            dev.kvm.devices.remove(dev)
            dev.ops.release(dev)


# kvm_ioctl_create_device(): the type (ENODEV past the table or unregistered), TEST, the ops' create
def create_device(table: dict[int, KvmDeviceOps], kvm: Any, type_: int, flags: int) -> KvmDevice | None:
    """The new device, or None for KVM_CREATE_DEVICE_TEST (the type exists)."""
    if type_ >= KVM_DEV_TYPE_MAX:
        raise KvmError(errno.ENODEV, f"KVM_CREATE_DEVICE: type {type_} is past KVM_DEV_TYPE_MAX ({KVM_DEV_TYPE_MAX})")
    ops = table.get(type_)
    if ops is None:
        raise KvmError(errno.ENODEV, f"KVM_CREATE_DEVICE: no device of type {type_} is registered on this kernel")
    if flags & 1:  # KVM_CREATE_DEVICE_TEST
        return None
    if ops.unmodelled is not None:
        raise KvmError(errno.ENOTTY, f"not modelled: KVM_CREATE_DEVICE of {ops.name} ({ops.unmodelled})")
    dev = KvmDevice(ops, kvm)
    ops.create(dev, type_)
    kvm.devices.append(dev)
    return dev


# kvm_device_ioctl_attr(): no accessor is EPERM before the copy
def device_attr(dev: KvmDevice, which: str, copy_attr: Callable[[], dict[str, int]], access: AttrAccess) -> int:
    accessor: Accessor | None = getattr(dev.ops, which)
    if accessor is None:
        raise KvmError(errno.EPERM, f"{dev.ops.name} has no {which}")
    return accessor(dev, copy_attr(), access)
