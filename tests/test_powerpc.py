"""kvm_arch_vm_ioctl(KVM_PPC_GET_COMPAT_CAPS) and KVM_CHECK_EXTENSION, as the kernel behaves.

The behaviour table: every profile × every revision (conftest.BEHAVIOUR); module init; the
start-up capabilities; then every errno path of each handler, reached through the
user-memory model."""

from __future__ import annotations

import errno

import attrs
import pytest
from conftest import BEHAVIOUR, REVS, Vm, caps, evolved

from kvmsim import Kernel, KvmError, ProfileError
from kvmsim.kernel import profile
from kvmsim.uapi import ARCHES, LINUX_7_3, POWER11, REVISIONS, AbiRevision

E = errno
DRAFTS_AND_73 = ("linux-7.3", "v5", "v4")


def test_the_table_covers_every_profile() -> None:
    assert sorted(BEHAVIOUR) == profile.names()


def sent(k: Kernel) -> AbiRevision:
    """The revision whose request and layout a client sends: the kernel's, or on a kernel
    without the feature, the shipped one."""
    return k.rev if k.rev.ioctl is not None else LINUX_7_3


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", sorted(BEHAVIOUR))
def test_behaviour_table(host: str, abi: str) -> None:
    cap_dev, cap_vm, result = BEHAVIOUR[host][abi]
    k = Kernel.from_profile(host, abi=abi)
    asked = sent(k)
    assert asked.cap is not None
    if result == "open:ENOENT":
        with pytest.raises(FileNotFoundError):
            k.open()
        return
    dev = k.open()
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, asked.cap) == cap_dev
    other = 249 if asked.cap == 250 else 250
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, other) == 0  # the other revisions' number
    if isinstance(result, str) and result.startswith("create:"):
        for vm_type in range(4):
            with pytest.raises(OSError) as exc:
                k.ioctl(dev, k.KVM_CREATE_VM, vm_type)
            assert errno.errorcode[exc.value.errno or 0] == result.removeprefix("create:")
        return
    vm = int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, asked.cap) == cap_vm
    bo = k.arch.byteorder
    before = asked.layout.pack(bo, size=24)
    addr = k.memory.map(24, data=before)
    request = asked.request(k.arch)
    assert request is not None
    if isinstance(result, str):
        with pytest.raises(OSError) as exc:
            k.ioctl(vm, request, addr)
        assert errno.errorcode[exc.value.errno or 0] == result
        assert k.memory.read(addr, 24) == before  # nothing written
    else:
        assert k.ioctl(vm, request, addr) == 0
        assert k.memory.read(addr, 24) == asked.layout.pack(bo, size=24, compat_capabilities=result)


@pytest.mark.parametrize(
    ("host", "module", "err", "dmesg"),
    [
        ("powervm-hcall-unavailable", "kvm_hv", "ENODEV", "falling back to nestedv1 (rc=-2)"),
        ("powervm-hcall-unavailable", "kvm_hv", "ENODEV", "Parent hypervisor does not support nesting (rc=-2)"),
        ("kvm-l1-p8-compat", "kvm_hv", "ENODEV", None),
        ("pseries-kvm-pr-radix", "kvm_pr", "EIO", None),
    ],
)
def test_refused_module_leaves_kvm_ko_and_says_why(host: str, module: str, err: str, dmesg: str | None) -> None:
    k = Kernel.from_profile(host)
    assert errno.errorcode[k.kvm.load_errors[module].errno or 0] == err  # type: ignore[attr-defined]
    assert k.kvm.loaded_modules == ["kvm"]
    if dmesg is not None:
        assert any(dmesg in line for line in k.dmesg)
    k.open()  # /dev/kvm is kvm.ko's


