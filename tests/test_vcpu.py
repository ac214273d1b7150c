"""The vcpu (kvm_main's KVM_CREATE_VCPU and kvm_vcpu_ioctl, book3s's vcpu half): ids and
limits, the vcpu fd and its mapping, KVM_RUN, KVM_ENABLE_CAP on a vcpu, KVM_GET/SET_REGS;
parametrized over every host whose kernel makes a VM."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import attrs
import pytest

from kvmsim import Kernel
from kvmsim.kernel import profile
from kvmsim.uapi import (
    KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_HALT_POLL,
    KVM_CAP_IRQ_XICS,
    KVM_CAP_PPC_DAWR1,
    KVM_CAP_PPC_ENABLE_HCALL,
    KVM_CAP_PPC_EPR,
    KVM_CAP_PPC_FWNMI,
    KVM_CAP_PPC_IRQ_XIVE,
    KVM_CAP_PPC_NESTED_HV,
    KVM_CAP_PPC_OSI,
    KVM_CAP_PPC_PAPR,
    KVM_CAP_PPC_SECURE_GUEST,
    KVM_CAP_PPC_SMT,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_GET_FPU,
    KVM_GET_MP_STATE,
    KVM_GET_ONE_REG,
    KVM_GET_SREGS,
    KVM_ONE_REG,
    KVM_PPC_1T_SEGMENTS,
    KVM_PPC_GET_SMMU_INFO,
    KVM_PPC_NO_HASH,
    KVM_PPC_PAGE_SIZES_REAL,
    KVM_PPC_SMMU_INFO,
    KVM_REGS,
    KVM_SET_FPU,
    KVM_SET_GUEST_DEBUG,
    KVM_SET_MP_STATE,
    KVM_SET_ONE_REG,
    KVM_SET_SIGNAL_MASK,
    KVM_SET_SREGS,
    KVM_SREGS,
    KVM_SYSTEM_EVENT_SHUTDOWN,
    KVM_TRANSLATE,
    MSR_ME,
    ONE_REGS,
    SLB_ESID_V,
    SLB_VSID_L,
    SLB_VSID_LP_01,
    UNMODELLED_IOCTLS,
    KvmIoctl,
)


def _vm_hosts() -> Iterator[str]:
    for name in profile.names():
        k = Kernel.from_profile(name)
        if k.arch.is_powerpc and k.kvm.loaded:
            try:
                k.ioctl(k.open(), k.KVM_CREATE_VM, 0)
            except OSError:
                continue
            yield name


VM_HOSTS = sorted(_vm_hosts())


@attrs.frozen
class Guest:
    k: Kernel
    vm: int
    vcpu: int
    hv: bool  # an HV VM (its KVM_CAP_PPC_SMT is its smt_mode, 1); else PR


def guest(host: str, **overrides: object) -> Guest:
    k = Kernel.from_profile(host) if not overrides else _overridden(host, overrides)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    vcpu = int(k.ioctl(vm, k.KVM_CREATE_VCPU, 0))
    return Guest(k, vm, vcpu, hv=bool(k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_SMT)))


def _overridden(host: str, overrides: dict[str, object]) -> Kernel:
    from kvmsim.uapi import REVISIONS

    doc = profile.document(profile.find(host), host) | overrides
    return Kernel(profile.from_mapping(doc, name=host, where=host), REVISIONS["linux-7.3"])


def vm_types(host: str) -> list[int]:
    """The VM types (default, HV, PR) the host's kernel makes."""
    k = Kernel.from_profile(host)
    made = []
    for vm_type in (0, 1, 2):
        try:
            k.ioctl(k.open(), k.KVM_CREATE_VM, vm_type)
        except OSError:
            continue
        made.append(vm_type)
    return made


def errno_of(call: object, *args: object, **kwargs: object) -> int:
    with pytest.raises(OSError) as exc:
        call(*args, **kwargs)  # type: ignore[operator]
    return exc.value.errno or 0


def enable_cap(g: Guest, cap: int, *, flags: int = 0, arg0: int = 0) -> int:
    arg = KVM_ENABLE_CAP_STRUCT.pack(g.k.arch.byteorder, {"cap": cap, "flags": flags, "arg0": arg0})
    return int(g.k.ioctl(g.vcpu, KVM_ENABLE_CAP.request(g.k.arch), bytearray(arg)))


# -- KVM_CREATE_VCPU ------------------------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
def test_a_vcpu_is_an_anon_inode_fd_named_by_its_id(host: str) -> None:
    g = guest(host)
    seven = int(g.k.ioctl(g.vm, g.k.KVM_CREATE_VCPU, 7))
    assert g.k.fds()[g.vcpu] == "anon_inode:kvm-vcpu:0" and g.k.fds()[seven] == "anon_inode:kvm-vcpu:7"
    assert g.k.current.returns_fd(g.vm, g.k.KVM_CREATE_VCPU) and not g.k.current.returns_fd(g.vcpu, g.k.KVM_RUN)


@pytest.mark.parametrize("host", VM_HOSTS)
def test_a_vcpu_id_is_taken_once_even_after_its_fd_is_closed(host: str) -> None:
    g = guest(host)
    g.k.close(g.vcpu)  # kvm_vcpu_release drops the fd's reference: the vcpu lives as long as its VM
    assert errno_of(g.k.ioctl, g.vm, g.k.KVM_CREATE_VCPU, 0) == errno.EEXIST


