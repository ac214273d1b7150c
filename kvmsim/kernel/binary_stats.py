"""The binary statistics files (virt/kvm/binary_stats.c, kvm_main.c's ``KVM_GET_STATS_FD``):
what ``kvm_stats_read`` reads of a VM's or a vcpu's ``kvm-vm-stats`` / ``kvm-vcpu-stats:N``
file: the header, the id string, the descriptors, the data.  The descriptors are Book3S's
(arch/powerpc/kvm/book3s.c: ``KVM_GENERIC_VM_STATS()`` and two page counters;
``KVM_GENERIC_VCPU_STATS()`` and the exit counters), in the order of their structs
(``struct kvm_vm_stat``, ``struct kvm_vcpu_stat``), so a descriptor's offset is its place in
the data.  No guest runs here: a statistic changes only where an ioctl changes it (KVM_INTERRUPT's
``queue_intr``), the others stay 0, as a new VM's or vcpu's are."""

from __future__ import annotations

import mmap

import attrs

from ..uapi import (
    KVM_STATS_BASE_POW10,
    KVM_STATS_DESC,
    KVM_STATS_HEADER,
    KVM_STATS_NAME_SIZE,
    KVM_STATS_TYPE_CUMULATIVE,
    KVM_STATS_TYPE_INSTANT,
    KVM_STATS_TYPE_LOG_HIST,
    KVM_STATS_UNIT_BOOLEAN,
    KVM_STATS_UNIT_NONE,
    KVM_STATS_UNIT_SECONDS,
    ByteOrder,
)
from .anon_inodes import FileKind

HALT_POLL_HIST_COUNT = 32  # linux/kvm_types.h


@attrs.frozen
class StatsDesc:
    """One ``struct kvm_stats_desc`` as a STATS_DESC_* macro makes it (its offset: the data's)."""

    name: str
    flags: int
    exponent: int = 0
    size: int = 1  # u64s
    bucket_size: int = 0


def _counter(name: str) -> StatsDesc:  # STATS_DESC_COUNTER
    return StatsDesc(name, KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10)


def _icounter(name: str) -> StatsDesc:  # STATS_DESC_ICOUNTER
    return StatsDesc(name, KVM_STATS_TYPE_INSTANT | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10)


def _time_nsec(name: str) -> StatsDesc:  # STATS_DESC_TIME_NSEC
    return StatsDesc(name, KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_SECONDS | KVM_STATS_BASE_POW10, -9)


def _loghist_time_nsec(name: str) -> StatsDesc:  # STATS_DESC_LOGHIST_TIME_NSEC
    flags = KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS | KVM_STATS_BASE_POW10
    return StatsDesc(name, flags, -9, HALT_POLL_HIST_COUNT)


# book3s.c's kvm_vm_stats_desc[]: KVM_GENERIC_VM_STATS(), then its two page counters
VM_STATS_DESC = (
    _counter("remote_tlb_flush"), _counter("remote_tlb_flush_requests"),
    _icounter("num_2M_pages"), _icounter("num_1G_pages"),
)  # fmt: skip
# book3s.c's kvm_vcpu_stats_desc[]: KVM_GENERIC_VCPU_STATS(), then the exits and Book3S's own
VCPU_STATS_DESC = (
    *map(_counter, ("halt_successful_poll", "halt_attempted_poll", "halt_poll_invalid", "halt_wakeup")),
    *map(_time_nsec, ("halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns")),
    *map(_loghist_time_nsec, ("halt_poll_success_hist", "halt_poll_fail_hist", "halt_wait_hist")),
    StatsDesc("blocking", KVM_STATS_TYPE_INSTANT | KVM_STATS_UNIT_BOOLEAN | KVM_STATS_BASE_POW10),  # IBOOLEAN
    *map(_counter, ("sum_exits", "mmio_exits", "signal_exits", "light_exits", "itlb_real_miss_exits",
                    "itlb_virt_miss_exits", "dtlb_real_miss_exits", "dtlb_virt_miss_exits", "syscall_exits",
                    "isi_exits", "dsi_exits", "emulated_inst_exits", "dec_exits", "ext_intr_exits",
                    "halt_successful_wait", "dbell_exits", "gdbell_exits", "ld", "st", "pf_storage", "pf_instruc",
                    "sp_storage", "sp_instruc", "queue_intr", "ld_slow", "st_slow", "pthru_all", "pthru_host",
                    "pthru_bad_aff")),
)  # fmt: skip


