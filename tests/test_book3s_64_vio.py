"""The guest's TCE tables (book3s_64_vio.c): KVM_CREATE_SPAPR_TCE(_64) and the kvm-spapr-tce
file they make, as Linux 7.3 does them, on every host whose kernel makes a VM, and the build
without CONFIG_SPAPR_TCE_IOMMU (the lab's 64K build)."""

from __future__ import annotations

import errno

import pytest
from test_vcpu import VM_HOSTS, _overridden, errno_of, vm_types

from kvmsim import Kernel
from kvmsim.kernel import profile
from kvmsim.kernel.anon_inodes import SPAPR_TCE
from kvmsim.kernel.errors import KvmError
from kvmsim.uapi import (
    KVM_CAP_PPC_ENABLE_HCALL,
    KVM_CAP_SPAPR_TCE,
    KVM_CAP_SPAPR_TCE_64,
    KVM_CREATE_SPAPR_TCE,
    KVM_CREATE_SPAPR_TCE_64,
    KVM_CREATE_SPAPR_TCE_64_STRUCT,
    KVM_CREATE_SPAPR_TCE_STRUCT,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
)

U64 = (1 << 64) - 1
TCE_HOSTS = [h for h in VM_HOSTS if profile.load(h).spapr_tce_iommu]
NO_TCE_HOSTS = [h for h in VM_HOSTS if not profile.load(h).spapr_tce_iommu]


def vm_of(k: Kernel, vm_type: int = 0) -> int:
    return int(k.ioctl(k.open(), k.KVM_CREATE_VM, vm_type))


def tce64(k: Kernel, vm: int, liobn: int = 0x80000000, **values: int) -> int:
    """KVM_CREATE_SPAPR_TCE_64 of a 1G window of 4K pages by default (QEMU's first)."""
    struct = {"liobn": liobn, "page_shift": 12, "flags": 0, "offset": 0, "size": 1 << 18} | values
    arg = KVM_CREATE_SPAPR_TCE_64_STRUCT.pack(k.arch.byteorder, struct)
    return int(k.ioctl(vm, KVM_CREATE_SPAPR_TCE_64.request(k.arch), bytearray(arg)))


def tce32(k: Kernel, vm: int, liobn: int, window_size: int) -> int:
    arg = KVM_CREATE_SPAPR_TCE_STRUCT.pack(k.arch.byteorder, {"liobn": liobn, "window_size": window_size})
    return int(k.ioctl(vm, KVM_CREATE_SPAPR_TCE.request(k.arch), bytearray(arg)))


@pytest.mark.parametrize(("host", "vm_type"), [(h, t) for h in TCE_HOSTS for t in vm_types(h)])
def test_a_tce_table_is_a_file_that_maps_its_tces(host: str, vm_type: int) -> None:
    """Either backend (powerpc.c's case): an anon_inode:kvm-spapr-tce fd whose .mmap maps the
    table's pages, 8 bytes a TCE, rounded up to PAGE_SIZE."""
    k = Kernel.from_profile(host)
    fd = tce64(k, vm_of(k, vm_type))
    assert k.current.link(fd) == "anon_inode:kvm-spapr-tce" and k.current.file_kind(fd) is SPAPR_TCE
    assert k.current.mapped_size(fd) == (1 << 18) * 8  # 2MB of TCEs: a whole number of 4K or 64K pages
    small = tce64(k, vm_of(k, vm_type), liobn=1, page_shift=16, size=3)
    assert k.current.mapped_size(small) == k.host.page_size  # 24 bytes: one page
    assert errno_of(k.ioctl, fd, KVM_CREATE_SPAPR_TCE_64.request(k.arch), 0) == errno.ENOTTY  # no .unlocked_ioctl


