"""kvm_arch_vm_ioctl(KVM_PPC_GET_COMPAT_CAPS) and KVM_CHECK_EXTENSION, as the kernel behaves.

The behaviour table: every profile × both revisions; then every errno path of the handler,
reached through the user-memory model, once per revision."""

from __future__ import annotations

import errno

import pytest
from conftest import REVS, Vm, caps

from kvmsim import Kernel, profile
from kvmsim.uapi import ARCHES

E = errno
# host: (cap answer, v4 result, v5 result); a result is a bitmap or an errno
BEHAVIOUR: dict[str, tuple[int, int | str, int | str]] = {
    "powervm-p10": (1, caps("P10"), caps("P10")),
    "powervm-p11": (1, caps("P10", "P11"), caps("P10", "P11")),
    "powervm-p11-compat-p10": (1, caps("P10"), caps("P10")),
    "powervm-p11-be": (1, caps("P10", "P11"), caps("P10", "P11")),
    "powervm-p10-hcall-hardware": (1, "EPERM", caps("P10")),  # H_HARDWARE (-1) untranslated
    "qemu-papr-p10": (1, caps("P9", "P10"), caps("P9", "P10")),
    "kvm-l1-p9": (1, caps("P9"), caps("P9")),
    "kvm-l1-p9-be": (1, caps("P9"), caps("P9")),
    "kvm-l1-p10": (1, caps("P10"), caps("P9", "P10")),
    "kvm-l1-p11": (1, caps("P11"), caps("P9", "P10", "P11")),
    "kvm-l1-p10-compat-p9": (1, caps("P9"), caps("P9")),
    "kvm-l1-no-cpu-version": (1, "EINVAL", "EINVAL"),
    "kvm-l1-p8-compat": (1, "EINVAL", "EINVAL"),
    "powernv-p10": (0, "EINVAL", "EINVAL"),
    "pseries-kvm-pr": (1, "ENOTTY", "ENOTTY"),
    "x86_64": (0, "ENOTTY", "ENOTTY"),
}
NO_DEVICE = ("no-kvm", "powervm-hcall-unavailable")


def test_the_table_covers_every_profile() -> None:
    assert sorted([*BEHAVIOUR, *NO_DEVICE]) == profile.names()


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", sorted(BEHAVIOUR))
def test_behaviour_table(host: str, abi: str) -> None:
    cap, *results = BEHAVIOUR[host]
    expected = results[REVS.index(abi)]
    s = Vm(host, abi)
    k = s.k
    assert k.ioctl(s.dev, k.KVM_CHECK_EXTENSION, k.rev.cap) == cap
    assert k.ioctl(s.vm, k.KVM_CHECK_EXTENSION, k.rev.cap) == cap
    other = 249 if abi == "v5" else 250
    assert k.ioctl(s.dev, k.KVM_CHECK_EXTENSION, other) == 0  # the other revision's number
    addr = k.memory.map(24, data=s.struct(size=24))
    if isinstance(expected, str):
        assert errno.errorcode[s.errno_of(addr)] == expected
        assert s.fields(addr) == {"flags": 0, "size": 24, "compat_capabilities": 0}  # nothing written
    else:
        assert s.call(addr) == 0
        assert s.fields(addr) == {"flags": 0, "size": 24, "compat_capabilities": expected}


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", NO_DEVICE)
def test_no_dev_kvm_without_a_loaded_module(host: str, abi: str) -> None:
    k = Kernel.from_profile(host, abi=abi)
    with pytest.raises(FileNotFoundError):
        k.open()


def test_hcall_failure_at_init_is_in_dmesg() -> None:
    k = Kernel.from_profile("powervm-hcall-unavailable")
    assert any("H_FUNCTION" in line and "kvm_hv not loaded" in line for line in k.dmesg)


def test_big_endian_host_writes_big_endian_bytes() -> None:
    s = Vm("powervm-p11-be", "v5")
    addr = s.k.memory.map(24, data=(24).to_bytes(8, "big") + bytes(16))
    s.call(addr)
    assert s.k.memory.read(addr, 24) == (24).to_bytes(8, "big") + bytes(8) + bytes.fromhex("3000000000000000")


