"""Numbers and layouts only: the uapi of ``KVM_PPC_GET_COMPAT_CAPS`` and its neighbours
(ioctl encodings per architecture, capability numbers, MSB-0 mode bits, the struct's layouts,
and :class:`CompatCapsAbi`: what a kernel with the ioctl defines).

Nothing here behaves: the kernel's code paths live in ``powerpc``, ``book3s_hv`` and
``kvm_main``.  The revisions as values are :mod:`.revisions`, naming a request is
:mod:`.requests`, reading a kernel header is :mod:`.header`; ``kvmsim.uapi`` (the public name)
gathers all four."""

from __future__ import annotations

import errno
import struct
from typing import Any, Literal

import attrs

from ._errors import InvalidInput

DEV_KVM = "/dev/kvm"
VM_LINK = "anon_inode:kvm-vm"  # anon_inode_getfd("kvm-vm", ...): what /proc/PID/fd/N of a VM fd reads
VCPU_LINK = "anon_inode:kvm-vcpu:{id}"  # create_vcpu_fd(): "kvm-vcpu:%d" of the vcpu's id
SPAPR_TCE_LINK = "anon_inode:kvm-spapr-tce"  # kvm_vm_ioctl_create_spapr_tce()'s anon_inode_getfd
VM_STATS_LINK = "anon_inode:kvm-vm-stats"  # kvm_vm_ioctl_get_stats_fd()'s anon_inode_getfile_fmode
VCPU_STATS_LINK = "anon_inode:kvm-vcpu-stats:{id}"  # kvm_vcpu_ioctl_get_stats_fd(): of the vcpu's id


# where two names share a number, the one the kernel's headers and glibc's strerrorname_np give
# (Python's errno.errorcode names 95 ENOTSUP, which the kernel has not) and one Python lacks
_KERNEL_NAMES = {errno.EDEADLK: "EDEADLK", errno.EOPNOTSUPP: "EOPNOTSUPP", 133: "EHWPOISON"}


def errname(err: int | None) -> str:
    """An errno's name (include/uapi/asm-generic/errno*.h): ``EINVAL``, or ``errno N``."""
    return _KERNEL_NAMES.get(err or 0) or errno.errorcode.get(err or 0, f"errno {err}")


# include/uapi/linux/kvm.h
KVMIO = 0xAE
KVM_API_VERSION = 12

KVM_GET_API_VERSION_NR = 0x00
KVM_CREATE_VM_NR = 0x01
KVM_CHECK_EXTENSION_NR = 0x03
KVM_GET_VCPU_MMAP_SIZE_NR = 0x04

# Capabilities a POWER client asks at start-up (QEMU's kvm_arch_init and spapr caps)
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PPC_SMT = 64
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_PPC_MMU_RADIX = 134
KVM_CAP_PPC_MMU_HASH_V3 = 135
KVM_CAP_PPC_SMT_POSSIBLE = 147
KVM_CAP_PPC_NESTED_HV = 160
STARTUP_CAPS: dict[str, int] = {
    "KVM_CAP_NR_MEMSLOTS": KVM_CAP_NR_MEMSLOTS,
    "KVM_CAP_PPC_SMT": KVM_CAP_PPC_SMT,
    "KVM_CAP_MAX_VCPUS": KVM_CAP_MAX_VCPUS,
    "KVM_CAP_PPC_MMU_RADIX": KVM_CAP_PPC_MMU_RADIX,
    "KVM_CAP_PPC_MMU_HASH_V3": KVM_CAP_PPC_MMU_HASH_V3,
    "KVM_CAP_PPC_SMT_POSSIBLE": KVM_CAP_PPC_SMT_POSSIBLE,
    "KVM_CAP_PPC_NESTED_HV": KVM_CAP_PPC_NESTED_HV,
}

# arch/powerpc/include/uapi/asm/kvm.h: KVM_CREATE_VM types
KVM_VM_PPC_HV = 1
KVM_VM_PPC_PR = 2

# Generic capabilities every kernel answers 1 for, on both fds
# (kvm_vm_ioctl_check_extension_generic); checked against a real x86 /dev/kvm and the lab.
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SYNC_MMU = 16
KVM_CAP_DESTROY_MEMORY_REGION_WORKS = 21
KVM_CAP_JOIN_MEMORY_REGIONS_WORKS = 30
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_HALT_POLL = 182
KVM_CAP_BINARY_STATS_FD = 203
KVM_CAP_SYSTEM_EVENT_DATA = 215
KVM_CAP_USER_MEMORY2 = 231
GENERIC_CAPS = frozenset(
    {
        KVM_CAP_USER_MEMORY,
        KVM_CAP_SYNC_MMU,
        KVM_CAP_DESTROY_MEMORY_REGION_WORKS,
        KVM_CAP_JOIN_MEMORY_REGIONS_WORKS,
        KVM_CAP_INTERNAL_ERROR_DATA,
        KVM_CAP_DEVICE_CTRL,
        KVM_CAP_ENABLE_CAP_VM,
        KVM_CAP_CHECK_EXTENSION_VM,
        KVM_CAP_IOEVENTFD_ANY_LENGTH,
        KVM_CAP_HALT_POLL,
        KVM_CAP_BINARY_STATS_FD,
        KVM_CAP_SYSTEM_EVENT_DATA,
        KVM_CAP_USER_MEMORY2,
    }
)
# ... and those a kernel answers by its build's configuration (kvmsim.kernel.kconfig)
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
KVM_CAP_GUEST_MEMFD = 234

# arch/powerpc/kvm/powerpc.c's kvm_vm_ioctl_check_extension (include/uapi/linux/kvm.h numbers)
KVM_CAP_NR_VCPUS = 9
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_IOEVENTFD = 36
KVM_CAP_PPC_SEGSTATE = 43
KVM_CAP_PPC_PAIRED_SINGLES = 48
KVM_CAP_PPC_OSI = 52
KVM_CAP_PPC_UNSET_IRQ = 53
KVM_CAP_ENABLE_CAP = 54
KVM_CAP_PPC_GET_PVINFO = 57
KVM_CAP_PPC_IRQ_LEVEL = 58
KVM_CAP_SPAPR_TCE = 63
KVM_CAP_PPC_HIOR = 67
KVM_CAP_PPC_PAPR = 68
KVM_CAP_ONE_REG = 70
KVM_CAP_PPC_GET_SMMU_INFO = 78
KVM_CAP_PPC_ALLOC_HTAB = 80
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_PPC_HTAB_FD = 84
KVM_CAP_PPC_RTAS = 91
KVM_CAP_IRQ_XICS = 92
KVM_CAP_SPAPR_MULTITCE = 94
KVM_CAP_PPC_FIXUP_HCALL = 103
KVM_CAP_PPC_ENABLE_HCALL = 104
KVM_CAP_PPC_HWRNG = 115
KVM_CAP_SPAPR_TCE_64 = 125
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_PPC_HTM = 132
KVM_CAP_SPAPR_RESIZE_HPT = 133
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SPAPR_TCE_VFIO = 142
KVM_CAP_PPC_FWNMI = 146
KVM_CAP_PPC_GET_CPU_CHAR = 151
KVM_CAP_PPC_IRQ_XIVE = 169
KVM_CAP_PPC_GUEST_DEBUG_SSTEP = 176
KVM_CAP_PPC_SECURE_GUEST = 181
KVM_CAP_PPC_DAWR1 = 194
KVM_CAP_PPC_RPT_INVALIDATE = 202
KVM_CAP_PPC_AIL_MODE_3 = 210


