"""The interception core's placeholders (kvmsim.intercept.placeholder), one per kind of file
(kvmsim.kernel.anon_inodes): a socket, or for a kind whose .mmap maps pages a sealed memfd
the simulated file shares, released at its last reference (its lock gone)."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat

import pytest

from kvmsim import Kernel
from kvmsim.intercept import placeholder
from kvmsim.kernel.anon_inodes import DEV, SPAPR_TCE, VCPU, VCPU_STATS, VM
from kvmsim.kernel.book3s_64_vio import SpaprTceTable
from kvmsim.kernel.errors import KvmError
from kvmsim.kernel.usermem import AddressSpace
from kvmsim.uapi import KVM_CREATE_SPAPR_TCE_64, KVM_CREATE_SPAPR_TCE_64_STRUCT, KVM_INTERRUPT


@pytest.fixture
def table() -> placeholder.Placeholders:
    t = placeholder.Placeholders(Kernel.from_profile("qemu-nested-hv-p10"))
    yield t
    t.close()


def make_tce(table: placeholder.Placeholders, vm: int, liobn: int = 1) -> int:
    """KVM_CREATE_SPAPR_TCE_64 of 8K of TCEs (two 4K pages) on ``vm``, through the table."""
    mem = AddressSpace()
    k = table.kernel
    struct = KVM_CREATE_SPAPR_TCE_64_STRUCT.pack(k.arch.byteorder, {"liobn": liobn, "page_shift": 12, "size": 1024})
    addr = mem.map(4096, data=struct)
    with table.call(mem) as process:
        return process.sys_ioctl(vm, KVM_CREATE_SPAPR_TCE_64.request(k.arch), addr)


def sim_files(table: placeholder.Placeholders) -> tuple[int, int, int, int]:
    with table.call(AddressSpace()) as process:
        dev = process.open()
        vm = process.sys_ioctl(dev, table.kernel.KVM_CREATE_VM, 0)
        vcpu = process.sys_ioctl(vm, table.kernel.KVM_CREATE_VCPU, 0)
    return dev, vm, vcpu, make_tce(table, vm)


def test_each_kind_gets_its_placeholder_and_link(table: placeholder.Placeholders) -> None:
    dev, vm, vcpu, tce = sim_files(table)
    made = {sim: table.new(sim) for sim in (dev, vm, vcpu, tce)}
    try:
        kinds = {sim: table.of(os.fstat(fd)) for sim, fd in made.items()}
        assert {sim: p.kind for sim, p in kinds.items() if p} == {dev: DEV, vm: VM, vcpu: VCPU, tce: SPAPR_TCE}
        assert [kinds[s].link for s in (dev, vm, vcpu, tce)] == [  # type: ignore[union-attr]
            "/dev/kvm", "anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0", "anon_inode:kvm-spapr-tce"
        ]  # fmt: skip
        assert stat.S_ISSOCK(os.fstat(made[vm]).st_mode) and stat.S_ISREG(os.fstat(made[tce]).st_mode)
        assert os.fstat(made[tce]).st_size == 8192  # the TCEs' pages
        assert os.fstat(made[vcpu]).st_size == table.kernel.vcpu_mmap_size()  # kvm_run's
    finally:
        for fd in made.values():
            os.close(fd)


def test_a_stats_file_is_a_read_only_memory_file_kept_current(table: placeholder.Placeholders) -> None:
    """What kvm_stats_read reads, in a memory file the program can read and not write; a
    statistic that changes (KVM_INTERRUPT's queue_intr) shows in it at once."""
    _, _, vcpu, _ = sim_files(table)
    with table.call(AddressSpace()) as process:
        stats = process.sys_ioctl(vcpu, table.kernel.KVM_GET_STATS_FD, 0)
        before = process.contents(stats)
    fd = table.new(stats)
    try:
        assert table.of(os.fstat(fd)).kind is VCPU_STATS  # type: ignore[union-attr]
        assert os.pread(fd, len(before) + 1, 0) == before
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x")
        assert exc.value.errno == errno.EBADF
        mem = AddressSpace()
        k = table.kernel
        with table.call(mem) as process:
            process.sys_ioctl(
                vcpu, KVM_INTERRUPT.request(k.arch), mem.map(4096, data=(5).to_bytes(4, k.arch.byteorder))
            )
            after = process.contents(stats)
        assert after != before and os.pread(fd, len(after), 0) == after
    finally:
        os.close(fd)


def test_a_tce_tables_pages_are_the_placeholders(table: placeholder.Placeholders) -> None:
    """What the program writes through its mapping the simulated table holds, and back."""
    _, _, _, tce = sim_files(table)
    fd = table.new(tce)
    with table.call(AddressSpace()) as process:
        stt = process._file(tce)
    assert isinstance(stt, SpaprTceTable) and stt.pages is not None
    with mmap.mmap(fd, 8192) as theirs:
        theirs[4096:4104] = b"\x5a" * 8
        assert bytes(stt.pages[4096:4104]) == b"\x5a" * 8
        stt.pages[0] = 0xA5
        assert theirs[0] == 0xA5
    os.close(fd)


def test_a_mapped_placeholder_cannot_be_resized(table: placeholder.Placeholders) -> None:
    """Its seals: the server's own mapping of it cannot be made to fault."""
    _, _, vcpu, tce = sim_files(table)
    for sim in (vcpu, tce):
        fd = table.new(sim)
        for size in (0, 1 << 20):
            with pytest.raises(OSError) as exc:
                os.ftruncate(fd, size)
            assert exc.value.errno == errno.EPERM
        with pytest.raises(OSError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0)  # F_SEAL_SEAL: no seal comes off, none is added
        os.close(fd)


def test_a_mapped_file_is_released_at_its_last_reference(table: placeholder.Placeholders) -> None:
    """Its last fd closed (a dup, a child's copy count) and its last mapping gone: then the
    simulated file is closed (kvm_spapr_tce_release: the LIOBN free), not before."""
    _, vm, _, tce = sim_files(table)
    fd = table.new(tce)
    dup = os.dup(fd)
    os.close(fd)
    table.reap()
    assert len(table) == 1  # the dup holds it
    mapping = mmap.mmap(dup, 4096)
    os.close(dup)
    pid = os.fork()
    if pid == 0:  # a child with its copy of the mapping
        os._exit(0)
    os.waitpid(pid, 0)
    table.reap()
    assert len(table) == 1  # the mapping holds it
    vm_fd = table.new(vm)  # the program's VM: its calls go through the table, as a server's do
    mem = AddressSpace()
    k = table.kernel
    struct = KVM_CREATE_SPAPR_TCE_64_STRUCT.pack(k.arch.byteorder, {"liobn": 1, "page_shift": 12, "size": 1024})
    addr, key = mem.map(4096, data=struct), placeholder.identity(os.fstat(vm_fd))
    with pytest.raises(KvmError) as busy:
        table.ioctl(key, KVM_CREATE_SPAPR_TCE_64.request(k.arch), addr, mem)
    assert busy.value.errno == errno.EBUSY
    mapping.close()
    _, ret, creates, _ = table.ioctl(key, KVM_CREATE_SPAPR_TCE_64.request(k.arch), addr, mem)
    assert creates and ret >= 0  # a call that makes a file releases what was let go of first
    assert len(table) == 1  # the VM's placeholder alone
    os.close(vm_fd)
