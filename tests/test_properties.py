"""Property tests over random revisions, hosts, sizes, flags, buffers, permissions and kernel
struct sizes, with the invariants of the reference (§3)."""

from __future__ import annotations

import errno
import struct

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmsim import Kernel
from kvmsim.kernel import profile
from kvmsim.kernel.book3s_hv import caps_up_to
from kvmsim.uapi import KVM_PPC_COMPAT_BITMASK, LINUX_7_3, POWER9, mode_of_logical_pvr


def _makes_vms(name: str) -> bool:
    k = Kernel.from_profile(name)
    return k.arch.is_powerpc and k.kvm.loaded and bool(k.kvm.loaded_modules[1:])


HOSTS = [h for h in profile.names() if _makes_vms(h)]
ABIS = ["linux-7.3", "v5", "v4"]
BOUNDARIES = [0, 1, 8, 16, 23, 24, 25, 31, 32, 33, 39, 40, 41, 2**63, 2**64 - 1]  # around every ksize
SIZES = st.one_of(st.sampled_from(BOUNDARIES), st.integers(1, 23), st.integers(25, 64), st.integers(65, 2**64 - 1))
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def calls(draw: st.DrawFn) -> dict[str, object]:
    return {
        "host": draw(st.sampled_from(HOSTS)),
        "abi": draw(st.sampled_from(ABIS)),
        "ksize": draw(st.sampled_from([24, 24, 32, 40])),
        "size": draw(SIZES),
        "flags": draw(st.one_of(st.just(0), st.integers(0, 2**64 - 1))),
        "caps_in": draw(st.integers(0, 2**64 - 1)),
        "trailing": draw(st.binary(min_size=0, max_size=24)),
        "length": draw(st.one_of(st.integers(1, 64), st.sampled_from([24, 32, 40, 48, 64]))),
        "writable": draw(st.sampled_from([True, True, True, False])),
    }


def run(c: dict[str, object]) -> tuple[Kernel, int | None, bytes, bytes, int]:
    """(kernel, errno or None, memory before, memory after, the length mapped)."""
    k = Kernel.from_profile(str(c["host"]), abi=str(c["abi"]), ksize=int(c["ksize"]))  # type: ignore[call-overload]
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    bo = k.arch.byteorder
    body = k.rev.layout.pack(bo, size=c["size"], flags=c["flags"], compat_capabilities=c["caps_in"])
    length = int(c["length"])  # type: ignore[call-overload]
    before = (body + bytes(c["trailing"])).ljust(length, b"\xa5")[:length]  # type: ignore[arg-type]
    addr = k.memory.map(length, writable=bool(c["writable"]), data=before)
    try:
        k.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, addr)
        err = None
    except OSError as exc:
        err = exc.errno
    return k, err, before, k.memory.read(addr, length), length


def field(k: Kernel, data: bytes, name: str) -> int | None:
    off = k.rev.layout.offset(name)  # type: ignore[arg-type]
    if len(data) < off + 8:
        return None
    return int(struct.unpack_from("<Q" if k.arch.byteorder == "little" else ">Q", data, off)[0])


@SETTINGS
@given(calls())
def test_invariants(c: dict[str, object]) -> None:
    k, err, before, after, length = run(c)
    usize, ksize, v5 = int(c["size"]), k.ksize, k.rev.name == "v5"  # type: ignore[call-overload]
    if k.rev.name == "linux-7.3":
        check_linux_7_3(k, err, c, before, after, usize, length)
        return
    if err is None:
        # success only at the permitted sizes, and the struct fit the buffer
        assert (24 <= usize <= ksize) if v5 else (usize >= ksize)
        assert not (v5 and c["flags"])
        written = min(usize, ksize) if v5 else ksize
        assert length >= written
        caps = field(k, after, "compat_capabilities")
        assert caps is not None and caps & ~KVM_PPC_COMPAT_BITMASK == 0
        assert field(k, after, "size") == written and field(k, after, "flags") == 0
        assert after[written:] == before[written:]  # v4: nothing past 24 (ksize) is touched
        version = next((n.cpu_version for n in k.host.cpu_nodes if n.cpu_version), None)
        if v5 and 2 not in k.host.hypervisor.nested_apis and version is not None:
            mode = mode_of_logical_pvr(version)  # v5 PowerNV results are cumulative
            assert mode is not None and caps == caps_up_to(mode.level) and caps & POWER9.cap_bit
        return
    if err == errno.E2BIG:
        assert v5 and usize > ksize
        expected = bytearray(before)
        struct.pack_into("<Q" if k.arch.byteorder == "little" else ">Q", expected, k.rev.layout.offset("size"), ksize)
        assert after == bytes(expected)  # the kernel size in the user's size field, nothing else
    elif err == errno.EFAULT and c["writable"] and before != after:
        # copy_to_user faulting part-way: a prefix of the output, nothing past the mapping
        assert length < (min(usize, ksize) if v5 else ksize)
    else:
        assert after == before  # nothing written on any other error


