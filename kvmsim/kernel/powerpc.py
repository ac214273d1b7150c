"""The powerpc arch layer (arch/powerpc/kvm/powerpc.c and book3s.c): module loading,
``kvm_vm_ioctl_check_extension``, ``kvm_arch_init_vm``, ``kvm_arch_dev_ioctl`` and
``kvm_arch_vm_ioctl``'s ``KVM_PPC_GET_COMPAT_CAPS`` case, one step function per revision."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import attrs

from ..uapi import (
    KVM_CAP_ENABLE_CAP,
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_IOEVENTFD,
    KVM_CAP_IRQ_XICS,
    KVM_CAP_IRQFD_RESAMPLE,
    KVM_CAP_MAX_VCPU_ID,
    KVM_CAP_MAX_VCPUS,
    KVM_CAP_NR_VCPUS,
    KVM_CAP_ONE_REG,
    KVM_CAP_PPC_AIL_MODE_3,
    KVM_CAP_PPC_ALLOC_HTAB,
    KVM_CAP_PPC_DAWR1,
    KVM_CAP_PPC_ENABLE_HCALL,
    KVM_CAP_PPC_FIXUP_HCALL,
    KVM_CAP_PPC_FWNMI,
    KVM_CAP_PPC_GET_CPU_CHAR,
    KVM_CAP_PPC_GET_PVINFO,
    KVM_CAP_PPC_GET_SMMU_INFO,
    KVM_CAP_PPC_GUEST_DEBUG_SSTEP,
    KVM_CAP_PPC_HIOR,
    KVM_CAP_PPC_HTAB_FD,
    KVM_CAP_PPC_HWRNG,
    KVM_CAP_PPC_IRQ_LEVEL,
    KVM_CAP_PPC_IRQ_XIVE,
    KVM_CAP_PPC_MMU_HASH_V3,
    KVM_CAP_PPC_MMU_RADIX,
    KVM_CAP_PPC_NESTED_HV,
    KVM_CAP_PPC_OSI,
    KVM_CAP_PPC_PAIRED_SINGLES,
    KVM_CAP_PPC_PAPR,
    KVM_CAP_PPC_RPT_INVALIDATE,
    KVM_CAP_PPC_RTAS,
    KVM_CAP_PPC_SECURE_GUEST,
    KVM_CAP_PPC_SEGSTATE,
    KVM_CAP_PPC_SMT,
    KVM_CAP_PPC_SMT_POSSIBLE,
    KVM_CAP_PPC_UNSET_IRQ,
    KVM_CAP_SET_GUEST_DEBUG,
    KVM_CAP_SPAPR_MULTITCE,
    KVM_CAP_SPAPR_RESIZE_HPT,
    KVM_CAP_SPAPR_TCE,
    KVM_CAP_SPAPR_TCE_64,
    KVM_CAP_SPAPR_TCE_VFIO,
    KVM_CREATE_SPAPR_TCE,
    KVM_CREATE_SPAPR_TCE_64,
    KVM_CREATE_SPAPR_TCE_64_STRUCT,
    KVM_CREATE_SPAPR_TCE_STRUCT,
    KVM_DEV_TYPE_VFIO,
    KVM_DEV_TYPE_XICS,
    KVM_DEV_TYPE_XIVE,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
    KVM_GET_ONE_REG,
    KVM_ONE_REG,
    KVM_PPC_ALLOCATE_HTAB,
    KVM_PPC_COMPAT_CAPS_SIZE_VER0,
    KVM_PPC_CONFIGURE_V3_MMU,
    KVM_PPC_CPU_CHAR,
    KVM_PPC_GET_CPU_CHAR,
    KVM_PPC_GET_PVINFO,
    KVM_PPC_GET_RMMU_INFO,
    KVM_PPC_GET_SMMU_INFO,
    KVM_PPC_MMUV3_CFG,
    KVM_PPC_PVINFO,
    KVM_PPC_PVINFO_FLAGS_EV_IDLE,
    KVM_PPC_RMMU_INFO,
    KVM_PPC_RTAS_DEFINE_TOKEN,
    KVM_PPC_SMMU_INFO,
    KVM_RTAS_TOKEN_ARGS,
    KVM_SC_MAGIC_R0,
    KVM_SET_ONE_REG,
    KVM_VM_PPC_HV,
    KVM_VM_PPC_PR,
    PVINFO_HCALL,
    RTAS_NAME_LEN,
    AbiRevision,
    CompatCapsAbi,
    StructLayout,
    byte_swapped_hint,
    one_reg_size,
)
from . import book3s, memslot, one_reg
from .anon_inodes import VFIO, XICS, XIVE
from .book3s import Book3sVcpu, EnableCapContext
from .book3s_64_mmu_hv import kvmppc_alloc_reset_hpt
from .book3s_64_mmu_radix import kvmhv_get_rmmu_info
from .book3s_64_vio import IOMMU_PAGE_SHIFT_4K, TCE_HCALLS, SpaprTceTable, kvm_vm_ioctl_create_spapr_tce
from .book3s_hv import (
    HV_HCALLS,
    MAX_SMT_THREADS,
    THREADS_PER_SUBCORE,
    HvMmu,
    HvModule,
    kvm_vm_ioctl_get_smmu_info_hv,
    kvmhv_configure_mmu,
    kvmhv_on_pseries,
    kvmhv_set_smt_mode,
    kvmppc_book3s_init_hv,
    kvmppc_core_vcpu_create_hv,
    kvmppc_pack_vcpu_id,
)
from .book3s_pr import (
    PR_HCALLS,
    KvmppcOps,
    kvm_configure_mmu_pr,
    kvm_vm_ioctl_get_smmu_info_pr,
    kvmppc_book3s_init_pr,
    kvmppc_core_vcpu_create_pr,
)
from .book3s_rtas import RtasTokenDefinition, kvm_vm_ioctl_rtas_define_token
from .book3s_xics import Xics, kvm_xics_ops
from .book3s_xive import Xive, kvm_xive_ops
from .errors import InvalidInput, KvmError
from .kvm_device import KvmDevice, KvmDeviceOps
from .memslot import MemorySlot, MemslotLimits, Memslots
from .papr import MAX_HCALL_OPCODE
from .profile import CPU_BEHAV_ALL, CPU_CHAR_OPAL, CPU_CHAR_PSERIES, Host
from .usermem import Fault, NonZeroTail, UserAccess
from .vfio import kvm_vfio_ops


def masked_read_reaches_the_kernel(host: Host, addr: int) -> bool:
    """copy_from_user() on ppc64 masks the address instead of checking it
    (mask_user_address_simple: any address with the top bit set becomes 0x8000000000000000,
    expected to fault).  On a bare-metal radix host the kernel runs in HV mode, where that
    address is quadrant 2 and maps: the copy reads kernel memory (the lab's powernv9 and
    powernv10 under Linux 7.3: KVM_SET_REGS from 0xc000... succeeds, KVM_ENABLE_CAP reads a
    capability from it).  copy_to_user and get_user still check access_ok and fault."""
    return addr >> 63 == 1 and host.platform == "powernv" and host.mmu == "radix"


def xive_enabled(host: Host) -> bool:
    """xive_enabled(): POWER9 and later run the XIVE interrupt controller (exploitation mode
    under PowerVM and QEMU, native on PowerNV)."""
    return host.cpu.isa_300


def kvm_max_vcpu_ids(host: Host) -> int:
    """KVM_MAX_VCPU_IDS: MAX_SMT_THREADS × KVM_MAX_VCORES with Book3S HV built, else KVM_MAX_VCPUS."""
    return host.kvm_max_vcpus * (MAX_SMT_THREADS if host.book3s_hv else 1)


def xics_on_xive(host: Host) -> bool:
    """xics_on_xive(): XIVE in HV mode (PowerNV), where KVM's XICS device is book3s_xive.c's."""
    return xive_enabled(host) and host.platform == "powernv"


def device_ops_table(host: Host, printk: Callable[[str], None]) -> dict[int, KvmDeviceOps]:
    """kvm_device_ops_table as kvm.ko's init leaves it (kvmppc_book3s_init, kvm_vfio_ops_init):
    XICS's emulation, or on a XIVE host in HV mode XICS-on-XIVE's and XIVE's native device
    (kvmppc_xive_native_supported: OPAL's queue-state calls, as KVM_CAP_PPC_IRQ_XIVE says);
    VFIO's always."""
    table = {KVM_DEV_TYPE_VFIO: kvm_vfio_ops(VFIO, spapr_tce_iommu=host.spapr_tce_iommu)}
    if xics_on_xive(host):
        max_ids = kvm_max_vcpu_ids(host)
        table[KVM_DEV_TYPE_XICS] = kvm_xive_ops(XIVE, printk, host.kvm_max_vcpus, max_ids, _xive_pack(host))
        why = (
            "book3s_xive_native.c: its ESB pages are MMIO the program maps and loads from (a load changes an "
            "interrupt's state), which no interception here can answer"
        )
        table[KVM_DEV_TYPE_XIVE] = KvmDeviceOps("kvm-xive-native", XIVE, _unmodelled_create, unmodelled=why)
    else:
        table[KVM_DEV_TYPE_XICS] = kvm_xics_ops(XICS, printk)
    return table


def _xive_pack(host: Host) -> Callable[[Vm, int], int]:
    """kvmppc_pack_vcpu_id() for a VM: an HV VM's emul_smt_mode; a PR VM has none (0: the
    kernel divides by it, which POWER's divw leaves undefined, harmless below KVM_MAX_VCPUS)."""

    def pack(vm: Vm, cpu: int) -> int:
        if vm.hv:
            return kvmppc_pack_vcpu_id(vm.emul_smt_mode, host.kvm_max_vcpus, cpu)
        if cpu >= host.kvm_max_vcpus:
            raise KvmError(
                errno.ENOTTY,
                f"not modelled: XICS-on-XIVE server {cpu} of a PR VM (kvmppc_pack_vcpu_id divides by its "
                "emul_smt_mode, 0: undefined on POWER)",
            )
        return cpu

    return pack


def _unmodelled_create(dev: KvmDevice, type_: int) -> None:
    raise AssertionError("an unmodelled device is never created")


# cases every book3s-64 kernel answers 1 (powerpc.c: the !BOOKE list, the generic ones it
# handles itself, CONFIG_PPC_BOOK3S_64's TCE/RTAS/hcall list, KVM_CAP_IRQ_XICS)
ALWAYS = frozenset(
    {
        KVM_CAP_PPC_SEGSTATE, KVM_CAP_PPC_HIOR, KVM_CAP_PPC_PAPR, KVM_CAP_PPC_UNSET_IRQ, KVM_CAP_PPC_IRQ_LEVEL,
        KVM_CAP_ENABLE_CAP, KVM_CAP_ONE_REG, KVM_CAP_IOEVENTFD, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_SET_GUEST_DEBUG,
        KVM_CAP_SPAPR_TCE, KVM_CAP_SPAPR_TCE_64, KVM_CAP_SPAPR_TCE_VFIO, KVM_CAP_PPC_RTAS, KVM_CAP_PPC_FIXUP_HCALL,
        KVM_CAP_PPC_ENABLE_HCALL, KVM_CAP_IRQ_XICS, KVM_CAP_PPC_GET_CPU_CHAR,
    }
)  # fmt: skip
PR_ONLY = frozenset(
    {KVM_CAP_PPC_GUEST_DEBUG_SSTEP, KVM_CAP_PPC_PAIRED_SINGLES, KVM_CAP_PPC_OSI, KVM_CAP_PPC_GET_PVINFO}
)
KVM_USER_MEM_SLOTS = 32767  # KVM_MEM_SLOTS_NUM (SHRT_MAX), no internal slots on powerpc
TASK_SIZE_64TB, TASK_SIZE_4PB = 1 << 46, 1 << 52  # asm/task_size_64.h: TASK_SIZE_USER64 with 4K, 64K pages


def kvmppc_get_cpu_char(host: Host) -> dict[str, int]:
    """pseries_get_cpu_char(): H_GET_CPU_CHARACTERISTICS, its words as they come (a failure
    leaves the struct zeroed, the ioctl still 0); else /ibm,opal/fw-features, each bit from an
    ``enabled`` (or, for two behaviours, a missing ``disabled``) property of its node (no
    fw-features node: zeroes)."""
    fw = host.cpu_char
    if not fw.available:
        return {}
    mask = CPU_CHAR_PSERIES if host.platform == "pseries" else CPU_CHAR_OPAL
    return {"character": fw.character, "behaviour": fw.behaviour, "character_mask": mask,
            "behaviour_mask": CPU_BEHAV_ALL}  # fmt: skip


@attrs.define(eq=False)
class Vm:
    """``struct kvm_arch`` as far as these ioctls care: the ops it was created with, an HV VM's
    threading (smt_mode, emul_smt_mode) and virtual cores (kvm->arch.vcores, by core number)."""

    ops: KvmppcOps
    hv: bool  # is_kvmppc_hv_enabled(kvm)
    smt_mode: int = 1  # kvmppc_core_init_vm_hv: threads_per_subcore before ISA 3.0, else 1
    emul_smt_mode: int = 1
    vcores: set[int] = attrs.field(factory=set, eq=False)
    vcpus: list[Book3sVcpu] = attrs.field(factory=list, eq=False)  # by index: kvm_get_vcpu(kvm, i)
    rtas_tokens: list[RtasTokenDefinition] = attrs.field(factory=list, eq=False)  # kvm->arch.rtas_tokens
    hv_mmu: HvMmu | None = None  # an HV VM's MMU set-up (radix or HPT, its LPCR)
    spapr_tce_tables: list[SpaprTceTable] = attrs.field(factory=list, eq=False)  # kvm->arch.spapr_tce_tables
    devices: list[KvmDevice] = attrs.field(factory=list, eq=False)  # kvm->devices
    xics: Xics | None = None  # kvm->arch.xics: the VM's kvm-xics device's
    xive: Xive | None = None  # kvm->arch.xive: the VM's kvm-xive device's (XICS-on-XIVE)


class PowerpcKvm:
    """KVM on a powerpc kernel: kvm.ko, with whichever of kvm_hv / kvm_pr agreed to load."""

    user_mem_slots = KVM_USER_MEM_SLOTS

    def __init__(self, host: Host, rev: AbiRevision, ksize: int, printk: Callable[[str], None]) -> None:
        self.host, self.rev, self.ksize = host, rev, ksize
        self.ioctl: CompatCapsAbi | None = rev.ioctl
        self.steps: CompatCapsSteps | None = None
        if rev.ioctl is not None:
            if rev.rules not in STEPS:
                raise InvalidInput(
                    f"revision {rev.name!r}: no kernel has the rules {rev.rules!r} (known: {', '.join(STEPS)})"
                )
            self.steps = STEPS[rev.rules]
        self.request = rev.request(host.arch)
        self.KVM_ENABLE_CAP = KVM_ENABLE_CAP.request(host.arch)
        # kvm_arch_vm_ioctl()'s cases beyond the compat ioctl, by request number
        self.vm_ioctls: dict[int, Callable[[Vm, int, UserAccess], int]] = {
            KVM_PPC_GET_SMMU_INFO.request(host.arch): self._get_smmu_info,
            KVM_PPC_RTAS_DEFINE_TOKEN.request(host.arch): self._rtas_define_token,
            KVM_PPC_GET_RMMU_INFO.request(host.arch): self._get_rmmu_info,
            KVM_PPC_GET_CPU_CHAR.request(host.arch): self._get_cpu_char,
            KVM_PPC_ALLOCATE_HTAB.request(host.arch): self._allocate_htab,
            KVM_PPC_CONFIGURE_V3_MMU.request(host.arch): self._configure_v3_mmu,
            KVM_PPC_GET_PVINFO.request(host.arch): self._get_pvinfo,
        }
        # CONFIG_SPAPR_TCE_IOMMU's cases (powerpc.c, either backend): they make a file
        self.create_spapr_tce: dict[int, Callable[[Vm, int, UserAccess, Callable[[Any], int]], int]] = {
            KVM_CREATE_SPAPR_TCE_64.request(host.arch): self._create_spapr_tce_64,
            KVM_CREATE_SPAPR_TCE.request(host.arch): self._create_spapr_tce,
        }
        self.KVM_GET_ONE_REG, self.KVM_SET_ONE_REG = (
            KVM_GET_ONE_REG.request(host.arch),
            KVM_SET_ONE_REG.request(host.arch),
        )
        self.device_ops = device_ops_table(host, printk)  # kvm_device_ops_table, as kvm.ko's init fills it
        self.load_errors: dict[str, KvmError] = {}  # modprobe's failures, by module
        self.hv: HvModule | None = None
        self.pr: KvmppcOps | None = None
        # modprobe loads kvm.ko (which owns /dev/kvm) as the dependency of kvm_hv/kvm_pr,
        # and it stays when they refuse; only a module missing from the build leaves it out
        self.loaded = any(m == "kvm_pr" or host.book3s_hv for m in host.modules)
        if "kvm_hv" in host.modules:
            try:
                self.hv = kvmppc_book3s_init_hv(host, rev, printk)
            except KvmError as exc:
                self.load_errors["kvm_hv"] = exc
        if "kvm_pr" in host.modules:
            try:
                self.pr = kvmppc_book3s_init_pr(host)
            except KvmError as exc:
                self.load_errors["kvm_pr"] = exc

    @property
    def loaded_modules(self) -> list[str]:
        """kvm, then the modules whose init succeeded."""
        if not self.loaded:
            return []
        return ["kvm", *[name for name, ops in (("kvm_hv", self.hv), ("kvm_pr", self.pr)) if ops is not None]]

    # kvm_vm_ioctl_check_extension(): hv_enabled is "kvm_hv is loaded" without a VM, and
    # "this VM is HV" with one; the cases in the order of powerpc.c's switch
    def check_extension(self, ext: int, vm: Vm | None) -> int:
        hv = self.hv
        hv_enabled = vm.hv if vm is not None else hv is not None
        if self.ioctl is not None and self.steps is not None and ext == self.ioctl.cap:
            return int(self.steps.cap_rule(self, hv_enabled))
        if ext in ALWAYS:
            return 1
        if ext in PR_ONLY:  # "We support this only for PR"
            return int(not hv_enabled)
        host = self.host
        if ext == KVM_CAP_PPC_IRQ_XIVE:  # XIVE, and PowerNV: nested has no native XIVE
            return int(xive_enabled(host) and host.platform == "powernv")
        if ext == KVM_CAP_IRQFD_RESAMPLE:
            return int(not xive_enabled(host))
        if ext == KVM_CAP_PPC_ALLOC_HTAB:
            return int(hv_enabled)
        if host.book3s_hv:  # CONFIG_KVM_BOOK3S_HV_POSSIBLE
            answer = self._hv_possible(ext, vm, hv, hv_enabled)
            if answer is not None:
                return answer
        if ext == KVM_CAP_NR_VCPUS:  # present CPUs for HV, online ones otherwise: here the same
            return min(host.present_cpus, host.kvm_max_vcpus)
        if ext == KVM_CAP_MAX_VCPUS:
            return host.kvm_max_vcpus
        if ext == KVM_CAP_MAX_VCPU_ID:
            return kvm_max_vcpu_ids(host)
        if ext in (KVM_CAP_PPC_GET_SMMU_INFO, KVM_CAP_SPAPR_MULTITCE):
            return 1
        if ext == KVM_CAP_SPAPR_RESIZE_HPT:
            return int(hv_enabled)
        if ext == KVM_CAP_PPC_AIL_MODE_3:
            # pseries: the hypervisor relocates interrupts (H_SET_MODE AIL 3: QEMU and PowerVM
            # both); powernv: ISA 2.07S without POWER9's radix prefetch bug (not modelled)
            return int(hv_enabled)
        return 0  # KVM_CAP_PPC_HTM: no HTM (POWER10+ has none, TCG offers none); and the rest

    def _hv_possible(self, ext: int, vm: Vm | None, hv: HvModule | None, hv_enabled: bool) -> int | None:
        """The cases under ``#ifdef CONFIG_KVM_BOOK3S_HV_POSSIBLE``; None for any other."""
        isa_300 = self.host.cpu.isa_300
        if ext == KVM_CAP_PPC_SMT:
            if vm is not None:
                return vm.smt_mode if vm.hv else 0  # kvm->arch.smt_mode
            return (1 if isa_300 else THREADS_PER_SUBCORE) if hv_enabled else 0
        if ext == KVM_CAP_PPC_SMT_POSSIBLE:
            return (8 | 4 | 2 | 1) if hv_enabled and isa_300 else (THREADS_PER_SUBCORE * 2 - 1) if hv_enabled else 1
        if ext == KVM_CAP_PPC_HWRNG:  # ppc_md.get_random_seed: powernv's RNG, or pseries' H_RANDOM
            return int(self.host.platform == "powernv" or self.host.hypervisor.kind == "powervm")
        if ext == KVM_CAP_PPC_MMU_RADIX:
            return int(hv_enabled and self.host.mmu == "radix")
        if ext == KVM_CAP_PPC_MMU_HASH_V3:
            return int(hv_enabled and hv is not None and hv.hash_v3_possible())
        if ext == KVM_CAP_PPC_NESTED_HV:
            return int(hv_enabled and hv is not None and hv.enable_nested())
        if ext in (KVM_CAP_PPC_HTAB_FD, KVM_CAP_PPC_FWNMI):
            return int(hv_enabled)
        if ext == KVM_CAP_PPC_SECURE_GUEST:  # enable_svm(NULL): an ultravisor, not modelled
            return 0
        if ext == KVM_CAP_PPC_DAWR1:  # kvmhv_enable_dawr1(NULL): CPU_FTR_DAWR1, POWER10 on
            mode = self.host.cpu.effective
            return int(hv_enabled and mode is not None and mode.level >= 10)
        if ext == KVM_CAP_PPC_RPT_INVALIDATE:
            return 1
        return None

    # kvm_arch_init_vm(): type 0 prefers HV, then PR
    def init_vm(self, type_: int) -> Vm:
        hv = self.hv.ops if self.hv is not None else None
        ops = {0: hv or self.pr, KVM_VM_PPC_HV: hv, KVM_VM_PPC_PR: self.pr}.get(type_)
        if ops is None:
            raise KvmError(errno.EINVAL, f"KVM_CREATE_VM type {type_}: no such VM type or its module is not loaded")
        smt_mode = 1 if self.host.cpu.isa_300 else THREADS_PER_SUBCORE
        hv_mmu = HvMmu.init_vm(self.host) if ops is hv else None
        return Vm(ops, hv=ops is hv, smt_mode=smt_mode, hv_mmu=hv_mmu)

    @property
    def max_vcpu_ids(self) -> int:
        return kvm_max_vcpu_ids(self.host)

    # kvm_arch_vcpu_create() → kvmppc_core_vcpu_create(): the VM's backend makes it
    def vcpu_create(self, vm: Vm, vcpu_id: int) -> Book3sVcpu:
        if vm.hv:
            assert self.hv is not None
            caps = self.hv.nested_capabilities if self.hv.nestedv2 else None
            vcpu = kvmppc_core_vcpu_create_hv(self.host, vm, vcpu_id, caps)
        else:
            vcpu = kvmppc_core_vcpu_create_pr(self.host)
        vm.vcpus.append(vcpu)
        return vcpu

    # kvm_arch_vcpu_ioctl(): what kvm_vcpu_ioctl's own switch leaves to the arch
    def vcpu_ioctl(self, vcpu: Book3sVcpu, request: int, argp: int, mem: UserAccess, ctx: EnableCapContext) -> int:
        if request == self.KVM_ENABLE_CAP:
            raw = self.copy_from_user(mem, argp, KVM_ENABLE_CAP_STRUCT.size, "KVM_ENABLE_CAP: struct kvm_enable_cap")
            cap = KVM_ENABLE_CAP_STRUCT.unpack(self.host.arch.byteorder, raw)
            args = tuple(cap[f"arg{i}"] for i in range(4))
            return book3s.enable_cap(vcpu, cap["cap"], cap["flags"], args, ctx)
        if request in (self.KVM_GET_ONE_REG, self.KVM_SET_ONE_REG):
            return self.vcpu_one_reg(vcpu, request == self.KVM_SET_ONE_REG, argp, mem)
        raise KvmError(errno.EINVAL, f"unknown vcpu ioctl {request:#x} (kvm_arch_vcpu_ioctl)")

    # kvm_arch_vcpu_ioctl()'s ONE_REG case: the struct, then kvm_vcpu_ioctl_get/set_one_reg
    def vcpu_one_reg(self, vcpu: Book3sVcpu, setting: bool, argp: int, mem: UserAccess) -> int:
        bo, what = self.host.arch.byteorder, "KVM_SET_ONE_REG" if setting else "KVM_GET_ONE_REG"
        reg = KVM_ONE_REG.unpack(bo, self.copy_from_user(mem, argp, KVM_ONE_REG.size, f"{what}: struct kvm_one_reg"))
        size = one_reg_size(reg["id"])
        if size > one_reg.ONE_REG_UNION:
            raise KvmError(errno.EINVAL, f"{what}: register {reg['id']:#x} is {size} bytes (the union is 16)")
        if setting:
            data = self.copy_from_user(mem, reg["addr"], size, f"{what}: the value")
            one_reg.set_one_reg(vcpu, reg["id"], data, bo)
            return 0
        return self.copy_to_user(mem, reg["addr"], one_reg.get_one_reg(vcpu, reg["id"], bo), f"{what}: the value")

    def check_masked_read(self, addr: int, what: str) -> None:
        """A struct copied in from an address that reads kernel memory here: what the real
        kernel then does depends on bytes kvmsim does not have (not modelled, named)."""
        if masked_read_reaches_the_kernel(self.host, addr):
            raise KvmError(
                errno.ENOTTY,
                f"not modelled: {what} from {addr:#x}: copy_from_user masks it to 0x8000000000000000, which on a "
                "bare-metal radix host is kernel memory (quadrant 2 in HV mode)",
            )

    def copy_from_user(self, mem: UserAccess, addr: int, size: int, what: str) -> bytes:
        """powerpc's copy_from_user: the masked address first (:meth:`check_masked_read`), then
        the bytes or EFAULT naming ``what`` was being read."""
        self.check_masked_read(addr, what.split(":")[0])
        try:
            return mem.copy_from_user(addr, size)
        except Fault:
            raise KvmError(errno.EFAULT, f"{what} at {addr:#x}: unmapped") from None

    def copy_to_user(self, mem: UserAccess, addr: int, data: bytes, what: str) -> int:
        """copy_to_user: 0, or EFAULT naming ``what`` was being written (access_ok is checked: no mask)."""
        try:
            mem.copy_to_user(addr, data)
        except Fault:
            raise KvmError(errno.EFAULT, f"{what}: cannot write it at {addr:#x}") from None
        return 0

    def vcpu_run(self, vcpu: Book3sVcpu, run: memoryview, printk: Callable[[str], None]) -> int:
        return book3s.vcpu_run(vcpu, run, self.host.arch.byteorder, printk)

    def get_regs(self, vcpu: Book3sVcpu) -> dict[str, int]:
        return book3s.get_regs(vcpu)

    def set_regs(self, vcpu: Book3sVcpu, values: dict[str, int]) -> None:
        book3s.set_regs(vcpu, values)

    # kvm_vm_ioctl_irq_line(): only with an in-kernel interrupt controller (kvm_arch_irqchip_in_kernel:
    # an XICS or XIVE device); then kvm_set_irq() → kvmppc_xics_set_irq(), its answer the line's status
    def irq_line(self, vm: Vm, irq: int, level: int) -> int:
        if vm.xics is None and vm.xive is None:
            raise KvmError(errno.ENXIO, "KVM_IRQ_LINE: the VM has no in-kernel interrupt controller (XICS or XIVE)")
        if xics_on_xive(self.host):  # kvm_set_irq(): XICS-on-XIVE's, else XICS's
            return vm.xive.set_irq(irq, level) if vm.xive is not None else -errno.ENODEV
        assert vm.xics is not None
        return vm.xics.ics_deliver_irq(irq, level)

    # powerpc.c: no multiprocessing state on powerpc
    def get_mpstate(self, vcpu: Book3sVcpu) -> int:
        raise KvmError(errno.EINVAL, "KVM_GET_MP_STATE: powerpc has no MP state (kvm_arch_vcpu_ioctl_get_mpstate)")

    def set_mpstate(self, vcpu: Book3sVcpu, mp_state: int) -> None:
        raise KvmError(errno.EINVAL, "KVM_SET_MP_STATE: powerpc has no MP state (kvm_arch_vcpu_ioctl_set_mpstate)")

    # book3s.c: a translation is 0 and changes nothing (the struct goes back as it came)
    def translate(self, vcpu: Book3sVcpu, tr: bytes) -> bytes:
        return tr

    # book3s.c: the control word kept for the vcpu's runs (none run here)
    def set_guest_debug(self, vcpu: Book3sVcpu, dbg: bytes) -> None:
        return None

    # book3s.c: the FP registers go through ONE_REG only
    def get_fpu(self, vcpu: Book3sVcpu) -> bytes:
        raise KvmError(errno.EOPNOTSUPP, "KVM_GET_FPU: Book3S has none (KVM_GET_ONE_REG of the FPRs instead)")

    def set_fpu(self, vcpu: Book3sVcpu, fpu: bytes) -> None:
        raise KvmError(errno.EOPNOTSUPP, "KVM_SET_FPU: Book3S has none (KVM_SET_ONE_REG of the FPRs instead)")

    def get_sregs(self, vcpu: Book3sVcpu) -> dict[str, int]:
        return book3s.get_sregs(vcpu)

    def set_sregs(self, vcpu: Book3sVcpu, values: dict[str, int]) -> None:
        book3s.set_sregs(vcpu, values)

    def vcpu_mmap_size(self) -> int:
        return self.host.page_size  # struct kvm_run's page (kvm_main adds KVM_MMIO's, with kvm_pr built)

    def dev_ioctl(self, request: int, arg: int) -> int:
        raise KvmError(errno.EINVAL, f"unknown /dev/kvm ioctl {request:#x} (kvm_arch_dev_ioctl)")

    @property
    def memslot_limits(self) -> MemslotLimits:
        """KVM_USER_MEM_SLOTS (all of KVM_MEM_SLOTS_NUM); TASK_SIZE_USER64 4PB with 64K pages, else 64TB; no read-only
        slots (powerpc does not select HAVE_KVM_READONLY_MEM), no guest_memfd."""
        task_size = TASK_SIZE_4PB if self.host.page_size == 65536 else TASK_SIZE_64TB
        return MemslotLimits(self.user_mem_slots, self.host.page_size, task_size)

    # kvm_vm_ioctl_get_dirty_log() (book3s.c) → the ops' get_dirty_log: HV's or PR's, the bitmap
    # each copies out
    def get_dirty_log(self, vm: Vm, memslots: Memslots, log_slot: int) -> bytes:
        get = memslot.kvm_vm_ioctl_get_dirty_log_hv if vm.hv else memslot.kvm_get_dirty_log
        return get(memslots, log_slot, self.user_mem_slots)

    # kvm_arch_prepare_memory_region() → the ops' prepare_memory_region: HV's reverse map, which
    # kvmppc_core_prepare_memory_region_hv() refuses when it would need more pages than the RAM
    # (a smaller one, vzalloc'd, is taken to succeed); PR prepares nothing
    def prepare_memory_region(
        self, vm: Vm, new: MemorySlot | None, old: MemorySlot | None, change: memslot.Change
    ) -> None:
        if vm.hv and change == "create" and new is not None:
            rmap_pages = new.npages * 8 // self.host.page_size  # array_size(npages, sizeof(*rmap)) >> PAGE_SHIFT
            totalram = self.host.mem_total_kb * 1024 // self.host.page_size
            if rmap_pages > totalram:
                raise KvmError(
                    errno.ENOMEM,
                    f"memory slot {new.id}: its reverse map needs {rmap_pages} pages, the host has {totalram}",
                )

    # kvm_vm_ioctl_enable_cap(): flags, then the capability (CONFIG_KVM_BOOK3S_64_HANDLER's
    # ENABLE_HCALL, SMT, NESTED_HV; CONFIG_KVM_BOOK3S_HV_POSSIBLE's SECURE_GUEST, DAWR1)
    def vm_enable_cap(self, vm: Vm, cap: int, flags: int, args: tuple[int, ...]) -> int:
        if flags:
            raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP: flags {flags:#x} must be 0")
        if cap == KVM_CAP_PPC_ENABLE_HCALL:
            hcall, on = args[0], args[1]
            if hcall > MAX_HCALL_OPCODE or hcall & 3 or on > 1:
                raise KvmError(errno.EINVAL, f"ENABLE_HCALL: hcall {hcall:#x} or switch {on} out of range")
            implemented = HV_HCALLS if vm.hv else PR_HCALLS
            if not self.host.spapr_tce_iommu:
                implemented -= TCE_HCALLS
            if hcall not in implemented:  # kvmppc_book3s_hcall_implemented
                raise KvmError(errno.EINVAL, f"ENABLE_HCALL: {vm.ops.name} implements no hcall {hcall:#x}")
            return 0
        if cap == KVM_CAP_PPC_SMT:
            if not vm.hv:  # PR has no set_smt_mode
                raise KvmError(errno.EINVAL, "KVM_ENABLE_CAP(KVM_CAP_PPC_SMT): a PR VM has no SMT modes")
            kvmhv_set_smt_mode(self.host, vm, args[0], args[1])
            return 0
        if cap in (KVM_CAP_PPC_NESTED_HV, KVM_CAP_PPC_SECURE_GUEST, KVM_CAP_PPC_DAWR1) and not vm.hv:
            raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP({cap}): only an HV VM has it")
        if cap == KVM_CAP_PPC_NESTED_HV:  # kvmhv_enable_nested()
            host = self.host
            if not host.kvm_hv_nested:
                raise KvmError(errno.EPERM, "KVM_ENABLE_CAP(KVM_CAP_PPC_NESTED_HV): kvm_hv's nested=0")
            if not host.cpu.isa_300 or host.mmu != "radix" or (self.hv is not None and self.hv.nestedv2):
                raise KvmError(errno.ENODEV, "KVM_CAP_PPC_NESTED_HV: needs ISA 3.0, radix, no nested API v2")
            return 0
        if cap == KVM_CAP_PPC_SECURE_GUEST:  # kvmhv_enable_svm(): no ultravisor memory
            raise KvmError(errno.EINVAL, "KVM_ENABLE_CAP(KVM_CAP_PPC_SECURE_GUEST): no ultravisor")
        if cap == KVM_CAP_PPC_DAWR1:  # kvmhv_enable_dawr1(): CPU_FTR_DAWR1
            mode = self.host.cpu.effective
            if mode is None or mode.level < 10:
                raise KvmError(errno.ENODEV, "KVM_ENABLE_CAP(KVM_CAP_PPC_DAWR1): this CPU has no DAWR1")
            return 0
        raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP: capability {cap} cannot be enabled on a VM")

    # kvm_arch_vm_ioctl(); its cases that make a file are given anon_inode_getfd
    def vm_ioctl(self, vm: Vm, request: int, argp: int, mem: UserAccess, getfd: Callable[[Any], int]) -> int:
        case = self.vm_ioctls.get(request)
        if case is not None:
            return case(vm, argp, mem)
        tce = self.create_spapr_tce.get(request)
        if tce is not None:
            if not self.host.spapr_tce_iommu:  # #ifdef CONFIG_SPAPR_TCE_IOMMU: to the ops' arch_vm_ioctl
                raise KvmError(
                    errno.ENOTTY,
                    "KVM_CREATE_SPAPR_TCE(_64): this build has no CONFIG_SPAPR_TCE_IOMMU (no IOMMU_SUPPORT), "
                    "though it answers the capabilities (powerpc.c answers them unconditionally)",
                )
            return tce(vm, argp, mem, getfd)
        if self.ioctl is None or self.steps is None or request != self.request:
            raise KvmError(errno.ENOTTY, f"unknown VM ioctl {request:#x}")
        try:
            return self.steps.get_compat_caps(self, self.ioctl, vm, argp, mem)
        except Fault as fault:
            raise KvmError(errno.EFAULT, f"user memory: {fault}") from None

    def _copy_out(self, layout: StructLayout, values: dict[str, int], argp: int, mem: UserAccess, what: str) -> int:
        data = layout.pack(self.host.arch.byteorder, values)
        return self.copy_to_user(mem, argp, data, f"{what}: struct {layout.name}")

    # case KVM_PPC_GET_SMMU_INFO: memset, the ops' get_smmu_info, copy_to_user
    def _get_smmu_info(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        first = vm.vcpus[0] if vm.vcpus else None
        info = kvm_vm_ioctl_get_smmu_info_hv(self.host) if vm.hv else kvm_vm_ioctl_get_smmu_info_pr(first)
        return self._copy_out(KVM_PPC_SMMU_INFO, info, argp, mem, "KVM_PPC_GET_SMMU_INFO")

    # case KVM_PPC_RTAS_DEFINE_TOKEN: kvm_vm_ioctl_rtas_define_token() (copy_from_user first)
    def _rtas_define_token(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        what = "KVM_PPC_RTAS_DEFINE_TOKEN: struct kvm_rtas_token_args"
        raw = self.copy_from_user(mem, argp, KVM_RTAS_TOKEN_ARGS.size, what)
        token = KVM_RTAS_TOKEN_ARGS.unpack(self.host.arch.byteorder, raw)["token"]
        return kvm_vm_ioctl_rtas_define_token(vm.rtas_tokens, raw[:RTAS_NAME_LEN], token)

    # case KVM_PPC_GET_RMMU_INFO: the ops' get_rmmu_info (HV's alone: EINVAL on PR), copy_to_user
    def _get_rmmu_info(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        if not vm.hv:
            raise KvmError(errno.EINVAL, "KVM_PPC_GET_RMMU_INFO: a PR VM has no get_rmmu_info")
        return self._copy_out(KVM_PPC_RMMU_INFO, kvmhv_get_rmmu_info(self.host), argp, mem, "KVM_PPC_GET_RMMU_INFO")

    # case KVM_PPC_GET_CPU_CHAR: kvmppc_get_cpu_char() (any VM: it asks the firmware), copy_to_user
    def _get_cpu_char(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        return self._copy_out(KVM_PPC_CPU_CHAR, kvmppc_get_cpu_char(self.host), argp, mem, "KVM_PPC_GET_CPU_CHAR")

    # case KVM_PPC_GET_PVINFO: on any VM (the capability says PR's); the paravirtual hcall's four
    # instructions (lis r0; ori r0 with "KVM!"; sc; nop), big-endian, and EV_IDLE (kvm_vm_ioctl_get_pvinfo)
    def _get_pvinfo(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        lis, ori, sc, nop = 0x3C000000, 0x60000000, 0x44000002, 0x60000000
        hcall = PVINFO_HCALL.pack(lis | KVM_SC_MAGIC_R0 >> 16, ori | KVM_SC_MAGIC_R0 & 0xFFFF, sc, nop)
        info = KVM_PPC_PVINFO.pack(self.host.arch.byteorder, {"flags": KVM_PPC_PVINFO_FLAGS_EV_IDLE})
        data = info[:4] + hcall + info[4 + len(hcall) :]
        return self.copy_to_user(mem, argp, data, "KVM_PPC_GET_PVINFO: struct kvm_ppc_pvinfo")

    # case KVM_CREATE_SPAPR_TCE_64: copy_from_user, flags must be 0, then the table
    def _create_spapr_tce_64(self, vm: Vm, argp: int, mem: UserAccess, getfd: Callable[[Any], int]) -> int:
        name = "KVM_CREATE_SPAPR_TCE_64"
        what = f"{name}: struct kvm_create_spapr_tce_64"
        raw = self.copy_from_user(mem, argp, KVM_CREATE_SPAPR_TCE_64_STRUCT.size, what)
        args = KVM_CREATE_SPAPR_TCE_64_STRUCT.unpack(self.host.arch.byteorder, raw)
        if args["flags"]:
            raise KvmError(errno.EINVAL, f"{name}: flags {args['flags']:#x} must be 0")
        return kvm_vm_ioctl_create_spapr_tce(
            self.host, vm.spapr_tce_tables, args["liobn"], args["page_shift"], args["offset"], args["size"], getfd, name
        )

    # case KVM_CREATE_SPAPR_TCE: copy_from_user, then a window of 4K pages at 0
    def _create_spapr_tce(self, vm: Vm, argp: int, mem: UserAccess, getfd: Callable[[Any], int]) -> int:
        name = "KVM_CREATE_SPAPR_TCE"
        raw = self.copy_from_user(mem, argp, KVM_CREATE_SPAPR_TCE_STRUCT.size, f"{name}: struct kvm_create_spapr_tce")
        args = KVM_CREATE_SPAPR_TCE_STRUCT.unpack(self.host.arch.byteorder, raw)
        size = args["window_size"] >> IOMMU_PAGE_SHIFT_4K
        return kvm_vm_ioctl_create_spapr_tce(
            self.host, vm.spapr_tce_tables, args["liobn"], IOMMU_PAGE_SHIFT_4K, 0, size, getfd, name
        )

    # the ops' arch_vm_ioctl: PR's answers ENOTTY to all; HV's KVM_PPC_ALLOCATE_HTAB refuses on an
    # L1 before it reads its argument, get_user()s the order and never writes it back (Linux 7.3)
    def _allocate_htab(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        if vm.hv_mmu is None:
            raise KvmError(errno.ENOTTY, "KVM_PPC_ALLOCATE_HTAB: kvm_pr has no VM ioctls (kvm_arch_vm_ioctl_pr)")
        if kvmhv_on_pseries(self.host):
            raise KvmError(errno.EOPNOTSUPP, "KVM_PPC_ALLOCATE_HTAB: a nested hypervisor runs radix guests only")
        try:
            raw = mem.copy_from_user(argp, 4)
        except Fault:
            raise KvmError(errno.EFAULT, f"KVM_PPC_ALLOCATE_HTAB: cannot read the order at {argp:#x}") from None
        order = int.from_bytes(raw, self.host.arch.byteorder)
        return kvmppc_alloc_reset_hpt(self.host, vm.hv_mmu, vm.vcpus, order)

    # case KVM_PPC_CONFIGURE_V3_MMU: both backends have configure_mmu; copy_from_user, then it
    def _configure_v3_mmu(self, vm: Vm, argp: int, mem: UserAccess) -> int:
        what = "KVM_PPC_CONFIGURE_V3_MMU: struct kvm_ppc_mmuv3_cfg"
        cfg = KVM_PPC_MMUV3_CFG.unpack(self.host.arch.byteorder, self.copy_from_user(mem, argp, 16, what))
        if vm.hv_mmu is None:
            return kvm_configure_mmu_pr(self.host, cfg["flags"], cfg["process_table"])
        return kvmhv_configure_mmu(self.host, vm.hv_mmu, vm.vcpus, cfg["flags"], cfg["process_table"])

    # -- the revisions' handlers ------------------------------------------

    def _backend(self, vm: Vm) -> int:
        if vm.ops.get_compat_caps is None:
            raise KvmError(errno.ENOTTY, f"{vm.ops.name} VMs have no get_compat_caps op")
        return vm.ops.get_compat_caps()

    def _out(self, ioctl: CompatCapsAbi, size: int, caps: int) -> bytes:
        body = ioctl.layout.pack(self.host.arch.byteorder, flags=0, size=size, compat_capabilities=caps)
        return body.ljust(self.ksize, b"\0")

    def get_compat_caps_v4(self, ioctl: CompatCapsAbi, vm: Vm, argp: int, mem: UserAccess) -> int:
        """v4: get_user(size) at its offset; size < sizeof(caps) → EINVAL; larger is fine."""
        bo = self.host.arch.byteorder
        size = mem.get_user_u64(argp + ioctl.layout.offset("size"), bo)
        if size < self.ksize:
            hint = " (the v4 draft's struct is flags, size, caps: is this a v5/7.3 layout?)" if size == 0 else ""
            raise KvmError(errno.EINVAL, f"size {size} is smaller than the struct ({self.ksize}){hint}")
        caps = self._backend(vm)
        mem.copy_to_user(argp, self._out(ioctl, self.ksize, caps))
        return 0

    def get_compat_caps_v5(self, ioctl: CompatCapsAbi, vm: Vm, argp: int, mem: UserAccess) -> int:
        """v5: usize/ksize, E2BIG with ksize written back, copy_struct_from_user, flags."""
        layout, bo, ksize = ioctl.layout, self.host.arch.byteorder, self.ksize
        usize = mem.get_user_u64(argp + layout.offset("size"), bo)
        if usize < KVM_PPC_COMPAT_CAPS_SIZE_VER0:
            raise KvmError(errno.EINVAL, f"size {usize} is smaller than KVM_PPC_COMPAT_CAPS_SIZE_VER0 (24)")
        if usize > ksize:
            mem.put_user_u64(argp + layout.offset("size"), ksize, bo)
            hint = byte_swapped_hint(usize, KVM_PPC_COMPAT_CAPS_SIZE_VER0, ksize, bo)
            raise KvmError(
                errno.E2BIG, f"size {usize} is larger than the kernel's struct{hint}; {ksize} written back to size"
            )
        kbuf = mem.copy_struct_from_user(ksize, argp, usize)
        flags = layout.field(bo, kbuf, "flags")
        if flags:
            raise KvmError(errno.EINVAL, f"flags {flags:#x} must be 0")
        caps = self._backend(vm)
        mem.copy_to_user(argp, self._out(ioctl, usize, caps)[:usize])
        return 0

    def get_compat_caps_linux_7_3(self, ioctl: CompatCapsAbi, vm: Vm, argp: int, mem: UserAccess) -> int:
        """Linux 7.3 (powerpc.c at ac3e65dd), in its order of checks."""
        layout, bo, ksize = ioctl.layout, self.host.arch.byteorder, self.ksize
        usize = mem.get_user_u64(argp, bo)  # get_user(usize, argp): size is the first field
        if usize > self.host.page_size:
            hint = byte_swapped_hint(usize, KVM_PPC_COMPAT_CAPS_SIZE_VER0, self.host.page_size, bo)
            raise KvmError(errno.E2BIG, f"size {usize} is larger than PAGE_SIZE ({self.host.page_size}){hint}")
        if usize < KVM_PPC_COMPAT_CAPS_SIZE_VER0:
            hint = " (the v4 draft's struct is flags, size, caps; 7.3's is size, flags, caps)" if usize == 0 else ""
            raise KvmError(errno.EINVAL, f"size {usize} is smaller than KVM_PPC_COMPAT_CAPS_SIZE_VER0 (24){hint}")
        try:
            kbuf = mem.copy_struct_from_user(ksize, argp, usize)
        except NonZeroTail as tail:
            mem.put_user_u64(argp, ksize, bo)  # put_user(sizeof(host_caps)); a fault → EFAULT
            raise KvmError(
                errno.E2BIG, f"size {usize}: {tail}, larger than the kernel's struct; {ksize} written back to size"
            ) from None
        flags = layout.field(bo, kbuf, "flags")
        if flags:
            raise KvmError(errno.EINVAL, f"flags {flags:#x} must be 0 (reserved)")
        caps = self._backend(vm)
        mem.copy_struct_to_user(argp, usize, self._out(ioctl, min(usize, ksize), caps))
        return 0


def _cap_drafts(kvm: PowerpcKvm, hv_enabled: bool) -> bool:
    """The posted drafts: built with Book3S HV and on pseries, whatever the VM."""
    return kvm.host.book3s_hv and kvmhv_on_pseries(kvm.host)


def _cap_linux_7_3(kvm: PowerpcKvm, hv_enabled: bool) -> bool:
    """Linux 7.3: ``hv_enabled && kvmhv_on_pseries()``."""
    return hv_enabled and kvmhv_on_pseries(kvm.host)


@attrs.frozen
class CompatCapsSteps:
    """What one revision's kernel does (uapi has only its numbers and its struct)."""

    get_compat_caps: Callable[[PowerpcKvm, CompatCapsAbi, Vm, int, UserAccess], int]  # kvm_arch_vm_ioctl's case
    cap_rule: Callable[[PowerpcKvm, bool], bool]  # when kvm_vm_ioctl_check_extension answers 1


# The table from a revision to its step functions (book3s_hv.HV_STEPS has the backend's): a
# new revision is one value in uapi and, at most, one new step function here.
STEPS: dict[str, CompatCapsSteps] = {
    "v4": CompatCapsSteps(PowerpcKvm.get_compat_caps_v4, _cap_drafts),
    "v5": CompatCapsSteps(PowerpcKvm.get_compat_caps_v5, _cap_drafts),
    "linux-7.3": CompatCapsSteps(PowerpcKvm.get_compat_caps_linux_7_3, _cap_linux_7_3),
}