@pytest.mark.parametrize("host", VM_HOSTS)
def test_vcpu_ids_kvm_max_vcpu_ids_and_hv_virtual_cores(host: str) -> None:
    """KVM_MAX_VCPU_IDS (MAX_SMT_THREADS × NR_CPUS with HV built) is kvm_main's EINVAL; on ISA
    3.0 an HV vcpu needs a virtual core, one an id below KVM_MAX_VCPUS (emul_smt_mode 1)."""
    g = guest(host)
    k = g.k
    max_ids = int(k.ioctl(g.vm, k.KVM_CHECK_EXTENSION, 128))  # KVM_CAP_MAX_VCPU_ID
    assert errno_of(k.ioctl, g.vm, k.KVM_CREATE_VCPU, max_ids) == errno.EINVAL
    assert errno_of(k.ioctl, g.vm, k.KVM_CREATE_VCPU, -1) == errno.EINVAL  # an unsigned long: 2**64 - 1
    beyond_cores = k.host.kvm_max_vcpus
    if g.hv and k.host.cpu.isa_300:
        assert errno_of(k.ioctl, g.vm, k.KVM_CREATE_VCPU, beyond_cores) == errno.EINVAL
        assert errno_of(k.ioctl, g.vm, k.KVM_CREATE_VCPU, max_ids - 1) == errno.EINVAL
    else:
        last = int(k.ioctl(g.vm, k.KVM_CREATE_VCPU, max_ids - 1))
        assert k.fds()[last] == f"anon_inode:kvm-vcpu:{max_ids - 1}"


def test_a_vm_has_at_most_kvm_max_vcpus_and_a_failed_create_uses_none() -> None:
    g = guest("powervm-p11", kvm_max_vcpus=3)
    assert errno_of(g.k.ioctl, g.vm, g.k.KVM_CREATE_VCPU, 3) == errno.EINVAL  # no virtual core: not counted
    g.k.ioctl(g.vm, g.k.KVM_CREATE_VCPU, 1)
    g.k.ioctl(g.vm, g.k.KVM_CREATE_VCPU, 2)
    assert errno_of(g.k.ioctl, g.vm, g.k.KVM_CREATE_VCPU, 0) == errno.EINVAL  # the count first, EEXIST after


def test_an_x86_vcpu_is_not_modelled_and_says_so() -> None:
    k = Kernel.from_profile("x86_64")
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    with pytest.raises(OSError) as exc:
        k.ioctl(vm, k.KVM_CREATE_VCPU, 0)
    assert exc.value.errno == errno.ENOTTY and "not modelled: KVM_CREATE_VCPU" in str(exc.value)


# -- the vcpu fd ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
def test_kvm_run_is_mapped_shared_with_the_kernel(host: str) -> None:
    g = guest(host)
    size = int(g.k.ioctl(g.k.open(), g.k.KVM_GET_VCPU_MMAP_SIZE, 0))
    run = g.k.mmap(g.vcpu, size)
    assert len(run) == size and not any(run)
    if g.hv:
        enable_cap(g, KVM_CAP_PPC_PAPR)
    assert g.k.ioctl(g.vcpu, g.k.KVM_RUN, 0) == 0
    bo = "<" if g.k.arch.byteorder == "little" else ">"
    assert struct.unpack_from(bo + "I", run, 8)[0] == KVM_EXIT_SYSTEM_EVENT
    assert struct.unpack_from(bo + "IIQ", run, 32) == (KVM_SYSTEM_EVENT_SHUTDOWN, 0, 0)
    assert any("no guest code runs here" in line for line in g.k.dmesg)


def test_only_a_vcpu_fd_maps() -> None:
    g = guest("powervm-p11")
    assert errno_of(g.k.mmap, g.vm, 4096) == errno.ENODEV
    assert errno_of(g.k.mmap, g.vcpu, 4096, 1) == errno.EINVAL  # not a multiple of PAGE_SIZE


@pytest.mark.parametrize("host", VM_HOSTS)
def test_a_vcpu_ioctl_of_another_type_is_einval_an_unknown_one_einval_an_unmodelled_one_named(host: str) -> None:
    g = guest(host)
    assert errno_of(g.k.ioctl, g.vcpu, g.k.arch.vfs_ioctls["FIONBIO"] ^ 0x0100, 0) == errno.EINVAL  # type 'g'
    assert errno_of(g.k.ioctl, g.vcpu, g.k.arch.ioc.io(0xAE, 0xFF), 0) == errno.EINVAL  # kvm_arch_vcpu_ioctl
    for u in (u for u in UNMODELLED_IOCTLS if u.on == "vcpu"):
        with pytest.raises(OSError) as exc:
            g.k.ioctl(g.vcpu, u.request(g.k.arch), 0)
        assert exc.value.errno == errno.ENOTTY and f"not modelled: {u.name}" in str(exc.value)


# -- KVM_RUN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
def test_kvm_run_takes_no_argument_and_honours_immediate_exit(host: str) -> None:
    g = guest(host)
    assert errno_of(g.k.ioctl, g.vcpu, g.k.KVM_RUN, 1) == errno.EINVAL
    run = g.k.mmap(g.vcpu, 4096)
    run[1] = 1  # immediate_exit
    assert errno_of(g.k.ioctl, g.vcpu, g.k.KVM_RUN, 0) == errno.EINTR


@pytest.mark.parametrize("host", VM_HOSTS)
def test_an_hv_vcpu_runs_only_once_papr_is_enabled(host: str) -> None:
    """kvmppc_sanity_check: HV runs PAPR guests only; until KVM_ENABLE_CAP(PAPR) KVM_RUN is
    EINVAL with KVM_EXIT_INTERNAL_ERROR.  A PR vcpu is sane from the start."""
    g = guest(host)
    run = g.k.mmap(g.vcpu, 4096)
    if not g.hv:
        assert g.k.ioctl(g.vcpu, g.k.KVM_RUN, 0) == 0
        return
    assert errno_of(g.k.ioctl, g.vcpu, g.k.KVM_RUN, 0) == errno.EINVAL
    assert int.from_bytes(run[8:12], g.k.arch.byteorder) == KVM_EXIT_INTERNAL_ERROR
    assert enable_cap(g, KVM_CAP_PPC_PAPR) == 0
    assert g.k.ioctl(g.vcpu, g.k.KVM_RUN, 0) == 0


