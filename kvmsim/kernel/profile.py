"""Host profiles: a TOML file describing a machine → a frozen :class:`Host`.

A profile describes the machine (CPU, platform, hypervisor, modules, device tree), never a
result: what ``KVM_CHECK_EXTENSION`` or the ioctl answer is derived by the simulated kernel.
Every mistake in a profile is a :class:`ProfileError` whose message is one line naming the
file and the field.
"""

from __future__ import annotations

import contextlib
import os
import posix
import re
import stat
import zlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import attrs

from ..uapi import (
    ARCHES,
    CAP_MODES,
    KVM_PPC_CPU_BEHAV_BNDS_CHK_SPEC_BAR,
    KVM_PPC_CPU_BEHAV_FAVOUR_SECURITY,
    KVM_PPC_CPU_BEHAV_FLUSH_COUNT_CACHE,
    KVM_PPC_CPU_BEHAV_L1D_FLUSH_PR,
    KVM_PPC_CPU_CHAR_BCCTR_FLUSH_ASSIST,
    KVM_PPC_CPU_CHAR_BCCTRL_SERIALISED,
    KVM_PPC_CPU_CHAR_BR_HINT_HONOURED,
    KVM_PPC_CPU_CHAR_COUNT_CACHE_DIS,
    KVM_PPC_CPU_CHAR_L1D_FLUSH_ORI30,
    KVM_PPC_CPU_CHAR_L1D_FLUSH_TRIG2,
    KVM_PPC_CPU_CHAR_L1D_THREAD_PRIV,
    KVM_PPC_CPU_CHAR_MTTRIG_THR_RECONF,
    KVM_PPC_CPU_CHAR_SPEC_BAR_ORI31,
    MODES,
    Arch,
    CompatMode,
    mode_of_logical_pvr,
    mode_of_pvr,
)
from . import papr
from .errors import InvalidInput, KvmsimError
from .papr import Hypervisor, HypervisorKind

if TYPE_CHECKING:
    from pathlib import Path

StrPath = str | os.PathLike[str]

MAX_PROFILE = 1 << 20  # bytes: a profile is a page of TOML, never /dev/zero
NODE_NAME = re.compile(r"[A-Za-z0-9,._+@-]{1,63}")  # a device-tree node name (devicetree spec 2.2.1)
HOSTS_ENV = "KVMSIM_HOSTS"  # a path list of directories searched before the built-in profiles

Platform = Literal["pseries", "powernv", "x86"]

PLATFORMS: dict[str, tuple[str, ...]] = {  # platform -> arches it runs on
    "pseries": ("ppc64le", "ppc64"),
    "powernv": ("ppc64le", "ppc64"),
    "x86": ("x86_64",),
}
MODULES: dict[str, tuple[str, ...]] = {  # platform -> KVM modules that exist there
    "pseries": ("kvm_hv", "kvm_pr"),
    "powernv": ("kvm_hv", "kvm_pr"),
    "x86": ("kvm_intel", "kvm_amd", "kvm_pvm"),
}
NESTED_APIS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {  # kind -> (possible, default)
    "powervm": ((2,), (2,)),  # PowerVM implements only the nested v2 (H_GUEST_*) API
    "qemu": ((1, 2), (2,)),  # QEMU's pseries L0: cap-nested-hv (v1), cap-nested-papr (v2)
    "kvm": ((1,), (1,)),  # a KVM-HV L0 on PowerNV: nested v1 (H_SET_PARTITION_TABLE, H_ENTER_NESTED)
}
PAGE_SIZES = (4096, 65536)
DEFAULT_PAGE_SIZE = {"pseries": 65536, "powernv": 65536, "x86": 4096}  # RHEL/SLES/Ubuntu ppc64le: 64K
DEFAULT_MEM_TOTAL_KB = 64 << 20  # 64 GiB: a modest POWER host or LPAR
DEFAULT_MAX_VCPUS = {"pseries": 2048, "powernv": 2048, "x86": 1024}  # KVM_MAX_VCPUS: NR_CPUS, KVM_MAX_NR_VCPUS
Mmu = Literal["radix", "hash"]


@attrs.frozen
class ProfileKey:
    """One key a profile may set: the reader takes no key this table does not list, and the
    docs' key reference is rendered from it (``docs/hosts.md``)."""

    path: str  # dotted; ``[]`` for each table of an array (device_tree.cpus[].name)
    type: str  # as TOML names it
    default: str  # "required", or what an absent key means
    doc: str


