"""``make bench``: each path against a real-syscall baseline, in one run on one machine.

Prints a table of medians and ratios to the baseline, and writes the same as JSON
(``bench.json``, or ``--json PATH``).  Benchmarks, not tests: nothing here fails on a slow
machine; ``--check`` only reports which targets hold."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from kvmsim import Kernel
from kvmsim.profile import names as profile_names
from kvmsim.uapi import REVISIONS


@attrs.frozen
class Row:
    name: str
    seconds: float  # median per operation
    target: float | None = None  # the ratio to the baseline it should stay under
    note: str = ""


def median_time(fn: Callable[[], object], *, number: int, repeat: int = 7) -> float:
    """The median, over ``repeat`` rounds, of the time per call of ``number`` calls."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number)
    return statistics.median(rounds)


def baseline() -> tuple[Row, Callable[[], None]]:
    """A real ioctl from Python: KVM_CHECK_EXTENSION on /dev/kvm, else FIONREAD on a pipe."""
    arg: int | bytearray
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        request, arg, note = 0xAE03, 3, "KVM_CHECK_EXTENSION on this machine's /dev/kvm"
    except OSError:
        fd, _ = os.pipe()
        request, arg, note = 0x541B, bytearray(4), "FIONREAD on a pipe (no usable /dev/kvm)"

    def call() -> None:
        fcntl.ioctl(fd, request, arg)

    return Row("baseline: a real ioctl", median_time(call, number=20000), note=note), call


def simulated_ioctl(abi: str) -> Row:
    k = Kernel.from_profile("powervm-p11", abi=abi)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    buf = bytearray(k.rev.layout.pack("little", size=24))
    req = k.KVM_PPC_GET_COMPAT_CAPS
    assert req is not None
    return Row(f"Kernel.ioctl compat caps ({abi})", median_time(lambda: k.ioctl(vm, req, buf), number=20000), 2.0)


def client_rows() -> list[Row]:
    from kvmcompat import SimDevice, query
    from kvmcompat.compat import Session

    k = Kernel.from_profile("powervm-p11")
    device = SimDevice(k)
    session = Session(device).__enter__()
    rev = REVISIONS["linux-7.3"]
    return [
        Row(
            "client ioctl on an open VM fd (linux-7.3)",
            median_time(lambda: session.get_compat_caps(rev, 24), number=20000),
            3.0,
        ),
        Row("client full query (open..close, linux-7.3)", median_time(lambda: query(device), number=5000)),
    ]


def fixture_rows() -> list[Row]:
    from kvmsim.pytest_plugin import simulated_host

    with simulated_host("powervm-p11", "v5") as host:
        k = host.kernel
        dev = os.open("/dev/kvm", os.O_RDWR)
        vm = fcntl.ioctl(dev, k.KVM_CREATE_VM, 0)
        buf = bytearray(k.rev.layout.pack("little", size=24))
        req = k.KVM_PPC_GET_COMPAT_CAPS
        assert req is not None
        under = median_time(lambda: fcntl.ioctl(vm, req, buf), number=10000)

    def setup() -> None:
        with simulated_host("powervm-p11", "v5"):
            pass

    return [
        Row("fcntl.ioctl under the kvm_host fixture (v5)", under),
        Row("kvm_host fixture set-up + tear-down", median_time(setup, number=20, repeat=5)),
    ]


def fixture_matrix_row(cases: int = 200) -> Row:
    hosts = [(h, r) for h in profile_names() for r in REVISIONS]
    params = [hosts[i % len(hosts)] for i in range(cases)]
    test = textwrap.dedent(
        f"""
        import os, pytest

        @pytest.mark.parametrize("kvm_host", {params!r}, indirect=True)
        def test_case(kvm_host):
            assert os.path.exists("/proc/cpuinfo")
        """
    )
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_matrix.py").write_text(test)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp], capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
    ok = proc.returncode == 0
    return Row(f"pytest: {cases}-case kvm_host matrix (whole run)", elapsed, note="" if ok else "FAILED")