# -- KVM_ENABLE_CAP on a vcpu -----------------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
def test_enable_cap_on_a_vcpu(host: str) -> None:
    """kvm_vcpu_ioctl_enable_cap: flags EINVAL; OSI, PAPR, EPR; FWNMI an HV VM's; XICS and
    XIVE an fd of a KVM device (none: EBADF for no fd, EPERM for another file; XIVE ENXIO
    without XIVE); anything else EINVAL; then the sanity check (OSI alone leaves an HV vcpu
    insane: EINVAL)."""
    g = guest(host)
    assert errno_of(enable_cap, g, KVM_CAP_PPC_PAPR, flags=1) == errno.EINVAL
    if g.hv:
        assert errno_of(enable_cap, g, KVM_CAP_PPC_OSI) == errno.EINVAL
        assert errno_of(enable_cap, g, KVM_CAP_PPC_EPR) == errno.EINVAL
    assert enable_cap(g, KVM_CAP_PPC_PAPR) == 0
    assert enable_cap(g, KVM_CAP_PPC_OSI) == 0 and enable_cap(g, KVM_CAP_PPC_EPR, arg0=1) == 0
    if g.hv:
        assert enable_cap(g, KVM_CAP_PPC_FWNMI) == 0
    else:
        assert errno_of(enable_cap, g, KVM_CAP_PPC_FWNMI) == errno.EINVAL
    assert errno_of(enable_cap, g, KVM_CAP_IRQ_XICS, arg0=999) == errno.EBADF
    assert errno_of(enable_cap, g, KVM_CAP_IRQ_XICS, arg0=g.vm) == errno.EPERM
    xive = errno.EPERM if g.k.host.cpu.isa_300 else errno.ENXIO
    assert errno_of(enable_cap, g, KVM_CAP_PPC_IRQ_XIVE, arg0=g.vm) == xive
    assert errno_of(enable_cap, g, 12345) == errno.EINVAL
    assert errno_of(g.k.ioctl, g.vcpu, KVM_ENABLE_CAP.request(g.k.arch), 0) == errno.EFAULT


# -- KVM_GET_REGS / KVM_SET_REGS --------------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
def test_regs_start_zero_but_the_msr_and_round_trip_but_pid(host: str) -> None:
    g = guest(host)
    bo = g.k.arch.byteorder
    regs = KVM_REGS.unpack(bo, bytes(g.k.ioctl(g.vcpu, g.k.KVM_GET_REGS, bytes(KVM_REGS.size))))
    assert regs["msr"] == (MSR_ME if g.hv else 0)
    assert not any(v for name, v in regs.items() if name != "msr")
    wanted = {name: i + 1 for i, name in enumerate(regs)} | {"msr": MSR_ME}
    assert g.k.ioctl(g.vcpu, g.k.KVM_SET_REGS, bytearray(KVM_REGS.pack(bo, wanted))) == 0
    got = KVM_REGS.unpack(bo, bytes(g.k.ioctl(g.vcpu, g.k.KVM_GET_REGS, bytes(KVM_REGS.size))))
    assert got == wanted | {"pid": 0}  # KVM_SET_REGS sets every field but pid


@pytest.mark.parametrize(
    ("msr", "hv_reads", "pr_reads"),
    [
        (0, MSR_ME, 0),  # HV: "Guest must always run with ME enabled, HV disabled"
        (1 << 60 | 1, MSR_ME | 1, 1 << 60 | 1),  # MSR_HV cleared on HV, kept on PR (no PAPR yet)
        (3 << 33, MSR_ME, 3 << 33),  # an illegal transaction state made safe on HV
        (1 << 33 | MSR_ME, 1 << 33 | MSR_ME, 1 << 33 | MSR_ME),
    ],
)
@pytest.mark.parametrize("host", ["powervm-p11", "pseries-kvm-pr"])
def test_set_regs_msr_through_the_backends_set_msr_and_cr_as_a_u32(
    host: str, msr: int, hv_reads: int, pr_reads: int
) -> None:
    """The lab's Linux 7.3 recordings: HV's set_msr (book3s_hv_builtin.c), PR's, and
    kvmppc_set_cr's u32."""
    g = guest(host)
    bo = g.k.arch.byteorder
    g.k.ioctl(g.vcpu, g.k.KVM_SET_REGS, bytearray(KVM_REGS.pack(bo, {"msr": msr, "cr": 2**64 - 1})))
    regs = KVM_REGS.unpack(bo, bytes(g.k.ioctl(g.vcpu, g.k.KVM_GET_REGS, bytes(KVM_REGS.size))))
    assert (regs["msr"], regs["cr"]) == (hv_reads if g.hv else pr_reads, 0xFFFFFFFF)


def test_regs_copy_faults_are_efault() -> None:
    g = guest("powervm-p11")
    for request in (g.k.KVM_GET_REGS, g.k.KVM_SET_REGS):
        assert errno_of(g.k.ioctl, g.vcpu, request, 0) == errno.EFAULT


@pytest.mark.parametrize("rev", ["linux-7.3", "none", "v5", "v4"])
@pytest.mark.parametrize("host", ["powervm-p11", "powernv-p10", "pseries-kvm-pr"])
def test_a_duplicate_id_is_eexist_on_7_3_and_a_virtual_core_collision_before(host: str, rev: str) -> None:
    """Linux 7.3 checks for the id before kvm_arch_vcpu_create; the kernels before it after,
    where an ISA 3.0 HV VM has already refused the id's taken virtual core (Linux 7.2 in the
    lab answers EINVAL); a PR VM has no virtual cores: EEXIST either way."""
    k = Kernel.from_profile(host, abi=rev)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    k.ioctl(vm, k.KVM_CREATE_VCPU, 0)
    hv = bool(k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_SMT))
    expected = errno.EEXIST if rev == "linux-7.3" or not hv else errno.EINVAL
    assert errno_of(k.ioctl, vm, k.KVM_CREATE_VCPU, 0) == expected