@pytest.mark.parametrize("abi", REVS)
def test_other_revisions_request_is_unknown(abi: str) -> None:
    s = Vm("powervm-p11", abi)
    other = Kernel.from_profile("powervm-p11", abi="v5" if abi == "v4" else "v4").KVM_PPC_GET_COMPAT_CAPS
    addr = s.k.memory.map(24, data=s.struct())
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.vm, other, addr)
    assert exc.value.errno == E.ENOTTY
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.dev, s.k.KVM_PPC_GET_COMPAT_CAPS, addr)
    assert exc.value.errno == E.EINVAL  # on /dev/kvm: kvm_arch_dev_ioctl


@pytest.mark.parametrize("abi", REVS)
def test_x86_encoded_request_is_unknown_to_a_powerpc_kernel(abi: str) -> None:
    s = Vm("powervm-p11", abi)
    x86 = s.k.rev.request(ARCHES["x86_64"])
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.vm, x86, s.k.memory.map(24, data=s.struct()))
    assert exc.value.errno == E.ENOTTY
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.dev, 0xAE03, s.k.rev.cap)  # x86 KVM_CHECK_EXTENSION
    assert exc.value.errno == E.EINVAL


def test_overridden_numbers_are_the_kernels_numbers() -> None:
    k = Kernel.from_profile("powervm-p11", abi="v5", cap=251, ioctl_nr=0xB8)
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    assert k.KVM_PPC_GET_COMPAT_CAPS == 0x2000AEB8
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, 251) == 1
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, 250) == 0
    buf = bytearray(k.rev.layout.pack("little", size=24))
    k.ioctl(vm, 0x2000AEB8, buf)
    assert k.rev.layout.unpack("little", buf)["compat_capabilities"] == caps("P10", "P11")


# -- every errno path of §3 -------------------------------------------------


def test_v4_efault_reading_size() -> None:
    s = Vm("powervm-p11", "v4")
    assert s.errno_of(0) == E.EFAULT
    assert s.errno_of(s.k.memory.map(8)) == E.EFAULT  # size lives at offset 8, past the mapping


def test_v5_efault_reading_size() -> None:
    s = Vm("powervm-p11", "v5")
    assert s.errno_of(0) == E.EFAULT
    assert s.errno_of(s.k.memory.map(4)) == E.EFAULT


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("size", [0, 1, 8, 23])
def test_size_below_24_is_einval_and_writes_nothing(abi: str, size: int) -> None:
    s = Vm("powervm-p11", abi)
    before = s.struct(size=size, caps=0x1234)
    addr = s.k.memory.map(24, data=before)
    assert s.errno_of(addr) == E.EINVAL
    assert s.k.memory.read(addr, 24) == before


@pytest.mark.parametrize("size", [25, 32, 4096, 2**64 - 1])
def test_v4_accepts_larger_sizes_and_leaves_bytes_past_24(size: int) -> None:
    s = Vm("powervm-p11", "v4")
    addr = s.k.memory.map(40, data=s.struct(size=size, flags=7, caps=0x99) + b"\xaa" * 16)
    assert s.call(addr) == 0
    assert s.fields(addr) == {"flags": 0, "size": 24, "compat_capabilities": caps("P10", "P11")}
    assert s.k.memory.read(addr + 24, 16) == b"\xaa" * 16


def test_v4_never_reads_flags() -> None:
    s = Vm("pseries-kvm-pr", "v4")
    assert s.errno_of(s.k.memory.map(24, data=s.struct(flags=1))) == E.ENOTTY


@pytest.mark.parametrize("size", [25, 32, 2**64 - 1])
def test_v5_e2big_writes_only_the_kernel_size(size: int) -> None:
    s = Vm("powervm-p11", "v5")
    before = s.struct(size=size, flags=0, caps=0x99) + bytes(16)  # the extra bytes are zero
    addr = s.k.memory.map(40, data=before)
    assert s.errno_of(addr) == E.E2BIG
    assert s.k.memory.read(addr, 40) == s.struct(size=24, caps=0x99) + bytes(16)


def test_v5_e2big_write_back_fault_is_efault() -> None:
    s = Vm("powervm-p11", "v5")
    addr = s.k.memory.map(32, writable=False, data=s.struct(size=32))
    assert s.errno_of(addr) == E.EFAULT
    assert s.fields(addr)["size"] == 32


