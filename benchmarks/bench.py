"""``make bench``: what users pay, each against its target, in one run on one machine.

Every row is a median; a row with a target says OK or MISSED, and where a target is missed the
row that explains why (a measured floor) is printed beside it.  Writes ``bench.json``; the docs build
renders docs/benchmarks.md's table from it (:func:`render_markdown`).  Benchmarks, not tests: nothing here
fails on a slow machine.

The rows (issue 16's targets):
1. per-test fixture cost: ``kvm_host`` set-up + tear-down <= 2x what pyfakefs's ``fs`` adds;
2. the shim per call <= 3x the in-process ``sys_ioctl`` of the same request, and >= 8x faster
   than umockdev's preload answering the same request from a Python ``IoctlBase`` handler
   (beside them, a ppc64le program's call under qemu-user on each channel);
3. programs attached to one server: per-program overhead <= 2x ``umockdev-run``'s; the seccomp
   path (``kvmsim run --intercept seccomp``): an ioctl >= 8x faster than umockdev's, printed
   beside the preload channel's, what an ordinary open(2) costs extra (with its floor), and
   the start of a static program;
4. start-up, as ratios to an interpreter that imports attrs (the floor, measured alternately in
   the same rounds, with bytecode caching as an installed package has it): ``kvm-compat-caps
   --device`` <= 1.25x, ``--sim`` <= 1.5x, ``kvmsim run --host`` with its own server <= 2x;
5. the real-kernel lab's whole set on a warm cache <= 2 minutes;
6. no regression: ``Kernel.ioctl`` <= 5x a real ioctl from Python (the whole matrix is shown,
   its old target retired: nobody waits on it);
7. real QEMU (issue 33): Debian's QEMU's libvirt probe and a pseries machine to ``-S`` under
   ``kvmsim run`` <= 1.1x the same QEMU with ``-accel tcg`` under the same qemu-user; their
   floors: the same starts attached to a running server (no interpreter before QEMU).

umockdev comes from Debian's archive through kvmsim's private apt cache (never installed);
its Python handler needs Debian's python3 with python3-gi.  Where either is missing the rows
say "skipped" and why."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from kvmsim import Kernel
from kvmsim.intercept.build import BuildError, compile_c
from kvmsim.intercept.server import Server, host_answer
from kvmsim.kernel.profile import names as profile_names
from kvmsim.preload.library import build_shim
from kvmsim.preload.runner import shim_environment
from kvmsim.uapi import REVISIONS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "powervm-p11"


@attrs.frozen
class Row:
    name: str
    seconds: float | None  # the median (None: not measured)
    target: str = ""  # what it should stay within, in words
    ok: bool | None = None  # None: no target, or not measured
    note: str = ""  # the floor that explains a miss, or why it was skipped

    @property
    def verdict(self) -> str:
        if self.seconds is None:
            return "skipped"
        return "" if self.ok is None else "OK" if self.ok else "MISSED"


def skipped(name: str, why: str, target: str = "") -> Row:
    return Row(name, None, target, None, f"skipped: {why}")


def median_time(fn: Callable[[], object], *, number: int, repeat: int = 7) -> float:
    """The median, over ``repeat`` rounds, of the time per call of ``number`` calls."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds)


def paired(a: Callable[[], float], b: Callable[[], float], rounds: int = 7) -> tuple[float, float, float]:
    """``a`` and ``b`` (each one round's seconds per operation) measured alternately, so a
    noisy machine slows both alike: (median a, median b, median of the per-round a/b)."""
    a(), b()  # warm up
    pairs = [(a(), b()) for _ in range(rounds)]
    return (
        statistics.median(x for x, _ in pairs),
        statistics.median(y for _, y in pairs),
        statistics.median(x / y for x, y in pairs),
    )


def per_op(fn: Callable[[], object], number: int) -> Callable[[], float]:
    """One round of ``number`` calls of ``fn``, as seconds per call."""

    def round_() -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    return round_


def run_time(argv: Sequence[str], *, env: dict[str, str] | None = None, number: int = 20, repeat: int = 5) -> float:
    def once() -> None:
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    once()  # warm the page cache
    return median_time(once, number=number, repeat=repeat)


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


# -- 1. the per-test fixture cost -------------------------------------------------------------

FIXTURE_PLUGIN = """
import json, os
_d = {}
def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        _d[report.nodeid] = _d.get(report.nodeid, 0.0) + report.duration
def pytest_sessionfinish(session):
    with open(os.environ["KVMSIM_BENCH_OUT"], "w") as f:
        json.dump(sorted(_d.values()), f)
"""
FIXTURE_TESTS = {
    "plain": "def test_case(i):\n    assert os.path.exists('/')\n",
    "fs": "def test_case(i, fs):\n    assert os.path.exists('/')\n",
    "kvm_host": "def test_case(i, kvm_host):\n    assert os.path.exists('/dev/kvm')\n",
}