SCHEMA: tuple[ProfileKey, ...] = (
    ProfileKey("summary", "string", "required", "One line: what machine this is (`kvmsim hosts` lists it)."),
    ProfileKey(
        "arch", "string", "required", "`ppc64le`, `ppc64` (big-endian) or `x86_64`: the ioctl encoding and byte order."
    ),
    ProfileKey(
        "platform",
        "string",
        "required",
        "`pseries` (an LPAR or a QEMU pseries guest: an L1), `powernv` (bare metal) or `x86`.",
    ),
    ProfileKey(
        "modules",
        "array",
        "`[]`",
        "The modules modprobe'd: `kvm_hv`, `kvm_pr` (POWER); `kvm_intel`, `kvm_amd`, `kvm_pvm` (x86). "
        "Whether their init succeeds is derived.",
    ),
    ProfileKey("book3s_hv", "boolean", "true on POWER", "The build has `CONFIG_KVM_BOOK3S_HV_POSSIBLE`."),
    ProfileKey(
        "book3s_pr",
        "boolean",
        "whether `modules` has `kvm_pr`",
        "The build has `CONFIG_KVM_BOOK3S_PR_POSSIBLE` (which selects `CONFIG_KVM_MMIO`).",
    ),
    ProfileKey(
        "spapr_tce_iommu",
        "boolean",
        "true on POWER",
        "The build has `CONFIG_SPAPR_TCE_IOMMU` (which `IOMMU_SUPPORT` selects: Debian's does): "
        "`KVM_CREATE_SPAPR_TCE(_64)` and the TCE hcalls; false: those ioctls are ENOTTY.",
    ),
    ProfileKey(
        "page_size", "integer", "65536 on POWER, 4096 on x86", "The kernel's `PAGE_SIZE`: 65536 or 4096 on POWER."
    ),
    ProfileKey("kvm_max_vcpus", "integer", "2048 on POWER, 1024 on x86", "The build's `KVM_MAX_VCPUS` (1..65536)."),
    ProfileKey(
        "mmu",
        "string",
        "`radix` on ISA 3.0, else `hash`",
        "The partition's MMU, `radix` or `hash` (POWER only; radix needs POWER9 mode or later).",
    ),
    ProfileKey(
        "mem_total_kb",
        "integer",
        "67108864 (64 GiB)",
        "`MemTotal` of `/proc/meminfo` (totalram_pages): an HV memory slot whose reverse map needs more is ENOMEM.",
    ),
    ProfileKey("recorded", "table", "`{}`", "`kvmsim record`'s raw observations, kept apart from the machine."),
    ProfileKey("cpu", "table", "required on POWER", "The processor."),
    ProfileKey("cpu.pvr", "integer", "required on POWER", "The raw PVR (e.g. `0x00820200`, POWER11)."),
    ProfileKey(
        "cpu.mode",
        "string",
        "raw mode",
        "The partition's effective compat mode: `power8`..`power11`, at most two generations back.",
    ),
    ProfileKey(
        "cpu.model",
        "string",
        "the generation (`POWER11`; `x86_64`)",
        "`/proc/cpuinfo`'s cpu line, without the mode suffix.",
    ),
    ProfileKey("cpu.clock_mhz", "integer", "2750 on POWER, 2000 on x86", "The clock, in MHz (1..100000)."),
    ProfileKey("hypervisor", "table", "required on pseries", "What the partition runs under."),
    ProfileKey(
        "hypervisor.kind",
        "string",
        "required on pseries; `none` elsewhere",
        "`powervm`, `qemu` (a QEMU pseries L0) or `kvm` (a KVM-HV L0 on PowerNV).",
    ),
    ProfileKey(
        "hypervisor.nested_apis",
        "array",
        "`[2]` for powervm and qemu, `[1]` for kvm",
        "The nested APIs the L0 offers: 1 (`cap-nested-hv`), 2 (`H_GUEST_*`: PowerVM, "
        "`cap-nested-papr`); `[]` for none.",
    ),
    ProfileKey(
        "hypervisor.offers",
        "array",
        "required with nested API 2",
        "The modes `H_GUEST_GET_CAPABILITIES` reports (`power9`..`power11`).",
    ),
    ProfileKey("hypervisor.other_capability_bits", "integer", "0", "Other bits of that hypercall's answer (a u64)."),
    ProfileKey(
        "hypervisor.hcall_at_init",
        "string",
        "`H_SUCCESS`",
        "`H_GUEST_GET_CAPABILITIES` at kvm_hv's init (e.g. `H_FUNCTION`: no v2, fall back to v1).",
    ),
    ProfileKey(
        "hypervisor.hcall_at_runtime",
        "string",
        "`H_SUCCESS`",
        "The same hypercall when the ioctl asks (e.g. `H_HARDWARE`).",
    ),
    ProfileKey(
        "hypervisor.set_capabilities_hcall",
        "string",
        "`H_SUCCESS`",
        "`H_GUEST_SET_CAPABILITIES` at init; a failure makes kvm_hv ENODEV.",
    ),
    ProfileKey("device_tree", "table", "`{}`", "`/proc/device-tree` (POWER only)."),
    ProfileKey("device_tree.cpus", "array of tables", "one node from `cpu.mode`", "The `/cpus` nodes."),
    ProfileKey(
        "device_tree.ibm,processor-radix-AP-encodings",
        "array",
        "4K, 64K, 2M and 1G on a radix host",
        "Every cpu node's radix page sizes (`shift | AP << 29`, e.g. `0xa0000010`), as PowerVM and QEMU's "
        "pseries give them; `[]`: no such property (QEMU's powernv), so the kernel assumes 4K and 64K.",
    ),
    ProfileKey("device_tree.cpus[].name", "string", "required", "The node's name (`PowerPC,POWER11@0`), unique."),
    ProfileKey("device_tree.cpus[].reg", "integer", "8 × its index", "The node's `reg` (a u32)."),
    ProfileKey(
        "device_tree.cpus[].cpu-version",
        "integer",
        "none (raw mode)",
        "The `cpu-version` property: a logical PVR such as `0x0f000006`.",
    ),
    ProfileKey(
        "cpu_char",
        "table",
        "`{}`",
        "What the firmware says of speculation (`KVM_PPC_GET_CPU_CHAR`): on pseries the hypervisor's "
        "`H_GET_CPU_CHARACTERISTICS`, on powernv OPAL's `/ibm,opal/fw-features` (POWER only).",
    ),
    ProfileKey(
        "cpu_char.available",
        "boolean",
        "true on pseries, false on powernv (QEMU's)",
        "false: the hypercall fails (pseries) or the device tree has no `fw-features` node (powernv): all zero.",
    ),
    ProfileKey(
        "cpu_char.character",
        "integer",
        "`0x3c40000000000000` on pseries (QEMU's), else 0",
        "The characteristics word (a u64, `KVM_PPC_CPU_CHAR_*`); on powernv only the bits a fw-feature can set.",
    ),
    ProfileKey(
        "cpu_char.behaviour",
        "integer",
        "`0xe400000000000000` on pseries (QEMU's), else 0",
        "The behaviour word (a u64, `KVM_PPC_CPU_BEHAV_*`); on powernv only the four the kernel reads.",
    ),
    ProfileKey("kvm_hv", "table", "`{}`", "kvm_hv's module parameters, as modprobe passes them."),
    ProfileKey(
        "kvm_hv.nested",
        "boolean",
        "true",
        "`modprobe kvm_hv nested=0` is false: this kernel runs no nested guests of its own.",
    ),
)
SCHEMA_PATHS = frozenset(k.path for k in SCHEMA)
_INDEX = re.compile(r"\[\d+\]")


