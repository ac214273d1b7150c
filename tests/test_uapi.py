"""The numbers of the reference's table, computed from the revisions' data."""

from __future__ import annotations

import pytest

from kvmsim import uapi
from kvmsim.uapi import ARCHES, LINUX_7_3, NONE, V4, V5


@pytest.mark.parametrize(
    ("rev", "arch", "number"),
    [
        (V4, "ppc64le", 0x4018AEE4),
        (V4, "ppc64", 0x4018AEE4),
        (V5, "ppc64le", 0x2000AEE4),
        (V5, "ppc64", 0x2000AEE4),
        (V4, "x86_64", 0x8018AEE4),
        (V5, "x86_64", 0x0000AEE4),
        (LINUX_7_3, "ppc64le", 0x2000AEB8),
        (LINUX_7_3, "ppc64", 0x2000AEB8),
        (LINUX_7_3, "x86_64", 0x0000AEB8),
        (NONE, "ppc64le", None),
    ],
)
def test_compat_caps_request_numbers(rev: uapi.AbiRevision, arch: str, number: int | None) -> None:
    assert rev.request(ARCHES[arch]) == number


@pytest.mark.parametrize(
    ("rev", "cap", "layout", "draft"),
    [
        (LINUX_7_3, 250, ("size", "flags", "compat_capabilities"), False),
        (NONE, None, None, False),
        (V5, 250, ("size", "flags", "compat_capabilities"), True),
        (V4, 249, ("flags", "size", "compat_capabilities"), True),
    ],
)
def test_revisions_table(rev: uapi.AbiRevision, cap: int | None, layout: tuple[str, ...] | None, draft: bool) -> None:
    assert (rev.cap, rev.ioctl.layout.fields if rev.ioctl else None, rev.draft) == (cap, layout, draft)
    assert uapi.DEFAULT_REVISION == "linux-7.3"


def test_startup_capability_numbers_are_the_headers() -> None:
    assert uapi.STARTUP_CAPS == {
        "KVM_CAP_NR_MEMSLOTS": 10,
        "KVM_CAP_PPC_SMT": 64,
        "KVM_CAP_MAX_VCPUS": 66,
        "KVM_CAP_PPC_MMU_RADIX": 134,
        "KVM_CAP_PPC_MMU_HASH_V3": 135,
        "KVM_CAP_PPC_SMT_POSSIBLE": 147,
        "KVM_CAP_PPC_NESTED_HV": 160,
    }


@pytest.mark.parametrize(
    ("arch", "api", "create", "check"),
    [("ppc64le", 0x2000AE00, 0x2000AE01, 0x2000AE03), ("x86_64", 0xAE00, 0xAE01, 0xAE03)],
)
def test_kvm_request_numbers(arch: str, api: int, create: int, check: int) -> None:
    a = ARCHES[arch]
    assert (a.kvm_get_api_version(), a.kvm_create_vm(), a.kvm_check_extension()) == (api, create, check)


def test_powerpc_write_direction_is_4_at_bit_29() -> None:
    assert uapi.POWERPC_IOC.iow(0xAE, 0x42, 8) == 0x8008AE42
    assert uapi.GENERIC_IOC.iow(0xAE, 0x42, 8) == 0x4008AE42


def test_ioctl_size_must_fit_the_architectures_size_bits() -> None:
    uapi.GENERIC_IOC.ior(0xAE, 1, (1 << 14) - 1)
    with pytest.raises(ValueError, match="13 bits"):
        uapi.POWERPC_IOC.ior(0xAE, 1, 1 << 13)


@pytest.mark.parametrize(("rev", "cap"), [(V4, 249), (V5, 250)])
def test_capability_numbers(rev: uapi.AbiRevision, cap: int) -> None:
    assert rev.cap == cap


@pytest.mark.parametrize(
    ("rev", "offsets"),
    [
        (V4, {"flags": 0, "size": 8, "compat_capabilities": 16}),
        (V5, {"size": 0, "flags": 8, "compat_capabilities": 16}),
    ],
)
def test_struct_layouts(rev: uapi.AbiRevision, offsets: dict[str, int]) -> None:
    assert rev.layout.size == 24
    assert {f: rev.layout.offset(f) for f in offsets} == offsets  # type: ignore[arg-type]


def test_msb0_bits() -> None:
    assert uapi.KVM_PPC_COMPAT_CAP_POWER9 == 0x4000000000000000
    assert uapi.KVM_PPC_COMPAT_CAP_POWER10 == 0x2000000000000000
    assert uapi.KVM_PPC_COMPAT_CAP_POWER11 == 0x1000000000000000
    assert uapi.KVM_PPC_COMPAT_BITMASK == 0x7000000000000000


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_pack_is_in_the_kernels_byte_order(byteorder: uapi.ByteOrder) -> None:
    data = V5.layout.pack(byteorder, size=24, compat_capabilities=1 << 61)
    assert data[:8] == (24).to_bytes(8, byteorder)
    assert data[16:] == (1 << 61).to_bytes(8, byteorder)