def fixture_rows(cases: int = 200, rounds: int = 5) -> list[Row]:
    """The same 200-test file three ways, in alternating rounds; each test's set-up + tear-down
    as pytest reports it, what ``fs`` and ``kvm_host`` add over the plain test."""
    name = f"kvm_host set-up + tear-down, added per test ({cases} tests)"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench_durations.py").write_text(FIXTURE_PLUGIN)
        for kind, body in FIXTURE_TESTS.items():
            Path(tmp, f"test_{kind}.py").write_text(
                f"import os, pytest\n\n@pytest.mark.parametrize('i', range({cases}))\n{body}"
            )

        def per_test(kind: str) -> float:
            out = Path(tmp, f"{kind}.json")
            env = {**os.environ, "KVMSIM_BENCH_OUT": str(out), "PYTHONPATH": tmp}
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench_durations"]
            proc = subprocess.run([*argv, f"test_{kind}.py"], env=env, capture_output=True, text=True, cwd=tmp)
            if proc.returncode != 0:
                raise RuntimeError(f"pytest failed: {proc.stdout[-200:]}")
            return float(statistics.median(json.loads(out.read_text())))

        try:
            runs = [{kind: per_test(kind) for kind in FIXTURE_TESTS} for _ in range(rounds)]
        except RuntimeError as exc:
            return [skipped(name, str(exc), "<= 2x what fs adds")]
    fs_adds = statistics.median(r["fs"] - r["plain"] for r in runs)
    kvm_adds = statistics.median(r["kvm_host"] - r["plain"] for r in runs)
    ratio = statistics.median((r["kvm_host"] - r["plain"]) / (r["fs"] - r["plain"]) for r in runs)
    return [
        Row(f"floor: pyfakefs's fs fixture, added per test ({cases} tests)", fs_adds),
        Row(name, kvm_adds, "<= 2x what fs adds", ratio <= 2, f"{ratio:.1f}x fs (alternating runs)"),
    ]


# -- 2. the shim per call, against the kernel in-process and umockdev --------------------------


def sys_ioctl_round(host: str = HOST) -> Callable[[], float]:
    """One round of the in-process ``sys_ioctl`` of the compat-caps request (linux-7.3)."""
    k = Kernel.from_profile(host)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    req = k.KVM_PPC_GET_COMPAT_CAPS
    assert req is not None
    addr = k.memory.map(24, data=(24).to_bytes(8, "little") + bytes(16))
    return per_op(lambda: k.sys_ioctl(vm, req, addr), 5000)


@contextmanager
def serving(host: str = HOST) -> Iterator[tuple[Kernel, Server]]:
    kernel = Kernel.from_profile(host)
    with tempfile.TemporaryDirectory() as tmp, Server(kernel, os.path.join(tmp, "kvm.sock")) as server:
        yield kernel, server


def dispatch_round(host: str = HOST) -> Callable[[], float]:
    """One round of what the server does for a compat-caps IOCTL frame, without a transport."""
    from kvmsim.intercept import wire
    from kvmsim.intercept.placeholder import Placeholders
    from kvmsim.intercept.server import Connection

    kernel = Kernel.from_profile(host)
    ours, _theirs = socket.socketpair()
    conn = Connection(Placeholders(kernel), ours, "bench")
    _, dev = conn.dispatch(wire.Msg.OPEN, wire.OPEN.pack(os.O_RDWR) + b"/dev/kvm")
    assert dev is not None
    st = os.fstat(dev)
    _, vm = conn.dispatch(wire.Msg.IOCTL, wire.IOCTL.pack(dev, kernel.KVM_CREATE_VM, 0, st.st_dev, st.st_ino))
    assert vm is not None
    st = os.fstat(vm)
    req = kernel.KVM_PPC_GET_COMPAT_CAPS or 0
    frame = (
        wire.IOCTL.pack(vm, req, 0x10000, st.st_dev, st.st_ino) + (24).to_bytes(8, "little") + bytes(wire.WINDOW - 8)
    )
    return per_op(lambda: conn.dispatch(wire.Msg.IOCTL, frame), 5000)


def loop_round(loop: Path, env: dict[str, str], *args: str) -> Callable[[], float]:
    """One run of ioctl_loop: its mean seconds per call."""
    return argv_round([str(loop), *args], env)


def argv_round(argv: Sequence[str], env: dict[str, str]) -> Callable[[], float]:
    """One run of an ioctl_loop command line (ioctl_loop itself, or under qemu-user): its mean
    seconds per call."""

    def round_() -> float:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
        return float(out.stdout) * 1e-9

    return round_


def check_args(kernel: Kernel) -> list[str]:
    """KVM_CHECK_EXTENSION(KVM_CAP_PPC_COMPAT_CAPS) on /dev/kvm, with the answer it must get."""
    rev = kernel.rev
    assert rev.ioctl is not None
    dev = kernel.open()
    expect = kernel.ioctl(dev, kernel.KVM_CHECK_EXTENSION, rev.ioctl.cap)
    kernel.close(dev)
    return [hex(kernel.KVM_CHECK_EXTENSION), str(rev.ioctl.cap), str(expect)]


def shim_rows(loop: Path, shim: Path) -> tuple[list[Row], float | None]:
    """Per call through the shim: the shared channel against the kernel in-process (paired),
    the socket, and the socket's floor.  Also returns the shim's KVM_CHECK_EXTENSION time."""
    inproc = sys_ioctl_round()
    with serving() as (kernel, server):
        env = shim_environment(host_answer(kernel), server.path, shim)
        caps = [hex(kernel.KVM_CREATE_VM), hex(kernel.KVM_PPC_GET_COMPAT_CAPS or 0)]
        shared, sys_ioctl, ratio = paired(loop_round(loop, env, "caps", "5000", *caps), inproc)
        sock = statistics.median(
            loop_round(loop, env | {"KVMSIM_CHANNEL": "socket"}, "caps", "2000", *caps)() for _ in range(5)
        )
        check = statistics.median(loop_round(loop, env, "check", "5000", *check_args(kernel))() for _ in range(5))
    _, _, served = paired(dispatch_round(), inproc)
    return [
        Row("in-process sys_ioctl: compat caps (linux-7.3)", sys_ioctl, note="the kernel model alone"),
        Row(
            "floor: the server's work a call, no transport (Connection.dispatch)",
            served * sys_ioctl,
            note=f"{served:.1f}x in-process: unpack the frame, the kernel, pack the RESULT",
        ),
        Row(
            "shim per call, shared channel: compat caps (C)",
            shared,
            "<= 3x in-process sys_ioctl",
            ratio <= 3,
            f"{ratio:.1f}x in-process (paired rounds)",
        ),
        Row("shim per call, socket (KVMSIM_CHANNEL=socket)", sock, note=f"{sock / sys_ioctl:.1f}x in-process"),
        ipc_floor_row(),
    ], check