# -- KVM_GET_SREGS / KVM_SET_SREGS --------------------------------------------------------------


def sregs_of(g: Guest) -> dict[str, int]:
    buf = bytearray(KVM_SREGS.size)  # past fcntl's 1024-byte scratch: a mutable buffer, passed in place
    assert g.k.ioctl(g.vcpu, KVM_GET_SREGS.request(g.k.arch), buf) == 0
    return KVM_SREGS.unpack(g.k.arch.byteorder, bytes(buf))


def set_sregs(g: Guest, values: dict[str, int]) -> int:
    arg = bytearray(KVM_SREGS.pack(g.k.arch.byteorder, values))
    return int(g.k.ioctl(g.vcpu, KVM_SET_SREGS.request(g.k.arch), arg))


@pytest.mark.parametrize("host", VM_HOSTS)
def test_get_sregs_is_the_pvr_and_the_slb(host: str) -> None:
    """HV: zeros but the host's PVR (no SLB entry kept yet); PR: the PVR, SDR1 and its 64 SLB
    entries, each ESID word with its index or-ed in."""
    g = guest(host)
    got = sregs_of(g)
    assert got["pvr"] == g.k.host.cpu.pvr
    expected = {} if g.hv else {f"slb{i}e": i for i in range(64)}
    assert {k: v for k, v in got.items() if v and k != "pvr"} == {k: v for k, v in expected.items() if v}


@pytest.mark.parametrize("host", VM_HOSTS)
def test_set_sregs_keeps_the_valid_slb_entries(host: str) -> None:
    """HV accepts only the host's PVR and keeps the valid entries among its 32, compacted; PR
    writes each valid entry at the index its ESID word carries (ESID and valid bit only)."""
    g = guest(host)
    pvr = g.k.host.cpu.pvr
    assert pvr is not None
    entries = {"slb0e": SLB_ESID_V | 0x10000000, "slb0v": 7, "slb5e": SLB_ESID_V | 0x20000003, "slb5v": 9,
               "slb9e": 0x30000009, "slb40e": SLB_ESID_V | 0x40000028, "slb40v": 11}  # fmt: skip
    if g.hv:
        assert errno_of(set_sregs, g, {"pvr": pvr ^ 1}) == errno.EINVAL
    assert set_sregs(g, {"pvr": pvr, "sdr1": 0x1234, **entries}) == 0
    got = {k: v for k, v in sregs_of(g).items() if v and k != "pvr"}
    if g.hv:
        assert got == {"slb0e": SLB_ESID_V | 0x10000000, "slb0v": 7, "slb1e": SLB_ESID_V | 0x20000003, "slb1v": 9}
    else:
        ours = {"slb0e": SLB_ESID_V | 0x10000000, "slb0v": 7, "slb3e": SLB_ESID_V | 0x20000000 | 3, "slb3v": 9}
        ours |= {"slb40e": SLB_ESID_V | 0x40000000 | 40, "slb40v": 11, "sdr1": 0x1234}
        assert got == {f"slb{i}e": i for i in range(1, 64) if i not in (3, 40)} | ours


def test_sregs_copy_faults_are_efault() -> None:
    g = guest("powervm-p11")
    for io in (KVM_GET_SREGS, KVM_SET_SREGS):
        assert errno_of(g.k.ioctl, g.vcpu, io.request(g.k.arch), 0) == errno.EFAULT


@pytest.mark.parametrize(
    ("host", "answer"),
    [("powernv-p10", errno.ENOTTY), ("qemu-powernv10", errno.ENOTTY), ("qemu-powernv9-hash-hv-pr-64k", errno.EFAULT),
     ("powervm-p11", errno.EFAULT), ("qemu-nested-hv-p10", errno.EFAULT)],
)  # fmt: skip
def test_a_struct_copied_in_from_a_top_bit_address_reads_kernel_memory_on_bare_metal_radix(
    host: str, answer: int
) -> None:
    """The lab: on powernv9/10 (radix, HV mode) Linux 7.3's copy_from_user masks 0xc000... to
    0x8000000000000000, quadrant 2, which maps: KVM_SET_REGS succeeds, KVM_ENABLE_CAP reads a
    capability out of kernel memory.  kvmsim has not those bytes: not modelled, named.  On a
    hash host, and on any pseries L1, the copy faults: EFAULT.  copy_to_user checks access_ok."""
    g = guest(host)
    for request in (g.k.KVM_SET_REGS, KVM_SET_SREGS.request(g.k.arch), KVM_ENABLE_CAP.request(g.k.arch)):
        assert errno_of(g.k.sys_ioctl, g.vcpu, request, 0xC000000000000000) == answer
    assert errno_of(g.k.sys_ioctl, g.vcpu, g.k.KVM_GET_REGS, 0xC000000000000000) == errno.EFAULT
    assert errno_of(g.k.sys_ioctl, g.vcpu, g.k.KVM_SET_REGS, 0x4000000000000000) == errno.EFAULT


# -- KVM_PPC_GET_SMMU_INFO --------------------------------------------------------------------


def smmu_of(k: Kernel, vm: int) -> dict[str, int]:
    out = k.ioctl(vm, KVM_PPC_GET_SMMU_INFO.request(k.arch), bytes(KVM_PPC_SMMU_INFO.size))
    return {f: v for f, v in KVM_PPC_SMMU_INFO.unpack(k.arch.byteorder, bytes(out)).items() if v}


def segment(i: int, shift: int, slb_enc: int, *encs: tuple[int, int]) -> dict[str, int]:
    seg = {f"sps{i}_page_shift": shift, f"sps{i}_slb_enc": slb_enc}
    for j, (page_shift, pte_enc) in enumerate(encs):
        seg |= {f"sps{i}_enc{j}_page_shift": page_shift, f"sps{i}_enc{j}_pte_enc": pte_enc}
    return {k: v for k, v in seg.items() if v}


