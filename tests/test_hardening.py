"""Nothing hangs, nothing leaks, nothing crashes: the server under exhaustion and hostile
frames, the runner under signals, fd tables at scale, hostile profiles.  Each test fails on
the code before its fix (issue 15's list)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pyshim import identity, read_frame
from test_profile import GOOD as PROFILE

from kvmsim import Kernel, ProfileError
from kvmsim.intercept import wire
from kvmsim.intercept.server import FRAME_STALL, MAX_CONNECTIONS, Server
from kvmsim.intercept.wire import Msg
from kvmsim.kernel import profile
from kvmsim.uapi import V4


def connect(server: Server) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(server.path)
    return s


def call(s: socket.socket, msg: Msg, payload: bytes) -> tuple[int, int]:
    """One call as a shim makes it; every memory request is answered EFAULT (nothing mapped).
    A placeholder that comes with the RESULT is the ret."""
    s.sendall(wire.frame(msg, payload))
    reply, body = read_frame(s)
    while reply == Msg.MEM_READ:
        s.sendall(wire.frame(Msg.MEM_DATA, wire.MEM_DATA.pack(errno.EFAULT)))
        reply, body = read_frame(s)
    assert reply == Msg.RESULT
    (ret, err, flags, _count), _ = wire.unpack(wire.RESULT, body, exact=False)
    if flags & wire.RESULT_NEW_FD:
        ret = socket.recv_fds(s, 1, 1)[1][0]
    return ret, err


def ioctl(fd: int, cmd: int, arg: int = 0) -> bytes:
    return wire.IOCTL.pack(fd, cmd, arg, *identity(fd))


def open_vm(s: socket.socket) -> int:
    dev, _ = call(s, Msg.OPEN, wire.OPEN.pack(2) + b"/dev/kvm")
    vm, _ = call(s, Msg.IOCTL, ioctl(dev, 0x2000AE01))
    return vm


# -- 5. an address near 2^64 ---------------------------------------------------------------


@pytest.mark.parametrize("arg", [2**64 - 4, 2**64 - 16, 2**64 - 1])
def test_an_argument_near_2_64_is_efault_and_the_connection_lives(tmp_path: Path, arg: int) -> None:
    with Server(Kernel.from_profile("powervm-p11", abi="v4"), tmp_path / "s") as server:
        s = connect(server)
        vm = open_vm(s)
        request = V4.request(Kernel.from_profile("powervm-p11").arch)
        assert call(s, Msg.IOCTL, ioctl(vm, request, arg)) == (-1, errno.EFAULT)
        assert call(s, Msg.IOCTL, ioctl(vm, 0x2000AE03, 249)) == (1, 0)  # still served


# -- 8. half-sent frames, oversized frames, too many connections --------------------------


def test_a_stalled_frame_is_dropped_and_the_server_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kvmsim.intercept.server.FRAME_STALL", 0.3)
    with Server(Kernel.from_profile("powervm-p11"), tmp_path / "s") as server:
        stalled = connect(server)
        stalled.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, Msg.OPEN, 100) + b"x")  # 99 bytes short
        assert stalled.recv(1) == b""  # closed by the server after the stall
        fresh = connect(server)
        assert call(fresh, Msg.OPEN, wire.OPEN.pack(2) + b"/dev/kvm")[1] == 0
    assert FRAME_STALL >= 1


def test_a_frame_larger_than_any_request_needs_is_refused_at_its_header(tmp_path: Path) -> None:
    with Server(Kernel.from_profile("powervm-p11"), tmp_path / "s") as server:
        s = connect(server)
        s.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, Msg.OPEN, 1 << 19))  # 512 KiB announced, none sent
        assert s.recv(1) == b""


def test_connections_past_the_cap_are_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kvmsim.intercept.server.MAX_CONNECTIONS", 3)
    with Server(Kernel.from_profile("powervm-p11"), tmp_path / "s") as server:
        kept = [connect(server) for _ in range(3)]
        for s in kept:
            assert call(s, Msg.OPEN, wire.OPEN.pack(2) + b"/dev/kvm")[1] == 0
        extra = connect(server)
        assert extra.recv(1) == b""
    assert MAX_CONNECTIONS >= 64


# -- 4. accept() out of descriptors ------------------------------------------------------------

EXHAUST = """
import os, resource, socket, sys, time, threading
from kvmsim import Kernel
from kvmsim.intercept.server import Server
server = Server(Kernel.from_profile("powervm-p11"), sys.argv[1])
server.start()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
print("full", flush=True)
sys.stdin.readline()          # the test connects while we are full
for fd in held:
    os.close(fd)
