"""kvmsim record / verify: recordings of simulated hosts (under the pytest plugin) round-trip
for every profile and revision; this machine's recording verifies; mismatches are reported."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REVS

from kvmsim import record
from kvmsim.kernel import profile
from kvmsim.plugin.fixture import KvmHost
from kvmsim.record import toml

ROOT = Path(__file__).resolve().parent.parent
KVMSIM = Path(sys.executable).parent / "kvmsim"


@pytest.mark.parametrize("kvm_host", [(h, r) for h in profile.names() for r in REVS], indirect=True, ids=str)
def test_recording_a_simulated_host_round_trips(kvm_host: KvmHost) -> None:
    obs = record.observe()
    assert obs["machine"] == kvm_host.profile.arch.name
    text, rev, checks = record.fit(obs, "/recorded.toml")
    assert all(c.agrees for c in checks), [c for c in checks if not c.agrees]
    with open("/recorded.toml", "w") as f:  # the fake filesystem
        f.write(text)
    with open("/recorded.toml") as f:
        rev2, checks2 = record.verify(f.read(), "/recorded.toml")
    assert rev2 == rev and checks2 == checks
    # a kernel that knows its own request (not ENOTTY on an HV VM's fd) names its revision
    known = [r for r in REVS if r != "none" and obs["probes"].get(f"{r} ioctl", "ENOTTY") != "ENOTTY"]
    assert known == ([kvm_host.abi] if known else [])
    assert tomllib.loads(text)["recorded"].get("revision") == (rev.name if known else None)


@pytest.mark.parametrize("kvm_host", [("powervm-p10-hcall-hardware", "v4")], indirect=True)
def test_a_failing_hypercall_is_fitted(kvm_host: KvmHost) -> None:
    text, _, _ = record.fit(record.observe(), "/r.toml")
    assert 'hcall_at_runtime = "H_HARDWARE"' in text


@pytest.mark.parametrize("kvm_host", [("qemu-papr-p10", "v4"), ("qemu-papr-p10", "linux-7.3")], indirect=True)
def test_nested_v2_under_qemu_is_told_from_nested_v1_by_the_answers(kvm_host: KvmHost) -> None:
    text, _, _ = record.fit(record.observe(), "/r.toml")
    assert 'kind = "qemu"' in text and 'offers = ["power9", "power10"]' in text


@pytest.mark.parametrize("path", sorted((ROOT / "fixtures" / "recorded").glob("*.toml")), ids=lambda p: p.name)
def test_committed_recordings_verify(path: Path) -> None:
    """Every recording of a real kernel (this machine, the lab's QEMU boots) replays exactly."""
    _rev, checks = record.verify(path.read_text(), str(path))
    bad = [f"{c.name}: recorded {c.recorded!r}, simulated {c.simulated!r}" for c in checks if not c.agrees]
    assert checks and not bad, "\n".join(bad)


def test_the_lab_asked_every_file_operation_of_each_fd() -> None:
    """read, write, pread, pwrite, lseek, mmap, poll, fstat and the /proc link of /dev/kvm, and
    of a VM fd, its vcpu and a TCE table where they were made: the real kernel's answers (they
    verify above), every kind of file the simulator makes asked of some kernel."""
    from kvmsim.kernel.anon_inodes import FILE_OPS
    from kvmsim.user.probe import FILE_OPS as ASKED

    assert all(set(ops) == set(ASKED) for ops in FILE_OPS.values())
    asked: set[str] = set()
    for path in sorted((ROOT / "fixtures" / "recorded").glob("qemu-*.toml")):
        recorded = tomllib.loads(path.read_text())["recorded"]
        made = [kind for kind in ("vm", "vcpu") if recorded["probes"].get(f"create {kind}") == "fd"]
        if recorded["probes"].get("tce64 1G of 4K") == "fd":
            made.append("spapr-tce")
        made += [f"{kind}-stats" for kind in ("vm", "vcpu") if recorded["probes"].get(f"{kind} stats fd") == "fd"]
        # KVM devices: XICS's emulation, or XICS-on-XIVE's on a XIVE host in HV mode; VFIO's everywhere
        made += [kind for kind in ("kvm-xics", "kvm-xive", "kvm-vfio") if f"{kind}.link" in recorded["file_ops"]]
        kinds = ["dev", *made]
        assert set(recorded["file_ops"]) == {f"{k}.{op}" for k in kinds for op in ASKED}, path.name
        asked |= set(kinds)
    assert asked == set(FILE_OPS)


def test_a_file_operation_the_simulator_would_answer_otherwise_is_a_mismatch(tmp_path: Path) -> None:
    src = ROOT / "fixtures" / "recorded" / "qemu-nested-hv-p10-linux-7.3.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text(src.read_text().replace('"vm.pread" = "ESPIPE"', '"vm.pread" = "EINVAL"'))
    _rev, checks = record.verify(bad.read_text(), str(bad))
    wrong = [(c.name, c.recorded, c.simulated) for c in checks if not c.agrees]
    assert wrong == [("file vm.pread", "EINVAL", "ESPIPE")]


@pytest.mark.parametrize(("what", "old", "new"), [("pid", "pid = 1", "pid = 2"), ("data", None, None)])
def test_a_stats_file_the_simulator_would_read_otherwise_is_a_mismatch(
    tmp_path: Path, what: str, old: str | None, new: str | None
) -> None:
    """Its id names the recorded pid (kvm-1 in the lab's guest, its init); the vcpu's data hold
    what the probes did to it (three KVM_INTERRUPTs queued and the XICS's delivery: queue_intr 4)."""
    src = ROOT / "fixtures" / "recorded" / "qemu-nested-hv-p10-linux-7.3.toml"
    text = src.read_text()
    stats = tomllib.loads(text)["recorded"]["stats"]
    assert stats["pid"] == 1 and "6b766d2d312f766370752d30" in stats["vcpu"]  # "kvm-1/vcpu-0"
    if what == "data":  # queue_intr 4 -> 5 (the last few u64s are Book3S's: queue_intr ... pthru_bad_aff)
        queue_intr = (4).to_bytes(8, "little").hex() + "00" * 8 * 5
        assert stats["vcpu"].endswith(queue_intr)
        old, new = queue_intr, (5).to_bytes(8, "little").hex() + "00" * 8 * 5
    assert old is not None and new is not None
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new))
    _rev, checks = record.verify(bad.read_text(), str(bad))
    wrong = sorted(c.name for c in checks if not c.agrees)
    assert wrong == (["stats vcpu"] if what == "data" else ["stats vcpu", "stats vm"])


