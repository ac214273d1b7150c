"""Differential: the ``x86_64`` profile against this machine's real /dev/kvm.

Every probe is run through both with the same fcntl contract; the answers (value or errno)
must be identical.  Skipped, with the reason, where /dev/kvm cannot be opened."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator

import pytest

from kvmsim import Kernel
from kvmsim.uapi import ARCHES, GENERIC_CAPS, KVM_CAP_MAX_VCPUS, KVM_CAP_NR_MEMSLOTS, LINUX_7_3, STARTUP_CAPS, V4, V5

pytestmark = pytest.mark.requires_real_kvm  # kvmsim's pytest plugin skips, with the reason

Ioctl = Callable[[int, int, object], object]


class Side:
    def __init__(self, open_: Callable[[], int], ioctl: Ioctl, close: Callable[[int], None]) -> None:
        self.open, self.ioctl, self.close = open_, ioctl, close

    def answer(self, fd: int, request: int, arg: object = 0) -> object:
        try:
            return self.ioctl(fd, request, arg)
        except OSError as exc:
            return f"errno {exc.errno}"


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side]]:
    k = Kernel.from_profile("x86_64")
    real = Side(lambda: os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC), fcntl.ioctl, os.close)
    sim = Side(k.open, k.ioctl, k.close)
    yield real, sim


X86 = ARCHES["x86_64"]
# the powerpc start-up caps are unknown to x86 (0); KVM_CAP_MAX_VCPUS is a build setting, left out
PPC_ONLY_CAPS = set(STARTUP_CAPS.values()) - {KVM_CAP_NR_MEMSLOTS, KVM_CAP_MAX_VCPUS}
PPC = ARCHES["ppc64le"]
REQUESTS = {  # every encoding of the compat-caps request, and the powerpc KVM numbers
    "linux-7.3 x86": LINUX_7_3.request(X86),
    "v4 x86": V4.request(X86),
    "v5 x86": V5.request(X86),
    "linux-7.3 powerpc": LINUX_7_3.request(PPC),
    "v4 powerpc": V4.request(PPC),
    "v5 powerpc": V5.request(PPC),
    "powerpc KVM_CHECK_EXTENSION": PPC.kvm_check_extension(),
    "unknown": 0xAEFF,
}


def _script(side: Side) -> dict[str, object]:
    out: dict[str, object] = {}
    dev = side.open()
    out["api"] = side.answer(dev, X86.kvm_get_api_version())
    out["api arg 1"] = side.answer(dev, X86.kvm_get_api_version(), 1)
    out["vcpu mmap size"] = side.answer(dev, X86.kvm_get_vcpu_mmap_size())
    for cap in (249, 250, KVM_CAP_NR_MEMSLOTS, *sorted(GENERIC_CAPS), *sorted(PPC_ONLY_CAPS), 9999):
        out[f"dev cap {cap}"] = side.answer(dev, X86.kvm_check_extension(), cap)
    out["create vm type 1"] = side.answer(dev, X86.kvm_create_vm(), 1)
    vm = side.ioctl(dev, X86.kvm_create_vm(), 0)
    assert isinstance(vm, int) and vm >= 0
    for cap in (249, 250, KVM_CAP_NR_MEMSLOTS, *sorted(GENERIC_CAPS)):
        out[f"vm cap {cap}"] = side.answer(vm, X86.kvm_check_extension(), cap)
    for name, req in REQUESTS.items():
        for fd_name, fd in (("dev", dev), ("vm", vm)):
            out[f"{name} on {fd_name}"] = side.answer(fd, req, bytearray(V5.layout.pack("little", size=24)))
    out["api on vm"] = side.answer(vm, X86.kvm_get_api_version())
    vfs = X86.vfs_ioctls  # do_vfs_ioctl(), before KVM
    for fd_name, fd in (("dev", dev), ("vm", vm)):
        out[f"FIOCLEX on {fd_name}"] = side.answer(fd, vfs["FIOCLEX"])
        out[f"FIONCLEX on {fd_name}"] = side.answer(fd, vfs["FIONCLEX"])
        out[f"FIONBIO on {fd_name}"] = side.answer(fd, vfs["FIONBIO"], bytearray(4))
        out[f"FIOASYNC NULL on {fd_name}"] = side.answer(fd, vfs["FIOASYNC"], 0)
    side.close(vm)
    out["vm after close"] = side.answer(vm, X86.kvm_check_extension(), 250)
    side.close(dev)
    out["dev after close"] = side.answer(dev, X86.kvm_get_api_version())
    return out


def test_x86_profile_answers_as_the_real_kernel(sides: tuple[Side, Side]) -> None:
    real, sim = sides
    expected = _script(real)
    got = _script(sim)
    assert got == expected
    assert expected["api"] == 12  # and the real kernel is what the reference says
    assert expected["dev cap 250"] == 0
    assert expected["v5 x86 on vm"] == "errno 25"
    assert expected["linux-7.3 x86 on vm"] == "errno 25"  # 0xaeb8: ENOTTY on a VM fd
    assert expected["linux-7.3 x86 on dev"] == "errno 22"  # EINVAL on /dev/kvm


def test_this_machines_fds_answer_what_the_kernels_file_operations_say() -> None:
    """read, write, pread, pwrite, lseek, mmap, poll, fstat and the /proc link of a real
    /dev/kvm and VM fd: anon_inodes.FILE_OPS, what the shim and the lab's recordings are held to."""
    from kvmcompat import RealDevice

    from kvmsim.kernel.anon_inodes import FILE_OPS
    from kvmsim.user.probe import real_file_ops

    x86 = ("dev", "vm", "vcpu")  # the files an x86 kernel makes (a TCE table is powerpc's)
    expected = {f"{kind}.{op}": value for kind in x86 for op, value in FILE_OPS[kind].items()}
    assert real_file_ops(RealDevice("/dev/kvm")) == expected