def shim_rows() -> list[Row]:
    """The same ioctl through the preload shim and `kvmsim serve`'s protocol."""
    from kvmsim.build import BuildError, build_shim, compile_c
    from kvmsim.runner import ShimHost, shim_environment
    from kvmsim.server import Server

    try:
        shim = build_shim()
        c_client = compile_c([Path(__file__).resolve().parent.parent / "client" / "c" / "kvm_compat_caps.c"])
    except BuildError as exc:
        return [Row("preload shim", float("nan"), note=f"not measured: {exc}")]
    kernel = Kernel.from_profile("powervm-p11")
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(kernel, os.path.join(tmp, "kvm.sock"))
        server.start()
        env = shim_environment(ShimHost.of(kernel), server.path, shim)
        try:
            out = subprocess.run([str(c_client), "--repeat", "2000"], env=env, capture_output=True, text=True)
            c_ns = json.loads(out.stdout)["ns_per_ioctl"]
            code = textwrap.dedent(
                """
                import fcntl, os, time
                dev = os.open("/dev/kvm", os.O_RDWR)
                vm = fcntl.ioctl(dev, 0x2000AE01, 0)
                buf = bytearray((24).to_bytes(8, "little") + bytes(16))
                t = time.perf_counter()
                for _ in range(2000):
                    fcntl.ioctl(vm, 0x2000AEB8, buf)
                print((time.perf_counter() - t) / 2000)
                """
            )
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            py_s = float(out.stdout)
        finally:
            server.stop()
    return [
        Row("preload shim: C client ioctl (linux-7.3)", c_ns / 1e9, 20.0),
        Row("preload shim: Python fcntl.ioctl (linux-7.3)", py_s, 20.0),
    ]


def ipc_floor_row() -> Row:
    """What any out-of-process path pays: a 40-byte ping-pong between two processes."""
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
    return Row("floor: a socketpair round trip between two processes", seconds, note="the shim needs one a call")


def cold_start_rows() -> list[Row]:
    def run(*cmd: str) -> Callable[[], object]:
        return lambda: subprocess.run(cmd, capture_output=True, check=False)

    bare = median_time(run(sys.executable, "-c", "pass"), number=3, repeat=5)
    attrs_import = median_time(run(sys.executable, "-c", "import attrs"), number=3, repeat=5)
    script = Path(sys.executable).parent / "kvm-compat-caps"
    cli = median_time(run(str(script), "--sim", "powervm-p11", "--json"), number=3, repeat=5)
    device = median_time(run(str(script), "--device", "/dev/kvm", "--json"), number=3, repeat=5)
    return [
        Row("bare interpreter start", bare, note="reference for the CLI"),
        Row("floor: interpreter start + import attrs", attrs_import, note=f"{attrs_import / bare:.1f}x bare start"),
        Row("CLI cold start: kvm-compat-caps --sim powervm-p11 --json", cli, note=f"{cli / bare:.1f}x bare start"),
        Row(
            "CLI cold start: kvm-compat-caps --device /dev/kvm --json (target <= 2x bare)",
            device,
            note=f"{device / bare:.1f}x bare start; loads no profile or kernel model",
        ),
    ]


def matrix_row() -> Row:
    from kvmsim.cli import observe
    from kvmsim.profile import load

    hosts = [load(n) for n in profile_names()]

    def whole() -> None:
        for host in hosts:
            for rev in REVISIONS.values():
                observe(host, rev)

    return Row(f"whole matrix ({len(hosts)} profiles x {len(REVISIONS)} revisions)", median_time(whole, number=5))


