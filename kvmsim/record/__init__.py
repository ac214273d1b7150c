"""``kvmsim record`` and ``kvmsim verify``: grow fidelity from real machines.

``record`` reads what the machine shows (uname, ``/proc/cpuinfo``, the device tree's
``cpu-version``, the loaded KVM modules), asks the device every probe of
:func:`kvmsim.user.probe.kvm_probes` (both revisions' numbers), and writes a host profile the
simulator loads, with the raw observations in its ``[recorded]`` section.  What the files
cannot say (which hypervisor below an LPAR, what it offers, a failing hypercall) is fitted:
the first candidate profile whose simulation answers every probe as recorded is written.

``verify`` replays the recorded probes against the profile's simulated kernel and reports
every agreement and mismatch."""

from __future__ import annotations

import datetime
import errno
import itertools
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from kvmcompat import Device, DeviceTree, RealDevice, machine_arch

from ..kernel import papr
from ..kernel.anon_inodes import FILE_OPS
from ..kernel.profile import Host, ProfileError, from_mapping, parse
from ..uapi import (
    ARCHES,
    DEV_KVM,
    KVM_CAP_MAX_VCPUS,
    KVM_PPC_CPU_CHAR,
    KVM_PPC_RMMU_INFO,
    REVISIONS,
    RMMU_AP_ENCODINGS,
    AbiRevision,
    ByteOrder,
    mode_of_logical_pvr,
    mode_of_pvr,
    modes_of_caps,
)
from ..user import probe
from ..user.probe import Answer
from ..user.simulated import Kernel, SimDevice
from .toml import dumps

KVM_MODULES = ("kvm", "kvm_hv", "kvm_pr", "kvm_intel", "kvm_amd", "kvm_pvm")
CPUINFO_KEYS = (
    "cpu",
    "clock",
    "revision",
    "timebase",
    "platform",
    "model",
    "machine",
    "MMU",
    "vendor_id",
    "model name",
)
DEVICE_TREE_CPUS = "/proc/device-tree/cpus"


# ---------------------------------------------------------------------------
# observing


def _read(path: str, notes: list[str], *, binary: bool = False) -> Any:
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError as exc:
        notes.append(f"{path}: {exc.strerror}")
        return None


def cpuinfo_fields(text: str | None) -> dict[str, str]:
    """The first value of each line that says what the machine is (the first processor's)."""
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in CPUINFO_KEYS and key not in fields:
            fields[key] = value.strip()
    return fields


def _meminfo(notes: list[str]) -> dict[str, int]:
    """``mem_total_kb``: MemTotal of /proc/meminfo (what HV's memory slots are measured against)."""
    match = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo", notes) or "", re.M)
    return {"mem_total_kb": int(match.group(1))} if match else {}


def _cpu_nodes(notes: list[str]) -> list[dict[str, Any]]:
    try:
        nodes = DeviceTree().cpu_nodes()  # the client's reader: the device tree is read one way
    except OSError as exc:
        notes.append(f"{DEVICE_TREE_CPUS}: {exc.strerror}")
        return []
    return [{"name": name, **({"cpu-version": version} if version is not None else {})} for name, version in nodes]


def _modules(notes: list[str]) -> list[str]:
    try:
        present = set(os.listdir("/sys/module"))
    except OSError as exc:
        notes.append(f"/sys/module: {exc.strerror}")
        return []
    return [m for m in KVM_MODULES if m in present]


def observe(device: str = DEV_KVM) -> dict[str, Any]:
    """Everything ``record`` reads and asks, as plain values (the ``[recorded]`` section)."""
    notes: list[str] = []
    uname = os.uname()
    page_size = os.sysconf("SC_PAGE_SIZE")
    target = RealDevice(device, arch=machine_arch())  # an unknown machine: refused first
    stats: dict[str, int | str] = {}
    asked = probe.run(
        target, probe.kvm_probes(REVISIONS.values()), lambda t, fds: stats.update(probe.real_stats(t, fds))
    )
    answers = {name: a.to_toml() for name, a in asked.items()}
    if answers.get("open") != "fd":
        notes.append(f"{device}: {answers.get('open')}")
    return {
        "date": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "kernel": uname.release,
        "machine": uname.machine,
        "byteorder": sys.byteorder,
        "page_size": page_size,
        "device": device,
        "cpuinfo": cpuinfo_fields(_read("/proc/cpuinfo", notes)),
        **_meminfo(notes),
        "cpus": _cpu_nodes(notes) if target.arch.is_powerpc else [],
        "modules": _modules(notes),
        "probes": answers,
        "file_ops": probe.real_file_ops(target),
        "stats": stats,
        "notes": notes,
    }


