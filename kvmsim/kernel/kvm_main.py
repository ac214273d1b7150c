"""virt/kvm/kvm_main.c: ``/dev/kvm`` and VM files, ``kvm_dev_ioctl``/``kvm_vm_ioctl``, and
per-process fd tables.

:class:`BootedKernel` is one booted kernel; each :class:`Process` has its own fd table and user
memory (a local :class:`~kvmsim.kernel.usermem.AddressSpace`, or a remote one served by the preload
shim), and the syscalls ``open``, ``close`` and ``sys_ioctl(fd, cmd, arg: int)``.  The
facade users call (``kvmsim.Kernel.ioctl`` with ``fcntl.ioctl``'s contract) is user-side code:
:class:`kvmsim.user.simulated.Kernel`, a :class:`BootedKernel` with a first process."""

from __future__ import annotations

import errno
import functools
import heapq
import mmap
import os
import threading
from collections.abc import Callable
from typing import Any, Literal, Protocol, Self

import attrs

from ..uapi import (
    DEFAULT_REVISION,
    DEV_KVM,
    GENERIC_CAPS,
    KVM_API_VERSION,
    KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
    KVM_CAP_HALT_POLL,
    KVM_CAP_NR_MEMSLOTS,
    KVM_COALESCED_MMIO_ZONE,
    KVM_CREATE_DEVICE,
    KVM_CREATE_DEVICE_STRUCT,
    KVM_CREATE_SPAPR_TCE,
    KVM_CREATE_SPAPR_TCE_64,
    KVM_CREATE_VCPU,
    KVM_DEVICE_ATTR,
    KVM_DIRTY_LOG,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
    KVM_GET_DEVICE_ATTR,
    KVM_GET_DIRTY_LOG,
    KVM_GET_FPU,
    KVM_GET_MP_STATE,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_STATS_FD,
    KVM_HAS_DEVICE_ATTR,
    KVM_INTERRUPT,
    KVM_INTERRUPT_UNSET,
    KVM_IRQ_LINE,
    KVM_IRQ_LINE_STATUS,
    KVM_PPC_COMPAT_CAPS_SIZE_VER0,
    KVM_REGISTER_COALESCED_MMIO,
    KVM_REGS,
    KVM_RUN,
    KVM_SET_DEVICE_ATTR,
    KVM_SET_FPU,
    KVM_SET_GUEST_DEBUG,
    KVM_SET_MP_STATE,
    KVM_SET_REGS,
    KVM_SET_SIGNAL_MASK,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_USER_MEMORY_REGION2,
    KVM_SREGS,
    KVM_TRANSLATE,
    KVM_UNREGISTER_COALESCED_MMIO,
    KVM_USERSPACE_MEMORY_REGION,
    KVM_USERSPACE_MEMORY_REGION2,
    KVMIO,
    SIGSET_SIZE,
    AbiRevision,
    Arch,
    ByteOrder,
    StructLayout,
    check_struct_size,
    explain_request,
    revision,
    unmodelled,
)
from . import coalesced_mmio, kconfig, memslot, profile
from .anon_inodes import DEV, VCPU, VCPU_STATS, VM, VM_STATS, FileKind
from .binary_stats import Stats, StatsFile, vcpu_stats, vm_stats
from .book3s import Book3sVcpu, EnableCapContext, dequeue_external, queue_external
from .book3s_64_vio import SpaprTceTable
from .errors import KvmError
from .kvm_device import KvmDeviceFile, KvmDeviceOps, create_device, device_attr
from .memslot import MemorySlot, MemslotLimits, Memslots
from .powerpc import PowerpcKvm, xics_on_xive, xive_enabled
from .profile import Host
from .usermem import AddressSpace, Fault, UserAccess

NR_OPEN_DEFAULT = 1024  # the default RLIMIT_NOFILE soft limit

# kvm_vm_ioctl_create_vcpu()'s duplicate-id check, by the revision's rules: Linux 7.3 looks
# before the arch creates the vcpu; the kernels before it (and the drafts, posted on them)
# after, so there a duplicate id on an ISA 3.0 HV VM is its virtual core's collision, EINVAL
# (the lab's Linux 7.2 recording), and EEXIST elsewhere.
EEXIST_BEFORE_ARCH: dict[str, bool] = {"linux-7.3": True, "none": False, "v5": False, "v4": False}


class KvmArch(Protocol):
    """What kvm_main calls into: PowerpcKvm or X86Kvm."""

    loaded: bool  # kvm.ko is loaded: /dev/kvm exists
    user_mem_slots: int  # KVM_USER_MEM_SLOTS

    @property
    def loaded_modules(self) -> list[str]: ...
    def check_extension(self, ext: int, vm: Any) -> int: ...
    @property
    def device_ops(self) -> dict[int, KvmDeviceOps]: ...
    def init_vm(self, type_: int) -> object: ...
    def vcpu_mmap_size(self) -> int: ...
    def dev_ioctl(self, request: int, arg: int) -> int: ...
    def vm_ioctl(self, vm: Any, request: int, argp: int, mem: UserAccess, getfd: Callable[[Any], int]) -> int: ...
    def irq_line(self, vm: Any, irq: int, level: int) -> int: ...


class VcpuArch(Protocol):
    """What kvm_main calls into for a vcpu (powerpc's; x86 vcpus are not modelled)."""

    @property
    def max_vcpu_ids(self) -> int: ...
    def vcpu_create(self, vm: Any, vcpu_id: int) -> Any: ...
    def vcpu_ioctl(self, vcpu: Any, request: int, argp: int, mem: UserAccess, ctx: EnableCapContext) -> int: ...
    def vcpu_run(self, vcpu: Any, run: memoryview, printk: Callable[[str], None]) -> int: ...
    def get_regs(self, vcpu: Any) -> dict[str, int]: ...
    def set_regs(self, vcpu: Any, values: dict[str, int]) -> None: ...
    def get_sregs(self, vcpu: Any) -> dict[str, int]: ...
    def set_sregs(self, vcpu: Any, values: dict[str, int]) -> None: ...
    def get_mpstate(self, vcpu: Any) -> int: ...
    def set_mpstate(self, vcpu: Any, mp_state: int) -> None: ...
    def translate(self, vcpu: Any, tr: bytes) -> bytes: ...
    def set_guest_debug(self, vcpu: Any, dbg: bytes) -> None: ...
    def get_fpu(self, vcpu: Any) -> bytes: ...
    def set_fpu(self, vcpu: Any, fpu: bytes) -> None: ...
    def check_masked_read(self, addr: int, what: str) -> None: ...
    def copy_from_user(self, mem: UserAccess, addr: int, size: int, what: str) -> bytes: ...
    def vm_enable_cap(self, vm: Any, cap: int, flags: int, args: tuple[int, ...]) -> int: ...
    @property
    def memslot_limits(self) -> MemslotLimits: ...
    def prepare_memory_region(
        self, vm: Any, new: MemorySlot | None, old: MemorySlot | None, change: memslot.Change
    ) -> None: ...
    def get_dirty_log(self, vm: Any, memslots: Memslots, log_slot: int) -> bytes: ...


