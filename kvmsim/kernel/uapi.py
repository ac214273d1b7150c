"""Numbers and layouts only: the uapi of ``KVM_PPC_GET_COMPAT_CAPS`` and its neighbours.

Nothing here behaves; the kernel's code paths live in ``powerpc``, ``book3s_hv`` and
``kvm_main``.  An ABI revision is one frozen :class:`AbiRevision` value: its struct layout,
capability number, ioctl macro and rules.  Users can derive their own (``attrs.evolve``
or :func:`revision` with ``cap=``/``nr=``) from their kernel headers.
"""

from __future__ import annotations

import errno
import functools
import re
import struct
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Literal, cast

import attrs

DEV_KVM = "/dev/kvm"


def errname(err: int | None) -> str:
    """An errno's name (include/uapi/asm-generic/errno*.h): ``EINVAL``, or ``errno N``."""
    return errno.errorcode.get(err or 0, f"errno {err}")


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
# (kvm_vm_ioctl_check_extension_generic); checked against a real x86 /dev/kvm.
KVM_CAP_USER_MEMORY = 3
KVM_CAP_DESTROY_MEMORY_REGION_WORKS = 21
KVM_CAP_JOIN_MEMORY_REGIONS_WORKS = 30
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
GENERIC_CAPS = frozenset(
    {
        KVM_CAP_USER_MEMORY,
        KVM_CAP_DESTROY_MEMORY_REGION_WORKS,
        KVM_CAP_JOIN_MEMORY_REGIONS_WORKS,
        KVM_CAP_INTERNAL_ERROR_DATA,
        KVM_CAP_ENABLE_CAP_VM,
        KVM_CAP_CHECK_EXTENSION_VM,
        KVM_CAP_IOEVENTFD_ANY_LENGTH,
    }
)


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

# arch/powerpc/include/asm/hvcall.h: H_GUEST_GET_CAPABILITIES bits (same values)
H_GUEST_CAP_COPY_MEM = msb0_bit(0)
H_GUEST_CAP_POWER9 = msb0_bit(1)
H_GUEST_CAP_POWER10 = msb0_bit(2)
H_GUEST_CAP_POWER11 = msb0_bit(3)
H_GUEST_CAP_BITMAP2 = msb0_bit(63)


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
        raise ValueError(f"{what} {size} must be a multiple of 8, at least {KVM_PPC_COMPAT_CAPS_SIZE_VER0}")


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


@attrs.frozen
class AbiRevision:
    """One kernel's knowledge of the feature: ``abi`` is None for a kernel without it
    (``none``: every kernel before Linux 7.3).  ``generation`` orders revisions, newest
    highest; ``draft`` marks posted patches that never shipped."""

    name: str
    generation: int
    draft: bool
    abi: CompatCapsAbi | None

    def request(self, arch: Arch) -> int | None:
        return None if self.abi is None else self.abi.request(arch)

    @property
    def cap(self) -> int | None:
        return None if self.abi is None else self.abi.cap

    @property
    def layout(self) -> CompatCapsLayout:
        """The struct layout userspace packs for this revision (v5's for ``none``, which has
        none of its own: what a program built against today's headers sends)."""
        return LAYOUT_V5 if self.abi is None else self.abi.layout


_V4_ABI = CompatCapsAbi(
    layout=LAYOUT_V4,
    cap=249,
    nr=0xE4,
    macro="_IOR",
)
_V5_ABI = CompatCapsAbi(
    layout=LAYOUT_V5,
    cap=250,
    nr=0xE4,
    macro="_IO",
)
# torvalds/linux ac3e65dd: include/uapi/linux/kvm.h, arch/powerpc/kvm/powerpc.c
_LINUX_7_3_ABI = attrs.evolve(_V5_ABI, nr=0xB8)

NONE = AbiRevision("none", generation=0, draft=False, abi=None)
V4 = AbiRevision("v4", generation=1, draft=True, abi=_V4_ABI)
V5 = AbiRevision("v5", generation=2, draft=True, abi=_V5_ABI)
LINUX_7_3 = AbiRevision("linux-7.3", generation=3, draft=False, abi=_LINUX_7_3_ABI)
REVISIONS: dict[str, AbiRevision] = {r.name: r for r in (LINUX_7_3, NONE, V5, V4)}
DEFAULT_REVISION = LINUX_7_3.name


