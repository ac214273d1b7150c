"""Under `kvmsim run` a program sees the simulated host's files, as under the pytest plugin:
/dev/kvm (or its absence) for stat/access, /proc/device-tree, /proc/cpuinfo, /sys/module/kvm*;
and every spelling of /dev/kvm a program uses reaches the simulated device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kvmcompat import CompatError, DeviceTree, Options, query

from kvmsim import Kernel, SimDevice
from kvmsim.kernel import hostfs, profile

KVMSIM = Path(sys.executable).parent / "kvmsim"
CLIENT = Path(sys.executable).parent / "kvm-compat-caps"
pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler here")


def in_process(host: str) -> dict[str, object]:
    kernel = Kernel.from_profile(host)
    tree = DeviceTree(files=hostfs.files(kernel))
    try:
        result = query(SimDevice(kernel), Options(fallback=True, device_tree=tree)).to_json()
    except CompatError as exc:
        return {"error": exc.to_json()["kind"]}
    result.pop("device")
    return result


# One host for each way the answer goes (kernel error, ioctl, big-endian ioctl, no device,
# unsupported, the device-tree fallback, x86): the process boundary is one mechanism, and
# every profile's answer is already checked in-process by the behaviour table.
ONE_OF_EACH = [
    "kvm-l1-no-cpu-version", "powervm-p11", "kvm-l1-p9-be", "no-kvm", "powernv-p10", "pseries-kvm-pr", "x86_64",
]  # fmt: skip


def test_one_of_each_covers_every_kind_of_answer() -> None:
    kinds = {(r.get("error") or r.get("source"), r.get("abi")) for r in map(in_process, profile.names())}
    assert {(r.get("error") or r.get("source"), r.get("abi")) for r in map(in_process, ONE_OF_EACH)} == kinds


@pytest.mark.parametrize("host", ONE_OF_EACH)
def test_the_fallback_answers_the_same_under_run(host: str) -> None:
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", host, "--", str(CLIENT), "--fallback", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = json.loads(r.stdout)
    got = {"error": out["error"]["kind"]} if "error" in out else {k: v for k, v in out.items() if k != "device"}
    assert got == in_process(host)


FILES = """
import os, stat, fcntl, json
out = {"exists": os.path.exists("/dev/kvm"), "access": os.access("/dev//kvm", os.R_OK | os.W_OK)}
if out["exists"]:
    st = os.stat("/dev/kvm")
    out["stat"] = [stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev), oct(st.st_mode & 0o777)]
out["cpus"] = sorted(os.listdir("/proc/device-tree/cpus"))
out["cpuinfo"] = open("/proc/cpuinfo").read()
out["modules"] = [m for m in ("kvm", "kvm_hv", "kvm_pr") if os.path.isdir("/sys/module/" + m)]
print(json.dumps(out))
"""


@pytest.mark.parametrize("host", ["powervm-p11", "no-kvm", "powervm-hcall-unavailable", "kvm-l1-p9-be"])
def test_the_host_files_are_the_simulated_hosts(host: str) -> None:
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", host, "--", sys.executable, "-c", FILES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = json.loads(r.stdout)
    kernel = Kernel.from_profile(host)
    files = hostfs.files(kernel)
    assert out["exists"] == out["access"] == kernel.kvm.loaded
    if kernel.kvm.loaded:
        assert out["stat"] == [True, 10, 232, "0o660"]
    assert out["cpus"] == sorted({p.split("/")[4] for p in files if p.startswith("/proc/device-tree/cpus/")})
    assert out["cpuinfo"] == files["/proc/cpuinfo"].decode()
    assert out["modules"] == kernel.kvm.loaded_modules  # (a listing of /sys/module itself is this machine's)


SPELLINGS = """
import os, fcntl
API = 0x2000AE00
def api(fd):
    try:
        return fcntl.ioctl(fd, API, 0)
    finally:
        os.close(fd)
out = {}
for p in ("//dev/kvm", "/dev/../dev/kvm", "/dev/./kvm", "/dev//kvm"):
    out[p] = api(os.open(p, os.O_RDWR))
d = os.open("/dev", os.O_RDONLY)
out["dirfd"] = api(os.open("kvm", os.O_RDWR, dir_fd=d))
os.symlink("/dev/kvm", LINK)
out["symlink"] = api(os.open(LINK, os.O_RDWR))
os.chdir("/dev")
out["relative"] = api(os.open("kvm", os.O_RDWR))
with open("/dev/kvm", "rb", buffering=0) as f:
    out["open()"] = fcntl.ioctl(f, API, 0)
