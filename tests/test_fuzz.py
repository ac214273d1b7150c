"""kvmsim.user.fuzz: the cases a seed draws are the same every time and cover what the lab
asks the real kernel; a replay sees a buffer as the guest's prober lays it out; and a case the
simulator answers otherwise than the recorded kernel is reported by seed and index."""

from __future__ import annotations

import collections
import functools
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from kvmsim import Kernel
from kvmsim.lab import _fuzz_mismatches, build, configs
from kvmsim.uapi import ARCHES, KVM_CREATE_DEVICE, KVM_CREATE_DEVICE_STRUCT, KVM_CREATE_DEVICE_TEST
from kvmsim.user import fuzz
from kvmsim.user.probe import Probe

PPC = ARCHES["ppc64le"]


def shape(p: Probe) -> tuple[str, int, object]:
    arg = p.arg(PPC)
    return p.fd, p.request(PPC), arg


def test_a_seed_draws_the_same_cases_and_another_seed_others() -> None:
    assert [shape(p) for p in fuzz.cases(5, 300)] == [shape(p) for p in fuzz.cases(5, 300)]
    assert [shape(p) for p in fuzz.cases(5, 300)] != [shape(p) for p in fuzz.cases(6, 300)]
    assert [shape(p) for p in fuzz.cases(5, 300)][:100] == [shape(p) for p in fuzz.cases(5, 100)]  # case i is case i


def test_the_cases_cover_the_input_space() -> None:
    k = Kernel.from_profile("qemu-nested-hv-p10")
    cs = fuzz.cases(1, 5000)
    requests = collections.Counter(p.request(PPC) for p in cs)
    assert requests[k.KVM_CHECK_EXTENSION] > 450 and requests[k.KVM_CREATE_VM] > 200
    assert all(
        k.rev.request(PPC) in requests
        for k in (Kernel.from_profile("powervm-p11", abi=r) for r in ("linux-7.3", "v5", "v4"))
    )
    buffers = [p.arg(PPC) for p in cs if isinstance(p.arg(PPC), bytes)]
    sizes = {int.from_bytes(b[:8], "little") for b in buffers if len(b) >= 8}  # type: ignore[arg-type]
    assert {0, 23, 24, 25, 4097, 65537, 1 << 63, 2**64 - 1, 24 << 56} <= sizes
    assert any(len(b) > 24 and any(b[24:]) for b in buffers)  # type: ignore[arg-type]  # a poked tail
    ints = {p.arg(PPC) for p in cs if not isinstance(p.arg(PPC), bytes)}
    assert {0, 8, fuzz.KERNEL_ADDRESS} <= ints and set(range(16)) <= ints
    assert {p.fd for p in cs} == {"dev", "vm", "vm-hv", "vm-pr", "vcpu-hv", "vcpu-pr", "xics-hv", "xics-pr"}
    assert set(range(1, 33)) <= {len(b) for b in buffers}  # type: ignore[arg-type]  # cut short at every offset
    assert {p.readonly_from for p in cs} >= {None, 0, *range(1, 33)}
    assert any(p.on_stack for p in cs)


def test_the_device_cases_only_test_for_a_type() -> None:
    """KVM_CREATE_DEVICE on the fuzz's VMs: every type number and past them, KVM_CREATE_DEVICE_TEST
    always set (a device made would put a number of the asking process's in the struct)."""
    cs = [p for p in fuzz.cases(1, 20000) if p.request(PPC) == KVM_CREATE_DEVICE.request(PPC)]
    structs = [KVM_CREATE_DEVICE_STRUCT.unpack(PPC.byteorder, p.arg(PPC)) for p in cs
               if isinstance(p.arg(PPC), bytes) and len(p.arg(PPC)) == 12]  # type: ignore[arg-type]  # fmt: skip
    assert len({s["type"] for s in structs}) >= 12 and len(cs) > len(structs) > 20
    assert all(s["flags"] & KVM_CREATE_DEVICE_TEST for s in structs)


