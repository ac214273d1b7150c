"""KVM_GET_ONE_REG and KVM_SET_ONE_REG on a Book3S vcpu: powerpc.c's
kvm_vcpu_ioctl_get/set_one_reg (the size check, VMX's VR/VSCR/VRSAVE), book3s.c's
kvmppc_get/set_one_reg (the backend's own table first, then the generic registers), and the
HV and PR backends' tables (book3s_hv.c, book3s_pr.c).  Which registers each knows and their
first values are what the lab's Linux 7.3 boots answered; the rules of a set come from the
source (one not modelled yet is named, never guessed)."""

from __future__ import annotations

import errno
import re
import time

from ..uapi import MODES, ONE_REGS, ByteOrder, one_reg_size
from . import book3s_xive
from .book3s import PVR_ARCH_INVALID, Book3sVcpu
from .book3s_xics import get_icp, set_icp
from .errors import KvmError
from .profile import Host

ONE_REG_UNION = 16  # sizeof(union kvmppc_one_reg): a larger register is EINVAL before anything
# runs of registers the header defines by their first and last: FPRn (u64), VRn, VSRn (u128)
RUNS = {"FPR": 0x20, "VR": 0x40, "VSR": 0x60}
GENERIC = frozenset({"DAR", "DSISR", "FPSCR", "DEBUG_INST", "FSCR", "TAR", "EBBHR", "EBBRR", "BESCR", "IC"})
VMX = frozenset({"VSCR", "VRSAVE"})
NO_DEVICE = frozenset({"ICP_STATE", "VP_STATE"})  # ENXIO: no XICS/XIVE device is connected
HV_REGS = frozenset(
    {"DEBUG_INST", "HIOR", "DABR", "DABRX", "DSCR", "PURR", "SPURR", "AMR", "UAMOR", "MMCR0", "MMCR1", "MMCR2",
     "MMCRA", "MMCRS", "MMCR3", "PMC1", "PMC2", "PMC3", "PMC4", "PMC5", "PMC6", "PMC7", "PMC8", "SPMC1", "SPMC2",
     "SIAR", "SDAR", "SIER", "SIER2", "SIER3", "IAMR", "PSPB", "DPDES", "VTB", "DAWR", "DAWRX", "DAWR1", "DAWRX1",
     "DEXCR", "HASHKEYR", "HASHPKEYR", "CIABR", "CSIGR", "TACR", "TCSCR", "PID", "ACOP", "WORT", "TIDR", "PSSCR",
     "VPA_ADDR", "VPA_SLB", "VPA_DTL", "TB_OFFSET", "LPCR", "LPCR_64", "PPR", "ARCH_COMPAT", "DEC_EXPIRY",
     "ONLINE", "PTCR", "FSCR"}
)  # fmt: skip
PR_REGS = frozenset({"DEBUG_INST", "HIOR", "VTB", "LPCR", "LPCR_64"})
# kvmppc_set_one_reg_hv(): what an HV vcpu keeps of a value (asm/reg.h: no hypervisor bit in a
# guest's data breakpoints, only PSSCR's guest-visible fields; a CIABR at the hypervisor's
# privilege is taken down to none)
DABRX_HYP = DAWRX_HYP = 1 << 2
PSSCR_GUEST_VIS = 0xF0000000000003FF
CIABR_PRIV, CIABR_PRIV_HYPER = 0x3, 3
HV_SET_MASKS = {"DABRX": ~DABRX_HYP, "DAWRX": ~DAWRX_HYP, "DAWRX1": ~DAWRX_HYP, "PSSCR": PSSCR_GUEST_VIS}
L1_CACHE_BYTES, LPPACA_SIZE, DTL_ENTRY_SIZE = 128, 1024, 48  # a VPA's alignment, sizeof(struct lppaca, dtl_entry)
TB_OFFSET_ALIGN = 1 << 24  # KVM_REG_PPC_TB_OFFSET rounds up to a multiple of 2^24
TIMEBASE_HZ = 512_000_000  # every POWER timebase since POWER6


