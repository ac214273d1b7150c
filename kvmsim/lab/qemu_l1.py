"""Differential QEMU (``kvmsim lab --qemu``): Debian's QEMU for POWER started to ``-S`` inside a
real L1 — the lab's boot, Linux 7.3 with kvm_hv — under ``strace -f -e trace=ioctl``, and the
same QEMU with the same command under ``kvmsim run --trace`` on the configuration's host profile.

The L1's initramfs holds the prober built to run QEMU (``prober.c``'s ``KVMSIM_QEMU_L1``), the
KVM modules, and ``qemu-system-ppc64``, ``strace``, their libraries (the ``DT_NEEDED`` closure,
read with the cross ``objdump``) and QEMU's firmware, from the sysroot ``kvmsim fetch-qemu``
makes.  A run (a :class:`QemuStart`: a configuration and QEMU's arguments) is recorded in
``fixtures/qemu-l1/<start>.toml``: QEMU's exit status, what it answered on QMP and said on
stderr, and its KVM ioctls (type 0xAE) in order, each as ``fdN REQUEST NAME = ANSWER``: ``fdN``
the Nth fd the calls used, the answer the return value, ``fd`` for a call that makes a file, or
the errno's name.  ``tests/test_qemu_l1.py`` holds the simulator to
every recording: same calls, same answers, same outcome."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..record import toml
from ..uapi import (
    ARCHES,
    KVM_CREATE_SPAPR_TCE,
    KVM_CREATE_SPAPR_TCE_64,
    KVM_CREATE_VCPU,
    KVM_GET_STATS_FD,
    KVMIO,
    decode_request,
)
from . import boot, build, kbuild
from .configs import CONFIGS, KERNELS, Config
from .debian import Archive, FetchError
from .qemu import QemuSysroot, fetch_sysroot

MACHINE = "pseries,accel=kvm,cap-hpt-max-page-size=4096"  # a 4K-page L1: KVM-HV's real-mode page sizes
SPECTRE_BROKEN = "cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off"


def pseries(machine: str = MACHINE, devices: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A pseries machine to -S with QMP on stdio, ``-cpu host``, and ``devices``' arguments."""
    return ("-machine", machine, "-cpu", "host", "-m", "512", "-nodefaults", "-display", "none", *devices, "-S",
            "-qmp", "stdio")  # fmt: skip


# libvirt's capability probe (virQEMUCapsInitQMP): no machine, KVM if it is there, else TCG
LIBVIRT_PROBE = ("-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=kvm:tcg", "-qmp",
                 "stdio")  # fmt: skip
# a virtio NIC (QEMU's user network) and a virtio disk (read-only /dev/null), their option ROM left
# out (Debian's sysroot has no ipxe-qemu): PCI devices whose interrupts are XICS sources
VIRTIO = ("-device", "virtio-net-pci,netdev=n0,romfile=", "-netdev", "user,id=n0", "-device",
          "virtio-blk-pci,drive=d0", "-drive", "if=none,id=d0,file=/dev/null,format=raw,readonly=on")  # fmt: skip


@attrs.frozen
class QemuStart:
    """One start: its recording's name, the lab configuration whose L1 runs it, QEMU's arguments."""

    name: str
    config: str
    args: tuple[str, ...] = pseries()


