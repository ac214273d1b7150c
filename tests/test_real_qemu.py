"""Debian's real, unmodified ppc64el QEMU (sid's, fetched by ``kvmsim fetch-qemu`` into the lab's
cache) under ``kvmsim run --sysroot`` on simulated POWER hosts: libvirt's probe, and a pseries
machine to ``-S`` with its vcpu.  Skips, saying why, where Debian's archive cannot be reached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cross import missing

from kvmsim.lab.debian import Archive, FetchError
from kvmsim.lab.qemu import QemuSysroot, fetch_sysroot

KVMSIM = Path(sys.executable).parent / "kvmsim"
NO_TOOLS = missing("ppc64le")
pytestmark = pytest.mark.skipif(NO_TOOLS is not None, reason=str(NO_TOOLS))


@pytest.fixture(scope="module")
def sysroot() -> QemuSysroot:
    try:
        return fetch_sysroot(Archive())
    except FetchError as exc:
        pytest.skip(f"Debian's QEMU cannot be had: {exc}")


def qemu(sysroot: QemuSysroot, host: str, args: list[str], qmp: list[str]) -> tuple[list[dict], str]:
    """Run QEMU with QMP on stdio; every stdout line (each must be JSON) and stderr."""
    script = "".join(json.dumps({"execute": c}) + "\n" for c in ["qmp_capabilities", *qmp, "quit"])
    cmd = [str(KVMSIM), "run", "--host", host, "--sysroot", str(sysroot.root), "--", str(sysroot.qemu_system),
           "-L", str(sysroot.firmware), *args, "-qmp", "stdio"]  # fmt: skip
    r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()], r.stderr


LIBVIRT_PROBE = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=kvm:tcg"]


@pytest.mark.parametrize("host", ["qemu-nested-papr-p10", "qemu-nested-hv-p9", "powervm-p11-compat-p10", "powernv-p10"])
def test_libvirts_probe_finds_kvm_with_nothing_before_the_greeting(sysroot: QemuSysroot, host: str) -> None:
    out, err = qemu(sysroot, host, LIBVIRT_PROBE, ["query-kvm"])
    assert "QMP" in out[0]  # the first line on stdout is the greeting
    assert out[2] == {"return": {"enabled": True, "present": True}}
    assert "Unknown host!" not in err and "Can't open directory" not in err


def test_libvirts_probe_falls_back_to_tcg_without_kvm(sysroot: QemuSysroot) -> None:
    out, err = qemu(sysroot, "no-kvm", LIBVIRT_PROBE, ["query-kvm"])
    assert out[2] == {"return": {"enabled": False, "present": True}}  # built with KVM, none here
    assert "falling back to tcg" in err


@pytest.mark.parametrize("host", ["qemu-nested-papr-p10", "qemu-nested-hv-p10", "qemu-nested-papr-p11"])
def test_a_pseries_machine_reaches_s_with_its_vcpu(sysroot: QemuSysroot, host: str) -> None:
    """QEMU's KVM start-up to a paused pseries machine: the vcpu exists (query-cpus-fast).  The
    lab's hosts run a 4K-page kernel, where KVM-HV's real-mode page sizes make QEMU refuse its
    default 64K HPT pages, on a real host as here: cap-hpt-max-page-size=4096, as its error says."""
    args = ["-machine", "pseries,accel=kvm,cap-hpt-max-page-size=4096", "-cpu", "host", "-m", "512", "-nodefaults",
            "-display", "none", "-S"]  # fmt: skip
    out, err = qemu(sysroot, host, args, ["query-kvm", "query-cpus-fast"])
    assert out[2] == {"return": {"enabled": True, "present": True}}
    cpus = out[3]["return"]
    assert [c["qom-type"] for c in cpus] == ["host-powerpc64-cpu"], err


def test_fetch_qemu_says_where_and_how_to_run_it(sysroot: QemuSysroot) -> None:
    r = subprocess.run([str(KVMSIM), "fetch-qemu"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines()[1:])
    assert lines["sysroot"] == str(sysroot.root)
    assert lines["qemu-system-ppc64"] == f"{sysroot.qemu_system} ({sysroot.version})"
    assert lines["run"].startswith(f"kvmsim run --host HOST --sysroot {sysroot.root} -- {sysroot.qemu_system}")


ACCESS_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) { printf("%d\n", access(argv[1], R_OK)); return 0; }
"""


def test_access_finds_a_file_of_the_sysroot_under_the_shim(sysroot: QemuSysroot, tmp_path: Path) -> None:
    """qemu-user translates an access() path into its sysroot, not a faccessat() one: the shim
    keeps access() an access() (QEMU looks for slof.bin so; it was ENOENT)."""
    from kvmsim.intercept.build import compile_c

    src = tmp_path / "access.c"
    src.write_text(ACCESS_C)
    exe = compile_c([src], cc="powerpc64le-linux-gnu-gcc")
    r = subprocess.run([str(KVMSIM), "run", "--host", "qemu-nested-papr-p10", "--sysroot", str(sysroot.root), "--",
                        str(exe), "/usr/share/qemu/slof.bin"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (r.returncode, r.stdout.strip()) == (0, "0"), r.stderr