def ipc_floor_row() -> Row:
    """What a socket path pays: a 40-byte ping-pong between two processes."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echoing child
        a.close()
        while data := b.recv(64):
            b.sendall(data)
        os._exit(0)
    b.close()

    def ping() -> None:
        a.sendall(b"x" * 40)
        a.recv(64)

    try:
        seconds = median_time(ping, number=2000, repeat=5)
    finally:
        a.close()
        os.waitpid(pid, 0)
    return Row("floor: a socketpair round trip between two processes", seconds, note="the socket path needs one a call")


# umockdev, fetched into kvmsim's private apt cache (kvmsim.lab.debian), never installed
UMOCKDEV_PACKAGES = ("umockdev", "libumockdev0", "gir1.2-umockdev-1.0", "libpcap0.8")
UMOCKDEV_HANDLER = """
import subprocess, sys
import gi
gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev

request, arg, answer = (int(x, 0) for x in sys.argv[3:6])
testbed = UMockdev.Testbed.new()
testbed.add_from_string("P: /devices/virtual/misc/kvm\\nN: kvm\\nE: DEVNAME=/dev/kvm\\nE: SUBSYSTEM=misc\\n")
handler = UMockdev.IoctlBase()

def on_ioctl(_handler, client):
    if client.get_request() == request:
        client.complete(answer, 0)
        return True
    return False

handler.connect("handle-ioctl", on_ioctl)
testbed.attach_ioctl("/dev/kvm", handler)
out = subprocess.run([sys.argv[1], "check", sys.argv[2], *sys.argv[3:6]], capture_output=True, text=True)
sys.stdout.write(out.stdout)
sys.stderr.write(out.stderr)
sys.exit(out.returncode)
"""


@attrs.frozen
class Umockdev:
    tree: Path

    @property
    def env(self) -> dict[str, str]:
        lib = self.tree / "usr" / "lib" / f"{platform.machine()}-linux-gnu"
        return {**os.environ, "LD_LIBRARY_PATH": str(lib), "GI_TYPELIB_PATH": str(lib / "girepository-1.0")}

    def tool(self, name: str) -> str:
        return str(self.tree / "usr" / "bin" / name)


def fetch_umockdev() -> Umockdev | str:
    """umockdev from the private apt cache, or why not."""
    from kvmsim.lab.debian import Archive, FetchError, Package

    try:
        archive = Archive()
        archive.update()
        archive.fetch([Package(name, "bookworm") for name in UMOCKDEV_PACKAGES])
    except (FetchError, OSError, subprocess.CalledProcessError) as exc:
        return f"umockdev not installed and not fetched ({exc})"
    found = Umockdev(archive.tree)
    probe = subprocess.run([found.tool("umockdev-run"), "--", "true"], env=found.env, capture_output=True, text=True)
    return found if probe.returncode == 0 else f"umockdev-run does not run here: {probe.stderr.strip()[:120]}"


def umockdev_ioctl_row(
    um: Umockdev | str, loop: Path, shim_check: float | None
) -> tuple[Row, Callable[[], float] | None]:
    """umockdev's row, and one round of it (seconds a call) for the rows that pair with it."""
    name = "umockdev: the same KVM_CHECK_EXTENSION from a Python IoctlBase handler"
    target = "shim >= 8x faster"
    if isinstance(um, str) or shim_check is None:
        return skipped(name, um if isinstance(um, str) else "the shim was not measured", target), None
    python3 = "/usr/bin/python3"
    if subprocess.run([python3, "-c", "import gi"], capture_output=True).returncode != 0:
        return skipped(name, "Debian's python3-gi is not installed (apt-get install python3-gi)", target), None
    with serving() as (kernel, _server):
        args = check_args(kernel)
    import atexit

    handler_dir = tempfile.mkdtemp(prefix="kvmsim-bench-")  # kept for the paired rounds, removed at exit
    atexit.register(shutil.rmtree, handler_dir, True)
    script = Path(handler_dir, "handler.py")
    script.write_text(UMOCKDEV_HANDLER)
    argv = [um.tool("umockdev-wrapper"), python3, str(script), str(loop), "2000", *args]

    def round_() -> float:
        out = subprocess.run(argv, env=um.env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"the handler failed: {out.stderr.strip()[-160:]}")
        return float(out.stdout) * 1e-9

    try:
        seconds = statistics.median(round_() for _ in range(3))
    except RuntimeError as exc:
        return skipped(name, str(exc), target), None
    row = Row(
        name, seconds, target, seconds >= 8 * shim_check, f"the shim's {fmt(shim_check)}: {seconds / shim_check:.0f}x"
    )
    return row, round_


# -- the seccomp path ---------------------------------------------------------------------------


def under_seccomp(loop: Path, *args: str) -> float:
    """ioctl_loop's mean seconds a call under ``kvmsim run --intercept seccomp`` (its own
    timing: the run's start is not in it)."""
    argv = [str(BIN / "kvmsim"), "run", "--host", HOST, "--intercept", "seccomp", "--", str(loop), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"ioctl_loop {' '.join(args)} under seccomp: {out.stderr.strip()[-200:]}")
    return float(out.stdout) * 1e-9


