"""Every process speaks on its own connection: children made by fork(), syscall(SYS_fork),
clone(SIGCHLD) and vfork() never cross answers with their parent (checked on every call, no
cached pid), and a vfork child's close_range() does not close its parent's simulated files
(CPython's subprocess spawns that way)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_cc

from kvmsim.intercept.build import compile_c

ROOT = Path(__file__).resolve().parent.parent
KVMSIM = Path(sys.executable).with_name("kvmsim")
pytestmark = needs_cc
CHANNELS = {
    "shared": {},
    "socket": {"KVMSIM_CHANNEL": "socket"},
    "pipe": {"KVMSIM_CHANNEL": "socket", "KVMSIM_MEMORY": "pipe"},
}


@pytest.fixture(scope="module")
def forks() -> Path:
    return compile_c([ROOT / "tests" / "data" / "forks.c"], flags=["-pthread"])


INTERCEPTS = [("preload", channel) for channel in sorted(CHANNELS)] + [("seccomp", "-")]


@pytest.mark.parametrize(("intercept", "channel"), INTERCEPTS)
@pytest.mark.parametrize("mode", ["fork", "rawfork", "clone", "vfork", "vfork-closefrom", "vfork-loop"])
def test_children_never_cross_answers_with_their_parent(forks: Path, mode: str, intercept: str, channel: str) -> None:
    """2 threads in the parent and 2 in the child, 25,000 calls each: 100,000 a run, every
    answer checked (2,000 each where a vfork child only closes its fds and exits).  The
    inherited VM fd is the parent's file, as the real kernel's rule is, on either path."""
    calls = 25_000 if mode in ("fork", "rawfork", "clone") else 2_000  # a vfork child only closes fds
    r = subprocess.run(
        [
            str(KVMSIM),
            "run",
            "--host",
            "powervm-p11",
            "--intercept",
            intercept,
            "--",
            str(forks),
            mode,
            str(calls),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **CHANNELS.get(channel, {})},
    )
    assert (r.returncode, r.stdout.strip()) == (0, f"ok calls={2 * calls} crossed=0"), r.stderr


SPAWNS = """
import fcntl, os, subprocess
dev = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(dev, 0x2000AE01, 0)
subprocess.run(["/bin/true"], check=True)          # vfork + close_range in the child
subprocess.run(["/bin/true"], check=True, close_fds=False)
os.waitpid(os.posix_spawn("/bin/true", ["/bin/true"], os.environ), 0)
print(fcntl.ioctl(vm, 0x2000AE03, 250), fcntl.ioctl(dev, 0x2000AE00, 0))
"""


@pytest.mark.parametrize("intercept", ["seccomp", "preload"])
def test_a_python_program_keeps_its_vm_fd_across_subprocess_run_and_posix_spawn(intercept: str) -> None:
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--intercept", intercept, "--", sys.executable, "-c", SPAWNS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "1 12"), r.stderr