# the configurations the issue names first (and, on the POWER11 L1 in POWER10 mode, the guest
# the series' bug asks for: a POWER11 one), and the other L1s whose kvm_hv loads
STARTS = (
    QemuStart("nested-hv-p10", "nested-hv-p10"),
    QemuStart("nested-hv-p10-libvirt-probe", "nested-hv-p10", LIBVIRT_PROBE),
    QemuStart("nested-hv-p10-virtio", "nested-hv-p10", pseries(devices=VIRTIO)),
    QemuStart("nested-papr-p11-compat-p10", "nested-papr-p11-compat-p10"),
    QemuStart(
        "nested-papr-p11-compat-p10-power11", "nested-papr-p11-compat-p10", pseries(f"{MACHINE},max-cpu-compat=power11")
    ),
    QemuStart("nested-papr-p10", "nested-papr-p10"),
    QemuStart("nested-hv-p9", "nested-hv-p9"),
    # bare metal: XICS-on-XIVE's kvm-xive; QEMU's powernv L0 has no fw-features, so no Spectre
    # mitigation KVM_PPC_GET_CPU_CHAR could report (QEMU refuses its default caps without them)
    QemuStart("powernv9", "powernv9", pseries(f"{MACHINE},{SPECTRE_BROKEN}")),
    QemuStart("powernv10", "powernv10", pseries(f"{MACHINE},{SPECTRE_BROKEN}")),
    QemuStart("nested-hv-p11", "nested-hv-p11"),
    QemuStart("nested-papr-p11", "nested-papr-p11"),
    QemuStart("nested-hv-p10-compat-p9", "nested-hv-p10-compat-p9"),
    QemuStart("no-nesting-p10", "no-nesting-p10"),  # kvm_pr alone on a radix L1: QEMU's VM refused
    # the 64K-page kernel the lab builds (kvmsim.lab.kbuild), as Debian's and most distributions'
    # POWER kernels are: QEMU's default HPT page size there; kvm_hv on a radix L1 and on a
    # bare-metal hash one, and kvm_pr on a hash L1
    QemuStart("nested-hv-p10-64k", "nested-hv-p10-64k", pseries("pseries,accel=kvm")),
    QemuStart("powernv9-hash-hv-pr-64k", "powernv9-hash-hv-pr-64k", pseries(f"pseries,accel=kvm,{SPECTRE_BROKEN}")),
    QemuStart("pr-p10-hash-64k", "pr-p10-hash-64k", pseries("pseries,accel=kvm")),
)
QEMU_CONFIGS = tuple(dict.fromkeys(s.config for s in STARTS))
QMP = ({"execute": "qmp_capabilities"}, {"execute": "query-kvm"}, {"execute": "query-cpus-fast"}, {"execute": "quit"})
RECORDED = Path("fixtures") / "qemu-l1"
ARCH = ARCHES["ppc64le"]
# the requests whose answer is a new fd (its number is the process's business): "fd"
MAKES_FD = frozenset(
    {ARCH.kvm_create_vm(), *(io.request(ARCH) for io in (KVM_CREATE_VCPU, KVM_GET_STATS_FD, KVM_CREATE_SPAPR_TCE,
                                                          KVM_CREATE_SPAPR_TCE_64))}
)  # fmt: skip
OBJDUMP = "usr/bin/powerpc64le-linux-gnu-objdump"
LIB_DIRS = ("usr/lib/powerpc64le-linux-gnu", "lib/powerpc64le-linux-gnu", "usr/lib64", "lib64")


def qmp_script() -> str:
    return "".join(json.dumps(c) + "\n" for c in QMP)


def qemu_l1_h(args: Sequence[str]) -> str:
    """The prober's ``qemu_l1.h``: strace, QEMU and its arguments, and the QMP script."""
    argv = ["/usr/bin/strace", "-f", "-e", "trace=ioctl", "-e", "raw=ioctl", "-o", "/tmp/strace.out",
            "/usr/bin/qemu-system-ppc64", "-L", "/usr/share/qemu", *args]  # fmt: skip
    quoted = ", ".join(json.dumps(a) for a in argv)
    return (
        "/* generated by kvmsim.lab.qemu_l1: do not edit */\n"
        f"static const char *const QEMU_ARGV[] = {{{quoted}, NULL}};\n"
        f"static const char QMP_IN[] = {json.dumps(qmp_script())};\n"
    )


# -- the L1's files ------------------------------------------------------------------------------


def needed(binary: Path, tree: Path) -> list[str]:
    """An ELF's DT_NEEDED, as the cross objdump reads them."""
    libs = [str(tree / "usr/lib/x86_64-linux-gnu"), str(tree / "lib/x86_64-linux-gnu")]
    r = subprocess.run([str(tree / OBJDUMP), "-p", str(binary)], capture_output=True, text=True, check=False,
                       env={**os.environ, "LD_LIBRARY_PATH": ":".join(libs)})  # fmt: skip
    return [ln.split()[1] for ln in r.stdout.splitlines() if ln.strip().startswith("NEEDED")]


def closure(sysroot: Path, binaries: Iterable[str], tree: Path) -> dict[str, Path]:
    """The binaries and every library they need, transitively: path in the initramfs -> file."""
    files: dict[str, Path] = {}
    todo = [sysroot / b for b in binaries]
    files.update({b: sysroot / b for b in binaries})
    seen: set[str] = set()
    while todo:
        for lib in needed(todo.pop(), tree):
            if lib in seen:
                continue
            seen.add(lib)
            found = next((sysroot / d / lib for d in LIB_DIRS if (sysroot / d / lib).exists()), None)
            if found is None:
                raise FetchError(f"{lib} (needed by QEMU or strace) is not in {sysroot}")
            files[f"{LIB_DIRS[0]}/{lib}"] = found.resolve()
            todo.append(found)
    loader = next((sysroot / d / "ld64.so.2" for d in LIB_DIRS if (sysroot / d / "ld64.so.2").exists()), None)
    if loader is None:
        raise FetchError(f"no ld64.so.2 in {sysroot}")
    files[f"{LIB_DIRS[0]}/ld64.so.2"] = loader.resolve()
    return files