# ---------------------------------------------------------------------------
# fitting a profile to the observations


def _pvr(cpuinfo: Mapping[str, str]) -> int | None:
    match = re.search(r"pvr ([0-9a-f]{4}) ([0-9a-f]{4})", cpuinfo.get("revision", ""))
    return int(match[1] + match[2], 16) if match else None


def answered_caps(probes: Mapping[str, Any], byteorder: ByteOrder) -> int | None:
    """The bitmap of the first revision's ioctl that succeeded, from the bytes it wrote."""
    for rev in REVISIONS.values():
        if f"{rev.name} ioctl" not in probes:
            continue
        answer = Answer.from_toml(probes[f"{rev.name} ioctl"])
        if answer.error is None:  # succeeded; nothing written means caps 0
            return answer.field(rev.layout, byteorder, "compat_capabilities") or 0
    return None


def _struct_written(recorded: object, size: int) -> bytes | None:
    """The whole struct a successful probe's answer shows (its buffer started as 0xaa bytes)."""
    if recorded is None:
        return None
    answer = Answer.from_toml(recorded)
    if answer.error is not None or answer.written is None:
        return None
    tail = bytes.fromhex(answer.tail) if answer.tail not in (None, "changed") else b"\xaa" * (size - 24)
    return (answer.written + tail)[:size]


def cpu_char(recorded: object, byteorder: ByteOrder) -> dict[str, Any] | None:
    """The profile's ``cpu_char`` from KVM_PPC_GET_CPU_CHAR's answer: unavailable where the
    masks are 0 (the hypercall failed, or no fw-features node)."""
    data = _struct_written(recorded, KVM_PPC_CPU_CHAR.size)
    if data is None:
        return None
    words = KVM_PPC_CPU_CHAR.unpack(byteorder, data)
    if not words["character_mask"]:
        return {"available": False}
    return {"available": True, "character": words["character"], "behaviour": words["behaviour"]}


def radix_ap_encodings(recorded: object, byteorder: ByteOrder) -> list[int] | None:
    """The cpu nodes' ``ibm,processor-radix-AP-encodings`` as KVM_PPC_GET_RMMU_INFO's answer
    shows them: ``[]`` where they are the kernel's own assumption without one (4K and 64K)."""
    data = _struct_written(recorded, KVM_PPC_RMMU_INFO.size)
    if data is None:
        return None
    info = KVM_PPC_RMMU_INFO.unpack(byteorder, data)
    cells = [info[f"ap_encoding{i}"] for i in range(RMMU_AP_ENCODINGS) if info[f"ap_encoding{i}"]]
    return [] if cells == [0x0000000C, 0xA0000010] else cells