def test_the_lab_recorded_every_configuration() -> None:
    from kvmsim.lab import CONFIGS

    names = {p.name for p in (ROOT / "fixtures" / "recorded").glob("qemu-*.toml")}
    for config in CONFIGS.values():
        assert config.recording in names


@pytest.mark.requires_real_kvm
def test_record_and_verify_this_machine(tmp_path: Path) -> None:
    out = tmp_path / "me.toml"
    r = subprocess.run([str(KVMSIM), "record", "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "reproduces all of them" in r.stdout
    r = subprocess.run([str(KVMSIM), "verify", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "0 mismatch" in r.stdout


def test_verify_reports_a_mismatch_with_exit_1(tmp_path: Path) -> None:
    src = next((ROOT / "fixtures" / "recorded").glob("*.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text(src.read_text().replace('"api version" = 12', '"api version" = 11'))
    r = subprocess.run([str(KVMSIM), "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert any(line.split()[:2] == ["api", "version"] and line.endswith("MISMATCH") for line in r.stdout.splitlines())
    assert r.stdout.strip().endswith("1 mismatch")


def test_record_without_a_device_fails_and_says_how_to_fix_it(tmp_path: Path) -> None:
    out = tmp_path / "r.toml"
    r = subprocess.run(
        [str(KVMSIM), "record", "--device", str(tmp_path / "kvm"), "-o", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 3 and not out.exists()
    assert r.stderr.count("\n") == 1 and "ENOENT: load KVM first (modprobe kvm_hv" in r.stderr
    r = subprocess.run(
        [str(KVMSIM), "record", "--device", str(tmp_path / "kvm"), "-o", str(out), "--no-device-ok"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0
    assert f"note: {tmp_path / 'kvm'}: ENOENT" in r.stdout
    assert 'open = "ENOENT"' in out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "/nonexistent.toml"], "No such file"),
        (["verify", str(ROOT / "fixtures" / "hosts" / "powervm-p11.toml")], "recorded.probes: missing"),
        (["record"], "-o/--output"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    r = subprocess.run([str(KVMSIM), *args], capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_dumps_round_trips_through_the_profile_parser() -> None:
    doc = {"summary": 'a "quoted" one', "arch": "ppc64le", "n": 0x0F000006, "recorded": {"probes": {"a b": "x"}}}
    assert tomllib.loads(toml.dumps(doc)) == doc


def test_unknown_architecture_is_a_profile_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "6", "#1", "riscv64")))
    with pytest.raises(ValueError, match="riscv64"):
        record.observe()


@pytest.mark.parametrize(
    "recorded",
    [12, "fd", "EINVAL", "0 1800000000000000000000000000000000000000000060", "E2BIG 18 tail=ff", "0 18 tail=changed"],
)
def test_a_probe_answer_is_a_record_that_round_trips(recorded: int | str) -> None:
    from kvmsim.user.probe import Answer

    answer = Answer.from_toml(recorded)
    assert answer.to_toml() == recorded
    assert (answer.error is None) == (isinstance(recorded, int) or recorded.split()[0] in ("fd", "0"))


# what the lab's real kernels answered (QEMU's pseries L0, QEMU's powernv), and what record fits
PSERIES_CPU_CHAR = "0 000000000000403c00000000000000e400000000000040ff tail=00000000000000e4"
POWERNV_CPU_CHAR = "0 000000000000000000000000000000000000000000000000 tail=0000000000000000"
RMMU_HEAD = "0 0c0909090d000000100509090d0000000000000000000000 tail=" + "00" * 40
RMMU_PSERIES = RMMU_HEAD + "0c000000100000a0150000201e000040" + "00" * 16
RMMU_POWERNV = RMMU_HEAD + "0c000000100000a0" + "00" * 24


@pytest.mark.parametrize(
    ("answer", "fitted"),
    [
        (PSERIES_CPU_CHAR, {"available": True, "character": 0x3C40000000000000, "behaviour": 0xE400000000000000}),
        (POWERNV_CPU_CHAR, {"available": False}),
        ("EFAULT", None),
        (None, None),
    ],
)
def test_record_fits_the_firmwares_cpu_char(answer: str | None, fitted: dict[str, object] | None) -> None:
    assert record.cpu_char(answer, "little") == fitted


@pytest.mark.parametrize(
    ("answer", "cells"),
    [(RMMU_PSERIES, [0xC, 0xA0000010, 0x20000015, 0x4000001E]), (RMMU_POWERNV, []), ("EINVAL", None)],
)
def test_record_fits_the_radix_ap_encodings(answer: str, cells: list[int] | None) -> None:
    assert record.radix_ap_encodings(answer, "little") == cells
