"""KVM-PR (arch/powerpc/kvm/book3s_pr.c): its init check, and its ops, which have no
``get_compat_caps`` at all."""

from __future__ import annotations

import errno
from collections.abc import Callable

import attrs

from ..uapi import KVM_PPC_1T_SEGMENTS, SLB_VSID_L, SLB_VSID_LP_01
from .book3s import Book3sVcpu, new_vcpu, pr_multi_pgsize
from .errors import KvmError
from .one_reg import first_values
from .profile import Host


@attrs.frozen
class KvmppcOps:
    """``struct kvmppc_ops``: only what this simulator needs of it."""

    name: str
    get_compat_caps: Callable[[], int] | None


PR_OPS = KvmppcOps("kvm_pr", None)

# kvmppc_hcall_impl_pr() (book3s_pr_papr.c, CONFIG_SPAPR_TCE_IOMMU and CONFIG_KVM_XICS built)
PR_HCALLS = frozenset(
    {0x08, 0x04, 0x18, 0x124, 0x1C, 0x20, 0x13C, 0x138, 0xE0, 0x3C, 0x40, 0x31C, 0x74, 0x68, 0x64, 0x6C, 0x70, 0x2FC}
)


def kvmppc_core_vcpu_create_pr(host: Host) -> Book3sVcpu:
    """The host's PVR (a machine with 1T segments: every POWER here), an MSR of 0 (the shared
    page starts zeroed), and sane: PR runs non-PAPR guests too."""
    assert host.cpu.pvr is not None
    little = host.arch.byteorder == "little"
    vcpu = new_vcpu(False, host.cpu.pvr, 0, first_values(host, False), little=little, isa_300=host.cpu.isa_300)
    vcpu.multi_pgsize = pr_multi_pgsize(vcpu.pvr)
    return vcpu


# kvm_vm_ioctl_get_smmu_info_pr(): a 64-entry SLB, 4K and 16M pages; 64K pages and 1T segments
# only where the VM's first vcpu emulates a CPU that has them (none yet: the minimum)
def kvm_vm_ioctl_get_smmu_info_pr(first_vcpu: Book3sVcpu | None) -> dict[str, int]:
    info = {"slb_size": 64, "sps0_page_shift": 12, "sps0_enc0_page_shift": 12}
    i = 1
    if first_vcpu is not None and first_vcpu.multi_pgsize:
        info |= {"flags": KVM_PPC_1T_SEGMENTS, "sps1_page_shift": 16, "sps1_slb_enc": SLB_VSID_L | SLB_VSID_LP_01,
                 "sps1_enc0_page_shift": 16, "sps1_enc0_pte_enc": 1}  # fmt: skip
        i = 2
    return info | {f"sps{i}_page_shift": 24, f"sps{i}_slb_enc": SLB_VSID_L, f"sps{i}_enc0_page_shift": 24}


# kvm_configure_mmu_pr(): ISA 3.0, and no flags nor process table (a PR guest is HPT)
def kvm_configure_mmu_pr(host: Host, flags: int, process_table: int) -> int:
    if not host.cpu.isa_300:
        raise KvmError(errno.ENODEV, "KVM_PPC_CONFIGURE_V3_MMU: not an ISA 3.0 processor")
    if flags or process_table:
        raise KvmError(errno.EINVAL, "KVM_PPC_CONFIGURE_V3_MMU: a PR guest takes flags 0 and process table 0")
    return 0


# kvmppc_core_check_processor_compat_pr(): PR cannot run on a radix POWER9+ partition
def kvmppc_book3s_init_pr(host: Host) -> KvmppcOps:
    if host.cpu.isa_300 and host.mmu == "radix":
        raise KvmError(errno.EIO, "kvm_pr cannot run under a radix MMU (ISA 3.0)")
    return PR_OPS