# ---------------------------------------------------------------------------
# ioctl encoding: include/uapi/asm-generic/ioctl.h vs arch/powerpc/include/uapi/asm/ioctl.h


@attrs.frozen
class IoctlEncoding:
    """One architecture's ``_IOC()``: ``dir << dirshift | size << 16 | type << 8 | nr``."""

    name: str
    sizebits: int
    dirbits: int
    none: int
    read: int
    write: int
    nrbits: int = 8
    typebits: int = 8

    @property
    def sizeshift(self) -> int:
        return self.nrbits + self.typebits

    @property
    def dirshift(self) -> int:
        return self.sizeshift + self.sizebits

    def ioc(self, direction: int, type_: int, nr: int, size: int) -> int:
        if not 0 <= size < 1 << self.sizebits:
            raise ValueError(f"{self.name}: ioctl size {size} does not fit {self.sizebits} bits")
        return direction << self.dirshift | size << self.sizeshift | type_ << self.nrbits | nr

    def io(self, type_: int, nr: int) -> int:
        return self.ioc(self.none, type_, nr, 0)

    def ior(self, type_: int, nr: int, size: int) -> int:
        return self.ioc(self.read, type_, nr, size)

    def iow(self, type_: int, nr: int, size: int) -> int:
        return self.ioc(self.write, type_, nr, size)


GENERIC_IOC = IoctlEncoding("generic", sizebits=14, dirbits=2, none=0, read=2, write=1)
POWERPC_IOC = IoctlEncoding("powerpc", sizebits=13, dirbits=3, none=1, read=2, write=4)

ByteOrder = Literal["little", "big"]


@attrs.frozen
class Arch:
    """What a kernel is built for: its ioctl encoding and its byte order."""

    name: str
    ioc: IoctlEncoding
    byteorder: ByteOrder

    @property
    def is_powerpc(self) -> bool:
        return self.ioc is POWERPC_IOC

    def kvm_get_api_version(self) -> int:
        return self.ioc.io(KVMIO, KVM_GET_API_VERSION_NR)

    def kvm_create_vm(self) -> int:
        return self.ioc.io(KVMIO, KVM_CREATE_VM_NR)

    def kvm_check_extension(self) -> int:
        return self.ioc.io(KVMIO, KVM_CHECK_EXTENSION_NR)

    def kvm_get_vcpu_mmap_size(self) -> int:
        return self.ioc.io(KVMIO, KVM_GET_VCPU_MMAP_SIZE_NR)

    @property
    def vfs_ioctls(self) -> dict[str, int]:
        """The fd ioctls do_vfs_ioctl() answers before any driver: FIOCLEX, FIONCLEX, FIONBIO,
        FIOASYNC (asm-generic/ioctls.h numbers; powerpc's asm/ioctls.h uses _IO/_IOW('f'))."""
        if self.is_powerpc:
            f = ord("f")
            return {"FIOCLEX": self.ioc.io(f, 1), "FIONCLEX": self.ioc.io(f, 2),
                    "FIONBIO": self.ioc.iow(f, 126, 4), "FIOASYNC": self.ioc.iow(f, 125, 4)}  # fmt: skip
        return {"FIOCLEX": 0x5451, "FIONCLEX": 0x5450, "FIONBIO": 0x5421, "FIOASYNC": 0x5452}


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("ppc64le", POWERPC_IOC, "little"),
        Arch("ppc64", POWERPC_IOC, "big"),
        Arch("x86_64", GENERIC_IOC, "little"),
    )
}


# ---------------------------------------------------------------------------
# Compatibility-mode bits: IBM MSB-0 numbering, "bit 1" is 1 << 62.


def msb0_bit(n: int) -> int:
    """IBM bit ``n`` of a 64-bit doubleword (bit 0 is the most significant)."""
    return 1 << (63 - n)


KVM_PPC_COMPAT_CAP_POWER9 = msb0_bit(1)
KVM_PPC_COMPAT_CAP_POWER10 = msb0_bit(2)
KVM_PPC_COMPAT_CAP_POWER11 = msb0_bit(3)
KVM_PPC_COMPAT_BITMASK = KVM_PPC_COMPAT_CAP_POWER9 | KVM_PPC_COMPAT_CAP_POWER10 | KVM_PPC_COMPAT_CAP_POWER11


@attrs.frozen
class CompatMode:
    """A processor compatibility mode: its logical PVR and, if it has one, its cap bit."""

    name: str
    level: int  # ordering: POWER8 < POWER9 < ...
    logical_pvr: int  # the cpu-version device-tree value (PVR_ARCH_*)
    cap_bit: int  # KVM_PPC_COMPAT_CAP_*, 0 when the ioctl has no bit for it
    pvr_versions: tuple[int, ...]  # raw PVR upper halves of processors of this generation


# arch/powerpc/include/asm/reg.h: PVR_ARCH_207 .. PVR_ARCH_31_P11, PVR_POWER8 ..
POWER8 = CompatMode("power8", 8, 0x0F000004, 0, (0x004B, 0x004C, 0x004D))
POWER9 = CompatMode("power9", 9, 0x0F000005, KVM_PPC_COMPAT_CAP_POWER9, (0x004E,))
POWER10 = CompatMode("power10", 10, 0x0F000006, KVM_PPC_COMPAT_CAP_POWER10, (0x0080,))
POWER11 = CompatMode("power11", 11, 0x0F000007, KVM_PPC_COMPAT_CAP_POWER11, (0x0082,))
MODES: dict[str, CompatMode] = {m.name: m for m in (POWER8, POWER9, POWER10, POWER11)}
CAP_MODES: tuple[CompatMode, ...] = tuple(m for m in MODES.values() if m.cap_bit)


def mode_of_pvr(pvr: int) -> CompatMode | None:
    """The generation of a raw PVR (its upper half), or None for an unknown processor."""
    version = pvr >> 16
    return next((m for m in MODES.values() if version in m.pvr_versions), None)