for flags, name in ((os.O_DIRECTORY, "O_DIRECTORY"), (os.O_CREAT | os.O_EXCL, "O_CREAT|O_EXCL")):
    try:
        os.open("/dev/kvm", flags | os.O_RDWR)
    except OSError as exc:
        out[name] = exc.errno
fd = os.open("/dev/kvm", os.O_RDWR)
os.set_inheritable(fd, True)  # FIONCLEX on the fd, not a KVM ioctl
out["inheritable"] = os.get_inheritable(fd)
print(out)
"""


def test_every_spelling_of_dev_kvm_reaches_the_simulated_device(tmp_path: Path) -> None:
    code = SPELLINGS.replace("LINK", repr(str(tmp_path / "kvm-link")))
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = eval(r.stdout)  # a dict literal the program printed
    assert out == {
        "//dev/kvm": 12, "/dev/../dev/kvm": 12, "/dev/./kvm": 12, "/dev//kvm": 12, "dirfd": 12, "symlink": 12,
        "relative": 12, "open()": 12, "O_DIRECTORY": 20, "O_CREAT|O_EXCL": 17, "inheritable": True,
    }, r.stderr  # fmt: skip


@pytest.mark.skipif(shutil.which("stat") is None or shutil.which("ls") is None, reason="no coreutils here")
def test_coreutils_see_it_too() -> None:
    """stat(1) uses statx(2); ls and stat load libselinux, whose constructor calls fopen()
    before the shim's own constructor has run."""
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--", "stat", "-c", "%F %t:%T %a", "/dev/kvm"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.stdout.strip() == "character special file a:e8 660", r.stderr
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--", "ls", "/proc/device-tree/cpus"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.stdout.split() == ["#address-cells", "#size-cells", "PowerPC,POWER11@0"]
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "no-kvm", "--", "stat", "/dev/kvm"], capture_output=True, text=True
    )
    assert r.returncode == 1 and "No such file or directory" in r.stderr


def test_one_writer_of_the_hosts_files_never_follows_a_planted_link(tmp_path: Path) -> None:
    """kvmsim.kernel.hostfs.write_tree, used by kvmsim run/serve and the plugin alike: what is
    written is hostfs.files, and a symlink already where a file goes is refused, not followed."""
    import posix

    kernel = Kernel.from_profile("powervm-p11")
    files = hostfs.files(kernel)
    root = posix.open(str(tmp_path), posix.O_RDONLY | posix.O_DIRECTORY)
    try:
        hostfs.write_tree(files, root)
    finally:
        posix.close(root)
    assert all((tmp_path / p.lstrip("/")).read_bytes() == data for p, data in files.items())
    other = tmp_path / "again"
    other.mkdir()
    (other / "proc").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("mine")
    (other / "proc" / "cpuinfo").symlink_to(victim)
    root = posix.open(str(other), posix.O_RDONLY | posix.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            hostfs.write_tree({"/proc/cpuinfo": b"x"}, root)
    finally:
        posix.close(root)
    assert victim.read_text() == "mine"


@pytest.mark.parametrize(
    ("host", "clock", "dec_bits", "dcache"),
    [
        ("powervm-p11", 2_750_000_000, 56, 0x8000),
        ("kvm-l1-p9", None, 56, 0x8000),
        ("kvm-l1-p8-compat", None, None, 0x8000),  # a POWER9 in POWER8 mode: its caches, no large decrementer
    ],
)
def test_a_cpu_node_has_what_qemu_reads(host: str, clock: int | None, dec_bits: int | None, dcache: int) -> None:
    """clock-frequency (else QEMU says "Unknown host!"), the timebase, ibm,dec-bits on ISA 3.0,
    the L1 caches, the thread ids: on every cpu node."""
    kernel = Kernel.from_profile(host)
    files = hostfs.files(kernel)
    for node in kernel.host.cpu_nodes:
        base = f"/proc/device-tree/cpus/{node.name}"

        def cell(prop: str, base: str = base) -> int | None:
            data = files.get(f"{base}/{prop}")
            return None if data is None else int.from_bytes(data, "big")

        assert cell("clock-frequency") == (clock if clock is not None else kernel.host.cpu.clock_mhz * 1_000_000)
        assert cell("timebase-frequency") == 512_000_000
        assert cell("ibm,dec-bits") == dec_bits
        assert cell("d-cache-size") == dcache and cell("i-cache-block-size") == 128
        assert cell("ibm,ppc-interrupt-server#s") == node.reg
