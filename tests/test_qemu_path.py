"""QEMU's calls to a paused pseries machine (kvmsim.user.qemu_path), on every little-endian POWER
profile: the lab's prober, cross-built for ppc64le with that list as its table and run as an
unmodified program under ``kvmsim run`` (qemu-user, the shim, the server), gets the answers the
in-process client gets from the same simulated kernel, call for call and byte for byte."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from test_cross import missing

from kvmsim import Kernel
from kvmsim.intercept.build import compile_c
from kvmsim.kernel import profile
from kvmsim.lab.build import probes_h
from kvmsim.user import probe
from kvmsim.user.qemu_path import qemu_startup_probes
from kvmsim.user.simulated import SimDevice

HOSTS = [h for h in profile.names() if profile.load(h).arch.name == "ppc64le"]
NO_TOOLS = missing("ppc64le")
pytestmark = pytest.mark.skipif(NO_TOOLS is not None, reason=str(NO_TOOLS))
LINE = re.compile(r"^KVMSIM probe\t([^\t]*)\t(.*?)\r?$", re.M)


def startup(host: str) -> list[probe.Probe]:
    k = Kernel.from_profile(host)
    mode = k.host.cpu.mode
    return list(qemu_startup_probes(k.host.cpu.pvr or 0, mode.logical_pvr if mode else 0))


def in_process(host: str) -> dict[str, str]:
    answers = probe.run(SimDevice(Kernel.from_profile(host)), startup(host))
    return {name: str(a.to_toml()) for name, a in answers.items()}


@pytest.fixture(scope="module")
def prober() -> dict[str, Path]:
    """One build a table: the list's arguments differ by host only in the PVR and arch_compat."""
    source = resources.files("kvmsim.lab").joinpath("prober.c")
    built: dict[str, Path] = {}
    with resources.as_file(source) as path:
        for host in HOSTS:
            table = probes_h(base=startup(host))
            built[host] = compile_c([path], cc="powerpc64le-linux-gnu-gcc", flags=["-Wno-unused-parameter"],
                                    headers={"probes.h": table}, name="qemu_path")  # fmt: skip
    return built


def test_the_list_is_qemus_order_with_unique_names() -> None:
    names = [p.name for p in startup("powervm-p11")]
    assert len(names) == len(set(names))
    assert names[0] == "qemu api version" and names[-1] == "qemu run"
    assert names.index("qemu rmmu info") < names.index("qemu get sregs") < names.index("qemu enable papr")
    assert names.index("qemu ram slot") < names.index("qemu smmu info") < names.index("qemu set ARCH_COMPAT")


@pytest.mark.parametrize("host", HOSTS)
def test_a_power_program_under_kvmsim_run_gets_what_the_client_gets(host: str, prober: dict[str, Path]) -> None:
    kvmsim = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run([str(kvmsim), "run", "--host", host, "--", str(prober[host])], capture_output=True, text=True,
                       timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = dict(LINE.findall(r.stdout))
    assert got == in_process(host)


@pytest.mark.parametrize("host", ["powervm-p11-compat-p10", "qemu-nested-papr-p10", "powernv-p10", "kvm-l1-p9"])
def test_qemus_calls_reach_a_run_on_an_hv_host(host: str) -> None:
    """Every call QEMU makes to -S succeeds on an HV host whose vcpu QEMU configures as the
    host is (its PVR, its mode), and KVM_RUN returns (a shutdown exit: design.md "Choices")."""
    answers = in_process(host)
    assert [n for n, a in answers.items() if a.startswith("E")] == []
    assert answers["qemu run"] == "0"