def mode_of_logical_pvr(value: int) -> CompatMode | None:
    return next((m for m in MODES.values() if m.logical_pvr == value), None)


def modes_of_caps(caps: int) -> tuple[CompatMode, ...]:
    """The modes whose bits are set, oldest first."""
    return tuple(m for m in CAP_MODES if caps & m.cap_bit)


# ---------------------------------------------------------------------------
# struct kvm_ppc_compat_caps, one layout per revision

KVM_PPC_COMPAT_CAPS_SIZE_VER0 = 24
MAX_PAGE_SIZE = 1 << 16  # the largest PAGE_SIZE of a powerpc kernel here (64K): the most a copy_struct_from_user reads


def check_struct_size(size: int, what: str) -> None:
    """A ``struct kvm_ppc_compat_caps`` size a program or kernel may have: whole ``__u64``s,
    at least KVM_PPC_COMPAT_CAPS_SIZE_VER0.  ValueError naming ``what`` otherwise."""
    if size < KVM_PPC_COMPAT_CAPS_SIZE_VER0 or size % 8:
        raise InvalidInput(f"{what} {size} must be a multiple of 8, at least {KVM_PPC_COMPAT_CAPS_SIZE_VER0}")


CompatCapsField = Literal["flags", "size", "compat_capabilities"]
U64_OF = {"little": struct.Struct("<Q"), "big": struct.Struct(">Q")}  # one __u64, by byte order


@attrs.frozen
class CompatCapsLayout:
    """``struct kvm_ppc_compat_caps``: all ``__u64``, native endian, no padding.

    ``fields`` is the C declaration order, e.g. v4::

        struct kvm_ppc_compat_caps {
                __u64 flags;                /* Reserved for future use */
                __u64 size;                 /* Size of this structure */
                __u64 compat_capabilities;  /* Capabilities supported by the host */
        };
    """

    fields: tuple[CompatCapsField, CompatCapsField, CompatCapsField]
    _structs: dict[str, struct.Struct] = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        n = len(self.fields)
        structs = {"little": struct.Struct("<" + "Q" * n), "big": struct.Struct(">" + "Q" * n)}
        object.__setattr__(self, "_structs", structs)

    @property
    def size(self) -> int:
        return 8 * len(self.fields)

    def offset(self, field: CompatCapsField) -> int:
        return 8 * self.fields.index(field)

    def pack(self, byteorder: ByteOrder, **values: int) -> bytes:
        return self._structs[byteorder].pack(*[values.get(f, 0) for f in self.fields])

    def field(self, byteorder: ByteOrder, data: bytes, name: CompatCapsField) -> int:
        """One field of the struct in ``data``."""
        value: int = U64_OF[byteorder].unpack_from(data, self.offset(name))[0]
        return value

    def unpack(self, byteorder: ByteOrder, data: bytes) -> dict[CompatCapsField, int]:
        values = self._structs[byteorder].unpack_from(data)
        return dict(zip(self.fields, values, strict=True))


LAYOUT_V4 = CompatCapsLayout(("flags", "size", "compat_capabilities"))
LAYOUT_V5 = CompatCapsLayout(("size", "flags", "compat_capabilities"))


# ---------------------------------------------------------------------------
# ABI revisions

Macro = Literal["_IO", "_IOR"]


@attrs.frozen
class CompatCapsAbi:
    """What a kernel that has ``KVM_PPC_GET_COMPAT_CAPS`` defines: its numbers and its struct.
    (What it does with them is the kernel side's: ``powerpc.STEPS``, ``book3s_hv.HV_STEPS``.)"""

    layout: CompatCapsLayout
    cap: int  # KVM_CAP_PPC_COMPAT_CAPS
    nr: int  # the ioctl's number within KVMIO
    macro: Macro

    def request(self, arch: Arch) -> int:
        """The ioctl request number as this revision's macro encodes it on ``arch``."""
        if self.macro == "_IOR":
            return arch.ioc.ior(KVMIO, self.nr, self.layout.size)
        return arch.ioc.io(KVMIO, self.nr)


# ---------------------------------------------------------------------------
# The vcpu's ioctls and structs (include/uapi/linux/kvm.h, arch/powerpc/include/uapi/asm/kvm.h)

Direction = Literal["none", "read", "write", "read|write"]


@attrs.frozen
class KvmIoctl:
    """One request as the header defines it: ``_IO``/``_IOR``/``_IOW``/``_IOWR(KVMIO, nr, struct)``,
    ``size`` the struct's (the same on every 64-bit ABI here)."""

    name: str
    direction: Direction
    nr: int
    size: int

    def request(self, arch: Arch) -> int:
        ioc = arch.ioc
        bits = {"none": ioc.none, "read": ioc.read, "write": ioc.write, "read|write": ioc.read | ioc.write}
        return ioc.ioc(bits[self.direction], KVMIO, self.nr, self.size)


KVM_CREATE_VCPU = KvmIoctl("KVM_CREATE_VCPU", "none", 0x41, 0)  # on the VM fd: a vcpu fd
KVM_RUN = KvmIoctl("KVM_RUN", "none", 0x80, 0)
KVM_INTERRUPT = KvmIoctl("KVM_INTERRUPT", "write", 0x86, 4)  # struct kvm_interrupt { __u32 irq; }
KVM_INTERRUPT_SET, KVM_INTERRUPT_UNSET, KVM_INTERRUPT_SET_LEVEL = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD  # -1, -2, -3
KVM_GET_REGS = KvmIoctl("KVM_GET_REGS", "read", 0x81, 392)
KVM_SET_REGS = KvmIoctl("KVM_SET_REGS", "write", 0x82, 392)
KVM_GET_SREGS = KvmIoctl("KVM_GET_SREGS", "read", 0x83, 1232)
KVM_SET_SREGS = KvmIoctl("KVM_SET_SREGS", "write", 0x84, 1232)
KVM_ENABLE_CAP = KvmIoctl("KVM_ENABLE_CAP", "write", 0xA3, 104)  # the vcpu's and the VM's

# Capabilities KVM_ENABLE_CAP takes on a powerpc vcpu (kvm_vcpu_ioctl_enable_cap)
KVM_CAP_PPC_BOOKE_WATCHDOG = 83
KVM_CAP_PPC_EPR = 86
KVM_CAP_IRQ_MPIC = 90

KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_SYSTEM_EVENT_SHUTDOWN = 1
MSR_ME = 1 << 12  # the machine-check enable bit of the MSR (asm/reg.h MSR_ME_LG 12)
MSR_TS_MASK = 3 << 33  # the transaction state field (MSR_TS_S | MSR_TS_T)