def initramfs(init: Path, modules: dict[str, Path], sysroot: QemuSysroot, tree: Path) -> bytes:
    """The L1's (:func:`kvmsim.lab.build.initramfs`'s: the prober, QEMU's, and the modules) with
    QEMU and strace, their libraries and QEMU's firmware; merged-/usr links for the loader
    (/lib64/ld64.so.2)."""
    files = closure(sysroot.root, ("usr/bin/qemu-system-ppc64", "usr/bin/strace"), tree)
    firmware = sysroot.firmware
    for name in sorted(os.listdir(firmware)):
        if (firmware / name).is_file():
            files[f"usr/share/qemu/{name}"] = (firmware / name).resolve()
    dirs = ["tmp", "usr", "usr/bin", "usr/lib", LIB_DIRS[0], "usr/share", "usr/share/qemu"]
    entries = [(d, 0o40755, b"") for d in dirs]
    entries += [("lib", 0o120777, b"usr/lib"), ("lib64", 0o120777, b"usr/lib/powerpc64le-linux-gnu")]
    entries += [(dest, 0o100755, path.read_bytes()) for dest, path in files.items()]
    return build.initramfs(init, modules, entries)


# -- what QEMU did --------------------------------------------------------------------------------

_STRACE = re.compile(r"^\d+\s+ioctl\((\w+), (\w+), [^)]*\)\s*= (?:-1 (\w+)|(\S+))")


def strace_calls(lines: Iterable[str]) -> list[tuple[int, int, int | str]]:
    """(fd, request, return value or errno name) of each ioctl strace saw, its ``<unfinished ...>``
    and ``<... ioctl resumed>`` halves joined."""
    pending: dict[str, str] = {}
    calls: list[tuple[int, int, int | str]] = []
    for text in lines:
        pid, _, rest = text.strip().partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest.removesuffix("<unfinished ...>")
            continue
        if rest.startswith("<... ioctl resumed>"):
            rest = pending.pop(pid, "") + rest.removeprefix("<... ioctl resumed>")
        m = _STRACE.match(f"{pid} {rest}")
        if m is not None:
            calls.append((int(m[1], 0), int(m[2], 0), m[3] if m[3] else int(m[4], 0)))
    return calls


def trace_calls(lines: Iterable[str]) -> list[tuple[int, int, int | str]]:
    """The same of a ``kvmsim run --trace-format json`` trace's IOCTL lines."""
    calls: list[tuple[int, int, int | str]] = []
    for text in lines:
        doc = json.loads(text)
        if doc.get("call") == "IOCTL":
            calls.append((doc["fd"], doc["request"], doc["errno"] or doc["result"]))
    return calls


def kvm_calls(calls: Iterable[tuple[int, int, int | str]]) -> list[str]:
    """The KVM ioctls (type 0xAE), each ``fdN REQUEST = ANSWER``: fdN the Nth fd they used."""
    names: dict[int, str] = {}
    out = []
    for fd, request, answer in calls:
        if (request >> 8) & 0xFF != KVMIO:
            continue
        name = names.setdefault(fd, f"fd{len(names)}")
        shown = "fd" if request in MAKES_FD and isinstance(answer, int) else answer
        out.append(f"{name} {request:#010x} {decode_request(request, ARCH)} = {shown}")
    return out


def outcome(qmp: Iterable[str]) -> list[str]:
    """QMP's lines with what differs between runs of one QEMU (thread ids, timestamps) taken out."""
    out = []
    for text in qmp:
        text = re.sub(r'"thread-id": \d+', '"thread-id": 0', text)
        out.append(re.sub(r'"timestamp": \{[^}]*\}', '"timestamp": {}', text))
    return out


@attrs.frozen
class QemuRun:
    """A QEMU start: its exit status, QMP's lines (:func:`outcome`), stderr, its KVM calls."""

    exit: str
    qmp: tuple[str, ...]
    stderr: tuple[str, ...]
    calls: tuple[str, ...]

    def differences(self, other: QemuRun) -> list[str]:
        """What ``other`` (the simulator's) did otherwise: the first call that differs (its
        index, both), the outcome's lines, the exit."""
        out = []
        for i, (a, b) in enumerate(zip(self.calls, other.calls, strict=False)):
            if a != b:
                out.append(f"call {i}: real {a!r}, simulated {b!r}")
                break
        if len(self.calls) != len(other.calls):
            out.append(f"{len(self.calls)} KVM calls real, {len(other.calls)} simulated")
        for what in ("exit", "qmp", "stderr"):
            if getattr(self, what) != getattr(other, what):
                out.append(f"{what}: real {getattr(self, what)!r}, simulated {getattr(other, what)!r}")
        return out