def test_the_vcpu_cases_cover_its_ioctls_and_never_run_a_guest() -> None:
    """A quarter of the cases are a fuzz VM's vcpu's: KVM_ENABLE_CAP of every capability the
    vcpu knows (whole, cut short, bad pointers), KVM_SET/GET_REGS of every length with every
    MSR edge, the modelled requests' neighbours, KVM_CREATE_VCPU of ids no hypervisor is asked
    about; never KVM_RUN without an argument (a real kernel would run the guest)."""
    from kvmsim.uapi import KVM_CREATE_VCPU, KVM_ENABLE_CAP, KVM_GET_REGS, KVM_RUN, KVM_SET_REGS

    cs = fuzz.cases(1, 8000)
    vcpu = [p for p in cs if p.fd in ("vcpu-hv", "vcpu-pr")]
    assert 1500 < len(vcpu) < 2500
    requests = collections.Counter(p.request(PPC) for p in vcpu)
    for io in (KVM_ENABLE_CAP, KVM_GET_REGS, KVM_SET_REGS):
        assert requests[io.request(PPC)] > 100, io.name
    caps = {int.from_bytes(b[:4], "little") for p in vcpu if p.request(PPC) == KVM_ENABLE_CAP.request(PPC)
            for b in [p.arg(PPC)] if isinstance(b, bytes) and len(b) >= 4}  # fmt: skip
    assert set(fuzz.VCPU_CAPS) <= caps
    lengths = {len(b) for p in vcpu for b in [p.arg(PPC)] if isinstance(b, bytes)}
    assert {104, 392, 40, 48} <= lengths and len(lengths) > 100
    runs = [p for p in cs if p.request(PPC) == KVM_RUN.request(PPC)]
    assert runs and all(p.arg(PPC) != 0 for p in runs)
    ids = {p.arg(PPC) for p in cs if p.request(PPC) == KVM_CREATE_VCPU.request(PPC)}
    assert ids == set(fuzz.VCPU_IDS)
    k = Kernel.from_profile("qemu-nested-hv-p10")
    creates = [p for p in cs if p.request(PPC) == KVM_CREATE_VCPU.request(PPC)][:50]
    answers = fuzz.simulate(k, [*vcpu[:400], *creates])
    assert {a.error for a in answers.values()} >= {None, "EINVAL", "EFAULT", "EEXIST", "EBADF"}


def test_a_replay_faults_past_the_buffer_as_the_guest_does() -> None:
    """size 32 in a 24-byte buffer: the kernel reads past it into nothing mapped (EFAULT),
    where CPython's ioctl would have given it zeros."""
    k = Kernel.from_profile("qemu-nested-hv-p10")
    rev = k.rev
    body = rev.layout.pack("little", size=32, flags=0, compat_capabilities=0)
    req = rev.request(PPC)
    assert req is not None
    probe = Probe("fuzz 0", "vm", lambda a: req, lambda a: body)
    assert fuzz.simulate(k, [probe])["fuzz 0"].error == "EFAULT"


def test_a_disagreement_is_reported_by_seed_and_index() -> None:
    cs = fuzz.cases(3, 50)
    config = configs.CONFIGS["nested-hv-p10"]
    k = Kernel.from_profile(config.profile)
    real = {name: answer.to_toml() for name, answer in fuzz.simulate(k, cs).items()}
    assert _fuzz_mismatches(config, cs, real, 3) == ()
    real["fuzz 7"] = "ENOSPC"
    del real["fuzz 9"]
    bad = _fuzz_mismatches(config, cs, real, 3)
    assert len(bad) == 2 and bad[0].startswith("fuzz case 7 of seed 3 (") and "real ENOSPC" in bad[0]
    assert "fuzz case 9 of seed 3" in bad[1] and "real (not asked)" in bad[1]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler here")