class ProfileError(KvmsimError, InvalidInput):
    """A malformed host profile; ``str()`` is one line naming the file and the field."""


@attrs.frozen
class Cpu:
    pvr: int | None  # raw PVR; None on x86
    mode: CompatMode | None  # the partition's effective compatibility mode; None = raw
    model: str  # the "cpu" line of /proc/cpuinfo without the mode suffix
    clock_mhz: int

    @property
    def isa_300(self) -> bool:
        """cpu_has_feature(CPU_FTR_ARCH_300): the partition runs at POWER9 level or later."""
        effective = self.effective
        return effective is not None and effective.level >= 9

    @property
    def generation(self) -> CompatMode | None:
        return None if self.pvr is None else mode_of_pvr(self.pvr)

    @property
    def effective(self) -> CompatMode | None:
        """The mode the partition runs in: its compat mode, else the processor's own."""
        return self.mode or self.generation


# The bits each firmware interface can state (powerpc.c's kvmppc_get_cpu_char() masks): OPAL's
# fw-features lack two of the hypercall's characteristics
CPU_CHAR_OPAL = (
    KVM_PPC_CPU_CHAR_SPEC_BAR_ORI31 | KVM_PPC_CPU_CHAR_BCCTRL_SERIALISED | KVM_PPC_CPU_CHAR_L1D_FLUSH_ORI30
    | KVM_PPC_CPU_CHAR_L1D_FLUSH_TRIG2 | KVM_PPC_CPU_CHAR_L1D_THREAD_PRIV | KVM_PPC_CPU_CHAR_COUNT_CACHE_DIS
    | KVM_PPC_CPU_CHAR_BCCTR_FLUSH_ASSIST
)  # fmt: skip
CPU_CHAR_PSERIES = CPU_CHAR_OPAL | KVM_PPC_CPU_CHAR_BR_HINT_HONOURED | KVM_PPC_CPU_CHAR_MTTRIG_THR_RECONF
CPU_BEHAV_ALL = (
    KVM_PPC_CPU_BEHAV_FAVOUR_SECURITY | KVM_PPC_CPU_BEHAV_L1D_FLUSH_PR | KVM_PPC_CPU_BEHAV_BNDS_CHK_SPEC_BAR
    | KVM_PPC_CPU_BEHAV_FLUSH_COUNT_CACHE
)  # fmt: skip