def test_v5_copy_in_fault_is_efault() -> None:
    s = Vm("powervm-p11", "v5")
    assert s.errno_of(s.k.memory.map(16, data=s.struct()[:16])) == E.EFAULT


def test_v5_flags_einval_comes_before_enotty() -> None:
    s = Vm("pseries-kvm-pr", "v5")
    before = s.struct(flags=1)
    addr = s.k.memory.map(24, data=before)
    assert s.errno_of(addr) == E.EINVAL
    assert s.k.memory.read(addr, 24) == before


@pytest.mark.parametrize("abi", REVS)
def test_enotty_for_a_kvm_pr_vm(abi: str) -> None:
    s = Vm("pseries-kvm-pr", abi)
    assert s.errno_of(s.k.memory.map(24, data=s.struct())) == E.ENOTTY


@pytest.mark.parametrize("abi", REVS)
def test_backend_error_writes_nothing(abi: str) -> None:
    s = Vm("kvm-l1-no-cpu-version", abi)
    before = s.struct(caps=0x55)
    addr = s.k.memory.map(24, data=before)
    assert s.errno_of(addr) == E.EINVAL
    assert s.k.memory.read(addr, 24) == before


@pytest.mark.parametrize("abi", REVS)
def test_copy_out_fault_is_efault(abi: str) -> None:
    s = Vm("powervm-p11", abi)
    assert s.errno_of(s.k.memory.map(24, writable=False, data=s.struct())) == E.EFAULT


def test_v5_input_capabilities_are_ignored() -> None:
    s = Vm("powervm-p10", "v5")
    addr = s.k.memory.map(24, data=s.struct(caps=2**64 - 1))
    s.call(addr)
    assert s.fields(addr)["compat_capabilities"] == caps("P10")


def test_v5_kernel_zero_caps_succeeds_and_warns_once(tmp_path: pytest.TempPathFactory) -> None:
    text = (profile.HOSTS_DIR / "powervm-p10.toml").read_text().replace('offers = ["power10"]', 'offers = ["power11"]')
    path = tmp_path / "p10-offered-p11.toml"  # type: ignore[operator]
    path.write_text(text)
    s = Vm(str(path), "v5")
    for _ in range(2):
        addr = s.k.memory.map(24, data=s.struct())
        assert s.call(addr) == 0
        assert s.fields(addr)["compat_capabilities"] == 0
    assert len([line for line in s.k.dmesg if "caps 0" in line]) == 1


# -- the kernel's struct size as a parameter (the patch author's two ABI tests) --


def test_future_32_byte_kernel_serves_a_24_byte_caller() -> None:
    s = Vm("powervm-p11", "v5", ksize=32)
    addr = s.k.memory.map(40, data=s.struct(size=24) + b"\xbb" * 16)
    assert s.call(addr) == 0
    assert s.fields(addr) == {"flags": 0, "size": 24, "compat_capabilities": caps("P10", "P11")}
    assert s.k.memory.read(addr + 24, 16) == b"\xbb" * 16  # only usize bytes written


def test_future_32_byte_kernel_serves_a_32_byte_caller() -> None:
    s = Vm("powervm-p11", "v5", ksize=32)
    addr = s.k.memory.map(32, data=s.struct(size=32) + b"\xbb" * 8)
    assert s.call(addr) == 0
    assert s.k.memory.read(addr, 32) == s.struct(size=32, caps=caps("P10", "P11")) + bytes(8)


def test_32_byte_caller_against_24_byte_kernel_retries_with_the_written_size() -> None:
    s = Vm("powervm-p11", "v5")
    addr = s.k.memory.map(32, data=s.struct(size=32) + bytes(8))
    assert s.errno_of(addr) == E.E2BIG
    assert s.fields(addr)["size"] == 24
    assert s.call(addr) == 0
    assert s.fields(addr)["compat_capabilities"] == caps("P10", "P11")


@pytest.mark.parametrize("ksize", [0, 16, 25])
def test_kernel_struct_size_must_be_sane(ksize: int) -> None:
    with pytest.raises(ValueError, match="kernel struct size"):
        Kernel.from_profile("powervm-p11", abi="v5", ksize=ksize)
