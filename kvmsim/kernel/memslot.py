"""kvm_main.c's memory slots: ``KVM_SET_USER_MEMORY_REGION`` and ``…REGION2``, through
``kvm_vm_ioctl_set_memory_region()`` and ``kvm_set_memory_region()``, in their order of checks.
A slot records what userspace asked; the kernel touches none of its memory when it is set
(``access_ok`` checks the range, no page is read), so no memory need be mapped here.  The arch
prepares the slot (``kvm_arch_prepare_memory_region``): HV allocates its reverse map, which a
slot of more pages than the host has RAM for cannot have."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Literal

import attrs

from ..uapi import KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY
from .errors import KvmError

KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1  # include/linux/kvm_host.h: the dirty bitmap's unsigned int index
KVM_MEM_SLOTS_NUM = 0x7FFF  # SHRT_MAX
SET_USER_MEMORY_REGION_V1_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY

Change = Literal["create", "delete", "move", "flags_only"]  # enum kvm_mr_change


@attrs.frozen
class MemorySlot:
    """``struct kvm_memory_slot``: what userspace set."""

    id: int
    base_gfn: int
    npages: int
    flags: int
    userspace_addr: int


@attrs.define
class Memslots:
    """A VM's address space 0 (powerpc has one: ``kvm_arch_nr_memslot_as_ids``) and
    ``kvm->nr_memslot_pages``."""

    slots: dict[int, MemorySlot] = attrs.Factory(dict)
    nr_memslot_pages: int = 0


@attrs.frozen
class MemslotLimits:
    """What the build and the arch fix: KVM_USER_MEM_SLOTS, PAGE_SIZE, TASK_SIZE_MAX (the
    user address space ``access_ok`` allows), whether the arch has read-only slots and
    guest_memfd (CONFIG_KVM_GUEST_MEMFD)."""

    user_mem_slots: int
    page_size: int
    task_size_max: int
    readonly_mem: bool = False
    guest_memfd: bool = False


# kvm_arch_prepare_memory_region(): the new slot (None when deleting), the old one, the change
PrepareMemoryRegion = Callable[[MemorySlot | None, MemorySlot | None, Change], None]


def access_ok(addr: int, size: int, task_size_max: int) -> bool:
    """powerpc64's __access_ok() with a size not known at build time: the address and the size
    each below TASK_SIZE_MAX (their sum may not be: the gap above user space faults anyway)."""
    return not (size | addr) & ~(task_size_max - 1)


def check_memory_region_flags(flags: int, limits: MemslotLimits) -> None:
    valid = KVM_MEM_LOG_DIRTY_PAGES
    if limits.guest_memfd:
        valid |= KVM_MEM_GUEST_MEMFD
    if flags & KVM_MEM_GUEST_MEMFD:  # no dirty logging of private memory
        valid &= ~KVM_MEM_LOG_DIRTY_PAGES
    if limits.readonly_mem and not flags & KVM_MEM_GUEST_MEMFD:
        valid |= KVM_MEM_READONLY
    if flags & ~valid:
        raise KvmError(errno.EINVAL, f"memory region flags {flags:#x}: this kernel takes only {valid:#x}")


def kvm_vm_ioctl_set_memory_region(
    memslots: Memslots, mem: dict[str, int], limits: MemslotLimits, prepare: PrepareMemoryRegion
) -> int:
    """The slot's id (its low 16 bits) must be a user slot, then kvm_set_memory_region()."""
    if mem["slot"] & 0xFFFF >= limits.user_mem_slots:
        raise KvmError(errno.EINVAL, f"memory slot {mem['slot'] & 0xFFFF} is not below {limits.user_mem_slots}")
    return kvm_set_memory_region(memslots, mem, limits, prepare)