print("freed", flush=True)
sys.stdin.readline()
server.stop()
print("alive", flush=True)
"""


def test_out_of_descriptors_the_server_drops_the_connection_and_keeps_serving(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    proc = subprocess.Popen(
        [sys.executable, "-c", EXHAUST, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "full"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    assert s.recv(1) == b""  # dropped, not left hanging
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "freed"
    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s2.settimeout(10)
    s2.connect(path)
    assert call(s2, Msg.OPEN, wire.OPEN.pack(2) + b"/dev/kvm")[1] == 0  # served again
    proc.stdin.write("\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=30)
    assert out.strip() == "alive" and "Traceback" not in err
    assert err.count("out of file descriptors") == 1  # logged once


# -- 14. fd tables at scale ----------------------------------------------------------------


def test_the_lowest_free_fd_at_scale_and_emfile_at_the_limit() -> None:
    k = Kernel.from_profile("powervm-p11")
    p = k.process(k.memory)
    p.max_files = 60_000
    start = time.perf_counter()
    fds = [p.open() for _ in range(60_000)]
    assert time.perf_counter() - start < 10  # was quadratic: 73 s
    assert fds == list(range(3, 60_003))
    with pytest.raises(OSError) as exc:
        p.open()
    assert exc.value.errno == errno.EMFILE
    p.close(17)
    p.close(9)
    assert (p.open(), p.open()) == (9, 17)  # the lowest first, as alloc_fd does


# -- 12. the scratch area of short threads --------------------------------------------------


def test_short_threads_do_not_leak_scratch_mappings() -> None:
    k = Kernel.from_profile("powervm-p11")
    dev = k.open()
    addresses: list[int] = []

    def with_buffer() -> None:
        buf = bytearray(V4.layout.pack("little", size=24))
        with contextlib.suppress(OSError):
            k.ioctl(dev, 0xC018AEFF, buf)
        addresses.append(len(k.memory._table[0]))

    for _ in range(2000):
        t = threading.Thread(target=with_buffer)
        t.start()
        t.join()
    assert max(addresses) <= 3  # released with each thread, not 2000 regions
    addr = k.memory.map(24)
    assert addr < 2**31


# -- 13. signals to kvmsim run -------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_kvmsim_run_reaches_the_command_and_cleans_up(tmp_path: Path, signum: int) -> None:
    exe = Path(sys.executable).parent / "kvmsim"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([str(exe), "run", "--host", "powervm-p11", "--", "sleep", "31.4159"], env=env)
    deadline = time.monotonic() + 20
    child = None
    while child is None or not catches(proc.pid, signum):  # its command started, its handler set
        assert time.monotonic() < deadline, "kvmsim run never got ready"
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        child = int(kids[0]) if kids else None
        time.sleep(0.01)
    proc.send_signal(signum)
    assert proc.wait(timeout=20) == 128 + signum  # sleep died of it; kvmsim reported it
    assert list(tmp_path.iterdir()) == []  # the socket directory is gone
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def catches(pid: int, signum: int) -> bool:
    """Has process ``pid`` a handler for ``signum`` (its SigCgt mask)?"""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signum - 1)))


# -- 15. hostile profiles ------------------------------------------------------------------

GOOD = PROFILE.replace('kind = "powervm"\noffers = ["power10"]', 'kind = "kvm"')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        (GOOD + '[[device_tree.cpus]]\nname = "c@0"\nreg = -1\n', "device_tree.cpus[0].reg: -1 does not fit a u32"),
        (GOOD + '[[device_tree.cpus]]\nname = "c@0"\nreg = 4294967296\n', "reg: 4294967296 does not fit"),
        (GOOD + '[[device_tree.cpus]]\nname = "../../../../dev/kvm"\n', "is not a device-tree node name"),
        (GOOD + '[[device_tree.cpus]]\nname = ".."\n', "is not a device-tree node name"),
        (GOOD + '[[device_tree.cpus]]\nname = "c@0"\n[[device_tree.cpus]]\nname = "c@0"\n', "is already a node"),
        (GOOD.replace('mode = "power10"', 'mode = "power10"\nclock_mhz = 99999999999999999'), "cpu.clock_mhz"),
    ],
)
def test_a_hostile_profile_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as exc:
        profile.load(path)
    assert message in str(exc.value) and "\n" not in str(exc.value) and str(exc.value).startswith(str(path))


def test_a_fifo_or_a_device_as_a_profile_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        start = time.monotonic()
        with pytest.raises(ProfileError, match="not a regular file"):
            profile.load(path)
        assert time.monotonic() - start < 5


def test_a_huge_profile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(GOOD + "# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ProfileError, match="larger than"):
        profile.load(path)