def get_tb() -> int:
    """The host's timebase now: time since boot (CLOCK_MONOTONIC) at 512 MHz."""
    return time.monotonic_ns() * (TIMEBASE_HZ // 1_000_000) // 1000


# kvmppc_set_one_reg_hv()'s VPA cases, then set_vpa(): the VPA may go only once neither the SLB
# shadow nor the DTL is registered; those need the VPA registered; a DTL at least one entry,
# trimmed to whole entries; every address cacheline-aligned (nothing is read until a run)
def kvmppc_set_vpa(vcpu: Book3sVcpu, name: str, addr: int, length: int) -> None:
    vpa = vcpu.vpas["VPA_ADDR"][0]
    if name == "VPA_ADDR" and not addr and (vcpu.vpas["VPA_SLB"][0] or vcpu.vpas["VPA_DTL"][0]):
        raise KvmError(errno.EINVAL, "KVM_SET_ONE_REG(VPA_ADDR): the SLB shadow or DTL is still registered")
    if name == "VPA_SLB" and addr and not vpa:
        raise KvmError(errno.EINVAL, "KVM_SET_ONE_REG(VPA_SLB): no VPA is registered")
    if name == "VPA_DTL":
        if addr and (length < DTL_ENTRY_SIZE or not vpa):
            raise KvmError(errno.EINVAL, "KVM_SET_ONE_REG(VPA_DTL): shorter than an entry, or no VPA registered")
        length -= length % DTL_ENTRY_SIZE
    if addr & (L1_CACHE_BYTES - 1):
        raise KvmError(errno.EINVAL, f"KVM_SET_ONE_REG({name}): {addr:#x} is not cacheline-aligned")
    vcpu.vpas[name] = (addr, length if addr else 0)


# kvmppc_set_arch_compat(): the PCR bit each architected PVR needs (asm/reg.h's PVR_ARCH_* and
# PCR_ARCH_*), and the host's by its ISA level
PCR_ARCH_205, PCR_ARCH_206, PCR_ARCH_207, PCR_ARCH_300, PCR_ARCH_31 = 0x2, 0x4, 0x8, 0x10, 0x20
PVR_ARCH_31_P11 = 0x0F000007
ARCH_COMPAT_PCR = {
    0x0F000002: PCR_ARCH_205,
    0x0F000003: PCR_ARCH_206,
    0x0F100003: PCR_ARCH_206,
    0x0F000004: PCR_ARCH_207,
    0x0F000005: PCR_ARCH_300,
    0x0F000006: PCR_ARCH_31,
    PVR_ARCH_31_P11: PCR_ARCH_31,
}  # fmt: skip  (PVR_ARCH_32's PCR bit is no host's here)
HOST_PCR = {8: PCR_ARCH_207, 9: PCR_ARCH_300, 10: PCR_ARCH_31, 11: PCR_ARCH_31}
# asm/reg.h: the LPCR fields userspace may change (kvmppc_set_lpcr), and AIL's one allowed value
LPCR_DPFD, LPCR_TC, LPCR_AIL, LPCR_AIL_3, LPCR_LD = 7 << 52, 0x200, 0x01800000, 0x01800000, 0x00020000

KVMPPC_INST_SW_BREAKPOINT = 0x00DDDD00
MMCR0_FC, MMCR0_PMCCEXT, MMCRA_BHRB_DISABLE = 0x80000000, 0x200, 0x2000000000
LPCR_ILE = 0x02000000
PR_HIOR = 0xFFF00000  # kvmppc_set_pvr_pr: Book3S-64's HIOR unless set explicitly
# kvm->arch.lpcr as the lab's Linux 7.3 computed it (kvmppc_core_init_vm_hv, from the host's LPCR
# and features): an L1's, and bare metal's (POWER10's with LPCR_HAIL)
HV_LPCR = {"pseries": 0x0040000000540413, "powernv": 0x004000000054F41F, "powernv-isa31": 0x004000000454F41F,
           "powernv-hash": 0x404000000004F01F}  # fmt: skip

_NAMES: dict[int, str] = {reg_id: name for name, reg_id in ONE_REGS.items()} | {
    0x1000000000000000 | (3 if kind == "FPR" else 4) << 52 | (first + i): f"{kind}{i}"
    for kind, first in RUNS.items()
    for i in range(32)
}


def name_of(reg_id: int) -> str | None:
    return _NAMES.get(reg_id)


def _run(name: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(FPR|VSR|VR)(\d+)", name)
    return (m[1], int(m[2])) if m else None


def isa31(host: Host) -> bool:
    mode = host.cpu.effective
    return mode is not None and mode.level >= 10


def hv_vm_lpcr(host: Host) -> int:
    """kvmppc_core_init_vm_hv(): a new HV VM's kvm->arch.lpcr (a radix host's VM starts radix)."""
    if host.platform == "pseries":
        return HV_LPCR["pseries"]
    return HV_LPCR["powernv-hash" if host.mmu == "hash" else "powernv-isa31" if isa31(host) else "powernv"]


def first_values(host: Host, hv: bool) -> dict[str, int]:
    """The registers' values a backend's vcpu create leaves (every other one 0; an HV vcpu's
    LPCR is its VM's, which book3s_hv sets)."""
    if not hv:
        return {"HIOR": PR_HIOR}
    return {
        "MMCR0": MMCR0_FC | (MMCR0_PMCCEXT if isa31(host) else 0),
        "MMCRA": MMCRA_BHRB_DISABLE if isa31(host) else 0,
    }


# kvmppc_get/set_one_reg()'s interrupt controller cases: ENXIO without the device's presenter;
# VP_STATE is XIVE native's (kvmppc_xive_native_get/set_vp: EPERM for a vcpu whose XIVE presenter
# is XICS-on-XIVE's, irq_type KVMPPC_IRQ_XICS; kvmsim makes no XIVE native vcpu)
def _no_device(vcpu: Book3sVcpu, name: str, what: str) -> None:
    if name == "VP_STATE" and vcpu.xive_vcpu is not None:
        raise KvmError(errno.EPERM, f"{what}(VP_STATE): the vcpu's XIVE presenter is XICS-on-XIVE's, not native")
    if name != "ICP_STATE" or (vcpu.icp is None and vcpu.xive_vcpu is None):
        raise KvmError(errno.ENXIO, f"{what}({name}): no interrupt controller device is connected")


def _knows(vcpu: Book3sVcpu, name: str) -> bool:
    own = HV_REGS if vcpu.hv else PR_REGS
    return name in own or name in GENERIC or name in VMX or _run(name) is not None or name in NO_DEVICE


# kvm_vcpu_ioctl_get_one_reg(): the value, in the union's first bytes (a u32's, a u64's, both doublewords)
def get_one_reg(vcpu: Book3sVcpu, reg_id: int, byteorder: ByteOrder) -> bytes:
    size = one_reg_size(reg_id)
    name = name_of(reg_id)
    if size > 16:
        raise KvmError(errno.EINVAL, f"ONE_REG id {reg_id:#x}: a {size}-byte register (the union is 16)")
    if name is None or not _knows(vcpu, name):
        raise KvmError(errno.EINVAL, f"KVM_GET_ONE_REG: {vcpu.backend} knows no register {reg_id:#x}")
    if name in NO_DEVICE:  # kvmppc_get_one_reg(): the vcpu's ICP, XICS's or XICS-on-XIVE's
        _no_device(vcpu, name, "KVM_GET_ONE_REG")
        if vcpu.icp is not None:
            return get_icp(vcpu.icp).to_bytes(size, byteorder)
        assert vcpu.xive_vcpu is not None
        return book3s_xive.get_icp(vcpu.xive_vcpu).to_bytes(size, byteorder)
    return _value(vcpu, name, size, byteorder)


def _value(vcpu: Book3sVcpu, name: str, size: int, byteorder: ByteOrder) -> bytes:
    run = _run(name)
    if run is not None:
        kind, i = run
        if kind == "VR":
            return vcpu.vrs[i]
        dw = vcpu.fprs[i]
        if kind == "FPR":
            return dw[vcpu.fpr_offset].to_bytes(8, byteorder)
        return dw[0].to_bytes(8, byteorder) + dw[1].to_bytes(8, byteorder)
    if name == "DEBUG_INST":
        value = KVMPPC_INST_SW_BREAKPOINT
    elif name == "HIOR" and vcpu.hv:
        value = 0
    elif name == "ARCH_COMPAT" and vcpu.hv:  # kvmppc_get_arch_compat(): the virtual core's
        value = vcpu.arch_compat
    elif name in vcpu.vpas and vcpu.hv:  # the next_gpa (and for SLB/DTL the length) set last
        addr, length = vcpu.vpas[name]
        if name != "VPA_ADDR":
            return addr.to_bytes(8, byteorder) + length.to_bytes(8, byteorder)
        value = addr
    elif name == "TB_OFFSET" and vcpu.hv:
        value = vcpu.tb_offset
    elif name == "PID" and vcpu.hv:
        value = vcpu.regs["pid"]
    elif name in ("LPCR", "LPCR_64") and not vcpu.hv:  # PR: "only interested in the LPCR_ILE bit"
        value = LPCR_ILE if vcpu.intr_le else 0
    else:
        value = vcpu.one_regs.get(name, 0)
    if size == 16:  # VPA_SLB, VPA_DTL: addr and length
        return value.to_bytes(16, byteorder)
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, byteorder)


# kvm_vcpu_ioctl_set_one_reg() after its copy_from_user: the backend's set, then the generic one
def set_one_reg(vcpu: Book3sVcpu, reg_id: int, data: bytes, byteorder: ByteOrder) -> None:
    name = name_of(reg_id)
    if name is None or not _knows(vcpu, name) or name == "DEBUG_INST":  # no set table has DEBUG_INST
        raise KvmError(errno.EINVAL, f"KVM_SET_ONE_REG: {vcpu.backend} sets no register {reg_id:#x}")
    if name in NO_DEVICE:
        _no_device(vcpu, name, "KVM_SET_ONE_REG")
        if vcpu.icp is not None:
            set_icp(vcpu.icp, int.from_bytes(data, byteorder))
        else:
            assert vcpu.xive_vcpu is not None
            book3s_xive.set_icp(vcpu.xive_vcpu, int.from_bytes(data, byteorder))
        return
    run = _run(name)
    if run is not None:
        kind, i = run
        if kind == "VR":
            vcpu.vrs[i] = data
        elif kind == "FPR":
            dw = list(vcpu.fprs[i])
            dw[vcpu.fpr_offset] = int.from_bytes(data, byteorder)
            vcpu.fprs[i] = (dw[0], dw[1])
        else:
            vcpu.fprs[i] = (int.from_bytes(data[:8], byteorder), int.from_bytes(data[8:], byteorder))
        return
    value = int.from_bytes(data, byteorder)
    if vcpu.hv and name in vcpu.vpas:
        length = int.from_bytes(data[8:16], byteorder) if name != "VPA_ADDR" else LPPACA_SIZE
        addr = int.from_bytes(data[:8], byteorder)
        kvmppc_set_vpa(vcpu, name, addr, length)
        return
    if vcpu.hv and name == "TB_OFFSET":
        tb_offset = -(-value // TB_OFFSET_ALIGN) * TB_OFFSET_ALIGN & ((1 << 64) - 1)  # ALIGN(), in a u64
        vcpu.tb_offset = tb_offset
        if not vcpu.one_regs.get("DEC_EXPIRY") and tb_offset:  # an expired decrementer in guest time
            vcpu.one_regs["DEC_EXPIRY"] = (get_tb() + tb_offset) & ((1 << 64) - 1)
        return
    if vcpu.hv and name == "ARCH_COMPAT":
        kvmppc_set_arch_compat(vcpu, value)
        return
    if vcpu.hv and name == "HIOR":  # "Only allow this to be set to zero"
        if value:
            raise KvmError(errno.EINVAL, "KVM_SET_ONE_REG(HIOR): an HV vcpu's HIOR can only be 0")
        return
    if vcpu.hv and name == "DPDES" and vcpu.isa_300:  # doorbell_request: one bit
        value &= 1
    if vcpu.hv and name in HV_SET_MASKS:
        value &= HV_SET_MASKS[name]
    if vcpu.hv and name == "CIABR" and value & CIABR_PRIV == CIABR_PRIV_HYPER:
        value &= ~CIABR_PRIV
    if vcpu.hv and name in ("LPCR", "LPCR_64"):
        vcpu.one_regs["LPCR"] = vcpu.one_regs["LPCR_64"] = kvmppc_set_lpcr(vcpu, value, name == "LPCR")
        return
    if not vcpu.hv and name in ("LPCR", "LPCR_64"):  # kvmppc_set_lpcr_pr: ILE only
        vcpu.intr_le = bool(value & LPCR_ILE)
        return
    if vcpu.hv and name == "PID":  # vcpu->arch.pid, a u32: the pid KVM_GET_REGS shows
        vcpu.regs["pid"] = value & 0xFFFFFFFF
        return
    if not vcpu.hv and name == "FSCR":  # book3s.c's set of FSCR writes FPSCR (kvmppc_set_fpscr): kept
        name = "FPSCR"
    vcpu.one_regs[name] = value


# kvmppc_set_arch_compat(): the PCR bit the architected PVR needs, at most the host's (a POWER11
# one only on a POWER11: else stored as PVR_ARCH_INVALID and refused by the sanity check); under
# nested API v2 a mode the L0 agreed to (map_pcr_to_cap: ISA 3.1 is POWER11's on a POWER11 host,
# POWER10's otherwise); then the vcpu's sanity check decides (an HV vcpu before PAPR: EINVAL, set)
def kvmppc_set_arch_compat(vcpu: Book3sVcpu, arch_compat: int) -> None:
    arch_compat &= 0xFFFFFFFF  # set_reg_val into a u32
    host = vcpu.host_compat
    if host.level not in HOST_PCR:
        raise KvmError(errno.EINVAL, f"KVM_SET_ONE_REG(ARCH_COMPAT): no PCR level for ISA level {host.level}")
    host_pcr = guest_pcr = HOST_PCR[host.level]
    if arch_compat:
        if arch_compat not in ARCH_COMPAT_PCR:
            raise KvmError(errno.EINVAL, f"KVM_SET_ONE_REG(ARCH_COMPAT): {arch_compat:#x} is no architected PVR")
        if arch_compat == PVR_ARCH_31_P11 and not host.p11_pvr:
            vcpu.arch_compat = PVR_ARCH_INVALID
            if vcpu.sanity_check():
                raise KvmError(errno.EINVAL, "KVM_SET_ONE_REG(ARCH_COMPAT): POWER11 on a host that is not one")
            return
        guest_pcr = ARCH_COMPAT_PCR[arch_compat]
    if guest_pcr > host_pcr:
        raise KvmError(errno.EINVAL, f"KVM_SET_ONE_REG(ARCH_COMPAT): {arch_compat:#x} is newer than the host")
    if host.nested_v2_caps is not None:
        mode = {PCR_ARCH_300: "power9", PCR_ARCH_31: "power11" if host.p11_pvr else "power10"}.get(guest_pcr)
        if mode is None or not MODES[mode].cap_bit & host.nested_v2_caps:
            raise KvmError(errno.EINVAL, f"KVM_SET_ONE_REG(ARCH_COMPAT): the L0 agreed to no {mode or 'such'} guests")
    vcpu.arch_compat = arch_compat
    if vcpu.sanity_check():
        raise KvmError(errno.EINVAL, "KVM_SET_ONE_REG(ARCH_COMPAT): set, but the vcpu is not sane (no PAPR yet)")


# kvmppc_set_lpcr(): DPFD, ILE, TC, AIL and LD from userspace (LPCR's 32-bit register keeps the
# top half), then kvmppc_filter_lpcr_hv
def kvmppc_set_lpcr(vcpu: Book3sVcpu, new_lpcr: int, preserve_top32: bool) -> int:
    mask = LPCR_DPFD | LPCR_ILE | LPCR_TC | LPCR_AIL | LPCR_LD
    if preserve_top32:  # "Broken 32-bit version of LPCR must not clear top bits"
        mask &= 0xFFFFFFFF
    lpcr = (vcpu.one_regs.get("LPCR_64", 0) & ~mask) | (new_lpcr & mask)
    if vcpu.radix:  # LPCR_TC only applies to HPT guests
        lpcr &= ~LPCR_TC
    if lpcr & LPCR_AIL != LPCR_AIL_3 or (vcpu.radix and vcpu.p9_radix_prefetch_bug):  # AIL 1/2 disallowed
        lpcr &= ~LPCR_AIL
    if not vcpu.isa_300:
        lpcr &= ~LPCR_LD
    return lpcr