@attrs.frozen
class StructLayout:
    """A struct of fixed-size fields at fixed offsets, in either byte order."""

    name: str
    format: str  # struct's format without the byte order: "Q" * 49
    fields: tuple[str, ...]  # one name per format item; "_" for padding
    _structs: dict[str, struct.Struct] = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        structs = {"little": struct.Struct("<" + self.format), "big": struct.Struct(">" + self.format)}
        object.__setattr__(self, "_structs", structs)

    @property
    def size(self) -> int:
        return self._structs["little"].size

    def pack(self, byteorder: ByteOrder, values: dict[str, int]) -> bytes:
        return self._structs[byteorder].pack(*[values.get(f, 0) for f in self.fields])

    def unpack(self, byteorder: ByteOrder, data: bytes | memoryview) -> dict[str, int]:
        values = self._structs[byteorder].unpack_from(data)
        return {f: v for f, v in zip(self.fields, values, strict=True) if f != "_"}


REGS_FIELDS = ("pc", "cr", "ctr", "lr", "xer", "msr", "srr0", "srr1", "pid", *(f"sprg{i}" for i in range(8)))
KVM_REGS = StructLayout("kvm_regs", "Q" * 49, (*REGS_FIELDS, *(f"gpr{i}" for i in range(32))))
"""arch/powerpc/include/uapi/asm/kvm.h::

    struct kvm_regs {
            __u64 pc; __u64 cr; __u64 ctr; __u64 lr; __u64 xer; __u64 msr;
            __u64 srr0; __u64 srr1; __u64 pid;
            __u64 sprg0; ... __u64 sprg7;
            __u64 gpr[32];
    };
"""
KVM_GET_ONE_REG = KvmIoctl("KVM_GET_ONE_REG", "write", 0xAB, 16)  # _IOW: the struct is read; the value goes to addr
KVM_SET_ONE_REG = KvmIoctl("KVM_SET_ONE_REG", "write", 0xAC, 16)
KVM_ONE_REG = StructLayout("kvm_one_reg", "QQ", ("id", "addr"))
"""include/uapi/linux/kvm.h: ``struct kvm_one_reg { __u64 id; __u64 addr; };``"""
# kvm_vcpu_ioctl()'s other generic cases, with powerpc's structs
KVM_TRANSLATE = KvmIoctl("KVM_TRANSLATE", "read|write", 0x85, 24)  # struct kvm_translation
KVM_SET_SIGNAL_MASK = KvmIoctl("KVM_SET_SIGNAL_MASK", "write", 0x8B, 4)  # struct kvm_signal_mask { __u32 len; ... }
KVM_GET_FPU = KvmIoctl("KVM_GET_FPU", "read", 0x8C, 256)  # powerpc's struct kvm_fpu { __u64 fpr[32]; }
KVM_SET_FPU = KvmIoctl("KVM_SET_FPU", "write", 0x8D, 256)
KVM_GET_MP_STATE = KvmIoctl("KVM_GET_MP_STATE", "read", 0x98, 4)  # struct kvm_mp_state { __u32 mp_state; }
KVM_SET_MP_STATE = KvmIoctl("KVM_SET_MP_STATE", "write", 0x99, 4)
KVM_SET_GUEST_DEBUG = KvmIoctl("KVM_SET_GUEST_DEBUG", "write", 0x9B, 264)  # powerpc's: control, pad, bp[16]
SIGSET_SIZE = 8  # the kernel's sigset_t: _NSIG (64) bits, what kvm_signal_mask.len must say
# what kvmsim models on a vcpu fd
# struct kvm_dirty_log { __u32 slot; __u32 padding1; union { void __user *dirty_bitmap; __u64 padding2; }; }
KVM_GET_DIRTY_LOG = KvmIoctl("KVM_GET_DIRTY_LOG", "write", 0x42, 16)
KVM_DIRTY_LOG = StructLayout("kvm_dirty_log", "IIQ", ("slot", "padding1", "dirty_bitmap"))
KVM_GET_STATS_FD = KvmIoctl("KVM_GET_STATS_FD", "none", 0xCE, 0)  # the VM's and the vcpu's: a stats fd
# the binary stats file (include/uapi/linux/kvm.h; Documentation/virt/kvm/api.rst 4.133)::
#
#     struct kvm_stats_header { __u32 flags; __u32 name_size; __u32 num_desc; __u32 id_offset;
#                               __u32 desc_offset; __u32 data_offset; };
#     struct kvm_stats_desc { __u32 flags; __s16 exponent; __u16 size; __u32 offset; __u32 bucket_size;
#                             char name[name_size]; };
#
# then the id string (name_size bytes at id_offset), the descriptors, the u64 data
KVM_STATS_HEADER = StructLayout(
    "kvm_stats_header", "IIIIII", ("flags", "name_size", "num_desc", "id_offset", "desc_offset", "data_offset")
)
KVM_STATS_DESC = StructLayout("kvm_stats_desc", "IhHII", ("flags", "exponent", "size", "offset", "bucket_size"))
KVM_STATS_NAME_SIZE = 48
KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_LOG_HIST = 0x0, 0x1, 0x4
KVM_STATS_UNIT_NONE, KVM_STATS_UNIT_SECONDS, KVM_STATS_UNIT_BOOLEAN = 0x00, 0x20, 0x40
KVM_STATS_BASE_POW10 = 0x000
VCPU_IOCTLS = (KVM_RUN, KVM_INTERRUPT, KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_ENABLE_CAP,
               KVM_GET_ONE_REG, KVM_SET_ONE_REG, KVM_TRANSLATE, KVM_SET_SIGNAL_MASK, KVM_GET_FPU, KVM_SET_FPU,
               KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_SET_GUEST_DEBUG, KVM_GET_STATS_FD)  # fmt: skip
KVM_REG_PPC = 0x1000000000000000
KVM_REG_SIZE_SHIFT, KVM_REG_SIZE_MASK = 52, 0x00F0000000000000


