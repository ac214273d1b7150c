"""The binary statistics files (binary_stats.c, kvm_main.c's KVM_GET_STATS_FD): a VM's and a
vcpu's, on every host whose kernel makes a VM, read as kvm_stats_read reads them."""

from __future__ import annotations

import errno
import os

import pytest
from test_vcpu import VM_HOSTS, errno_of

from kvmsim import Kernel
from kvmsim.kernel.anon_inodes import VCPU_STATS, VM_STATS
from kvmsim.kernel.binary_stats import VCPU_STATS_DESC, VM_STATS_DESC
from kvmsim.uapi import (
    KVM_INTERRUPT,
    KVM_STATS_DESC,
    KVM_STATS_HEADER,
    KVM_STATS_NAME_SIZE,
    KVM_STATS_TYPE_INSTANT,
    KVM_STATS_TYPE_LOG_HIST,
    KVM_STATS_UNIT_BOOLEAN,
    KVM_STATS_UNIT_SECONDS,
)


def parse(k: Kernel, data: bytes) -> tuple[dict[str, int], str, list[dict[str, object]], bytes]:
    """The header, the id, the descriptors (with their names) and the data of a stats file."""
    bo = k.arch.byteorder
    header = KVM_STATS_HEADER.unpack(bo, data)
    stats_id = data[header["id_offset"] : header["id_offset"] + header["name_size"]].rstrip(b"\0").decode()
    entry = KVM_STATS_DESC.size + header["name_size"]
    descs: list[dict[str, object]] = []
    for i in range(header["num_desc"]):
        at = header["desc_offset"] + i * entry
        d: dict[str, object] = dict(KVM_STATS_DESC.unpack(bo, data[at:]))
        d["name"] = data[at + KVM_STATS_DESC.size : at + entry].rstrip(b"\0").decode()
        descs.append(d)
    return header, stats_id, descs, data[header["data_offset"] :]


@pytest.fixture(params=VM_HOSTS)
def guest(request: pytest.FixtureRequest) -> tuple[Kernel, int, int]:
    k = Kernel.from_profile(request.param)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    return k, vm, int(k.ioctl(vm, k.KVM_CREATE_VCPU, 3))


def test_a_vms_stats_file(guest: tuple[Kernel, int, int]) -> None:
    """kvm_vm_stats_header: the id right after the header, the descriptors after the id; Book3S's
    four (two generic counters, two instant page counts), u64s in the data, all 0."""
    k, vm, _ = guest
    fd = int(k.ioctl(vm, k.KVM_GET_STATS_FD, 0))
    assert k.current.link(fd) == VM_STATS.link and k.current.file_kind(fd) is VM_STATS
    header, stats_id, descs, data = parse(k, k.current.contents(fd))
    assert header == {"flags": 0, "name_size": KVM_STATS_NAME_SIZE, "num_desc": 4, "id_offset": 24,
                      "desc_offset": 24 + 48, "data_offset": 24 + 48 + 4 * 64}  # fmt: skip
    assert stats_id == f"kvm-{os.getpid()}"
    assert [d["name"] for d in descs] == [d.name for d in VM_STATS_DESC]
    assert [d["offset"] for d in descs] == [0, 8, 16, 24] and data == bytes(32)
    assert descs[2]["flags"] == KVM_STATS_TYPE_INSTANT


def test_a_vcpus_stats_file(guest: tuple[Kernel, int, int]) -> None:
    """The generic vcpu statistics (three 32-bucket log histograms of nanoseconds, an instant
    boolean) then Book3S's counters, each at its place in struct kvm_vcpu_stat."""
    k, _, vcpu = guest
    fd = int(k.ioctl(vcpu, k.KVM_GET_STATS_FD, 0))
    assert k.current.link(fd) == VCPU_STATS.link_of(3)
    header, stats_id, descs, data = parse(k, k.current.contents(fd))
    assert stats_id == f"kvm-{os.getpid()}/vcpu-3" and header["num_desc"] == len(VCPU_STATS_DESC) == 40
    hist = next(d for d in descs if d["name"] == "halt_wait_hist")
    assert (hist["size"], hist["exponent"], hist["flags"]) == (32, -9, KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS)
    blocking = next(d for d in descs if d["name"] == "blocking")
    assert blocking["flags"] == KVM_STATS_TYPE_INSTANT | KVM_STATS_UNIT_BOOLEAN
    assert blocking["offset"] == 8 * (7 + 3 * 32)  # after seven counters and three histograms
    assert len(data) == 8 * (7 + 3 * 32 + 1 + 29) and data == bytes(len(data))


def test_a_stats_file_reads_live(guest: tuple[Kernel, int, int]) -> None:
    """KVM_INTERRUPT queues an external interrupt (kvmppc_book3s_queue_irqprio: queue_intr++);
    UNSET dequeues without counting; a file opened before shows it."""
    k, _, vcpu = guest
    fd = int(k.ioctl(vcpu, k.KVM_GET_STATS_FD, 0))
    interrupt = KVM_INTERRUPT.request(k.arch)
    for irq in (5, 0xFFFFFFFF, 5):  # queue, KVM_INTERRUPT_SET, queue: three; never UNSET's
        k.ioctl(vcpu, interrupt, bytearray(irq.to_bytes(4, k.arch.byteorder)))
    k.ioctl(vcpu, interrupt, bytearray((0xFFFFFFFE).to_bytes(4, k.arch.byteorder)))  # KVM_INTERRUPT_UNSET
    _, _, descs, data = parse(k, k.current.contents(fd))
    at = int(next(d for d in descs if d["name"] == "queue_intr")["offset"])  # type: ignore[call-overload]
    assert int.from_bytes(data[at : at + 8], k.arch.byteorder) == 3


def test_the_argument_is_unread_and_a_stats_file_has_no_ioctls(guest: tuple[Kernel, int, int]) -> None:
    k, vm, vcpu = guest
    fd = int(k.ioctl(vm, k.KVM_GET_STATS_FD, 8))  # kvm_vm_ioctl's case reads no argument
    assert k.current.returns_fd(vcpu, k.KVM_GET_STATS_FD) and k.current.returns_fd(vm, k.KVM_GET_STATS_FD)
    assert errno_of(k.ioctl, fd, k.KVM_GET_STATS_FD, 0) == errno.ENOTTY  # kvm_vm_stats_fops: no .unlocked_ioctl
