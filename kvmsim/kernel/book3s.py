"""The Book3S vcpu (arch/powerpc/kvm/book3s.c, powerpc.c's vcpu half): ``struct
kvm_vcpu_arch`` as far as the modelled ioctls read and change it, the registers of
``KVM_GET/SET_REGS``, ``kvmppc_sanity_check``, ``KVM_ENABLE_CAP`` on a vcpu and ``KVM_RUN``.
Creation is the backend's (``book3s_hv.kvmppc_core_vcpu_create_hv``,
``book3s_pr.kvmppc_core_vcpu_create_pr``): they say the vcpu's PVR and first MSR."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..uapi import (
    KVM_CAP_IRQ_XICS,
    KVM_CAP_PPC_EPR,
    KVM_CAP_PPC_FWNMI,
    KVM_CAP_PPC_IRQ_XIVE,
    KVM_CAP_PPC_OSI,
    KVM_CAP_PPC_PAPR,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_REGS,
    KVM_RUN_EXIT,
    KVM_RUN_HEAD,
    KVM_RUN_SYSTEM_EVENT,
    KVM_SYSTEM_EVENT_SHUTDOWN,
    MSR_ME,
    MSR_TS_MASK,
    SLB_ESID_V,
    ByteOrder,
)
from . import book3s_xive
from .book3s_xics import Icp, connect_vcpu
from .book3s_xive import XiveVcpu
from .errors import KvmError
from .kvm_device import KvmDeviceFile

if TYPE_CHECKING:
    from .binary_stats import Stats

MSR_HV = 1 << 60
MSR_POW = 1 << 18
MSR_PR = 1 << 14


def pvr_is_book3s_64(pvr: int) -> bool:
    """kvmppc_set_pvr_pr(): KVM_CPU_3S_64 for 0x330000 <= pvr < 0x70330000 (every POWER here)."""
    return 0x330000 <= pvr < 0x70330000


PVR_ARCH_INVALID = 0xFFFFFFFF  # asm/reg.h: an arch_compat no CPU can be


@attrs.frozen
class HostCompat:
    """What kvmppc_set_arch_compat() asks of the host: its PCR level (the CPU features' ISA:
    the partition's mode on pseries, the processor's on powernv), CPU_FTR_P11_PVR, and under
    nested API v2 the modes the L0 and L1 agreed at init (``nested_capabilities``)."""

    level: int  # 8: ISA 2.07S, 9: 3.00, 10 and 11: 3.1
    p11_pvr: bool
    nested_v2_caps: int | None = None


@attrs.define(eq=False)
class Book3sVcpu:
    """``struct kvm_vcpu_arch``: the PVR, the registers of ``struct kvm_regs``, the enabled
    capabilities and whether the last sanity check passed."""

    hv: bool  # an HV VM's vcpu (is_kvmppc_hv_enabled(kvm)); else PR's
    pvr: int
    regs: dict[str, int]  # struct kvm_regs's fields: pc, cr, ..., gpr0..gpr31
    # the SLB as KVM_GET/SET_SREGS see it, (orige, origv) pairs: HV's valid entries compacted
    # (slb_max of them), PR's 64 by index; and PR's SDR1
    slb: list[tuple[int, int]] = attrs.Factory(list)
    sdr1: int = 0
    multi_pgsize: bool = False  # BOOK3S_HFLAG_MULTI_PGSIZE (PR: a POWER6 to POWER9 PVR, once set kept)
    # the ONE_REG registers (kvmsim.kernel.one_reg): by name, the FP/VSX doublewords, the VMX ones
    one_regs: dict[str, int] = attrs.Factory(dict)
    fprs: list[tuple[int, int]] = attrs.Factory(lambda: [(0, 0)] * 32)
    vrs: list[bytes] = attrs.Factory(lambda: [bytes(16)] * 32)
    fpr_offset: int = 1  # TS_FPROFFSET: a little-endian kernel keeps the FPR in doubleword 1
    intr_le: bool = False  # PR: intr_msr's MSR_LE (LPCR_ILE)
    isa_300: bool = True
    radix: bool = True  # the VM's MMU (kvm_is_radix: an HV VM on a radix host)
    p9_radix_prefetch_bug: bool = False  # CPU_FTR_P9_RADIX_PREFETCH_BUG: POWER9 DD2.0 and DD2.1
    backend: str = "kvm_hv"
    papr_enabled: bool = False
    osi_enabled: bool = False
    epr_user: bool = False
    sane: bool = False
    host_compat: HostCompat = HostCompat(9, False)
    arch_compat: int = 0  # the virtual core's (vc->arch_compat): ISA 3.0 gives each vcpu its own
    # HV's registered areas (struct kvmppc_vpa's next_gpa and len): the VPA, SLB shadow, DTL
    vpas: dict[str, tuple[int, int]] = attrs.Factory(lambda: dict.fromkeys(("VPA_ADDR", "VPA_SLB", "VPA_DTL"), (0, 0)))
    tb_offset: int = 0  # the virtual core's timebase offset
    external_pending: bool = False  # an external interrupt queued (KVM_INTERRUPT, the ICP; UNSET dequeues it)
    icp: Icp | None = None  # vcpu->arch.icp: connected to the VM's XICS (irq_type KVMPPC_IRQ_XICS)
    xive_vcpu: XiveVcpu | None = None  # vcpu->arch.xive_vcpu: connected to its XICS-on-XIVE (the same)
    stat: Stats | None = None  # vcpu->stat (kvm_main makes it with the vcpu)

    # kvmppc_sanity_check(): the PVR is known, the virtual core's arch_compat valid, and HV runs
    # only PAPR guests
    def sanity_check(self) -> int:
        papr_needs_64 = self.papr_enabled and not pvr_is_book3s_64(self.pvr)  # PAPR only works with book3s_64
        invalid = self.hv and self.arch_compat == PVR_ARCH_INVALID  # CONFIG_KVM_BOOK3S_HV_POSSIBLE
        sane = bool(self.pvr) and not invalid and not papr_needs_64 and (self.papr_enabled or not self.hv)
        self.sane = sane
        return 0 if sane else -errno.EINVAL


def new_vcpu(hv: bool, pvr: int, msr: int, one_regs: dict[str, int] | None = None, *, little: bool = True,
             isa_300: bool = True) -> Book3sVcpu:  # fmt: skip
    """A vcpu as its backend's create leaves it: every register 0 but the MSR, no SLB entry
    (PR: 64 empty ones), then the sanity check (an HV vcpu is not sane until
    KVM_ENABLE_CAP(KVM_CAP_PPC_PAPR))."""
    slb = [] if hv else [(0, 0)] * PR_SLB_NR
    vcpu = Book3sVcpu(hv, pvr, dict.fromkeys(KVM_REGS.fields, 0) | {"msr": msr}, slb)
    vcpu.one_regs = dict(one_regs or {})
    vcpu.fpr_offset, vcpu.isa_300, vcpu.backend = (1 if little else 0), isa_300, "kvm_hv" if hv else "kvm_pr"
    vcpu.sanity_check()
    return vcpu


# kvmppc_book3s_queue_irqprio(vcpu, BOOK3S_INTERRUPT_EXTERNAL) and its dequeue
def queue_external(vcpu: Book3sVcpu) -> None:
    vcpu.external_pending = True
    if vcpu.stat is not None:
        vcpu.stat.add("queue_intr")


def dequeue_external(vcpu: Book3sVcpu) -> None:
    vcpu.external_pending = False


# kvm_arch_vcpu_ioctl_get_regs(): every field as the vcpu holds it
def get_regs(vcpu: Book3sVcpu) -> dict[str, int]:
    return dict(vcpu.regs)


# kvm_arch_vcpu_ioctl_set_regs(): every field but pid; CR through kvmppc_set_cr's u32, the
# MSR through the backend's set_msr
def set_regs(vcpu: Book3sVcpu, values: dict[str, int]) -> None:
    msr = (kvmppc_set_msr_hv if vcpu.hv else kvmppc_set_msr_pr)(vcpu, values["msr"])
    vcpu.regs.update({k: v for k, v in values.items() if k != "pid"} | {"msr": msr, "cr": values["cr"] & 0xFFFFFFFF})


def kvmppc_set_msr_hv(vcpu: Book3sVcpu, msr: int) -> int:
    """book3s_hv_builtin.c: "Guest must always run with ME enabled, HV disabled"; an illegal
    transaction state (TS = 0b11) is forced to a safe one (TS = 0)."""
    msr = (msr | MSR_ME) & ~MSR_HV
    return msr & ~MSR_TS_MASK if msr & MSR_TS_MASK == MSR_TS_MASK else msr


def kvmppc_set_msr_pr(vcpu: Book3sVcpu, msr: int) -> int:
    """A PAPR guest's MSR is a guest's (no HV, ME set); msr_mask is every bit on Book3S-64."""
    if vcpu.papr_enabled:
        msr = (msr & ~MSR_HV) | MSR_ME
    if msr & MSR_POW:  # the vcpu would halt in the ioctl until an interrupt (kvm_vcpu_halt)
        raise KvmError(errno.ENOTTY, "not modelled: KVM_SET_REGS with MSR_POW on a PR vcpu (it halts the vcpu)")
    if not msr & MSR_PR and msr & MSR_TS_MASK == 1 << 34:  # MSR_TM_TRANSACTIONAL: tabort, not modelled
        raise KvmError(errno.ENOTTY, "not modelled: KVM_SET_REGS entering a transaction on a PR vcpu")
    return msr


# kvmppc_set_pvr_pr(): "If they're asking for POWER6 or later, set the flag indicating that
# we can do multiple large page sizes and 1TB segments" -- the list stops at POWER9
MULTI_PGSIZE_PVR_VERS = frozenset({0x3E, 0x3F, 0x4A, 0x4D, 0x4B, 0x4C, 0x66, 0x4E})


def pr_multi_pgsize(pvr: int) -> bool:
    return pvr >> 16 in MULTI_PGSIZE_PVR_VERS


HV_SLB_NR = 32  # kvmppc_mmu_book3s_hv_init: "POWER7/POWER8"
PR_SLB_NR = 64  # kvmppc_core_vcpu_create_pr
ESID_MASK = 0xFFFFFFFFF0000000


# kvm_arch_vcpu_ioctl_get_sregs(): the backend's get_sregs
def get_sregs(vcpu: Book3sVcpu) -> dict[str, int]:
    """HV: zeros but the PVR and the slb_max entries kept.  PR (Book3S-64, BOOK3S_HFLAG_SLB):
    the PVR, SDR1 and all 64 entries, each ESID with its index or-ed in."""
    sregs = {"pvr": vcpu.pvr, "sdr1": 0 if vcpu.hv else vcpu.sdr1}
    for i, (orige, origv) in enumerate(vcpu.slb):
        sregs[f"slb{i}e"] = orige if vcpu.hv else orige | i
        sregs[f"slb{i}v"] = origv
    return sregs


# kvm_arch_vcpu_ioctl_set_sregs(): the backend's set_sregs
def set_sregs(vcpu: Book3sVcpu, sregs: dict[str, int]) -> None:
    if vcpu.hv:  # "Only accept the same PVR as the host's, since we can't spoof it"
        if sregs["pvr"] != vcpu.pvr:
            raise KvmError(errno.EINVAL, f"KVM_SET_SREGS: PVR {sregs['pvr']:#010x} is not the host's {vcpu.pvr:#010x}")
        entries = [(sregs[f"slb{i}e"], sregs[f"slb{i}v"]) for i in range(HV_SLB_NR)]
        vcpu.slb = [(e, v) for e, v in entries if e & SLB_ESID_V]  # compacted: slb_max of them
        return
    # kvmppc_set_pvr_pr(), SDR1, then the SLB: slbmte(0, 0) and slbia flush it, each valid
    # entry is written at the index its ESID word carries (slbmte), ESID and valid bit kept
    if not pvr_is_book3s_64(sregs["pvr"]):
        raise KvmError(errno.ENOTTY, f"not modelled: KVM_SET_SREGS with a 32-bit Book3S PVR {sregs['pvr']:#x} (PR)")
    vcpu.pvr, vcpu.sdr1 = sregs["pvr"], sregs["sdr1"]
    vcpu.multi_pgsize |= pr_multi_pgsize(vcpu.pvr)
    slb = [(0, 0)] * PR_SLB_NR
    for i in range(PR_SLB_NR):
        rb, rs = sregs[f"slb{i}e"], sregs[f"slb{i}v"]
        if rb & SLB_ESID_V:
            index = rb & 0xFFF
            if index == PR_SLB_NR:  # slb_nr > vcpu->arch.slb_nr is the kernel's test: 64 is written past the array
                raise KvmError(errno.ENOTTY, "not modelled: KVM_SET_SREGS with SLB index 64 (PR writes past its SLB)")
            if index < PR_SLB_NR:
                slb[index] = (rb & (ESID_MASK | SLB_ESID_V), rs)
    vcpu.slb = slb
    vcpu.sanity_check()


@attrs.frozen
class EnableCapContext:
    """What kvm_vcpu_ioctl_enable_cap looks up beyond the vcpu: the calling process's files
    (fget: None for an fd not open), the vcpu's VM, and whether this machine runs XIVE (and in HV
    mode, where its XICS device is XICS-on-XIVE's)."""

    fget: Callable[[int], object | None]
    vm: object
    xive: bool
    xics_on_xive: bool