def test_the_prober_compiles_with_the_cases(tmp_path: Path) -> None:
    table = build.probes_h(fuzz.cases(11, 400))
    assert table.count('"fuzz ') == 400
    (tmp_path / "probes.h").write_text(table)
    (tmp_path / "prober.c").write_text(resources.files("kvmsim.lab").joinpath("prober.c").read_text())
    r = subprocess.run(["cc", "-O0", "-Wall", "-Werror", "-o", str(tmp_path / "p"), str(tmp_path / "prober.c")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("k", "written"), [(20, True), (8, False), (0, False)])
def test_a_struct_running_into_a_read_only_page(k: int, written: bool) -> None:
    """copy_to_user() leaves what it wrote below the page boundary, then faults: the lab's
    real Linux 7.3 answers the same (20,000 cases a configuration, 0 mismatches).  At k=8
    only size and flags lie below it, and the kernel writes them back unchanged."""
    k_ = Kernel.from_profile("qemu-nested-hv-p10")
    rev = k_.rev
    body = rev.layout.pack("little", size=24, flags=0, compat_capabilities=2**64 - 1)
    req = rev.request(PPC)
    assert req is not None
    probe = Probe("fuzz 0", "vm", lambda a: req, lambda a: body, readonly_from=k)
    answer = fuzz.simulate(k_, [probe])["fuzz 0"]
    assert answer.error == "EFAULT" and (answer.written is not None) == written
    if written:
        assert answer.written is not None and answer.written[16:20] == bytes(4) and answer.written[20:] == b"\xff" * 4


def test_a_replay_places_the_buffer_where_the_guest_does_to_the_byte() -> None:
    """The first disagreement the fuzz found (seed 0, case 4683): size 33 in a 31-byte buffer
    with a non-zero byte at 26.  check_zeroed_user() reads aligned words; the guest's buffer
    ends at a page boundary, so its tail's last word is mapped and holds the non-zero byte:
    E2BIG, the size written back.  A buffer starting at a page boundary instead would fault
    in that word first (EFAULT)."""
    k = Kernel.from_profile("qemu-nested-hv-p10")
    req = k.rev.request(PPC)
    assert req is not None
    body = bytearray(k.rev.layout.pack("little", size=33, flags=0, compat_capabilities=0).ljust(31, b"\0"))
    body[26] = 0xFE
    probe = Probe("fuzz 0", "vm", lambda a: req, lambda a: bytes(body))
    assert fuzz.simulate(k, [probe])["fuzz 0"].to_toml() == "E2BIG " + (24).to_bytes(8, "little").hex() + "00" * 16


def test_the_device_cases_reach_the_fuzz_vms_xics_or_dev_kvm() -> None:
    """Each fuzz VM has an XICS device made after its vcpu (XICS's emulation, or on PowerNV
    XICS-on-XIVE's, which has NR_SERVERS); where it has none (no such VM) the case goes to
    /dev/kvm."""
    from kvmsim.uapi import KVM_DEVICE_ATTR, KVM_HAS_DEVICE_ATTR

    def has(a: object) -> bytes:
        return KVM_DEVICE_ATTR.pack(PPC.byteorder, {"group": 1, "attr": 16})

    probe = Probe("has source 16", "xics-hv", KVM_HAS_DEVICE_ATTR.request, has)
    nr_servers = Probe("has nr servers", "xics-hv", KVM_HAS_DEVICE_ATTR.request,
                       lambda a: KVM_DEVICE_ATTR.pack(PPC.byteorder, {"group": 2, "attr": 1}))  # fmt: skip
    for host, xive in (("qemu-nested-hv-p10", False), ("qemu-powernv9", True)):
        answers = fuzz.simulate(Kernel.from_profile(host), [probe, nr_servers])
        assert answers["has source 16"].value == 0
        assert (answers["has nr servers"].value == 0) == xive
    no_hv = fuzz.simulate(Kernel.from_profile("qemu-no-nesting-p10"), [probe])  # KVM-PR only: no HV VM
    assert no_hv["has source 16"].error == "EINVAL"  # /dev/kvm's answer to a device ioctl


@pytest.mark.parametrize(("host", "presented"), [("qemu-nested-hv-p10", True), ("qemu-powernv9", False)])
def test_the_delivery_cases_reach_a_connected_vcpu(host: str, presented: bool) -> None:
    """Each fuzz VM's vcpu 0 is connected to its XICS device as server 0, as the prober connects
    it, so the cases' KVM_IRQ_LINE of a source with a priority reaches its presenter: XICS's
    emulation shows it in the ICP state (its XISR and pending priority), XICS-on-XIVE in its
    queue (the ICP state has no XISR: the source reads back PENDING)."""
    from kvmsim.uapi import (
        KVM_DEV_XICS_GRP_SOURCES,
        KVM_GET_DEVICE_ATTR,
        KVM_GET_ONE_REG,
        KVM_IRQ_LINE,
        KVM_SET_DEVICE_ATTR,
        KVM_SET_ONE_REG,
        ONE_REGS,
    )
    from kvmsim.user.probe import irq_level, reg_bytes

    def source(name: str, io: object, value: int) -> Probe:
        data = functools.partial(reg_bytes, value=value, size=8)
        return Probe(name, "xics-hv", io.request, data, one_reg=4096, attr_group=KVM_DEV_XICS_GRP_SOURCES)  # type: ignore[attr-defined]

    line = functools.partial(irq_level, irq=4096, level=1)
    icp, cppr_ff = (functools.partial(reg_bytes, value=v, size=8) for v in (0, 0xFF << 56 | 0xFF << 24 | 0xFF << 16))
    reg = ONE_REGS["ICP_STATE"]
    probes = [Probe("open", "vcpu-hv", KVM_SET_ONE_REG.request, cppr_ff, one_reg=reg),  # CPPR 0xff: any priority
              source("set", KVM_SET_DEVICE_ATTR, 5 << 32), Probe("line", "vm-hv", KVM_IRQ_LINE.request, line),
              Probe("icp", "vcpu-hv", KVM_GET_ONE_REG.request, icp, one_reg=reg),
              source("get", KVM_GET_DEVICE_ATTR, 0)]  # fmt: skip
    answers = fuzz.simulate(Kernel.from_profile(host), probes)
    state = int.from_bytes(bytes.fromhex(str(answers["icp"].to_toml()).split()[1])[:8], "little")
    assert (state >> 32 & 0xFFFFFF == 4096) == presented and (state >> 16 & 0xFF == 5) == presented
    got = int.from_bytes(bytes.fromhex(str(answers["get"].to_toml()).split()[1])[:8], "little")
    assert bool(got & 1 << 42) != presented  # KVM_XICS_PENDING: in the XIVE queue


def test_the_cases_include_delivery() -> None:
    from kvmsim.uapi import KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS

    cases = fuzz.cases(20261207, 20000)
    icp = [c for c in cases if c.one_reg is not None and c.attr_group is None]
    requests = (KVM_IRQ_LINE.request(PPC), KVM_IRQ_LINE_STATUS.request(PPC))
    lines = [c for c in cases if c.fd.startswith("vm-") and c.request(PPC) in requests]
    assert len(icp) > 100 and len(lines) > 150


def test_the_one_reg_cases_cover_every_register_and_others() -> None:
    """KVM_GET/SET_ONE_REG on the fuzz vcpus: every register kvmsim names, others' sizes and
    neighbours, any id; never a read of a PR vcpu's FP, VMX or VSX state (a real PR guest a
    KVM_RUN case entered leaves its FPU's contents there)."""
    from kvmsim.kernel.one_reg import name_of
    from kvmsim.uapi import KVM_GET_ONE_REG, ONE_REGS

    cases = [c for c in fuzz.cases(20261207, 20000) if c.one_reg is not None and c.attr_group is None]
    ids = {c.one_reg for c in cases}
    assert len(ids & set(ONE_REGS.values())) > 0.9 * len(ONE_REGS) and len(ids - set(ONE_REGS.values())) > 100
    pr_reads = [c for c in cases if c.fd == "vcpu-pr" and c.request(PPC) == KVM_GET_ONE_REG.request(PPC)]
    assert pr_reads and not any(fuzz._fp_state(c.one_reg) for c in pr_reads if c.one_reg is not None)
    assert (
        fuzz._fp_state(ONE_REGS["VSR0"]) and fuzz._fp_state(ONE_REGS["FPSCR"]) and not fuzz._fp_state(ONE_REGS["PID"])
    )
    assert name_of(ONE_REGS["VR31"]) == "VR31"