def seccomp_rows(loop: Path, shim_check: float | None, umockdev_round: Callable[[], float] | None) -> list[Row]:
    from kvmsim.seccomp.launch import unavailable

    why = unavailable()
    names = (
        "seccomp per call: KVM_CHECK_EXTENSION (C)",
        "seccomp per call: compat caps (C)",
        "seccomp: the extra cost of an open(2) of an ordinary path",
        f"kvmsim run --host {HOST} -- a static /bin/true (seccomp)",
    )
    if why is not None:
        return [skipped(name, why) for name in names]
    kernel = Kernel.from_profile(HOST)
    seccomp_round = functools.partial(under_seccomp, loop, "check", "5000", *check_args(kernel))
    if umockdev_round is not None:  # in alternating rounds, as every ratio here
        check, umockdev_check, per_round = paired(seccomp_round, umockdev_round, rounds=5)
        ratio = 1 / per_round  # the median of an odd number of rounds: its reciprocal is theirs
    else:
        check = statistics.median(seccomp_round() for _ in range(5))
    caps = [hex(kernel.KVM_CREATE_VM), hex(kernel.KVM_PPC_GET_COMPAT_CAPS or 0)]
    compat = statistics.median(under_seccomp(loop, "caps", "5000", *caps) for _ in range(5))
    opened = statistics.median(under_seccomp(loop, "open", "5000", "/etc/hostname") for _ in range(5))
    bare = statistics.median(loop_round(loop, dict(os.environ), "open", "5000", "/etc/hostname")() for _ in range(5))
    beside = f"the preload channel's {fmt(shim_check)}" if shim_check else "the preload channel not measured"
    rows = []
    if umockdev_round is None:
        rows.append(skipped(names[0], "umockdev was not measured", ">= 8x faster than umockdev's"))
    else:
        rows.append(
            Row(
                names[0],
                check,
                ">= 8x faster than umockdev's",
                ratio >= 8,
                f"umockdev's {fmt(umockdev_check)}: {ratio:.1f}x (alternating rounds); {beside}; floor: a "
                f"notification's round trip alone (what an ordinary open pays) is {fmt(opened - bare)}",
            )
        )
    rows.append(Row(names[1], compat, note="a notification, /proc/PID/fd, process_vm_readv/writev, the kernel"))
    rows.append(Row(names[2], opened - bare, note=f"floor: the same open without the filter, {fmt(bare)}"))
    with tempfile.TemporaryDirectory() as tmp:
        true = Path(tmp, "true")
        src = Path(tmp, "true.c")
        src.write_text("int main(void) { return 0; }\n")
        if subprocess.run(["cc", "-static", "-O2", "-o", str(true), str(src)], capture_output=True).returncode != 0:
            rows.append(skipped(names[3], "no static libc here"))
        else:
            env = cached_bytecode_env()
            start = run_time([str(BIN / "kvmsim"), "run", "--host", HOST, "--", str(true)], env=env, number=3)
            floor = run_time(FLOOR, env=env, number=3)
            rows.append(Row(names[3], start, note=f"{start / floor:.2f}x the attrs floor ({fmt(floor)})"))
    return rows


# -- 3. many programs, one server -------------------------------------------------------------


def program_rows(um: Umockdev | str, shim: Path) -> list[Row]:
    true = shutil.which("true") or "/bin/true"
    bare = run_time([true], number=40)
    rows = [Row("floor: bare /bin/true", bare)]
    with serving() as (kernel, server):
        attached = run_time([true], env=shim_environment(host_answer(kernel), server.path, shim), number=40)
        run = [str(BIN / "kvmsim"), "run", "--server", server.path]
        via_run = run_time([*run, "--", true], number=3)
        via_exec = run_time([*run, "--intercept", "preload", "--", true], number=3)
    if isinstance(um, str):
        return [
            *rows,
            skipped("attached program (kvmsim env): /bin/true", um, "overhead <= 2x umockdev-run's"),
        ]
    umock = run_time([um.tool("umockdev-run"), "--", true], env=um.env, number=40)
    ours, theirs = attached - bare, umock - bare
    return [
        *rows,
        Row("umockdev-run -- /bin/true", umock, note=f"overhead {fmt(theirs)}"),
        Row(
            "attached program (kvmsim env): /bin/true",
            attached,
            "overhead <= 2x umockdev-run's",
            ours <= 2 * max(theirs, 0.0),
            f"overhead {fmt(ours)}",
        ),
        Row(
            "kvmsim run --server S -- /bin/true (seccomp)",
            via_run,
            note="an interpreter start, the launcher, the server supervising",
        ),
        Row("kvmsim run --server S --intercept preload -- /bin/true", via_exec, note="an interpreter start, then exec"),
    ]


# -- 4. start-up --------------------------------------------------------------------------------

FLOOR = [sys.executable, "-c", "import attrs"]


def cached_bytecode_env() -> dict[str, str]:
    """The environment of an installed package: bytecode written once and reused (a private
    ``PYTHONPYCACHEPREFIX`` under build/, whatever ``PYTHONDONTWRITEBYTECODE`` says here), so
    the floor and our commands both start from .pyc files as pip leaves them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(ROOT / "build" / "pycache")
    return env


def start_round(argv: Sequence[str], env: dict[str, str], number: int = 5) -> Callable[[], float]:
    def once() -> None:
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    return per_op(once, number)


ATTRS_COST = """
import contextlib, io, runpy, sys, time
import attr._make as make
build, spent = make._ClassBuilder.build_class, []
def timed(self):
    start = time.perf_counter()
    cls = build(self)
    spent.append(time.perf_counter() - start)
    return cls
make._ClassBuilder.build_class = timed
sys.argv = sys.argv[1:]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    with contextlib.suppress(SystemExit):
        runpy.run_path(sys.argv[0], run_name="__main__")