@attrs.frozen
class DevKvmFile:
    """An open ``/dev/kvm``."""

    kind = DEV
    link = DEV.link


VcpuPages = bytearray | mmap.mmap  # a vcpu's own bytes, or pages shared with a program (an edge's)


@attrs.define(eq=False)
class Vcpu:
    """``struct kvm_vcpu``: its id, the pages a vcpu fd maps (``kvm_run``, then the MMIO
    ring's with CONFIG_KVM_MMIO: ``mapping``, of KVM_GET_VCPU_MMAP_SIZE), and the arch's part."""

    vcpu_id: int
    mapping: VcpuPages
    run: memoryview  # struct kvm_run: the first page of the mapping
    arch: Any
    stats: Stats  # vcpu->stat, its id "kvm-<pid>/vcpu-<id>" of the task that made it


@attrs.define(eq=False)
class Kvm:
    """``struct kvm``'s generic part: the arch's VM, its vcpus by id, how many were made, and its
    memory slots."""

    arch: object
    vcpus: dict[int, Vcpu] = attrs.Factory(dict)
    created_vcpus: int = 0
    memslots: Memslots = attrs.Factory(Memslots)
    stats: Stats | None = None  # kvm->stat, its id "kvm-<pid>" of the task that made the VM
    coalesced_zones: list[coalesced_mmio.Zone] = attrs.Factory(list)  # kvm->coalesced_zones


@attrs.frozen
class VmFile:
    """An anon-inode ``kvm-vm`` file; it holds its VM, not the /dev/kvm fd it came from."""

    kind = VM
    link = VM.link
    kvm: Kvm

    @property
    def vm(self) -> object:
        return self.kvm.arch


@attrs.frozen
class VcpuFile:
    """An anon-inode ``kvm-vcpu:<id>`` file: it holds its vcpu and that vcpu's VM."""

    kind = VCPU
    kvm: Kvm
    vcpu: Vcpu

    @property
    def link(self) -> str:
        return VCPU.link_of(self.vcpu.vcpu_id)


File = DevKvmFile | VmFile | VcpuFile | SpaprTceTable | StatsFile | KvmDeviceFile


@attrs.frozen
class ForeignFile:
    """What an edge finds behind a program's fd that is none of the simulated kernel's files (its
    stdin, a socket, a file of this machine's): open, and no KVM device (fget's answer for it)."""


FOREIGN = ForeignFile()


