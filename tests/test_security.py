"""Nobody gets in: the shim talks only to a server of its own uid (or root) and lets it touch
nothing but the argument of the ioctl in progress; it never reconnects to whatever listens
at the path later; the build cache runs no file another user could have planted; the server
puts its socket only where others cannot interfere.  Each test fails on the code before."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import needs_cc
from pyshim import Placeholders

from kvmsim import Kernel
from kvmsim.intercept import build, wire
from kvmsim.intercept.channel import SharedChannel, available
from kvmsim.intercept.server import Server, ServerError, Transport, host_answer
from kvmsim.intercept.wire import Msg
from kvmsim.preload.library import build_shim
from kvmsim.preload.runner import shim_environment

ROOT = Path(__file__).resolve().parent.parent
C_CLIENT = ROOT / "examples" / "c" / "kvm_compat_caps.c"
NOBODY = 65534
pytestmark = needs_cc
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
CHANNELS = ["socket", pytest.param("shared", marks=pytest.mark.skipif(not available(), reason="no shared channel"))]


def victim_env(shim: Path, sock: Path, channel: str = "socket") -> dict[str, str]:
    """The C client's environment; the impostors below script the socket protocol unless
    ``channel`` is "shared" (they then serve through kvmsim.intercept.channel as the server does)."""
    env = shim_environment(host_answer(Kernel.from_profile("powervm-p11")), str(sock), shim)
    return env | {"KVMSIM_CHANNEL": "socket"} if channel == "socket" else env


# -- 1. the server's credentials ------------------------------------------------------


@as_root
def test_an_impostor_of_another_uid_gets_nothing(shim: Path, c_client: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="kvmsim-shared-"))  # under /tmp: the impostor can reach it
    shared.chmod(0o777)
    path = shared / "kvm.sock"
    ready_r, ready_w = os.pipe()
    got_r, got_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the impostor: uid 65534, listens where the victim will connect
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(1)
            os.write(ready_w, b"x")
            listener.settimeout(20)
            conn, _ = listener.accept()
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                conn.sendall(wire.frame(Msg.MEM_READ, wire.MEM_READ.pack(0x1000, 64)))  # ask for memory at once
                while chunk := conn.recv(4096):
                    data += chunk
            os.write(got_w, json.dumps({"received": len(data)}).encode())
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(got_w)
    try:
        assert os.read(ready_r, 1) == b"x", "the impostor could not listen"
        env = victim_env(shim, path)
        r = subprocess.run([str(c_client)], env=env, capture_output=True, text=True, timeout=30)
        got = os.read(got_r, 4096)
    finally:
        os.waitpid(pid, 0)
        shutil.rmtree(shared, ignore_errors=True)
    assert json.loads(got) == {"received": 0}  # not one byte: no frame, no memory
    assert r.returncode == 3 and json.loads(r.stdout)["error"]["name"] == "EACCES"
    assert f"refusing the server at {path}: it runs as uid {NOBODY}" in r.stderr


# -- an evil server of the same uid: memory outside the argument ------------------------


def evil_server(path: Path, on_compat_caps: Callable[[Transport, int], None]) -> Iterator[list[object]]:
    """Answers the C client's calls (on the shared channel when asked); at the compat-caps
    ioctl hands the channel to ``on_compat_caps(channel, arg)``.  Yields what it observed."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    seen: list[object] = []

    def serve() -> None:
        conn, _ = listener.accept()
        chan: Transport = wire.FrameReader(conn)
        files = Placeholders()
        try:
            while True:
                msg, payload = chan.read()
                if msg == Msg.SHM:
                    chan = SharedChannel(conn)
                elif msg == Msg.OPEN:
                    files.answer(conn, chan.sendall)
                elif msg == Msg.IOCTL:
                    (_fd, cmd, arg, _dev, _ino), _ = wire.unpack(wire.IOCTL, payload, exact=False)
                    if cmd == 0x2000AEB8:
                        on_compat_caps(chan, arg)
                        seen.append(("caps", arg, chan.read()))
                        chan.sendall(wire.frame(Msg.RESULT, wire.RESULT.pack(0, 0, 0, 0)))
                    elif cmd == 0x2000AE01:
                        files.answer(conn, chan.sendall)
                    else:
                        ret = {0x2000AE00: 12}.get(cmd, 1)
                        chan.sendall(wire.frame(Msg.RESULT, wire.RESULT.pack(ret, 0, 0, 0)))
        except wire.ProtocolError:
            pass
        finally:
            files.close()
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield seen
    listener.close()
    thread.join(10)


SECRET = "kvmsim-secret-in-the-victim"


