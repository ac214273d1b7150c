"""The address space: faults exactly where the uaccess helpers would fail."""

from __future__ import annotations

import pytest

from kvmsim.kernel.usermem import AddressSpace, Fault


def test_address_zero_is_never_mapped() -> None:
    mem = AddressSpace()
    mem.map(64)
    with pytest.raises(Fault):
        mem.copy_from_user(0, 8)


def test_access_past_a_mapping_faults() -> None:
    mem = AddressSpace()
    addr = mem.map(16)
    assert mem.copy_from_user(addr + 8, 8) == bytes(8)
    with pytest.raises(Fault) as exc:
        mem.copy_from_user(addr + 9, 8)
    assert exc.value.addr == addr + 16


def test_kernel_writes_obey_permission_the_process_view_does_not() -> None:
    mem = AddressSpace()
    addr = mem.map(8, writable=False)
    with pytest.raises(Fault):
        mem.put_user_u64(addr, 1, "little")
    mem.write(addr, b"\1" * 8)
    assert mem.get_user_u64(addr, "big") == 0x0101010101010101


def test_copy_to_user_writes_up_to_the_fault() -> None:
    mem = AddressSpace()
    addr = mem.map(20)
    with pytest.raises(Fault) as exc:
        mem.copy_to_user(addr, b"\xff" * 24)
    assert exc.value.addr == addr + 20
    assert mem.read(addr, 20) == b"\xff" * 20


def test_mappings_have_guard_gaps_and_unmap_frees() -> None:
    mem = AddressSpace()
    a = mem.map(4096)
    b = mem.map(8)
    assert b > a + 4096
    mem.unmap(b)
    with pytest.raises(Fault):
        mem.read(b, 1)
    assert mem.map(8) == b  # the topmost addresses are reused
    with pytest.raises(ValueError, match="no mapping"):
        mem.unmap(a + 1)


def test_protect_changes_the_kernels_view() -> None:
    mem = AddressSpace()
    addr = mem.map(8)
    mem.protect(addr, writable=False)
    with pytest.raises(Fault):
        mem.copy_to_user(addr, b"x")


@pytest.mark.parametrize("length", [0, -1])
def test_map_needs_a_length(length: int) -> None:
    with pytest.raises(ValueError):
        AddressSpace().map(length)


def test_parts_of_one_mapping_read_across_and_fault_by_their_protection() -> None:
    mem = AddressSpace()
    addr = mem.map_parts([(20, True), (12, False)], bytes(range(32)))
    assert mem.read(addr, 32) == bytes(range(32))  # across the parts
    assert mem.get_user_u64(addr + 16, "little") == int.from_bytes(bytes(range(16, 24)), "little")
    with pytest.raises(Fault):
        mem.copy_to_user(addr + 16, bytes(8))  # into the read-only part
    assert mem.read(addr + 16, 4) == bytes(4)  # the prefix below it was written
    with pytest.raises(Fault):
        mem.read(addr + 24, 9)  # past the mapping: its guard
    mem.unmap(addr)
    with pytest.raises(Fault):
        mem.read(addr + 20, 1)  # every part went