class Process:
    """A task as the kernel sees it: an fd table and an address space."""

    def __init__(self, kernel: BootedKernel, memory: UserAccess, *, max_files: int = NR_OPEN_DEFAULT) -> None:
        self.kernel, self.memory = kernel, memory
        self.max_files = max_files  # RLIMIT_NOFILE: EMFILE past it
        # task_pid_nr(current): this process's own pid in-process; an edge sets its caller's per call
        self.pid = os.getpid()
        self._files: dict[int, File] = {}
        # fget() of an fd an ioctl's argument names: this table's (the caller's fds are its own), or
        # an edge's (the program's fds are placeholders: which file each is, FOREIGN, None if closed)
        self.resolve_fd: Callable[[int], File | ForeignFile | None] | None = None
        self.new_fds: list[int] = []  # what the last call installed (anon_inode_getfd)
        self._released: list[int] = []  # a heap of closed fds below _next_fd
        self._next_fd = 3
        self._lock = threading.Lock()

    # -- the fd table ----------------------------------------------------

    # alloc_fd(): the lowest free descriptor, in O(log n)
    def _install(self, file: File) -> int:
        with self._lock:
            if len(self._files) >= self.max_files:
                raise KvmError(errno.EMFILE, f"{self.max_files} files open (RLIMIT_NOFILE)")
            if self._released:
                fd = heapq.heappop(self._released)
            else:
                fd, self._next_fd = self._next_fd, self._next_fd + 1
            self._files[fd] = file
            self.new_fds.append(fd)
            return fd

    def fget(self, fd: int) -> File | ForeignFile | None:
        """The file the caller's ``fd`` is (None: not open): what fget() finds."""
        if self.resolve_fd is not None:
            return self.resolve_fd(fd)
        return self._files.get(fd)

    def file_at(self, sim_fd: int) -> File | None:
        """This table's file ``sim_fd`` (an edge's placeholder names it)."""
        return self._files.get(sim_fd)

    def _file(self, fd: int) -> File:
        file = self._files.get(fd)
        if file is None:
            raise KvmError(errno.EBADF, f"fd {fd} is not open")
        return file

    def open(self, path: str = DEV_KVM, flags: int = os.O_RDWR) -> int:
        if path != DEV_KVM:
            raise KvmError(errno.ENOENT, f"{path}: no such file")
        if not self.kernel.kvm.loaded:
            raise KvmError(errno.ENOENT, f"{path}: no such file (no KVM module loaded)")
        return self._install(DevKvmFile())

    def close(self, fd: int) -> None:
        """close(2); the file's release where this was its last reference (a TCE table's)."""
        with self._lock:
            file = self._files.pop(fd, None)
            if file is None:
                raise KvmError(errno.EBADF, f"fd {fd} is not open")
            heapq.heappush(self._released, fd)
        if isinstance(file, SpaprTceTable | KvmDeviceFile) and file not in self._files.values():
            file.release()  # its last reference: the file's .release

    def is_dev_kvm(self, fd: int) -> bool:
        return isinstance(self._files.get(fd), DevKvmFile)

    def returns_fd(self, fd: int, cmd: int) -> bool:
        """Does ``cmd`` on ``fd`` answer with a new fd of this process (``anon_inode_getfd``)?
        KVM_CREATE_VM on /dev/kvm, KVM_CREATE_VCPU, KVM_CREATE_SPAPR_TCE(_64) and
        KVM_GET_STATS_FD on a VM, KVM_GET_STATS_FD on a vcpu: what an edge that mirrors fds (the
        shim, the fake fcntl) must make a descriptor for."""
        file = self._files.get(fd)
        if isinstance(file, DevKvmFile):
            return cmd == self.kernel.KVM_CREATE_VM
        if isinstance(file, VcpuFile):
            return cmd == self.kernel.KVM_GET_STATS_FD and self.kernel.models_vcpus
        return isinstance(file, VmFile) and cmd in self.kernel.CREATES_FILE

    def fd_field(self, fd: int, cmd: int) -> int | None:
        """Where ``cmd`` on ``fd`` puts the new fd when it is not the return value: the offset of
        the u32 in its argument (KVM_CREATE_DEVICE's ``struct kvm_create_device.fd``; the call
        returns 0).  An edge writes the program's own number there."""
        file = self._files.get(fd)
        return 4 if isinstance(file, VmFile) and cmd == self.kernel.KVM_CREATE_DEVICE else None

    def file_kind(self, fd: int) -> FileKind:
        """Which kind of file ``fd`` is (its file operations, its link: kvmsim.kernel.anon_inodes)."""
        return self._file(fd).kind

    def link(self, fd: int) -> str:
        """What ``/proc/self/fd/<fd>`` reads: /dev/kvm, anon_inode:kvm-vm, anon_inode:kvm-vcpu:<id>, ..."""
        return self._file(fd).link

    def kind(self, fd: int) -> str:
        """The name of ``fd``'s kind: "dev", "vm", "vcpu", ... (anon_inodes.FILE_OPS's keys)."""
        return self._file(fd).kind.name

    def fds(self) -> dict[int, str]:
        """The open fds and what they are (``/proc/self/fd``)."""
        return {fd: self.link(fd) for fd in list(self._files)}

    def file_id(self, fd: int) -> int:
        """What a kind's link is formatted with: a vcpu's id; 0 for any other file."""
        file = self._file(fd)
        return file.vcpu.vcpu_id if isinstance(file, VcpuFile) else 0

    def contents(self, fd: int) -> bytes:
        """What a file whose placeholder holds what it reads reads (a stats file's), from 0."""
        file = self._file(fd)
        if not isinstance(file, StatsFile):
            raise KvmError(errno.EINVAL, f"fd {fd} ({file.link}) is not one to read")
        return file.stats.contents()

    def mapped_size(self, fd: int) -> int:
        """The bytes an edge's memory file of ``fd`` holds: what a file whose ``.mmap`` maps pages
        can map (a vcpu's KVM_GET_VCPU_MMAP_SIZE, a TCE table's pages), what a stats file reads;
        EINVAL for any other file."""
        file = self._file(fd)
        if isinstance(file, VcpuFile):
            return len(file.vcpu.mapping)
        if isinstance(file, SpaprTceTable):
            return file.mapped_size
        if isinstance(file, StatsFile):  # what an edge's memory file holds of it
            return len(file.stats.contents())
        raise KvmError(errno.EINVAL, f"fd {fd} ({file.link}) maps no pages")

    def share_mapping(self, fd: int, pages: VcpuPages) -> None:
        """Make ``pages`` (an edge's shared memory: a placeholder's memfd, mapped) the pages
        file ``fd`` maps, with what they held so far."""
        file = self._file(fd)
        if len(pages) != self.mapped_size(fd):
            raise KvmError(errno.EINVAL, f"fd {fd} ({file.link}) maps {self.mapped_size(fd)} bytes, not {len(pages)}")
        if isinstance(file, VcpuFile):
            vcpu = file.vcpu
            pages[:] = bytes(vcpu.mapping)
            vcpu.mapping, vcpu.run = pages, memoryview(pages)[: self.kernel.host.page_size]
        elif isinstance(file, SpaprTceTable):
            if file.pages is not None:
                pages[:] = file.pages[: len(pages)]
            file.pages = pages
        elif isinstance(file, StatsFile):
            file.stats.share(pages)

    def unshare_mapping(self, fd: int, pages: VcpuPages) -> bool:
        """``pages`` no longer stand for file ``fd`` (its edge let go of them): True where they
        were a copy (a stats file's), which may go; a vcpu's or a TCE table's pages are the
        file's own and stay."""
        file = self._file(fd)
        if isinstance(file, StatsFile):
            file.stats.unshare(pages)
            return True
        return False

    # kvm_vcpu_mmap() and kvm_vcpu_fault(), kvm_spapr_tce_mmap() and kvm_spapr_tce_fault(): a vcpu
    # fd maps its kvm_run page (and the MMIO ring's), a TCE table its TCEs' pages; any other of
    # these files has no .mmap (ENODEV).  In-process the mapping is the file's own bytes: what the
    # kernel writes there (exit_reason, ...) the caller sees.
    def mmap(self, fd: int, length: int, pgoff: int = 0) -> memoryview:
        file = self._file(fd)
        if not file.kind.mapped:
            raise KvmError(errno.ENODEV, f"fd {fd} ({file.link}) has no mmap")
        size, page = self.mapped_size(fd), self.kernel.host.page_size
        start = pgoff * page
        if length <= 0 or start + length > size:
            raise KvmError(
                errno.ENOTTY,
                f"not modelled: a mapping of {length} bytes at page {pgoff} (the file maps "
                f"{size} bytes; a real one would SIGBUS on the pages past them)",
            )
        if isinstance(file, VcpuFile):
            return memoryview(file.vcpu.mapping)[start : start + length]
        assert isinstance(file, SpaprTceTable)
        if file.pages is None:  # kvm_spapr_get_tce_page(): zeroed pages as they are touched
            file.pages = mmap.mmap(-1, size)
        return memoryview(file.pages)[start : start + length]

    # -- ioctl(2) ------------------------------------------------------------

    def sys_ioctl(self, fd: int, cmd: int, arg: int) -> int:
        """``ioctl(2)`` with the raw unsigned-long argument (a user address for pointers)."""
        self.new_fds = []
        file = self._file(fd)
        vfs = self.kernel.VFS_IOCTLS.get(cmd)
        if vfs is not None:  # do_vfs_ioctl(): before the driver sees it
            if vfs in ("FIONBIO", "FIOASYNC"):
                try:
                    self.memory.copy_from_user(arg, 4)  # get_user(int, argp)
                except Fault:
                    raise KvmError(errno.EFAULT, f"{vfs}: bad argument pointer {arg:#x}") from None
            return 0
        if isinstance(file, DevKvmFile):
            return self.kvm_dev_ioctl(cmd, arg)
        if isinstance(file, VcpuFile):
            return self.kvm_vcpu_ioctl(file, cmd, arg)
        if isinstance(file, SpaprTceTable | StatsFile):  # vfs_ioctl(): no .unlocked_ioctl
            raise KvmError(errno.ENOTTY, f"{file.link} has no ioctls")
        if isinstance(file, KvmDeviceFile):
            return self.kvm_device_ioctl(file, cmd, arg)
        return self.kvm_vm_ioctl(file, cmd, arg)

    # kvm_dev_ioctl()
    def kvm_dev_ioctl(self, cmd: int, arg: int) -> int:
        k = self.kernel
        if cmd == k.KVM_GET_API_VERSION:
            if arg:
                raise KvmError(errno.EINVAL, "KVM_GET_API_VERSION takes no argument")
            return KVM_API_VERSION
        if cmd == k.KVM_CREATE_VM:
            vm = k.kvm.init_vm(arg)
            return self._install(VmFile(Kvm(vm, stats=vm_stats(self.pid, k.arch.byteorder))))
        if cmd == k.KVM_CHECK_EXTENSION:
            return k.check_extension(arg, None)
        if cmd == k.KVM_GET_VCPU_MMAP_SIZE:
            if arg:
                raise KvmError(errno.EINVAL, "KVM_GET_VCPU_MMAP_SIZE takes no argument")
            return k.vcpu_mmap_size()
        try:
            return k.kvm.dev_ioctl(cmd, arg)
        except KvmError as exc:
            raise _explained(exc, cmd, k, "dev") from None

    # kvm_vm_ioctl()
    def kvm_vm_ioctl(self, file: VmFile, cmd: int, arg: int) -> int:
        k = self.kernel
        if cmd == k.KVM_CREATE_VCPU and k.models_vcpus:
            return self.kvm_vm_ioctl_create_vcpu(file.kvm, arg)
        if cmd == k.KVM_ENABLE_CAP and k.vcpu_arch is not None:
            try:
                return self.kvm_vm_ioctl_enable_cap_generic(file.vm, arg)
            except KvmError as exc:
                raise _explained(exc, cmd, k, "vm", file.vm) from None
        if cmd == k.KVM_CHECK_EXTENSION:
            return k.check_extension(arg, file.vm)
        if cmd in k.SET_USER_MEMORY_REGIONS and k.vcpu_arch is not None:
            return self.kvm_vm_ioctl_set_user_memory_region(file.kvm, cmd == k.SET_USER_MEMORY_REGIONS[0], arg)
        if cmd in k.IRQ_LINES:
            return self.kvm_vm_ioctl_irq_line(file.vm, cmd == k.IRQ_LINES[1], arg)
        if cmd in k.COALESCED_MMIO and k.config.kvm_mmio:
            return self.kvm_vm_ioctl_coalesced_mmio(file.kvm, cmd == k.COALESCED_MMIO[0], arg)
        if cmd == k.KVM_GET_DIRTY_LOG and k.vcpu_arch is not None:
            return self.kvm_vm_ioctl_get_dirty_log(file.kvm, arg)
        if cmd == k.KVM_CREATE_DEVICE:
            return self.kvm_vm_ioctl_create_device(file.kvm, arg)
        if cmd == k.KVM_GET_STATS_FD and k.models_vcpus:  # kvm_vm_ioctl_get_stats_fd() (powerpc's descriptors)
            assert file.kvm.stats is not None
            return self._install(StatsFile(VM_STATS, 0, file.kvm.stats))
        try:
            return k.kvm.vm_ioctl(file.vm, cmd, arg, self.memory, self._install)
        except KvmError as exc:
            raise _explained(exc, cmd, k, "vm", file.vm) from None

    # kvm_vm_ioctl()'s KVM_IRQ_LINE(_STATUS): copy_from_user, the arch's kvm_vm_ioctl_irq_line(),
    # then _STATUS's copy_to_user of the struct with the line's status
    def kvm_vm_ioctl_irq_line(self, vm: object, status: bool, arg: int) -> int:
        k, bo = self.kernel, self.kernel.arch.byteorder
        name = "KVM_IRQ_LINE_STATUS" if status else "KVM_IRQ_LINE"
        what = f"{name}: struct kvm_irq_level"
        if k.vcpu_arch is not None:  # powerpc's copy_from_user (its masked address)
            raw = k.vcpu_arch.copy_from_user(self.memory, arg, KVM_IRQ_LINE.size, what)
        else:
            try:
                raw = self.memory.copy_from_user(arg, KVM_IRQ_LINE.size)
            except Fault:
                raise KvmError(errno.EFAULT, f"{what} at {arg:#x}: unmapped") from None
        line = k.kvm.irq_line(vm, int.from_bytes(raw[:4], bo), int.from_bytes(raw[4:], bo))
        if status:
            self.copy_to_user(arg, line.to_bytes(4, bo, signed=True) + raw[4:], what)
        return 0

    # kvm_vm_ioctl()'s KVM_(UN)REGISTER_COALESCED_MMIO: copy_from_user of the zone, then coalesced_mmio.c
    def kvm_vm_ioctl_coalesced_mmio(self, kvm: Kvm, register: bool, arg: int) -> int:
        what = "KVM_REGISTER_COALESCED_MMIO" if register else "KVM_UNREGISTER_COALESCED_MMIO"
        raw = self.copy_from_user(arg, KVM_COALESCED_MMIO_ZONE.size, f"{what}: struct kvm_coalesced_mmio_zone")
        zone = coalesced_mmio.Zone(**KVM_COALESCED_MMIO_ZONE.unpack(self.kernel.arch.byteorder, raw))
        return (coalesced_mmio.register if register else coalesced_mmio.unregister)(kvm.coalesced_zones, zone)

    # kvm_vm_ioctl()'s KVM_GET_DIRTY_LOG: copy_from_user, then the arch's kvm_vm_ioctl_get_dirty_log(),
    # then its bitmap copied to the struct's pointer
    def kvm_vm_ioctl_get_dirty_log(self, kvm: Kvm, arg: int) -> int:
        k, arch = self.kernel, self.kernel.vcpu_arch
        assert arch is not None
        raw = arch.copy_from_user(self.memory, arg, KVM_DIRTY_LOG.size, "KVM_GET_DIRTY_LOG: struct kvm_dirty_log")
        log = KVM_DIRTY_LOG.unpack(k.arch.byteorder, raw)
        bitmap = arch.get_dirty_log(kvm.arch, kvm.memslots, log["slot"])
        what = f"KVM_GET_DIRTY_LOG: the slot's {len(bitmap)}-byte bitmap"
        return self.copy_to_user(log["dirty_bitmap"], bitmap, what)

    # kvm_vm_ioctl()'s KVM_CREATE_DEVICE: copy_from_user, kvm_ioctl_create_device() (the fd installed
    # by anon_inode_getfd), copy_to_user of the struct with it (a fault leaves the fd installed)
    def kvm_vm_ioctl_create_device(self, kvm: Kvm, arg: int) -> int:
        k = self.kernel
        what = "KVM_CREATE_DEVICE: struct kvm_create_device"
        cd = KVM_CREATE_DEVICE_STRUCT.unpack(k.arch.byteorder, self.copy_from_user(arg, 12, what))
        try:
            dev = create_device(k.kvm.device_ops, kvm.arch, cd["type"], cd["flags"])
        except KvmError as exc:
            raise _explained(exc, k.KVM_CREATE_DEVICE, k, "vm", kvm.arch) from None
        if dev is not None:
            cd["fd"] = self._install(KvmDeviceFile(dev))
        return self.copy_to_user(arg, KVM_CREATE_DEVICE_STRUCT.pack(k.arch.byteorder, cd), what)

    # kvm_device_ioctl(): the attribute ioctls (kvm_device_ioctl_attr: no accessor is EPERM, then the
    # copy), any other the ops' .ioctl (none here: ENOTTY)
    def kvm_device_ioctl(self, file: KvmDeviceFile, cmd: int, arg: int) -> int:
        k = self.kernel
        which = k.DEVICE_ATTR_IOCTLS.get(cmd)
        if which is None:
            raise KvmError(errno.ENOTTY, f"{file.link}: no ioctl {cmd:#x} (its ops have no .ioctl)")
        bo = k.arch.byteorder

        def copy_attr() -> dict[str, int]:
            what = f"{which.upper().replace('_', ' ')}: struct kvm_device_attr"
            return KVM_DEVICE_ATTR.unpack(bo, self.copy_from_user(arg, KVM_DEVICE_ATTR.size, what))

        return device_attr(file.dev, which, copy_attr, _AttrAccess(self, bo))

    def copy_from_user(self, arg: int, size: int, what: str) -> bytes:
        """The arch's copy_from_user (powerpc's masks the address), or EFAULT naming ``what``."""
        arch = self.kernel.vcpu_arch
        if arch is not None:
            return arch.copy_from_user(self.memory, arg, size, what)
        try:
            return self.memory.copy_from_user(arg, size)
        except Fault:
            raise KvmError(errno.EFAULT, f"{what} at {arg:#x}: unmapped") from None

    def copy_to_user(self, arg: int, data: bytes, what: str) -> int:
        """copy_to_user into the caller's memory: 0, or EFAULT naming ``what``."""
        try:
            self.memory.copy_to_user(arg, data)
        except Fault:
            raise KvmError(errno.EFAULT, f"{what}: cannot write it at {arg:#x}") from None
        return 0

    # kvm_vm_ioctl()'s KVM_ENABLE_CAP: copy_from_user, then kvm_vm_ioctl_enable_cap_generic's own
    # cases (HALT_POLL; the dirty rings, which a build without them refuses), then the arch's
    def kvm_vm_ioctl_enable_cap_generic(self, vm: object, arg: int) -> int:
        k, arch = self.kernel, self.kernel.vcpu_arch
        assert arch is not None
        raw = arch.copy_from_user(self.memory, arg, KVM_ENABLE_CAP_STRUCT.size, "KVM_ENABLE_CAP: struct kvm_enable_cap")
        cap = KVM_ENABLE_CAP_STRUCT.unpack(k.arch.byteorder, raw)
        number, flags, args = cap["cap"], cap["flags"], tuple(cap[f"arg{i}"] for i in range(4))
        if number == KVM_CAP_HALT_POLL:
            if flags or args[0] > 0xFFFFFFFF:
                raise KvmError(errno.EINVAL, "KVM_ENABLE_CAP(KVM_CAP_HALT_POLL): flags set or more than a u32 of ns")
            return 0
        if number in (KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) and not k.check_extension(number, vm):
            raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP({number}): this build has no dirty ring")
        return arch.vm_enable_cap(vm, number, flags, args)

    # kvm_vm_ioctl()'s KVM_SET_USER_MEMORY_REGION(2): the struct (v1's zero-extended), v1's flags,
    # then kvm_vm_ioctl_set_memory_region()
    def kvm_vm_ioctl_set_user_memory_region(self, kvm: Kvm, v1: bool, arg: int) -> int:
        arch = self.kernel.vcpu_arch
        assert arch is not None
        layout = KVM_USERSPACE_MEMORY_REGION if v1 else KVM_USERSPACE_MEMORY_REGION2
        name = "KVM_SET_USER_MEMORY_REGION" if v1 else "KVM_SET_USER_MEMORY_REGION2"
        raw = arch.copy_from_user(self.memory, arg, layout.size, f"{name}: struct {layout.name}")
        mem = dict.fromkeys(KVM_USERSPACE_MEMORY_REGION2.fields, 0) | layout.unpack(self.kernel.arch.byteorder, raw)
        if v1 and mem["flags"] & ~memslot.SET_USER_MEMORY_REGION_V1_FLAGS:
            raise KvmError(errno.EINVAL, f"{name}: flags {mem['flags']:#x} beyond LOG_DIRTY_PAGES and READONLY")
        prepare = functools.partial(arch.prepare_memory_region, kvm.arch)
        return memslot.kvm_vm_ioctl_set_memory_region(kvm.memslots, mem, arch.memslot_limits, prepare)

    # kvm_vm_ioctl_create_vcpu(), in its order of checks
    def kvm_vm_ioctl_create_vcpu(self, kvm: Kvm, vcpu_id: int) -> int:
        k, vcpus = self.kernel, self.kernel.vcpu_arch
        assert vcpus is not None
        if vcpu_id >= vcpus.max_vcpu_ids:
            raise KvmError(
                errno.EINVAL, f"KVM_CREATE_VCPU: id {vcpu_id} is not below KVM_MAX_VCPU_IDS ({vcpus.max_vcpu_ids})"
            )
        if kvm.created_vcpus >= k.host.kvm_max_vcpus:  # kvm->max_vcpus: KVM_MAX_VCPUS
            raise KvmError(
                errno.EINVAL, f"KVM_CREATE_VCPU: the VM has its {k.host.kvm_max_vcpus} vcpus (KVM_MAX_VCPUS)"
            )
        early = EEXIST_BEFORE_ARCH[k.rev.rules]
        if early and vcpu_id in kvm.vcpus:
            raise KvmError(errno.EEXIST, f"KVM_CREATE_VCPU: vcpu {vcpu_id} exists")
        arch = vcpus.vcpu_create(kvm.arch, vcpu_id)  # kvm_arch_vcpu_precreate is 0 on powerpc
        if not early and vcpu_id in kvm.vcpus:
            raise KvmError(errno.EEXIST, f"KVM_CREATE_VCPU: vcpu {vcpu_id} exists")
        mapping = bytearray(k.vcpu_mmap_size())
        stats = vcpu_stats(self.pid, vcpu_id, k.arch.byteorder)
        vcpu = Vcpu(vcpu_id, mapping, memoryview(mapping)[: k.host.page_size], arch, stats)
        if isinstance(arch, Book3sVcpu):
            arch.stat = stats
        fd = self._install(VcpuFile(kvm, vcpu))  # create_vcpu_fd(); its failure unwinds the vcpu
        kvm.created_vcpus += 1
        kvm.vcpus[vcpu_id] = vcpu
        return fd

    # kvm_vcpu_ioctl()'s cases that copy a struct out (kzalloc, the arch's get, copy_to_user)
    # or in (memdup_user, the arch's set)
    def _vcpu_struct_ioctl(self, vcpu: Any, cmd: int, arg: int, name: str, layout: StructLayout, out: bool) -> int:
        vcpus, bo = self.kernel.vcpu_arch, self.kernel.arch.byteorder
        assert vcpus is not None
        get, put = (vcpus.get_regs, vcpus.set_regs) if layout is KVM_REGS else (vcpus.get_sregs, vcpus.set_sregs)
        if out:
            return self.copy_to_user(arg, layout.pack(bo, get(vcpu)), f"{name}: struct {layout.name}")
        raw = vcpus.copy_from_user(self.memory, arg, layout.size, f"{name}: struct {layout.name}")  # memdup_user()
        put(vcpu, layout.unpack(bo, raw))
        return 0

    # powerpc's KVM_INTERRUPT: copy_from_user, then kvm_vcpu_ioctl_interrupt() (UNSET dequeues the
    # external interrupt, anything else queues one and kicks the vcpu: always 0)
    def _vcpu_interrupt(self, vcpu: Vcpu, arg: int) -> int:
        vcpus = self.kernel.vcpu_arch
        assert vcpus is not None
        raw = vcpus.copy_from_user(self.memory, arg, 4, "KVM_INTERRUPT: struct kvm_interrupt")
        irq = int.from_bytes(raw, self.kernel.arch.byteorder)
        if irq == KVM_INTERRUPT_UNSET:
            dequeue_external(vcpu.arch)
        else:  # kvmppc_book3s_queue_irqprio(): vcpu->stat.queue_intr++
            queue_external(vcpu.arch)
        return 0

    # kvm_vcpu_ioctl()'s other generic cases, in its order: what each copies in, the arch's
    # answer, what it copies out (powerpc's answers: powerpc.py); None: not one of them
    def _vcpu_generic(self, vcpu: Any, cmd: int, arg: int) -> int | None:
        k, vcpus = self.kernel, self.kernel.vcpu_arch
        assert vcpus is not None

        def copy_in(size: int, what: str, at: int = arg) -> bytes:
            return vcpus.copy_from_user(self.memory, at, size, what)

        bo = k.arch.byteorder
        if cmd == k.KVM_GET_MP_STATE:  # the arch's state, then copy_to_user
            return self.copy_to_user(
                arg, vcpus.get_mpstate(vcpu).to_bytes(4, bo), "KVM_GET_MP_STATE: struct kvm_mp_state"
            )
        if cmd == k.KVM_SET_MP_STATE:
            vcpus.set_mpstate(vcpu, int.from_bytes(copy_in(4, "KVM_SET_MP_STATE: struct kvm_mp_state"), bo))
            return 0
        if cmd == k.KVM_TRANSLATE:  # copy_from_user, the arch's, copy_to_user
            tr = vcpus.translate(vcpu, copy_in(KVM_TRANSLATE.size, "KVM_TRANSLATE: struct kvm_translation"))
            return self.copy_to_user(arg, tr, "KVM_TRANSLATE: struct kvm_translation")
        if cmd == k.KVM_SET_GUEST_DEBUG:
            vcpus.set_guest_debug(
                vcpu, copy_in(KVM_SET_GUEST_DEBUG.size, "KVM_SET_GUEST_DEBUG: struct kvm_guest_debug")
            )
            return 0
        if cmd == k.KVM_SET_SIGNAL_MASK:  # NULL clears the mask; else its length must be sigset_t's
            if arg:
                length = int.from_bytes(copy_in(4, "KVM_SET_SIGNAL_MASK: struct kvm_signal_mask"), bo)
                if length != SIGSET_SIZE:
                    raise KvmError(errno.EINVAL, f"KVM_SET_SIGNAL_MASK: len {length}, sigset_t is {SIGSET_SIZE}")
                copy_in(SIGSET_SIZE, "KVM_SET_SIGNAL_MASK: the sigset", arg + 4)
            return 0  # kvm_vcpu_ioctl_set_sigmask(): what a running vcpu blocks (no guest runs here)
        if cmd == k.KVM_GET_FPU:  # kzalloc, the arch's, copy_to_user
            return self.copy_to_user(arg, vcpus.get_fpu(vcpu), "KVM_GET_FPU: struct kvm_fpu")
        if cmd == k.KVM_SET_FPU:  # memdup_user first
            vcpus.set_fpu(vcpu, copy_in(KVM_SET_FPU.size, "KVM_SET_FPU: struct kvm_fpu"))
            return 0
        return None

    # kvm_vcpu_ioctl_get_stats_fd(): a file of the vcpu's statistics
    def _vcpu_get_stats_fd(self, vcpu: Vcpu) -> int:
        return self._install(StatsFile(VCPU_STATS, vcpu.vcpu_id, vcpu.stats))

    # kvm_vcpu_ioctl(): the type check, then the generic cases, then the arch's
    def kvm_vcpu_ioctl(self, file: VcpuFile, cmd: int, arg: int) -> int:
        k, vcpu, vcpus = self.kernel, file.vcpu, self.kernel.vcpu_arch
        assert vcpus is not None  # a vcpu fd exists only where vcpus are modelled
        if (cmd >> 8) & 0xFF != KVMIO:  # _IOC_TYPE(ioctl) != KVMIO
            raise KvmError(errno.EINVAL, f"vcpu ioctl {cmd:#x} is not a KVM ioctl (type {(cmd >> 8) & 0xFF:#x})")
        try:
            if cmd == k.KVM_INTERRUPT:  # kvm_arch_vcpu_unlocked_ioctl(): before vcpu->mutex and the switch
                return self._vcpu_interrupt(vcpu, arg)
            if cmd == k.KVM_RUN:
                if arg:
                    raise KvmError(errno.EINVAL, f"KVM_RUN takes no argument (got {arg:#x})")
                return vcpus.vcpu_run(vcpu.arch, vcpu.run, k.dmesg.append)
            copied = k.VCPU_STRUCT_IOCTLS.get(cmd)
            if copied is not None:
                return self._vcpu_struct_ioctl(vcpu.arch, cmd, arg, *copied)
            if cmd == k.KVM_GET_STATS_FD:
                return self._vcpu_get_stats_fd(vcpu)
            generic = self._vcpu_generic(vcpu.arch, cmd, arg)
            if generic is not None:
                return generic
            host = k.host
            ctx = EnableCapContext(self.fget, file.kvm.arch, xive_enabled(host), xics_on_xive(host))
            return vcpus.vcpu_ioctl(vcpu.arch, cmd, arg, self.memory, ctx)
        except KvmError as exc:
            raise _explained(exc, cmd, k, "vcpu") from None


