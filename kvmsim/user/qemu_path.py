"""The KVM calls QEMU 11.1 makes on a POWER host on its way to a paused pseries machine
(``-machine pseries,accel=kvm -cpu host -S``), in its order, as probes: what
``../shared/reference/qemu.md`` lists, read from QEMU's ``accel/kvm/kvm-all.c``,
``target/ppc/kvm.c`` and ``hw/ppc/spapr*.c``.  The same list runs through the in-process
client and, built into the lab's prober, as a ppc64le program under ``kvmsim run``
(tests/test_qemu_path.py): both must get the kernel's answers."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from ..uapi import (
    KVM_CAP_BINARY_STATS_FD,
    KVM_CAP_GUEST_MEMFD,
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_IRQ_XICS,
    KVM_CAP_MAX_VCPU_ID,
    KVM_CAP_MAX_VCPUS,
    KVM_CAP_MULTI_ADDRESS_SPACE,
    KVM_CAP_NR_MEMSLOTS,
    KVM_CAP_NR_VCPUS,
    KVM_CAP_ONE_REG,
    KVM_CAP_PPC_AIL_MODE_3,
    KVM_CAP_PPC_BOOKE_WATCHDOG,
    KVM_CAP_PPC_DAWR1,
    KVM_CAP_PPC_ENABLE_HCALL,
    KVM_CAP_PPC_EPR,
    KVM_CAP_PPC_FIXUP_HCALL,
    KVM_CAP_PPC_FWNMI,
    KVM_CAP_PPC_GET_CPU_CHAR,
    KVM_CAP_PPC_GET_SMMU_INFO,
    KVM_CAP_PPC_HIOR,
    KVM_CAP_PPC_HTAB_FD,
    KVM_CAP_PPC_HTM,
    KVM_CAP_PPC_IRQ_LEVEL,
    KVM_CAP_PPC_IRQ_XIVE,
    KVM_CAP_PPC_MMU_HASH_V3,
    KVM_CAP_PPC_MMU_RADIX,
    KVM_CAP_PPC_NESTED_HV,
    KVM_CAP_PPC_PAPR,
    KVM_CAP_PPC_RPT_INVALIDATE,
    KVM_CAP_PPC_RTAS,
    KVM_CAP_PPC_SEGSTATE,
    KVM_CAP_PPC_SMT,
    KVM_CAP_PPC_SMT_POSSIBLE,
    KVM_CAP_PPC_UNSET_IRQ,
    KVM_CAP_SPAPR_MULTITCE,
    KVM_CAP_SPAPR_RESIZE_HPT,
    KVM_CAP_SPAPR_TCE,
    KVM_CAP_SPAPR_TCE_64,
    KVM_CAP_SPAPR_TCE_VFIO,
    KVM_CAP_SYNC_MMU,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
    KVM_GET_ONE_REG,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_PPC_CPU_CHAR,
    KVM_PPC_GET_CPU_CHAR,
    KVM_PPC_GET_RMMU_INFO,
    KVM_PPC_GET_SMMU_INFO,
    KVM_PPC_RMMU_INFO,
    KVM_PPC_RTAS_DEFINE_TOKEN,
    KVM_PPC_SMMU_INFO,
    KVM_REGS,
    KVM_RUN,
    KVM_SET_ONE_REG,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SREGS,
    KVM_USERSPACE_MEMORY_REGION,
    MSR_ME,
    ONE_REGS,
    Arch,
    one_reg_size,
)
from .probe import Probe, reg_bytes, rtas_token_args

# KVM_CHECK_EXTENSION as QEMU asks it, in order: (number, fd).  kvm_init on /dev/kvm, then the VM's
# (kvm_check_extension uses the VM fd once it exists), kvm_arch_init's powerpc ones, MMU_RADIX
# again on /dev/kvm (kvmppc_has_cap_mmu_radix), the generic ones, then the machine's
KVM_CAP_PPC_BOOKE_SREGS, KVM_CAP_IRQCHIP, KVM_CAP_S390_IRQCHIP = 40, 0, 99  # asked, never had here
KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_PRE_FAULT_MEMORY = 233, 236
STARTUP_CAPS = (
    (KVM_CAP_IMMEDIATE_EXIT, "dev"), (KVM_CAP_NR_MEMSLOTS, "dev"),
    (KVM_CAP_MULTI_ADDRESS_SPACE, "vm"), (KVM_CAP_NR_VCPUS, "vm"), (KVM_CAP_MAX_VCPUS, "vm"),
    *((cap, "vm") for cap in (
        KVM_CAP_PPC_UNSET_IRQ, KVM_CAP_PPC_SEGSTATE, KVM_CAP_PPC_BOOKE_SREGS, KVM_CAP_PPC_SMT_POSSIBLE,
        KVM_CAP_SPAPR_TCE, KVM_CAP_SPAPR_TCE_64, KVM_CAP_SPAPR_MULTITCE, KVM_CAP_SPAPR_TCE_VFIO, KVM_CAP_ONE_REG,
        KVM_CAP_PPC_HIOR, KVM_CAP_PPC_EPR, KVM_CAP_PPC_BOOKE_WATCHDOG, KVM_CAP_PPC_HTAB_FD, KVM_CAP_PPC_FIXUP_HCALL,
        KVM_CAP_PPC_SMT, KVM_CAP_PPC_HTM, KVM_CAP_PPC_MMU_RADIX, KVM_CAP_PPC_MMU_HASH_V3, KVM_CAP_PPC_IRQ_XIVE,
        KVM_CAP_SPAPR_RESIZE_HPT, KVM_CAP_PPC_GET_CPU_CHAR, KVM_CAP_PPC_NESTED_HV, KVM_CAP_PPC_FWNMI,
        KVM_CAP_PPC_DAWR1, KVM_CAP_PPC_IRQ_LEVEL, KVM_CAP_PPC_RPT_INVALIDATE, KVM_CAP_PPC_AIL_MODE_3)),
    (KVM_CAP_PPC_MMU_RADIX, "dev"),
    *((cap, "vm") for cap in (
        KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_GUEST_MEMFD, KVM_CAP_PRE_FAULT_MEMORY, KVM_CAP_IRQCHIP,
        KVM_CAP_S390_IRQCHIP, KVM_CAP_SYNC_MMU, KVM_CAP_BINARY_STATS_FD, KVM_CAP_IRQ_XICS, KVM_CAP_PPC_RTAS,
        KVM_CAP_MAX_VCPU_ID)),
)  # fmt: skip
XICS_RTAS = (b"ibm,set-xive", b"ibm,get-xive", b"ibm,int-off", b"ibm,int-on")  # tokens 0x2000.. as QEMU's
HCALLS = (0x3C, 0x40, 0x31C, 0x448, 0x300)  # spapr_machine_init's H_LOGICAL_CI_*, SET_MODE, MULTI_TCE..., RANDOM
SPRS = ("DSCR", "PPR", "AMR", "UAMOR", "IAMR", "PSPB", "FSCR", "TAR", "EBBHR", "EBBRR", "BESCR", "PMC1",
        "MMCR0", "MMCRA", "SIAR", "SDAR", "DAWR", "DAWRX", "CIABR", "PID", "TIDR", "PSSCR", "WORT", "DEXCR",
        "HASHKEYR")  # fmt: skip


def _pack(arch: Arch, *, layout: object, values: dict[str, int]) -> bytes:
    return layout.pack(arch.byteorder, values)  # type: ignore[attr-defined, no-any-return]


def qemu_startup_probes(pvr: int, arch_compat: int) -> Iterator[Probe]:
    """QEMU's calls after KVM_CREATE_VM and vcpu 0 (which :func:`kvmsim.user.probe.run` makes,
    as QEMU does at those points): ``pvr`` is what its KVM_SET_SREGS writes (the host's, read
    first), ``arch_compat`` what spapr's CPU reset sets (0: the host's own mode)."""
    yield Probe("qemu api version", "dev", Arch.kvm_get_api_version, lambda a: 0)
    for i, (cap, fd) in enumerate(STARTUP_CAPS):
        yield Probe(f"qemu {i} cap {cap} on {fd}", fd, Arch.kvm_check_extension, lambda a, c=cap: c)  # type: ignore[misc, arg-type]
        if cap == KVM_CAP_PPC_GET_CPU_CHAR:  # kvmppc_get_cpu_char right after its capability
            yield Probe("qemu cpu char", "vm", KVM_PPC_GET_CPU_CHAR.request, lambda a: b"\xaa" * KVM_PPC_CPU_CHAR.size)
        if cap == KVM_CAP_PPC_MMU_RADIX and fd == "dev":  # kvm_get_radix_page_info
            yield Probe("qemu rmmu info", "vm", KVM_PPC_GET_RMMU_INFO.request, lambda a: bytes(KVM_PPC_RMMU_INFO.size))
        if cap == KVM_CAP_PPC_RTAS:  # kvmppc_define_rtas_kernel_token for XICS's calls
            for j, rtas in enumerate(XICS_RTAS):
                token = functools.partial(rtas_token_args, name=rtas, token=0x2000 + (j << 8))
                yield Probe(f"qemu rtas {rtas.decode()}", "vm", KVM_PPC_RTAS_DEFINE_TOKEN.request, token)
    yield Probe("qemu vcpu mmap size", "dev", Arch.kvm_get_vcpu_mmap_size, lambda a: 0)
    # kvm_arch_init_vcpu: the PVR through the SREGS, DEBUG_INST; spapr: PAPR on the vcpu
    yield Probe("qemu get sregs", "vcpu", KVM_GET_SREGS.request, lambda a: bytes(KVM_SREGS.size))
    sregs = functools.partial(_pack, layout=KVM_SREGS, values={"pvr": pvr})
    yield Probe("qemu set sregs pvr", "vcpu", KVM_SET_SREGS.request, sregs)
    yield _one_reg("get", "DEBUG_INST")
    enable = KVM_ENABLE_CAP.request
    papr = functools.partial(_pack, layout=KVM_ENABLE_CAP_STRUCT, values={"cap": KVM_CAP_PPC_PAPR})
    yield Probe("qemu enable papr", "vcpu", enable, papr)
    for hcall in HCALLS:  # spapr_machine_init: errors ignored
        values = {"cap": KVM_CAP_PPC_ENABLE_HCALL, "arg0": hcall, "arg1": 1}
        struct = functools.partial(_pack, layout=KVM_ENABLE_CAP_STRUCT, values=values)
        yield Probe(f"qemu enable hcall {hcall:#x}", "vm", enable, struct)
    ram = {"slot": 0, "memory_size": 512 << 20, "userspace_addr": 0x200000000000}  # below 64TB: 4K pages too
    region = functools.partial(_pack, layout=KVM_USERSPACE_MEMORY_REGION, values=ram)
    yield Probe("qemu ram slot", "vm", KVM_SET_USER_MEMORY_REGION.request, region)
    # reset: the page sizes (spapr_caps' hpt-maxpagesize), then each vcpu's reset
    yield Probe("qemu smmu cap", "dev", Arch.kvm_check_extension, lambda a: KVM_CAP_PPC_GET_SMMU_INFO)
    yield Probe("qemu smmu info", "vm", KVM_PPC_GET_SMMU_INFO.request, lambda a: bytes(KVM_PPC_SMMU_INFO.size))
    yield _one_reg("get", "LPCR_64")
    yield _one_reg("set", "LPCR_64", 0x0040000000000000)
    yield _one_reg("set", "ONLINE", 1)
    yield _one_reg("set", "ARCH_COMPAT", arch_compat)
    yield _one_reg("get", "ARCH_COMPAT")
    # kvm_arch_put_registers: the registers, the FP/VMX state, the SREGS, the SPRs, the VPA, the timebase
    yield Probe("qemu get regs", "vcpu", KVM_GET_REGS.request, lambda a: bytes(KVM_REGS.size))
    regs = functools.partial(_pack, layout=KVM_REGS, values={"pc": 0x100, "msr": MSR_ME | 1 << 63})
    yield Probe("qemu set regs", "vcpu", KVM_SET_REGS.request, regs)
    for name in ("FPSCR", "VSR0", "VSR31", "VSCR", "VR0", "VR31"):
        yield _one_reg("set", name, 0)
    yield Probe("qemu set sregs", "vcpu", KVM_SET_SREGS.request, sregs)
    for name in SPRS:
        yield _one_reg("set", name, 0)
    yield _one_reg("set", "VPA_ADDR", 0)
    yield _one_reg("set", "TB_OFFSET", 0)
    yield _one_reg("set", "DPDES", 0)
    yield _one_reg("get", "LPCR_64", suffix=" after reset")
    yield Probe("qemu run", "vcpu", KVM_RUN.request, lambda a: 0)


def _one_reg(how: str, name: str, value: int = 0, suffix: str = "") -> Probe:
    reg_id = ONE_REGS[name]
    if how == "get":
        return Probe(
            f"qemu get {name}{suffix}", "vcpu", KVM_GET_ONE_REG.request, lambda a: b"\xaa" * 16, one_reg=reg_id
        )
    data = functools.partial(reg_bytes, value=value, size=one_reg_size(reg_id))
    return Probe(f"qemu set {name}", "vcpu", KVM_SET_ONE_REG.request, data, one_reg=reg_id)