@pytest.mark.parametrize("offset", [-8, -4096, 65536, 1 << 20])
@pytest.mark.parametrize("memory", ["process_vm", "pipe"])
@pytest.mark.parametrize("channel", CHANNELS)
def test_memory_outside_the_argument_is_refused(
    offset: int, memory: str, channel: str, shim: Path, c_client: Path, tmp_path: Path
) -> None:
    def ask(chan: Transport, arg: int) -> None:
        chan.sendall(wire.frame(Msg.MEM_READ, wire.MEM_READ.pack((arg + offset) % 2**64, 32)))

    path = tmp_path / "kvm.sock"
    env = victim_env(shim, path, channel) | {"KVMSIM_SECRET": SECRET}
    if memory == "pipe":
        env["KVMSIM_MEMORY"] = "pipe"
    gen = evil_server(path, ask)
    seen = next(gen)
    subprocess.run([str(c_client), "--abi", "linux-7.3"], env=env, capture_output=True, text=True, timeout=30)
    next(gen, None)
    (_, _arg, (msg, payload)), *_ = seen
    assert msg == Msg.MEM_DATA and payload == wire.MEM_DATA.pack(14)  # EFAULT, and no bytes


@pytest.mark.parametrize("channel", CHANNELS)
def test_memory_inside_the_argument_is_served(channel: str, shim: Path, c_client: Path, tmp_path: Path) -> None:
    def ask(chan: Transport, arg: int) -> None:
        chan.sendall(wire.frame(Msg.MEM_READ, wire.MEM_READ.pack(arg, 8)))

    path = tmp_path / "kvm.sock"
    gen = evil_server(path, ask)
    seen = next(gen)
    env = victim_env(shim, path, channel)
    subprocess.run([str(c_client), "--abi", "linux-7.3"], env=env, capture_output=True, timeout=30)
    next(gen, None)
    (_, _arg, (msg, payload)), *_ = seen
    assert msg == Msg.MEM_DATA and payload == wire.MEM_DATA.pack(0) + (24).to_bytes(8, "little")  # its size field


WRITER = """
import ctypes, fcntl, os, sys
secret = ctypes.create_string_buffer(b"untouched", 16)
print(ctypes.addressof(secret), flush=True)
fd = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(fd, 0x2000AE01, 0)
try:
    fcntl.ioctl(vm, 0x2000AEB8, bytearray(24))
    print("ok")
except OSError as exc:
    print(exc.errno)
print(secret.value.decode())
"""


def against_a_hostile_server(
    shim: Path, tmp_path: Path, program: str, lie: Callable[[socket.socket, int, subprocess.Popen[str]], bool]
) -> list[str]:
    """``program`` under the shim against a server that answers OPEN and KVM_CREATE_VM as a server
    does, and the third call as ``lie(conn, request, program)`` does (False: as a server does);
    the words the program printed after that."""
    path = tmp_path / "kvm.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    proc = subprocess.Popen([sys.executable, "-c", program], env=victim_env(shim, path), stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    conn, _ = listener.accept()
    reader = wire.FrameReader(conn)
    files = Placeholders()
    for _ in range(3):
        msg, payload = reader.read()
        cmd = wire.unpack(wire.IOCTL, payload, exact=False)[0][1] if msg == Msg.IOCTL else 0
        if not lie(conn, cmd, proc):
            files.answer(conn, conn.sendall)
    out = proc.communicate(timeout=30)[0].split()
    files.close()
    conn.close()
    listener.close()
    return out


def test_a_result_writing_outside_the_argument_is_not_applied(shim: Path, tmp_path: Path) -> None:
    def lie(conn: socket.socket, cmd: int, proc: subprocess.Popen[str]) -> bool:
        if cmd != 0x2000AEB8:  # the compat caps ioctl: a write to the program's secret
            return False
        assert proc.stdout is not None
        write = wire.WRITE.pack(int(proc.stdout.readline()), 8) + b"OVERWRIT"
        conn.sendall(wire.frame(Msg.RESULT, wire.RESULT.pack(0, 0, 0, 1) + write))
        return True

    assert against_a_hostile_server(shim, tmp_path, WRITER, lie) == ["14", "untouched"]  # EFAULT, the secret kept


DEVICE_WRITER = """
import ctypes, fcntl, os
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(fd, 0x2000AE01, 0)
arg = ctypes.create_string_buffer(bytes([3, 0, 0, 0]) + bytes(8) + b"untouched", 32)
r = libc.ioctl(vm, ctypes.c_ulong(0xC00CAEE0), ctypes.c_void_p(ctypes.addressof(arg)))
print("ok" if r == 0 else ctypes.get_errno())
print(arg.raw[12:21].decode())
"""