def candidates(obs: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    """Profiles (as TOML-ready dicts) consistent with what the files say, likeliest first."""
    cpuinfo, machine = obs["cpuinfo"], obs["machine"]
    probes = obs["probes"]
    base: dict[str, Any] = {
        "summary": f"Recorded on {machine}, Linux {obs['kernel']}, {obs['date']}",
        "arch": machine,
        "modules": [m for m in obs["modules"] if m != "kvm"],
        "page_size": obs.get("page_size", 4096),
    }
    if isinstance(obs.get("mem_total_kb"), int):
        base["mem_total_kb"] = obs["mem_total_kb"]
    max_vcpus = probes.get(f"cap {KVM_CAP_MAX_VCPUS} on dev")
    if isinstance(max_vcpus, int) and max_vcpus > 0:
        base["kvm_max_vcpus"] = max_vcpus
    if not ARCHES[machine].is_powerpc:
        yield {**base, "platform": "x86", "cpu": {"model": cpuinfo.get("model name", machine)}}
        return
    # KVM_GET_VCPU_MMAP_SIZE on powerpc: PAGE_SIZE, and a page more for CONFIG_KVM_MMIO, which a
    # build with kvm_pr selects (KVM_BOOK3S_PR_POSSIBLE)
    mmap_size = probes.get("vcpu mmap size")
    pr_built: bool | None = None
    mapped = {4096: (4096, False), 8192: (4096, True), 65536: (65536, False), 131072: (65536, True)}
    if isinstance(mmap_size, int) and mmap_size in mapped:
        base["page_size"], pr_built = mapped[mmap_size]
    if cpuinfo.get("MMU") in ("Radix", "Hash"):
        base["mmu"] = cpuinfo["MMU"].lower()
    pvr = _pvr(cpuinfo)
    if pvr is None or mode_of_pvr(pvr) is None:
        raise ProfileError(f"/proc/cpuinfo: no PVR of a known POWER processor in {cpuinfo.get('revision')!r}")
    cpu: dict[str, Any] = {"pvr": pvr, "model": cpuinfo.get("cpu", "").split(" ")[0] or "POWER"}
    version = next((n["cpu-version"] for n in obs["cpus"] if "cpu-version" in n), None)
    mode = mode_of_logical_pvr(version) if version is not None else None
    if mode is not None:
        cpu["mode"] = mode.name
    dt: dict[str, Any] = {"cpus": [dict(n) for n in obs["cpus"]]} if obs["cpus"] else {}
    byteorder = ARCHES[machine].byteorder
    encodings = radix_ap_encodings(probes.get("rmmu info"), byteorder)
    if encodings is not None:
        dt["ibm,processor-radix-AP-encodings"] = encodings
    firmware = cpu_char(probes.get("cpu char"), byteorder)
    if firmware is not None:
        base["cpu_char"] = firmware
    if probes.get("tce64 1G of 4K") == "ENOTTY":  # powerpc.c's TCE cases are #ifdef CONFIG_SPAPR_TCE_IOMMU
        base["spapr_tce_iommu"] = False

    def built(modules: list[str]) -> dict[str, Any] | None:
        """The build's kvm_pr as the mapping size says; None where the modules contradict it."""
        if pr_built is None:
            return {}
        if "kvm_pr" in modules:
            return {} if pr_built else None
        return {"book3s_pr": True} if pr_built else {}

    def params(modules: list[str]) -> list[dict[str, Any]]:
        """kvm_hv's module parameter nested, as modprobe may have passed it (KVM_ENABLE_CAP's
        NESTED_HV tells: EPERM with nested=0)."""
        return [{}, {"kvm_hv": {"nested": False}}] if "kvm_hv" in modules else [{}]

    if cpuinfo.get("platform") == "PowerNV":
        for modules in _module_sets(obs["modules"]):
            if (pr := built(modules)) is not None:
                for param in params(modules):
                    yield {**base, **pr, **param, "modules": modules, "platform": "powernv", "cpu": cpu,
                           "device_tree": dt}  # fmt: skip
        return
    effective = mode or mode_of_pvr(pvr)
    caps = answered_caps(probes, ARCHES[machine].byteorder)
    answered = [m.name for m in modes_of_caps(caps or 0)]
    offers = answered or ([effective.name] if effective and effective.cap_bit else [])
    v4_errno = probes.get("v4 ioctl")
    runtime = ["H_SUCCESS"]
    if isinstance(v4_errno, str) and v4_errno.startswith("E"):
        code = -getattr(errno, v4_errno, 0)
        if code in papr.H_NAMES:
            runtime.append(papr.H_NAMES[code])
    powervm = cpuinfo.get("model", "").startswith("IBM,")
    kinds = [("powervm", [2]), ("powervm", [])] if powervm else [("qemu", [1]), ("qemu", [2]), ("qemu", [])]
    for modules, (kind, apis), hcall in itertools.product(_module_sets(obs["modules"]), kinds, runtime):
        pr = built(modules)
        if pr is None:
            continue
        hv: dict[str, Any] = {"kind": kind, "nested_apis": apis}
        if 2 in apis:
            hv["offers"] = offers
            if hcall != "H_SUCCESS":
                hv["hcall_at_runtime"] = hcall
        for param in params(modules):
            yield {**base, **pr, **param, "modules": modules, "platform": "pseries", "cpu": cpu, "hypervisor": hv,
                   "device_tree": dt}  # fmt: skip


def _module_sets(observed: list[str]) -> list[list[str]]:
    """What was modprobe'd: the KVM modules seen loaded; with only kvm.ko loaded, one that
    refused (kvm_hv or kvm_pr: /sys/module cannot say which)."""
    loaded = [m for m in observed if m != "kvm"]
    if loaded or "kvm" not in observed:
        return [loaded]
    return [["kvm_hv"], ["kvm_pr"]]


@attrs.frozen
class Check:
    name: str
    recorded: Answer | str
    simulated: Answer | str | None

    @staticmethod
    def shown(answer: Answer | str | None) -> str:
        return str(answer.to_toml()) if isinstance(answer, Answer) else str(answer)

    @property
    def agrees(self) -> bool:
        return self.recorded == self.simulated


def replay(kernel: Kernel, recorded: Mapping[str, Any], stats: object = None) -> list[Check]:
    """Ask the simulated kernel what was asked of the recorded one (the lab's recordings
    hold the capability sweep too), and read its stats files after, as the recorded process did
    (their ids of its pid)."""
    asked = [p for p in probe.kvm_probes(REVISIONS.values(), sweep=True) if p.name in recorded]
    recorded_stats = stats if isinstance(stats, Mapping) and isinstance(stats.get("pid"), int) else {}
    simulated_stats: dict[str, int | str] = {}

    def finish(target: Device, fds: dict[str, int]) -> None:
        simulated_stats.update(probe.read_stats(target, fds, kernel.current.contents))

    if recorded_stats:
        kernel.current.pid = recorded_stats["pid"]
    simulated = probe.run(SimDevice(kernel), asked, finish if recorded_stats else None)
    checks = [Check(name, Answer.from_toml(value), simulated.get(name)) for name, value in recorded.items()]
    stats_checks = [Check(f"stats {name}", str(value), str(simulated_stats.get(name)))
                    for name, value in recorded_stats.items() if name != "pid"]  # fmt: skip
    return checks + stats_checks


def kernel_revisions(recorded: Mapping[str, Any]) -> list[AbiRevision]:
    """The revisions whose own request the recorded kernel knew (it did not answer ENOTTY
    on the VM fd), else all of them (a kernel whose VM could not be created)."""
    known = [
        r for r in REVISIONS.values() if r.ioctl is not None and recorded.get(f"{r.name} ioctl", "ENOTTY") != "ENOTTY"
    ]
    return known or list(REVISIONS.values())


def best_replay(host: Host, recorded: Mapping[str, Any], stats: object = None) -> tuple[AbiRevision, list[Check]]:
    """The revision under which the profile's simulation agrees most, and its checks."""
    results = [(rev, replay(Kernel(host, rev), recorded, stats)) for rev in kernel_revisions(recorded)]
    return max(results, key=lambda r: sum(c.agrees for c in r[1]))


def fit(obs: dict[str, Any], where: str) -> tuple[str, AbiRevision, list[Check]]:
    """The first candidate profile that reproduces every probe (else the closest), as TOML
    with the observations and the revision the kernel spoke in its ``[recorded]`` section."""
    best: tuple[dict[str, Any], AbiRevision, list[Check]] | None = None
    for candidate in candidates(obs):
        host = from_mapping(candidate, name="recorded", where=where)
        rev, checks = best_replay(host, obs["probes"], obs.get("stats"))
        if best is None or sum(c.agrees for c in checks) > sum(c.agrees for c in best[2]):
            best = (candidate, rev, checks)
        if all(c.agrees for c in checks):
            break
    assert best is not None
    candidate, rev, checks = best
    checks += file_op_checks(obs.get("file_ops"))
    spoken = len(kernel_revisions(obs["probes"])) == 1  # its capability said which revision it is
    return dumps(candidate | {"recorded": obs | ({"revision": rev.name} if spoken else {})}), rev, checks


def verify(text: str, where: str) -> tuple[AbiRevision, list[Check]]:
    """Replay a recorded profile's probes on its simulated kernel."""
    host = parse(text, name="recorded", where=where)
    recorded = host.recorded.get("probes")
    if not isinstance(recorded, Mapping) or not recorded:
        raise ProfileError(f"{where}: recorded.probes: missing (not a file written by kvmsim record)")
    named = host.recorded.get("revision")
    if named in REVISIONS:
        rev, checks = REVISIONS[named], replay(Kernel(host, REVISIONS[named]), recorded, host.recorded.get("stats"))
    else:
        rev, checks = best_replay(host, recorded, host.recorded.get("stats"))
    checks += file_op_checks(host.recorded.get("file_ops"))
    lab = host.recorded.get("lab")
    if isinstance(lab, Mapping) and isinstance(lab.get("dmesg"), list):
        real = kvm_hv_lines(lab["dmesg"])
        simulated = kvm_hv_lines(Kernel(host, rev).dmesg)
        checks.append(Check("dmesg (kvm-hv lines)", " | ".join(real) or "-", " | ".join(simulated) or "-"))
    return rev, checks


def file_op_checks(recorded: object) -> list[Check]:
    """What the recorded fds answered besides ioctl (read, write, lseek, mmap, poll, fstat, their
    /proc link), against the kernel's file operations (anon_inodes.FILE_OPS)."""
    if not isinstance(recorded, Mapping):
        return []  # recorded before kvmsim asked them
    checks = []
    for key, value in recorded.items():
        kind, _, op = str(key).partition(".")
        checks.append(Check(f"file {key}", str(value), FILE_OPS.get(kind, {}).get(op)))
    return checks


def kvm_hv_lines(lines: Iterable[str]) -> list[str]:
    """kvm_hv's own dmesg lines (``kvm-hv:`` and ``KVM-HV:``), the ones kvmsim models."""
    return [line for line in lines if line.lower().startswith("kvm-hv:")]
