"""XICS-on-XIVE (book3s_xive.c): the ``kvm-xive`` device a PowerNV host with XIVE makes for
KVM_DEV_TYPE_XICS, as Linux 7.3 does it, on every such host and VM type: XICS's interface
answered through the XIVE hardware's IPIs, VPs and event queues."""

from __future__ import annotations

import errno

import pytest
from test_book3s_xics import XIVE_HV_HOSTS, Guest
from test_vcpu import errno_of, vm_types

from kvmsim.kernel.anon_inodes import XIVE
from kvmsim.uapi import (
    KVM_CAP_MAX_VCPU_ID,
    KVM_CREATE_DEVICE,
    KVM_DEV_TYPE_VFIO,
    KVM_DEV_TYPE_XICS,
    KVM_DEV_TYPE_XIVE,
    KVM_DEV_XICS_GRP_CTRL,
    KVM_DEV_XICS_GRP_SOURCES,
    KVM_DEV_XICS_NR_SERVERS,
    KVM_GET_DEVICE_ATTR,
    KVM_GET_ONE_REG,
    KVM_HAS_DEVICE_ATTR,
    KVM_INTERRUPT_SET_LEVEL,
    KVM_INTERRUPT_UNSET,
    KVM_ONE_REG,
    KVM_SET_DEVICE_ATTR,
    KVM_SET_ONE_REG,
    KVM_XICS_LEVEL_SENSITIVE,
    KVM_XICS_MASKED,
    KVM_XICS_PENDING,
    KVM_XICS_PRESENTED,
    KVM_XICS_QUEUED,
    ONE_REGS,
)

NO_ICP = 0xFF << 24 | 0xFF << 16  # kvmppc_xive_get_icp() of a fresh VP: CPPR 0, MFRR 0xff, pending 0xff
P5 = 5 << 32  # server 0, priority 5, an MSI


def cases() -> list[tuple[str, int]]:
    return [(h, t) for h in XIVE_HV_HOSTS for t in vm_types(h)]


def connected(host: str, vm_type: int) -> tuple[Guest, int]:
    """A guest whose vcpu 0 is connected to its XICS-on-XIVE device as server 0."""
    g = Guest(host, vm_type)
    dev = g.device()
    assert g.connect(g.vcpus[0], dev, 0) == 0
    return g, dev


def nr_servers(g: Guest, dev: int, value: int) -> int:
    return g.attr(dev, KVM_SET_DEVICE_ATTR, KVM_DEV_XICS_GRP_CTRL, KVM_DEV_XICS_NR_SERVERS, value, size=4)


# -- kvmppc_xive_create() ---------------------------------------------------------------------


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_xics_on_a_xive_host_is_kvm_xive_one_per_vm(host: str, vm_type: int) -> None:
    g = Guest(host, vm_type)
    ret, cd = g.create(KVM_DEV_TYPE_XICS)
    assert ret == 0 and g.k.current.link(cd["fd"]) == "anon_inode:kvm-xive"
    assert g.k.current.file_kind(cd["fd"]) is XIVE
    assert errno_of(g.create, KVM_DEV_TYPE_XICS) == errno.EEXIST
    assert errno_of(g.k.ioctl, cd["fd"], KVM_CREATE_DEVICE.request(g.k.arch), 0) == errno.ENOTTY  # no .ioctl


@pytest.mark.parametrize("host", XIVE_HV_HOSTS)
def test_xive_native_is_registered_and_named_not_modelled(host: str) -> None:
    g = Guest(host)
    assert g.create(KVM_DEV_TYPE_XIVE, flags=1)[0] == 0
    with pytest.raises(OSError) as exc:
        g.create(KVM_DEV_TYPE_XIVE)
    assert exc.value.errno == errno.ENOTTY and "not modelled" in str(exc.value)


# -- xive_has_attr(), xive_set_attr(): SOURCES and CTRL's NR_SERVERS --------------------------


