"""The shim under what real programs do: signal handlers that dup/close, close_range and
closefrom over every fd, many threads in the pipe memory mode, and running out of fds.  Each
failed (or hung) on the shim before its fix."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_cc

from kvmsim import Kernel
from kvmsim.intercept.build import compile_c
from kvmsim.intercept.server import Server, host_answer
from kvmsim.preload.runner import shim_environment

TORTURE = Path(__file__).resolve().parent / "data" / "shim_torture.c"
pytestmark = needs_cc


@pytest.fixture(scope="module")
def torture() -> Path:
    return compile_c([TORTURE], flags=["-pthread"])


def under_shim(shim: Path, tmp: Path, cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    kernel = Kernel.from_profile("powervm-p11")
    with Server(kernel, tmp / "kvm.sock") as server:
        full = shim_environment(host_answer(kernel), server.path, shim) | env
        return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=120)


def test_a_signal_handler_that_dups_and_closes_does_not_deadlock(shim: Path, torture: Path, tmp_path: Path) -> None:
    r = under_shim(shim, tmp_path, [str(torture), "signals"])
    assert r.returncode == 0 and r.stdout.startswith("ok signals"), r.stdout + r.stderr


def test_close_range_closefrom_and_close_loops_keep_the_shims_socket(shim: Path, torture: Path, tmp_path: Path) -> None:
    r = under_shim(shim, tmp_path, [str(torture), "closerange"])
    assert (r.returncode, r.stdout.strip()) == (0, "ok closerange"), r.stdout + r.stderr


@pytest.mark.parametrize("memory", ["pipe", "process_vm"])
def test_threads_get_their_own_answers(shim: Path, torture: Path, tmp_path: Path, memory: str) -> None:
    env = {"KVMSIM_MEMORY": "pipe"} if memory == "pipe" else {}
    r = under_shim(shim, tmp_path, [str(torture), "threads", "8"], **env)
    assert (r.returncode, r.stdout.strip()) == (0, "ok threads=8 calls=16000 wrong=0"), r.stdout + r.stderr


EMFILE = """
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
held, failed = [], 0
for _ in range(40):
    try:
        held.append(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        failed += 1
print(len(held), failed, flush=True)
input()
"""


def test_out_of_local_fds_the_kernel_file_is_released(shim: Path, tmp_path: Path) -> None:
    """A placeholder that finds no room in the program (EMFILE at recvmsg) is dropped by the
    real kernel; the server sees its end hang up and releases the simulated file."""
    kernel = Kernel.from_profile("powervm-p11")
    with Server(kernel, tmp_path / "kvm.sock") as server:
        env = shim_environment(host_answer(kernel), server.path, shim)
        proc = subprocess.Popen(
            [sys.executable, "-c", EMFILE], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdin is not None
        held, failed = map(int, proc.stdout.readline().split())
        deadline = time.monotonic() + 10
        while len(server.placeholders) != held and time.monotonic() < deadline:
            time.sleep(0.01)
        files = len(server.placeholders)
        proc.communicate("\n", timeout=30)
        while len(server.placeholders) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert failed > 0 and held > 0
        assert files == held  # every simulated file the program could not get an fd for was released
        assert len(server.placeholders) == 0  # and the rest when it exited