@pytest.mark.parametrize(
    ("changes", "loads", "lines"),
    [
        # a QEMU L0 with cap-nested-hv: v2 fails, v1 works (every boot logs the fall-back)
        (
            {"nested_apis": (1,)},
            True,
            ["kvm-hv: nestedv2 get capabilities hcall failed, falling back to nestedv1 (rc=-2)"],
        ),
        ({"nested_apis": (2,)}, True, []),  # cap-nested-papr: quiet
        ({"nested_apis": (1, 2)}, True, []),  # v2 wins
        (
            {"nested_apis": ()},
            False,
            [
                "kvm-hv: nestedv2 get capabilities hcall failed, falling back to nestedv1 (rc=-2)",
                "kvm-hv: Parent hypervisor does not support nesting (rc=-2)",
            ],
        ),
        (
            {"nested_apis": (2,), "set_capabilities": -4},
            False,
            ["kvm-hv: Could not configure parent hypervisor capabilities (rc=-4)"],
        ),
    ],
)
def test_kvmhv_nested_init(changes: dict[str, object], loads: bool, lines: list[str]) -> None:
    base = profile.load("qemu-papr-p10")
    host = attrs.evolve(base, hypervisor=attrs.evolve(base.hypervisor, **changes))
    k = Kernel(host, LINUX_7_3)
    assert (k.kvm.loaded_modules == ["kvm", "kvm_hv"]) is loads
    assert k.dmesg == lines


def test_hash_mmu_l1_refuses_kvm_hv() -> None:
    k = Kernel(evolved("kvm-l1-p10", mmu="hash"), LINUX_7_3)
    assert k.kvm.load_errors["kvm_hv"].errno == E.ENODEV  # type: ignore[attr-defined]


STARTUP = {  # cap -> (sys, vm) per host kind, from the code (and real-kernel.md's recordings)
    "nested v1 L1": ("kvm-l1-p10", {160: (1, 1), 134: (1, 1), 135: (0, 0), 64: (1, 1), 147: (15, 15)}),
    "nested v2 L1": ("qemu-papr-p10", {160: (0, 0), 134: (1, 1), 135: (0, 0), 64: (1, 1), 147: (15, 15)}),
    "bare metal": ("powernv-p10", {160: (1, 1), 134: (1, 1), 135: (1, 1), 64: (1, 1), 147: (15, 15)}),
    "kvm_pr VM": ("pseries-kvm-pr", {160: (0, 0), 134: (0, 0), 135: (0, 0), 64: (0, 0), 147: (1, 1)}),
}


@pytest.mark.parametrize("kind", STARTUP)
def test_startup_capabilities(kind: str) -> None:
    host, expected = STARTUP[kind]
    k = Kernel.from_profile(host)
    dev = k.open()
    vm = int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
    for cap, (on_dev, on_vm) in expected.items():
        assert (k.ioctl(dev, k.KVM_CHECK_EXTENSION, cap), k.ioctl(vm, k.KVM_CHECK_EXTENSION, cap)) == (on_dev, on_vm), (
            cap
        )
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, 66) == 2048  # KVM_CAP_MAX_VCPUS: NR_CPUS
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, 10) == 32767  # KVM_CAP_NR_MEMSLOTS
    # PAGE_SIZE, and CONFIG_KVM_MMIO's page where the build has kvm_pr (KVM_BOOK3S_PR_POSSIBLE)
    assert k.ioctl(dev, k.KVM_GET_VCPU_MMAP_SIZE, 0) == 65536 * (2 if k.host.book3s_pr else 1)


def test_refused_kvm_hv_answers_as_no_hv() -> None:
    k = Kernel.from_profile("powervm-hcall-unavailable")
    dev = k.open()
    assert [k.ioctl(dev, k.KVM_CHECK_EXTENSION, c) for c in (250, 64, 147, 134)] == [0, 0, 1, 0]


def test_big_endian_host_writes_big_endian_bytes() -> None:
    s = Vm("powervm-p11-be", "v5")
    addr = s.k.memory.map(24, data=(24).to_bytes(8, "big") + bytes(16))
    s.call(addr)
    assert s.k.memory.read(addr, 24) == (24).to_bytes(8, "big") + bytes(8) + bytes.fromhex("3000000000000000")


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("other", [r for r in REVS if r != "none"])
def test_a_kernel_knows_only_its_own_request(abi: str, other: str) -> None:
    s = Vm("powervm-p11", abi)
    request = REVISIONS[other].request(s.k.arch)
    assert request is not None
    addr = s.k.memory.map(24, data=REVISIONS[other].layout.pack("little", size=24))
    if other == abi:
        assert s.k.ioctl(s.vm, request, addr) == 0
    else:
        with pytest.raises(OSError) as exc:
            s.k.ioctl(s.vm, request, addr)
        assert exc.value.errno == E.ENOTTY
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.dev, request, addr)
    assert exc.value.errno == E.EINVAL  # on /dev/kvm: kvm_arch_dev_ioctl