def test_a_new_fd_field_outside_the_argument_is_not_written(shim: Path, tmp_path: Path) -> None:
    """A server that answers KVM_CREATE_DEVICE with the new fd's field past the struct (the
    request's size) gets nothing written there: EIO, the placeholder it sent closed."""
    kept: list[socket.socket] = []

    def lie(conn: socket.socket, cmd: int, proc: subprocess.Popen[str]) -> bool:
        if cmd != 0xC00CAEE0:
            return False
        theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = wire.RESULT_NEW_FD | wire.RESULT_FD_FIELD
        conn.sendall(wire.frame(Msg.RESULT, wire.RESULT.pack(12, 0, flags, 0)))  # the field at the struct's end
        socket.send_fds(conn, [b"\0"], [theirs.fileno()])
        theirs.close()
        kept.append(ours)
        return True

    assert against_a_hostile_server(shim, tmp_path, DEVICE_WRITER, lie) == ["5", "untouched"]  # EIO, nothing written
    for s in kept:
        s.close()


RECONNECT = """
import errno, fcntl, os
fd = os.open("/dev/kvm", os.O_RDWR)
for step in ("ioctl", "open"):
    try:
        fcntl.ioctl(fd, 0x2000AE00, 0) if step == "ioctl" else os.open("/dev/kvm", os.O_RDWR)
        print(step, "ok")
    except OSError as exc:
        print(step, errno.errorcode[exc.errno])
"""


def test_no_silent_reconnect_after_the_connection_is_lost(shim: Path, tmp_path: Path) -> None:
    path = tmp_path / "kvm.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    listener.settimeout(0.5)
    proc = subprocess.Popen(
        [sys.executable, "-c", RECONNECT], env=victim_env(shim, path), stdout=subprocess.PIPE, text=True
    )
    conn, _ = listener.accept()
    wire.FrameReader(conn).read()  # OPEN
    files = Placeholders()
    files.answer(conn, conn.sendall)
    conn.close()  # the server goes away; whatever listens at the path next is not to be trusted
    out = proc.communicate(timeout=30)[0]
    files.close()
    with pytest.raises(TimeoutError):
        listener.accept()  # no second connection was made
    listener.close()
    assert out.split("\n")[:2] == ["ioctl EIO", "open EIO"]


# -- 2. the build cache -------------------------------------------------------------------


@as_root
def test_a_planted_shim_in_the_cache_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KVMSIM_CACHE", str(cache))
    monkeypatch.setattr(build, "_fallback", [])
    real = build_shim()
    assert real.parent == cache and stat.S_IMODE(cache.stat().st_mode) == 0o700
    planted = real.read_bytes()
    real.unlink()
    real.write_bytes(planted)
    os.chown(real, NOBODY, NOBODY)  # another user's file with the right name
    again = build_shim()
    assert again != real and again.parent != cache and build.private(again)


def test_a_world_writable_cache_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    monkeypatch.setenv("KVMSIM_CACHE", str(cache))
    monkeypatch.setattr(build, "_fallback", [])
    out = build_shim()
    assert out.parent != cache and build.private(out.parent)
    assert "is not private" in capsys.readouterr().err


# -- 3. the server's socket -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d.chmod(0o777), d / "kvm.sock")[1], "other users may write there"),
        (lambda d: (d / "dangling").symlink_to(d / "nowhere") or d / "dangling", "already exists"),
        (lambda d: d / "missing" / "kvm.sock", "No such file or directory"),
        (lambda d: d / ("x" * 120), "longer than a Unix socket path"),
    ],
)
def test_the_server_refuses_a_socket_path_others_could_interfere_with(
    tmp_path: Path, setup: Callable[[Path], Path], message: str
) -> None:
    path = setup(tmp_path)
    with pytest.raises(ServerError, match=message):
        Server(Kernel.from_profile("powervm-p11"), path)


def test_a_sticky_shared_directory_is_fine_and_the_socket_is_0600(tmp_path: Path) -> None:
    tmp_path.chmod(0o1777)
    with Server(Kernel.from_profile("powervm-p11"), tmp_path / "kvm.sock") as server:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


def test_kvmsim_serve_says_why_in_one_line(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    exe = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run(
        [str(exe), "serve", "--host", "powervm-p11", "--socket", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "other users may write there" in r.stderr


def test_the_shim_touches_an_argument_directly_only_on_the_callers_live_stack(shim: Path, tmp_path: Path) -> None:
    """The shim skips process_vm_* for an argument on the calling thread's live stack; from a
    signal stack it must not, or a pointer into a hole between the two stacks would crash."""
    from kvmsim.intercept.build import compile_c

    program = compile_c([Path(__file__).parent / "data" / "stack_args.c"], flags=["-pthread"])
    kernel = Kernel.from_profile("powervm-p11")
    with Server(kernel, tmp_path / "kvm.sock") as server:
        env = shim_environment(host_answer(kernel), server.path, shim)
        r = subprocess.run([str(program)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["stack 0", "thread 0", "altstack EFAULT"]
