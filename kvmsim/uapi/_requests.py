"""Naming ioctl requests, for traces and for the reasons given with an errno: every request
kvmsim knows as an architecture encodes it, the ``_IOC`` fields of one it does not, and why a
request is probably wrong (another architecture's encoding, another revision's number, a VM
ioctl sent to /dev/kvm, a byte-swapped size)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from ._kvm_h import (
    ARCHES,
    DEVICE_IOCTLS,
    GENERIC_IOC,
    UNMODELLED_IOCTLS,
    VCPU_IOCTLS,
    VM_IOCTLS,
    Arch,
    ByteOrder,
    UnmodelledIoctl,
)
from ._revisions import REVISIONS, AbiRevision


@functools.cache
def known_requests(arch: Arch) -> Mapping[int, str]:
    """The requests kvmsim knows, as ``arch`` encodes them: number -> name (computed once an arch)."""
    names = {
        arch.kvm_get_api_version(): "KVM_GET_API_VERSION",
        arch.kvm_create_vm(): "KVM_CREATE_VM",
        arch.kvm_check_extension(): "KVM_CHECK_EXTENSION",
        arch.kvm_get_vcpu_mmap_size(): "KVM_GET_VCPU_MMAP_SIZE",
        **{io.request(arch): io.name for io in (*VM_IOCTLS, *VCPU_IOCTLS, *DEVICE_IOCTLS)},
        **{number: name for name, number in arch.vfs_ioctls.items()},
    }
    for rev in sorted(REVISIONS.values(), key=lambda r: -r.generation):
        number = rev.request(arch)
        if number is not None:
            names.setdefault(number, f"KVM_PPC_GET_COMPAT_CAPS ({rev.name})")
    return MappingProxyType(names)


@functools.cache
def unmodelled(arch: Arch, on: Literal["vm", "vcpu"] = "vm") -> Mapping[int, UnmodelledIoctl]:
    """The ioctls of a VM or vcpu fd that a kernel of ``arch`` has and kvmsim does not model
    yet, by number."""
    family = "powerpc" if arch.is_powerpc else "x86"
    return MappingProxyType({u.request(arch): u for u in UNMODELLED_IOCTLS if u.on == on and u.only in (None, family)})


def decode_request(cmd: int, arch: Arch) -> str:
    """``name`` or the _IOC fields: ``KVM_CHECK_EXTENSION``, ``_IOC(none, 0xae, 0xff, 0)``."""
    name = known_requests(arch).get(cmd)
    for on in ("vm", "vcpu"):
        if name is None and cmd in unmodelled(arch, on):
            name = unmodelled(arch, on)[cmd].name
    return name if name is not None else decode_request_fields(cmd, arch)


def explain_request(cmd: int, arch: Arch, rev: AbiRevision, on: Literal["dev", "vm"]) -> str | None:
    """Why an unknown request is probably unknown: another architecture's encoding, another
    revision's number, or a VM ioctl sent to /dev/kvm.  None when there is nothing to say."""
    here = known_requests(arch)
    name = here.get(cmd)
    if name is not None:
        if not name.startswith("KVM_PPC_GET_COMPAT_CAPS"):
            return None
        if on == "dev":
            return f"{name} is a VM ioctl: issue it on the fd KVM_CREATE_VM returned"
        mine = rev.request(arch)
        if mine is None:
            return f"{cmd:#x} is {name}; this kernel ({rev.name}) has no such ioctl (before Linux 7.3)"
        return f"{cmd:#x} is {name}; this kernel ({rev.name}) uses {mine:#x}" if mine != cmd else None
    ours = {v: k for k, v in here.items()}
    for other in ARCHES.values():
        if other.ioc is arch.ioc:
            continue
        theirs = known_requests(other).get(cmd)
        if theirs is not None:
            label = "x86" if other.ioc is GENERIC_IOC else "powerpc"
            mine_number = ours.get(theirs)
            uses = f", which uses {mine_number:#x}" if mine_number is not None else ""
            return f"{cmd:#x} is {label}'s {theirs}; this host is {arch.name}{uses}"
    for number, known in here.items():  # the right type and number, another direction or size
        if number & 0xFFFF == cmd & 0xFFFF and number != cmd:
            return (
                f"{cmd:#x} is {decode_request(cmd, arch)}: {known} is {number:#x}, "
                f"{decode_request_fields(number, arch)} (the direction and size bits differ)"
            )
    return None


def decode_request_fields(cmd: int, arch: Arch) -> str:
    """The _IOC fields of ``cmd``, whatever its name."""
    ioc = arch.ioc
    direction = cmd >> ioc.dirshift
    size = (cmd >> ioc.sizeshift) & ((1 << ioc.sizebits) - 1)
    dirs = {ioc.none: "none", ioc.read: "read", ioc.write: "write", ioc.read | ioc.write: "read|write"}
    return f"_IOC({dirs.get(direction, hex(direction))}, {(cmd >> 8) & 0xFF:#x}, {cmd & 0xFF:#x}, {size})"


def byte_swapped_hint(value: int, lo: int, hi: int, byteorder: ByteOrder) -> str:
    """`` (24 byte-swapped? ...)`` when a u64 read in ``byteorder`` makes sense the other way."""
    swapped = int.from_bytes(value.to_bytes(8, byteorder), "big" if byteorder == "little" else "little")
    if lo <= swapped <= hi and not lo <= value <= hi:
        return f" ({swapped} byte-swapped? this host is {byteorder}-endian)"
    return ""