@pytest.mark.parametrize("abi", DRAFTS_AND_73)
def test_x86_encoded_request_is_unknown_to_a_powerpc_kernel(abi: str) -> None:
    s = Vm("powervm-p11", abi)
    x86 = s.k.rev.request(ARCHES["x86_64"])
    assert x86 is not None
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.vm, x86, s.k.memory.map(24, data=s.struct()))
    assert exc.value.errno == E.ENOTTY
    with pytest.raises(OSError) as exc:
        s.k.ioctl(s.dev, 0xAE03, 250)  # x86 KVM_CHECK_EXTENSION
    assert exc.value.errno == E.EINVAL


def test_overridden_numbers_are_the_kernels_numbers() -> None:
    k = Kernel.from_profile("powervm-p11", abi="v5", cap=251, ioctl_nr=0xB9)
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    assert k.KVM_PPC_GET_COMPAT_CAPS == 0x2000AEB9
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, 251) == 1
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, 250) == 0
    buf = bytearray(k.rev.layout.pack("little", size=24))
    k.ioctl(vm, 0x2000AEB9, buf)
    assert k.rev.layout.unpack("little", buf)["compat_capabilities"] == caps("P10", "P11")


# -- every errno path of the drafts' handlers (abi.md §3) ----------------------


def test_v4_efault_reading_size() -> None:
    s = Vm("powervm-p11", "v4")
    assert s.errno_of(0) == E.EFAULT
    assert s.errno_of(s.k.memory.map(8)) == E.EFAULT  # size lives at offset 8, past the mapping


def test_v5_efault_reading_size() -> None:
    s = Vm("powervm-p11", "v5")
    assert s.errno_of(0) == E.EFAULT
    assert s.errno_of(s.k.memory.map(4)) == E.EFAULT


@pytest.mark.parametrize("abi", DRAFTS_AND_73)
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


@pytest.mark.parametrize("abi", ["v5", "linux-7.3"])
def test_flags_einval_comes_before_enotty(abi: str) -> None:
    s = Vm("pseries-kvm-pr", abi)
    before = s.struct(flags=1)
    addr = s.k.memory.map(24, data=before)
    assert s.errno_of(addr) == E.EINVAL
    assert s.k.memory.read(addr, 24) == before


@pytest.mark.parametrize("abi", DRAFTS_AND_73)
def test_enotty_for_a_kvm_pr_vm(abi: str) -> None:
    s = Vm("pseries-kvm-pr", abi)
    assert s.errno_of(s.k.memory.map(24, data=s.struct())) == E.ENOTTY


@pytest.mark.parametrize("abi", DRAFTS_AND_73)
def test_backend_error_writes_nothing(abi: str) -> None:
    s = Vm("kvm-l1-no-cpu-version", abi)
    before = s.struct(caps=0x55)
    addr = s.k.memory.map(24, data=before)
    assert s.errno_of(addr) == E.EINVAL
    assert s.k.memory.read(addr, 24) == before


@pytest.mark.parametrize("abi", DRAFTS_AND_73)
def test_copy_out_fault_is_efault(abi: str) -> None:
    s = Vm("powervm-p11", abi)
    assert s.errno_of(s.k.memory.map(24, writable=False, data=s.struct())) == E.EFAULT


def test_v5_input_capabilities_are_ignored() -> None:
    s = Vm("powervm-p10", "v5")
    addr = s.k.memory.map(24, data=s.struct(caps=2**64 - 1))
    s.call(addr)
    assert s.fields(addr)["compat_capabilities"] == caps("P10")


@pytest.mark.parametrize("abi", ["v5", "linux-7.3"])
def test_cached_zero_caps_succeeds_and_warns_once(abi: str) -> None:
    base = profile.load("powervm-p10")
    s = Vm(attrs.evolve(base, hypervisor=attrs.evolve(base.hypervisor, offers=(POWER11,))), abi)
    for _ in range(2):
        addr = s.k.memory.map(24, data=s.struct())
        assert s.call(addr) == 0
        assert s.fields(addr)["compat_capabilities"] == 0
    assert len([line for line in s.k.dmesg if "nested_capabilities is 0" in line]) == 1


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


# -- a revision's behaviour is the kernel side's (uapi has its numbers) -------------------------