# kvm_vcpu_ioctl_enable_cap(): flags first, then the capability, then the sanity check
def enable_cap(vcpu: Book3sVcpu, cap: int, flags: int, args: tuple[int, ...], ctx: EnableCapContext) -> int:
    if flags:
        raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP: flags {flags:#x} must be 0")
    if cap == KVM_CAP_PPC_OSI:
        vcpu.osi_enabled = True
    elif cap == KVM_CAP_PPC_PAPR:
        vcpu.papr_enabled = True
    elif cap == KVM_CAP_PPC_EPR:
        vcpu.epr_user = bool(args[0])
    elif cap in (KVM_CAP_IRQ_XICS, KVM_CAP_PPC_IRQ_XIVE):  # CONFIG_KVM_XICS, CONFIG_KVM_XIVE
        fd = args[0] & 0xFFFFFFFF  # CLASS(fd, f)(cap->args[0]): an unsigned int
        file = ctx.fget(fd)
        if file is None:
            raise KvmError(errno.EBADF, f"KVM_ENABLE_CAP({cap}): fd {fd} is not open")
        if cap == KVM_CAP_PPC_IRQ_XIVE and not ctx.xive:
            raise KvmError(errno.ENXIO, "KVM_ENABLE_CAP(KVM_CAP_PPC_IRQ_XIVE): this machine has no XIVE")
        if not isinstance(file, KvmDeviceFile):  # kvm_device_from_filp()
            raise KvmError(errno.EPERM, f"KVM_ENABLE_CAP({cap}): fd {fd} is not a KVM device")
        if cap == KVM_CAP_PPC_IRQ_XIVE:  # XIVE native's connect: only its own device (not modelled)
            raise KvmError(errno.EPERM, f"KVM_ENABLE_CAP({cap}): fd {fd} is {file.dev.ops.name}, not kvm-xive-native")
        server = args[1] & 0xFFFFFFFF  # kvmppc_xi{cs,ve}_connect_vcpu(dev, vcpu, u32 cpu)
        connected = vcpu.icp is not None or vcpu.xive_vcpu is not None  # irq_type != KVMPPC_IRQ_DEFAULT
        if ctx.xics_on_xive:
            vcpu.xive_vcpu = book3s_xive.connect_vcpu(file.dev, ctx.vm, connected, server)
        else:
            vcpu.icp = connect_vcpu(file.dev, ctx.vm, connected, server,
                                    lambda: queue_external(vcpu), lambda: dequeue_external(vcpu))  # fmt: skip
    elif cap == KVM_CAP_PPC_FWNMI and vcpu.hv:  # CONFIG_KVM_BOOK3S_HV_POSSIBLE: an HV VM's
        pass  # vcpu->kvm->arch.fwnmi_enabled = true
    else:
        raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP: capability {cap} cannot be enabled on a vcpu")
    if vcpu.sanity_check():
        raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP({cap}): the vcpu fails kvmppc_sanity_check (HV runs only PAPR)")
    return 0


# kvm_arch_vcpu_ioctl_run(), then kvmppc_vcpu_run_hv/_pr's first checks
def vcpu_run(vcpu: Book3sVcpu, run: memoryview, byteorder: ByteOrder, printk: Callable[[str], None]) -> int:
    head = KVM_RUN_HEAD.unpack(byteorder, run)
    if head["immediate_exit"]:  # !vcpu->wants_to_run
        raise KvmError(errno.EINTR, "KVM_RUN: immediate_exit is set")
    if not vcpu.sane:
        _exit(run, byteorder, KVM_EXIT_INTERNAL_ERROR)
        raise KvmError(
            errno.EINVAL, "KVM_RUN: the vcpu is not sane (an HV vcpu needs KVM_ENABLE_CAP(KVM_CAP_PPC_PAPR))"
        )
    # The simulator runs no guest code: the vcpu's first exit is a guest shutdown, which QEMU
    # answers by shutting down cleanly (kvm_cpu_exec: KVM_SYSTEM_EVENT_SHUTDOWN).
    _exit(run, byteorder, KVM_EXIT_SYSTEM_EVENT)
    event = KVM_RUN_SYSTEM_EVENT.pack(byteorder, {"type": KVM_SYSTEM_EVENT_SHUTDOWN})
    run[KVM_RUN_EXIT : KVM_RUN_EXIT + len(event)] = event
    printk("kvmsim: KVM_RUN: no guest code runs here; the vcpu exits with KVM_EXIT_SYSTEM_EVENT (shutdown)")
    return 0


def _exit(run: memoryview, byteorder: ByteOrder, reason: int) -> None:
    head = KVM_RUN_HEAD.unpack(byteorder, run) | {"exit_reason": reason}
    run[: KVM_RUN_HEAD.size] = KVM_RUN_HEAD.pack(byteorder, head)