def negotiable(revisions: Iterable[AbiRevision]) -> list[AbiRevision]:
    """What a client asks for, in order: for each capability number the newest revision that
    uses it (250 means linux-7.3, not the v5 draft that shared it), newest first."""
    chosen: dict[int, AbiRevision] = {}
    for rev in sorted(revisions, key=lambda r: r.generation, reverse=True):
        if rev.abi is not None and rev.abi.cap not in chosen:
            chosen[rev.abi.cap] = rev
    return list(chosen.values())


def revision(name: str, *, cap: int | None = None, nr: int | None = None) -> AbiRevision:
    """A named revision, optionally with the capability or ioctl number overridden."""
    try:
        rev = REVISIONS[name]
    except KeyError:
        known = ", ".join(REVISIONS)
        raise ValueError(f"unknown ABI revision {name!r} (known: {known})") from None
    if rev.abi is None:
        return rev  # a kernel without the feature has no numbers to override
    abi = rev.abi
    if cap is not None:
        abi = attrs.evolve(abi, cap=cap)
    if nr is not None:
        if not 0 <= nr <= 0xFF:
            raise ValueError(f"ioctl nr {nr:#x} does not fit 8 bits")
        abi = attrs.evolve(abi, nr=nr)
    return attrs.evolve(rev, abi=abi)


# ---------------------------------------------------------------------------
# naming requests, for traces and for the reasons given with an errno


@functools.cache
def known_requests(arch: Arch) -> Mapping[int, str]:
    """The requests kvmsim knows, as ``arch`` encodes them: number -> name (computed once an arch)."""
    names = {
        arch.kvm_get_api_version(): "KVM_GET_API_VERSION",
        arch.kvm_create_vm(): "KVM_CREATE_VM",
        arch.kvm_check_extension(): "KVM_CHECK_EXTENSION",
        arch.kvm_get_vcpu_mmap_size(): "KVM_GET_VCPU_MMAP_SIZE",
        **{number: name for name, number in arch.vfs_ioctls.items()},
    }
    for rev in sorted(REVISIONS.values(), key=lambda r: -r.generation):
        number = rev.request(arch)
        if number is not None:
            names.setdefault(number, f"KVM_PPC_GET_COMPAT_CAPS ({rev.name})")
    return MappingProxyType(names)


def decode_request(cmd: int, arch: Arch) -> str:
    """``name`` or the _IOC fields: ``KVM_CHECK_EXTENSION``, ``_IOC(none, 0xae, 0xff, 0)``."""
    name = known_requests(arch).get(cmd)
    if name is not None:
        return name
    ioc = arch.ioc
    direction = cmd >> ioc.dirshift
    size = (cmd >> ioc.sizeshift) & ((1 << ioc.sizebits) - 1)
    dirs = {ioc.none: "none", ioc.read: "read", ioc.write: "write", ioc.read | ioc.write: "read|write"}
    return f"_IOC({dirs.get(direction, hex(direction))}, {(cmd >> 8) & 0xFF:#x}, {cmd & 0xFF:#x}, {size})"


def explain_request(cmd: int, arch: Arch, rev: AbiRevision, on: Literal["dev", "vm"]) -> str | None:
    """Why an unknown request is probably unknown: another architecture's encoding, another
    revision's number, or a VM ioctl sent to /dev/kvm.  None when there is nothing to say."""
    here = known_requests(arch)
    name = here.get(cmd)
    if name is not None:
        if not name.startswith("KVM_PPC_GET_COMPAT_CAPS"):
            return None
        if on == "dev":
            return f"{name} is a VM ioctl: issue it on the fd KVM_CREATE_VM returned"
        mine = rev.request(arch)
        if mine is None:
            return f"{cmd:#x} is {name}; this kernel ({rev.name}) has no such ioctl (before Linux 7.3)"
        return f"{cmd:#x} is {name}; this kernel ({rev.name}) uses {mine:#x}" if mine != cmd else None
    ours = {v: k for k, v in here.items()}
    for other in ARCHES.values():
        if other.ioc is arch.ioc:
            continue
        theirs = known_requests(other).get(cmd)
        if theirs is not None:
            label = "x86" if other.ioc is GENERIC_IOC else "powerpc"
            mine_number = ours.get(theirs)
            uses = f", which uses {mine_number:#x}" if mine_number is not None else ""
            return f"{cmd:#x} is {label}'s {theirs}; this host is {arch.name}{uses}"
    return None


