"""kvmsim serve: per-connection processes, remote user memory, robustness, peer uid."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyshim import PyShim, identity, read_frame

from kvmsim import Kernel
from kvmsim.intercept import wire
from kvmsim.intercept.server import Server
from kvmsim.intercept.wire import Msg
from kvmsim.kernel.anon_inodes import VM

P10_P11 = 0x3000000000000000
ADDR = 0x1000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(Kernel.from_profile("powervm-p11", abi="v5"), tmp_path / "kvm.sock")
    srv.start()
    yield srv
    srv.stop()


def query(shim: PyShim, k: Kernel) -> int:
    dev, err, _ = shim.open()
    assert err == 0
    vm, err, flags = shim.ioctl(dev, k.KVM_CREATE_VM, 0)
    assert (err, flags) == (0, wire.RESULT_NEW_FD)
    shim.map(ADDR, struct.pack("<QQQ", 24, 0, 0))
    ret, err, _ = shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, ADDR)
    assert (ret, err) == (0, 0)
    return int(struct.unpack("<QQQ", shim.memory[ADDR])[2])


def assert_serves(server: Server) -> None:
    """A fresh well-formed client gets the right answer."""
    shim = PyShim(server.path)
    assert query(shim, server.kernel) == P10_P11
    shim.close()


def test_socket_is_0600(server: Server) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


def test_a_query_through_remote_memory(server: Server) -> None:
    assert_serves(server)


def test_remote_efault_and_e2big_write_back(server: Server) -> None:
    k = server.kernel
    shim = PyShim(server.path)
    dev = shim.open()[0]
    vm = shim.ioctl(dev, k.KVM_CREATE_VM, 0)[0]
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, 0)[1] == errno.EFAULT
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, 0xDEAD0000)[1] == errno.EFAULT
    shim.map(ADDR, struct.pack("<QQQQ", 32, 0, 0, 0))
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, ADDR)[1] == errno.E2BIG
    assert struct.unpack_from("<Q", shim.memory[ADDR])[0] == 24
    shim.close()


def test_a_simulated_file_is_its_placeholder_on_any_connection(server: Server) -> None:
    """Found by identity, not by the fd number or the connection (a child, an fd passed with
    SCM_RIGHTS), and released when the last real reference is gone."""
    a, b = PyShim(server.path), PyShim(server.path)
    dev = a.open()[0]
    assert b.ioctl(dev, server.kernel.KVM_GET_API_VERSION)[0] == 12
    copy = os.dup(dev)
    a.close_fd(dev)
    assert b.ioctl(copy, server.kernel.KVM_GET_API_VERSION)[0] == 12  # the dup holds the file
    assert len(server.placeholders) == 1
    a.close_fd(copy)
    deadline = time.monotonic() + 10
    while len(server.placeholders) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.placeholders) == 0
    a.close()
    b.close()


def test_an_fd_that_is_no_placeholder_is_foreign(server: Server, tmp_path: Path) -> None:
    """The shim then makes the real call; nothing reaches the simulated kernel."""
    shim = PyShim(server.path)
    with open(tmp_path / "plain", "w") as f:
        ret, err, flags = shim.ioctl(f.fileno(), server.kernel.KVM_GET_API_VERSION)
    assert (ret, err, flags) == (0, 0, wire.RESULT_FOREIGN)
    assert shim.call(Msg.IDENTIFY, wire.IDENTIFY.pack(1, 2)) == (wire.NOT_OURS, 0, 0)
    dev = shim.open()[0]
    vm = shim.ioctl(dev, server.kernel.KVM_CREATE_VM, 0)[0]
    st = os.fstat(vm)
    vm_kind = wire.identified(VM.code, 0)
    assert shim.call(Msg.IDENTIFY, wire.IDENTIFY.pack(st.st_dev, st.st_ino)) == (vm_kind, 0, 0)
    shim.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 12,  # bad magic
        wire.HEADER.pack(wire.MAGIC, 9, Msg.OPEN, 0),  # unknown version
        wire.HEADER.pack(wire.MAGIC, wire.VERSION, 99, 0),  # unknown type
        wire.HEADER.pack(wire.MAGIC, wire.VERSION, Msg.OPEN, wire.MAX_PAYLOAD + 1),  # oversized
        wire.HEADER.pack(wire.MAGIC, wire.VERSION, Msg.IOCTL, 16) + b"\x00" * 5,  # truncated, then EOF
        wire.frame(Msg.IOCTL, b"\x00" * 3),  # short payload
        wire.frame(Msg.RESULT, wire.RESULT.pack(0, 0, 0, 0)),  # a server's message from a client
        wire.HEADER.pack(wire.MAGIC, wire.VERSION, Msg.OPEN, 100),  # disconnect mid-frame
    ],
)
def test_garbage_closes_that_connection_and_the_server_goes_on(server: Server, garbage: bytes) -> None:
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.settimeout(10)
    bad.connect(server.path)
    bad.sendall(garbage)
    bad.shutdown(socket.SHUT_WR)
    assert bad.recv(100) == b""  # closed by the server
    bad.close()
    assert_serves(server)


def test_disconnect_mid_call_is_survived(server: Server) -> None:
    k = server.kernel
    shim = PyShim(server.path)
    dev = shim.open()[0]
    vm = shim.ioctl(dev, k.KVM_CREATE_VM, 0)[0]
    shim.sock.sendall(wire.frame(Msg.IOCTL, wire.IOCTL.pack(vm, k.KVM_PPC_GET_COMPAT_CAPS, ADDR, *identity(vm))))
    kind, _ = read_frame(shim.sock)  # the server asks for the struct...
    assert kind == Msg.MEM_READ
    shim.close()  # ...and the process is gone
    assert_serves(server)


def test_concurrent_clients_get_their_own_answers(server: Server) -> None:
    results: list[int] = []

    def one() -> None:
        shim = PyShim(server.path)
        for _ in range(20):
            results.append(query(shim, server.kernel))
        shim.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [P10_P11] * 80


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop to another uid")
def test_a_peer_with_another_uid_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    workdir = tempfile.mkdtemp(prefix="kvmsim-uid-")  # reachable by the other uid, unlike tmp_path
    os.chmod(workdir, 0o755)
    srv = Server(Kernel.from_profile("powervm-p11"), os.path.join(workdir, "kvm.sock"))
    os.chmod(srv.path, 0o666)  # let the other uid reach the socket: only SO_PEERCRED stops it
    srv.start()
    request = wire.frame(Msg.OPEN, wire.OPEN.pack(2) + b"/dev/kvm")
    code = f"""