def stats_head(stats_id: str, descs: tuple[StatsDesc, ...], byteorder: ByteOrder) -> bytes:
    """What ``kvm_stats_read`` reads before the data: the header (kvm_vm/vcpu_stats_header: no
    flags, the id right after it, the descriptors after the id), the id (NUL-padded, as snprintf
    leaves it in the zeroed struct), each descriptor with its name (its offset: its data's)."""
    entry = KVM_STATS_DESC.size + KVM_STATS_NAME_SIZE
    id_offset = KVM_STATS_HEADER.size
    desc_offset = id_offset + KVM_STATS_NAME_SIZE
    data_offset = desc_offset + entry * len(descs)
    header = KVM_STATS_HEADER.pack(
        byteorder,
        {"flags": 0, "name_size": KVM_STATS_NAME_SIZE, "num_desc": len(descs), "id_offset": id_offset,
         "desc_offset": desc_offset, "data_offset": data_offset},
    )  # fmt: skip
    out = bytearray(header + stats_id.encode()[: KVM_STATS_NAME_SIZE - 1].ljust(KVM_STATS_NAME_SIZE, b"\0"))
    offset = 0
    for d in descs:
        fields = {"flags": d.flags, "exponent": d.exponent, "size": d.size, "offset": offset,
                  "bucket_size": d.bucket_size}  # fmt: skip
        out += KVM_STATS_DESC.pack(byteorder, fields) + d.name.encode().ljust(KVM_STATS_NAME_SIZE, b"\0")
        offset += 8 * d.size
    return bytes(out)


Pages = bytearray | mmap.mmap


class Stats:
    """``struct kvm_vm_stat`` / ``struct kvm_vcpu_stat``: the u64s its descriptors describe, all 0
    at creation, and the stats files' copies of them (an edge's memory file a program reads),
    kept equal as a statistic changes: a stats file reads them live, as kvm_stats_read does."""

    def __init__(self, stats_id: str, descs: tuple[StatsDesc, ...], byteorder: ByteOrder) -> None:
        self.head = stats_head(stats_id, descs, byteorder)
        self.byteorder = byteorder
        self._offsets: dict[str, int] = {}
        offset = 0
        for d in descs:
            self._offsets[d.name] = offset
            offset += 8 * d.size
        self.data = bytearray(offset)
        self._copies: list[Pages] = []  # each a whole file: head, then data

    def add(self, name: str, n: int = 1) -> None:
        """A counter goes up (``vcpu->stat.<name> += n``)."""
        at = self._offsets[name]
        value = (int.from_bytes(self.data[at : at + 8], self.byteorder) + n) % (1 << 64)
        self.data[at : at + 8] = value.to_bytes(8, self.byteorder)
        for copy in self._copies:
            copy[len(self.head) + at : len(self.head) + at + 8] = self.data[at : at + 8]

    def value(self, name: str) -> int:
        """``vcpu->stat.<name>`` now."""
        at = self._offsets[name]
        return int.from_bytes(self.data[at : at + 8], self.byteorder)

    def contents(self) -> bytes:
        """What the file reads from 0 to its end, now."""
        return self.head + bytes(self.data)

    def share(self, pages: Pages) -> None:
        """Keep ``pages`` (a whole file's bytes) equal to the file from now on."""
        pages[:] = self.contents()
        self._copies.append(pages)

    def unshare(self, pages: Pages) -> None:
        """No longer keep ``pages`` current (its file was released)."""
        self._copies = [c for c in self._copies if c is not pages]


@attrs.frozen
class StatsFile:
    """A ``kvm-vm-stats`` or ``kvm-vcpu-stats:<id>`` file (O_RDONLY, FMODE_PREAD): it reads its
    VM's or vcpu's statistics; its release only drops its VM's reference."""

    kind: FileKind
    file_id: int  # the vcpu's id (its link's); 0 for a VM's
    stats: Stats

    @property
    def link(self) -> str:
        return self.kind.link_of(self.file_id)


# kvm_create_vm(): the VM's id is "kvm-<pid>" of the task that made it (book3s.c's descriptors)
def vm_stats(creator_pid: int, byteorder: ByteOrder) -> Stats:
    return Stats(f"kvm-{creator_pid}", VM_STATS_DESC, byteorder)


# kvm_vcpu_init(): "kvm-<pid>/vcpu-<id>" of the task that made the vcpu
def vcpu_stats(creator_pid: int, vcpu_id: int, byteorder: ByteOrder) -> Stats:
    return Stats(f"kvm-{creator_pid}/vcpu-{vcpu_id}", VCPU_STATS_DESC, byteorder)
