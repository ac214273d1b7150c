"""The shim on the program's side of the call: a path is walked as the kernel walks it (a
symlinked directory then `..`), an intercepted call fits an 8 KiB stack, and a stalled server
leaves the program's signals deliverable and its call bounded by the deadline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_cc

from kvmsim import Kernel
from kvmsim.intercept.build import compile_c
from kvmsim.intercept.server import host_answer
from kvmsim.preload.runner import shim_environment

ROOT = Path(__file__).resolve().parent.parent
KVMSIM = Path(sys.executable).with_name("kvmsim")
pytestmark = needs_cc

# -- 6. the walk --------------------------------------------------------------------------------

WALK = """
import os, fcntl, json
API = 0x2000AE00
def api(path):
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        return exc.errno
    try:
        return fcntl.ioctl(fd, API, 0)
    finally:
        os.close(fd)
def cpu(path):
    with open(path) as f:
        return "POWER11" in f.read()
os.chdir(WORK)
out = {
    "lnk/../../dev/kvm": api("lnk/../../dev/kvm"),
    "lnk/../../proc/cpuinfo": cpu("lnk/../../proc/cpuinfo"),
    "chain/../dev/kvm": api("chain/../dev/kvm"),
    "rel/kvm": api("rel/kvm"),
    "/../../dev/kvm": api("/../../dev/kvm"),
    "up/../kvm": api(os.path.join(WORK, "up/../kvm")),
    "alias": api("alias"),
    "dt": sorted(os.listdir("lnk/../../proc/device-tree/cpus")),
}
print(json.dumps(out))
"""


def test_a_path_is_walked_as_the_kernel_walks_it(tmp_path: Path) -> None:
    """`..` after a symlinked directory climbs from where the link led; chains of links,
    relative links, `..` at the root, a link whose name says nothing of kvm."""
    (tmp_path / "lnk").symlink_to("/usr/share")  # lnk/../.. is /, not this directory
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("/usr/lib")  # chain -> a -> b -> /usr/lib; /usr/lib/.. is /usr
    (tmp_path / "chain").symlink_to("a/..")  # chain/.. is /usr/.. = /
    (tmp_path / "rel").symlink_to("../../../../../../../../dev")  # relative, past the root
    (tmp_path / "up").symlink_to("/dev/null")  # a file: up/.. is ENOTDIR in the kernel
    (tmp_path / "alias").symlink_to("/dev/kvm")
    code = WALK.replace("WORK", repr(str(tmp_path)))
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(r.stdout) == {
        "lnk/../../dev/kvm": 12,
        "lnk/../../proc/cpuinfo": True,  # the host's, not this machine's
        "chain/../dev/kvm": 12,
        "rel/kvm": 12,
        "/../../dev/kvm": 12,
        "up/../kvm": 20,  # ENOTDIR, as the kernel walks it
        # a link named for nothing of ours: open() learns it from the real kernel's answer,
        # where this machine has a /dev/kvm (else the link dangles: docs/design.md "Choices")
        "alias": 12 if os.path.exists("/dev/kvm") else 2,
        "dt": ["#address-cells", "#size-cells", "PowerPC,POWER11@0"],
    }, r.stderr


# -- 5. small stacks ------------------------------------------------------------------------------


def test_every_intercepted_call_fits_an_8_kib_stack() -> None:
    """open, ioctl, close, stat, access on an 8 KiB makecontext stack and from a handler on an
    8 KiB sigaltstack, each with a guard page below (the old shim needed ~40 KiB: SIGSEGV)."""
    program = compile_c([ROOT / "tests" / "data" / "small_stacks.c"])
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--", str(program)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, (r.returncode, r.stderr)
    want = "api=12 hostname=1 cpuinfo=1 access=1 stat=232"
    assert r.stdout.splitlines() == [f"{place} {want}" for place in ("main", "context", "altstack")]


# -- 4. a stalled server --------------------------------------------------------------------------

WAIT = """
import fcntl, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
fd = os.open("/dev/kvm", os.O_RDWR)
print("open", flush=True)
sys.stdin.readline()
try:
    print(fcntl.ioctl(fd, 0x2000AE00, 0), flush=True)
except OSError as exc:
    print(exc.errno, flush=True)
"""
SYS_POLL, SYS_FUTEX = 7, 202  # x86_64: where the shim waits for the server


@pytest.fixture(params=["shared", "socket"])
def stalled(
    request: pytest.FixtureRequest, tmp_path: Path, shim: Path
) -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    """`kvmsim serve` with one program attached (on either channel) and waiting in an ioctl;
    then the server is stopped (SIGSTOP)."""
    sock = tmp_path / "kvm.sock"
    server = subprocess.Popen(
        [str(KVMSIM), "serve", "--host", "powervm-p11", "--socket", str(sock)], stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None and " on " in server.stderr.readline()
    kernel = Kernel.from_profile("powervm-p11")
    env = shim_environment(host_answer(kernel), str(sock), shim) | {"KVMSIM_TIMEOUT": "3"}
    if request.param == "socket":
        env["KVMSIM_CHANNEL"] = "socket"
    program = subprocess.Popen(
        [sys.executable, "-c", WAIT], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert program.stdin is not None and program.stdout is not None
    try:
        assert program.stdout.readline() == "open\n"
        server.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not stopped(server.pid):  # a group stop is asynchronous: every thread, then go
            assert time.monotonic() < deadline, "the server did not stop"
            time.sleep(0.01)
        program.stdin.write("go\n")
        program.stdin.flush()
        deadline = time.monotonic() + 10
        while waiting_in(program.pid) not in (SYS_POLL, SYS_FUTEX):
            assert time.monotonic() < deadline, "the program never waited on the server"
            time.sleep(0.01)
        yield server, program
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        program.kill()
        server.wait(timeout=10)
        program.wait(timeout=10)


def stopped(pid: int) -> bool:
    """Has every thread of ``pid`` stopped (state T)?"""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append(task.joinpath("stat").read_text().rpartition(")")[2].split()[0])
    return bool(states) and all(state == "T" for state in states)


def waiting_in(pid: int) -> int | None:
    """The system call the process sleeps in (None while it runs)."""
    first = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    return int(first) if first.isdigit() else None


def blocked_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigBlk:")), 16)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the wait's system call numbers are x86_64's")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_program_waiting_on_a_stopped_server_still_dies_of_a_signal(
    stalled: tuple[subprocess.Popen[str], subprocess.Popen[str]], signum: int
) -> None:
    _server, program = stalled
    assert blocked_signals(program.pid) == 0  # nothing held back while it waits
    program.send_signal(signum)
    assert program.wait(timeout=2) == -signum


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the wait's system call numbers are x86_64's")
def test_a_call_past_the_deadline_fails_with_eio(stalled: tuple[subprocess.Popen[str], subprocess.Popen[str]]) -> None:
    _server, program = stalled
    assert program.stdout is not None
    start = time.monotonic()
    assert program.stdout.readline() == "5\n"  # EIO, after KVMSIM_TIMEOUT=3 s
    assert 2 < time.monotonic() - start < 10
