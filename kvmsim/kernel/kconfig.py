"""What a kernel build's configuration decides of ``kvm_vm_ioctl_check_extension_generic``
(virt/kvm/kvm_main.c) and of KVM_GET_VCPU_MMAP_SIZE: the options each architecture selects,
as values.  powerpc's from the lab's real Linux 7.3 builds (Debian's, and the one built here
with kvm_pr), x86's from this machine's /dev/kvm."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from ..uapi import (
    KVM_CAP_COALESCED_MMIO,
    KVM_CAP_COALESCED_PIO,
    KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
    KVM_CAP_GUEST_MEMFD,
    KVM_CAP_IRQ_ROUTING,
    KVM_CAP_IRQFD,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_CAP_SIGNAL_MSI,
)

KVM_DIRTY_RING_BYTES = 65536 * 16  # KVM_DIRTY_RING_MAX_ENTRIES * sizeof(struct kvm_dirty_gfn)


@attrs.frozen
class KvmConfig:
    have_kvm_msi: bool  # CONFIG_HAVE_KVM_MSI: KVM_CAP_SIGNAL_MSI
    have_kvm_irqchip: bool  # CONFIG_HAVE_KVM_IRQCHIP: KVM_CAP_IRQFD
    coalesced_mmio_page_offset: int  # CONFIG_KVM_MMIO: KVM_COALESCED_MMIO_PAGE_OFFSET (0: none)
    dirty_log_manual_caps: int  # CONFIG_KVM_GENERIC_DIRTYLOG_READ_PROTECT: KVM_DIRTY_LOG_MANUAL_CAPS
    max_irq_routes: int  # CONFIG_HAVE_KVM_IRQ_ROUTING: KVM_MAX_IRQ_ROUTES (0: none)
    dirty_ring_tso: bool  # CONFIG_HAVE_KVM_DIRTY_RING_TSO
    dirty_ring_acq_rel: bool  # CONFIG_HAVE_KVM_DIRTY_RING_ACQ_REL
    guest_memfd: bool  # CONFIG_KVM_GUEST_MEMFD

    @property
    def kvm_mmio(self) -> bool:
        """CONFIG_KVM_MMIO: also a page of struct kvm_run's mapping (kvm_dev_ioctl's VCPU_MMAP_SIZE)."""
        return self.coalesced_mmio_page_offset > 0

    @functools.cache  # noqa: B019 (a handful of frozen values, each kernel boot asks)
    def answers(self) -> Mapping[int, int]:
        """The capabilities these options answer, before the arch's own switch."""
        out: dict[int, int] = {
            KVM_CAP_DIRTY_LOG_RING: KVM_DIRTY_RING_BYTES if self.dirty_ring_tso else 0,
            KVM_CAP_DIRTY_LOG_RING_ACQ_REL: KVM_DIRTY_RING_BYTES if self.dirty_ring_acq_rel else 0,
        }
        if self.have_kvm_msi:
            out[KVM_CAP_SIGNAL_MSI] = 1
        if self.have_kvm_irqchip:
            out[KVM_CAP_IRQFD] = 1
        if self.coalesced_mmio_page_offset:
            out[KVM_CAP_COALESCED_MMIO] = self.coalesced_mmio_page_offset
            out[KVM_CAP_COALESCED_PIO] = 1
        if self.dirty_log_manual_caps:
            out[KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2] = self.dirty_log_manual_caps
        if self.max_irq_routes:
            out[KVM_CAP_IRQ_ROUTING] = self.max_irq_routes
        if self.guest_memfd:
            out[KVM_CAP_GUEST_MEMFD] = 1
        return MappingProxyType(out)


def powerpc(book3s_pr: bool) -> KvmConfig:
    """powerpc selects HAVE_KVM_IRQCHIP (XICS, XIVE); KVM_BOOK3S_PR_POSSIBLE selects KVM_MMIO
    (KVM_COALESCED_MMIO_PAGE_OFFSET 1): a build with kvm_pr answers the coalesced-MMIO caps."""
    return KvmConfig(False, True, 1 if book3s_pr else 0, 0, 0, False, False, False)


# x86: KVM_COALESCED_MMIO_PAGE_OFFSET 2, both dirty-log manual bits, 4096 routes, TSO rings
X86 = KvmConfig(True, True, 2, 3, 4096, True, True, True)
