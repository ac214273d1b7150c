"""The client's contract, the same suite over the simulator (every profile × revision, the
expectations read off the kernel's behaviour table) and over this machine's real /dev/kvm."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import BEHAVIOUR, MB, REVS, modes_of
from kvmcompat import (
    CompatCaps,
    DeviceTree,
    KernelError,
    NoDevice,
    Options,
    RealDevice,
    Unsupported,
    decode,
    machine_arch,
    query,
)
from kvmcompat.cli import exit_code

from kvmsim import Kernel, SimDevice
from kvmsim.kernel import hostfs
from kvmsim.uapi import ARCHES, Arch

P9, P10, P11 = "power9", "power10", "power11"


def expected(host: str, abi: str) -> tuple[str, ...] | str:
    """What the client reports on ``host`` booted with ``abi``, from the behaviour table:
    the modes, the kernel's errno name, or the kind of a host that cannot answer."""
    _, cap_vm, result = BEHAVIOUR[host][abi]
    if isinstance(result, int):
        return modes_of(result)
    if result.startswith("open:"):
        return "no-device"
    if result.startswith("create:"):
        return result.removeprefix("create:")  # KVM_CREATE_VM failed: a kernel error
    return "unsupported" if cap_vm == 0 else result  # a forced v5 asks its capability first too


def client_options(abi: str) -> Options | None:
    """v5 shares capability 250 with linux-7.3: a client speaks it only when forced."""
    return Options(abi="v5") if abi == "v5" else None


def outcome(device: SimDevice | RealDevice, opts: Options | None = None) -> tuple[str, ...] | str:
    try:
        result = query(device, opts)
    except KernelError as exc:
        assert exit_code(exc) == 1 and exc.name is not None
        return exc.name
    except (NoDevice, Unsupported) as exc:
        assert exit_code(exc) == 3
        return exc.kind
    assert result.source == "ioctl"
    assert result.recommended == result.modes[-1]
    return result.modes


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", sorted(BEHAVIOUR))
def test_contract_on_the_simulator(host: str, abi: str) -> None:
    kernel = Kernel.from_profile(host, abi=abi)
    assert outcome(SimDevice(kernel), client_options(abi)) == expected(host, abi)
    assert kernel.fds() == {}  # every fd closed, on success and failure


@pytest.mark.parametrize("abi", ["linux-7.3", "v4"])
def test_negotiation_picks_the_kernels_revision(abi: str) -> None:
    result = query(SimDevice(Kernel.from_profile("powervm-p11", abi=abi)))
    assert result.abi == abi


def test_capability_250_means_the_shipped_kernel_so_a_v5_draft_kernel_says_enotty() -> None:
    with pytest.raises(KernelError) as exc:
        query(SimDevice(Kernel.from_profile("powervm-p11", abi="v5")))
    assert exc.value.name == "ENOTTY"


def test_a_kernel_without_the_feature_is_unsupported_and_says_what_qemu_does() -> None:
    with pytest.raises(Unsupported, match="raw host PVR"):
        query(SimDevice(Kernel.from_profile("powervm-p11", abi="none")))


def test_forcing_the_wrong_revision_finds_no_capability_as_qemu_would() -> None:
    """A forced protocol still asks its own capability first (v4's 249 on a v5 kernel: 0)."""
    with pytest.raises(Unsupported, match="--abi v4: the kernel has no capability 249"):
        query(SimDevice(Kernel.from_profile("powervm-p11", abi="v5")), Options(abi="v4"))


@pytest.mark.parametrize(
    ("modes", "pvr"), [((P9,), 0x004E1202), ((P9, P10), 0x00801200), ((P10, P11), 0x00821200), ((), None)]
)
def test_qemu_host_compat_pvr(modes: tuple[str, ...], pvr: int | None) -> None:
    result = CompatCaps(modes, 0, "linux-7.3", "ioctl", "sim")
    assert result.qemu_host_compat_pvr == pvr
    assert result.to_json()["qemu_host_compat_pvr"] == pvr


@pytest.mark.parametrize(("client_size", "kernel_size"), [(32, 24), (24, 32), (32, 32), (40, 24)])
def test_struct_sizes_interoperate(client_size: int, kernel_size: int) -> None:
    kernel = Kernel.from_profile("powervm-p11", abi="v5", ksize=kernel_size)
    result = query(SimDevice(kernel), Options(abi="v5", struct_size=client_size))
    assert result.modes == (P10, P11)