print(len(spent), sum(spent), file=sys.__stdout__)
"""


def attrs_cost(argv: Sequence[str], env: dict[str, str]) -> str:
    """How many attrs classes a start builds, and what building them costs (attrs' own code
    generation: the house rule's part of the start), measured in the same interpreter; "" where
    attrs' internals are not the ones this reads."""
    out = subprocess.run([sys.executable, "-c", ATTRS_COST, *argv], env=env, capture_output=True, text=True)
    try:
        count, seconds = out.stdout.split()
        return f"{int(count)} attrs classes built, {float(seconds) * 1e3:.1f} ms"
    except ValueError:
        return ""


def start_rows() -> list[Row]:
    env = cached_bytecode_env()
    floor = start_round(FLOOR, env)
    bare = run_time([sys.executable, "-c", "pass"], env=env, number=5)
    rows = [Row("bare interpreter start", bare)]
    kernel_import = paired(start_round([sys.executable, "-c", "import kvmsim.user.simulated"], env), floor)
    model = f"importing the kernel model alone is {kernel_import[2]:.2f}x"
    cases = [
        (
            "kvm-compat-caps --device /dev/kvm --json",
            [str(BIN / "kvm-compat-caps"), "--device", "/dev/kvm", "--json"],
            1.25,
            "",
        ),
        (f"kvm-compat-caps --sim {HOST} --json", [str(BIN / "kvm-compat-caps"), "--sim", HOST, "--json"], 1.5, model),
        (
            f"kvmsim run --host {HOST} -- /bin/true (its own server)",
            [str(BIN / "kvmsim"), "run", "--host", HOST, "--", shutil.which("true") or "/bin/true"],
            2.0,
            model,
        ),
    ]
    floors = []
    for name, argv, limit, why in cases:
        seconds, floor_s, ratio = paired(start_round(argv, env), floor)
        floors.append(floor_s)
        cost = attrs_cost(argv, env) if ratio > limit else ""
        note = f"{ratio:.2f}x the floor" + "".join(f"; {w}" for w in (why, cost) if w and ratio > limit)
        rows.append(Row(name, seconds, f"<= {limit:g}x the attrs floor", ratio <= limit, note))
    rows.insert(
        1,
        Row(
            "floor: interpreter start + import attrs",
            statistics.median(floors),
            note=f"{statistics.median(floors) / bare:.1f}x bare",
        ),
    )
    return rows


# -- 5. the lab ---------------------------------------------------------------------------------


def lab_row(run: bool) -> Row:
    name = "real-kernel lab: every configuration, warm cache"
    target = "<= 120 s"
    if not run:
        return skipped(name, "--no-lab", target)
    from kvmsim.lab.debian import cache_dir

    if not (cache_dir() / "tree" / "usr" / "bin" / "qemu-system-ppc64").exists():
        return skipped(name, "the lab's cache is cold (run make lab once)", target)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run([str(BIN / "kvmsim"), "lab", "-o", tmp], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return Row(name, seconds, target, False, f"FAILED: {proc.stderr.strip()[-160:]}")
    return Row(name, seconds, target, seconds <= 120, f"{os.cpu_count()} cpus")


# -- 6. no regression ---------------------------------------------------------------------------


def real_ioctl_round() -> tuple[Callable[[], float], str]:
    """A real ioctl from Python: KVM_CHECK_EXTENSION on /dev/kvm, else FIONREAD on a pipe."""
    arg: int | bytearray
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        request, arg, note = 0xAE03, 3, "KVM_CHECK_EXTENSION on this machine's /dev/kvm"
    except OSError:
        fd, _ = os.pipe()
        request, arg, note = 0x541B, bytearray(4), "FIONREAD on a pipe (no usable /dev/kvm)"
    return per_op(lambda: fcntl.ioctl(fd, request, arg), 20000), note


def regression_rows() -> list[Row]:
    real, note = real_ioctl_round()
    rows = []
    bases = []
    _, _, alone = paired(sys_ioctl_round(), real)  # the floor: the kernel model without the fcntl contract
    for name, rev in REVISIONS.items():
        if rev.ioctl is None:
            continue
        k = Kernel.from_profile(HOST, abi=name)
        vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
        buf = bytearray(k.rev.layout.pack("little", size=24))
        req = k.KVM_PPC_GET_COMPAT_CAPS
        assert req is not None
        s, base, ratio = paired(per_op(functools.partial(k.ioctl, vm, req, buf), 20000), real)
        bases.append(base)
        floor = f"; sys_ioctl alone (7.3) is {alone:.1f}x" if ratio > 5 else ""
        note_ = f"{ratio:.1f}x the real ioctl's {fmt(base)} in the same rounds{floor}"
        rows.append(Row(f"Kernel.ioctl compat caps ({name})", s, "<= 5x a real ioctl", ratio <= 5, note_))
    rows.insert(0, Row("a real ioctl from Python", statistics.median(bases), note=note))
    from kvmsim.cli.commands import simulate
    from kvmsim.kernel.profile import load

    hosts = [load(n) for n in profile_names()]

    def whole() -> None:
        for host in hosts:
            for rev in REVISIONS.values():
                simulate(host, rev)

    m = median_time(whole, number=5)
    pairs = len(hosts) * len(REVISIONS)
    k = Kernel.from_profile(HOST)
    boot = median_time(lambda: Kernel(k.host, k.rev), number=500)
    rows.append(
        Row(
            f"whole matrix ({len(hosts)} profiles x {len(REVISIONS)} revisions)",
            m,
            note=f"{fmt(m / pairs)} a pair: a kernel booted ({fmt(boot)}), opened, a VM, the cap and the ioctl asked",
        )
    )
    return rows


# -- the soak -------------------------------------------------------------------------------------

SOAK_SECONDS = 8.0


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def soak_row(shim: Path) -> Row:
    """Processes x threads hammering one server with good calls (every answer checked by
    tests/data/shim_torture.c) while raw clients send garbage, truncated and stalled frames."""
    import logging
    import random

    from kvmsim.intercept import wire

    logging.getLogger("kvmsim.serve").setLevel(logging.ERROR)  # thousands of hostile clients, by design
    torture = compile_c([ROOT / "tests" / "data" / "shim_torture.c"], flags=["-pthread"])
    name = f"soak: 3 processes x 4 threads + 6 attackers, {SOAK_SECONDS:.0f} s"
    fds_before, rss_before = len(os.listdir("/proc/self/fd")), _rss_kib()
    wrong = runs = garbage = 0
    with serving() as (kernel, server):
        env = shim_environment(host_answer(kernel), server.path, shim)
        stop = time.monotonic() + SOAK_SECONDS
        rng = random.Random(7)

        def attacker() -> None:
            nonlocal garbage
            while time.monotonic() < stop:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(2)
                try:
                    s.connect(server.path)
                    kind = rng.randrange(4)
                    if kind == 0:
                        s.sendall(rng.randbytes(rng.randrange(1, 200)))
                    elif kind == 1:  # a header announcing more than it sends
                        s.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Msg.IOCTL, 16) + b"x")
                    elif kind == 2:  # a well-formed call on no placeholder / NULL
                        fd, dev, ino = rng.randrange(-5, 50), rng.randrange(1 << 20), rng.randrange(1 << 20)
                        s.sendall(wire.frame(wire.Msg.IOCTL, wire.IOCTL.pack(fd, 0x2000AEB8, 0, dev, ino)))
                    else:  # the shared channel, then gone
                        s.sendall(wire.frame(wire.Msg.SHM))
                    garbage += 1
                except OSError:
                    pass
                finally:
                    s.close()

        shrinks = wakes = stalls = hogged = 0

        def stalled_client() -> None:
            """A client that stops answering inside its call (the server's MEM_READ): it must
            cost that client only (the server's CLIENT_DEADLINE ends it)."""
            nonlocal stalls
            from test_hardening import call, connect, ioctl  # type: ignore[import-not-found]  # (tests/, on the path)

            while time.monotonic() < stop:
                try:
                    s = connect(server)
                    with contextlib.closing(s):
                        dev, _ = call(s, wire.Msg.OPEN, wire.OPEN.pack(os.O_RDWR) + b"/dev/kvm")
                        vm, _ = call(s, wire.Msg.IOCTL, ioctl(dev, 0x2000AE01))
                        s.sendall(wire.frame(wire.Msg.IOCTL, ioctl(vm, 0x2000AEB8, 0x10000)))  # no window
                        os.close(vm)
                        os.close(dev)
                        s.recv(64)  # the MEM_READ, never answered
                        stalls += 1
                        time.sleep(min(1.0, max(0.0, stop - time.monotonic())))
                except OSError:
                    pass

        hog_program = (
            "import errno, os, resource\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)\n"
            "n = 0\n"
            "while True:\n"
            "    try:\n"
            "        os.open('/dev/kvm', os.O_RDWR)\n"
            "    except OSError as exc:\n"
            "        print(errno.errorcode[exc.errno]); break\n"
            "    n += 1\n"
        )

        def fd_hog() -> None:
            """A program that opens /dev/kvm until it is refused (its share: EMFILE), then exits."""
            nonlocal hogged
            while time.monotonic() < stop:
                r = subprocess.run([sys.executable, "-c", hog_program], env=env, capture_output=True, text=True)
                hogged += r.stdout.strip() == "EMFILE"

        def channel_attacker(storm: bool) -> None:
            """The shared channel's attackers: shrink the memfd under the server's mapping
            (refused: it is sealed), or storm its futex with wake-ups that send nothing."""
            import fcntl as fcntl_
            import mmap

            sys.path.insert(0, str(ROOT / "tests"))
            from pyshim import wake  # type: ignore[import-not-found]  # (tests/, put on the path above)

            from kvmsim.intercept import channel

            nonlocal shrinks, wakes
            if not channel.available():
                return
            while time.monotonic() < stop:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(2)
                try:
                    s.connect(server.path)
                    s.sendall(wire.frame(wire.Msg.SHM))
                    _data, fds, _f, _a = socket.recv_fds(s, 64, 1)
                    if not fds:
                        continue
                    fd = fds[0]
                    try:
                        if not storm:
                            try:
                                os.ftruncate(fd, 0)
                            except PermissionError:
                                shrinks += 1
                            fcntl_.fcntl(fd, fcntl_.F_GET_SEALS)
                            continue
                        with mmap.mmap(fd, channel.SIZE) as shared:
                            until = min(stop, time.monotonic() + 0.5)
                            while time.monotonic() < until:
                                wake(shared, channel.C2S_SEQ)
                                wakes += 1
                    finally:
                        os.close(fd)
                except OSError:
                    pass
                finally:
                    s.close()

        def honest(until: float) -> list[float]:
            """Honest programs until ``until``: each round's time (3 processes x 4 threads)."""
            nonlocal runs, wrong
            rounds = []
            while time.monotonic() < until:
                began = time.perf_counter()
                procs = [
                    subprocess.Popen([str(torture), "threads", "4"], env=env, stdout=subprocess.PIPE, text=True)
                    for _ in range(3)
                ]
                for p in procs:
                    out = p.communicate()[0]
                    runs += 1
                    wrong += 0 if out.startswith("ok ") else 1
                rounds.append(time.perf_counter() - began)
            return rounds

        sys.path.insert(0, str(ROOT / "tests"))
        alone = honest(time.monotonic() + SOAK_SECONDS / 4)  # the honest clients' time without attackers
        stop = time.monotonic() + SOAK_SECONDS
        threads = [threading.Thread(target=attacker) for _ in range(2)]
        threads += [threading.Thread(target=channel_attacker, args=(storm,)) for storm in (False, True)]
        threads += [threading.Thread(target=stalled_client), threading.Thread(target=fd_hog)]
        for t in threads:
            t.start()
        attacked = honest(stop)
        for t in threads:
            t.join()
        served = next(server.calls)
    time.sleep(0.5)  # connection threads finish closing
    fds_after, rss_after = len(os.listdir("/proc/self/fd")), _rss_kib()
    note = (
        f"{served} calls, {runs} program runs, {wrong} wrong answers, {garbage} hostile clients, "
        f"{shrinks} memfd shrinks refused, {wakes} futex-storm wake-ups, {stalls} stalled clients, "
        f"{hogged} fd hogs refused at their share (EMFILE); an honest round (3 x 4 threads) "
        f"{fmt(statistics.median(alone))} alone, {fmt(statistics.median(attacked))} under attack; "
        f"RSS {rss_before // 1024} -> {rss_after // 1024} MiB; {fds_after - fds_before} fds leaked"
    )
    return Row(name, SOAK_SECONDS, "0 wrong, 0 fds leaked", wrong == 0 and fds_after == fds_before, note)