def from_console(console: str) -> QemuRun:
    lines = boot._LINE.findall(console)
    of = {kind: [v for k, _, v in lines if k == kind] for kind in ("qemuexit", "qmp", "qemu", "strace")}
    return QemuRun(
        (of["qemuexit"] or ["(none)"])[0],
        tuple(outcome(of["qmp"])),
        tuple(x for x in of["qemu"] if x != "(none)"),
        tuple(kvm_calls(strace_calls(of["strace"]))),
    )


def simulated(config: Config, args: Sequence[str], sysroot: QemuSysroot, kvmsim: str = "kvmsim") -> QemuRun:
    """The same QEMU, the same arguments, under ``kvmsim run`` on the configuration's host profile."""
    with tempfile.TemporaryDirectory(prefix="kvmsim-qemu-l1-") as tmp:
        trace = Path(tmp) / "trace.jsonl"
        run = [kvmsim, "run", "--host", config.profile, "--sysroot", str(sysroot.root), "--trace", str(trace)]
        cmd = [*run, "--trace-format", "json", "--", str(sysroot.qemu_system), "-L", str(sysroot.firmware), *args]
        r = subprocess.run(cmd, input=qmp_script(), capture_output=True, text=True, timeout=300, check=False)
        calls = trace_calls(trace.read_text().splitlines()) if trace.exists() else []
    stderr = tuple(ln for ln in r.stderr.splitlines() if not ln.startswith("kvmsim"))
    return QemuRun(str(r.returncode), tuple(outcome(r.stdout.splitlines())), stderr, tuple(kvm_calls(calls)))


# -- recordings ---------------------------------------------------------------------------------


def recording(start: QemuStart, run: QemuRun, versions: dict[str, str]) -> str:
    config = CONFIGS[start.config]
    doc: dict[str, Any] = {
        "config": config.name,
        "profile": config.profile,
        "kernel": KERNELS[config.kernel].revision,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "qemu": versions.get("qemu-system-ppc:ppc64el", "?"),
        "command": ["qemu-system-ppc64", *start.args],
        "exit": run.exit,
        "qmp": list(run.qmp),
        "stderr": list(run.stderr),
        "calls": list(run.calls),
    }
    return "# kvmsim lab --qemu: Debian's QEMU to -S inside the real L1 (kvmsim.lab.qemu_l1)\n" + toml.dumps(doc)


def load(path: Path) -> tuple[Config, tuple[str, ...], QemuRun]:
    """A recording: its configuration, QEMU's arguments, what QEMU did."""
    doc = tomllib.loads(path.read_text())
    run = QemuRun(doc["exit"], tuple(doc["qmp"]), tuple(doc["stderr"]), tuple(doc["calls"]))
    return CONFIGS[doc["config"]], tuple(doc["command"][1:]), run


@attrs.frozen
class Result:
    start: QemuStart
    path: Path | None
    calls: int
    differences: tuple[str, ...]
    error: str | None
    seconds: float


def run_one(start: QemuStart, archive: Archive, sysroot: QemuSysroot, out_dir: Path, kvmsim: str,
            built: kbuild.Built | None = None) -> Result:  # fmt: skip
    from . import kernel_files  # the lab's own

    config = CONFIGS[start.config]
    with archive.dir("build") as builds:
        init = build.prober(archive.tree, builds, qemu_l1=qemu_l1_h(start.args))
    vmlinux, modules = kernel_files(config, archive, built)
    with tempfile.TemporaryDirectory(prefix="kvmsim-qemu-l1-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        initrd.write_bytes(initramfs(init, modules, sysroot, archive.tree))
        result = boot.run(config, archive.tree, vmlinux, initrd, timeout=boot.TIMEOUT * 2)
    if result.error is not None:
        return Result(start, None, 0, (), result.error, result.seconds)
    real = from_console(result.console)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{start.name}.toml"
    path.write_text(recording(start, real, sysroot.versions))
    differences = real.differences(simulated(config, start.args, sysroot, kvmsim))
    return Result(start, path, len(real.calls), tuple(differences), None, result.seconds)


def run_qemu_lab(starts: Sequence[QemuStart], out_dir: Path, *, archive: Archive | None = None,
                 kvmsim: str = "kvmsim") -> list[Result]:  # fmt: skip
    """Each start's L1 running QEMU to -S, recorded and compared with the same under kvmsim run."""
    from . import built_kernel, prepare

    archive = archive or Archive()
    configs = [CONFIGS[s.config] for s in starts]
    versions = prepare(archive, {c.kernel for c in configs})
    built = built_kernel(archive, versions, configs)
    sysroot = fetch_sysroot(archive)
    return [run_one(s, archive, sysroot, out_dir, kvmsim, built) for s in starts]
