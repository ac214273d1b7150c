"""``kvmsim env`` / ``kvmsim run --server``: many programs attached to one ``kvmsim serve``,
each with only the shim and the socket; and nothing taken from a server that is not ours."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import C_CLIENT, client_answer, needs_cc, needs_seccomp, printed_answer
from pyshim import read_frame

from kvmsim import Kernel
from kvmsim.intercept import wire
from kvmsim.intercept.attach import AttachError, ask_host
from kvmsim.intercept.server import Server
from kvmsim.intercept.wire import HostAnswer, Msg
from kvmsim.kernel import hostfs

KVMSIM = [sys.executable, "-m", "kvmsim"]
NOBODY = 65534
pytestmark = needs_cc


@contextlib.contextmanager
def serving(host: str, directory: Path, *extra: str) -> Iterator[Path]:
    """``kvmsim serve`` as a user runs it, until the block ends (then SIGTERM)."""
    path = directory / "kvm.sock"
    proc = subprocess.Popen([*KVMSIM, "serve", "--host", host, "--socket", str(path), *extra], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "kvmsim serve did not start"
            time.sleep(0.02)
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize(("host", "abi"), [("powervm-p11", "linux-7.3"), ("kvm-l1-p10-compat-p9", "v4")])
def test_programs_attached_with_env_see_the_served_host(host: str, abi: str, c_client: Path, tmp_path: Path) -> None:
    with serving(host, tmp_path, "--abi", abi) as sock:
        lines = subprocess.run([*KVMSIM, "env", "--socket", str(sock)], capture_output=True, text=True, check=True)
        script = f'{lines.stdout}\n"$1"\necho ---\ncat /proc/cpuinfo\n'
        out = subprocess.run(["sh", "-c", script, "sh", str(c_client)], capture_output=True, text=True, check=True)
    answer, cpuinfo = out.stdout.split("---\n")
    assert (0, printed_answer(answer)) == client_answer(host, abi)
    assert cpuinfo.encode() == hostfs.files(Kernel.from_profile(host, abi=abi))["/proc/cpuinfo"]
    assert "LD_PRELOAD" not in os.environ or os.environ["LD_PRELOAD"] not in lines.stdout


def test_env_json_names_the_same_variables(tmp_path: Path) -> None:
    with serving("powervm-p11", tmp_path) as sock:
        out = subprocess.run(
            [*KVMSIM, "env", "--socket", str(sock), "--format", "json"], capture_output=True, text=True, check=True
        )
        variables = json.loads(out.stdout)
        assert variables["KVMSIM_SOCKET"] == str(sock)
        assert (variables["KVMSIM_MACHINE"], variables["KVMSIM_DEV_KVM"]) == ("ppc64le", "1")
        assert Path(variables["KVMSIM_ROOT"], "proc/cpuinfo").is_file()
        assert Path(variables["LD_PRELOAD"].split()[0]).name.startswith("kvmsim_shim")
    assert not Path(variables["KVMSIM_ROOT"]).exists(), "serve removes the host's files when it stops"


@needs_seccomp
def test_run_server_supervises_a_static_program_under_seccomp(tmp_path: Path) -> None:
    """kvmsim run --server hands its program's seccomp listener to the server, which answers
    from its kernel: a static binary (which the shim cannot reach) sees the served host, and a
    dynamic one answers the same on either path."""
    static = tmp_path / "static_client"
    if subprocess.run(["cc", "-O2", "-static", "-o", str(static), str(C_CLIENT)]).returncode != 0:
        pytest.skip("no static glibc here")
    with serving("powervm-p10", tmp_path) as sock:
        runs = {
            how: subprocess.run(
                [*KVMSIM, "run", "--server", str(sock), *flags, "--", str(static)], capture_output=True, text=True
            )
            for how, flags in {"auto": [], "seccomp": ["--intercept", "seccomp"]}.items()
        }
        refused = subprocess.run(
            [*KVMSIM, "run", "--server", str(sock), "--intercept", "preload", "--", str(static)], capture_output=True
        )
        missing = subprocess.run([*KVMSIM, "run", "--server", str(sock), "--", "no-such-cmd"], capture_output=True)
        cpuinfo = subprocess.run(
            [*KVMSIM, "run", "--server", str(sock), "--", "cat", "/proc/cpuinfo"], capture_output=True
        )
    want = client_answer("powervm-p10", "linux-7.3")
    for how, out in runs.items():
        assert (out.returncode, printed_answer(out.stdout)) == want, (how, out.stderr)
    assert refused.returncode == 125  # the shim cannot reach a static program
    assert missing.returncode == 127
    assert cpuinfo.stdout == hostfs.files(Kernel.from_profile("powervm-p10"))["/proc/cpuinfo"]


@needs_seccomp
def test_a_listener_frame_without_a_listener_is_refused_and_the_server_goes_on(tmp_path: Path) -> None:
    with serving("powervm-p11", tmp_path) as sock:
        for fds in ([os.eventfd(0)], []):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(sock))
            socket.send_fds(s, [wire.frame(Msg.LISTENER)], fds)
            msg, payload = read_frame(s)
            assert msg == Msg.RESULT and wire.RESULT.unpack_from(payload)[1] == errno.EINVAL
            s.close()
            for fd in fds:
                os.close(fd)
        assert ask_host(str(sock)).name == "powervm-p11"  # still serving


def test_run_server_execs_the_command_attached(c_client: Path, tmp_path: Path) -> None:
    with serving("powervm-p10", tmp_path) as sock:
        out = subprocess.run(
            [*KVMSIM, "run", "--server", str(sock), "--", str(c_client)], capture_output=True, text=True
        )
        missing = subprocess.run([*KVMSIM, "run", "--server", str(sock), "--", "no-such-cmd"], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert (0, printed_answer(out.stdout)) == client_answer("powervm-p10", "linux-7.3")
    assert missing.returncode == 127


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["env", "--socket", "{dir}/absent"], 3, "cannot connect"),
        (["run", "--server", "{dir}/absent", "--", "true"], 125, "cannot connect"),
        (["run", "--server", "{dir}/s", "--host", "powervm-p11", "--", "true"], 2, "one of --host"),
        (["run", "--server", "{dir}/s", "--abi", "v4", "--", "true"], 2, "give --abi/--trace to kvmsim serve"),
        (["run", "--", "true"], 2, "one of --host"),
    ],
)
def test_bad_attach_is_one_line_and_a_distinct_code(args: list[str], code: int, says: str, tmp_path: Path) -> None:
    argv = [a.replace("{dir}", str(tmp_path)) for a in args]
    r = subprocess.run([*KVMSIM, *argv], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (code, "")
    assert says in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


# -- trust: nothing from a server that is not this user's, nothing the shim would not ask ----


@contextlib.contextmanager
def fake_server(path: Path, answer: bytes) -> Iterator[None]:
    """A same-uid listener that answers HELLO with ``answer`` (as a HOST frame)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    read_frame(conn)
                    conn.sendall(wire.frame(Msg.HOST, answer))

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield
    finally:
        listener.close()