@pytest.mark.parametrize("host", XIVE_HV_HOSTS)
def test_xics_on_xive_has_sources_and_nr_servers(host: str) -> None:
    g = Guest(host)
    dev = g.device()
    ctrl, sources = KVM_DEV_XICS_GRP_CTRL, KVM_DEV_XICS_GRP_SOURCES
    assert g.attr(dev, KVM_HAS_DEVICE_ATTR, sources, 16, None) == 0
    assert g.attr(dev, KVM_HAS_DEVICE_ATTR, ctrl, KVM_DEV_XICS_NR_SERVERS, None) == 0
    for group, attr in ((sources, 15), (sources, 1 << 20), (ctrl, 2), (3, 1)):
        assert errno_of(g.attr, dev, KVM_HAS_DEVICE_ATTR, group, attr, None) == errno.ENXIO
    assert errno_of(g.attr, dev, KVM_GET_DEVICE_ATTR, ctrl, KVM_DEV_XICS_NR_SERVERS, 0) == errno.ENXIO  # set only
    assert errno_of(g.attr, dev, KVM_SET_DEVICE_ATTR, ctrl, 2, 8) == errno.ENXIO


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_nr_servers_bounds_the_vps_until_the_first_connect(host: str, vm_type: int) -> None:
    """A u32 in 1..KVM_MAX_VCPU_IDS; a server whose packed id is past it cannot connect; the VP
    block is allocated by the first connect, after which NR_SERVERS is EBUSY."""
    g = Guest(host, vm_type)
    dev = g.device()
    assert errno_of(nr_servers, g, dev, 0) == errno.EINVAL
    max_ids = int(g.k.ioctl(g.k.open(), g.k.KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPU_ID))
    assert errno_of(nr_servers, g, dev, max_ids + 1) == errno.EINVAL
    assert errno_of(g.attr, dev, KVM_SET_DEVICE_ATTR, KVM_DEV_XICS_GRP_CTRL, KVM_DEV_XICS_NR_SERVERS, None) == (
        errno.EFAULT
    )
    assert nr_servers(g, dev, 2) == 2
    assert errno_of(g.connect, g.vcpus[0], dev, 2) == errno.EINVAL  # server 2's VP is past the block
    assert g.connect(g.vcpus[0], dev, 1) == 0
    assert errno_of(nr_servers, g, dev, 8) == errno.EBUSY


# -- xive_set_source(), xive_get_source() -----------------------------------------------------


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_sources_are_set_and_read_back_as_xics_bits(host: str, vm_type: int) -> None:
    g = Guest(host, vm_type)
    dev = g.device()
    assert errno_of(g.get_source, dev, 4096) == errno.ENOENT  # no source block yet
    g.source(dev, 4096, KVM_XICS_MASKED | 0xFF << 32 | KVM_XICS_LEVEL_SENSITIVE)
    assert g.get_source(dev, 4096) == KVM_XICS_MASKED | 0xFF << 32 | KVM_XICS_LEVEL_SENSITIVE
    assert errno_of(g.get_source, dev, 4097) == errno.ENOENT  # its block exists, the source was never set
    assert g.get_source(dev, 1 << 32 | 4096) == g.get_source(dev, 4096)  # get looks up the u32 irq
    assert errno_of(g.source, dev, 1 << 32 | 4096, 0) == errno.ENOENT  # set checks the long first
    assert errno_of(g.source, dev, 15, KVM_XICS_MASKED) == errno.ENOENT
    assert errno_of(g.source, dev, 8192, None) == errno.EFAULT  # get_user at NULL: its block made first
    assert errno_of(g.get_source, dev, 8192) == errno.ENOENT


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_a_priority_for_a_server_no_vcpu_is_leaves_the_source_untargeted(host: str, vm_type: int) -> None:
    """XICS's emulation refuses it (EINVAL); XICS-on-XIVE takes it, unrouted: the server read back
    is the one it last had (0), and nothing it fires reaches a queue."""
    g, dev = connected(host, vm_type)
    g.source(dev, 5000, P5 | 7)
    assert g.get_source(dev, 5000) == P5  # act_server: never 7
    g.irq_line(5000, 1)
    assert g.get_source(dev, 5000) == P5 | KVM_XICS_PRESENTED  # P set; in no queue: not PENDING


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_presented_and_queued_are_the_ipis_p_and_q(host: str, vm_type: int) -> None:
    """Restored P and Q: PRESENTED alone keeps P; QUEUED (or PENDING) fires it again into the
    server's queue, where a read finds it (PENDING); both bits stay as they were given."""
    g, dev = connected(host, vm_type)
    g.source(dev, 4096, P5 | KVM_XICS_PRESENTED)
    g.source(dev, 4097, P5 | KVM_XICS_QUEUED)
    g.source(dev, 4098, P5 | KVM_XICS_PRESENTED | KVM_XICS_QUEUED)
    assert [g.get_source(dev, irq) for irq in (4096, 4097, 4098)] == [
        P5 | KVM_XICS_PRESENTED,
        P5 | KVM_XICS_PRESENTED | KVM_XICS_PENDING,
        P5 | KVM_XICS_PRESENTED | KVM_XICS_QUEUED,
    ]


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_a_save_round_scans_once_until_every_source_is_read(host: str, vm_type: int) -> None:
    """The first read masks every source, collects P and Q and the queues; later reads in the
    round answer from that, until each valid source has been read."""
    g, dev = connected(host, vm_type)
    g.source(dev, 4096, P5)
    g.source(dev, 4097, P5)
    assert g.get_source(dev, 4096) == P5  # the round opens: 1 of 2
    g.irq_line(4096, 1)
    assert g.get_source(dev, 4096) == P5  # 2 of 2: what the scan saw, and the round ends
    assert g.get_source(dev, 4096) == P5 | KVM_XICS_PRESENTED | KVM_XICS_PENDING  # a new round


