"""A simulated descriptor answers what the real device's does besides ioctl, under both
intercepts: fstat (/dev/kvm's character device, a VM's anon inode); fclose releases it; a
failed dup3 leaves it alone.  Under the preload shim read/write and their kin answer as the
device does too (EINVAL; ESPIPE for a VM fd's pread/pwrite), lseek 0, mmap ENODEV; under
seccomp they are the placeholder socket's own (docs/design.md "Choices": the filter would have to send
every read and write of the program to the supervisor).  Where this machine has a /dev/kvm,
the answers are compared with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_cc

from kvmsim.intercept.build import compile_c
from kvmsim.kernel.anon_inodes import FILE_OPS, SPAPR_TCE, VCPU_STATS, VM_STATS

ROOT = Path(__file__).resolve().parent.parent
KVMSIM = Path(sys.executable).with_name("kvmsim")
pytestmark = needs_cc
# what the kernel's file operations answer (anon_inodes.FILE_OPS), as fdops prints them
RW = [
    f"{kind} " + " ".join(f"{op}={FILE_OPS[kind][op]}" for op in ("read", "write", "pread", "pwrite", "lseek", "mmap"))
    for kind in ("dev", "vm")
]
# the placeholder's: a read is at its end at once (never a hang), a write is taken and dropped
SECCOMP_RW = [
    "dev read=ok write=ok pread=ESPIPE pwrite=ESPIPE lseek=-1 mmap=ENODEV",
    "vm read=ok write=ok pread=ESPIPE pwrite=ESPIPE lseek=-1 mmap=ENODEV",
]
INTERCEPTS = ["preload", "seccomp"]


@pytest.fixture(scope="module")
def fdops() -> Path:
    return compile_c([ROOT / "tests" / "data" / "fdops.c"])


def simulated(fdops: Path, *args: str, host: str = "powervm-p11", intercept: str = "preload") -> list[str]:
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", host, "--intercept", intercept, "--", str(fdops), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("host", ["powervm-p11", "x86_64"])
def test_read_write_lseek_mmap_answer_as_the_device_does(fdops: Path, host: str) -> None:
    assert simulated(fdops, "rw", host=host) == RW


def test_under_seccomp_read_and_write_are_the_placeholders(fdops: Path) -> None:
    assert simulated(fdops, "rw", intercept="seccomp") == SECCOMP_RW


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm here")
def test_the_same_as_this_machines_real_device(fdops: Path) -> None:
    real = subprocess.run([str(fdops), "rw"], capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert real == RW == simulated(fdops, "rw", host="x86_64")
    real_stat = subprocess.run([str(fdops), "fstat"], capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert real_stat[0].startswith("dev chr 10:232") and real_stat[1] == "vm anon_inode"


@pytest.mark.parametrize("intercept", INTERCEPTS)
def test_fstat_is_the_character_device_and_the_anon_inode(fdops: Path, intercept: str) -> None:
    assert simulated(fdops, "fstat", intercept=intercept) == ["dev chr 10:232 660", "vm anon_inode"]


@pytest.mark.parametrize("intercept", INTERCEPTS)
def test_fclose_releases_the_simulated_file(fdops: Path, tmp_path: Path, intercept: str) -> None:
    """5,000 fopen/fclose rounds (no EMFILE at 1,024), then a real file at the last stream's
    number answers FIONREAD itself (3 bytes), not the simulator."""
    three = tmp_path / "three"
    three.write_text("abc")
    assert simulated(fdops, "fclose", str(three), intercept=intercept) == ["same=1 fionread=ok 3"]


@pytest.mark.parametrize("intercept", INTERCEPTS)
def test_a_failed_dup3_leaves_the_target_as_it_was(fdops: Path, intercept: str) -> None:
    assert simulated(fdops, "dup3", intercept=intercept) == ["dup3=EINVAL vm=1 then=ok api=12"]


SHUTDOWN = """
import ctypes, errno, fcntl, os
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/dev/kvm", os.O_RDWR)
r = libc.shutdown(fd, 2)
print(r, errno.errorcode[ctypes.get_errno()], fcntl.ioctl(fd, 0x2000AE00, 0))
"""


def test_shutdown_of_a_simulated_fd_is_enotsock_and_keeps_it() -> None:
    """shutdown(2) on the device is ENOTSOCK; on the placeholder it would look like the last
    close to the server, so the shim answers it."""
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--intercept", "preload", "--", sys.executable, "-c", SHUTDOWN],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.split() == ["-1", "ENOTSOCK", "12"], r.stderr


TCE_OPS = "tce " + " ".join(f"{op}={SPAPR_TCE.ops[op]}" for op in ("read", "write", "pread", "pwrite", "lseek"))


@pytest.mark.parametrize("intercept", INTERCEPTS)
def test_a_tce_tables_file_is_released_at_its_last_reference(fdops: Path, intercept: str) -> None:
    """A kvm-spapr-tce placeholder is a memfd the program maps (the table's pages): its LIOBN stays
    taken while the closed fd's mapping holds the file, and is free once that goes (the kernel's
    kvm_spapr_tce_release at __fput); a new table's pages are zeroed.  Under the preload shim
    read/write/lseek answer as the kernel's file does (its fops: .mmap and .release only); under
    seccomp they are the memfd's own (docs: choices)."""
    lines = simulated(fdops, "tce", intercept=intercept)
    ops = TCE_OPS if intercept == "preload" else "tce read=ok write=ok pread=ok pwrite=ok lseek=ok"
    assert lines == [
        ops,
        f"tce link={SPAPR_TCE.link} fstat=anon_inode",
        "tce closed but mapped=EBUSY unmapped=ok",
        "tce fresh=0 shared=165",
        "tce wrapped=ok",  # a table of no pages (the lab's fuzz found it: seed 20261210's case 7758)
    ]