# arch/powerpc/include/uapi/asm/kvm.h: KVM_REG_PPC_<name> = KVM_REG_PPC | KVM_REG_SIZE_U<8 << size> | index
# (the single definitions; FPR, VR and VSR are the first and last of their runs)
ONE_REG_DEFINITIONS: dict[str, tuple[int, int]] = {  # name -> (log2 of the size in bytes, index)
    "ICP_STATE": (3, 0x8C),
    "VP_STATE": (4, 0x8D),
    "HIOR": (3, 0x1),
    "IAC1": (3, 0x2),
    "IAC2": (3, 0x3),
    "IAC3": (3, 0x4),
    "IAC4": (3, 0x5),
    "DAC1": (3, 0x6),
    "DAC2": (3, 0x7),
    "DABR": (3, 0x8),
    "DSCR": (3, 0x9),
    "PURR": (3, 0xA),
    "SPURR": (3, 0xB),
    "DAR": (3, 0xC),
    "DSISR": (2, 0xD),
    "AMR": (3, 0xE),
    "UAMOR": (3, 0xF),
    "MMCR0": (3, 0x10),
    "MMCR1": (3, 0x11),
    "MMCRA": (3, 0x12),
    "MMCR2": (3, 0x13),
    "MMCRS": (3, 0x14),
    "SIAR": (3, 0x15),
    "SDAR": (3, 0x16),
    "SIER": (3, 0x17),
    "PMC1": (2, 0x18),
    "PMC2": (2, 0x19),
    "PMC3": (2, 0x1A),
    "PMC4": (2, 0x1B),
    "PMC5": (2, 0x1C),
    "PMC6": (2, 0x1D),
    "PMC7": (2, 0x1E),
    "PMC8": (2, 0x1F),
    "FPR0": (3, 0x20),
    "FPR31": (3, 0x3F),
    "VR0": (4, 0x40),
    "VR31": (4, 0x5F),
    "VSR0": (4, 0x60),
    "VSR31": (4, 0x7F),
    "FPSCR": (3, 0x80),
    "VSCR": (2, 0x81),
    "VPA_ADDR": (3, 0x82),
    "VPA_SLB": (4, 0x83),
    "VPA_DTL": (4, 0x84),
    "EPCR": (2, 0x85),
    "EPR": (2, 0x86),
    "OR_TSR": (2, 0x87),
    "CLEAR_TSR": (2, 0x88),
    "TCR": (2, 0x89),
    "TSR": (2, 0x8A),
    "DEBUG_INST": (2, 0x8B),
    "MAS0": (2, 0x8C),
    "MAS1": (2, 0x8D),
    "MAS2": (3, 0x8E),
    "MAS7_3": (3, 0x8F),
    "MAS4": (2, 0x90),
    "MAS6": (2, 0x91),
    "MMUCFG": (2, 0x92),
    "TLB0CFG": (2, 0x93),
    "TLB1CFG": (2, 0x94),
    "TLB2CFG": (2, 0x95),
    "TLB3CFG": (2, 0x96),
    "TLB0PS": (2, 0x97),
    "TLB1PS": (2, 0x98),
    "TLB2PS": (2, 0x99),
    "TLB3PS": (2, 0x9A),
    "EPTCFG": (2, 0x9B),
    "TB_OFFSET": (3, 0x9C),
    "SPMC1": (2, 0x9D),
    "SPMC2": (2, 0x9E),
    "IAMR": (3, 0x9F),
    "TFHAR": (3, 0xA0),
    "TFIAR": (3, 0xA1),
    "TEXASR": (3, 0xA2),
    "FSCR": (3, 0xA3),
    "PSPB": (2, 0xA4),
    "EBBHR": (3, 0xA5),
    "EBBRR": (3, 0xA6),
    "BESCR": (3, 0xA7),
    "TAR": (3, 0xA8),
    "DPDES": (3, 0xA9),
    "DAWR": (3, 0xAA),
    "DAWRX": (3, 0xAB),
    "CIABR": (3, 0xAC),
    "IC": (3, 0xAD),
    "VTB": (3, 0xAE),
    "CSIGR": (3, 0xAF),
    "TACR": (3, 0xB0),
    "TCSCR": (3, 0xB1),
    "PID": (3, 0xB2),
    "ACOP": (3, 0xB3),
    "VRSAVE": (2, 0xB4),
    "LPCR": (2, 0xB5),
    "LPCR_64": (3, 0xB5),
    "PPR": (3, 0xB6),
    "ARCH_COMPAT": (2, 0xB7),
    "DABRX": (2, 0xB8),
    "WORT": (3, 0xB9),
    "SPRG9": (3, 0xBA),
    "DBSR": (2, 0xBB),
    "TIDR": (3, 0xBC),
    "PSSCR": (3, 0xBD),
    "DEC_EXPIRY": (3, 0xBE),
    "ONLINE": (2, 0xBF),
    "PTCR": (3, 0xC0),
    "MMCR3": (3, 0xC1),
    "SIER2": (3, 0xC2),
    "SIER3": (3, 0xC3),
    "DAWR1": (3, 0xC4),
    "DAWRX1": (3, 0xC5),
    "DEXCR": (3, 0xC6),
    "HASHKEYR": (3, 0xC7),
    "HASHPKEYR": (3, 0xC8),
}
ONE_REGS: dict[str, int] = {
    name: KVM_REG_PPC | size << KVM_REG_SIZE_SHIFT | index for name, (size, index) in ONE_REG_DEFINITIONS.items()
}