@attrs.frozen
class CpuChar:
    """The firmware's word on speculation: H_GET_CPU_CHARACTERISTICS's answer (pseries) or what
    /ibm,opal/fw-features says (powernv); a profile's default is :data:`QEMU_CPU_CHAR`'s."""

    available: bool
    character: int = 0
    behaviour: int = 0


# What the lab's L0s answer: QEMU's pseries H_GET_CPU_CHARACTERISTICS with its default spapr caps
# (the bits: L1D flushes by ori 30 and trig2, thread-private L1D, branch hints honoured, the bcctr
# flush assist; favour security, flush L1D on entry to PR, a barrier for bounds checks, flush the
# count cache).  QEMU's powernv firmware has no fw-features.
QEMU_CPU_CHAR = {
    "pseries": CpuChar(True, 0x3C40000000000000, 0xE400000000000000),
    "powernv": CpuChar(False),
}


@attrs.frozen
class CpuNode:
    """A ``/cpus/<name>`` device-tree node."""

    name: str
    reg: int
    cpu_version: int | None  # the ``cpu-version`` property (big-endian u32), if present


@attrs.frozen
class Host:
    name: str
    path: str | None  # the file it was read from
    summary: str
    arch: Arch
    platform: Platform
    modules: tuple[str, ...]  # modules the administrator loads (whether init succeeds is derived)
    book3s_hv: bool  # kernel built with CONFIG_KVM_BOOK3S_HV_POSSIBLE
    page_size: int  # PAGE_SIZE of the kernel build (4K or 64K on POWER)
    mmu: Mmu | None  # the partition's MMU mode (radix_enabled()); None on x86
    kvm_max_vcpus: int  # KVM_MAX_VCPUS of the kernel build
    cpu: Cpu
    hypervisor: Hypervisor
    cpu_nodes: tuple[CpuNode, ...]
    # kvm_hv's module parameter ``nested`` (modprobe kvm_hv nested=0): may this kernel run
    # nested guests of its own (kvmhv_enable_nested)
    kvm_hv_nested: bool = True
    # kernel built with CONFIG_KVM_BOOK3S_PR_POSSIBLE (kvm_pr exists), which also selects
    # CONFIG_KVM_MMIO (kvmsim.kernel.kconfig); by default, whether the profile loads kvm_pr
    book3s_pr: bool = False
    cpu_char: CpuChar = CpuChar(False)  # the firmware's word on speculation (KVM_PPC_GET_CPU_CHAR)
    # the cpu nodes' ibm,processor-radix-AP-encodings (empty: no such property)
    radix_ap_encodings: tuple[int, ...] = ()
    mem_total_kb: int = DEFAULT_MEM_TOTAL_KB  # MemTotal: the RAM the kernel manages (totalram_pages), in kB
    spapr_tce_iommu: bool = False  # kernel built with CONFIG_SPAPR_TCE_IOMMU (book3s_64_vio.c)
    # `kvmsim record`'s raw observations, kept apart from the machine (see kvmsim.record)
    recorded: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    @property
    def present_cpus(self) -> int:
        """num_present_cpus(): one for each cpu node of the device tree (one thread each: the
        profiles describe partitions, not their SMT), at least one."""
        return max(1, len(self.cpu_nodes))


# ---------------------------------------------------------------------------
# reading

T = TypeVar("T")


