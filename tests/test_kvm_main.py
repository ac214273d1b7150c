"""kvm_main: /dev/kvm, the fd table, KVM_CREATE_VM types, generic capabilities."""

from __future__ import annotations

import errno

import pytest
from conftest import REVS
from test_vcpu import errno_of

from kvmsim import Kernel
from kvmsim.uapi import GENERIC_CAPS, KVM_CAP_PPC_SMT


@pytest.mark.parametrize("host", ["powervm-p11", "x86_64"])
def test_fd_ioctls_are_answered_before_kvm(host: str) -> None:
    k = Kernel.from_profile(host)
    dev = k.open()
    vm = int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
    vfs = k.arch.vfs_ioctls
    for fd in (dev, vm):
        assert k.ioctl(fd, vfs["FIOCLEX"]) == 0 and k.ioctl(fd, vfs["FIONCLEX"]) == 0
        assert k.ioctl(fd, vfs["FIONBIO"], bytearray(4)) == 0
        with pytest.raises(OSError) as exc:
            k.ioctl(fd, vfs["FIOASYNC"], 0)  # get_user() of a NULL int
        assert exc.value.errno == errno.EFAULT
    assert vfs["FIOCLEX"] == (0x20006601 if k.arch.is_powerpc else 0x5451)


def vm_ops_name(k: Kernel, fd: int) -> str:
    """Which ops a VM got, as userspace can tell: an HV VM's KVM_CAP_PPC_SMT is its smt_mode
    (1), a PR VM's is 0."""
    if not k.arch.is_powerpc:
        return "x86"
    return "kvm_hv" if k.ioctl(fd, k.KVM_CHECK_EXTENSION, KVM_CAP_PPC_SMT) else "kvm_pr"


@pytest.fixture
def k() -> Kernel:
    return Kernel.from_profile("powervm-p11")


def test_api_version_is_12_and_takes_no_argument(k: Kernel) -> None:
    dev = k.open()
    assert k.ioctl(dev, k.KVM_GET_API_VERSION) == 12
    with pytest.raises(OSError) as exc:
        k.ioctl(dev, k.KVM_GET_API_VERSION, 1)
    assert exc.value.errno == errno.EINVAL


def test_only_dev_kvm_exists(k: Kernel) -> None:
    with pytest.raises(FileNotFoundError):
        k.open("/dev/kvm0")


def test_fds_are_the_lowest_free_numbers(k: Kernel) -> None:
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    assert (dev, vm) == (3, 4)
    k.close(dev)
    assert k.open() == 3
    assert k.fds() == {3: "/dev/kvm", 4: "anon_inode:kvm-vm"}


def test_ebadf_after_close_and_for_unknown_fds(k: Kernel) -> None:
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    k.close(vm)
    for fd in (vm, 99, -1):
        with pytest.raises(OSError) as exc:
            k.ioctl(fd, k.KVM_CHECK_EXTENSION, 250)
        assert exc.value.errno == errno.EBADF
    with pytest.raises(OSError) as exc:
        k.close(vm)
    assert exc.value.errno == errno.EBADF


def test_vm_fd_outlives_the_dev_kvm_fd(k: Kernel) -> None:
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    k.close(dev)
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, k.rev.cap) == 1


@pytest.mark.parametrize(
    ("host", "vm_type", "result"),
    [
        ("powervm-p11", 0, "kvm_hv"),
        ("powervm-p11", 1, "kvm_hv"),
        ("powervm-p11", 2, "EINVAL"),  # kvm_pr not loaded
        ("powervm-p11", 3, "EINVAL"),
        ("pseries-kvm-pr", 0, "kvm_pr"),
        ("pseries-kvm-pr", 1, "EINVAL"),
        ("pseries-kvm-pr", 2, "kvm_pr"),
        ("pseries-kvm-pr-radix", 0, "EINVAL"),  # kvm_pr refused a radix partition
        ("kvm-l1-p8-compat", 0, "EINVAL"),  # kvm_hv refused ISA 2.07
        ("powernv-p10", 0, "kvm_hv"),
        ("x86_64", 0, "x86"),
        ("x86_64", 1, "EINVAL"),
    ],
)
def test_create_vm_types(host: str, vm_type: int, result: str) -> None:
    k = Kernel.from_profile(host)
    dev = k.open()
    if result.startswith("E"):
        with pytest.raises(OSError) as exc:
            k.ioctl(dev, k.KVM_CREATE_VM, vm_type)
        assert errno.errorcode[exc.value.errno] == result  # type: ignore[index]
        return
    vm = k.ioctl(dev, k.KVM_CREATE_VM, vm_type)
    assert vm_ops_name(k, vm) == result