def check_linux_7_3(
    k: Kernel, err: int | None, c: dict[str, object], before: bytes, after: bytes, usize: int, length: int
) -> None:
    """The merged handler's invariants: success only for 24 <= usize <= PAGE_SIZE with a
    zero tail past ksize and flags 0; then min(usize, ksize) bytes of struct and zeros up to
    usize; E2BIG writes nothing or only ksize into size; nothing past usize is ever touched."""
    ksize, page = k.ksize, k.host.page_size
    if err is None:
        assert 24 <= usize <= page and length >= usize and not c["flags"]
        assert not any(before[ksize:usize])
        written = min(usize, ksize)
        assert field(k, after, "size") == written and field(k, after, "flags") == 0
        caps = field(k, after, "compat_capabilities")
        assert caps is not None and caps & ~KVM_PPC_COMPAT_BITMASK == 0
        assert not any(after[24:usize]) or ksize > 24
        assert after[usize:] == before[usize:]
    elif err == errno.E2BIG:
        if usize > page:
            assert after == before
        else:
            expected = bytearray(before)
            struct.pack_into("<Q" if k.arch.byteorder == "little" else ">Q", expected, 0, ksize)
            assert usize > ksize and after == bytes(expected)
    elif err == errno.EFAULT and c["writable"]:
        assert after[usize:] == before[usize:] if usize < length else True
    else:
        assert after == before


@SETTINGS
@given(st.sampled_from(HOSTS), st.sampled_from(ABIS), st.integers(0, 2**64 - 1))
def test_v4_ignores_flags_and_v5_refuses_them_before_the_backend(host: str, abi: str, flags: int) -> None:
    k = Kernel.from_profile(host, abi=abi)
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    bo = k.arch.byteorder
    addr = k.memory.map(24, data=k.rev.layout.pack(bo, size=24, flags=flags))
    try:
        k.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, addr)
        err = 0
    except OSError as exc:
        err = exc.errno or 0
    if abi != "v4" and flags:
        assert err == errno.EINVAL
    else:
        zero = Kernel.from_profile(host, abi=abi)
        zvm = int(zero.ioctl(zero.open(), zero.KVM_CREATE_VM, 0))
        try:
            zero.ioctl(zvm, zero.KVM_PPC_GET_COMPAT_CAPS, zero.rev.layout.pack(bo, size=24))
            zerr = 0
        except OSError as exc:
            zerr = exc.errno or 0
        assert err == zerr  # flags change nothing


@pytest.mark.parametrize("ksize", [24, 32, 40])
@pytest.mark.parametrize("abi", ["v4", "v5"])
def test_drafts_size_rule_at_every_boundary(abi: str, ksize: int) -> None:
    """Exhaustive where random sampling is thin: success exactly at the permitted sizes."""
    for size in BOUNDARIES:
        c = {"host": "powervm-p11", "abi": abi, "ksize": ksize, "size": size, "flags": 0, "caps_in": 0}
        _, err, _, _, _ = run({**c, "trailing": b"", "length": 64, "writable": True})
        ok = 24 <= size <= ksize if abi == "v5" else size >= ksize
        too_big = abi == "v5" and size > ksize
        assert err == (None if ok else errno.E2BIG if too_big else errno.EINVAL), (size, err)


@pytest.mark.parametrize("page_size", [4096, 65536])
@pytest.mark.parametrize("ksize", [24, 32, 40])
def test_linux_7_3_size_rule_at_every_boundary(ksize: int, page_size: int) -> None:
    """usize < 24: EINVAL; > PAGE_SIZE: E2BIG; otherwise success (the tail is zero)."""
    host = attrs.evolve(profile.load("powervm-p11"), page_size=page_size)
    for size in [*BOUNDARIES, page_size - 1, page_size, page_size + 1]:
        k = Kernel(host, LINUX_7_3, ksize=ksize)
        vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
        length = min(max(size, 24), page_size + 8)
        addr = k.memory.map(length, data=LINUX_7_3.layout.pack("little", size=size))
        try:
            k.ioctl(vm, 0x2000AEB8, addr)
            err = None
        except OSError as exc:
            err = exc.errno
        expected = errno.EINVAL if size < 24 else errno.E2BIG if size > page_size else None
        assert err == expected, (size, err)