# -- 7. real QEMU --------------------------------------------------------------------------------

QEMU_HOST = "qemu-nested-hv-p10"
QEMU_TARGET = "<= 1.1x -accel tcg, same qemu-user"
# (what, QEMU's arguments with kvm's accelerator and CPU, and with TCG's): libvirt's probe, and a
# pseries machine to -S (the 4K-page host's HPT page size, as test_real_qemu says)
QEMU_STARTS = (
    ("libvirt's probe", ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel={accel}"],
     "kvm:tcg", "host"),
    ("pseries to -S", ["-machine", "pseries,accel={accel},cap-hpt-max-page-size=4096", "-cpu", "{cpu}", "-m", "512",
                       "-nodefaults", "-display", "none", "-S"], "kvm", "host"),
)  # fmt: skip


def qemu_args(args: list[str], accel: str, cpu: str) -> list[str]:
    """A QEMU_STARTS row's arguments with its accelerator and CPU, and QMP on stdio."""
    return [*(x.format(accel=accel, cpu=cpu) for x in args), "-qmp", "stdio"]


def qemu_rows(rounds: int = 3) -> list[Row]:
    """Debian's QEMU (kvmsim fetch-qemu's) under ``kvmsim run`` on a simulated POWER host, against
    the same QEMU with TCG (``-cpu power10`` for ``host``) under the same qemu-user with the same
    options and no kvmsim, in alternating rounds: what the simulated host costs QEMU's start."""
    from kvmsim.intercept.server import address_space_of, processor_of
    from kvmsim.lab.debian import Archive, FetchError
    from kvmsim.lab.qemu import fetch_sysroot
    from kvmsim.preload.runner import qemu_user_argv

    names = [f"QEMU {what} under kvmsim run --host {QEMU_HOST}" for what, *_ in QEMU_STARTS]
    try:
        sysroot = fetch_sysroot(Archive())
    except FetchError as exc:
        return [skipped(name, f"Debian's QEMU cannot be had: {exc}", QEMU_TARGET) for name in names]
    kernel = Kernel.from_profile(QEMU_HOST)
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # qemu_cpu's notice, if any
        user = qemu_user_argv(str(sysroot.qemu_user), str(sysroot.root), processor_of(kernel), address_space_of(kernel))
    qmp = "".join(json.dumps({"execute": c}) + "\n" for c in ("qmp_capabilities", "quit"))

    env = cached_bytecode_env()

    def start(argv: list[str]) -> Callable[[], float]:
        def round_() -> float:
            t = time.perf_counter()
            r = subprocess.run(argv, input=qmp, capture_output=True, text=True, timeout=300, check=False, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"{argv[-1]}: exit {r.returncode}: {r.stderr.strip()[-200:]}")
            return time.perf_counter() - t

        return round_

    qemu = [str(sysroot.qemu_system), "-L", str(sysroot.firmware)]
    run = [str(BIN / "kvmsim"), "run", "--host", QEMU_HOST, "--sysroot", str(sysroot.root), "--"]
    with attached_to(kernel, str(sysroot.root)) as attach:
        rows = qemu_attached_rows(attach, user, qemu, start, rounds)
    # the floor: what kvmsim run costs any POWER program (its start, the server, the shim), QEMU
    # --version's start under kvmsim run less the same under qemu-user alone
    version = [str(sysroot.qemu_system), "--version"]
    fixed, alone, _ = paired(start([*run, *version]), start([*user, *version]), rounds=rounds)
    floor_note = f"kvmsim run's own cost for a POWER program: {fixed - alone:.2f} s (QEMU --version)"
    rows.append(Row("floor: QEMU --version under kvmsim run, less under qemu-user alone", fixed - alone))
    for name, (_, args, accel, cpu) in zip(names, QEMU_STARTS, strict=True):
        simulated = [*run, *qemu, *qemu_args(args, accel, cpu)]
        tcg = [*user, *qemu, *qemu_args(args, "tcg", "power10")]
        try:
            seconds, floor, ratio = paired(start(simulated), start(tcg), rounds=rounds)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            rows.append(Row(name, None, QEMU_TARGET, None, f"FAILED: {exc}"))
            continue
        note = f"{ratio:.2f}x TCG's {floor:.2f} s" + (f"; {floor_note}" if ratio > 1.1 else "")
        rows.append(Row(name, seconds, QEMU_TARGET, ratio <= 1.1, note))
    return rows