def test_pr_and_hv_together_type_0_prefers_hv() -> None:
    from conftest import evolved

    from kvmsim.uapi import LINUX_7_3

    k = Kernel(evolved("powernv-p10", modules=("kvm_hv", "kvm_pr"), mmu="hash"), LINUX_7_3)
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    pr = k.ioctl(dev, k.KVM_CREATE_VM, 2)
    assert (vm_ops_name(k, vm), vm_ops_name(k, pr)) == ("kvm_hv", "kvm_pr")


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", ["powervm-p11", "x86_64"])
def test_generic_caps_answer_1_on_both_fds_unknown_caps_0(host: str, abi: str) -> None:
    k = Kernel.from_profile(host, abi=abi)
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    for fd in (dev, vm):
        assert all(k.ioctl(fd, k.KVM_CHECK_EXTENSION, cap) == 1 for cap in GENERIC_CAPS)
        assert k.ioctl(fd, k.KVM_CHECK_EXTENSION, 9999) == 0


@pytest.mark.parametrize("host", ["powervm-p11", "x86_64"])
def test_unknown_ioctl_einval_on_dev_enotty_on_vm(host: str) -> None:
    k = Kernel.from_profile(host)
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    for fd, err in ((dev, errno.EINVAL), (vm, errno.ENOTTY)):
        with pytest.raises(OSError) as exc:
            k.ioctl(fd, 0x1234)
        assert exc.value.errno == err
    for cmd in (k.KVM_GET_API_VERSION, k.KVM_CREATE_VM):  # /dev/kvm-only ioctls on a VM fd
        with pytest.raises(OSError) as exc:
            k.ioctl(vm, cmd, 0)
        assert exc.value.errno == errno.ENOTTY


def test_errors_carry_the_kernels_reason(k: Kernel) -> None:
    with pytest.raises(OSError) as exc:
        k.ioctl(k.open(), k.KVM_GET_API_VERSION, 5)
    assert "no argument" in exc.value.reason  # type: ignore[attr-defined]


def test_the_kernel_says_which_ioctl_returns_a_new_fd() -> None:
    """KVM_CREATE_VM on /dev/kvm, nothing else: the edges that mirror fds ask the kernel."""
    k = Kernel.from_profile("powervm-p11")
    p = k.current
    dev = p.open()
    vm = p.sys_ioctl(dev, k.KVM_CREATE_VM, 0)
    assert p.returns_fd(dev, k.KVM_CREATE_VM)
    assert not p.returns_fd(vm, k.KVM_CREATE_VM)  # a VM ioctl, not a new VM
    assert not p.returns_fd(dev, k.KVM_CHECK_EXTENSION)


# -- coalesced_mmio.c: KVM_(UN)REGISTER_COALESCED_MMIO, a CONFIG_KVM_MMIO build's --------------


def _zone(k: Kernel, vm: int, register: bool, addr: int | None = None, size: int = 0x1000, pio: int = 0) -> int:
    from kvmsim.uapi import KVM_COALESCED_MMIO_ZONE, KVM_REGISTER_COALESCED_MMIO, KVM_UNREGISTER_COALESCED_MMIO

    io = KVM_REGISTER_COALESCED_MMIO if register else KVM_UNREGISTER_COALESCED_MMIO
    arg = (
        0
        if addr is None
        else bytearray(KVM_COALESCED_MMIO_ZONE.pack(k.arch.byteorder, {"addr": addr, "size": size, "pio": pio}))
    )
    return int(k.ioctl(vm, io.request(k.arch), arg))


@pytest.mark.parametrize("host", ["qemu-pr-p10-hash-64k", "qemu-nested-hv-p10-64k", "pseries-kvm-pr", "x86_64"])
def test_coalesced_mmio_zones_where_the_build_has_kvm_mmio(host: str) -> None:
    """Registering checks pio and the bus's room only (1000 devices: ENOSPC); unregistering drops
    the zones of its bus the range lies within and answers 0 whatever it found; a NULL zone is
    EFAULT. The lab's fuzz found it on the 64K build (seed 20261210: EFAULT, not ENOTTY)."""
    from kvmsim.kernel.coalesced_mmio import NR_IOBUS_DEVS

    k = Kernel.from_profile(host)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, 15) > 0  # KVM_CAP_COALESCED_MMIO: the build has it
    for register in (True, False):
        assert errno_of(_zone, k, vm, register) == errno.EFAULT
        assert errno_of(_zone, k, vm, register, 0x1000, pio=2) == errno.EINVAL
    assert _zone(k, vm, True, 0xFFFFFFFFFFFFF000, size=0xFFFFFFFF) == 0  # no range check
    assert _zone(k, vm, False, 0x5000) == 0  # nothing there: 0 all the same
    for i in range(NR_IOBUS_DEVS - 1):
        _zone(k, vm, True, i << 12)
    assert errno_of(_zone, k, vm, True, 0) == errno.ENOSPC
    assert _zone(k, vm, True, 0, pio=1) == 0  # the PIO bus has room
    assert _zone(k, vm, False, 0x10, size=0x10) == 0  # within the zone at 0: dropped
    assert _zone(k, vm, True, 0) == 0


def test_coalesced_mmio_is_enotty_without_kvm_mmio() -> None:
    k = Kernel.from_profile("qemu-nested-hv-p10")  # Debian's build: no KVM-PR, no CONFIG_KVM_MMIO
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, 15) == 0
    assert errno_of(_zone, k, vm, True, 0x1000) == errno.ENOTTY
