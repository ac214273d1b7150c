"""Concurrency: threads on one kernel, and processes through one server; every answer
right, none lost or mixed up, no descriptor leaked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from kvmsim import Kernel
from kvmsim.intercept.build import compile_c
from kvmsim.intercept.server import Server, host_answer
from kvmsim.preload.library import build_shim
from kvmsim.preload.runner import shim_environment

ROOT = Path(__file__).resolve().parent.parent
P10_P11 = 0x3000000000000000


@pytest.mark.parametrize("abi", ["v4", "v5"])
def test_threads_on_one_kernel(abi: str) -> None:
    k = Kernel.from_profile("powervm-p11", abi=abi)
    dev = k.open()
    vm = int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
    errors: list[str] = []

    def worker(n: int) -> None:
        own_vm = int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
        for i in range(300):
            fd = vm if i % 2 else own_vm
            size = 24 + 8 * (i % 3 == 0 and abi == "v5")  # some calls take the E2BIG path
            buf = bytearray(k.rev.layout.pack(k.arch.byteorder, size=size).ljust(size, b"\0"))
            addr = k.memory.map(size, data=bytes(buf)) if i % 5 == 0 else None
            try:
                k.ioctl(fd, k.KVM_PPC_GET_COMPAT_CAPS, addr if addr is not None else buf)
                data = k.memory.read(addr, 24) if addr is not None else bytes(buf[:24])
                got = k.rev.layout.unpack(k.arch.byteorder, data)["compat_capabilities"]
                if size != 24 or got != P10_P11:
                    errors.append(f"thread {n} call {i}: {got:#x} for size {size}")
            except OSError as exc:
                if not (size > 24 and exc.errno == 7):  # E2BIG for the 32-byte calls
                    errors.append(f"thread {n} call {i}: {exc}")
            finally:
                if addr is not None:
                    k.memory.unmap(addr)
        k.close(own_vm)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert k.fds() == {dev: "/dev/kvm", vm: "anon_inode:kvm-vm"}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler here")
def test_processes_through_one_server(tmp_path: Path) -> None:
    shim, client = build_shim(), compile_c([ROOT / "examples" / "c" / "kvm_compat_caps.c"])
    kernel = Kernel.from_profile("kvm-l1-p11")
    before = _fds()
    server = Server(kernel, tmp_path / "kvm.sock")
    server.start()
    try:
        env = shim_environment(host_answer(kernel), server.path, shim)
        procs = [
            subprocess.Popen([str(client), "--repeat", "50"], env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(12)
        ]
        outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        server.stop()
    assert [o["modes"] for o in outs] == [["power9", "power10", "power11"]] * 12
    assert all(p.returncode == 0 for p in procs)
    for t in server.threads:
        t.join(timeout=10)
    assert _fds() == before  # every connection's socket closed, the listener too