@contextmanager
def attached_to(kernel: Kernel, sysroot: str) -> Iterator[Callable[[list[str]], list[str]]]:
    """A server of ``kernel`` with the host's files, as ``kvmsim serve`` runs it, and what runs a
    POWER command attached to it: the argv ``kvmsim run --server`` execs (qemu-user, its -E
    variables, the shim), so no interpreter starts with the command."""
    from kvmsim.intercept.command import host_view, run_directory
    from kvmsim.preload.runner import prepare

    with run_directory() as workdir:
        root = host_view(kernel, workdir.subdir("root"))
        with Server(kernel, workdir / "kvm.sock", root=root) as server:
            yield lambda command: prepare(host_answer(kernel, root), command, server.path, sysroot=sysroot)[0]


def qemu_attached_rows(
    attach: Callable[[list[str]], list[str]],
    user: list[str],
    qemu: list[str],
    start: Callable[[list[str]], Callable[[], float]],
    rounds: int,
) -> list[Row]:
    """The floor of each QEMU start: the same QEMU attached to a running server (qemu-user and
    the shim, no interpreter before it) against TCG, in alternating rounds: what the simulated
    host costs QEMU itself, which no change to kvmsim run's own start can take below."""
    rows = []
    for what, args, accel, cpu in QEMU_STARTS:
        simulated = attach([*qemu, *qemu_args(args, accel, cpu)])
        tcg = [*user, *qemu, *qemu_args(args, "tcg", "power10")]
        try:
            seconds, floor, ratio = paired(start(simulated), start(tcg), rounds=rounds)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            rows.append(Row(f"floor: QEMU {what} attached to a running server", None, note=f"FAILED: {exc}"))
            continue
        note = f"{ratio:.2f}x TCG's {floor:.2f} s: qemu-user and the shim, no interpreter"
        rows.append(Row(f"floor: QEMU {what} attached to a running server", seconds, note=note))
    return rows


