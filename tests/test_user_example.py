"""Written as a user writes theirs: unmodified code that talks to /dev/kvm with the powerpc
numbers from <linux/kvm.h> (Linux 7.3, ABI v5), tested on simulated POWER hosts."""

from __future__ import annotations

import errno
import os
import struct
from fcntl import ioctl  # caught by the plugin too

import pytest

# ---- the user's code -----------------------------------------------------------------

KVM_CHECK_EXTENSION = 0x2000AE03  # _IO(KVMIO, 0x03) on powerpc
KVM_CREATE_VM = 0x2000AE01
KVM_CAP_PPC_COMPAT_CAPS = 250
KVM_PPC_GET_COMPAT_CAPS = 0x2000AEE4  # _IO(KVMIO, 0xe4)
MODES = {0x0F000005: "power9", 0x0F000006: "power10", 0x0F000007: "power11"}
CAP_BITS = ((62, "power9"), (61, "power10"), (60, "power11"))


def modes_from_device_tree() -> list[str]:
    cpus = "/proc/device-tree/cpus"
    for node in sorted(os.listdir(cpus)):
        try:
            with open(f"{cpus}/{node}/cpu-version", "rb") as f:
                (version,) = struct.unpack(">I", f.read())
        except (FileNotFoundError, NotADirectoryError):
            continue
        return [MODES[version]] if version in MODES else []
    return []


def nested_cpu_modes() -> list[str]:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except FileNotFoundError:
        return modes_from_device_tree()
    try:
        if ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_PPC_COMPAT_CAPS) <= 0:
            return modes_from_device_tree()
        vm = ioctl(fd, KVM_CREATE_VM, 0)
        try:
            buf = bytearray(struct.pack("<QQQ", 24, 0, 0))  # size, flags, compat_capabilities
            ioctl(vm, KVM_PPC_GET_COMPAT_CAPS, buf)
        except OSError as exc:
            if exc.errno == errno.ENOTTY:
                return modes_from_device_tree()
            raise
        finally:
            os.close(vm)
        _size, _flags, caps = struct.unpack("<QQQ", buf)
        return [name for bit, name in CAP_BITS if caps >> bit & 1]
    finally:
        os.close(fd)


# ---- the user's tests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kvm_host", "expected"),
    [
        (("powervm-p11", "v5"), ["power10", "power11"]),
        (("powervm-p11-compat-p10", "v5"), ["power10"]),
        (("kvm-l1-p10", "v5"), ["power9", "power10"]),
        (("kvm-l1-p11", "v5"), ["power9", "power10", "power11"]),
        (("pseries-kvm-pr", "v5"), ["power10"]),  # ENOTTY: the device tree answers
        (("powernv-p10", "v5"), []),  # cap 0, and no cpu-version on bare metal
        (("no-kvm", "v5"), ["power10"]),  # no /dev/kvm: the device tree answers
        (("kvm-l1-p10", "v4"), ["power10"]),  # a v4 kernel: cap 250 is 0, fall back
    ],
    indirect=["kvm_host"],
)
def test_nested_cpu_modes(kvm_host: object, expected: list[str]) -> None:
    assert nested_cpu_modes() == expected


@pytest.mark.parametrize("kvm_host", [("kvm-l1-no-cpu-version", "v5")], indirect=True)
def test_einval_reaches_the_user(kvm_host: object) -> None:
    with pytest.raises(OSError) as exc:
        nested_cpu_modes()
    assert exc.value.errno == errno.EINVAL