@pytest.mark.parametrize("host", ["powervm-p11", "powernv-p10", "qemu-nested-hv-p9"])
def test_smmu_info_of_an_hv_vm(host: str) -> None:
    """kvm_vm_ioctl_get_smmu_info_hv: 32 keys each, real-mode sizes and 1T segments, a 32-entry
    SLB, 4K/64K/16M segments with 16M pages (LP 0x38, 8); an L1 runs no HPT guests (NO_HASH)."""
    k = Kernel.from_profile(host)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    flags = KVM_PPC_PAGE_SIZES_REAL | KVM_PPC_1T_SEGMENTS | (KVM_PPC_NO_HASH if k.host.platform == "pseries" else 0)
    assert smmu_of(k, vm) == {
        "flags": flags, "slb_size": 32, "data_keys": 32, "instr_keys": 32,
        **segment(0, 12, 0, (12, 0), (24, 0x38)),
        **segment(1, 16, SLB_VSID_L | SLB_VSID_LP_01, (16, 1), (24, 8)),
        **segment(2, 24, SLB_VSID_L, (24, 0)),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("host", "multi"),
    [("qemu-powernv9-hash-hv-pr-64k", True), ("pseries-kvm-pr", False), ("qemu-pr-p10-hash-64k", False)],
)
def test_smmu_info_of_a_pr_vm_follows_its_first_vcpu(host: str, multi: bool) -> None:
    """kvm_vm_ioctl_get_smmu_info_pr: 4K and 16M; 64K pages and 1T segments only once the VM's
    first vcpu emulates a CPU from POWER6 to POWER9 (kvmppc_set_pvr_pr's list stops there: a
    POWER10 host's vcpu has neither, as the lab's PR boot answers)."""
    k = Kernel.from_profile(host)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 2))
    minimum = {"slb_size": 64, **segment(0, 12, 0, (12, 0)), **segment(1, 24, SLB_VSID_L, (24, 0))}
    assert smmu_of(k, vm) == minimum
    k.ioctl(vm, k.KVM_CREATE_VCPU, 0)
    if multi:
        with_64k = {"flags": KVM_PPC_1T_SEGMENTS, **segment(1, 16, SLB_VSID_L | SLB_VSID_LP_01, (16, 1))}
        assert smmu_of(k, vm) == {**minimum, **with_64k, **segment(2, 24, SLB_VSID_L, (24, 0))}
    else:
        assert smmu_of(k, vm) == minimum


# -- KVM_ENABLE_CAP on a VM ---------------------------------------------------------------------


def vm_enable_cap(k: Kernel, vm: int, cap: int, *args: int, flags: int = 0) -> int:
    values = {"cap": cap, "flags": flags, **{f"arg{i}": a for i, a in enumerate(args)}}
    return int(
        k.ioctl(vm, KVM_ENABLE_CAP.request(k.arch), bytearray(KVM_ENABLE_CAP_STRUCT.pack(k.arch.byteorder, values)))
    )


@pytest.mark.parametrize("host", VM_HOSTS)
def test_enable_cap_on_a_vm(host: str) -> None:
    """kvm_vm_ioctl_enable_cap_generic (HALT_POLL; no dirty ring on powerpc), then powerpc's:
    flags EINVAL; ENABLE_HCALL of an hcall the VM's backend implements (HV's list and its
    real-mode table, PR's shorter one), 4-aligned, at most H_PKS_UNWRAP_OBJECT, switch 0 or 1;
    SMT a power of two up to 8 on HV (before ISA 3.0 a core's threads), EBUSY once a vcpu made
    a virtual core; NESTED_HV, SECURE_GUEST and DAWR1 only on HV (kvm_hv's nested=0 EPERM,
    nested API v2 ENODEV, no ultravisor EINVAL, no DAWR1 before POWER10 ENODEV)."""
    k = Kernel.from_profile(host)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    hv = bool(k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_SMT))
    assert vm_enable_cap(k, vm, KVM_CAP_HALT_POLL, 1000) == 0
    assert errno_of(vm_enable_cap, k, vm, KVM_CAP_HALT_POLL, 1 << 32) == errno.EINVAL
    assert errno_of(vm_enable_cap, k, vm, KVM_CAP_DIRTY_LOG_RING, 4096) == errno.EINVAL
    assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_ENABLE_HCALL, 0xE0, 1, flags=1) == errno.EINVAL
    for hcall in (0x04, 0xE0, 0x31C):  # H_REMOVE, H_CEDE, H_SET_MODE: both backends
        assert vm_enable_cap(k, vm, KVM_CAP_PPC_ENABLE_HCALL, hcall, 1) == 0
    for hcall in (0xE1, 0x498):
        assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_ENABLE_HCALL, hcall, 1) == errno.EINVAL
    assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_ENABLE_HCALL, 0xE0, 2) == errno.EINVAL
    for hcall in (0x300, 0x448, 0xDC):  # H_RANDOM (real mode), H_RPT_INVALIDATE, H_REGISTER_VPA: HV's
        if hv:
            assert vm_enable_cap(k, vm, KVM_CAP_PPC_ENABLE_HCALL, hcall, 0) == 0
        else:
            assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_ENABLE_HCALL, hcall, 0) == errno.EINVAL
    for mode in (0, 3, 16):
        assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_SMT, mode) == errno.EINVAL
    assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_SECURE_GUEST) == errno.EINVAL
    if not hv:
        for cap in (KVM_CAP_PPC_SMT, KVM_CAP_PPC_NESTED_HV, KVM_CAP_PPC_DAWR1):
            assert errno_of(vm_enable_cap, k, vm, cap, 2) == errno.EINVAL
        return
    assert vm_enable_cap(k, vm, KVM_CAP_PPC_SMT, 2) == 0  # no virtual core yet
    k.ioctl(vm, k.KVM_CREATE_VCPU, 0)
    assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_SMT, 2) == errno.EBUSY
    nested = {"kvm-l1-p10": 0, "qemu-nested-hv-p10-nested-0": errno.EPERM, "powervm-p11": errno.ENODEV}.get(host)
    if nested == 0:
        assert vm_enable_cap(k, vm, KVM_CAP_PPC_NESTED_HV) == 0
    elif nested is not None:
        assert errno_of(vm_enable_cap, k, vm, KVM_CAP_PPC_NESTED_HV) == nested