def qemu_user_call_rows(host: str = HOST) -> list[Row]:
    """A call through the shim from a ppc64le program under qemu-user: the shared channel (this
    machine's byte order) against the socket (a big-endian program's, here forced with
    KVMSIM_CHANNEL=socket), in alternating rounds."""
    from kvmsim.intercept.command import FOREIGN
    from kvmsim.preload.runner import prepare

    names = ("shim per call under qemu-user, shared channel (ppc64le)", "shim per call under qemu-user, socket")
    with serving(host) as (kernel, server):
        caps = ["caps", "1000", hex(kernel.KVM_CREATE_VM), hex(kernel.KVM_PPC_GET_COMPAT_CAPS or 0)]
        try:
            loop = compile_c([ROOT / "benchmarks" / "ioctl_loop.c"], cc=f"{FOREIGN['ppc64le'].triplet}-gcc")
            with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # qemu_cpu's notice, if any
                argv, env = prepare(host_answer(kernel), [str(loop), *caps], server.path)
        except BuildError as exc:  # no cross compiler, or no qemu-user
            return [skipped(name, f"no ppc64le program under qemu-user: {exc}") for name in names]
        shared, sock, ratio = paired(
            argv_round(argv, env), argv_round(argv, env | {"KVMSIM_CHANNEL": "socket"}), rounds=5
        )
    return [
        Row(names[0], shared, note=f"{1 / ratio:.1f}x faster than the socket (alternating rounds)"),
        Row(names[1], sock, note="a ppc64 program's channel"),
    ]


# -- the run ------------------------------------------------------------------------------------


def collect(*, lab: bool) -> list[Row]:
    try:
        shim = build_shim()
        loop = compile_c([ROOT / "benchmarks" / "ioctl_loop.c"])
    except BuildError as exc:
        sys.exit(f"kvmsim-bench: {exc}")
    um = fetch_umockdev()
    shim_part, shim_check = shim_rows(loop, shim)
    umock_row, umock_round = umockdev_ioctl_row(um, loop, shim_check)
    return [
        *fixture_rows(),
        *shim_part,
        *qemu_user_call_rows(),
        umock_row,
        *seccomp_rows(loop, shim_check, umock_round),
        *program_rows(um, shim),
        *start_rows(),
        lab_row(lab),
        *qemu_rows(),
        *regression_rows(),
        soak_row(shim),
    ]


def machine() -> str:
    model = ""
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    return (
        f"{platform.machine()}, {os.cpu_count()} cpus ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def render_markdown(data: dict[str, Any]) -> str:
    """docs/benchmarks.md's table, from bench.json's contents (tools/docs_hooks.py calls it)."""
    rows = data["rows"]
    lines = [
        f"Last run: {data['date']} on {data['machine']}.",
        "",
        "| path | median | target | | why / floor |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "skipped" if r["seconds"] is None else {True: "OK", False: "MISSED", None: ""}[r["ok"]]
        note = r["note"].replace("|", "\\|")
        lines.append(f"| {r['name']} | {fmt(r['seconds'])} | {r['target']} | {verdict} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvmsim-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="bench.json", metavar="PATH", help="where to write the results")
    p.add_argument("--no-lab", action="store_true", help="skip the real-kernel lab row (it boots 11 kernels)")
    args = p.parse_args(argv)
    rows = collect(lab=not args.no_lab)
    data: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "rows": [{**attrs.asdict(r), "verdict": r.verdict} for r in rows],
    }
    print(f"kvmsim bench on {data['machine']}")
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"{r.name:<{width}}  {fmt(r.seconds):>10}  {r.target:<30} {r.verdict:<7} {r.note}".rstrip())
    Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    print(f"(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
