"""The merged handler (Linux 7.3, arch/powerpc/kvm/powerpc.c at ac3e65dd), step by step:
every check reached once, in the kernel's order, with the bytes it writes or leaves."""

from __future__ import annotations

import errno

import pytest
from conftest import Vm, caps, evolved

E = errno
P10_P11 = caps("P10", "P11")


def s73(host: str = "powervm-p11", **kw: object) -> Vm:
    return Vm(host, "linux-7.3", **kw)  # type: ignore[arg-type]


def test_the_request_is_io_0xb8() -> None:
    assert s73().request == 0x2000AEB8


def test_get_user_size_fault_is_efault() -> None:
    s = s73()
    assert s.errno_of(0) == E.EFAULT  # NULL
    assert s.errno_of(8) == E.EFAULT  # a wild pointer
    assert s.errno_of(s.k.memory.map(4)) == E.EFAULT  # size straddles the end of the mapping


@pytest.mark.parametrize(("page_size", "size"), [(4096, 4097), (65536, 65537), (4096, 2**64 - 1)])
def test_size_over_page_size_is_e2big_and_writes_nothing(page_size: int, size: int) -> None:
    s = Vm(evolved("powervm-p11", page_size=page_size), "linux-7.3")
    before = s.struct(size=size)
    addr = s.k.memory.map(24, data=before)  # only 24 bytes: the guard comes before any tail read
    assert s.errno_of(addr) == E.E2BIG
    assert s.k.memory.read(addr, 24) == before


def test_4097_with_a_zero_tail_passes_the_guard_on_a_64k_kernel() -> None:
    s = Vm(evolved("powervm-p11", page_size=65536), "linux-7.3")
    addr = s.k.memory.map(4097, data=s.struct(size=4097))
    assert s.call(addr) == 0
    assert s.k.memory.read(addr, 4097) == s.struct(size=24, caps=P10_P11) + bytes(4097 - 24)


@pytest.mark.parametrize("size", [0, 16, 23])
def test_size_below_ver0_is_einval_and_writes_nothing(size: int) -> None:
    s = s73()
    before = s.struct(size=size, caps=0x1234)
    addr = s.k.memory.map(24, data=before)
    assert s.errno_of(addr) == E.EINVAL
    assert s.k.memory.read(addr, 24) == before


def test_larger_struct_with_zero_tail_is_accepted_and_size_says_24() -> None:
    s = s73()
    addr = s.k.memory.map(32, data=s.struct(size=32) + bytes(8))
    assert s.call(addr) == 0
    assert s.k.memory.read(addr, 32) == s.struct(size=24, caps=P10_P11) + bytes(8)


def test_non_zero_tail_is_e2big_with_24_written_back_and_the_tail_untouched() -> None:
    s = s73()
    addr = s.k.memory.map(32, data=s.struct(size=32, caps=0x99) + b"\xff" * 8)
    assert s.errno_of(addr) == E.E2BIG
    assert s.k.memory.read(addr, 32) == s.struct(size=24, caps=0x99) + b"\xff" * 8


def test_e2big_write_back_fault_is_efault() -> None:
    s = s73()
    before = s.struct(size=32) + b"\x01" + bytes(7)
    addr = s.k.memory.map(32, writable=False, data=before)
    assert s.errno_of(addr) == E.EFAULT
    assert s.k.memory.read(addr, 32) == before


def test_unreadable_tail_is_efault() -> None:
    s = s73()
    addr = s.k.memory.map(24, data=s.struct(size=40))  # the tail 24..40 is unmapped
    assert s.errno_of(addr) == E.EFAULT
    assert s.fields(addr)["size"] == 40


def test_check_zeroed_user_stops_at_the_first_non_zero_word() -> None:
    s = s73()  # a non-zero byte before the unmapped part: E2BIG, not EFAULT (lib/usercopy.c)
    addr = s.k.memory.map(32, data=s.struct(size=48) + b"\x01" + bytes(7))
    assert s.errno_of(addr) == E.E2BIG
    assert s.fields(addr)["size"] == 24


def test_copy_in_fault_is_efault() -> None:
    s = s73()
    assert s.errno_of(s.k.memory.map(16, data=s.struct()[:16])) == E.EFAULT


def test_flags_is_einval_and_writes_nothing() -> None:
    s = s73()
    before = s.struct(flags=1)
    addr = s.k.memory.map(24, data=before)
    assert s.errno_of(addr) == E.EINVAL
    assert s.k.memory.read(addr, 24) == before


def test_caps_preset_by_the_caller_are_overwritten() -> None:
    s = s73()
    addr = s.k.memory.map(24, data=s.struct(caps=2**64 - 1))
    assert s.call(addr) == 0
    assert s.fields(addr) == {"size": 24, "flags": 0, "compat_capabilities": P10_P11}


def test_copy_struct_to_user_clears_the_tail_first() -> None:
    s = s73()  # read-only: the tail is zero (check passes), clear_user faults before the copy
    before = s.struct(size=32) + bytes(8)
    addr = s.k.memory.map(32, writable=False, data=before)
    assert s.errno_of(addr) == E.EFAULT
    assert s.k.memory.read(addr, 32) == before


def test_copy_out_fault_is_efault() -> None:
    s = s73()
    assert s.errno_of(s.k.memory.map(24, writable=False, data=s.struct())) == E.EFAULT


def test_a_pr_vm_is_enotty_after_the_flags_check() -> None:
    s = s73("pseries-kvm-pr")
    assert s.errno_of(s.k.memory.map(24, data=s.struct())) == E.ENOTTY


def test_big_endian_bytes() -> None:
    s = s73("powervm-p11-be")
    addr = s.k.memory.map(32, data=(32).to_bytes(8, "big") + bytes(24))
    assert s.call(addr) == 0
    assert s.k.memory.read(addr, 32) == (24).to_bytes(8, "big") + bytes(8) + (P10_P11).to_bytes(8, "big") + bytes(8)


@pytest.mark.parametrize(("usize", "written"), [(24, 24), (32, 32), (40, 32)])
def test_a_future_32_byte_kernel(usize: int, written: int) -> None:
    s = s73(ksize=32)
    addr = s.k.memory.map(48, data=s.struct(size=usize) + bytes(usize - 24) + b"\xbb" * (48 - usize))
    assert s.call(addr) == 0
    assert s.fields(addr) == {"size": written, "flags": 0, "compat_capabilities": P10_P11}
    assert s.k.memory.read(addr + usize, 48 - usize) == b"\xbb" * (48 - usize)  # nothing past usize
