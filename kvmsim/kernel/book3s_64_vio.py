"""The guest's TCE tables (arch/powerpc/kvm/book3s_64_vio.c): ``KVM_CREATE_SPAPR_TCE(_64)``
make a ``kvm-spapr-tce`` file whose pages the VMM maps (QEMU's sPAPR IOMMU windows), in the
kernel's order of checks.  Built only with ``CONFIG_SPAPR_TCE_IOMMU`` (``Host.spapr_tce_iommu``:
Debian's kernels have it, the lab's own 64K build, without IOMMU_SUPPORT, does not)."""

from __future__ import annotations

import errno
import mmap
from collections.abc import Callable

import attrs

from .anon_inodes import SPAPR_TCE
from .book3s_64_mmu_hv import max_page_order
from .errors import KvmError
from .profile import Host

U64_MAX = (1 << 64) - 1
IOMMU_PAGE_SHIFT_4K = 12  # KVM_CREATE_SPAPR_TCE's page size
TCE_SIZE = 8  # sizeof(u64): one TCE
# sizeof(struct kvmppc_spapr_tce_table) before its pages[], what kzalloc_flex asks beside 8 bytes a
# page: 112 in Debian's Linux 7.3 ppc64el build (its kvm.ko: kmalloc(npages * 8 + 112), a 24-byte
# alloc_lock; the lab's probes at the 16MB edge agree)
STT_HEADER = 112
# the hcalls CONFIG_SPAPR_TCE_IOMMU builds (H_GET_TCE, H_PUT_TCE, H_STUFF_TCE, H_PUT_TCE_INDIRECT):
# kvmppc_hcall_impl_hv/_pr() know them only then
TCE_HCALLS = frozenset({0x1C, 0x20, 0x138, 0x13C})


def kvmppc_tce_pages(host: Host, iommu_pages: int) -> int:
    """The kernel pages ``iommu_pages`` TCEs fill: ALIGN(iommu_pages * 8, PAGE_SIZE) / PAGE_SIZE in
    an unsigned long (a window of 2^61 TCEs or more wraps, to as few as none)."""
    page = host.page_size
    return ((iommu_pages * TCE_SIZE & U64_MAX) + page - 1 & U64_MAX & ~(page - 1)) // page


@attrs.define(eq=False)
class SpaprTceTable:
    """``struct kvmppc_spapr_tce_table``: one DMA window's TCEs, and the file that holds it
    (``anon_inode:kvm-spapr-tce``; its pages, allocated as they are touched, are what the
    file maps: ``pages`` once something maps it)."""

    kind = SPAPR_TCE
    link = SPAPR_TCE.link

    liobn: int
    page_shift: int
    offset: int  # in IOMMU pages
    size: int  # the window, in IOMMU pages
    npages: int  # kvmppc_tce_pages(size): the kernel pages of the TCEs
    page_size: int
    tables: list[SpaprTceTable]  # kvm->arch.spapr_tce_tables, which it is on while open
    pages: bytearray | mmap.mmap | None = None

    @property
    def mapped_size(self) -> int:
        """What .mmap can map (kvm_spapr_tce_fault: SIGBUS past the table's pages)."""
        return self.npages * self.page_size

    def release(self) -> None:
        """kvm_spapr_tce_release(): off the VM's list (its LIOBN is free again)."""
        if self in self.tables:
            self.tables.remove(self)


# kvm_vm_ioctl_create_spapr_tce(), in its order: the window's checks, the locked-memory account,
# the allocation, the LIOBN already in use (EBUSY), the fd (its failure undoes all)
def kvm_vm_ioctl_create_spapr_tce(
    host: Host,
    tables: list[SpaprTceTable],
    liobn: int,
    page_shift: int,
    offset: int,
    size: int,
    getfd: Callable[[SpaprTceTable], int],
    what: str,
) -> int:
    if not size or page_shift < 12 or page_shift > 34 or (offset + size) & U64_MAX > U64_MAX >> page_shift:
        raise KvmError(
            errno.EINVAL,
            f"{what}: a window of {size:#x} pages of 2^{page_shift} at {offset:#x} (size non-zero, "
            "page_shift 12..34, offset + size below 2^64 >> page_shift)",
        )
    npages = kvmppc_tce_pages(host, size)
    # account_locked_vm(): the lab's prober, as root, has CAP_IPC_LOCK (no RLIMIT_MEMLOCK), and so
    # does every simulated process (docs: choices)
    kmalloc_max = host.page_size << max_page_order(host)  # KMALLOC_MAX_SIZE: the largest block
    if STT_HEADER + npages * 8 > kmalloc_max:
        raise KvmError(
            errno.ENOMEM,
            f"{what}: {npages} pages of TCEs need a {STT_HEADER + npages * 8}-byte table "
            f"(kzalloc: at most {kmalloc_max >> 20} MB)",
        )
    if any(t.liobn == liobn for t in tables):
        raise KvmError(errno.EBUSY, f"{what}: LIOBN {liobn:#x} has a table already")
    stt = SpaprTceTable(liobn, page_shift, offset, size, npages, host.page_size, tables)
    fd = getfd(stt)  # anon_inode_getfd("kvm-spapr-tce", O_RDWR | O_CLOEXEC)
    tables.append(stt)
    return fd