@attrs.frozen
class _AttrAccess:
    """A device accessor's view of the caller (kvm_device.AttrAccess): get_user and put_user at
    ``attr->addr`` (access_ok, then the access: EFAULT), powerpc's copy_from_user, fget."""

    process: Process
    byteorder: ByteOrder

    def get_user(self, addr: int, size: int) -> int:
        try:
            return int.from_bytes(self.process.memory.copy_from_user(addr, size), self.byteorder)
        except Fault:
            raise KvmError(errno.EFAULT, f"get_user of {size} bytes at {addr:#x}: unmapped") from None

    def put_user(self, addr: int, value: int, size: int) -> None:
        self.process.copy_to_user(addr, value.to_bytes(size, self.byteorder), f"put_user of {size} bytes")

    def copy_from_user(self, addr: int, size: int, what: str) -> bytes:
        return self.process.copy_from_user(addr, size, what)

    def fget(self, fd: int) -> object | None:
        return self.process.fget(fd)


def _x86(host: Host) -> KvmArch:
    from .x86 import X86Kvm  # only an x86 host's kernel loads it

    return X86Kvm(host)


def _explained(
    exc: KvmError, cmd: int, kernel: BootedKernel, on: Literal["dev", "vm", "vcpu"], vm: object | None = None
) -> KvmError:
    """An unknown request's errno, with what it probably was (the simulator's reason only):
    an ioctl the real kernel has and kvmsim does not model yet is named, never a bare ENOTTY,
    with the capability the simulated kernel advertises for it (as the real one does), and
    ENOTTY (on a vcpu the kernel's own answer to an unknown request is EINVAL)."""
    if not exc.reason.startswith("unknown"):
        return exc
    missing = unmodelled(kernel.arch, on).get(cmd) if on != "dev" else None  # on /dev/kvm: "a VM ioctl"
    if missing is not None:
        reason = f"not modelled: {missing.name}"
        if missing.cap is not None and kernel.check_extension(missing.cap, vm) > 0:
            reason += f" (capability {missing.cap} is advertised because the real kernel advertises it)"
        return KvmError(errno.ENOTTY, reason)  # the real answer is not known here: never the kernel's default
    if on == "vcpu":
        return exc
    hint = explain_request(cmd, kernel.arch, kernel.rev, on)
    return exc if hint is None else KvmError(exc.errno or 0, f"{exc.reason}: {hint}")


