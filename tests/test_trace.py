"""`--trace`: a C developer sees each call decoded, its bytes and the kernel's reason; and the
reasons themselves name the usual mistakes (another architecture's number, another revision's,
a VM ioctl on /dev/kvm, a byte-swapped size, a v5/7.3 layout on a v4 kernel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmsim import Kernel
from kvmsim.intercept.build import compile_c

ROOT = Path(__file__).resolve().parent.parent
KVMSIM = Path(sys.executable).parent / "kvmsim"


@pytest.fixture(scope="module")
def c_client() -> Path:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    return compile_c([ROOT / "examples" / "c" / "kvm_compat_caps.c"])


@pytest.mark.parametrize(("intercept", "process"), [("preload", "connection 1 (pid "), ("seccomp", "pid ")])
def test_json_trace_lines_of_a_run(c_client: Path, tmp_path: Path, intercept: str, process: str) -> None:
    trace = tmp_path / "trace.jsonl"
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--intercept", intercept, f"--trace={trace}",
         "--trace-format", "json", "--", str(c_client), "--null"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    first, *calls = [json.loads(line) for line in trace.read_text().splitlines()]
    assert first["intercept"] == intercept and first["why"]
    assert [c["decoded"] for c in calls if c["call"] == "IOCTL"] == [
        "KVM_GET_API_VERSION",
        "KVM_CREATE_VM",
        "KVM_CHECK_EXTENSION",
        "KVM_PPC_GET_COMPAT_CAPS (linux-7.3)",
    ]
    last = next(c for c in calls if (c["decoded"] or "").startswith("KVM_PPC"))
    assert (last["errno"], last["reason"], last["arg"]) == ("EFAULT", "user memory: read fault at 0x0", 0)
    assert calls[0]["process"].startswith(process)


@pytest.mark.parametrize("intercept", ["seccomp", "preload"])
def test_text_trace_shows_bytes_in_and_out_decoded(c_client: Path, intercept: str) -> None:
    """The path an OPEN named, the capability KVM_CHECK_EXTENSION asked, and the struct out
    decoded (big-endian here: decoded in the host's byte order)."""
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11-be", "--intercept", intercept, "--trace", "--", str(c_client)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = r.stderr.splitlines()
    assert any(": open('/dev/kvm') = " in ln for ln in lines), r.stderr
    check = next(ln for ln in lines if "KVM_CHECK_EXTENSION" in ln)
    assert check.endswith("= 1  [cap 250 KVM_CAP_PPC_COMPAT_CAPS (linux-7.3)]")
    line = next(ln for ln in lines if "KVM_PPC_GET_COMPAT_CAPS (" in ln)
    assert "= 0 in=0000000000000018" in line  # big-endian size 24 in
    assert "=000000000000001800000000000000003000000000000000" in line  # and the struct out
    assert line.endswith("[size=24 flags=0x0 compat_capabilities=0x3000000000000000 (power10, power11)]")


@pytest.mark.parametrize(
    ("host", "abi", "on", "number", "arg", "hint"),
    [
        (
            "powervm-p11",
            "linux-7.3",
            "dev",
            0xAE00,
            0,
            "0xae00 is x86's KVM_GET_API_VERSION; this host is ppc64le, which uses 0x2000ae00",
        ),
        (
            "x86_64",
            "linux-7.3",
            "dev",
            0x2000AE03,
            250,
            "is powerpc's KVM_CHECK_EXTENSION; this host is x86_64, which uses 0xae03",
        ),
        (
            "powervm-p11",
            "linux-7.3",
            "vm",
            0x2000AEE4,
            "buf",
            "is KVM_PPC_GET_COMPAT_CAPS (v5); this kernel (linux-7.3) uses 0x2000aeb8",
        ),
        ("powervm-p11", "none", "vm", 0x2000AEB8, "buf", "this kernel (none) has no such ioctl (before Linux 7.3)"),
        (
            "powervm-p11",
            "linux-7.3",
            "dev",
            0x2000AEB8,
            "buf",
            "is a VM ioctl: issue it on the fd KVM_CREATE_VM returned",
        ),
        ("powervm-p11-be", "linux-7.3", "vm", 0x2000AEB8, "le24", "(24 byte-swapped? this host is big-endian)"),
        ("powervm-p11", "v4", "vm", 0x4018AEE4, "buf", "is this a v5/7.3 layout?"),
        *[
            (
                "powervm-p11",
                "linux-7.3",
                "vm",
                guess,
                "buf",
                ": KVM_PPC_GET_COMPAT_CAPS (linux-7.3) is 0x2000aeb8, _IOC(none, 0xae, 0xb8, 0) (the direction",
            )
            for guess in (0x4018AEB8, 0x8018AEB8, 0xC018AEB8)  # _IOR, _IOW, _IOWR guesses
        ],
        ("powervm-p11", "linux-7.3", "vm", 0x2000AEB8, "v4buf", "the v4 draft's struct is flags, size, caps; 7.3's"),
    ],
)
def test_the_reason_names_the_usual_mistake(host: str, abi: str, on: str, number: int, arg: object, hint: str) -> None:
    k = Kernel.from_profile(host, abi=abi)
    dev = k.open()
    fd = dev if on == "dev" else int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
    if arg == "buf":
        arg = bytearray((24).to_bytes(8, "little") + bytes(16))  # a v5/7.3 struct, little-endian
    elif arg == "v4buf":
        arg = bytearray(bytes(8) + (24).to_bytes(8, "little") + bytes(8))  # flags, size, caps: the v4 draft's
    elif arg == "le24":
        arg = bytearray((24).to_bytes(8, "little") + bytes(16))  # packed for the wrong byte order
    with pytest.raises(OSError) as exc:
        k.ioctl(fd, number, arg)
    assert hint in exc.value.reason  # type: ignore[attr-defined]