def test_client_struct_size_is_validated() -> None:
    with pytest.raises(ValueError, match="struct size 20"):
        query(SimDevice(Kernel.from_profile("powervm-p11")), Options(struct_size=20))


@pytest.mark.parametrize("abi", REVS)
def test_fallback_reads_the_device_tree_and_says_so(abi: str) -> None:
    kernel = Kernel.from_profile("pseries-kvm-pr", abi=abi)
    result = query(SimDevice(kernel), Options(fallback=True, device_tree=host_tree(kernel)))
    assert result == CompatCaps((P10,), 1 << 61, "none", "device-tree", "sim:pseries-kvm-pr")
    assert result.to_json()["source"] == "device-tree"


@pytest.mark.parametrize(
    ("host", "failure"),
    [("x86_64", Unsupported), ("kvm-l1-no-cpu-version", KernelError), ("powernv-p10", Unsupported)],
)
def test_fallback_only_where_the_device_tree_has_an_answer(host: str, failure: type[Exception]) -> None:
    # x86: no device tree; nested v1 without cpu-version: EINVAL is not "cannot answer";
    # bare-metal PowerNV: no cpu-version property on an L0
    with pytest.raises(failure):
        kernel = Kernel.from_profile(host)
        query(SimDevice(kernel), Options(fallback=True, device_tree=host_tree(kernel)))


def test_no_fallback_unless_asked() -> None:
    with pytest.raises(KernelError):
        query(SimDevice(Kernel.from_profile("pseries-kvm-pr", abi="v4")))


def test_kernel_errors_carry_the_simulators_reason() -> None:
    with pytest.raises(KernelError) as exc:
        query(SimDevice(Kernel.from_profile("kvm-l1-no-cpu-version")))
    assert exc.value.to_json() == {
        "kind": "kernel",
        "errno": errno.EINVAL,
        "name": "EINVAL",
        "reason": "the host has no cpu-version property in any cpu node (nested API v1)",
        "call": "KVM_PPC_GET_COMPAT_CAPS",
    }


def test_decode_is_msb0_and_masks_bits_outside_the_mask() -> None:
    assert decode(0x7000000000000000) == (P9, P10, P11)
    assert decode(0) == ()
    for other in (1 << 63, 1, 1 << 2):
        assert decode(other | (1 << 61)) == (P10,)


class AnsweringDevice(SimDevice):
    """A device of the same shape whose ioctl answers a fixed bitmap (a broken kernel)."""

    def __init__(self, caps: int) -> None:
        super().__init__(Kernel.from_profile("powervm-p11"))
        self.caps = caps

    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes:
        ret = super().ioctl(fd, request, arg, mutate_flag)
        if request == self.kernel.KVM_PPC_GET_COMPAT_CAPS and isinstance(arg, bytearray):
            arg[16:24] = self.caps.to_bytes(8, "little")
        return ret


def test_a_kernel_answering_unknown_bits_is_decoded_as_qemu_does() -> None:
    result = query(AnsweringDevice((1 << 61) | (1 << 63)))
    assert result.modes == (P10,) and result.unknown_bits == 1 << 63
    assert result.to_json()["unknown_bits"] == 1 << 63


def test_real_device_arch_is_this_machines() -> None:
    assert RealDevice().arch == machine_arch()
    assert RealDevice(arch=ARCHES["ppc64"]).arch.byteorder == "big"


