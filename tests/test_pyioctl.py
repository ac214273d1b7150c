"""Kernel.ioctl keeps fcntl.ioctl's argument contract (Modules/fcntlmodule.c)."""

from __future__ import annotations

import array
import errno

import pytest
from conftest import Vm, caps

P10_P11 = caps("P10", "P11")


def test_bytearray_is_mutated_in_place_and_returns_the_result() -> None:
    s = Vm("powervm-p11", "v5")
    buf = bytearray(s.struct())
    assert s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, buf) == 0
    assert s.layout.unpack(s.bo, buf)["compat_capabilities"] == P10_P11


def test_e2big_write_back_is_visible_although_oserror_is_raised() -> None:
    s = Vm("powervm-p11", "v5")
    buf = bytearray(s.struct(size=32) + bytes(8))
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, buf)
    assert exc.value.errno == errno.E2BIG
    assert s.layout.unpack(s.bo, buf)["size"] == 24


def test_immutable_bytes_return_new_bytes() -> None:
    s = Vm("powervm-p11", "v4")
    arg = s.struct()
    out = s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, arg)
    assert isinstance(out, bytes) and out != arg
    assert s.layout.unpack(s.bo, out)["compat_capabilities"] == P10_P11


def test_mutate_flag_false_leaves_the_buffer_and_returns_bytes() -> None:
    s = Vm("powervm-p11", "v4")
    buf = bytearray(s.struct())
    out = s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, buf, False)
    assert buf == s.struct()
    assert isinstance(out, bytes) and s.layout.unpack(s.bo, out)["compat_capabilities"] == P10_P11


def test_short_buffer_gets_cpythons_1024_byte_scratch() -> None:
    # CPython copies a <=1024-byte buffer into a stack scratch area, so the kernel's 24-byte
    # write succeeds and only the caller's 16 bytes come back.
    s = Vm("powervm-p11", "v4")
    buf = bytearray(s.struct()[:16])
    assert s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, buf) == 0
    assert buf == s.struct(size=24)[:16]


def test_buffer_over_1024_bytes_is_passed_in_place() -> None:
    s = Vm("powervm-p11", "v4")
    buf = bytearray(s.struct(size=2000).ljust(2000, b"\xcc"))
    s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, buf)
    assert buf[:24] == s.struct(size=24, caps=P10_P11)
    assert buf[24:] == b"\xcc" * 1976


def test_immutable_arg_over_1024_bytes_is_valueerror() -> None:
    s = Vm("powervm-p11", "v4")
    with pytest.raises(ValueError, match="too long"):
        s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, bytes(1025))


def test_array_of_u64_works_as_a_buffer() -> None:
    s = Vm("powervm-p11", "v5")
    arr = array.array("Q", [24, 0, 0])
    s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, arr)
    assert list(arr) == [24, 0, P10_P11]


@pytest.mark.parametrize("arg", [1.5, None, object()])
def test_other_arg_types_are_typeerror(arg: object) -> None:
    s = Vm("powervm-p11", "v4")
    with pytest.raises(TypeError):
        s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS, arg)


def test_int_arg_is_the_raw_user_address() -> None:
    s = Vm("powervm-p11", "v4")
    for bad in (0, 1, -1, -8, 2**31 - 1):  # -1 and -8 reach the kernel sign-extended, near 2^64
        assert s.errno_of(bad) == errno.EFAULT
    for too_big, message in ((2**31, "greater than maximum"), (-(2**31) - 1, "less than minimum"), (2**64, "greater")):
        with pytest.raises(OverflowError, match=message):  # Python 3.11's fcntl.ioctl takes a C int
            s.call(too_big)


def test_a_bool_is_an_int_as_for_fcntl() -> None:
    s = Vm("powervm-p11", "v4")
    assert s.k.ioctl(s.dev, s.k.KVM_CHECK_EXTENSION, True) == 0  # cap 1 is not this feature
    assert s.errno_of(True) == errno.EFAULT  # address 1


def test_request_is_truncated_to_an_unsigned_int() -> None:
    s = Vm("powervm-p11", "v4")
    out = s.k.ioctl(s.vm, s.k.KVM_PPC_GET_COMPAT_CAPS | 1 << 32, s.struct())
    assert s.layout.unpack(s.bo, out)["compat_capabilities"] == P10_P11  # type: ignore[arg-type]


def test_a_non_contiguous_buffer_is_refused_before_any_call() -> None:
    from kvmsim import Kernel

    k = Kernel.from_profile("powervm-p11")
    dev = k.open()
    vm = int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
    strided = memoryview(bytearray(48))[::2]
    with pytest.raises(TypeError, match="'memoryview' object cannot be interpreted as an integer"):
        k.ioctl(vm, 0x2000AEB8, strided)  # as CPython's fcntl.ioctl says it, and the kernel never called
    assert bytes(strided) == bytes(24)
