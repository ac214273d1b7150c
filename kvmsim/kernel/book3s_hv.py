"""The HV backend (arch/powerpc/kvm/book3s_hv.c, book3s_hv_nested.c): module init and
``get_compat_caps``, and what KVM_CHECK_EXTENSION asks of the HV ops."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs

from ..uapi import (
    CAP_MODES,
    KVM_PPC_1T_SEGMENTS,
    KVM_PPC_COMPAT_BITMASK,
    KVM_PPC_MMUV3_GTSE,
    KVM_PPC_MMUV3_RADIX,
    KVM_PPC_NO_HASH,
    KVM_PPC_PAGE_SIZES_REAL,
    MSR_ME,
    PATB_GR,
    PRTS_MASK,
    SLB_VSID_L,
    SLB_VSID_LP_01,
    AbiRevision,
    CompatMode,
    mode_of_logical_pvr,
)
from . import papr
from .book3s import Book3sVcpu, HostCompat, new_vcpu
from .book3s_pr import KvmppcOps
from .errors import KvmError
from .one_reg import first_values, hv_vm_lpcr, isa31
from .profile import Host


def kvmhv_on_pseries(host: Host) -> bool:
    """This kernel is an L1: a guest of PowerVM or of a KVM L0."""
    return host.platform == "pseries"


def guest_capabilities(host: Host) -> int:
    """The modes this L1's CPU supports (cpu_has_feature(CPU_FTR_ARCH_300/31, P11_PVR)):
    every level up to its effective mode."""
    effective = host.cpu.effective
    return caps_up_to(effective.level if effective else 0)


def caps_up_to(level: int) -> int:
    """The bits of every mode at or below ``level``."""
    caps = 0
    for mode in CAP_MODES:
        if mode.level <= level:
            caps |= mode.cap_bit
    return caps


def kvmppc_core_check_processor_compat_hv(host: Host) -> bool:
    """HV mode (bare metal) with ISA 2.06, or ISA 3.0 with a radix MMU (an L1)."""
    if not kvmhv_on_pseries(host):
        return True  # every processor modelled (POWER8+) has ISA 2.06
    return host.cpu.isa_300 and host.mmu == "radix"


@attrs.define
class HvModule:
    """The loaded kvm_hv module and its state."""

    host: Host
    steps: HvSteps | None  # what this kernel's revision of the ioctl does here; None: it has none
    printk: Callable[[str], None]
    nestedv2: bool = False  # static_branch __kvmhv_is_nestedv2
    nested_capabilities: int = 0  # guest & host capabilities, set at init on nested v2
    _warned_zero: bool = False

    @property
    def ops(self) -> KvmppcOps:
        get = self.get_compat_caps if self.steps is not None else None
        return KvmppcOps("kvm_hv", get)

    # kvmhv_enable_nested(NULL): may this kernel run nested guests of its own (API v1)?  Not
    # with the module parameter nested=0 (-EPERM), first of all
    def enable_nested(self) -> bool:
        return self.host.kvm_hv_nested and self.host.cpu.isa_300 and self.host.mmu == "radix" and not self.nestedv2

    # kvmppc_hash_v3_possible()
    def hash_v3_possible(self) -> bool:
        return self.host.cpu.isa_300 and not kvmhv_on_pseries(self.host)  # needs CPU_FTR_HVMODE

    # kvmppc_get_compat_caps(): platform first, then the nested API
    def get_compat_caps(self) -> int:
        steps = self.steps
        if steps is None:  # (the op exists only with steps: see ops)
            raise KvmError(errno.ENOTTY, "this kernel has no get_compat_caps")
        if not kvmhv_on_pseries(self.host):
            raise KvmError(errno.EINVAL, "not on pseries: bare-metal PowerNV is an L0, it has no compat caps to report")
        if self.nestedv2:
            return steps.nested_v2(self)
        return steps.cpu_version_map(self._cpu_version())

    def _live_hcall(self) -> int:
        rc, bitmap = papr.h_guest_get_capabilities(self.host.hypervisor, at_init=False)
        if rc != papr.H_SUCCESS:
            # the v4 draft returns the PAPR code as is: -1 (H_HARDWARE) reaches userspace as errno 1
            name = papr.H_NAMES.get(rc, str(rc))
            raise KvmError(-rc, f"H_GUEST_GET_CAPABILITIES failed with {name} ({rc}), returned untranslated")
        return bitmap & KVM_PPC_COMPAT_BITMASK

    def _cached(self) -> int:
        if not self.nested_capabilities and not self._warned_zero:  # WARN_ON_ONCE(!nested_capabilities)
            self._warned_zero = True
            self.printk("WARNING: kvmppc_get_compat_caps: nested_capabilities is 0 (no mode both L1 and L0 support)")
        return self.nested_capabilities & KVM_PPC_COMPAT_BITMASK

    def _cpu_version(self) -> int:
        # for_each_node_by_type(np, "cpu"): the first node whose cpu-version reads as a u32;
        # a value of 0 counts as none found
        for node in self.host.cpu_nodes:
            if node.cpu_version is not None:
                if node.cpu_version == 0:
                    break
                return node.cpu_version
        raise KvmError(errno.EINVAL, "the host has no cpu-version property in any cpu node (nested API v1)")


def _cpu_version_mode(cpu_version: int) -> CompatMode:
    mode = mode_of_logical_pvr(cpu_version)
    if mode is None or not mode.cap_bit:
        raise KvmError(
            errno.EINVAL, f"cpu-version {cpu_version:#010x} is not a POWER9/10/11 logical PVR (nested API v1)"
        )
    return mode


def _single(cpu_version: int) -> int:
    return _cpu_version_mode(cpu_version).cap_bit


def _cumulative(cpu_version: int) -> int:
    return caps_up_to(_cpu_version_mode(cpu_version).level)


@attrs.frozen
class HvSteps:
    """What one revision's kvmppc_get_compat_caps does on each nested API."""

    nested_v2: Callable[[HvModule], int]  # PowerVM: the bitmap, and where it comes from
    cpu_version_map: Callable[[int], int]  # a KVM L0 (nested v1): cpu-version to modes