@pytest.mark.parametrize("host", TCE_HOSTS)
def test_a_liobn_is_busy_while_its_table_is_open_and_free_after(host: str) -> None:
    """kvm_vm_ioctl_create_spapr_tce's EBUSY (either ioctl), and kvm_spapr_tce_release taking
    the table off the VM's list at the last close; another VM has its own LIOBNs."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    fd = tce64(k, vm, liobn=7)
    assert errno_of(tce64, k, vm, liobn=7, page_shift=16, size=16) == errno.EBUSY
    assert errno_of(tce32, k, vm, 7, 1 << 30) == errno.EBUSY
    assert tce64(k, vm_of(k), liobn=7) >= 0  # a VM of its own
    k.close(fd)
    assert tce32(k, vm, 7, 1 << 30) >= 0


# kvm_vm_ioctl_create_spapr_tce's window checks, in their order; KVM_CREATE_SPAPR_TCE_64's flags first
WINDOWS = {
    "flags": ({"flags": 1}, errno.EINVAL),
    "size 0": ({"size": 0}, errno.EINVAL),
    "page shift 11": ({"page_shift": 11}, errno.EINVAL),
    "page shift 35": ({"page_shift": 35, "size": 4}, errno.EINVAL),
    "page shift 34": ({"page_shift": 34, "size": 4}, None),
    "past 2^64": ({"page_shift": 16, "offset": (U64 >> 16) - 1, "size": 2}, errno.EINVAL),
    "at 2^64": ({"page_shift": 16, "offset": (U64 >> 16) - 2, "size": 2}, None),
    "offset + size wraps": ({"offset": U64, "size": 2}, None),  # u64 arithmetic: 1 passes
    "too big for kzalloc": ({"size": 1 << 40}, errno.ENOMEM),
}


@pytest.mark.parametrize("host", TCE_HOSTS)
@pytest.mark.parametrize("case", WINDOWS)
def test_the_windows_checks(host: str, case: str) -> None:
    k = Kernel.from_profile(host)
    values, expected = WINDOWS[case]
    if expected is None:
        assert tce64(k, vm_of(k), **values) >= 0
    else:
        assert errno_of(tce64, k, vm_of(k), **values) == expected


@pytest.mark.parametrize("host", ["qemu-nested-hv-p10", "qemu-nested-hv-p10-64k-tce"])
def test_the_largest_table_is_the_page_allocators_largest_block(host: str) -> None:
    """kzalloc_flex of a 112-byte header and 8 bytes a kernel page of TCEs: 16MB at most with
    either page size (MAX_PAGE_ORDER 12 of 4K, 8 of 64K)."""
    k = Kernel.from_profile(host) if not host.endswith("-tce") else _overridden(host[:-4], {"spapr_tce_iommu": True})
    per_page = k.host.page_size // 8  # TCEs a kernel page holds
    most = ((16 << 20) - 112) // 8
    vm = vm_of(k)
    assert tce64(k, vm, size=most * per_page) >= 0
    assert errno_of(tce64, k, vm, liobn=2, size=most * per_page + 1) == errno.ENOMEM


@pytest.mark.parametrize("host", TCE_HOSTS)
@pytest.mark.parametrize(("window", "expected"), [(4095, errno.EINVAL), (4096, None), ((1 << 32) - 1, None)])
def test_the_first_ioctl_is_a_window_of_4k_pages(host: str, window: int, expected: int | None) -> None:
    k = Kernel.from_profile(host)
    if expected is not None:
        assert errno_of(tce32, k, vm_of(k), 1, window) == expected
        return
    fd = tce32(k, vm_of(k), 1, window)
    tces = window >> 12
    assert k.current.mapped_size(fd) == -(-tces * 8 // k.host.page_size) * k.host.page_size


@pytest.mark.parametrize("host", TCE_HOSTS)
@pytest.mark.parametrize("io", [KVM_CREATE_SPAPR_TCE_64, KVM_CREATE_SPAPR_TCE])
def test_a_bad_pointer_is_efault(host: str, io: object) -> None:
    k = Kernel.from_profile(host)
    assert errno_of(k.ioctl, vm_of(k), io.request(k.arch), 0) == errno.EFAULT  # type: ignore[attr-defined]


@pytest.mark.parametrize("host", NO_TCE_HOSTS)
def test_a_build_without_the_tce_iommu_answers_enotty_and_still_advertises_it(host: str) -> None:
    """powerpc.c answers KVM_CAP_SPAPR_TCE(_64) unconditionally, its ioctl cases are #ifdef
    CONFIG_SPAPR_TCE_IOMMU: the ops' arch_vm_ioctl answers ENOTTY, named in the trace."""
    k = Kernel.from_profile(host)
    vm = vm_of(k)
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_SPAPR_TCE) == 1
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, KVM_CAP_SPAPR_TCE_64) == 1
    assert errno_of(tce64, k, vm) == errno.ENOTTY
    with pytest.raises(KvmError, match="no CONFIG_SPAPR_TCE_IOMMU"):
        k.current.sys_ioctl(vm, KVM_CREATE_SPAPR_TCE.request(k.arch), 0)


@pytest.mark.parametrize("host", VM_HOSTS)
@pytest.mark.parametrize("hcall", [0x1C, 0x20, 0x138, 0x13C])
def test_the_tce_hcalls_are_implemented_only_with_the_tce_iommu(host: str, hcall: int) -> None:
    """kvmppc_hcall_impl_hv/_pr: H_GET_TCE, H_PUT_TCE, H_STUFF_TCE, H_PUT_TCE_INDIRECT are
    #ifdef CONFIG_SPAPR_TCE_IOMMU; ENABLE_HCALL of an hcall the backend lacks is EINVAL."""
    k = Kernel.from_profile(host)
    arg = KVM_ENABLE_CAP_STRUCT.pack(k.arch.byteorder, {"cap": KVM_CAP_PPC_ENABLE_HCALL, "arg0": hcall, "arg1": 1})
    enable = KVM_ENABLE_CAP.request(k.arch)
    if k.host.spapr_tce_iommu:
        assert k.ioctl(vm_of(k), enable, bytearray(arg)) == 0
    else:
        assert errno_of(k.ioctl, vm_of(k), enable, bytearray(arg)) == errno.EINVAL


def test_in_process_the_mapping_is_the_tables_own_pages() -> None:
    """kvm_spapr_tce_fault(): zeroed pages as touched; what one mapping writes another sees; a
    file without .mmap is ENODEV; past the table's pages is named (a real one SIGBUSes)."""
    k = Kernel.from_profile("qemu-nested-hv-p10")
    vm = vm_of(k)
    fd = tce64(k, vm, size=1 << 10)  # 8K of TCEs: two 4K pages
    first, again = k.current.mmap(fd, 8192), k.current.mmap(fd, 4096, pgoff=1)
    assert bytes(first) == bytes(8192)
    first[4096:4104] = b"\x01" * 8
    assert bytes(again[:8]) == b"\x01" * 8
    with pytest.raises(KvmError) as enodev:
        k.current.mmap(vm, 4096)
    assert enodev.value.errno == errno.ENODEV
    with pytest.raises(KvmError, match="SIGBUS"):
        k.current.mmap(fd, 4096, pgoff=2)


def test_a_profile_cannot_give_x86_the_tce_iommu() -> None:
    with pytest.raises(profile.ProfileError, match="spapr_tce_iommu"):
        _overridden("x86_64", {"spapr_tce_iommu": True})