# -- KVM_IRQ_LINE: kvmppc_xive_set_irq() ---------------------------------------------------------


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_irq_line_fires_the_sources_ipi(host: str, vm_type: int) -> None:
    g = Guest(host, vm_type)
    assert errno_of(g.irq_line, 4096, 1) == errno.ENXIO  # no in-kernel interrupt controller yet
    dev = g.device()
    g.connect(g.vcpus[0], dev, 0)
    assert g.irq_line(4096, 1, status=True) == -errno.EINVAL  # no such source
    g.source(dev, 4096, P5)
    g.source(dev, 4097, KVM_XICS_MASKED | P5)
    g.source(dev, 4098, P5 | KVM_XICS_LEVEL_SENSITIVE)
    assert g.irq_line(4096, 1, status=True) == 0
    assert g.irq_line(4097, 1, status=True) == 0
    assert g.irq_line(4098, KVM_INTERRUPT_UNSET, status=True) == 0  # lowered: nothing fires
    assert g.icp(g.vcpus[0]) == NO_ICP  # the ICP state has no XISR here
    assert g.get_source(dev, 4096) == P5 | KVM_XICS_PRESENTED | KVM_XICS_PENDING  # in vcpu 0's queue 5
    assert g.get_source(dev, 4097) == KVM_XICS_MASKED | P5  # masked: its P and Q are not read
    assert g.get_source(dev, 4098) == P5 | KVM_XICS_LEVEL_SENSITIVE
    g.irq_line(4098, KVM_INTERRUPT_SET_LEVEL)
    assert g.get_source(dev, 4098) == P5 | KVM_XICS_LEVEL_SENSITIVE | KVM_XICS_PENDING  # an LSI's P