# The revisions' behaviour here, by revision name (uapi has only their numbers): the v4 draft
# asks the hypervisor on every call and maps cpu-version to its one mode; v5 and Linux 7.3
# use nested_capabilities cached at init and every mode up to cpu-version's.
HV_STEPS: dict[str, HvSteps] = {
    "v4": HvSteps(HvModule._live_hcall, _single),
    "v5": HvSteps(HvModule._cached, _cumulative),
    "linux-7.3": HvSteps(HvModule._cached, _cumulative),
}


def kvmhv_nested_init(module: HvModule) -> None:
    """book3s_hv_nested.c: nested API v2 first (H_GUEST_GET/SET_CAPABILITIES); when the
    query fails, the fall-back to nested API v1 (H_SET_PARTITION_TABLE)."""
    host, printk = module.host, module.printk
    if not kvmhv_on_pseries(host):
        return
    if host.mmu != "radix":
        raise KvmError(errno.ENODEV, "a nested hypervisor needs a radix MMU (this partition uses hash)")
    hv = host.hypervisor
    rc, host_capabilities = papr.h_guest_get_capabilities(hv, at_init=True)
    if rc == papr.H_SUCCESS:
        module.nested_capabilities = guest_capabilities(host) & host_capabilities
        rc = papr.h_guest_set_capabilities(hv, module.nested_capabilities)
        if rc != papr.H_SUCCESS:
            printk(f"kvm-hv: Could not configure parent hypervisor capabilities (rc={rc})")
            raise KvmError(errno.ENODEV, f"H_GUEST_SET_CAPABILITIES failed ({papr.H_NAMES.get(rc, rc)})")
        module.nestedv2 = True
        return
    printk(f"kvm-hv: nestedv2 get capabilities hcall failed, falling back to nestedv1 (rc={rc})")
    rc = papr.h_set_partition_table(hv)
    if rc != papr.H_SUCCESS:
        printk(f"kvm-hv: Parent hypervisor does not support nesting (rc={rc})")
        raise KvmError(errno.ENODEV, "the parent hypervisor offers neither nested API v2 nor v1")


THREADS_PER_SUBCORE = 8  # kvm->arch.smt_mode before ISA 3.0: POWER8's threads in HV mode
MAX_SMT_THREADS = 8  # asm/kvm_book3s_asm.h


# kvmppc_hcall_impl_hv(): the hcalls HV handles in virtual mode (CONFIG_SPAPR_TCE_IOMMU and
# CONFIG_KVM_XICS built), then those with a real-mode handler (book3s_hv_rmhandlers.S's
# hcall_real_table, its non-zero entries)
HV_HCALLS = frozenset(
    {0xE0, 0xE8, 0xE4, 0xDC, 0x31C, 0x1C, 0x20, 0x13C, 0x138, 0x3C, 0x40, 0x74, 0x68, 0x64, 0x6C, 0x70, 0x2FC, 0x2C,
     0x448}
    | {0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x28, 0x2C, 0x64, 0x68, 0x6C, 0x74, 0xE0, 0xE4, 0x124, 0x134, 0x2FC, 0x300}
)  # fmt: skip