@functools.cache
def _request_numbers(arch: Arch, rev: AbiRevision) -> tuple[int, int, int, int, dict[int, str], int | None]:
    """The request numbers a kernel built for ``arch`` answers (encoded once per arch and revision)."""
    return (
        arch.kvm_get_api_version(),
        arch.kvm_create_vm(),
        arch.kvm_check_extension(),
        arch.kvm_get_vcpu_mmap_size(),
        {number: name for name, number in arch.vfs_ioctls.items()},
        rev.request(arch),
    )


class BootedKernel:
    """A simulated kernel for one host profile and one ABI revision."""

    def __init__(self, host: Host, rev: AbiRevision, *, ksize: int = KVM_PPC_COMPAT_CAPS_SIZE_VER0) -> None:
        check_struct_size(ksize, "kernel struct size")
        self.host, self.rev, self.ksize = host, rev, ksize
        self.dmesg: list[str] = []
        self.kvm: KvmArch = PowerpcKvm(host, rev, ksize, self.dmesg.append) if host.arch.is_powerpc else _x86(host)
        self.config = kconfig.powerpc(host.book3s_pr) if host.arch.is_powerpc else kconfig.X86
        self._configured = self.config.answers()
        self.vcpu_arch: VcpuArch | None = self.kvm if isinstance(self.kvm, PowerpcKvm) else None
        self.KVM_CREATE_VCPU, self.KVM_RUN, self.KVM_GET_REGS, self.KVM_SET_REGS, self.KVM_ENABLE_CAP = (
            io.request(host.arch) for io in (KVM_CREATE_VCPU, KVM_RUN, KVM_GET_REGS, KVM_SET_REGS, KVM_ENABLE_CAP)
        )
        self.KVM_INTERRUPT = KVM_INTERRUPT.request(host.arch)
        self.IRQ_LINES = (KVM_IRQ_LINE.request(host.arch), KVM_IRQ_LINE_STATUS.request(host.arch))
        self.COALESCED_MMIO = (
            KVM_REGISTER_COALESCED_MMIO.request(host.arch),
            KVM_UNREGISTER_COALESCED_MMIO.request(host.arch),
        )
        self.KVM_GET_STATS_FD = KVM_GET_STATS_FD.request(host.arch)
        self.KVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG.request(host.arch)
        self.KVM_CREATE_DEVICE = KVM_CREATE_DEVICE.request(host.arch)
        self.DEVICE_ATTR_IOCTLS = {
            io.request(host.arch): which
            for io, which in ((KVM_SET_DEVICE_ATTR, "set_attr"), (KVM_GET_DEVICE_ATTR, "get_attr"),
                              (KVM_HAS_DEVICE_ATTR, "has_attr"))
        }  # fmt: skip
        # the VM ioctls that make a file (anon_inode_getfd): a device, the vcpu, the stats file, a TCE table
        self.CREATES_FILE = frozenset(
            [self.KVM_CREATE_DEVICE]
            + [self.KVM_CREATE_VCPU, self.KVM_GET_STATS_FD] * self.models_vcpus
            + [io.request(host.arch) for io in (KVM_CREATE_SPAPR_TCE, KVM_CREATE_SPAPR_TCE_64)] * host.arch.is_powerpc
        )
        (
            self.KVM_GET_MP_STATE,
            self.KVM_SET_MP_STATE,
            self.KVM_TRANSLATE,
            self.KVM_SET_GUEST_DEBUG,
            self.KVM_SET_SIGNAL_MASK,
            self.KVM_GET_FPU,
            self.KVM_SET_FPU,
        ) = (
            io.request(host.arch)
            for io in (KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_TRANSLATE, KVM_SET_GUEST_DEBUG, KVM_SET_SIGNAL_MASK,
                       KVM_GET_FPU, KVM_SET_FPU)
        )  # fmt: skip
        self.SET_USER_MEMORY_REGIONS = (
            KVM_SET_USER_MEMORY_REGION.request(host.arch),
            KVM_SET_USER_MEMORY_REGION2.request(host.arch),
        )
        # kvm_vcpu_ioctl's cases that copy a struct: request -> (name, layout, copied out)
        self.VCPU_STRUCT_IOCTLS: dict[int, tuple[str, StructLayout, bool]] = {
            io.request(host.arch): (io.name, layout, io.direction == "read")
            for io, layout in ((KVM_GET_REGS, KVM_REGS), (KVM_SET_REGS, KVM_REGS), (KVM_GET_SREGS, KVM_SREGS),
                               (KVM_SET_SREGS, KVM_SREGS))
        }  # fmt: skip
        (
            self.KVM_GET_API_VERSION,
            self.KVM_CREATE_VM,
            self.KVM_CHECK_EXTENSION,
            self.KVM_GET_VCPU_MMAP_SIZE,
            self.VFS_IOCTLS,
            self.KVM_PPC_GET_COMPAT_CAPS,  # None on a kernel without the feature (rev "none")
        ) = _request_numbers(host.arch, rev)

    @classmethod
    def from_profile(
        cls,
        name_or_path: profile.StrPath,
        *,
        abi: str | AbiRevision = DEFAULT_REVISION,
        cap: int | None = None,
        ioctl_nr: int | None = None,
        ksize: int = KVM_PPC_COMPAT_CAPS_SIZE_VER0,
    ) -> Self:
        """Boot a kernel on a host profile (a name on the profile search path, or a path)."""
        rev = abi if isinstance(abi, AbiRevision) else revision(abi, cap=cap, nr=ioctl_nr)
        return cls(profile.load(name_or_path), rev, ksize=ksize)

    @property
    def models_vcpus(self) -> bool:
        """KVM_CREATE_VCPU and the vcpu fd are modelled (powerpc); elsewhere not yet."""
        return self.vcpu_arch is not None

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: PAGE_SIZE (struct kvm_run) + the arch's pages +
        CONFIG_KVM_MMIO's ring page."""
        return self.kvm.vcpu_mmap_size() + (self.host.page_size if self.config.kvm_mmio else 0)

    def process(self, memory: UserAccess | None = None) -> Process:
        """A new process: its own fd table, and its own (or the given) user memory."""
        return Process(self, AddressSpace() if memory is None else memory)

    @property
    def arch(self) -> Arch:
        """The architecture this kernel is built for (its ioctl encoding and byte order)."""
        return self.host.arch

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host.name} {self.host.arch.name} abi={self.rev.name}>"

    # kvm_vm_ioctl_check_extension_generic(), then the arch's
    def check_extension(self, ext: int, vm: object | None) -> int:
        if ext in GENERIC_CAPS:
            return 1
        if ext == KVM_CAP_NR_MEMSLOTS:
            return self.kvm.user_mem_slots
        configured = self._configured.get(ext)  # what the build's CONFIG_* options answer
        if configured is not None:
            return configured
        return self.kvm.check_extension(ext, vm)
