"""Real POWER binaries: the C client cross-built for ppc64le and ppc64 against the targets'
own <linux/kvm.h>, run under qemu-user with a cross-built shim, answers as the native
Python client does, for every POWER profile and both revisions."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REVS, client_answer, printed_answer

from kvmsim import Kernel, uapi
from kvmsim.intercept.build import compile_c
from kvmsim.intercept.command import FOREIGN, elf_arch
from kvmsim.intercept.server import Server, host_answer
from kvmsim.kernel import profile
from kvmsim.preload.runner import prepare, qemu_binary

ROOT = Path(__file__).resolve().parent.parent
C_CLIENT = ROOT / "examples" / "c" / "kvm_compat_caps.c"


def missing(arch: str) -> str | None:
    f = FOREIGN[arch]
    tools = [f"{f.triplet}-gcc", f"{f.qemu}-static"]
    absent = [t for t in tools if shutil.which(t) is None and shutil.which(t.removesuffix("-static")) is None]
    if absent or not Path(f.sysroot, "include", "linux", "kvm.h").exists():
        what = ", ".join(absent) or f"{f.sysroot}/include/linux/kvm.h"
        return f"{arch} cross tools missing ({what}); .ci/run installs them with apt-get"
    return None


def _with_tools(arch: str, *rest: str) -> object:
    return pytest.param(arch, *rest, marks=pytest.mark.skipif(missing(arch) is not None, reason=str(missing(arch))))


ARCHES = [_with_tools(a) for a in FOREIGN]
KVMSIM = Path(sys.executable).parent / "kvmsim"
# every POWER host with the binary of its own byte order
CASES = [_with_tools(profile.load(h).arch.name, h) for h in profile.names() if profile.load(h).arch.is_powerpc]


@pytest.fixture(scope="module")
def binaries() -> dict[str, Path]:
    return {a: compile_c([C_CLIENT], cc=f"{FOREIGN[a].triplet}-gcc") for a in FOREIGN if missing(a) is None}


def run_foreign(host: str, abi: str, binary: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    kernel = Kernel.from_profile(host, abi=abi)
    with Server(kernel, tmp / "kvm.sock") as server:
        argv, env = prepare(host_answer(kernel), [str(binary), *args], server.path)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("arch", ARCHES)
def test_cross_built_binaries_are_power_elf(arch: str, binaries: dict[str, Path]) -> None:
    assert elf_arch(str(binaries[arch])) == arch


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize(("arch", "host"), CASES)
def test_power_binary_answers_as_the_native_client(
    arch: str, host: str, abi: str, binaries: dict[str, Path], tmp_path: Path
) -> None:
    code, want = client_answer(host, abi)
    r = run_foreign(host, abi, binaries[arch], tmp_path)
    assert r.returncode == code, r.stderr
    assert printed_answer(r.stdout) == want


HOST_OF = {"ppc64le": "powervm-p11", "ppc64": "powervm-p11-be"}


@pytest.mark.parametrize("abi", [r for r in REVS if r != "none"])
@pytest.mark.parametrize("pointer", ["--null", "--wild"])
@pytest.mark.parametrize("arch", ARCHES)
def test_bad_pointers_are_efault_under_qemu(
    arch: str, pointer: str, abi: str, binaries: dict[str, Path], tmp_path: Path
) -> None:
    r = run_foreign(HOST_OF[arch], abi, binaries[arch], tmp_path, pointer, "--abi", abi)
    assert r.returncode == 1, r.stderr
    assert printed_answer(r.stdout) == {"kind": "kernel", "name": "EFAULT"}


@pytest.mark.parametrize("arch", ARCHES)
def test_v5_e2big_retry_under_qemu(arch: str, binaries: dict[str, Path], tmp_path: Path) -> None:
    r = run_foreign(HOST_OF[arch], "v5", binaries[arch], tmp_path, "--struct-size", "32", "--abi", "v5")
    assert printed_answer(r.stdout)["modes"] == ["power10", "power11"]


# the shared-memory channel's words are each side's byte order: a ppc64le program's are this
# machine's, a ppc64 one's are not (kvmsim.intercept.channel)
CHANNEL_OF = {"ppc64le": "shared", "ppc64": "socket"}


@pytest.mark.parametrize("arch", ARCHES)
def test_a_power_program_of_this_machines_byte_order_gets_the_shared_channel(
    arch: str, binaries: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under qemu-user the shim's calls travel through the shared memory where the program's byte
    order is this machine's (and answer the same: the other tests here run on it too); a
    big-endian program's stay on the socket."""
    if sys.byteorder != "little":
        pytest.skip("the CHANNEL_OF table is this x86_64 machine's")
    with caplog.at_level(logging.DEBUG, logger="kvmsim.serve"):
        r = run_foreign(HOST_OF[arch], "linux-7.3", binaries[arch], tmp_path)
    assert r.returncode == 0, r.stderr
    assert printed_answer(r.stdout)["modes"] == ["power10", "power11"]
    shared = any("on the shared-memory channel" in m for m in caplog.messages)
    assert ("shared" if shared else "socket") == CHANNEL_OF[arch]