SOAK_SECONDS = 8.0


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def soak_row() -> Row:
    """Processes x threads hammering one server with good calls (every answer checked by
    tests/data/shim_torture.c) while raw clients send garbage, truncated and stalled frames."""
    import logging
    import random

    from kvmsim import wire
    from kvmsim.build import BuildError, build_shim, compile_c
    from kvmsim.runner import ShimHost, shim_environment
    from kvmsim.server import Server

    logging.getLogger("kvmsim.serve").setLevel(logging.ERROR)  # thousands of hostile clients, by design
    root = Path(__file__).resolve().parent.parent
    try:
        shim = build_shim()
        torture = compile_c([root / "tests" / "data" / "shim_torture.c"], flags=["-pthread"])
    except BuildError as exc:
        return Row("soak", float("nan"), note=f"not measured: {exc}")
    kernel = Kernel.from_profile("powervm-p11")
    fds_before, rss_before = len(os.listdir("/proc/self/fd")), _rss_kib()
    wrong = runs = garbage = 0
    with tempfile.TemporaryDirectory() as tmp, Server(kernel, os.path.join(tmp, "kvm.sock")) as server:
        env = shim_environment(ShimHost.of(kernel), server.path, shim)
        stop = time.monotonic() + SOAK_SECONDS
        rng = random.Random(7)

        def attacker() -> None:
            nonlocal garbage
            while time.monotonic() < stop:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(2)
                try:
                    s.connect(server.path)
                    kind = rng.randrange(3)
                    if kind == 0:
                        s.sendall(rng.randbytes(rng.randrange(1, 200)))
                    elif kind == 1:  # a header announcing more than it sends
                        s.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.Msg.IOCTL, 16) + b"x")
                    else:  # a well-formed call on a bad fd / NULL
                        s.sendall(wire.frame(wire.Msg.IOCTL, wire.IOCTL.pack(rng.randrange(-5, 50), 0x2000AEB8, 0)))
                    garbage += 1
                except OSError:
                    pass
                finally:
                    s.close()

        threads = [threading.Thread(target=attacker) for _ in range(2)]
        for t in threads:
            t.start()
        while time.monotonic() < stop:
            procs = [
                subprocess.Popen([str(torture), "threads", "4"], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(3)
            ]
            for p in procs:
                out = p.communicate()[0]
                runs += 1
                wrong += 0 if out.startswith("ok ") else 1
        for t in threads:
            t.join()
        served = next(server.calls)
    time.sleep(0.5)  # connection threads finish closing
    fds_after, rss_after = len(os.listdir("/proc/self/fd")), _rss_kib()
    note = (
        f"{served} calls served, {runs} program runs with {wrong} wrong answers, {garbage} hostile clients; "
        f"server RSS {rss_before // 1024} -> {rss_after // 1024} MiB; fds leaked {fds_after - fds_before}"
    )
    return Row(
        f"soak: 3 processes x 4 threads + 2 attackers, {SOAK_SECONDS:.0f} s (wrong must be 0)", SOAK_SECONDS, note=note
    )


def collect() -> list[Row]:
    base, _ = baseline()
    return [
        base,
        *(simulated_ioctl(name) for name, rev in REVISIONS.items() if rev.abi is not None),
        *client_rows(),
        *fixture_rows(),
        fixture_matrix_row(),
        ipc_floor_row(),
        *shim_rows(),
        *cold_start_rows(),
        matrix_row(),
        soak_row(),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvmsim-bench", description=__doc__)
    p.add_argument("--json", default="bench.json", metavar="PATH", help="where to write the results")
    args = p.parse_args(argv)
    rows = collect()
    base = rows[0].seconds
    rows_by_name = {r.name: r.seconds for r in rows}
    machine = f"{os.uname().machine}, {os.cpu_count()} cpus, Python {sys.version.split()[0]}"
    print(f"kvmsim bench on {machine}")
    print(f"{'path':<58} {'median':>12} {'ratio':>8}  target")
    out = []
    for row in rows:
        ratio = row.seconds / base
        target = f"<= {row.target:g}x {'ok' if ratio <= row.target else 'MISSED'}" if row.target else ""
        if row.name.startswith("CLI cold start"):
            target = (
                f"<= 3x bare start {'ok' if row.seconds <= 3 * rows_by_name['bare interpreter start'] else 'MISSED'}"
            )
        print(f"{row.name:<58} {row.seconds * 1e6:>10.2f}us {ratio:>7.1f}x  {target} {row.note}".rstrip())
        out.append({**attrs.asdict(row), "ratio": ratio})
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": out}, indent=2))
    print(f"(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