# -- KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS) and the ICP state ------------------------------------------


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_a_vcpu_connects_to_its_vp_once(host: str, vm_type: int) -> None:
    g = Guest(host, vm_type)
    assert errno_of(g.icp, g.vcpus[0]) == errno.ENXIO
    dev = g.device()
    assert errno_of(g.connect, g.vcpus[0], 999, 0) == errno.EBADF
    assert errno_of(g.connect, g.vcpus[0], g.vm, 0) == errno.EPERM  # not a KVM device
    assert errno_of(g.connect, g.vcpus[0], g.device(KVM_DEV_TYPE_VFIO), 0) == errno.EPERM  # not kvm-xive
    other = Guest.__new__(Guest)
    other.k, other.vm = g.k, int(g.k.ioctl(g.k.open(), g.k.KVM_CREATE_VM, vm_type))
    assert errno_of(g.connect, g.vcpus[0], other.device(), 0) == errno.EPERM  # another VM's
    assert g.connect(g.vcpus[0], dev, 7) == 0
    assert g.icp(g.vcpus[0]) == NO_ICP
    assert errno_of(g.connect, g.vcpus[0], dev, 8) == errno.EBUSY
    assert errno_of(g.connect, g.vcpus[1], dev, 7) == errno.EEXIST  # server 7's VP is vcpu 0's


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_the_icp_state_is_cppr_and_mfrr_never_checked(host: str, vm_type: int) -> None:
    """kvmppc_xive_set_icp() checks nothing XICS's does (an inconsistent state is taken); an XISR
    of a source not yet set is delayed: setting the source later makes it pending."""
    g, dev = connected(host, vm_type)
    assert g.icp(g.vcpus[0], 0x05 << 16) == 0x05 << 16  # XICS's EINVAL
    assert g.icp(g.vcpus[0]) == 0xFF << 16  # CPPR 0, MFRR 0: what is kept
    g.icp(g.vcpus[0], 0xFF << 56 | 4096 << 32 | 0xFF << 24 | 0x05 << 16)
    assert g.icp(g.vcpus[0]) == 0xFF << 56 | NO_ICP
    g.source(dev, 4096, P5)  # the delayed XISR: PENDING forced, so fired into the queue
    assert g.get_source(dev, 4096) == P5 | KVM_XICS_PRESENTED | KVM_XICS_PENDING


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_vp_state_is_xive_natives_and_eperm_for_an_xics_on_xive_vcpu(host: str, vm_type: int) -> None:
    """KVM_REG_PPC_VP_STATE: ENXIO with no XIVE presenter; with XICS-on-XIVE's, EPERM
    (kvmppc_xive_native_get/set_vp: the vcpu's irq_type is XICS, not XIVE native)."""
    g = Guest(host, vm_type)
    k, bo = g.k, g.k.arch.byteorder
    addr = k.memory.map(16)

    def vp_state(io: object) -> int:
        reg = KVM_ONE_REG.pack(bo, {"id": ONE_REGS["VP_STATE"], "addr": addr})
        return int(k.ioctl(g.vcpus[0], io.request(k.arch), bytearray(reg)))  # type: ignore[attr-defined]

    for io in (KVM_GET_ONE_REG, KVM_SET_ONE_REG):
        assert errno_of(vp_state, io) == errno.ENXIO
    g.connect(g.vcpus[0], g.device(), 0)
    for io in (KVM_GET_ONE_REG, KVM_SET_ONE_REG):
        assert errno_of(vp_state, io) == errno.EPERM


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_closing_the_device_frees_the_vps(host: str, vm_type: int) -> None:
    g, dev = connected(host, vm_type)
    g.k.close(dev)
    assert errno_of(g.icp, g.vcpus[0]) == errno.ENXIO
    assert errno_of(g.irq_line, 4096, 1) == errno.ENXIO
    again = g.device()
    assert g.connect(g.vcpus[0], again, 0) == 0


@pytest.mark.parametrize(("host", "vm_type"), cases())
def test_qemus_xics_kvm_connect_goes_through(host: str, vm_type: int) -> None:
    """hw/intc/xics_kvm.c: NR_SERVERS asked and set, the sources reset (masked, priority 0xff),
    vcpu 0 connected, its ICP reset: every call answers 0."""
    g = Guest(host, vm_type)
    dev = g.device()
    assert g.attr(dev, KVM_HAS_DEVICE_ATTR, KVM_DEV_XICS_GRP_CTRL, KVM_DEV_XICS_NR_SERVERS, None) == 0
    nr_servers(g, dev, 8)
    for irq in range(4096, 4096 + 14):
        g.source(dev, irq, 0xFF << 32 | (KVM_XICS_LEVEL_SENSITIVE if irq >= 4104 else 0))
    assert g.connect(g.vcpus[0], dev, 0) == 0
    assert g.icp(g.vcpus[0], NO_ICP) == NO_ICP