def test_smt_mode_on_isa_3_0_emulates_threads_and_packs_vcpu_ids() -> None:
    """ENABLE_CAP(SMT, 8) before any vcpu: each vcpu still its own core (smt_mode 1), ids up to
    KVM_MAX_VCPUS × 8 packed into the cores (kvmppc_pack_vcpu_id), a packed collision EINVAL."""
    k = Kernel.from_profile("powervm-p11")
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    assert vm_enable_cap(k, vm, KVM_CAP_PPC_SMT, 8) == 0
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_SMT) == 1
    top = k.host.kvm_max_vcpus
    k.ioctl(vm, k.KVM_CREATE_VCPU, top)  # block 1: offset 4 -> core 4
    assert errno_of(k.ioctl, vm, k.KVM_CREATE_VCPU, 4) == errno.EINVAL  # core 4 taken
    k.ioctl(vm, k.KVM_CREATE_VCPU, 0)
    assert errno_of(k.ioctl, vm, k.KVM_CREATE_VCPU, top * 8) == errno.EINVAL


# -- KVM_GET_ONE_REG / KVM_SET_ONE_REG ----------------------------------------------------------


def one_reg(g: Guest, name_or_id: str | int, value: bytes | None = None) -> bytes:
    """GET (value None) or SET a register through a 16-byte buffer in the kernel's memory."""
    reg_id = ONE_REGS[name_or_id] if isinstance(name_or_id, str) else name_or_id
    buf = g.k.memory.map(16, data=value.ljust(16, b"\0") if value is not None else b"\xaa" * 16)
    request = (KVM_SET_ONE_REG if value is not None else KVM_GET_ONE_REG).request(g.k.arch)
    arg = bytearray(KVM_ONE_REG.pack(g.k.arch.byteorder, {"id": reg_id, "addr": buf}))
    g.k.ioctl(g.vcpu, request, arg)
    return g.k.memory.read(buf, 16)


def u(g: Guest, value: int, size: int = 8) -> bytes:
    return value.to_bytes(size, g.k.arch.byteorder)


@pytest.mark.parametrize("host", VM_HOSTS)
def test_one_reg_knows_the_backends_registers_with_their_first_values(host: str) -> None:
    """What the lab's Linux 7.3 answered for every register: HV knows its SPRs, PR its few
    (HIOR 0xfff00000, VTB, LPCR as ILE); both the generic FP/VSX/VMX ones and DEBUG_INST
    (0x00dddd00); the interrupt controllers' are ENXIO without a device; BookE's EINVAL."""
    g = guest(host)
    assert one_reg(g, "DEBUG_INST")[:4] == u(g, 0x00DDDD00, 4)
    assert errno_of(one_reg, g, "ICP_STATE") == errno.ENXIO
    assert errno_of(one_reg, g, "IAC1") == errno.EINVAL
    assert one_reg(g, "VSR31") == bytes(16)
    if g.hv:
        isa31 = (g.k.host.cpu.effective.level if g.k.host.cpu.effective else 0) >= 10
        assert one_reg(g, "MMCR0")[:8] == u(g, 0x80000000 | (0x200 if isa31 else 0))
        assert one_reg(g, "HIOR")[:8] == bytes(8)
        assert one_reg(g, "LPCR_64")[:8] != bytes(8)
    else:
        assert one_reg(g, "HIOR")[:8] == u(g, 0xFFF00000)
        assert errno_of(one_reg, g, "DSCR") == errno.EINVAL


@pytest.mark.parametrize("host", VM_HOSTS)
def test_one_reg_sets_as_the_backends_do(host: str) -> None:
    """A plain SPR keeps what is set, at its width; HV's HIOR only 0; an FPR is doubleword
    TS_FPROFFSET of its VSR; PR's set of FSCR writes FPSCR (book3s.c's kvmppc_set_fpscr, kept as
    the kernel has it); HV's DPDES keeps one bit; LPCR through kvmppc_set_lpcr's mask (HV) or
    ILE alone (PR); DEBUG_INST cannot be set."""
    g = guest(host)
    one_reg(g, "FPR0", u(g, 0x1122334455667788))
    fpr_dw = 1 if g.k.arch.byteorder == "little" else 0
    assert one_reg(g, "VSR0")[8 * fpr_dw : 8 * fpr_dw + 8] == u(g, 0x1122334455667788)
    one_reg(g, "FSCR", u(g, 0x55))
    assert one_reg(g, "FPSCR" if not g.hv else "FSCR")[:8] == u(g, 0x55)
    assert errno_of(one_reg, g, "DEBUG_INST", u(g, 1, 4)) == errno.EINVAL
    one_reg(g, "LPCR_64", u(g, 0x02000000))
    assert int.from_bytes(one_reg(g, "LPCR")[:4], g.k.arch.byteorder) & 0x02000000
    if not g.hv:
        assert errno_of(one_reg, g, "DSCR", u(g, 1)) == errno.EINVAL
        return
    one_reg(g, "PMC1", u(g, 0xDEADBEEF, 4))
    assert one_reg(g, "PMC1")[:4] == u(g, 0xDEADBEEF, 4)
    assert errno_of(one_reg, g, "HIOR", u(g, 0x100)) == errno.EINVAL
    one_reg(g, "DPDES", u(g, 3))
    assert one_reg(g, "DPDES")[:8] == u(g, 1 if g.k.host.cpu.isa_300 else 3)
    assert int.from_bytes(one_reg(g, "LPCR_64")[:8], g.k.arch.byteorder) >> 52 & 7 == 0  # DPFD from the new value