def kvm_set_memory_region(
    memslots: Memslots, mem: dict[str, int], limits: MemslotLimits, prepare: PrepareMemoryRegion
) -> int:
    check_memory_region_flags(mem["flags"], limits)
    as_id, slot_id = mem["slot"] >> 16, mem["slot"] & 0xFFFF
    page, size, gpa, uaddr = limits.page_size, mem["memory_size"], mem["guest_phys_addr"], mem["userspace_addr"]
    # general sanity checks
    if size & (page - 1):
        raise KvmError(errno.EINVAL, f"memory_size {size:#x} is not a multiple of the page size ({page})")
    if gpa & (page - 1):
        raise KvmError(errno.EINVAL, f"guest_phys_addr {gpa:#x} is not page aligned")
    if uaddr & (page - 1) or not access_ok(uaddr, size, limits.task_size_max):
        raise KvmError(errno.EINVAL, f"userspace_addr {uaddr:#x} (+{size:#x}) is not page aligned user memory")
    if mem["flags"] & KVM_MEM_GUEST_MEMFD:
        offset = mem["guest_memfd_offset"]
        if offset & (page - 1) or offset + size >= 1 << 64:
            raise KvmError(errno.EINVAL, f"guest_memfd_offset {offset:#x} is not page aligned or wraps")
    if as_id >= 1 or slot_id >= KVM_MEM_SLOTS_NUM:  # kvm_arch_nr_memslot_as_ids(): powerpc has one
        raise KvmError(errno.EINVAL, f"memory slot {mem['slot']:#x}: address space {as_id} does not exist")
    if gpa + size >= 1 << 64:
        raise KvmError(errno.EINVAL, f"guest_phys_addr {gpa:#x} + memory_size {size:#x} wraps")
    npages = size // page
    if npages > KVM_MEM_MAX_NR_PAGES:  # every slot here is a user slot
        raise KvmError(errno.EINVAL, f"{npages} pages: a slot has at most {KVM_MEM_MAX_NR_PAGES}")
    old = memslots.slots.get(slot_id)
    if not size:
        if old is None:
            raise KvmError(errno.EINVAL, f"memory slot {slot_id} does not exist: nothing to delete")
        prepare(None, old, "delete")
        del memslots.slots[slot_id]
        memslots.nr_memslot_pages -= old.npages
        return 0
    base_gfn = gpa // page
    change: Change
    if old is None:
        change = "create"
    else:  # modify an existing slot: only move it, or change its dirty logging
        if mem["flags"] & KVM_MEM_GUEST_MEMFD:
            raise KvmError(errno.EINVAL, f"memory slot {slot_id} is private memory: it can only be deleted")
        if (
            uaddr != old.userspace_addr
            or npages != old.npages
            or (mem["flags"] ^ old.flags) & (KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD)
        ):
            raise KvmError(errno.EINVAL, f"memory slot {slot_id} exists with another address, size or kind")
        if base_gfn != old.base_gfn:
            change = "move"
        elif mem["flags"] != old.flags:
            change = "flags_only"
        else:
            return 0  # nothing to change
    if change in ("create", "move"):  # kvm_check_memslot_overlap()
        for other in memslots.slots.values():
            if other.id != slot_id and other.base_gfn < base_gfn + npages and base_gfn < other.base_gfn + other.npages:
                raise KvmError(errno.EEXIST, f"memory slot {slot_id} would overlap slot {other.id}")
    new = MemorySlot(slot_id, base_gfn, npages, mem["flags"], uaddr)
    prepare(new, old, change)  # kvm_set_memslot() → kvm_prepare_memory_region()
    memslots.slots[slot_id] = new
    memslots.nr_memslot_pages += npages - (old.npages if old is not None else 0)
    return 0


def kvm_dirty_bitmap_bytes(slot: MemorySlot) -> int:
    """ALIGN(npages, BITS_PER_LONG) / 8: the slot's dirty bitmap, whole longs."""
    return -(-slot.npages // 64) * 8


def _dirty_slot(memslots: Memslots, slot_id: int, what: str) -> MemorySlot:
    slot = memslots.slots.get(slot_id)
    if slot is None or not slot.flags & KVM_MEM_LOG_DIRTY_PAGES:  # no slot, or no dirty_bitmap
        raise KvmError(errno.ENOENT, f"{what}: slot {slot_id} has no dirty log (KVM_MEM_LOG_DIRTY_PAGES)")
    return slot


# kvm_get_dirty_log() (kvm_main.c, PR's get_dirty_log): the address space and the id apart, then
# the slot and its bitmap; what is copied out is the bitmap (no guest ran: nothing is dirty)
def kvm_get_dirty_log(memslots: Memslots, log_slot: int, user_mem_slots: int) -> bytes:
    as_id, slot_id = log_slot >> 16, log_slot & 0xFFFF
    if as_id >= 1 or slot_id >= user_mem_slots:  # kvm_arch_nr_memslot_as_ids(): one on powerpc
        raise KvmError(errno.EINVAL, f"KVM_GET_DIRTY_LOG: slot {log_slot:#x} (address space {as_id}, id {slot_id})")
    return bytes(kvm_dirty_bitmap_bytes(_dirty_slot(memslots, slot_id, "KVM_GET_DIRTY_LOG")))


# kvm_vm_ioctl_get_dirty_log_hv() (book3s_hv.c): the whole u32 against KVM_USER_MEM_SLOTS, then the
# slot and its bitmap; the harvested map (HPT or radix, the VPAs': none dirty without a run) copied out
def kvm_vm_ioctl_get_dirty_log_hv(memslots: Memslots, log_slot: int, user_mem_slots: int) -> bytes:
    if log_slot >= user_mem_slots:
        raise KvmError(errno.EINVAL, f"KVM_GET_DIRTY_LOG: slot {log_slot:#x} is not below {user_mem_slots}")
    return bytes(kvm_dirty_bitmap_bytes(_dirty_slot(memslots, log_slot, "KVM_GET_DIRTY_LOG")))