# kvmhv_set_smt_mode(): a power of two up to MAX_SMT_THREADS; before ISA 3.0 at most a core's
# threads ("strict" packing), from ISA 3.0 each vcpu its own core, smt_mode emulated; EBUSY
# once the VM has a virtual core
def kvmhv_set_smt_mode(host: Host, vm: SmtState, smt_mode: int, flags: int) -> None:
    if flags:
        raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP(KVM_CAP_PPC_SMT): flags {flags:#x} must be 0")
    if smt_mode > MAX_SMT_THREADS or smt_mode <= 0 or smt_mode & (smt_mode - 1):
        raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP(KVM_CAP_PPC_SMT): mode {smt_mode} is not a power of two up to 8")
    esmt = 0
    if not host.cpu.isa_300:
        if smt_mode > THREADS_PER_SUBCORE:
            raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP(KVM_CAP_PPC_SMT): mode {smt_mode} > threads_per_subcore")
    else:
        esmt, smt_mode = smt_mode, 1
    if vm.vcores:
        raise KvmError(errno.EBUSY, "KVM_ENABLE_CAP(KVM_CAP_PPC_SMT): the VM has virtual cores already")
    vm.smt_mode, vm.emul_smt_mode = smt_mode, esmt


class SmtState(Protocol):
    """What kvmhv_set_smt_mode and vcpu creation read and write of ``kvm->arch``."""

    vcores: set[int]
    smt_mode: int
    emul_smt_mode: int
    hv_mmu: HvMmu | None


# asm/reg.h: the LPCR bits the MMU set-up owns (VPM1: HPT guest; UPRT, HR: process table, radix)
LPCR_VPM1, LPCR_HAIL, LPCR_UPRT, LPCR_HR, LPCR_GTSE = 1 << 62, 0x04000000, 0x00400000, 0x00100000, 0x400


@attrs.define
class HvMmu:
    """``kvm->arch``'s MMU set-up as kvmppc_core_init_vm_hv leaves it (a radix host's VM is
    radix) and KVM_PPC_ALLOCATE_HTAB / KVM_PPC_CONFIGURE_V3_MMU change it: radix or HPT, the
    VM's LPCR (each virtual core takes it when created and follows its MMU bits), the HPT's
    order (0: none allocated), the process table userspace gave."""

    radix: bool
    lpcr: int
    host_hail: bool  # LPCR_HAIL in the host's LPCR (bare metal with ISA 3.1)
    hpt_order: int = 0
    process_table: int = 0

    @classmethod
    def init_vm(cls, host: Host) -> HvMmu:
        return cls(host.mmu == "radix", hv_vm_lpcr(host), host.platform == "powernv" and isa31(host))


# kvmppc_update_lpcr(): nothing when the VM's LPCR has those bits already, else the VM's and
# every virtual core's (under nested API v2 marked dirty for the L0: nothing to see here)
def kvmppc_update_lpcr(mmu: HvMmu, vcpus: Iterable[Book3sVcpu], lpcr: int, mask: int) -> None:
    if mmu.lpcr & mask == lpcr:
        return
    mmu.lpcr = (mmu.lpcr & ~mask) | lpcr
    for vcpu in vcpus:
        vcpu.one_regs["LPCR"] = vcpu.one_regs["LPCR_64"] = (vcpu.one_regs["LPCR_64"] & ~mask) | lpcr


def _set_radix(mmu: HvMmu, vcpus: Iterable[Book3sVcpu], radix: bool) -> None:
    mmu.radix = radix  # kvm->arch.radix, which every vcpu's LPCR rules read (kvm_is_radix)
    for vcpu in vcpus:
        vcpu.radix = radix


# kvmppc_switch_mmu_to_hpt(): no process table, HPT mode (VPM1), HAIL off on ISA 3.1
def kvmppc_switch_mmu_to_hpt(host: Host, mmu: HvMmu, vcpus: list[Book3sVcpu]) -> None:
    mmu.process_table = 0
    _set_radix(mmu, vcpus, False)
    mask = LPCR_VPM1 | LPCR_UPRT | LPCR_GTSE | LPCR_HR | (LPCR_HAIL if isa31(host) else 0)
    kvmppc_update_lpcr(mmu, vcpus, LPCR_VPM1, mask)


# kvmppc_switch_mmu_to_radix(): the VM's radix tree, the HPT freed, UPRT|GTSE|HR (and HAIL on bare
# metal whose LPCR has it)
def kvmppc_switch_mmu_to_radix(host: Host, mmu: HvMmu, vcpus: list[Book3sVcpu]) -> None:
    _set_radix(mmu, vcpus, True)
    mmu.hpt_order = 0  # kvmppc_free_hpt
    lpcr, mask = LPCR_UPRT | LPCR_GTSE | LPCR_HR, LPCR_VPM1 | LPCR_UPRT | LPCR_GTSE | LPCR_HR
    if isa31(host):
        mask |= LPCR_HAIL
        lpcr |= LPCR_HAIL if mmu.host_hail else 0
    kvmppc_update_lpcr(mmu, vcpus, lpcr, mask)


# kvmhv_configure_mmu(), in its order of checks.  A switch waits for no vcpu: KVM_RUN here
# returns before another ioctl is served (vcpus_running is 0, never EBUSY)
def kvmhv_configure_mmu(host: Host, mmu: HvMmu, vcpus: list[Book3sVcpu], flags: int, process_table: int) -> int:
    what = "KVM_PPC_CONFIGURE_V3_MMU"
    if not host.cpu.isa_300:
        raise KvmError(errno.ENODEV, f"{what}: not an ISA 3.0 processor")
    if flags & ~(KVM_PPC_MMUV3_RADIX | KVM_PPC_MMUV3_GTSE):
        raise KvmError(errno.EINVAL, f"{what}: unknown flags {flags:#x}")
    radix = bool(flags & KVM_PPC_MMUV3_RADIX)
    if bool(process_table & PATB_GR) != radix:
        raise KvmError(errno.EINVAL, f"{what}: process_table's GR bit must match KVM_PPC_MMUV3_RADIX")
    if process_table & PRTS_MASK > 24:
        raise KvmError(errno.EINVAL, f"{what}: process table size field {process_table & PRTS_MASK} > 24")
    if radix and host.mmu != "radix":
        raise KvmError(errno.EINVAL, f"{what}: a radix guest needs a radix host (this one uses hash)")
    if kvmhv_on_pseries(host) and not radix:
        raise KvmError(errno.EINVAL, f"{what}: a nested hypervisor runs radix guests only")
    if radix != mmu.radix:
        (kvmppc_switch_mmu_to_radix if radix else kvmppc_switch_mmu_to_hpt)(host, mmu, vcpus)
    mmu.process_table = process_table  # then kvmppc_setup_partition_table()
    kvmppc_update_lpcr(mmu, vcpus, LPCR_GTSE if flags & KVM_PPC_MMUV3_GTSE else 0, LPCR_GTSE)
    return 0


def kvmppc_pack_vcpu_id(emul_smt_mode: int, max_vcpus: int, vcpu_id: int) -> int:
    """asm/kvm_book3s.h: an ISA 3.0 vcpu id packed into 0..KVM_MAX_VCPUS-1 by its block."""
    block_offsets = (0, 4, 2, 6, 1, 5, 3, 7)
    block = (vcpu_id // max_vcpus) * (MAX_SMT_THREADS // emul_smt_mode)
    if block >= MAX_SMT_THREADS:
        return 0  # WARN_ONCE("VCPU ID too large to pack")
    packed = vcpu_id % max_vcpus + block_offsets[block]
    return 0 if packed >= max_vcpus else packed  # WARN_ONCE("VCPU ID packing failed")


def kvmppc_core_vcpu_create_hv(host: Host, vm: SmtState, vcpu_id: int, nested_v2_caps: int | None = None) -> Book3sVcpu:
    """The vcpu's virtual core (``vcores``: the VM's, by core number): on ISA 3.0 one a vcpu,
    its id packed (an id of KVM_MAX_VCPUS × emul_smt_mode or more has none, and a core taken is
    a collision: EINVAL); before, ``smt_mode`` vcpus share one.  The vcpu gets the host's PVR
    ("we can't spoof it") and MSR_ME, and is not sane until PAPR is on.  Under nested API v2
    the L0 is asked to create it first (H_GUEST_CREATE_VCPU: modelled as a success), and
    ``nested_v2_caps`` are the modes the two agreed (what its arch_compat may be)."""
    if host.cpu.isa_300:
        if vcpu_id >= host.kvm_max_vcpus * vm.emul_smt_mode:
            raise KvmError(
                errno.EINVAL, f"vcpu id {vcpu_id}: no virtual core (KVM_MAX_VCPUS × emul_smt_mode {vm.emul_smt_mode})"
            )
        core = kvmppc_pack_vcpu_id(vm.emul_smt_mode, host.kvm_max_vcpus, vcpu_id)
        if core in vm.vcores:
            raise KvmError(errno.EINVAL, f"vcpu id {vcpu_id}: its virtual core is taken (a collision)")
    else:
        core = vcpu_id // vm.smt_mode  # smt_mode vcpus a core
    vm.vcores.add(core)
    assert host.cpu.pvr is not None
    little = host.arch.byteorder == "little"
    vcpu = new_vcpu(True, host.cpu.pvr, MSR_ME, first_values(host, True), little=little, isa_300=host.cpu.isa_300)
    assert vm.hv_mmu is not None  # an HV VM's (kvm_arch_init_vm)
    vcpu.one_regs["LPCR"] = vcpu.one_regs["LPCR_64"] = vm.hv_mmu.lpcr  # the virtual core's: the VM's
    vcpu.radix = vm.hv_mmu.radix
    vcpu.p9_radix_prefetch_bug = host.cpu.pvr & 0xFFFFEFFF in (0x004E0200, 0x004E0201)  # cpufeatures_cpu_quirks
    level = host.cpu.effective.level if host.cpu.effective else 8
    vcpu.host_compat = HostCompat(level, level >= 11, nested_v2_caps)
    return vcpu


def kvmppc_pgsize_lp_encoding(base_shift: int, actual_shift: int) -> int:
    """asm/kvm_book3s_64.h: the LP field of a page of ``actual_shift`` in a segment of base
    ``base_shift`` (4K, 64K, 16M), -1 for none."""
    if base_shift == 24:
        return 0
    return {(12, 12): 0, (12, 16): 7, (12, 24): 0x38, (16, 16): 1, (16, 24): 8}.get((base_shift, actual_shift), -1)


# kvm_vm_ioctl_get_smmu_info_hv(): 32 data keys (and instruction keys from ISA 2.07S: POWER8
# on), 1T segments, a 32-entry SLB, 4K/64K/16M segments each with 16M pages too; an L1 runs
# no HPT guests
def kvm_vm_ioctl_get_smmu_info_hv(host: Host) -> dict[str, int]:
    info = {"data_keys": 32, "instr_keys": 32, "flags": KVM_PPC_PAGE_SIZES_REAL | KVM_PPC_1T_SEGMENTS, "slb_size": 32}
    for i, (shift, sllp) in enumerate(((12, 0), (16, SLB_VSID_L | SLB_VSID_LP_01), (24, SLB_VSID_L))):
        info |= {f"sps{i}_page_shift": shift, f"sps{i}_slb_enc": sllp, f"sps{i}_enc0_page_shift": shift,
                 f"sps{i}_enc0_pte_enc": kvmppc_pgsize_lp_encoding(shift, shift)}  # fmt: skip
        penc = kvmppc_pgsize_lp_encoding(shift, 24)
        if shift != 24 and penc != -1:  # "Add 16MB MPSS support"
            info |= {f"sps{i}_enc1_page_shift": 24, f"sps{i}_enc1_pte_enc": penc}
    if kvmhv_on_pseries(host):
        info["flags"] |= KVM_PPC_NO_HASH
    return info


def kvmppc_book3s_init_hv(host: Host, rev: AbiRevision, printk: Callable[[str], None]) -> HvModule:
    """Load kvm_hv; :class:`KvmError` (the module's init errno) when it refuses."""
    if not host.book3s_hv:
        raise KvmError(errno.ENOENT, "kvm_hv.ko does not exist (kernel built without Book3S HV)")
    if not kvmppc_core_check_processor_compat_hv(host):
        mode = host.cpu.effective.name if host.cpu.effective else "raw"
        raise KvmError(errno.ENODEV, f"an L1 needs ISA 3.0 and a radix MMU ({mode} mode, {host.mmu} MMU)")
    module = HvModule(host, HV_STEPS[rev.rules] if rev.ioctl is not None else None, printk)
    kvmhv_nested_init(module)
    if not kvmhv_on_pseries(host):
        printk("KVM-HV: Enabling IRQ bypass")  # CONFIG_KVM_XICS, bare metal only
    return module