def test_uapi_holds_numbers_and_layouts_only() -> None:
    from kvmsim.uapi import CompatCapsAbi

    assert [f.name for f in attrs.fields(CompatCapsAbi)] == ["layout", "cap", "nr", "macro"]


@pytest.mark.parametrize("rev", [r for r in REVISIONS.values() if r.ioctl is not None], ids=lambda r: r.name)
def test_every_revision_has_its_steps_here(rev: AbiRevision) -> None:
    from kvmsim.kernel.book3s_hv import HV_STEPS
    from kvmsim.kernel.powerpc import STEPS

    assert rev.rules in STEPS and rev.rules in HV_STEPS


def test_a_revision_whose_rules_no_kernel_has_is_one_line() -> None:
    from kvmsim.uapi import V5

    with pytest.raises(ValueError, match="revision 'v6': no kernel has the rules 'v6'"):
        Kernel.from_profile("powervm-p11", abi=attrs.evolve(V5, name="v6", rules="v6"))


@pytest.mark.parametrize(("nested", "cap"), [(True, 1), (False, 0)])
def test_kvm_hv_nested_0_answers_no_nested_hv_and_nothing_else_changes(nested: bool, cap: int) -> None:
    """modprobe kvm_hv nested=0 (a real 7.3 kernel in the lab: nested-hv-p10-nested-0):
    KVM_CAP_PPC_NESTED_HV 0 on both fds; the capability and the ioctl answer as before."""
    host = attrs.evolve(profile.load("qemu-nested-hv-p10"), kvm_hv_nested=nested)
    k = Kernel(host, LINUX_7_3)
    dev = k.open()
    vm = k.ioctl(dev, k.KVM_CREATE_VM, 0)
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, 160) == k.ioctl(vm, k.KVM_CHECK_EXTENSION, 160) == cap
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, 250) == 1


def test_a_kvm_hv_parameter_on_a_host_without_kvm_hv_is_one_line() -> None:
    text = profile.resolve("powernv-p10").read_text().replace('modules = ["kvm_hv"]', "modules = []")
    with pytest.raises(ProfileError, match=r"kvm_hv\.nested: a parameter of kvm_hv"):
        profile.parse(text + "\n[kvm_hv]\nnested = false\n", name="x", where="x")


# -- kvm_vm_ioctl_check_extension: the capabilities host facts decide (the lab's recordings
# hold every number 0-300 on both fds; these are the rows a profile changes) --------------------

CAP_TABLE = [
    # cap, host, on /dev/kvm, on a VM (None: no VM can be made)
    (115, "powernv-p10", 1, 1),  # KVM_CAP_PPC_HWRNG: powernv's RNG
    (115, "powervm-p11", 1, 1),  # ... or PowerVM's H_RANDOM
    (115, "qemu-nested-hv-p10", 0, 0),  # QEMU's pseries has none without spapr-rng
    (169, "powernv-p10", 1, 1),  # KVM_CAP_PPC_IRQ_XIVE: native XIVE on PowerNV only
    (169, "qemu-nested-papr-p10", 0, 0),
    (82, "kvm-l1-p10", 0, 0),  # KVM_CAP_IRQFD_RESAMPLE: not under XIVE (POWER9 on)
    (194, "qemu-nested-hv-p10", 1, 1),  # KVM_CAP_PPC_DAWR1: POWER10's second DAWR
    (194, "qemu-nested-hv-p10-compat-p9", 0, 0),  # ... not in POWER9 mode
    (194, "qemu-no-nesting-p10", 0, None),  # ... nor without kvm_hv
    (48, "qemu-nested-hv-p10", 0, 0),  # KVM_CAP_PPC_PAIRED_SINGLES: PR only
    (48, "qemu-no-nesting-p10", 1, None),
    (48, "pseries-kvm-pr", 1, 1),  # a PR VM
    (80, "pseries-kvm-pr", 0, 0),  # KVM_CAP_PPC_ALLOC_HTAB: HV only
    (9, "qemu-nested-hv-p10", 1, 1),  # KVM_CAP_NR_VCPUS: the partition's one cpu
    (128, "qemu-nested-hv-p10", 16384, 16384),  # KVM_CAP_MAX_VCPU_ID: 8 threads x NR_CPUS
    (32, "qemu-nested-hv-p10", 1, 1),  # KVM_CAP_IRQFD: CONFIG_HAVE_KVM_IRQCHIP
    (77, "qemu-nested-hv-p10", 0, 0),  # KVM_CAP_SIGNAL_MSI: no CONFIG_HAVE_KVM_MSI on powerpc
    (77, "x86_64", 1, 1),
    (15, "x86_64", 2, 2),  # KVM_CAP_COALESCED_MMIO: KVM_COALESCED_MMIO_PAGE_OFFSET
    (210, "qemu-powernv9", 1, 1),  # KVM_CAP_PPC_AIL_MODE_3
    (210, "qemu-no-nesting-p10", 0, None),
]


