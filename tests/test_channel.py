"""The shared-memory channel (kvmsim/intercept/channel.py and the shim's side of it): the same frames
and answers as the socket, a server that cannot offer it, garbage in the shared area, and
either side going away while the other waits."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import client_answer, needs_cc, printed_answer
from pyshim import PyShim, read_frame, wake

from kvmsim import Kernel
from kvmsim.intercept import channel, wire
from kvmsim.intercept.server import Server, host_answer
from kvmsim.intercept.wire import Msg
from kvmsim.preload.runner import shim_environment

pytestmark = pytest.mark.skipif(not channel.available(), reason="the shared channel is offered on x86_64 only")
ADDR = 0x7000_0000
CHANNELS = [False, True]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(Kernel.from_profile("powervm-p11"), tmp_path / "kvm.sock") as srv:
        yield srv


@pytest.mark.parametrize("shared", CHANNELS, ids=["socket", "shared"])
def test_the_same_answers_on_either_channel(server: Server, shared: bool) -> None:
    k = server.kernel
    shim = PyShim(server.path, shared=shared)
    dev = shim.open()[0]
    vm, err, flags = shim.ioctl(dev, k.KVM_CREATE_VM, 0)
    assert (err, flags) == (0, wire.RESULT_NEW_FD)
    shim.map(ADDR, struct.pack("<QQQ", 24, 0, 0))
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, ADDR)[:2] == (0, 0)
    assert struct.unpack("<QQQ", shim.memory[ADDR])[2] == 0x3000_0000_0000_0000  # power10 | power11
    shim.map(ADDR, struct.pack("<QQQQ", 32, 0, 0, 1))  # E2BIG's write-back, read through MEM_READ
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, ADDR, window=False)[1] == errno.E2BIG
    assert struct.unpack_from("<Q", shim.memory[ADDR])[0] == 24
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, 0)[1] == errno.EFAULT
    shim.close()


def test_a_server_that_cannot_offer_it_answers_enosys_and_keeps_the_socket(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel, "available", lambda: False)
    shim = PyShim(server.path)
    shim.sock.sendall(wire.frame(Msg.SHM))
    msg, body = read_frame(shim.sock)
    assert msg == Msg.RESULT and wire.RESULT.unpack(body)[:2] == (-1, errno.ENOSYS)
    assert shim.open()[1] == 0  # still served, on the socket
    shim.close()


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


@pytest.mark.parametrize(
    "garbage",
    [
        {"length": 0xFFFF_FFFF},  # past the area
        {"length": 5},  # shorter than a header
        {"frame": wire.frame(Msg.OPEN, b"x" * 8)[:-4]},  # the header says more than the message holds
        {"frame": wire.HEADER.pack(0xDEADBEEF, 1, Msg.OPEN, 0)},  # not a frame
        {"frame": wire.frame(Msg.MEM_DATA, bytes(70_000))},  # more than a shim ever sends
    ],
)
def test_garbage_in_the_shared_area_closes_that_connection_only(server: Server, garbage: dict[str, object]) -> None:
    bad = PyShim(server.path, shared=True)
    frame = garbage.get("frame", wire.frame(Msg.OPEN, wire.OPEN.pack(2) + b"/dev/kvm"))
    assert isinstance(frame, bytes) and bad.shm is not None
    bad.shm[channel.C2S : channel.C2S + len(frame)] = frame
    bad.ctl[channel.C2S_LEN] = int(garbage.get("length", len(frame)))  # type: ignore[call-overload]
    bad.ctl[channel.C2S_SEQ] += 1
    wake(bad.shm, channel.C2S_SEQ)
    assert _closed(bad.sock)
    bad.close()
    good = PyShim(server.path, shared=True)
    assert good.open()[1] == 0
    good.close()


# -- the C shim on it ---------------------------------------------------------------------

HOLD = """
import fcntl, os, sys
fd = os.open("/dev/kvm", os.O_RDWR)
print("open", flush=True)
sys.stdin.readline()
try:
    print(fcntl.ioctl(fd, 0x2000AE00, 0))
except OSError as exc:
    print(exc.errno)
