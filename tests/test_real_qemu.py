"""Debian's real, unmodified ppc64el QEMU (sid's, fetched by ``kvmsim fetch-qemu`` into the lab's
cache) under ``kvmsim run --sysroot`` on simulated POWER hosts: libvirt's probe, and a pseries
machine to ``-S`` with its vcpu.  Skips, saying why, where Debian's archive cannot be reached."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cross import missing

from kvmsim import Kernel
from kvmsim.kernel import profile
from kvmsim.kernel.binary_stats import VCPU_STATS_DESC
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
PAUSED = ["-cpu", "host", "-m", "512", "-nodefaults", "-display", "none", "-S"]


LE_HOSTS = [h for h in profile.names() if profile.load(h).arch.name == "ppc64le"]


def makes_a_vm(host: str) -> bool:
    """The simulated kernel's KVM_CREATE_VM(0): what QEMU's kvm_init asks first."""
    k = Kernel.from_profile(host)
    try:
        k.ioctl(k.open(), k.KVM_CREATE_VM, 0)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", LE_HOSTS)
def test_libvirts_probe_finds_kvm_with_nothing_before_the_greeting(sysroot: QemuSysroot, host: str) -> None:
    """On every little-endian POWER profile: the greeting first, no "Unknown host!", and KVM
    enabled exactly where the simulated kernel makes a VM; elsewhere QEMU's own fall-back to
    TCG, with the error it prints on that machine."""
    out, err = qemu(sysroot, host, LIBVIRT_PROBE, ["query-kvm"])
    assert "QMP" in out[0]  # the first line on stdout is the greeting
    assert "Unknown host!" not in err and "Can't open directory" not in err
    if host == "no-kvm":
        return  # the next test's
    vm = makes_a_vm(host)
    assert out[2] == {"return": {"enabled": vm, "present": True}}
    assert vm or "ioctl(KVM_CREATE_VM) failed: Invalid argument" in err


def test_libvirts_probe_falls_back_to_tcg_without_kvm(sysroot: QemuSysroot) -> None:
    out, err = qemu(sysroot, "no-kvm", LIBVIRT_PROBE, ["query-kvm"])
    assert out[2] == {"return": {"enabled": False, "present": True}}  # built with KVM, none here
    assert "falling back to tcg" in err


# What QEMU 11.1's pseries to -S prints on each profile, from what the simulated kernel answers
# (the lab's where it recorded one): None reaches -S with its vcpu
NO_VM = "ioctl(KVM_CREATE_VM) failed: Invalid argument"  # no kvm module would load: no VM
FOREIGN_PVR = 'only "-cpu host" is possible'  # qemu-user has no model with the profile's PVR (docs: Limits)
PSERIES_AT_S: dict[str, str | None] = {
    **dict.fromkeys(["kvm-l1-no-cpu-version", "kvm-l1-p10", "kvm-l1-p10-compat-p9", "kvm-l1-p11", "powernv-p10",
                     "powervm-p10", "powervm-p10-hcall-hardware", "powervm-p11", "powervm-p11-compat-p10",
                     "qemu-papr-p10"], FOREIGN_PVR),
    **dict.fromkeys(["kvm-l1-p8-compat", "powervm-hcall-unavailable", "pseries-kvm-pr-radix", "qemu-nested-hv-p10-hash",
                     "qemu-nested-hv-p9-hash", "qemu-no-nesting-p10", "qemu-no-nesting-p10-nested-0",
                     "qemu-pr-p10-64k"], NO_VM),
    "no-kvm": "failed to initialize kvm: No such file or directory",
    # a POWER10 in POWER9 mode has no DAWR1 (KVM_CAP_PPC_DAWR1 is 0), which QEMU's POWER10 asks for
    "qemu-nested-hv-p10-compat-p9": "DAWR1 not supported by KVM",
    "qemu-nested-papr-p10-compat-p9": "DAWR1 not supported by KVM",
    # QEMU's powernv L0 has no fw-features: KVM_PPC_GET_CPU_CHAR is all zeroes
    **dict.fromkeys(["qemu-powernv10", "qemu-powernv9", "qemu-powernv9-hash-hv-pr-64k"],
                    "Requested safe cache capability level not supported by KVM"),
    # KVM-PR has no FWNMI (KVM_CAP_PPC_FWNMI is 0)
    **dict.fromkeys(["pseries-kvm-pr", "qemu-pr-p10-hash-64k"], "(FWNMI) not supported by KVM"),
    # every lab L1 whose kvm_hv loads and whose mode has what QEMU's CPU asks, and a POWER9 whose
    # PVR qemu-user has
    **dict.fromkeys(["kvm-l1-p9", "qemu-nested-hv-p10", "qemu-nested-hv-p10-64k", "qemu-nested-hv-p10-nested-0",
                     "qemu-nested-hv-p11", "qemu-nested-hv-p11-compat-p10", "qemu-nested-hv-p9",
                     "qemu-nested-papr-p10", "qemu-nested-papr-p11", "qemu-nested-papr-p11-compat-p10",
                     "qemu-nested-papr-p9"], None),
}  # fmt: skip


def test_the_table_says_every_little_endian_profile() -> None:
    """A new profile gets its row: where QEMU gets to, said, not assumed."""
    assert sorted(PSERIES_AT_S) == sorted(LE_HOSTS)


@pytest.mark.parametrize("host", LE_HOSTS)
def test_a_pseries_machine_reaches_s_or_stops_as_its_kernel_makes_it(sysroot: QemuSysroot, host: str) -> None:
    """QEMU's KVM start-up to a paused pseries machine: the vcpu exists (query-cpus-fast) where
    the kernel lets it get there, else QEMU's own error from the kernel's answers.  The lab's
    hosts run a 4K-page kernel, where KVM-HV's real-mode page sizes make QEMU refuse its default
    64K HPT pages, on a real host as here: cap-hpt-max-page-size=4096, as its error says."""
    args = ["-machine", "pseries,accel=kvm,cap-hpt-max-page-size=4096", *PAUSED]
    stats = {"execute": "query-stats", "arguments": {"target": "vcpu"}}
    script = "".join(json.dumps(c) + "\n" for c in [{"execute": "qmp_capabilities"}, {"execute": "query-cpus-fast"},
                                                     stats, {"execute": "quit"}])  # fmt: skip
    cmd = [str(KVMSIM), "run", "--host", host, "--sysroot", str(sysroot.root), "--", str(sysroot.qemu_system),
           "-L", str(sysroot.firmware), *args, "-qmp", "stdio"]  # fmt: skip
    r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=180)
    expected = PSERIES_AT_S[host]
    if expected is not None:
        assert r.returncode != 0 and expected in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    replies = [json.loads(line) for line in r.stdout.splitlines()]
    assert [c["qom-type"] for c in replies[2]["return"]] == ["host-powerpc64-cpu"], r.stderr
    # the vcpu's statistics file (KVM_GET_STATS_FD), read by QEMU as a real one: Book3S's, all 0
    (kvm,) = replies[3]["return"]
    assert kvm["provider"] == "kvm" and {s["name"] for s in kvm["stats"]} == {d.name for d in VCPU_STATS_DESC}
    assert {s["name"] for s in kvm["stats"] if s["value"] not in (0, [0] * 32)} == set()
    # its PCI bus's DMA window: the kernel's TCE table (QEMU maps it), where the build has them
    no_table = "KVM: Failed to create TCE64 table for liobn 0x80000000" in r.stderr
    assert no_table == (not profile.load(host).spapr_tce_iommu), r.stderr
    # its interrupt controller: the kernel's XICS (KVM_CREATE_DEVICE, each vcpu connected, its
    # sources set): XICS's emulation, or on a XIVE host in HV mode XICS-on-XIVE
    assert "kernel_irqchip allowed but unavailable" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("host", "compat", "refused"),
    [
        ("qemu-nested-papr-p11-compat-p10", "power11", True),  # the series' failure, at 7.3's ARCH_COMPAT set
        ("qemu-nested-papr-p11-compat-p10", "power10", False),  # what the compat query recommends there
        ("qemu-nested-papr-p11", "power11", False),  # a POWER11 L1 in its own mode
    ],
)
def test_a_power11_guest_on_a_power10_mode_l1_fails_where_the_real_kernel_refuses(
    sysroot: QemuSysroot, host: str, compat: str, refused: bool
) -> None:
    """QEMU 11.1's -cpu host is the raw POWER11; a POWER11 guest on an L1 whose L0 agreed POWER10
    only is refused at KVM_SET_ONE_REG(ARCH_COMPAT) (the lab's Linux 7.3: EINVAL, before any run),
    and QEMU stops; POWER10 -- what kvm-compat-caps recommends there -- reaches -S."""
    machine = f"pseries,accel=kvm,cap-hpt-max-page-size=4096,max-cpu-compat={compat}"
    cmd = [str(KVMSIM), "run", "--trace", "--host", host, "--sysroot", str(sysroot.root), "--",
           str(sysroot.qemu_system), "-L", str(sysroot.firmware), "-machine", machine, *PAUSED,
           "-qmp", "stdio"]  # fmt: skip
    script = "".join(json.dumps({"execute": c}) + "\n" for c in ["qmp_capabilities", "query-cpus-fast", "quit"])
    r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=180)
    refusal = "KVM_SET_ONE_REG(ARCH_COMPAT): POWER11 on a host that is not one"
    if refused:
        assert r.returncode != 0 and refusal in r.stderr
        assert "Unable to set CPU compatibility mode in KVM: Invalid argument" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert refusal not in r.stderr
    cpus = [json.loads(line) for line in r.stdout.splitlines()][2]["return"]
    assert [c["qom-type"] for c in cpus] == ["host-powerpc64-cpu"]


def test_a_qemu_that_asks_the_compat_query_gets_power10_by_itself(sysroot: QemuSysroot) -> None:
    """A QEMU with kvmppc_get_compat_caps() (merged for 11.2) asks KVM_CHECK_EXTENSION(250) on
    /dev/kvm, then the ioctl on the VM fd: on the compat-mode L1 it reads POWER9 and POWER10 and
    makes -cpu host a POWER10.  Debian's QEMU does not ask (detected from its calls): skipped."""
    cmd = [str(KVMSIM), "run", "--trace", "--host", "qemu-nested-papr-p11-compat-p10", "--sysroot",
           str(sysroot.root), "--", str(sysroot.qemu_system), "-L", str(sysroot.firmware), "-machine",
           "none,accel=kvm", "-S", "-nodefaults", "-nographic", "-qmp", "stdio"]  # fmt: skip
    script = "".join(json.dumps({"execute": c}) + "\n" for c in ["qmp_capabilities", "quit"])
    r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    if "KVM_CAP_PPC_COMPAT_CAPS" not in r.stderr:
        pytest.skip(f"{sysroot.version} never asks KVM_CAP_PPC_COMPAT_CAPS (250): the query is merged for 11.2")
    assert "KVM_PPC_GET_COMPAT_CAPS" in r.stderr and "= 0" in r.stderr.split("KVM_PPC_GET_COMPAT_CAPS", 1)[1]


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


SPECTRE_BROKEN = "cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off"  # QEMU's powernv has none


@pytest.mark.parametrize(
    ("host", "caps", "outcome"),
    [
        ("qemu-nested-hv-p10-64k", "", None),  # a 64K-page L1: QEMU's default 64K HPT pages
        ("qemu-nested-hv-p10", "", "Can't support 64 kiB guest pages with 4 kiB host pages"),
        ("qemu-powernv9-hash-hv-pr-64k", f",{SPECTRE_BROKEN}", "KVM_PPC_ALLOCATE_HTAB"),  # bare-metal hash: an HPT
    ],
)
def test_qemu_sizes_its_hpt_from_the_hosts_page_size(
    sysroot: QemuSysroot, host: str, caps: str, outcome: str | None
) -> None:
    """QEMU reads the host's page size (getpagesize: the simulated kernel's, not qemu-user's 4K):
    its default 64K HPT pages on a 64K-page L1, refused on a 4K one as on that real host; on a
    bare-metal hash host it allocates the HPT (KVM_PPC_ALLOCATE_HTAB) and its VRMA fits."""
    cmd = [str(KVMSIM), "run", "--trace", "--host", host, "--sysroot", str(sysroot.root), "--",
           str(sysroot.qemu_system), "-L", str(sysroot.firmware), "-machine", f"pseries,accel=kvm{caps}", *PAUSED,
           "-qmp", "stdio"]  # fmt: skip
    script = "".join(json.dumps({"execute": c}) + "\n" for c in ["qmp_capabilities", "query-cpus-fast", "quit"])
    r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=180)
    if outcome is not None and "ALLOCATE" not in outcome:
        assert r.returncode != 0 and outcome in r.stderr
        return
    assert r.returncode == 0, r.stderr
    if outcome is not None:
        assert re.search(r"KVM_PPC_ALLOCATE_HTAB, 0x[0-9a-f]+\) = 0 ", r.stderr), r.stderr
    cpus = [json.loads(line) for line in r.stdout.splitlines()][2]["return"]
    assert [c["qom-type"] for c in cpus] == ["host-powerpc64-cpu"]