def test_revision_overrides_are_values() -> None:
    rev = uapi.revision("v5", cap=251, nr=0xB8)
    assert (rev.cap, rev.request(ARCHES["ppc64le"])) == (251, 0x2000AEB8)
    assert V5.cap == 250
    with pytest.raises(ValueError, match="unknown ABI revision 'v6'"):
        uapi.revision("v6")
    with pytest.raises(ValueError, match="8 bits"):
        uapi.revision("v4", nr=0x100)


@pytest.mark.parametrize(
    ("pvr", "mode"), [(0x004D0200, "power8"), (0x004E1202, "power9"), (0x00800200, "power10"), (0x00820200, "power11")]
)
def test_mode_of_pvr(pvr: int, mode: str) -> None:
    found = uapi.mode_of_pvr(pvr)
    assert found is not None and found.name == mode
    assert uapi.mode_of_pvr(0x12345678) is None


V5_HEADER = """
#define KVM_CAP_PPC_COMPAT_CAPS 250
/* for KVM_PPC_GET_COMPAT_CAPS */
struct kvm_ppc_compat_caps {
	__u64 size;                 /* Size of this structure */
	__u64 flags;                /* Reserved for future use */
	__u64 compat_capabilities;  /* Capabilities supported by the host */
};
#define KVM_PPC_GET_COMPAT_CAPS	_IO(KVMIO, 0xe4)
"""
V4_HEADER = """
#define KVM_CAP_PPC_COMPAT_CAPS 249
struct kvm_ppc_compat_caps {
	__u64 flags;
	__u64 size;
	__u64 compat_capabilities;
};
#define KVM_PPC_GET_COMPAT_CAPS _IOR(KVMIO,  0xe4, struct kvm_ppc_compat_caps)
"""


@pytest.mark.parametrize(("text", "rev"), [(V4_HEADER, V4), (V5_HEADER, V5)])
def test_a_kernel_header_gives_back_its_revision(text: str, rev: uapi.AbiRevision) -> None:
    assert uapi.revision_from_header(text, "kvm.h") == rev


def test_a_header_with_other_numbers() -> None:
    rev = uapi.revision_from_header(V5_HEADER.replace("0xe4", "0xb8").replace("250", "251"), "kvm.h")
    assert (rev.name, rev.cap, rev.request(ARCHES["ppc64le"])) == ("linux-7.3", 251, 0x2000AEB8)
    rev = uapi.revision_from_header(V5_HEADER.replace("0xe4", "0xb9"), "kvm.h")
    assert (rev.name, rev.request(ARCHES["ppc64le"])) == ("linux-7.3", 0x2000AEB9)  # _IO: the shipped rules


def test_the_shipped_header_is_linux_7_3() -> None:
    rev = uapi.revision_from_header(V5_HEADER.replace("0xe4", "0xb8"), "kvm.h")
    assert rev == uapi.LINUX_7_3


def test_negotiation_order() -> None:
    names = [r.name for r in uapi.negotiable(uapi.REVISIONS.values())]
    assert names == ["linux-7.3", "v4"]  # 250 is the shipped kernel's; v5 only when forced


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "kvm.h: no KVM_CAP_PPC_COMPAT_CAPS definition"),
        (V5_HEADER.replace("#define KVM_PPC_GET", "#define X"), "no KVM_PPC_GET_COMPAT_CAPS definition"),
        (V5_HEADER.replace("struct kvm_ppc_compat_caps {", "struct other {"), "no struct kvm_ppc_compat_caps"),
        (V5_HEADER.replace("__u64 flags;", "__u64 reserved;"), "expected flags, size, compat_capabilities"),
        (V5_HEADER.replace("0xe4", "0x1e4"), "nr 0x1e4 does not fit 8 bits"),
        (V5_HEADER.replace("250", "KVM_CAP_BASE"), "is not a number"),
    ],
)
def test_a_header_without_the_definitions_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        uapi.revision_from_header(text, "kvm.h")


@pytest.mark.parametrize(
    ("number", "name"),
    [(22, "EINVAL"), (95, "EOPNOTSUPP"), (35, "EDEADLK"), (133, "EHWPOISON"), (11, "EAGAIN"), (9999, "errno 9999")],
)
def test_errname_says_the_kernels_name(number: int, name: str) -> None:
    """Where two names share a number, the kernel's and glibc's strerrorname_np (what the lab's
    prober prints): Python's errno calls 95 ENOTSUP, a name the kernel has not."""
    assert uapi.errname(number) == name