def test_a_build_without_the_tce_iommu_makes_no_table(fdops: Path) -> None:
    assert simulated(fdops, "tce", host="qemu-nested-hv-p10-64k") == ["tce ENOTTY"]


STATS_OPS = " ".join(f"{op}={VM_STATS.ops[op]}" for op in ("read", "write", "pread", "pwrite", "lseek", "mmap"))


@pytest.mark.parametrize("intercept", INTERCEPTS)
def test_a_stats_file_reads_the_kernels_bytes_live(fdops: Path, intercept: str) -> None:
    """KVM_GET_STATS_FD on a VM and a vcpu: a memory file holding what kvm_stats_read reads (the
    header, the id of the asking program's pid, Book3S's descriptors, the data), kept current
    (KVM_INTERRUPT's queue_intr shows at once).  Under the preload shim write/pwrite/lseek/mmap
    answer as the kernel's file (EBADF, ESPIPE, the position, ENODEV); under seccomp pwrite and
    mmap are the memory file's own (docs: choices)."""
    lines = simulated(fdops, "stats", host="qemu-nested-hv-p10", intercept=intercept)
    ops = (
        STATS_OPS
        if intercept == "preload"
        else STATS_OPS.replace("pwrite=ESPIPE", "pwrite=EBADF").replace("mmap=ENODEV", "mmap=ok")
    )
    assert [re.sub(r"kvm-\d+", "kvm-PID", line) for line in lines] == [
        f"{VM_STATS.link} {ops}",
        "name_size=48 num_desc=4 id=kvm-PID first=remote_tlb_flush pid=mine",
        f"{VCPU_STATS.link_of(0)} {ops}",
        "name_size=48 num_desc=40 id=kvm-PID/vcpu-0 first=halt_successful_poll pid=mine",
        "queue_intr 0 then 1",
    ]


@pytest.mark.parametrize("intercept", INTERCEPTS)
@pytest.mark.parametrize(
    ("host", "kind", "icp"),
    [
        ("qemu-nested-hv-p10", "kvm-xics", "0xff001000ff050000"),  # XICS's emulation: presented to the ICP
        ("qemu-powernv9", "kvm-xive", "0xff000000ffff0000"),  # XICS-on-XIVE: in the VP's queue, no XISR
    ],
)
def test_a_kvm_device_fd_goes_into_its_struct_and_connects_a_vcpu(
    fdops: Path, intercept: str, host: str, kind: str, icp: str
) -> None:
    """KVM_CREATE_DEVICE answers 0 and puts the program's own new fd (a placeholder) in struct
    kvm_create_device; KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS) finds which file the program's fd is (its
    placeholder, stdin: no KVM device, none open); a source raised by KVM_IRQ_LINE reaches the
    vcpu; closing the device releases it before the next call returns (a second XICS is EEXIST
    while it lives; KVM_IRQ_LINE right after the close is ENXIO, a hundred times over)."""
    assert simulated(fdops, "xics", host=host, intercept=intercept) == [
        f"xics create=ok returned=0 link=anon_inode:{kind}",
        "xics connect 999=EBADF stdin=EPERM vm=EPERM xics=ok",
        f"xics source=ok cppr=ok irq_line=ok icp=ok {icp}",
        "xics recreate=ok",
        "xics released at once=100/100",
    ]


@pytest.mark.parametrize("intercept", INTERCEPTS)
def test_the_trace_shows_kvm_create_device_answering_0(fdops: Path, intercept: str) -> None:
    """The program got 0 and its own fd in the struct; --trace says 0, and the kernel's struct."""
    r = subprocess.run(
        [str(KVMSIM), "run", "--trace", "--host", "qemu-nested-hv-p10", "--intercept", intercept, "--", str(fdops),
         "xics"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    created = [ln for ln in r.stderr.splitlines() if "KVM_CREATE_DEVICE" in ln]
    assert len(created) == 102 and all(" = 0 in=03000000" in ln for ln in created), created  # 2, then 100 again