def test_missing_device_is_no_device(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(NoDevice) as exc:
        query(RealDevice(f"{tmp_path}/kvm"))
    assert exc.value.errno == errno.ENOENT and exit_code(exc.value) == 3


def test_real_device_tree_reader(tmp_path: os.PathLike[str]) -> None:
    cpus = os.path.join(tmp_path, "cpus")
    for node, value in (("PowerPC,POWER10@0", b"\x0f\x00\x00\x06"), ("PowerPC,POWER10@8", None)):
        os.makedirs(os.path.join(cpus, node))
        if value:
            with open(os.path.join(cpus, node, "cpu-version"), "wb") as f:
                f.write(value)
    assert DeviceTree(os.fspath(tmp_path)).cpu_versions() == [("PowerPC,POWER10@0", 0x0F000006)]
    assert DeviceTree(f"{tmp_path}/none").cpu_versions() == []


def test_a_hosts_device_tree_reads_the_same_as_the_files() -> None:
    assert host_tree(Kernel.from_profile("kvm-l1-p10")).cpu_versions() == [("PowerPC,POWER10@0", 0x0F000006)]


def host_tree(kernel: Kernel) -> DeviceTree:
    """The simulated host's /proc/device-tree, as the pytest plugin and kvmsim run show it."""
    return DeviceTree(files=hostfs.files(kernel))


@pytest.mark.requires_real_kvm
def test_contract_on_this_machines_real_dev_kvm() -> None:
    arch: Arch = machine_arch()
    got = outcome(RealDevice())
    if arch.is_powerpc:  # a real POWER host: any answer of the contract's vocabulary
        assert isinstance(got, tuple) or got in {"EINVAL", "ENOTTY", "EPERM", "unsupported", "no-device"}
    else:
        assert got == "unsupported" == outcome(SimDevice(Kernel.from_profile("x86_64")))


def test_a_machine_kvmsim_has_no_encoding_for_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    from kvmcompat import cli

    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result((*real[:4], "aarch64")))
    assert cli.main(["--device", "/dev/null"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aarch64: this machine's architecture is not one kvmsim models" in err


# -- QEMU's algorithm, exactly (merged kvmppc_get_compat_caps / kvm_ppc_host_compat_pvr) ----------


@pytest.mark.parametrize(("cap_fd", "asked_on"), [("dev", "dev"), ("vm", "vm")])
def test_the_capability_is_asked_where_qemu_asks_it(kvm_host: object, cap_fd: str, asked_on: str) -> None:
    """QEMU's kvm_check_extension(kvm_state, ...) asks /dev/kvm; --cap-fd vm asks the VM fd."""
    from kvmsim.plugin.fixture import KvmHost

    assert isinstance(kvm_host, KvmHost)
    result = query(RealDevice("/dev/kvm"), Options(cap_fd=cap_fd))  # type: ignore[arg-type]
    checks = [c.fd for c in kvm_host.calls if c.name == "KVM_CHECK_EXTENSION"]
    assert checks == [asked_on] and result.recommended == "power11"


@pytest.mark.parametrize(
    ("caps", "mode", "pvr"),
    [
        (MB["P9"] | MB["P10"] | MB["P11"], "power11", 0x00821200),
        (MB["P9"] | MB["P10"], "power10", 0x00801200),
        (MB["P9"] | (1 << 50), "power9", 0x004E1202),  # an unknown bit is masked before ctz64
        (1 << 50, None, None),  # nothing QEMU knows: the raw host PVR
    ],
)
def test_the_recommendation_is_ctz64_of_the_masked_caps(caps: int, mode: str | None, pvr: int | None) -> None:
    r = CompatCaps(decode(caps), caps, "linux-7.3", "ioctl", "sim:x")
    assert (r.recommended, r.qemu_host_compat_pvr) == (mode, pvr)


def test_a_mock_device_answers_from_a_handler_for_code_above_the_client() -> None:
    """httpx's MockTransport, in kind: no kernel, a function from call to answer."""
    import struct

    from kvmcompat import MockCall, MockDevice

    def handler(call: MockCall) -> int:
        if call.name == "KVM_GET_API_VERSION":
            return 12
        if call.name in ("KVM_CREATE_VM", "KVM_CHECK_EXTENSION"):
            return 1
        if call.name.startswith("KVM_PPC_GET_COMPAT_CAPS"):
            assert isinstance(call.arg, bytearray) and call.fd == "vm"
            call.arg[:24] = struct.pack("<QQQ", 24, 0, MB["P9"] | MB["P10"])
            return 0
        raise OSError(errno.ENOTTY, call.name)

    device = MockDevice(handler)
    answer = query(device)
    assert (answer.modes, answer.recommended) == (("power9", "power10"), "power10")
    assert [c.fd for c in device.calls if c.name == "KVM_CHECK_EXTENSION"] == ["dev"]
