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
    KVM_CAP_IRQ_XICS,
    KVM_CAP_PPC_EPR,
    KVM_CAP_PPC_FWNMI,
    KVM_CAP_PPC_IRQ_XIVE,
    KVM_CAP_PPC_OSI,
    KVM_CAP_PPC_PAPR,
    KVM_CAP_PPC_SMT,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_REGS,
    KVM_SYSTEM_EVENT_SHUTDOWN,
    MSR_ME,
    UNMODELLED_IOCTLS,
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


def test_hv_set_regs_forces_an_illegal_transaction_state_safe() -> None:
    g = guest("powervm-p11")
    bo = g.k.arch.byteorder
    g.k.ioctl(g.vcpu, g.k.KVM_SET_REGS, KVM_REGS.pack(bo, {"msr": 3 << 33 | MSR_ME}))
    assert KVM_REGS.unpack(bo, bytes(g.k.ioctl(g.vcpu, g.k.KVM_GET_REGS, bytes(KVM_REGS.size))))["msr"] == MSR_ME


def test_regs_copy_faults_are_efault() -> None:
    g = guest("powervm-p11")
    for request in (g.k.KVM_GET_REGS, g.k.KVM_SET_REGS):
        assert errno_of(g.k.ioctl, g.vcpu, request, 0) == errno.EFAULT