@pytest.mark.parametrize("host", [h for h in VM_HOSTS if 1 in vm_types(h)])
@pytest.mark.parametrize(
    ("name", "size", "value", "kept"),
    [
        ("PID", 8, 0xA3E853D565BF0ECB, 0x65BF0ECB),  # vcpu->arch.pid: a u32
        ("PSSCR", 8, 0xA3E853D565BF0ECB, 0xA0000000000002CB),  # PSSCR_GUEST_VIS
        ("DABRX", 4, 0xFFFFFFFF, 0xFFFFFFFB),  # no DABRX_HYP
        ("DAWRX", 8, 0xFF, 0xFB),  # no DAWRX_HYP
        ("CIABR", 8, 0x1003, 0x1000),  # at the hypervisor's privilege: none
        ("CIABR", 8, 0x1002, 0x1002),
    ],
)
def test_one_reg_keeps_what_an_hv_vcpu_may_have(host: str, name: str, size: int, value: int, kept: int) -> None:
    """kvmppc_set_one_reg_hv()'s masks, as the lab's fuzz found them (seed 20261208's PSSCR)."""
    k = Kernel.from_profile(host)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 1))
    g = Guest(k, vm, int(k.ioctl(vm, k.KVM_CREATE_VCPU, 0)), hv=True)
    one_reg(g, name, u(g, value, size))
    assert one_reg(g, name)[:size] == u(g, kept, size)
    if name == "PID":  # and KVM_GET_REGS shows it
        regs = KVM_REGS.unpack(k.arch.byteorder, bytes(k.ioctl(g.vcpu, k.KVM_GET_REGS, bytes(KVM_REGS.size))))
        assert regs["pid"] == kept


def test_one_reg_sizes_and_pointers() -> None:
    g = guest("powervm-p11")
    assert errno_of(one_reg, g, 0x1050000000000009) == errno.EINVAL  # 32 bytes: past the union
    struct = KVM_ONE_REG.pack(g.k.arch.byteorder, {"id": ONE_REGS["DSCR"], "addr": 0})
    for io in (KVM_GET_ONE_REG, KVM_SET_ONE_REG):
        assert errno_of(g.k.ioctl, g.vcpu, io.request(g.k.arch), bytearray(struct)) == errno.EFAULT


P9, P10, P11, INVALID = 0x0F000005, 0x0F000006, 0x0F000007, 0xFFFFFFFF


def arch_compat(g: Guest, value: int) -> int:
    """Set ARCH_COMPAT; 0 or the errno; the value stays whatever the kernel stored."""
    try:
        one_reg(g, "ARCH_COMPAT", u(g, value, 4))
    except OSError as exc:
        return exc.errno or 0
    return 0


def stored_compat(g: Guest) -> int:
    return int.from_bytes(one_reg(g, "ARCH_COMPAT")[:4], g.k.arch.byteorder)


def expected_compat(host: profile.Host, value: int) -> tuple[int, int | None]:
    """kvmppc_set_arch_compat by the host's facts, as a table reads: (errno, what is stored
    after, None for unchanged).  PCR levels: ISA 2.07 8, 3.00 9, 3.1 10 (POWER10 and POWER11)."""
    level = host.cpu.effective.level if host.cpu.effective else 8
    if value == P11 and level < 11:
        return errno.EINVAL, INVALID
    pcr = {0x0F000004: 8, P9: 9, P10: 10, P11: 10, 0: min(level, 10)}.get(value)
    if pcr is None or pcr > min(level, 10):
        return errno.EINVAL, None
    if 2 in host.hypervisor.nested_apis:  # the modes the L0 offers that this L1 can be
        agreed = {m.name for m in host.hypervisor.offers if m.level <= level}
        wanted = {9: "power9", 10: "power11" if level >= 11 else "power10"}.get(pcr)
        if wanted not in agreed:
            return errno.EINVAL, None
    return 0, value


@pytest.mark.parametrize("host", VM_HOSTS)
def test_arch_compat_is_checked_against_the_host_and_its_l0(host: str) -> None:
    """kvmppc_set_arch_compat: an architected PVR no newer than the host's ISA; POWER11's only on
    a POWER11 (elsewhere stored as PVR_ARCH_INVALID and EINVAL, the vcpu insane); under nested
    API v2 a mode the L0 agreed to, ISA 3.1 counting as POWER11 on a POWER11 host (so POWER10
    compat there needs the L0's POWER11); before PAPR every set is stored and EINVAL (the sanity
    check); PR knows no ARCH_COMPAT."""
    g = guest(host)
    if not g.hv:
        assert errno_of(one_reg, g, "ARCH_COMPAT") == errno.EINVAL
        return
    _, stored = expected_compat(g.k.host, P9)  # no PAPR yet: stored if valid, and EINVAL
    assert (arch_compat(g, P9), stored_compat(g)) == (errno.EINVAL, 0 if stored is None else stored)
    enable_cap(g, KVM_CAP_PPC_PAPR)
    for value in (P9, P10, P11, 0x0F000004, 0x0F000001, 0x12345678, 0):
        before = stored_compat(g)
        err, after = expected_compat(g.k.host, value)
        assert (arch_compat(g, value), stored_compat(g)) == (err, before if after is None else after), hex(value)


def vpaval(g: Guest, addr: int, length: int = 0) -> bytes:
    return u(g, addr) + u(g, length)