class _Table:
    """A TOML table being consumed; every key must be taken, every value type-checked."""

    def __init__(self, where: str, prefix: str, data: dict[str, Any]) -> None:
        self.where, self.prefix, self.data = where, prefix, dict(data)
        self.known: list[str] = []  # the keys looked for so far, for "did you mean"

    def error(self, key: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.where}: {self.prefix}{key}: {problem}")

    def _look(self, key: str) -> None:
        path = _INDEX.sub("[]", self.prefix + key)
        assert path in SCHEMA_PATHS, f"profile key {path!r} is not in profile.SCHEMA"  # the docs list every key
        self.known.append(key)

    def has(self, key: str) -> bool:
        self._look(key)
        return key in self.data

    def take(self, key: str, kind: type[T], default: T | None = None) -> T:
        self._look(key)
        if key not in self.data:
            if default is None:
                self.typo_of(key)
                raise self.error(key, "missing")
            return default
        value = self.data.pop(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {_TYPE_NAMES[kind]}, got {_toml_type(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.take(key, str, default)
        if value not in choices:
            raise self.error(key, f"unknown value {value!r} (expected one of: {', '.join(choices)})")
        return value

    def table(self, key: str) -> _Table:
        if key not in self.data:  # [cpus] for [cpu]: say so, not "cpu.pvr: missing"
            for other, value in self.data.items():
                if isinstance(value, dict) and _close_matches(other, [key], n=1, cutoff=0.75):
                    raise self.error(other, f"unknown table (did you mean [{self.prefix}{key}]?)")
        return _Table(self.where, f"{self.prefix}{key}.", self.take(key, dict, {}))

    def typo_of(self, wanted: str) -> None:
        """A missing key is often a misspelt one: name the unknown key, and what it may mean."""
        for key in self.data:
            if _close_matches(key, [wanted], n=1, cutoff=0.75):
                raise self.error(key, f"unknown key (did you mean {wanted!r}?)")

    def done(self) -> None:
        for key in self.data:
            close = _close_matches(key, self.known, n=1, cutoff=0.75)
            raise self.error(key, f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key")


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "a boolean", list: "an array", dict: "a table"}


def _toml_type(value: object) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float")):
        if isinstance(value, kind):
            return name
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _mode(t: _Table, key: str, name: object, modes: dict[str, CompatMode]) -> CompatMode:
    if not isinstance(name, str) or name not in modes:
        raise t.error(key, f"unknown mode {name!r} (expected one of: {', '.join(modes)})")
    return modes[name]


def _hcall(t: _Table, key: str) -> int:
    name = t.choice(key, tuple(papr.H_RETURN_CODES), "H_SUCCESS")
    return papr.H_RETURN_CODES[name]


def _clock(t: _Table, default: int) -> int:
    mhz = t.take("clock_mhz", int, default)
    if not 1 <= mhz <= 100_000:
        raise t.error("clock_mhz", f"{mhz} is not a clock in MHz (1..100000)")
    return mhz


def _read_cpu(t: _Table, platform: str) -> Cpu:
    if platform == "x86":
        cpu = Cpu(None, None, t.take("model", str, "x86_64"), _clock(t, 2000))
        t.done()
        return cpu
    pvr = t.take("pvr", int)
    generation = mode_of_pvr(pvr) if 0 <= pvr <= 0xFFFFFFFF else None
    if generation is None:
        raise t.error("pvr", f"{pvr:#x} is not the PVR of a known POWER processor")
    mode = None
    if t.has("mode"):
        mode = _mode(t, "mode", t.data.pop("mode"), MODES)
        if not generation.level - 2 <= mode.level <= generation.level:
            raise t.error("mode", f"a {generation.name} processor cannot run in {mode.name} mode")
    model = t.take("model", str, generation.name.upper())
    cpu = Cpu(pvr, mode, model, _clock(t, 2750))
    t.done()
    return cpu


def _read_hypervisor(t: _Table, platform: str) -> Hypervisor:
    kinds = ("powervm", "qemu", "kvm") if platform == "pseries" else ("none",)
    named = t.data.get("kind")
    if isinstance(named, str) and named not in kinds and named in ("powervm", "qemu", "kvm", "none"):
        why = "a pseries hypervisor: a powernv host runs on bare metal" if platform != "pseries" else "bare metal's"
        raise t.error("kind", f"{named!r} is {why} (on {platform}: {', '.join(kinds)})")
    kind = t.choice("kind", kinds, None if platform == "pseries" else "none")
    possible, default = NESTED_APIS.get(kind, ((), ()))
    apis: list[object] = t.take("nested_apis", list, list(default))
    for api in apis:
        if api not in possible:
            offered = ", ".join(f"v{a}" for a in possible) or "none"
            raise t.error("nested_apis", f"{kind} does not offer nested API {api!r} (it offers: {offered})")
    nested_apis = tuple(sorted(cast(list[int], apis)))
    v2 = 2 in nested_apis
    offers: tuple[CompatMode, ...] = ()
    if t.has("offers"):
        if not v2:
            raise t.error("offers", "only a nested API v2 hypervisor answers H_GUEST_GET_CAPABILITIES")
        names = t.take("offers", list)
        offers = tuple(_mode(t, "offers", n, {m.name: m for m in CAP_MODES}) for n in names)
    elif v2:
        t.typo_of("offers")
        raise t.error("offers", "missing (what H_GUEST_GET_CAPABILITIES reports)")
    for key in ("other_capability_bits", "hcall_at_init", "hcall_at_runtime", "set_capabilities_hcall"):
        if t.has(key) and not v2:
            raise t.error(key, "only meaningful for a nested API v2 hypervisor")
    other = t.take("other_capability_bits", int, 0)
    if not 0 <= other <= 0xFFFFFFFFFFFFFFFF:
        raise t.error("other_capability_bits", f"{other:#x} does not fit 64 bits")
    init, runtime = _hcall(t, "hcall_at_init"), _hcall(t, "hcall_at_runtime")
    set_caps = _hcall(t, "set_capabilities_hcall")
    hv = Hypervisor(cast(HypervisorKind, kind), nested_apis, offers, other, init, runtime, set_caps)
    t.done()
    return hv


def _read_cpu_char(t: _Table, platform: str) -> CpuChar:
    if platform == "x86":
        if t.data:
            raise t.error(next(iter(t.data)), "an x86 machine has no POWER firmware")
        return CpuChar(False)
    default = QEMU_CPU_CHAR[platform]
    available = t.take("available", bool, default.available)
    words = {"character": (CPU_CHAR_PSERIES if platform == "pseries" else CPU_CHAR_OPAL, default.character),
             "behaviour": (CPU_BEHAV_ALL, default.behaviour)}  # fmt: skip
    values = {}
    for key, (allowed, fallback) in words.items():
        value = t.take(key, int, fallback)
        if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
            raise t.error(key, f"{value:#x} does not fit 64 bits")
        if platform == "powernv" and value & ~allowed:
            raise t.error(key, f"bits {value & ~allowed:#x} are none that a fw-features node sets")
        values[key] = value
    t.done()
    return CpuChar(available, values["character"], values["behaviour"])


RADIX_AP_ENCODINGS = (0x0000000C, 0xA0000010, 0x20000015, 0x4000001E)  # 4K, 64K, 2M, 1G: PowerVM's, QEMU's pseries


def _read_radix_ap_encodings(t: _Table, mmu: Mmu | None) -> tuple[int, ...]:
    key = "ibm,processor-radix-AP-encodings"
    if not t.has(key):
        return RADIX_AP_ENCODINGS if mmu == "radix" else ()
    if mmu != "radix":
        raise t.error(key, "only a radix host's cpu nodes have it")
    values = t.take(key, list)
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF:
            raise t.error(key, f"{value!r} is not a u32 cell")
    return tuple(values)


def _read_cpu_nodes(t: _Table, cpu: Cpu) -> tuple[CpuNode, ...]:
    if not t.has("cpus"):
        t.done()
        gen = cpu.generation
        if gen is None:
            return ()
        version = cpu.mode.logical_pvr if cpu.mode else None
        return (CpuNode(f"PowerPC,{gen.name.upper()}@0", 0, version),)
    nodes: list[CpuNode] = []
    for i, raw in enumerate(t.take("cpus", list)):
        if not isinstance(raw, dict):
            raise t.error(f"cpus[{i}]", f"expected a table, got {_toml_type(raw)}")
        n = _Table(t.where, f"{t.prefix}cpus[{i}].", raw)
        name, reg = n.take("name", str), n.take("reg", int, 8 * i)
        if not NODE_NAME.fullmatch(name) or name in (".", ".."):
            raise n.error("name", f"{name[:40]!r} is not a device-tree node name (1-63 of A-Z a-z 0-9 , . _ + - @)")
        if any(node.name == name for node in nodes):
            raise n.error("name", f"{name!r} is already a node (names are unique under /cpus)")
        if not 0 <= reg <= 0xFFFFFFFF:
            raise n.error("reg", f"{reg} does not fit a u32 property")
        version = n.take("cpu-version", int) if n.has("cpu-version") else None
        if version is not None and not 0 <= version <= 0xFFFFFFFF:
            raise n.error("cpu-version", f"{version:#x} does not fit a u32 property")
        n.done()
        nodes.append(CpuNode(name, reg, version))
    t.done()
    return tuple(nodes)


def parse(text: str, *, name: str, where: str, path: str | None = None) -> Host:
    """Parse profile ``text``; ``where`` names it in errors (usually the file's path)."""
    return from_mapping(toml_document(text, where), name=name, where=where, path=path)


def toml_document(text: str, where: str) -> dict[str, Any]:
    import tomllib  # a start-up's worth (datetime, its patterns): only when a profile is parsed

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{where}: bad TOML: {exc}") from None
    except RecursionError:
        raise ProfileError(f"{where}: bad TOML: nested too deeply") from None


def from_mapping(data: Mapping[str, Any], *, name: str, where: str, path: str | None = None) -> Host:
    """A profile from its document (what the TOML reads as, or a profile with per-test
    overrides applied), checked exactly as a file's; ``where`` names it in errors."""
    t = _Table(where, "", dict(data))
    summary = t.take("summary", str)
    arch_name = t.choice("arch", tuple(ARCHES))
    platform = t.choice("platform", tuple(PLATFORMS))
    if arch_name not in PLATFORMS[platform]:
        raise t.error("platform", f"{platform} does not run on {arch_name}")
    module_list = t.take("modules", list, [])
    for m in module_list:
        if m not in MODULES[platform]:
            raise t.error("modules", f"unknown module {m!r} on {platform} (expected: {', '.join(MODULES[platform])})")
    powerpc = platform != "x86"
    book3s_hv = t.take("book3s_hv", bool, powerpc)
    if book3s_hv and not powerpc:
        raise t.error("book3s_hv", "Book3S HV exists only on powerpc")
    book3s_pr = t.take("book3s_pr", bool, "kvm_pr" in module_list)
    if book3s_pr and not powerpc:
        raise t.error("book3s_pr", "Book3S PR exists only on powerpc")
    if not book3s_pr and "kvm_pr" in module_list:
        raise t.error("book3s_pr", "false, but the profile loads kvm_pr: a kernel without PR has no such module")
    spapr_tce_iommu = t.take("spapr_tce_iommu", bool, powerpc)
    if spapr_tce_iommu and not powerpc:
        raise t.error("spapr_tce_iommu", "the sPAPR TCE IOMMU exists only on powerpc")
    page_size = t.take("page_size", int, DEFAULT_PAGE_SIZE[platform])
    if page_size not in PAGE_SIZES or (not powerpc and page_size != 4096):
        allowed = PAGE_SIZES if powerpc else (4096,)
        raise t.error("page_size", f"{page_size} is not a page size this kernel can have ({allowed})")
    max_vcpus = t.take("kvm_max_vcpus", int, DEFAULT_MAX_VCPUS[platform])
    if not 1 <= max_vcpus <= 1 << 16:
        raise t.error("kvm_max_vcpus", f"{max_vcpus} is out of range (1..65536)")
    mem_total_kb = t.take("mem_total_kb", int, DEFAULT_MEM_TOTAL_KB)
    if not 1024 <= mem_total_kb <= 1 << 44:
        raise t.error("mem_total_kb", f"{mem_total_kb} is not a machine's RAM in kB (1 MiB..16 PiB)")
    cpu = _read_cpu(t.table("cpu"), platform)
    mmu: Mmu | None = None
    if powerpc:
        mmu = cast(Mmu, t.choice("mmu", ("radix", "hash"), "radix" if cpu.isa_300 else "hash"))
        if mmu == "radix" and not cpu.isa_300:
            effective = cpu.effective.name if cpu.effective else "raw"
            raise t.error("mmu", f"radix needs ISA 3.0 (POWER9 or later); this partition runs in {effective} mode")
    elif t.has("mmu"):
        raise t.error("mmu", "only POWER partitions choose radix or hash")
    hypervisor = _read_hypervisor(t.table("hypervisor"), platform)
    dt = t.table("device_tree")
    if not powerpc and dt.data:
        raise dt.error("cpus", "an x86 machine has no device tree")
    radix_ap = _read_radix_ap_encodings(dt, mmu)
    cpu_nodes = _read_cpu_nodes(dt, cpu)
    for i, node in enumerate(cpu_nodes):
        if node.cpu_version is not None and cpu.mode and node.cpu_version != cpu.mode.logical_pvr:
            dt_mode = mode_of_logical_pvr(node.cpu_version)
            if dt_mode is not None:
                raise dt.error(f"cpus[{i}].cpu-version", f"{dt_mode.name} contradicts cpu.mode {cpu.mode.name}")
    cpu_char = _read_cpu_char(t.table("cpu_char"), platform)
    kvm_hv = t.table("kvm_hv")  # the module's parameters, as modprobe passes them
    if kvm_hv.has("nested") and "kvm_hv" not in module_list:
        raise kvm_hv.error("nested", "a parameter of kvm_hv, which this host does not load")
    kvm_hv_nested = kvm_hv.take("nested", bool, True)
    kvm_hv.done()
    recorded = t.take("recorded", dict, {})
    t.done()
    return Host(
        name,
        path,
        summary,
        ARCHES[arch_name],
        cast(Platform, platform),
        tuple(module_list),
        book3s_hv,
        page_size,
        mmu,
        max_vcpus,
        cpu,
        hypervisor,
        cpu_nodes,
        kvm_hv_nested,
        book3s_pr,
        cpu_char,
        radix_ap,
        mem_total_kb,
        spapr_tce_iommu,
        MappingProxyType(recorded),
    )


def _close_matches(word: str, possibilities: list[str], n: int, cutoff: float = 0.6) -> list[str]:
    """``difflib.get_close_matches``, imported only when a name is wrong."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=n, cutoff=cutoff)


# Paths here are strings: pathlib costs a start-up (urllib.parse, ipaddress) that nothing
# on the kernel's path needs; resolve() gives users a Path.
def builtin_hosts() -> str:
    """The profiles shipped inside the package (``kvmsim/hosts``; ``fixtures/hosts`` in a
    checkout is the same directory)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # kvmsim/
    return os.path.join(package, "hosts")  # no filesystem look: it may be faked


CONFIGURED_DIRS: list[str] = []  # searched first: the pytest plugin's ``kvmsim_hosts`` (no environment change)


def search_path() -> list[str]:
    """Where profile names are looked up: the pytest ``kvmsim_hosts`` ini option's
    directories, ``$KVMSIM_HOSTS`` (``--hosts-dir``), then the built-in profiles."""
    extra = [p for p in os.environ.get(HOSTS_ENV, "").split(os.pathsep) if p]
    return [*CONFIGURED_DIRS, *extra, builtin_hosts()]


def prepend_search_path(dirs: Sequence[str]) -> None:
    """Put ``dirs`` first on the search path (``--hosts-dir``), through ``$KVMSIM_HOSTS``: what
    ``kvmsim run`` passes on to its command."""
    if dirs:
        current = os.environ.get(HOSTS_ENV)
        os.environ[HOSTS_ENV] = os.pathsep.join([*dirs, *([current] if current else [])])


# Profiles are found and read on the real filesystem even while a test fakes it: pyfakefs
# patches os, os.path, pathlib and open, never posix, so these go through posix alone.
def _real_stat(path: StrPath) -> os.stat_result | None:
    try:
        return posix.stat(os.fspath(path))
    except OSError:
        return None


def read_bytes(path: StrPath, limit: int = MAX_PROFILE) -> bytes:
    """A profile file's bytes, from the real filesystem (a FIFO does not block: O_NONBLOCK);
    ProfileError when it is not a regular file or is larger than ``limit``."""
    try:
        fd = posix.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(posix.fstat(fd).st_mode):
            raise ProfileError(f"{path}: cannot read profile: not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = posix.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror}") from None
    finally:
        posix.close(fd)
    if size > limit:
        raise ProfileError(f"{path}: cannot read profile: larger than {limit} bytes")
    return b"".join(chunks)


def read_text(path: StrPath) -> str:
    """A profile file's text (UTF-8), as :func:`read_bytes` reads it."""
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None


def resolve(name_or_path: StrPath) -> Path:
    """A profile name (``powervm-p11``) is looked up on :func:`search_path`; else a path."""
    from pathlib import Path

    return Path(find(name_or_path))


def find(name_or_path: StrPath) -> str:
    """:func:`resolve`, as a string."""
    text = os.fspath(name_or_path)
    if "/" in text or text.endswith(".toml"):
        return text
    for directory in search_path():
        path = os.path.join(directory, f"{text}.toml")
        st = _real_stat(path)
        if st is not None and stat.S_ISREG(st.st_mode):
            return path
    close = _close_matches(text, names(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else " (see 'kvmsim hosts' for the list)"
    raise ProfileError(f"{text}: unknown host{hint}")


def load(name_or_path: StrPath) -> Host:
    path = find(name_or_path)
    name = os.path.splitext(os.path.basename(path))[0]
    return from_mapping(document(path, name), name=name, where=path, path=path)


def document(path: str, name: str) -> dict[str, Any]:
    """The TOML document of the profile file at ``path``.  A built-in profile whose bytes are
    the ones the index was made from is read from the index (``_hosts``, generated from the
    TOML files: the file stays the one source, the index is its parse, checked by CRC like a
    .pyc by its source's stamp); anything else is parsed."""
    data = read_bytes(path)
    if os.path.dirname(path) == builtin_hosts():
        from ._hosts import PARSED

        known = PARSED.get(name)
        if known is not None and known[0] == zlib.crc32(data):
            return known[1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None
    return toml_document(text, path)


def index_source() -> str:
    """``_hosts.py``: every built-in profile's CRC and parse (``make hosts-index`` writes it)."""
    lines = [
        '"""Generated by ``python -m kvmsim.kernel.profile`` from kvmsim/hosts/*.toml: do not edit.',
        "",
        "Each built-in profile's CRC-32 and its TOML document, so a start-up need not import",
        'tomllib (kvmsim.kernel.profile.document checks the CRC against the file first)."""',
        "",
        "from typing import Any",
        "",
        "PARSED: dict[str, tuple[int, dict[str, Any]]] = {",
    ]
    directory = builtin_hosts()
    for name in sorted(n.removesuffix(".toml") for n in posix.listdir(directory) if n.endswith(".toml")):
        path = os.path.join(directory, f"{name}.toml")
        data = read_bytes(path)
        lines.append(f"    {name!r}: ({zlib.crc32(data)}, {toml_document(data.decode(), path)!r}),")
    return "\n".join([*lines, "}", ""])


def names() -> list[str]:
    """Every profile name on the search path."""
    found: set[str] = set()
    for directory in search_path():
        with contextlib.suppress(OSError):
            found.update(n.removesuffix(".toml") for n in posix.listdir(os.fspath(directory)) if n.endswith(".toml"))
    return sorted(found)


if __name__ == "__main__":  # make hosts-index
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hosts.py"), "w") as out:
        out.write(index_source())