"""


@needs_cc
@pytest.mark.parametrize("env", [{}, {"KVMSIM_CHANNEL": "socket"}], ids=["shared", "socket"])
@pytest.mark.parametrize(("host", "abi"), [("powervm-p11", "linux-7.3"), ("kvm-l1-p9-be", "v4"), ("no-kvm", "none")])
def test_the_c_shim_answers_alike_on_either_channel(
    host: str,
    abi: str,
    env: dict[str, str],
    shim: Path,
    c_client: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="kvmsim.serve")
    kernel = Kernel.from_profile(host, abi=abi)
    with Server(kernel, tmp_path / "kvm.sock") as server:
        full = shim_environment(host_answer(kernel), server.path, shim) | env
        r = subprocess.run([str(c_client)], env=full, capture_output=True, text=True, timeout=60)
    code, want = client_answer(host, abi)
    assert (r.returncode, printed_answer(r.stdout)) == (code, want), r.stderr
    shared = any("on the shared-memory channel" in m for m in caplog.messages)
    assert shared == (not env and kernel.kvm.loaded)  # no /dev/kvm: the shim never connects


@needs_cc
def test_a_server_gone_mid_call_is_eio_not_a_hang(shim: Path, tmp_path: Path) -> None:
    path = tmp_path / "kvm.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    env = shim_environment(host_answer(Kernel.from_profile("powervm-p11")), str(path), shim)
    code = "import os\ntry:\n    os.open('/dev/kvm', os.O_RDWR)\nexcept OSError as e:\n    print(e.errno)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    conn, _ = listener.accept()
    reader = wire.FrameReader(conn)
    assert reader.read()[0] == Msg.SHM
    ours = channel.SharedChannel(conn)
    assert ours.read()[0] == Msg.OPEN  # ... and the server dies before answering
    ours.close()
    conn.close()
    start = time.monotonic()
    out = proc.communicate(timeout=30)[0]
    assert out.strip() == str(errno.EIO) and time.monotonic() - start < 5
    listener.close()


@needs_cc
def test_a_program_killed_mid_wait_frees_its_connection(server: Server, shim: Path) -> None:
    env = shim_environment(host_answer(server.kernel), server.path, shim)
    proc = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in server.connections):
        assert time.monotonic() < deadline, "the connection outlived its process"
        time.sleep(0.02)


@needs_cc
def test_stopping_the_server_hangs_up_attached_programs(tmp_path: Path, shim: Path) -> None:
    kernel = Kernel.from_profile("powervm-p11")
    server = Server(kernel, tmp_path / "kvm.sock")
    server.start()
    env = shim_environment(host_answer(kernel), server.path, shim)
    proc = subprocess.Popen([sys.executable, "-c", HOLD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None and proc.stdout.readline() == b"open\n"
    server.stop()
    assert not any(t.is_alive() for t in server.connections)
    out = proc.communicate(b"go\n", timeout=30)[0]
    assert out.strip() == str(errno.EIO).encode()
    assert not os.path.exists(server.path)


# -- a hostile peer's memfd and futex (issue: nothing one peer does takes down the other) -------


@pytest.mark.parametrize(
    "attack",
    [
        lambda fd: os.ftruncate(fd, 0),  # the SIGBUS of the old server
        lambda fd: os.ftruncate(fd, channel.SIZE * 4),
        lambda fd: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE),  # no further seal
    ],
    ids=["shrink", "grow", "reseal"],
)
def test_the_memfd_cannot_be_resized_or_resealed_by_the_client(server: Server, attack: Callable[[int], object]) -> None:
    bad = PyShim(server.path, shared=True)
    assert fcntl.fcntl(bad.memfd, fcntl.F_GET_SEALS) & channel.SEALS == channel.SEALS
    with pytest.raises(PermissionError):
        attack(bad.memfd)
    assert bad.open()[1] == 0  # the server still serves it ...
    good = PyShim(server.path, shared=True)
    assert good.open()[1] == 0  # ... and everyone else
    bad.close()
    good.close()


def test_past_the_servers_shared_memory_cap_a_connection_keeps_the_socket(server: Server) -> None:
    server.budget = channel.Budget(2 * channel.SIZE)
    held = [PyShim(server.path, shared=True) for _ in range(2)]
    third = PyShim(server.path)
    third.sock.sendall(wire.frame(Msg.SHM))
    msg, body = read_frame(third.sock)
    assert msg == Msg.RESULT and wire.RESULT.unpack(body)[:2] == (-1, errno.ENOSYS)
    assert third.open()[1] == 0
    held.pop().close()
    deadline = time.monotonic() + 10
    while server.budget.left == 0:  # the server thread gives the channel back as it closes
        assert time.monotonic() < deadline
        time.sleep(0.01)
    again = PyShim(server.path, shared=True)  # its memory came back
    assert again.open()[1] == 0
    for s in (*held, third, again):
        s.close()


def test_a_futex_storm_pauses_the_stormer_only(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(channel, "_pause", pauses.append)
    stormer, honest = PyShim(server.path, shared=True), PyShim(server.path, shared=True)
    assert stormer.open()[1] == honest.open()[1] == 0
    deadline = time.monotonic() + 10
    while len(pauses) < 4:  # wakes with nothing sent, as fast as it can
        assert time.monotonic() < deadline, "the server never paused the stormer"
        wake(stormer.shm, channel.C2S_SEQ)  # type: ignore[arg-type]
    assert pauses[:3] == [channel.PAUSE_MIN, 2 * channel.PAUSE_MIN, 4 * channel.PAUSE_MIN]
    assert all(p <= channel.PAUSE_MAX for p in pauses)
    before = len(pauses)
    for _ in range(50):
        assert honest.ioctl(honest.open()[0], server.kernel.KVM_GET_API_VERSION)[:2] == (12, 0)
    assert stormer.open()[1] == 0  # the stormer is still served, after its pause
    assert len(pauses) - before < 5  # the honest one's waits were not paused
    stormer.close()
    honest.close()


@needs_cc
def test_the_shim_refuses_an_unsealed_memfd(shim: Path, c_client: Path, tmp_path: Path) -> None:
    """A server of our own uid offering a memfd it could still shrink: the program gets EIO
    and one line, never a SIGBUS."""
    path = tmp_path / "kvm.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            assert read_frame(conn)[0] == Msg.SHM
            fd = os.memfd_create("unsealed")
            os.ftruncate(fd, channel.SIZE)
            socket.send_fds(conn, [wire.frame(Msg.SHM_READY, channel.READY.pack(channel.CAPACITY))], [fd])
            os.close(fd)
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    kernel = Kernel.from_profile("powervm-p11")
    env = shim_environment(host_answer(kernel), str(path), shim)
    r = subprocess.run([str(c_client)], env=env, capture_output=True, text=True, timeout=60)
    listener.close()
    assert r.returncode != -signal.SIGBUS and r.returncode < 128, r
    assert "refusing the server's shared memory: it is not sealed" in r.stderr
    assert '"name": "EIO"' in r.stdout