import os, socket
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect({srv.path!r})
try:
    s.sendall({request!r})
    print(s.recv(100) == b"")  # closed without an answer
except (ConnectionResetError, BrokenPipeError):
    print(True)
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "True", out.stderr
        assert "refused: peer uid 65534 is not the server's uid 0" in caplog.text
        shim = PyShim(srv.path)  # the server's own uid is still served
        assert shim.open()[1] == 0
        shim.close()
    finally:
        srv.stop()
        shutil.rmtree(workdir)


def _send_garbage(server: Server, data: bytes) -> None:
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.settimeout(10)
    bad.connect(server.path)
    try:
        bad.sendall(data)
        bad.shutdown(socket.SHUT_WR)
        while bad.recv(4096):  # whatever the server says, it then closes
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        bad.close()


frames = st.one_of(
    st.binary(max_size=64),  # noise
    st.builds(  # a plausible header with a random type, length and body
        lambda t, n, body: wire.HEADER.pack(wire.MAGIC, wire.VERSION, t, n) + body,
        st.integers(0, 0xFFFF),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=64),
    ),
    st.builds(  # a real message, truncated anywhere
        lambda f, cut: f[:cut],
        st.sampled_from(
            [
                wire.frame(Msg.OPEN, wire.OPEN.pack(2) + b"/dev/kvm"),
                wire.frame(Msg.IOCTL, wire.IOCTL.pack(3, 0x2000AE03, 250, 1, 2)),
                wire.frame(Msg.IDENTIFY, wire.IDENTIFY.pack(1, 2)),
            ]
        ),
        st.integers(0, 30),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(frames, min_size=1, max_size=4).map(b"".join))
def test_random_and_truncated_frames_never_bring_the_server_down(server: Server, data: bytes) -> None:
    _send_garbage(server, data)
    assert_serves(server)


def test_a_flood_of_connections(server: Server) -> None:
    socks = []
    for _ in range(200):  # bounded: connect and drop, some mid-frame
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.path)
        if len(socks) % 3 == 0:
            s.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, Msg.OPEN, 50))
        socks.append(s)
    good = PyShim(server.path)  # served while 200 others are open
    assert query(good, server.kernel) == P10_P11
    for s in socks:
        s.close()
    good.close()
    assert_serves(server)


def test_without_a_window_every_read_is_a_round_trip(server: Server) -> None:
    k = server.kernel
    shim = PyShim(server.path)
    dev = shim.open()[0]
    vm = shim.ioctl(dev, k.KVM_CREATE_VM, 0)[0]
    shim.map(ADDR, struct.pack("<QQQ", 24, 0, 0))
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, ADDR, window=False)[:2] == (0, 0)
    assert struct.unpack("<QQQ", shim.memory[ADDR])[2] == P10_P11
    shim.map(ADDR, struct.pack("<QQQ", 1, 0, 0))
    assert shim.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, ADDR, window=False)[1] == errno.EINVAL
    shim.close()


def test_remote_memory_sees_its_own_writes_and_never_waits_on_the_client_under_the_lock() -> None:
    """Inside the table's lock a read the window cannot answer is MemoryWanted (the table
    fetches it with the lock let go and runs the call again); the call's own writes are laid
    over what was fetched, and travel with the RESULT."""
    from kvmsim.intercept.placeholder import MemoryWanted
    from kvmsim.intercept.server import RemoteMemory

    ours, theirs = socket.socketpair()
    mem = RemoteMemory(wire.FrameReader(ours))
    mem.begin(0x1000, bytes(8))
    mem.copy_to_user(0x1000, b"\x01" * 8)  # kept
    assert mem.copy_from_user(0x1000, 8) == b"\x01" * 8  # the window sees its own write
    mem.copy_to_user(0x3000, b"\x02" * 2)  # kept, outside the window
    mem.deferring = True
    with pytest.raises(MemoryWanted) as wanted:
        mem.copy_from_user(0x3000, 4)
    assert (wanted.value.addr, wanted.value.n) == (0x3000, 4)

    def peer() -> None:
        kind, body = wire.FrameReader(theirs).read()
        assert kind == Msg.MEM_READ and wire.MEM_READ.unpack(body) == (0x3000, 4)
        theirs.sendall(wire.frame(Msg.MEM_DATA, wire.MEM_DATA.pack(0) + b"\x03" * 4))

    t = threading.Thread(target=peer)
    t.start()
    mem.fetch(wanted.value)  # what the table does, outside its lock
    t.join()
    assert mem.copy_from_user(0x3000, 4) == b"\x02\x02\x03\x03"
    assert mem.take_writes()[0] == 2
    ours.close()
    theirs.close()