@pytest.mark.parametrize(("cap", "host", "on_dev", "on_vm"), CAP_TABLE)
def test_a_capability_host_facts_decide(cap: int, host: str, on_dev: int, on_vm: int | None) -> None:
    k = Kernel.from_profile(host)
    dev = k.open()
    assert k.ioctl(dev, k.KVM_CHECK_EXTENSION, cap) == on_dev
    try:
        vm = int(k.ioctl(dev, k.KVM_CREATE_VM, 0))
    except KvmError:
        assert on_vm is None
        return
    assert k.ioctl(vm, k.KVM_CHECK_EXTENSION, cap) == on_vm


def test_a_revision_is_a_value_a_user_can_derive() -> None:
    """attrs.evolve(LINUX_7_3, name=...) is a kernel of its own name with 7.3's rules (the steps
    are chosen by ``rules``, never by the name)."""
    import attrs
    from kvmcompat import query

    from kvmsim import SimDevice
    from kvmsim.kernel.profile import load
    from kvmsim.user.simulated import Kernel as Booted

    backport = attrs.evolve(LINUX_7_3, name="linux-7.3-backport")
    kernel = Booted(load("powervm-p11"), backport)
    assert kernel.rev.name == "linux-7.3-backport"
    answer = query(SimDevice(kernel))
    assert (answer.abi, answer.modes) == ("linux-7.3", ("power10", "power11"))  # the client knows the numbers


# Documentation/virt/kvm/api.rst: the ioctls each capability the simulated kernels answer non-zero
# on some profile stands for (the rest of them stand for an ENABLE_CAP, a hcall, kvm_run, a register)
CAP_IOCTLS = {
    "KVM_CAP_USER_MEMORY": ["KVM_SET_USER_MEMORY_REGION"], "KVM_CAP_USER_MEMORY2": ["KVM_SET_USER_MEMORY_REGION2"],
    "KVM_CAP_COALESCED_MMIO": ["KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO"],
    "KVM_CAP_COALESCED_PIO": ["KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO"],
    "KVM_CAP_SET_GUEST_DEBUG": ["KVM_SET_GUEST_DEBUG"], "KVM_CAP_IRQFD": ["KVM_IRQFD"],
    "KVM_CAP_IRQFD_RESAMPLE": ["KVM_IRQFD"], "KVM_CAP_IOEVENTFD": ["KVM_IOEVENTFD"],
    "KVM_CAP_IOEVENTFD_ANY_LENGTH": ["KVM_IOEVENTFD"], "KVM_CAP_PPC_SEGSTATE": ["KVM_GET_SREGS", "KVM_SET_SREGS"],
    "KVM_CAP_PPC_UNSET_IRQ": ["KVM_INTERRUPT"], "KVM_CAP_PPC_IRQ_LEVEL": ["KVM_INTERRUPT"],
    "KVM_CAP_ENABLE_CAP": ["KVM_ENABLE_CAP"], "KVM_CAP_PPC_GET_PVINFO": ["KVM_PPC_GET_PVINFO"],
    "KVM_CAP_SPAPR_TCE": ["KVM_CREATE_SPAPR_TCE"], "KVM_CAP_SPAPR_TCE_64": ["KVM_CREATE_SPAPR_TCE_64"],
    "KVM_CAP_ONE_REG": ["KVM_GET_ONE_REG", "KVM_SET_ONE_REG"], "KVM_CAP_PPC_GET_SMMU_INFO": ["KVM_PPC_GET_SMMU_INFO"],
    "KVM_CAP_PPC_ALLOC_HTAB": ["KVM_PPC_ALLOCATE_HTAB"], "KVM_CAP_PPC_HTAB_FD": ["KVM_PPC_GET_HTAB_FD"],
    "KVM_CAP_DEVICE_CTRL": ["KVM_CREATE_DEVICE"], "KVM_CAP_PPC_RTAS": ["KVM_PPC_RTAS_DEFINE_TOKEN"],
    "KVM_CAP_SPAPR_TCE_VFIO": ["KVM_CREATE_DEVICE"], "KVM_CAP_ENABLE_CAP_VM": ["KVM_ENABLE_CAP"],
    "KVM_CAP_CHECK_EXTENSION_VM": ["KVM_CHECK_EXTENSION"], "KVM_CAP_MAX_VCPU_ID": ["KVM_CREATE_VCPU"],
    "KVM_CAP_SPAPR_RESIZE_HPT": ["KVM_PPC_RESIZE_HPT_PREPARE", "KVM_PPC_RESIZE_HPT_COMMIT"],
    "KVM_CAP_PPC_MMU_RADIX": ["KVM_PPC_CONFIGURE_V3_MMU", "KVM_PPC_GET_RMMU_INFO"],
    "KVM_CAP_PPC_MMU_HASH_V3": ["KVM_PPC_CONFIGURE_V3_MMU"], "KVM_CAP_IMMEDIATE_EXIT": ["KVM_RUN"],
    "KVM_CAP_PPC_GET_CPU_CHAR": ["KVM_PPC_GET_CPU_CHAR"], "KVM_CAP_BINARY_STATS_FD": ["KVM_GET_STATS_FD"],
}  # fmt: skip