def one_reg_size(reg_id: int) -> int:
    """KVM_REG_SIZE(id): the register's size in bytes, from its id's size field."""
    return 1 << ((reg_id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)


SLB_FIELDS = tuple(f"slb{i}{half}" for i in range(64) for half in ("e", "v"))
KVM_SREGS = StructLayout(
    "kvm_sregs",
    "I4xQ" + "Q" * 128 + "I" * 16 + "Q" * 16,
    ("pvr", "sdr1", *SLB_FIELDS, *(f"sr{i}" for i in range(16)), *(f"ibat{i}" for i in range(8)),
     *(f"dbat{i}" for i in range(8))),
)  # fmt: skip
"""arch/powerpc/include/uapi/asm/kvm.h, Book3S's half of the union (1232 bytes, BookE's is
shorter)::

    struct kvm_sregs {
            __u32 pvr;
            union {
                    struct {
                            __u64 sdr1;
                            struct { struct { __u64 slbe; __u64 slbv; } slb[64]; } ppc64;
                            struct { __u32 sr[16]; __u64 ibat[8]; __u64 dbat[8]; } ppc32;
                    } s;
                    ...
            } u;
    };
"""
SLB_ESID_V = 1 << 27  # asm/book3s/64/mmu-hash.h: the SLB entry's valid bit
SLB_VSID_L, SLB_VSID_LP_01 = 0x100, 0x10  # a large page, and its size 01 (64K with a 4K base)

# The VM's MMU facts: KVM_PPC_GET_SMMU_INFO
KVM_PPC_GET_SMMU_INFO = KvmIoctl("KVM_PPC_GET_SMMU_INFO", "read", 0xA6, 592)
KVM_PPC_PAGE_SIZES_REAL, KVM_PPC_1T_SEGMENTS, KVM_PPC_NO_HASH = 0x1, 0x2, 0x4
SMMU_FIELDS = tuple(
    f"sps{i}_{f}" for i in range(8)
    for f in ("page_shift", "slb_enc", *(f"enc{j}_{g}" for j in range(8) for g in ("page_shift", "pte_enc")))
)  # fmt: skip
KVM_PPC_SMMU_INFO = StructLayout(
    "kvm_ppc_smmu_info", "QIHH" + "I" * len(SMMU_FIELDS), ("flags", "slb_size", "data_keys", "instr_keys", *SMMU_FIELDS)
)
"""arch/powerpc/include/uapi/asm/kvm.h::

    struct kvm_ppc_one_page_size { __u32 page_shift; __u32 pte_enc; };
    struct kvm_ppc_one_seg_page_size {
            __u32 page_shift; __u32 slb_enc; struct kvm_ppc_one_page_size enc[KVM_PPC_PAGE_SIZES_MAX_SZ];
    };
    struct kvm_ppc_smmu_info {
            __u64 flags; __u32 slb_size; __u16 data_keys; __u16 instr_keys;
            struct kvm_ppc_one_seg_page_size sps[KVM_PPC_PAGE_SIZES_MAX_SZ];  /* 8 of each */
    };
"""
KVM_PPC_GET_RMMU_INFO = KvmIoctl("KVM_PPC_GET_RMMU_INFO", "write", 0xB0, 96)  # _IOW, though the kernel writes it
RMMU_GEOMETRIES, RMMU_AP_ENCODINGS = 8, 8
KVM_PPC_RMMU_INFO = StructLayout(
    "kvm_ppc_rmmu_info",
    "BBBBB3x" * RMMU_GEOMETRIES + "I" * RMMU_AP_ENCODINGS,
    (*(f"geo{i}_{f}" for i in range(RMMU_GEOMETRIES) for f in ("page_shift", *(f"level_bits{j}" for j in range(4)))),
     *(f"ap_encoding{i}" for i in range(RMMU_AP_ENCODINGS))),
)  # fmt: skip
"""arch/powerpc/include/uapi/asm/kvm.h::

    struct kvm_ppc_rmmu_info {
            struct kvm_ppc_radix_geom { __u8 page_shift; __u8 level_bits[4]; __u8 pad[3]; } geometries[8];
            __u32 ap_encodings[8];
    };
"""
KVM_PPC_GET_CPU_CHAR = KvmIoctl("KVM_PPC_GET_CPU_CHAR", "read", 0xB1, 32)
KVM_PPC_CPU_CHAR = StructLayout(
    "kvm_ppc_cpu_char", "QQQQ", ("character", "behaviour", "character_mask", "behaviour_mask")
)
"""arch/powerpc/include/uapi/asm/kvm.h::

    struct kvm_ppc_cpu_char {
            __u64 character; __u64 behaviour; __u64 character_mask; __u64 behaviour_mask;
    };
"""
# its bits (MSB-0 in the hcall's words: bit 0 is 1 << 63)
KVM_PPC_CPU_CHAR_SPEC_BAR_ORI31 = 1 << 63
KVM_PPC_CPU_CHAR_BCCTRL_SERIALISED = 1 << 62
KVM_PPC_CPU_CHAR_L1D_FLUSH_ORI30 = 1 << 61
KVM_PPC_CPU_CHAR_L1D_FLUSH_TRIG2 = 1 << 60
KVM_PPC_CPU_CHAR_L1D_THREAD_PRIV = 1 << 59
KVM_PPC_CPU_CHAR_BR_HINT_HONOURED = 1 << 58
KVM_PPC_CPU_CHAR_MTTRIG_THR_RECONF = 1 << 57
KVM_PPC_CPU_CHAR_COUNT_CACHE_DIS = 1 << 56
KVM_PPC_CPU_CHAR_BCCTR_FLUSH_ASSIST = 1 << 54
KVM_PPC_CPU_BEHAV_FAVOUR_SECURITY = 1 << 63
KVM_PPC_CPU_BEHAV_L1D_FLUSH_PR = 1 << 62
KVM_PPC_CPU_BEHAV_BNDS_CHK_SPEC_BAR = 1 << 61
KVM_PPC_CPU_BEHAV_FLUSH_COUNT_CACHE = 1 << 58
KVM_IRQ_LINE = KvmIoctl("KVM_IRQ_LINE", "write", 0x61, 8)  # struct kvm_irq_level { irq or status; level }
KVM_IRQ_LINE_STATUS = KvmIoctl("KVM_IRQ_LINE_STATUS", "read|write", 0x67, 8)
# CONFIG_KVM_MMIO's (KVM_CAP_COALESCED_MMIO): struct kvm_coalesced_mmio_zone
KVM_REGISTER_COALESCED_MMIO = KvmIoctl("KVM_REGISTER_COALESCED_MMIO", "write", 0x67, 16)
KVM_UNREGISTER_COALESCED_MMIO = KvmIoctl("KVM_UNREGISTER_COALESCED_MMIO", "write", 0x68, 16)
KVM_COALESCED_MMIO_ZONE = StructLayout("kvm_coalesced_mmio_zone", "QII", ("addr", "size", "pio"))
"""include/uapi/linux/kvm.h: ``struct kvm_coalesced_mmio_zone { __u64 addr; __u32 size; union {
__u32 pad; __u32 pio; }; };``"""
KVM_PPC_GET_PVINFO = KvmIoctl("KVM_PPC_GET_PVINFO", "write", 0xA1, 128)  # _IOW, though the kernel writes it
KVM_PPC_PVINFO_FLAGS_EV_IDLE = 1 << 0
KVM_SC_MAGIC_R0 = 0x4B564D21  # asm/kvm_para.h: "KVM!", what a paravirtual hcall puts in r0
KVM_PPC_PVINFO = StructLayout("kvm_ppc_pvinfo", "I124x", ("flags",))
# struct kvm_create_spapr_tce_64 { __u64 liobn; __u32 page_shift; __u32 flags; __u64 offset; __u64 size; }
# (offset and size in IOMMU pages) and the first one's { __u64 liobn; __u32 window_size; } (bytes, 4K pages)
KVM_CREATE_SPAPR_TCE_64 = KvmIoctl("KVM_CREATE_SPAPR_TCE_64", "write", 0xA8, 32)
KVM_CREATE_SPAPR_TCE_64_STRUCT = StructLayout(
    "kvm_create_spapr_tce_64", "QIIQQ", ("liobn", "page_shift", "flags", "offset", "size")
)
KVM_CREATE_SPAPR_TCE = KvmIoctl("KVM_CREATE_SPAPR_TCE", "write", 0xA8, 16)
KVM_CREATE_SPAPR_TCE_STRUCT = StructLayout("kvm_create_spapr_tce", "QI4x", ("liobn", "window_size"))
"""arch/powerpc/include/uapi/asm/kvm.h: ``struct kvm_ppc_pvinfo { __u32 flags; __u32 hcall[4];
__u8 pad[108]; };`` (``hcall`` at :data:`PVINFO_HCALL`: instructions, big-endian whatever the kernel's order)"""
PVINFO_HCALL = struct.Struct(">4I")  # at offset 4
KVM_PPC_RTAS_DEFINE_TOKEN = KvmIoctl("KVM_PPC_RTAS_DEFINE_TOKEN", "write", 0xAC, 128)
RTAS_NAME_LEN = 120
KVM_RTAS_TOKEN_ARGS = StructLayout("kvm_rtas_token_args", f"{RTAS_NAME_LEN}xQ", ("token",))
"""arch/powerpc/include/uapi/asm/kvm.h: ``struct kvm_rtas_token_args { char name[120]; __u64 token; };``
(the name is bytes: :data:`RTAS_NAME_LEN` of them from the struct's start)"""
KVM_PPC_ALLOCATE_HTAB = KvmIoctl("KVM_PPC_ALLOCATE_HTAB", "read|write", 0xA7, 4)  # a __u32 order (log2 of bytes)
PPC_MIN_HPT_ORDER, PPC_MAX_HPT_ORDER = 18, 46  # asm/kvm_book3s_64.h: 256K to 64T
KVM_PPC_CONFIGURE_V3_MMU = KvmIoctl("KVM_PPC_CONFIGURE_V3_MMU", "write", 0xAF, 16)
KVM_PPC_MMUV3_CFG = StructLayout("kvm_ppc_mmuv3_cfg", "QQ", ("flags", "process_table"))
"""arch/powerpc/include/uapi/asm/kvm.h::

    struct kvm_ppc_mmuv3_cfg {
            __u64 flags;          /* KVM_PPC_MMUV3_RADIX, KVM_PPC_MMUV3_GTSE */
            __u64 process_table;  /* second doubleword of the partition table entry */
    };
"""
KVM_PPC_MMUV3_RADIX, KVM_PPC_MMUV3_GTSE = 1, 2
PATB_GR, PRTS_MASK = 1 << 63, 0x1F  # asm/book3s/64/mmu.h: guest radix; the process table's size field
KVM_SET_USER_MEMORY_REGION = KvmIoctl("KVM_SET_USER_MEMORY_REGION", "write", 0x46, 32)
KVM_SET_USER_MEMORY_REGION2 = KvmIoctl("KVM_SET_USER_MEMORY_REGION2", "write", 0x49, 160)
MEMORY_REGION_FIELDS = ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr")
KVM_USERSPACE_MEMORY_REGION = StructLayout("kvm_userspace_memory_region", "IIQQQ", MEMORY_REGION_FIELDS)
KVM_USERSPACE_MEMORY_REGION2 = StructLayout(
    "kvm_userspace_memory_region2", "IIQQQQII112x", (*MEMORY_REGION_FIELDS, "guest_memfd_offset", "guest_memfd", "_")
)
"""include/uapi/linux/kvm.h::

    struct kvm_userspace_memory_region {
            __u32 slot; __u32 flags; __u64 guest_phys_addr;
            __u64 memory_size;     /* bytes */
            __u64 userspace_addr;  /* start of the userspace allocated memory */
    };
    struct kvm_userspace_memory_region2 {
            __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr;
            __u64 guest_memfd_offset; __u32 guest_memfd; __u32 pad1; __u64 pad2[14];
    };
"""
KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEM_GUEST_MEMFD = 1 << 0, 1 << 1, 1 << 2
# KVM devices (include/uapi/linux/kvm.h): KVM_CREATE_DEVICE on a VM, the attribute ioctls on the
# device's fd; the types a Book3S kernel registers, XICS's and VFIO's attribute groups
KVM_CREATE_DEVICE = KvmIoctl("KVM_CREATE_DEVICE", "read|write", 0xE0, 12)
KVM_CREATE_DEVICE_STRUCT = StructLayout("kvm_create_device", "III", ("type", "fd", "flags"))
"""include/uapi/linux/kvm.h::

    struct kvm_create_device {
            __u32 type;   /* in: KVM_DEV_TYPE_xxx */
            __u32 fd;     /* out: device handle */
            __u32 flags;  /* in: KVM_CREATE_DEVICE_xxx */
    };
"""
KVM_CREATE_DEVICE_TEST = 1
KVM_SET_DEVICE_ATTR = KvmIoctl("KVM_SET_DEVICE_ATTR", "write", 0xE1, 24)
KVM_GET_DEVICE_ATTR = KvmIoctl("KVM_GET_DEVICE_ATTR", "write", 0xE2, 24)
KVM_HAS_DEVICE_ATTR = KvmIoctl("KVM_HAS_DEVICE_ATTR", "write", 0xE3, 24)
KVM_DEVICE_ATTR = StructLayout("kvm_device_attr", "IIQQ", ("flags", "group", "attr", "addr"))
"""include/uapi/linux/kvm.h::

    struct kvm_device_attr {
            __u32 flags;  /* no flags currently defined */
            __u32 group;  /* device-defined */
            __u64 attr;   /* group-defined */
            __u64 addr;   /* userspace address of attr data */
    };
"""
DEVICE_IOCTLS = (KVM_SET_DEVICE_ATTR, KVM_GET_DEVICE_ATTR, KVM_HAS_DEVICE_ATTR)
# enum kvm_device_type: FSL_MPIC_20 = 1, FSL_MPIC_42, XICS, VFIO, ARM_VGIC_V2, FLIC, ARM_VGIC_V3,
# ARM_VGIC_ITS, XIVE, ARM_PV_TIME, RISCV_AIA, LOONGARCH_IPI, LOONGARCH_EIOINTC, LOONGARCH_PCHPIC,
# LOONGARCH_DMSINTC, ARM_VGIC_V5, KVM_DEV_TYPE_MAX
KVM_DEV_TYPE_XICS, KVM_DEV_TYPE_VFIO, KVM_DEV_TYPE_XIVE, KVM_DEV_TYPE_MAX = 3, 4, 9, 17
XICS_LINK, VFIO_LINK = "anon_inode:kvm-xics", "anon_inode:kvm-vfio"  # the ops' .name, anon_inode_getfd's
XIVE_LINK = "anon_inode:kvm-xive"  # XICS-on-XIVE's (KVM_DEV_TYPE_XICS on a PowerNV host with XIVE)
# arch/powerpc/include/uapi/asm/kvm.h: XICS's groups, a source's state (KVM_DEV_XICS_GRP_SOURCES's u64)
KVM_DEV_XICS_GRP_SOURCES, KVM_DEV_XICS_GRP_CTRL = 1, 2
KVM_DEV_XICS_NR_SERVERS = 1  # KVM_DEV_XICS_GRP_CTRL's one attribute (XICS-on-XIVE's; a u32)
KVM_XICS_DESTINATION_MASK, KVM_XICS_PRIORITY_SHIFT, KVM_XICS_PRIORITY_MASK = 0xFFFFFFFF, 32, 0xFF
KVM_XICS_LEVEL_SENSITIVE, KVM_XICS_MASKED, KVM_XICS_PENDING = 1 << 40, 1 << 41, 1 << 42
KVM_XICS_PRESENTED, KVM_XICS_QUEUED = 1 << 43, 1 << 44
# KVM_REG_PPC_ICP_STATE's fields
KVM_REG_PPC_ICP_CPPR_SHIFT, KVM_REG_PPC_ICP_XISR_SHIFT, KVM_REG_PPC_ICP_XISR_MASK = 56, 32, 0xFFFFFF
KVM_REG_PPC_ICP_MFRR_SHIFT, KVM_REG_PPC_ICP_PPRI_SHIFT = 24, 16
# include/uapi/linux/kvm.h: the VFIO device's group and attributes; arch/powerpc's SPAPR_TCE one's struct
KVM_DEV_VFIO_FILE = 1
KVM_DEV_VFIO_FILE_ADD, KVM_DEV_VFIO_FILE_DEL, KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE = 1, 2, 3
KVM_VFIO_SPAPR_TCE = StructLayout("kvm_vfio_spapr_tce", "ii", ("groupfd", "tablefd"))
# what kvmsim models on a VM fd beyond the compat ioctl
VM_IOCTLS = (KVM_CREATE_VCPU, KVM_PPC_GET_SMMU_INFO, KVM_PPC_GET_RMMU_INFO, KVM_PPC_GET_CPU_CHAR,
             KVM_PPC_RTAS_DEFINE_TOKEN, KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2,
             KVM_PPC_ALLOCATE_HTAB, KVM_PPC_CONFIGURE_V3_MMU, KVM_PPC_GET_PVINFO, KVM_IRQ_LINE,
             KVM_IRQ_LINE_STATUS, KVM_CREATE_SPAPR_TCE_64, KVM_CREATE_SPAPR_TCE, KVM_GET_STATS_FD,
             KVM_GET_DIRTY_LOG, KVM_CREATE_DEVICE, KVM_REGISTER_COALESCED_MMIO,
             KVM_UNREGISTER_COALESCED_MMIO)  # fmt: skip
KVM_ENABLE_CAP_STRUCT = StructLayout("kvm_enable_cap", "IIQQQQ64x", ("cap", "flags", "arg0", "arg1", "arg2", "arg3"))
"""include/uapi/linux/kvm.h: ``struct kvm_enable_cap { __u32 cap; __u32 flags; __u64 args[4]; __u8 pad[64]; };``"""
KVM_RUN_HEAD = StructLayout(
    "kvm_run", "BB6xIBBHQQ", ("request_interrupt_window", "immediate_exit", "exit_reason", "ready", "if_flag",
                             "flags", "cr8", "apic_base")
)  # fmt: skip
"""The head of ``struct kvm_run`` (the first 32 bytes; the exit's union follows at 32)::

    __u8 request_interrupt_window; __u8 immediate_exit__unsafe; __u8 padding1[6];
    __u32 exit_reason; __u8 ready_for_interrupt_injection; __u8 if_flag; __u16 flags;
    __u64 cr8; __u64 apic_base;
"""
KVM_RUN_EXIT = 32  # the offset of the exit's union
KVM_RUN_SYSTEM_EVENT = StructLayout("system_event", "IIQ", ("type", "ndata", "data0"))
"""``struct { __u32 type; __u32 ndata; union { __u64 flags; __u64 data[16]; }; } system_event;``"""


# ---------------------------------------------------------------------------
# The ioctls a kernel answers that kvmsim does not model yet (include/uapi/linux/kvm.h): the
# VM and vcpu ioctls QEMU makes on its way to a paused pseries machine.  The simulated kernel
# answers them ENOTTY still, but never a bare one: the reason names the ioctl and, where the
# simulated kernel advertises its capability (because the real one does), says so.


@attrs.frozen
class UnmodelledIoctl:
    ioctl: KvmIoctl
    on: Literal["vm", "vcpu"]  # the fd it is an ioctl of
    cap: int | None  # the capability that advertises it; None: every kernel has it
    only: Literal["powerpc", "x86"] | None = "powerpc"  # the arches whose kernels have it; None: all

    @property
    def name(self) -> str:
        return self.ioctl.name

    def request(self, arch: Arch) -> int:
        return self.ioctl.request(arch)


def _vm(name: str, direction: Direction, nr: int, size: int, cap: int | None, **kw: Any) -> UnmodelledIoctl:
    return UnmodelledIoctl(KvmIoctl(name, direction, nr, size), "vm", cap, **kw)


def _vcpu(name: str, direction: Direction, nr: int, size: int) -> UnmodelledIoctl:
    return UnmodelledIoctl(KvmIoctl(name, direction, nr, size), "vcpu", None)


UNMODELLED_IOCTLS = (
    UnmodelledIoctl(KVM_CREATE_VCPU, "vm", None, only="x86"),  # powerpc's is modelled
    UnmodelledIoctl(KVM_SET_USER_MEMORY_REGION, "vm", KVM_CAP_USER_MEMORY, only="x86"),  # powerpc's is modelled
    UnmodelledIoctl(KVM_SET_USER_MEMORY_REGION2, "vm", KVM_CAP_USER_MEMORY2, only="x86"),
    UnmodelledIoctl(KVM_ENABLE_CAP, "vm", KVM_CAP_ENABLE_CAP_VM, only="x86"),  # powerpc's is modelled
    _vm("KVM_GET_STATS_FD", "none", 0xCE, 0, KVM_CAP_BINARY_STATS_FD, only="x86"),  # powerpc's is modelled
    # the other ioctls a capability the simulated kernels answer non-zero stands for (include/uapi/
    # linux/kvm.h, Documentation/virt/kvm/api.rst), and kvm_main's own a program may ask: not modelled
    UnmodelledIoctl(KVM_GET_DIRTY_LOG, "vm", None, only="x86"),  # powerpc's is modelled
    _vm("KVM_IRQFD", "write", 0x76, 32, KVM_CAP_IRQFD, only=None),  # struct kvm_irqfd
    _vm("KVM_IOEVENTFD", "write", 0x79, 64, KVM_CAP_IOEVENTFD, only=None),  # struct kvm_ioeventfd
    _vm("KVM_PPC_GET_HTAB_FD", "write", 0xAA, 32, KVM_CAP_PPC_HTAB_FD),  # struct kvm_get_htab_fd
    _vm("KVM_PPC_RESIZE_HPT_PREPARE", "read", 0xAD, 16, KVM_CAP_SPAPR_RESIZE_HPT),  # struct kvm_ppc_resize_hpt
    _vm("KVM_PPC_RESIZE_HPT_COMMIT", "read", 0xAE, 16, KVM_CAP_SPAPR_RESIZE_HPT),
)