def host_json(**change: object) -> bytes:
    doc = {"name": "h", "machine": "ppc64le", "dev_kvm": True, "root": None, "page_size": 65536,
           "processor": [0x00801200, "power10"], "address_space": None}  # fmt: skip
    return json.dumps(doc | change).encode()


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (host_json(LD_PRELOAD="/tmp/evil.so"), "not kvmsim's"),  # only the four names, never the library
        (host_json(machine="sparc64"), "not kvmsim's"),
        (host_json(dev_kvm="yes"), "not kvmsim's"),
        (b"\xff not json", "not kvmsim's"),
        (host_json(root="relative/dir"), "not an absolute path"),
        (host_json(root="/tmp"), "not a private directory"),  # others may write there
        (host_json(root="/nonexistent-kvmsim-root"), "No such file"),
    ],
)
def test_a_host_answer_kvmsim_would_not_give_is_refused(answer: bytes, says: str, tmp_path: Path) -> None:
    path = tmp_path / "s"
    with fake_server(path, answer), pytest.raises(AttachError, match=says):
        ask_host(str(path))


def test_a_private_root_of_ours_is_taken(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    with fake_server(tmp_path / "s", host_json(root=str(root))):
        assert ask_host(str(tmp_path / "s")) == HostAnswer(
            "h", "ppc64le", True, str(root), 65536, (0x00801200, "power10")
        )


def test_the_server_answers_hello_and_closes_on_a_hello_with_payload(tmp_path: Path) -> None:
    kernel = Kernel.from_profile("x86_64")
    with Server(kernel, tmp_path / "s", root=None) as server:
        assert ask_host(server.path) == HostAnswer("x86_64", "x86_64", True, None, 4096, None, None)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(server.path)
            s.sendall(wire.frame(Msg.HELLO, b"x"))
            s.settimeout(10)
            assert s.recv(64) == b""  # a malformed HELLO closes the connection


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_an_impostor_server_of_another_uid_gets_nothing_from_env(tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="kvmsim-shared-"))
    shared.chmod(0o777)
    path = shared / "kvm.sock"
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the impostor: uid 65534, answers HELLO with a library of its choice
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with fake_server(path, host_json(root=str(shared))):
                os.write(ready_w, b"x")
                time.sleep(30)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x", "the impostor could not listen"
        r = subprocess.run([*KVMSIM, "env", "--socket", str(path)], capture_output=True, text=True, timeout=60)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(shared, ignore_errors=True)
    assert (r.returncode, r.stdout) == (3, "")
    assert f"served by uid {NOBODY}, not this user" in r.stderr