def test_every_advertised_capabilitys_ioctls_are_modelled_or_named() -> None:
    """The rule: an ioctl behind a capability some simulated kernel answers non-zero is modelled
    (a name the simulator decodes) or named in UNMODELLED_IOCTLS (with that capability where the
    capability is its own)."""
    from kvmsim.uapi import UNMODELLED_IOCTLS, known_requests
    from kvmsim.uapi import _kvm_h as kvm_h

    arch = ARCHES["ppc64le"]
    modelled = set(known_requests(arch).values())
    named = {u.name for u in UNMODELLED_IOCTLS if u.only in (None, "powerpc")}
    advertised = set()
    for name in profile.names():
        k = Kernel.from_profile(name)
        if not k.arch.is_powerpc or not k.kvm.loaded:
            continue
        dev = k.open()
        fds = [dev, *(fd for t in (0, 1, 2) if (fd := _vm_or_none(k, dev, t)) is not None)]
        caps = {n: c for n, c in vars(kvm_h).items() if n.startswith("KVM_CAP_") and isinstance(c, int)}
        advertised |= {n for n, c in caps.items() if any(k.ioctl(fd, k.KVM_CHECK_EXTENSION, c) > 0 for fd in fds)}
    assert "KVM_CAP_SPAPR_TCE" in advertised and "KVM_CAP_IRQFD" in advertised
    missing = {(c, io) for c in advertised for io in CAP_IOCTLS.get(c, []) if io not in modelled | named}
    assert missing == set()


def _vm_or_none(k: Kernel, dev: int, vm_type: int) -> int | None:
    try:
        return int(k.ioctl(dev, k.KVM_CREATE_VM, vm_type))
    except OSError:
        return None


@pytest.mark.parametrize("host", profile.names())
def test_an_advertised_capabilitys_ioctl_is_never_a_bare_enotty(host: str) -> None:
    """Every ioctl QEMU makes that kvmsim does not model yet is named in the reason, with the
    capability the simulated kernel advertises for it (as the real kernel does)."""
    from kvmsim.uapi import unmodelled

    k = Kernel.from_profile(host)
    if not k.kvm.loaded:
        pytest.skip("no /dev/kvm on this host")
    try:
        vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    except OSError:
        pytest.skip("no VM on this host")
    for number, missing in unmodelled(k.arch).items():
        with pytest.raises(OSError) as exc:
            k.sys_ioctl(vm, number, 0)
        reason = exc.value.reason  # type: ignore[attr-defined]
        assert reason.startswith(f"not modelled: {missing.name}"), reason
        advertised = missing.cap is not None and k.ioctl(vm, k.KVM_CHECK_EXTENSION, missing.cap)
        assert (f"capability {missing.cap} is advertised" in reason) == bool(advertised)
