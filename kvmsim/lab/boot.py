"""One boot: QEMU with a hard timeout, and the prober's console lines read back into the
observations ``kvmsim record`` makes (its ``[recorded]`` section)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs

from ..record import cpuinfo_fields
from .configs import Config

TIMEOUT = 150  # seconds a boot may take under TCG on a busy 2-core machine


@attrs.frozen
class Boot:
    config: Config
    command: tuple[str, ...]
    console: str
    seconds: float
    error: str | None  # why it produced no recording (timeout, no "done" line)


def qemu_command(config: Config, tree: Path, vmlinuz: Path, initrd: Path) -> list[str]:
    qemu = tree / "usr/bin/qemu-system-ppc64"
    return [
        str(qemu),
        "-L",
        str(tree / "usr/share/qemu"),
        *config.qemu_args(),
        "-kernel",
        str(vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        config.cmdline(),
    ]


def run(config: Config, tree: Path, vmlinuz: Path, initrd: Path, timeout: float = TIMEOUT) -> Boot:
    cmd = qemu_command(config, tree, vmlinuz, initrd)
    libs = [str(tree / "usr/lib/x86_64-linux-gnu"), str(tree / "lib/x86_64-linux-gnu")]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(libs)}
    start = time.monotonic()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        console, error = r.stdout.decode(errors="replace"), None
        if "KVMSIM done" not in console:
            tail = (r.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            error = f"the guest stopped before the prober finished (qemu exit {r.returncode}: {tail})"
    except subprocess.TimeoutExpired as exc:
        console = (exc.stdout or b"").decode(errors="replace")
        error = f"timed out after {timeout:.0f} s (killed)"
    return Boot(config, tuple(cmd), console, time.monotonic() - start, error)


_LINE = re.compile(r"^KVMSIM (\w+)\t([^\t]*)\t(.*?)\r?$", re.M)


def _answer(text: str) -> int | str:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def observations(boot: Boot) -> dict[str, Any]:
    """The console, read back as ``kvmsim record`` writes its observations."""
    obs: dict[str, Any] = {
        "probes": {}, "file_ops": {}, "cpus": [], "modules": [], "notes": [], "dmesg": [], "module_init": {},
        "stats": {},
    }  # fmt: skip
    cpuinfo_lines = []
    for kind, key, value in _LINE.findall(boot.console):
        if kind == "probe":
            obs["probes"][key] = _answer(value)
        elif kind == "uname":
            obs["kernel" if key == "release" else "machine"] = value
        elif kind == "pagesize":
            obs["page_size"] = int(value)
        elif kind == "meminfo" and key == "MemTotal":
            obs["mem_total_kb"] = int(value)
        elif kind == "cpuinfo":
            cpuinfo_lines.append(value)
        elif kind == "cpu":
            node: dict[str, Any] = {"name": key}
            if value != "none":
                node["cpu-version"] = int(value, 16)
            obs["cpus"].append(node)
        elif kind == "sysmodule":
            obs["modules"].append(key)
        elif kind == "fileop":
            obs["file_ops"][key] = value
        elif kind == "stats":
            obs["stats"][key] = int(value) if key == "pid" else value
        elif kind == "module":
            obs["module_init"][os.path.basename(key).removesuffix(".ko.xz")] = _answer(value)
        elif kind == "dmesg":
            obs["dmesg"].append(re.sub(r"^<\d+>", "", value))
    obs["cpuinfo"] = cpuinfo_fields("\n".join(cpuinfo_lines))
    obs["cpus"].sort(key=lambda n: n["name"])
    obs["byteorder"] = "little"
    obs["device"] = "/dev/kvm"
    return obs


def kvm_dmesg(lines: list[str]) -> list[str]:
    """The kernel's lines about KVM (kvm-hv:, KVM-HV:, kvm:), without timestamps."""
    out = []
    for ln in lines:
        text = re.sub(r"^\[\s*\d+\.\d+\]\s*", "", ln)
        if re.match(r"(?i)kvm", text):
            out.append(text)
    return out