def test_the_host_answer_has_one_encoder_and_decoder(tmp_path: Path) -> None:
    """What the server sends is what kvmsim env and the runner read, through one schema."""
    from kvmsim.intercept.server import host_answer
    from kvmsim.intercept.wire import HostAnswer, ProtocolError

    answers = [("kvm-l1-p9-be", (0x004E1202, "power9"), None),
               ("qemu-nested-hv-p10", (0x00801200, "power10"), 1 << 46), ("x86_64", None, None)]  # fmt: skip
    for name, processor, space in answers:
        kernel = Kernel.from_profile(name)
        with Server(kernel, tmp_path / "s", root=str(tmp_path)) as server:
            answer = HostAnswer.decode(server.hello)
        assert answer == host_answer(kernel, str(tmp_path))
        assert (answer.processor, answer.address_space) == (processor, space)  # qemu-user's -cpu and -R
    for bad in (b"[]", b'{"name": "x"}', b'{"name": 1, "machine": "ppc64", "dev_kvm": true, "root": null}',
                host_json(page_size=8192), host_json(page_size=True), host_json(processor=[1 << 32, "power10"]),
                host_json(processor=[0x00801200, "-cpu x"]), host_json(processor=[True, "power9"]),
                host_json(processor=[0x00801200]), host_json(address_space=0), host_json(address_space=-1),
                host_json(address_space=1 << 64), host_json(address_space="64TB")):  # fmt: skip
        with pytest.raises(ProtocolError, match="not kvmsim's"):
            HostAnswer.decode(bad)


def test_env_says_whom_it_reaches_and_a_stopped_server_is_eio(tmp_path: Path) -> None:
    """The comment line names what LD_PRELOAD cannot reach (a static or Go binary); after the
    server stops, an attached program's open of /dev/kvm is EIO, as SECURITY.md says (was ENOENT)."""
    probe = (
        "import errno, os, sys\n"
        "os.close(os.open('/dev/kvm', os.O_RDWR))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        "    os.open('/dev/kvm', os.O_RDWR)\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])\n"
    )
    with serving("powervm-p11", tmp_path) as sock:
        lines = subprocess.run([*KVMSIM, "env", "--socket", str(sock)], capture_output=True, text=True, check=True)
        assert lines.stdout.startswith("# LD_PRELOAD reaches dynamically linked programs only: a static or Go")
        as_json = subprocess.run(
            [*KVMSIM, "env", "--socket", str(sock), "--format", "json"], capture_output=True, text=True, check=True
        )
        assert "kvmsim run --server" in as_json.stderr and json.loads(as_json.stdout)
        prog = subprocess.Popen(
            ["sh", "-c", f'{lines.stdout}\nexec "$@"', "sh", sys.executable, "-c", probe],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert prog.stdout is not None and prog.stdout.readline() == "ready\n"  # its first open, on a live server
    out, _ = prog.communicate("\n", timeout=60)  # the server has stopped
    assert out.strip() == "EIO"