@pytest.mark.parametrize("host", VM_HOSTS)
def test_vpa_registration_and_the_timebase_offset(host: str) -> None:
    """kvmppc_set_one_reg_hv's VPA cases and set_vpa: the SLB shadow and DTL need the VPA, which
    cannot go while they are registered; a DTL holds whole 48-byte entries, at least one; every
    address cacheline-aligned; nothing is read until a run.  TB_OFFSET rounds up to 2^24 (in a
    u64).  PR has none of them."""
    g = guest(host)
    if not g.hv:
        assert errno_of(one_reg, g, "VPA_ADDR", u(g, 0x10080)) == errno.EINVAL
        return
    assert errno_of(one_reg, g, "VPA_SLB", vpaval(g, 0x20000, 0x100)) == errno.EINVAL  # no VPA
    assert errno_of(one_reg, g, "VPA_ADDR", u(g, 0x10040)) == errno.EINVAL  # not on a 128-byte line
    one_reg(g, "VPA_ADDR", u(g, 0x10080))
    one_reg(g, "VPA_SLB", vpaval(g, 0x20000, 0x123))
    assert errno_of(one_reg, g, "VPA_DTL", vpaval(g, 0x30000, 40)) == errno.EINVAL  # less than an entry
    one_reg(g, "VPA_DTL", vpaval(g, 0x30000, 100))
    assert one_reg(g, "VPA_DTL") == vpaval(g, 0x30000, 96)
    assert errno_of(one_reg, g, "VPA_ADDR", u(g, 0)) == errno.EINVAL  # the SLB shadow and DTL hang on it
    one_reg(g, "VPA_DTL", vpaval(g, 0, 100))
    one_reg(g, "VPA_SLB", vpaval(g, 0, 5))
    assert one_reg(g, "VPA_SLB") == bytes(16)  # no address, no length
    one_reg(g, "VPA_ADDR", u(g, 0))
    assert one_reg(g, "VPA_ADDR")[:8] == bytes(8)
    for value, rounded in ((1, 1 << 24), (1 << 24, 1 << 24), ((1 << 64) - 1, 0)):
        one_reg(g, "TB_OFFSET", u(g, value))
        assert one_reg(g, "TB_OFFSET")[:8] == u(g, rounded)
    assert one_reg(g, "DEC_EXPIRY")[:8] != bytes(8)  # an expired decrementer in guest time


@pytest.mark.parametrize("host", VM_HOSTS)
def test_kvm_interrupt_queues_and_unsets_before_the_vcpus_switch(host: str) -> None:
    """powerpc's kvm_arch_vcpu_unlocked_ioctl: KVM_INTERRUPT reads its u32 (EFAULT), then any irq
    queues an external interrupt and KVM_INTERRUPT_UNSET dequeues it: always 0."""
    from kvmsim.uapi import KVM_INTERRUPT, KVM_INTERRUPT_SET, KVM_INTERRUPT_UNSET

    g = guest(host)
    request = KVM_INTERRUPT.request(g.k.arch)
    for irq in (KVM_INTERRUPT_SET, 5, KVM_INTERRUPT_UNSET):
        assert g.k.ioctl(g.vcpu, request, bytearray(u(g, irq, 4))) == 0
    assert errno_of(g.k.sys_ioctl, g.vcpu, request, 0) == errno.EFAULT


# -- kvm_vcpu_ioctl's other generic cases -------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
@pytest.mark.parametrize(
    ("io", "arg", "expected"),
    [
        (KVM_GET_MP_STATE, bytes(4), errno.EINVAL),  # powerpc has no MP state: before the copy out
        (KVM_GET_MP_STATE, 0, errno.EINVAL),
        (KVM_SET_MP_STATE, bytes(4), errno.EINVAL),
        (KVM_SET_MP_STATE, 0, errno.EFAULT),  # the copy in first
        (KVM_TRANSLATE, bytes(range(24)), 0),  # book3s: 0, the struct back as it came
        (KVM_TRANSLATE, 0, errno.EFAULT),
        (KVM_SET_GUEST_DEBUG, bytes(264), 0),
        (KVM_SET_GUEST_DEBUG, 0, errno.EFAULT),
        (KVM_SET_SIGNAL_MASK, 0, 0),  # NULL: no mask
        (KVM_GET_FPU, bytes(256), errno.EOPNOTSUPP),  # Book3S: the FPRs are ONE_REG's (was EINVAL here)
        (KVM_GET_FPU, 0, errno.EOPNOTSUPP),
        (KVM_SET_FPU, bytes(256), errno.EOPNOTSUPP),
        (KVM_SET_FPU, 0, errno.EFAULT),  # memdup_user first
    ],
)
def test_the_generic_vcpu_ioctls_answer_as_powerpc_does(
    host: str, io: KvmIoctl, arg: int | bytes, expected: int
) -> None:
    """kvm_vcpu_ioctl's generic cases around powerpc's answers, as the lab's kernels gave them."""
    g = guest(host)
    call = g.k.sys_ioctl if isinstance(arg, int) else g.k.ioctl
    if expected:
        assert errno_of(call, g.vcpu, io.request(g.k.arch), arg) == expected
    else:
        out = call(g.vcpu, io.request(g.k.arch), arg)
        assert out == 0 or bytes(out) == arg  # type: ignore[arg-type]


@pytest.mark.parametrize("host", VM_HOSTS)
def test_a_signal_mask_is_a_length_of_eight_and_a_readable_sigset(host: str) -> None:
    g = guest(host)
    request = KVM_SET_SIGNAL_MASK.request(g.k.arch)
    mask = g.k.memory.map(12, data=(8).to_bytes(4, g.k.arch.byteorder) + b"\xff" * 8)
    assert g.k.sys_ioctl(g.vcpu, request, mask) == 0
    short = g.k.memory.map(12, data=(4).to_bytes(4, g.k.arch.byteorder) + b"\xff" * 8)
    assert errno_of(g.k.sys_ioctl, g.vcpu, request, short) == errno.EINVAL
    alone = g.k.memory.map(4, data=(8).to_bytes(4, g.k.arch.byteorder))  # the length, no sigset after it
    assert errno_of(g.k.sys_ioctl, g.vcpu, request, alone) == errno.EFAULT