@pytest.mark.parametrize("mode", ["fork", "rawfork", "clone", "vfork", "vfork-closefrom", "vfork-loop"])
@pytest.mark.parametrize("arch", ARCHES)
def test_children_under_qemu_user_never_cross_answers(arch: str, mode: str) -> None:
    """tests/test_shim_processes.py's forks under qemu-user, on each byte order's channel
    (CHANNEL_OF): 2 threads in the parent and 2 in the child, every answer checked.  The shared
    channel there is the guest's translated atomics and qemu-user's futexes, and its fork."""
    forks = compile_c([ROOT / "tests" / "data" / "forks.c"], cc=f"{FOREIGN[arch].triplet}-gcc", flags=["-pthread"])
    calls = 5_000 if mode in ("fork", "rawfork", "clone") else 1_000  # a vfork child only closes fds
    r = subprocess.run([str(KVMSIM), "run", "--host", HOST_OF[arch], "--", str(forks), mode, str(calls)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (r.returncode, r.stdout.strip()) == (0, f"ok calls={2 * calls} crossed=0"), r.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_byte_order_mismatch_is_a_clear_error(arch: str, binaries: dict[str, Path]) -> None:
    other = HOST_OF["ppc64" if arch == "ppc64le" else "ppc64le"]
    exe = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run([str(exe), "run", "--host", other, "--", str(binaries[arch])], capture_output=True, text=True)
    assert r.returncode == 2
    assert "byte orders differ" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("arch", ARCHES)
def test_kvmsim_run_arch_end_to_end(arch: str, binaries: dict[str, Path]) -> None:
    exe = Path(sys.executable).parent / "kvmsim"
    host = HOST_OF[arch]
    r = subprocess.run(
        [str(exe), "run", "--arch", arch, "--host", host, "--", str(binaries[arch])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["modes"] == ["power10", "power11"]


@pytest.mark.parametrize("arch", ARCHES)
def test_the_real_powerpc_headers_encode_the_reference_numbers(arch: str, binaries: dict[str, Path]) -> None:
    # built for powerpc, the client takes KVM_* from <linux/kvm.h> and _IOR/_IO from <linux/ioctl.h>
    f = FOREIGN[arch]
    r = subprocess.run(
        [qemu_binary(f), "-L", f.sysroot, str(binaries[arch]), "--numbers"], capture_output=True, text=True
    )
    ppc = uapi.ARCHES[arch]
    assert json.loads(r.stdout) == {
        "KVM_GET_API_VERSION": ppc.kvm_get_api_version(),
        "KVM_CREATE_VM": ppc.kvm_create_vm(),
        "KVM_CHECK_EXTENSION": 0x2000AE03,
        "linux-7.3": 0x2000AEB8,
        "v4": 0x4018AEE4,
        "v5": 0x2000AEE4,
    }


HOSTFILES = ROOT / "tests" / "data" / "hostfiles.c"


@pytest.mark.parametrize("arch", ARCHES)
def test_a_power_program_sees_the_hosts_files_through_qemu_users_sysroot(arch: str) -> None:
    """qemu-user's -L maps "/" into its sysroot, which has no /proc: the shim opens a directory
    just below the root by its absolute name, as the program's own call would, so
    /proc/cpuinfo and /proc/device-tree are the simulated host's (they were this machine's)."""
    from kvmsim.kernel import hostfs

    exe = compile_c([HOSTFILES], cc=f"{FOREIGN[arch].triplet}-gcc", flags=["-Wno-unused-parameter"])
    host = HOST_OF[arch]
    kernel = Kernel.from_profile(host)
    kvmsim = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run([str(kvmsim), "run", "--host", host, "--", str(exe), hex(kernel.KVM_CREATE_VM)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = {k: v for k, _, v in (line.partition(" ") for line in r.stdout.splitlines())}
    files = hostfs.files(kernel)
    cpus = sorted({p.split("/")[4] for p in files if p.startswith("/proc/device-tree/cpus/")})
    assert r.returncode == 0, r.stderr
    assert lines["cpuinfo"] == files["/proc/cpuinfo"].decode().splitlines()[0]
    assert lines["cpus"] == " ".join(cpus) and lines["machine"] == arch


def test_qemu_user_runs_the_program_on_the_profiles_processor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu-user's -cpu: the model with the profile's PVR (so mfpvr, and QEMU's -cpu host, are the
    host's), else the generation's with a notice naming the PVR the program reads instead, else
    qemu-user's default CPU."""
    from kvmsim.preload.runner import qemu_cpu

    monkeypatch.setenv("KVMSIM_CACHE", str(tmp_path / "cache"))  # its listing kept there, not in the user's

    fake = tmp_path / "qemu-ppc64le"
    listing = (
        "PowerPC power9_v2.2     PVR 004e1202\n  power10_v2.0     PVR 00801200\n  power10 (alias for power10_v2.0)\n"
    )
    fake.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    fake.chmod(0o755)
    assert qemu_cpu(str(fake), 0x004E1202, "power9") == ("power9_v2.2", None)
    model, notice = qemu_cpu(str(fake), 0x00800200, "power10")
    assert model == "power10" and notice is not None and "reads power10's (0x00801200)" in notice
    model, notice = qemu_cpu(str(fake), 0x00821200, "power11")
    assert model is None and notice is not None and "qemu-user's default CPU" in notice


def test_qemu_users_cpu_list_is_asked_once_and_kept_privately(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-cpu help`` is asked once for a binary and kept in the private cache; a kept listing that
    others may write is not read (asked again), nor one of a binary that changed."""
    from kvmsim.preload.runner import cpu_listing

    monkeypatch.setenv("KVMSIM_CACHE", str(tmp_path / "cache"))
    count = tmp_path / "asked"
    fake = tmp_path / "qemu-ppc64le"
    fake.write_text(f"#!/bin/sh\necho x >> {count}\nprintf 'PowerPC power9_v2.2     PVR 004e1202\\n'\n")
    fake.chmod(0o755)

    def asked() -> int:
        return len(count.read_text().splitlines()) if count.exists() else 0

    assert "power9_v2.2" in cpu_listing(str(fake)) and asked() == 1
    assert "power9_v2.2" in cpu_listing(str(fake)) and asked() == 1  # kept
    (kept,) = (tmp_path / "cache").glob("qemu-cpus-*")
    kept.write_text("PowerPC planted     PVR 004e1202\n")
    kept.chmod(0o666)  # others may write it: not read
    assert "power9_v2.2" in cpu_listing(str(fake)) and asked() == 2
    fake.write_text(fake.read_text().replace("power9_v2.2", "power9_v2.3"))  # another binary now
    assert "power9_v2.3" in cpu_listing(str(fake)) and asked() == 3


@pytest.mark.parametrize("arch", ARCHES)
def test_a_sysroots_qemu_user_runs_only_if_trusted(arch: str, tmp_path: Path) -> None:
    """--sysroot's own qemu-user runs as the caller: one that others may write is refused (exit
    125, one line), never run."""
    exe = compile_c([HOSTFILES], cc=f"{FOREIGN[arch].triplet}-gcc", flags=["-Wno-unused-parameter"])
    planted = tmp_path / "usr" / "bin" / FOREIGN[arch].qemu
    planted.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    planted.write_text(f"#!/bin/sh\ntouch {marker}\n")
    planted.chmod(0o777)
    kvmsim = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run([str(kvmsim), "run", "--host", HOST_OF[arch], "--sysroot", str(tmp_path), "--", str(exe)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 125 and "writable by others: refusing to run it" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()


PAGESIZE_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d %ld\n", getpagesize(), sysconf(_SC_PAGESIZE)); return 0; }
"""
# a POWER program's view of its machine: its mfpvr (qemu-user's -cpu) and page size
MACHINE_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void)
{
	unsigned long pvr;
	__asm__ volatile("mfpvr %0" : "=r"(pvr));
	printf("%#010lx %d\n", pvr, getpagesize());
	return 0;
}
"""


@pytest.mark.parametrize(
    ("host", "page"), [("qemu-nested-hv-p10-64k", 65536), ("qemu-nested-hv-p10", 4096), ("powervm-p11", 65536)]
)
def test_a_power_program_is_told_its_hosts_page_size(host: str, page: int, tmp_path: Path) -> None:
    """qemu-user's auxv says this machine's 4K; getpagesize() and sysconf(_SC_PAGESIZE) say the
    simulated host kernel's (what QEMU sizes its HPT pages and VRMA from).  A native program
    under the same host keeps the real page size."""
    if missing("ppc64le") is not None:
        pytest.skip(str(missing("ppc64le")))
    src = tmp_path / "pagesize.c"
    src.write_text(PAGESIZE_C)
    exe = compile_c([src], cc="powerpc64le-linux-gnu-gcc")
    r = subprocess.run([str(KVMSIM), "run", "--host", host, "--", str(exe)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.split()) == (0, [str(page)] * 2), r.stderr
    native = compile_c([src])
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", host, "--", str(native)], capture_output=True, text=True, timeout=60
    )
    assert r.stdout.split() == [str(os.sysconf("SC_PAGESIZE"))] * 2, r.stderr


def test_run_server_runs_a_power_program_as_run_host_does(tmp_path: Path) -> None:
    """``kvmsim run --server S`` (a ``kvmsim serve`` of the host) gives a POWER program the
    processor and page size ``kvmsim run --host`` gives it (the server's HOST answer carries
    qemu-user's -cpu and -R), on a POWER9 4K host and a POWER10 64K one; and it honours
    ``--sysroot`` (an untrusted qemu-user there is refused, never run)."""
    if missing("ppc64le") is not None:
        pytest.skip(str(missing("ppc64le")))
    src = tmp_path / "machine.c"
    src.write_text(MACHINE_C)
    exe = str(compile_c([src], cc="powerpc64le-linux-gnu-gcc"))
    seen = {}
    for host, page in [("qemu-nested-hv-p9", "4096"), ("qemu-nested-hv-p10-64k", "65536")]:
        own = subprocess.run(
            [str(KVMSIM), "run", "--host", host, "--", exe], capture_output=True, text=True, timeout=60
        )
        assert own.returncode == 0 and own.stdout.split()[1] == page, own.stderr
        sock = tmp_path / f"{host}.sock"
        serve = subprocess.Popen(
            [str(KVMSIM), "serve", "--host", host, "--socket", str(sock)], stderr=subprocess.PIPE, text=True
        )
        try:
            assert serve.stderr is not None and " on " in serve.stderr.readline()  # listening
            run = [str(KVMSIM), "run", "--server", str(sock)]
            r = subprocess.run([*run, "--", exe], capture_output=True, text=True, timeout=60)
            assert (r.returncode, r.stdout, r.stderr) == (0, own.stdout, own.stderr)
            planted = tmp_path / host / "usr" / "bin" / "qemu-ppc64le"
            planted.parent.mkdir(parents=True)
            planted.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\n")
            planted.chmod(0o777)
            r = subprocess.run([*run, "--sysroot", str(tmp_path / host), "--", exe], capture_output=True, text=True)
            assert r.returncode == 125 and "writable by others: refusing to run it" in r.stderr
            assert not (tmp_path / "ran").exists()
        finally:
            serve.terminate()
            serve.wait(timeout=30)
        seen[host] = own.stdout.split()[0]
    assert seen["qemu-nested-hv-p9"] != seen["qemu-nested-hv-p10-64k"]  # each its profile's processor (or nearest)
