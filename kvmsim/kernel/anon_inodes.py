"""The kinds of file the simulated kernel hands out (``/dev/kvm``, and the anon-inode files of
fs/anon_inodes.c that KVM makes), each a value: what ``/proc/PID/fd/N`` reads, what the VFS
answers of the operations its ``file_operations`` leave out, and whether its ``.mmap`` maps
pages.  The interception core makes each kind's placeholder from this table, the shim's
generated header carries it to the C, the lab's recordings are held to it.

What the VFS answers (measured on an x86 /dev/kvm and by the lab on every ppc64le kernel): read
and write without .read/.write are EINVAL (vfs_read: no FMODE_CAN_READ); pread/pwrite on
/dev/kvm, a device file (do_dentry_open gives FMODE_PREAD), reach that EINVAL too, on an anon
inode's file, without FMODE_PREAD, ESPIPE; lseek is the file's position where the fops have
.llseek = noop_llseek (/dev/kvm, a VM, a vcpu: 0; a stats file: where its reads got to), ESPIPE
where they have none (alloc_file: no FMODE_LSEEK); mmap without .mmap is ENODEV; poll without
.poll is DEFAULT_POLLMASK (readable and writable); fstat is the misc device 10:232 (its mode is
udev's to set), or the inode every anon_inode file shares."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import attrs

from ..uapi import (
    DEV_KVM,
    SPAPR_TCE_LINK,
    VCPU_LINK,
    VCPU_STATS_LINK,
    VFIO_LINK,
    VM_LINK,
    VM_STATS_LINK,
    XICS_LINK,
    XIVE_LINK,
)

# what a kind's placeholder is: a socket (no data), a memory file of pages the program maps and
# the simulated kernel shares, or a read-only memory file holding what the file reads
Backing = Literal["socket", "pages", "contents"]


@attrs.frozen
class FileKind:
    """One kind of file: ``name`` (what the lab's recordings key it by), ``code`` (the wire's:
    what the server says a placeholder is), ``link`` (``{id}`` for a vcpu's id), what each
    operation answers (``ops``: an errno name, a value, or what happened; the lab's prober reads
    a byte, then seeks), and what its placeholder is (``backing``)."""

    name: str
    code: int
    link: str
    ops: Mapping[str, str]
    backing: Backing = "socket"

    @property
    def mapped(self) -> bool:
        """Its .mmap maps pages the program and the simulated kernel share."""
        return self.backing == "pages"

    def link_of(self, file_id: int = 0) -> str:
        return self.link.format(id=file_id)


_ANON = {"read": "EINVAL", "write": "EINVAL", "pread": "ESPIPE", "pwrite": "ESPIPE", "poll": "IN|OUT",
         "fstat": "anon_inode"}  # fmt: skip

# kvm_chardev_ops: .unlocked_ioctl, .llseek = noop_llseek
DEV = FileKind(
    "dev", 1, DEV_KVM,
    {"read": "EINVAL", "write": "EINVAL", "pread": "EINVAL", "pwrite": "EINVAL", "lseek": "0", "mmap": "ENODEV",
     "poll": "IN|OUT", "fstat": "chr 10:232", "link": DEV_KVM},
)  # fmt: skip
# kvm_vm_fops: .unlocked_ioctl, .llseek = noop_llseek, .release
VM = FileKind("vm", 2, VM_LINK, {**_ANON, "lseek": "0", "mmap": "ENODEV", "link": VM_LINK})
# kvm_vcpu_fops: .mmap (kvm_vcpu_mmap: any length; a page past kvm_run's and the MMIO ring's faults),
# .llseek = noop_llseek, no .read/.write/.poll; its link has the vcpu's id
VCPU = FileKind(
    "vcpu", 3, VCPU_LINK, {**_ANON, "lseek": "0", "mmap": "mapped", "link": VCPU_LINK.format(id=0)}, "pages"
)
# kvm_spapr_tce_fops: .mmap (kvm_spapr_tce_fault: SIGBUS past the table's pages) and .release only
SPAPR_TCE = FileKind(
    "spapr-tce", 4, SPAPR_TCE_LINK, {**_ANON, "lseek": "ESPIPE", "mmap": "mapped", "link": SPAPR_TCE_LINK}, "pages"
)
# kvm_vm_stats_fops and kvm_vcpu_stats_fops: .read (kvm_stats_read), .llseek = noop_llseek (the
# position a read moved it to), .release; opened O_RDONLY with FMODE_PREAD: a write is EBADF, a
# pwrite ESPIPE (no FMODE_PWRITE)
_STATS = {**_ANON, "read": "1", "write": "EBADF", "pread": "1", "pwrite": "ESPIPE", "lseek": "1", "mmap": "ENODEV"}
VM_STATS = FileKind("vm-stats", 5, VM_STATS_LINK, {**_STATS, "link": VM_STATS_LINK}, "contents")
VCPU_STATS = FileKind("vcpu-stats", 6, VCPU_STATS_LINK, {**_STATS, "link": VCPU_STATS_LINK.format(id=0)}, "contents")

# kvm_device_fops (a KVM device's): .unlocked_ioctl, .release, .mmap (kvm_device_mmap: ENODEV
# where the ops have none, as XICS's and VFIO's); no .llseek
_DEVICE = {**_ANON, "lseek": "ESPIPE", "mmap": "ENODEV"}
XICS = FileKind("kvm-xics", 7, XICS_LINK, {**_DEVICE, "link": XICS_LINK})
VFIO = FileKind("kvm-vfio", 8, VFIO_LINK, {**_DEVICE, "link": VFIO_LINK})
XIVE = FileKind("kvm-xive", 9, XIVE_LINK, {**_DEVICE, "link": XIVE_LINK})  # XICS-on-XIVE's

FILE_KINDS: tuple[FileKind, ...] = (DEV, VM, VCPU, SPAPR_TCE, VM_STATS, VCPU_STATS, XICS, VFIO, XIVE)
BY_NAME: Mapping[str, FileKind] = MappingProxyType({k.name: k for k in FILE_KINDS})
BY_CODE: Mapping[int, FileKind] = MappingProxyType({k.code: k for k in FILE_KINDS})
# what each kind answers besides ioctl, by kind name: the table the lab's prober and `kvmsim
# record` ask a real kernel (kvmsim.user.probe.FILE_OPS), the shim and the supervisor answer
FILE_OPS: Mapping[str, Mapping[str, str]] = MappingProxyType({k.name: k.ops for k in FILE_KINDS})
