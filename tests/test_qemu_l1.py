"""Differential QEMU (kvmsim.lab.qemu_l1): Debian's QEMU started to -S inside the lab's real L1s
(recorded by ``kvmsim lab --qemu`` in fixtures/qemu-l1/) and the same QEMU with the same command
under ``kvmsim run`` on the configuration's host profile: the same KVM calls in the same order,
the same answers, the same outcome (QMP, stderr, exit).  Skips, saying why, where Debian's QEMU
cannot be had."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_cross import missing

from kvmsim.lab import qemu_l1
from kvmsim.lab.debian import Archive, FetchError
from kvmsim.lab.qemu import QemuSysroot, fetch_sysroot

ROOT = Path(__file__).resolve().parent.parent
RECORDED = sorted((ROOT / qemu_l1.RECORDED).glob("*.toml"))
KVMSIM = str(Path(sys.executable).parent / "kvmsim")
NO_TOOLS = missing("ppc64le")


def test_every_start_is_recorded() -> None:
    assert sorted(p.stem for p in RECORDED) == sorted(s.name for s in qemu_l1.STARTS)


def test_strace_lines_read_back_as_calls() -> None:
    """strace -f's halves of an interrupted call are joined; raw numbers in hex; errno names."""
    lines = [
        "86    ioctl(0xc, 0x2000ae00, 0)         = 0xc",
        "86    ioctl(0xc, 0x2000ae01, 0)         = 0xd",
        "89    ioctl(0xd, 0x2000ae41, 0 <unfinished ...>",
        "86    ioctl(0, 0x402c7413, 0x3ffffdcf2550) = -1 ENOTTY (Inappropriate ioctl for device)",
        "89    <... ioctl resumed>)              = 0x12",
        "89    ioctl(0x12, 0x8010aeac, 0x3fff855a3168) = -1 EINVAL (Invalid argument)",
        "89    +++ exited with 1 +++",
    ]
    calls = qemu_l1.strace_calls(lines)
    assert calls == [(12, 0x2000AE00, 12), (12, 0x2000AE01, 13), (0, 0x402C7413, "ENOTTY"), (13, 0x2000AE41, 18),
                     (18, 0x8010AEAC, "EINVAL")]  # fmt: skip
    assert qemu_l1.kvm_calls(calls) == [  # the tty's ioctl is no KVM call; fds named as first used
        "fd0 0x2000ae00 KVM_GET_API_VERSION = 12",
        "fd0 0x2000ae01 KVM_CREATE_VM = fd",
        "fd1 0x2000ae41 KVM_CREATE_VCPU = fd",
        "fd2 0x8010aeac KVM_SET_ONE_REG = EINVAL",
    ]


def test_the_outcome_leaves_out_thread_ids_and_times() -> None:
    qmp = ['{"return": [{"thread-id": 89, "cpu-index": 0}]}', '{"timestamp": {"seconds": 17, "microseconds": 2}}']
    assert qemu_l1.outcome(qmp) == ['{"return": [{"thread-id": 0, "cpu-index": 0}]}', '{"timestamp": {}}']


def test_a_difference_names_the_first_call_and_the_outcome() -> None:
    real = qemu_l1.QemuRun("0", ("a",), (), ("fd0 0x1 X = 0", "fd0 0x2 Y = 0"))
    other = qemu_l1.QemuRun("1", ("a",), ("oops",), ("fd0 0x1 X = 0", "fd0 0x2 Y = EINVAL"))
    assert real.differences(real) == []
    assert real.differences(other) == [
        "call 1: real 'fd0 0x2 Y = 0', simulated 'fd0 0x2 Y = EINVAL'",
        "exit: real '0', simulated '1'",
        "stderr: real (), simulated ('oops',)",
    ]


def test_the_provers_header_runs_qemu_under_strace() -> None:
    header = qemu_l1.qemu_l1_h(qemu_l1.pseries())
    assert '"/usr/bin/strace", "-f", "-e", "trace=ioctl"' in header
    assert '"/usr/bin/qemu-system-ppc64", "-L", "/usr/share/qemu", "-machine", "pseries,accel=kvm' in header
    assert 'QMP_IN[] = "{\\"execute\\": \\"qmp_capabilities\\"}\\n' in header


@pytest.fixture(scope="module")
def sysroot() -> QemuSysroot:
    if NO_TOOLS is not None:
        pytest.skip(str(NO_TOOLS))
    try:
        return fetch_sysroot(Archive())
    except FetchError as exc:
        pytest.skip(f"Debian's QEMU cannot be had: {exc}")


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_the_same_qemu_under_kvmsim_run_does_what_it_did_in_the_real_l1(sysroot: QemuSysroot, path: Path) -> None:
    config, args, real = qemu_l1.load(path)
    assert real.calls and (real.qmp or real.stderr), "a recording of a QEMU that ran (to QMP, or to its error)"
    simulated = qemu_l1.simulated(config, args, sysroot, KVMSIM)
    assert real.differences(simulated) == []
