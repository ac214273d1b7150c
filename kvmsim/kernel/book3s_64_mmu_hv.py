"""The HV guest's hashed page table (arch/powerpc/kvm/book3s_64_mmu_hv.c): what
``KVM_PPC_ALLOCATE_HTAB`` does on bare metal (an L1 answers EOPNOTSUPP before it gets here)."""

from __future__ import annotations

import errno

from ..uapi import PPC_MAX_HPT_ORDER, PPC_MIN_HPT_ORDER
from .book3s import Book3sVcpu
from .book3s_hv import HvMmu, kvmppc_switch_mmu_to_hpt
from .errors import KvmError
from .profile import Host

KVM_CMA_RESV_RATIO = 5  # book3s_hv_builtin.c: kvm_cma_resv_ratio, the percentage of RAM kvm_cma reserves


def max_page_order(host: Host) -> int:
    """CONFIG_ARCH_FORCE_MAX_ORDER's ppc64 default: the buddy allocator's largest block is
    16MB with either page size (2^8 pages of 64K, 2^12 of 4K)."""
    return 8 if host.page_size == 65536 else 12


def kvm_cma_bytes(host: Host) -> int:
    """kvm_cma_reserve(): 5% of RAM reserved at boot in HV mode (bare metal) only, page-aligned;
    kvmsim reckons from MemTotal (the lab's measure), a little under memblock's RAM."""
    if host.platform != "powernv":
        return 0
    size = host.mem_total_kb * 1024 * KVM_CMA_RESV_RATIO // 100
    return size - size % host.page_size


# kvmppc_allocate_hpt(): the order's range, then kvm_cma (tried first), then the buddy allocator
# (__GFP_RETRY_MAYFAIL: nothing past its largest block); ENOMEM when neither has 2^order bytes
def kvmppc_allocate_hpt(host: Host, order: int) -> None:
    if order < PPC_MIN_HPT_ORDER or order > PPC_MAX_HPT_ORDER:
        raise KvmError(errno.EINVAL, f"KVM_PPC_ALLOCATE_HTAB: order {order} outside 18..46")
    size, page_shift = 1 << order, host.page_size.bit_length() - 1
    from_cma = size <= kvm_cma_bytes(host)
    from_buddy = order - page_shift <= max_page_order(host)  # __get_free_pages(order - PAGE_SHIFT)
    if not (from_cma or from_buddy) or size > host.mem_total_kb * 1024:
        raise KvmError(
            errno.ENOMEM,
            f"KVM_PPC_ALLOCATE_HTAB: no {size >> 20} MB of contiguous memory (kvm_cma has "
            f"{kvm_cma_bytes(host) >> 20} MB, the largest free block is 16 MB)",
        )


# kvmppc_alloc_reset_hpt(), in its order: a radix VM becomes HPT first (whatever follows); an HPT
# of that order is cleared; else the old one freed, then the new one allocated
def kvmppc_alloc_reset_hpt(host: Host, mmu: HvMmu, vcpus: list[Book3sVcpu], order: int) -> int:
    if mmu.radix:
        kvmppc_switch_mmu_to_hpt(host, mmu, vcpus)
    if mmu.hpt_order == order:
        if not order:  # memset((void *)kvm->arch.hpt.virt, 0, 1): an HPT of order 0 is none at all
            raise KvmError(
                errno.ENOTTY,
                "not modelled: KVM_PPC_ALLOCATE_HTAB of order 0 while the VM has no HPT: Linux 7.3 "
                "clears a NULL HPT (kvmppc_alloc_reset_hpt: a kernel oops)",
            )
        return 0
    mmu.hpt_order = 0  # kvmppc_free_hpt
    kvmppc_allocate_hpt(host, order)
    mmu.hpt_order = order
    return 0