def byte_swapped_hint(value: int, lo: int, hi: int, byteorder: ByteOrder) -> str:
    """`` (24 byte-swapped? ...)`` when a u64 read in ``byteorder`` makes sense the other way."""
    swapped = int.from_bytes(value.to_bytes(8, byteorder), "big" if byteorder == "little" else "little")
    if lo <= swapped <= hi and not lo <= value <= hi:
        return f" ({swapped} byte-swapped? this host is {byteorder}-endian)"
    return ""


_CAP_RE = re.compile(r"#define\s+KVM_CAP_PPC_COMPAT_CAPS\s+(\w+)")
_IOCTL_RE = re.compile(
    r"#define\s+KVM_PPC_GET_COMPAT_CAPS\s+(_IOR?)\s*\(\s*KVMIO\s*,\s*(\w+)\s*(?:,\s*struct\s+kvm_ppc_compat_caps\s*)?\)"
)
_STRUCT_RE = re.compile(r"struct\s+kvm_ppc_compat_caps\s*\{(.*?)\};", re.S)
_FIELD_RE = re.compile(r"__u64\s+(\w+)\s*;")


def revision_from_header(text: str, where: str) -> AbiRevision:
    """The revision a kernel's ``<linux/kvm.h>`` (and ``asm/kvm.h``) defines: its capability
    number, ioctl macro and number, and struct layout, with the rules of
    :func:`header_rules`.  ``where`` names it in errors."""
    cap, ioctl, body = _CAP_RE.search(text), _IOCTL_RE.search(text), _STRUCT_RE.search(text)
    for found, name in (
        (cap, "KVM_CAP_PPC_COMPAT_CAPS"),
        (ioctl, "KVM_PPC_GET_COMPAT_CAPS"),
        (body, "struct kvm_ppc_compat_caps"),
    ):
        if found is None:
            raise ValueError(f"{where}: no {name} definition")
    assert cap is not None and ioctl is not None and body is not None
    fields = tuple(_FIELD_RE.findall(body[1]))
    if sorted(fields) != sorted(LAYOUT_V4.fields):
        raise ValueError(
            f"{where}: struct kvm_ppc_compat_caps has fields {fields}, expected flags, size, compat_capabilities"
        )
    try:
        cap_number, nr = int(cap[1], 0), int(ioctl[2], 0)
    except ValueError:
        raise ValueError(f"{where}: KVM_CAP_PPC_COMPAT_CAPS or the ioctl's nr is not a number") from None
    if not 0 <= nr <= 0xFF:
        raise ValueError(f"{where}: KVM_PPC_GET_COMPAT_CAPS nr {nr:#x} does not fit 8 bits")
    layout = CompatCapsLayout(cast(tuple[CompatCapsField, CompatCapsField, CompatCapsField], fields))
    rules = header_rules(ioctl[1], nr)
    assert rules.abi is not None
    return attrs.evolve(rules, abi=attrs.evolve(rules.abi, layout=layout, cap=cap_number, nr=nr))


def header_rules(macro: str, nr: int) -> AbiRevision:
    """Whose rules a header's definition carries: ``_IOR`` is the v4 draft's; ``_IO`` with the
    v5 draft's number (0xe4) is v5's; any other ``_IO`` is the shipped kernel's (0xb8)."""
    if macro == "_IOR":
        return V4
    return V5 if nr == _V5_ABI.nr else LINUX_7_3
