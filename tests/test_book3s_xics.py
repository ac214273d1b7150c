"""KVM devices (kvm_main.c's KVM_CREATE_DEVICE and device fds) and the two a Book3S kernel
makes: XICS's emulation (book3s_xics.c: its sources, the vcpus' ICPs, delivery by KVM_IRQ_LINE)
and kvm-vfio (vfio.c), as Linux 7.3 does them, on every host whose kernel makes a VM."""

from __future__ import annotations

import errno

import pytest
from test_vcpu import VM_HOSTS, errno_of, vm_types

from kvmsim import Kernel
from kvmsim.kernel import profile
from kvmsim.kernel.anon_inodes import VFIO, XICS
from kvmsim.kernel.kvm_main import VcpuFile
from kvmsim.kernel.powerpc import xics_on_xive
from kvmsim.uapi import (
    KVM_CAP_IRQ_XICS,
    KVM_CAP_PPC_IRQ_XIVE,
    KVM_CAP_PPC_PAPR,
    KVM_CREATE_DEVICE,
    KVM_CREATE_DEVICE_STRUCT,
    KVM_CREATE_VCPU,
    KVM_DEV_TYPE_VFIO,
    KVM_DEV_TYPE_XICS,
    KVM_DEV_TYPE_XIVE,
    KVM_DEV_VFIO_FILE,
    KVM_DEV_XICS_GRP_CTRL,
    KVM_DEV_XICS_GRP_SOURCES,
    KVM_DEVICE_ATTR,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
    KVM_GET_DEVICE_ATTR,
    KVM_GET_ONE_REG,
    KVM_HAS_DEVICE_ATTR,
    KVM_INTERRUPT_SET,
    KVM_INTERRUPT_UNSET,
    KVM_IRQ_LINE,
    KVM_IRQ_LINE_STATUS,
    KVM_ONE_REG,
    KVM_SET_DEVICE_ATTR,
    KVM_SET_ONE_REG,
    KVM_XICS_LEVEL_SENSITIVE,
    KVM_XICS_MASKED,
    KVM_XICS_PENDING,
    KVM_XICS_PRESENTED,
    ONE_REGS,
)

XICS_HOSTS = [h for h in VM_HOSTS if not xics_on_xive(profile.load(h))]
XIVE_HV_HOSTS = [h for h in VM_HOSTS if xics_on_xive(profile.load(h))]
RESET_ICP = 0xFF << 24 | 0xFF << 16  # QEMU's icp_kvm_reset: no interrupt, MFRR and pending masked, CPPR 0


class Guest:
    """A VM of one type with vcpus 0 and 1 (vcpu 1 with id 1)."""

    def __init__(self, host: str, vm_type: int = 0) -> None:
        self.k = k = Kernel.from_profile(host)
        self.vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, vm_type))
        self.vcpus = [int(k.ioctl(self.vm, KVM_CREATE_VCPU.request(k.arch), i)) for i in (0, 1)]
        for vcpu in self.vcpus:  # QEMU's first (HV's sanity check fails any ENABLE_CAP before it)
            self.connect(vcpu, 0, 0, cap=KVM_CAP_PPC_PAPR)

    def create(self, dev_type: int, flags: int = 0) -> tuple[int, dict[str, int]]:
        """KVM_CREATE_DEVICE: (its return, the struct it left)."""
        bo = self.k.arch.byteorder
        buf = bytearray(KVM_CREATE_DEVICE_STRUCT.pack(bo, {"type": dev_type, "fd": 0xEEEE, "flags": flags}))
        ret = int(self.k.ioctl(self.vm, KVM_CREATE_DEVICE.request(self.k.arch), buf))
        return ret, KVM_CREATE_DEVICE_STRUCT.unpack(bo, buf)

    def device(self, dev_type: int = KVM_DEV_TYPE_XICS) -> int:
        return self.create(dev_type)[1]["fd"]

    def attr(self, dev: int, io: object, group: int, attr: int, value: int | None = None, size: int = 8) -> int:
        """A device attribute ioctl with ``value`` at ``addr`` (None: addr NULL), a u64 or (``size``
        4) an int; the u64 there after."""
        k, bo = self.k, self.k.arch.byteorder
        addr = 0 if value is None else k.memory.map(8, data=value.to_bytes(size, bo).ljust(8, b"\0"))
        struct = KVM_DEVICE_ATTR.pack(bo, {"group": group, "attr": attr, "addr": addr})
        k.ioctl(dev, io.request(k.arch), bytearray(struct))  # type: ignore[attr-defined]
        return 0 if value is None else int.from_bytes(k.memory.read(addr, 8), bo)

    def source(self, dev: int, irq: int, state: int | None) -> int:
        return self.attr(dev, KVM_SET_DEVICE_ATTR, KVM_DEV_XICS_GRP_SOURCES, irq, state)

    def get_source(self, dev: int, irq: int) -> int:
        return self.attr(dev, KVM_GET_DEVICE_ATTR, KVM_DEV_XICS_GRP_SOURCES, irq, 0xAAAA)

    def connect(self, vcpu: int, fd: int, server: int, cap: int = KVM_CAP_IRQ_XICS) -> int:
        values = {"cap": cap, "arg0": fd, "arg1": server}
        arg = KVM_ENABLE_CAP_STRUCT.pack(self.k.arch.byteorder, values)
        return int(self.k.ioctl(vcpu, KVM_ENABLE_CAP.request(self.k.arch), bytearray(arg)))

    def icp(self, vcpu: int, value: int | None = None) -> int:
        """KVM_REG_PPC_ICP_STATE: set to ``value`` (None: read)."""
        k, bo = self.k, self.k.arch.byteorder
        addr = k.memory.map(8, data=(value or 0).to_bytes(8, bo))
        io = KVM_GET_ONE_REG if value is None else KVM_SET_ONE_REG
        k.ioctl(vcpu, io.request(k.arch), bytearray(KVM_ONE_REG.pack(bo, {"id": ONE_REGS["ICP_STATE"], "addr": addr})))
        return int.from_bytes(k.memory.read(addr, 8), bo)

    def irq_line(self, irq: int, level: int, *, status: bool = False) -> int:
        """KVM_IRQ_LINE(_STATUS): the status the kernel wrote back (the struct's first s32)."""
        bo = self.k.arch.byteorder
        buf = bytearray(irq.to_bytes(4, bo) + level.to_bytes(4, bo))
        io = KVM_IRQ_LINE_STATUS if status else KVM_IRQ_LINE
        self.k.ioctl(self.vm, io.request(self.k.arch), buf)
        return int.from_bytes(buf[:4], bo, signed=True)

    def queue_intr(self, vcpu: int) -> int:
        file = self.k.current.file_at(vcpu)
        assert isinstance(file, VcpuFile)
        return file.vcpu.stats.value("queue_intr")


def xics_cases() -> list[tuple[str, int]]:
    return [(h, t) for h in XICS_HOSTS for t in vm_types(h)]


# -- kvm_ioctl_create_device() --------------------------------------------------------------


@pytest.mark.parametrize(("host", "vm_type"), xics_cases())
def test_create_device_xics_is_a_file_one_per_vm(host: str, vm_type: int) -> None:
    """The fd goes into the struct (0 returned); a second XICS is EEXIST; TEST makes nothing."""
    g = Guest(host, vm_type)
    ret, cd = g.create(KVM_DEV_TYPE_XICS)
    assert ret == 0 and g.k.current.link(cd["fd"]) == "anon_inode:kvm-xics"
    assert g.k.current.file_kind(cd["fd"]) is XICS
    assert errno_of(g.create, KVM_DEV_TYPE_XICS) == errno.EEXIST
    assert g.create(KVM_DEV_TYPE_XICS, flags=1) == (0, {"type": KVM_DEV_TYPE_XICS, "fd": 0xEEEE, "flags": 1})
    assert errno_of(g.k.ioctl, cd["fd"], KVM_CREATE_DEVICE.request(g.k.arch), 0) == errno.ENOTTY  # no .ioctl


@pytest.mark.parametrize("host", VM_HOSTS)
@pytest.mark.parametrize(("dev_type", "why"), [(0, "unregistered"), (1, "MPIC: e500 only"), (17, "KVM_DEV_TYPE_MAX")])
def test_create_device_of_no_registered_type_is_enodev(host: str, dev_type: int, why: str) -> None:
    g = Guest(host)
    assert errno_of(g.create, dev_type) == errno.ENODEV
    assert errno_of(g.create, dev_type, flags=1) == errno.ENODEV  # the type first, then TEST


@pytest.mark.parametrize("host", XICS_HOSTS)
def test_xive_is_no_device_without_xive_in_hv_mode(host: str) -> None:
    assert errno_of(Guest(host).create, KVM_DEV_TYPE_XIVE, flags=1) == errno.ENODEV


@pytest.mark.parametrize("host", VM_HOSTS)
def test_create_device_faults_at_its_struct(host: str) -> None:
    g = Guest(host)
    assert errno_of(g.k.ioctl, g.vm, KVM_CREATE_DEVICE.request(g.k.arch), 0) == errno.EFAULT


# -- book3s_xics.c: the sources --------------------------------------------------------------


@pytest.mark.parametrize(("host", "vm_type"), xics_cases())
def test_xics_sources_are_set_and_read_back(host: str, vm_type: int) -> None:
    g = Guest(host, vm_type)
    dev = g.device()
    assert errno_of(g.get_source, dev, 4096) == errno.ENOENT  # no ICS yet
    g.source(dev, 4096, KVM_XICS_MASKED | 0xFF << 32 | KVM_XICS_LEVEL_SENSITIVE)  # masked: any server
    assert g.get_source(dev, 4096) == KVM_XICS_MASKED | 0xFF << 32 | KVM_XICS_LEVEL_SENSITIVE
    assert errno_of(g.get_source, dev, 4097) == errno.ENOENT  # its ICS exists, the source was never set
    assert g.get_source(dev, 1 << 32 | 4096) == g.get_source(dev, 4096)  # get looks up the u32 irq
    assert errno_of(g.source, dev, 1 << 32 | 4096, 0) == errno.ENOENT  # set checks the long first
    assert errno_of(g.source, dev, 15, KVM_XICS_MASKED) == errno.ENOENT  # below KVMPPC_XICS_FIRST_IRQ
    assert errno_of(g.source, dev, 5000, 5 << 32) == errno.EINVAL  # a priority for server 0: no ICP
    assert errno_of(g.source, dev, 1 << 20, 0) == errno.ENOENT  # past KVMPPC_XICS_NR_IRQS
    assert errno_of(g.source, dev, 8192, None) == errno.EFAULT  # get_user at NULL: its ICS made first
    assert errno_of(g.get_source, dev, 8192) == errno.ENOENT


@pytest.mark.parametrize("host", XICS_HOSTS)
def test_xics_attribute_groups(host: str) -> None:
    g = Guest(host)
    dev = g.device()
    assert g.attr(dev, KVM_HAS_DEVICE_ATTR, KVM_DEV_XICS_GRP_SOURCES, 16, None) == 0
    for group, attr in (
        (KVM_DEV_XICS_GRP_SOURCES, 15),
        (KVM_DEV_XICS_GRP_SOURCES, 1 << 20),
        (KVM_DEV_XICS_GRP_CTRL, 1),
    ):
        assert errno_of(g.attr, dev, KVM_HAS_DEVICE_ATTR, group, attr, None) == errno.ENXIO
    assert errno_of(g.attr, dev, KVM_SET_DEVICE_ATTR, KVM_DEV_XICS_GRP_CTRL, 1, 8) == errno.ENXIO  # no NR_SERVERS
    assert errno_of(g.k.ioctl, dev, KVM_SET_DEVICE_ATTR.request(g.k.arch), 0) == errno.EFAULT


# -- KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS) and the ICPs -------------------------------------------


@pytest.mark.parametrize(("host", "vm_type"), xics_cases())
def test_a_vcpu_connects_to_the_vms_xics_once(host: str, vm_type: int) -> None:
    g = Guest(host, vm_type)
    assert errno_of(g.icp, g.vcpus[0]) == errno.ENXIO  # no ICP yet
    dev = g.device()
    assert errno_of(g.connect, g.vcpus[0], 999, 0) == errno.EBADF
    assert errno_of(g.connect, g.vcpus[0], g.vm, 0) == errno.EPERM  # not a KVM device
    assert errno_of(g.connect, g.vcpus[0], g.device(KVM_DEV_TYPE_VFIO), 0) == errno.EPERM  # not kvm-xics
    other_vm = int(g.k.ioctl(g.k.open(), g.k.KVM_CREATE_VM, vm_type))
    other = Guest.__new__(Guest)
    other.k, other.vm = g.k, other_vm
    assert errno_of(g.connect, g.vcpus[0], other.device(), 0) == errno.EPERM  # another VM's XICS
    assert g.connect(g.vcpus[0], dev, 7) == 0
    assert g.icp(g.vcpus[0]) == 0xFF << 24 | 0xFF << 16  # CPPR 0, no interrupt, MFRR and pending masked
    assert errno_of(g.connect, g.vcpus[0], dev, 8) == errno.EBUSY
    assert errno_of(g.connect, g.vcpus[1], dev, 7) == errno.EEXIST  # server 7 is vcpu 0's
    assert errno_of(g.connect, g.vcpus[1], dev, 0, cap=KVM_CAP_PPC_IRQ_XIVE) in (errno.ENXIO, errno.EPERM)


@pytest.mark.parametrize("host", [h for h in XICS_HOSTS if 1 in vm_types(h)])
def test_an_hv_vcpu_connects_before_papr_and_fails_the_sanity_check(host: str) -> None:
    """kvm_vcpu_ioctl_enable_cap(): the connect succeeds, then kvmppc_sanity_check's EINVAL."""
    k = Kernel.from_profile(host)
    g = Guest.__new__(Guest)
    g.k, g.vm = k, int(k.ioctl(k.open(), k.KVM_CREATE_VM, 1))
    vcpu = int(k.ioctl(g.vm, KVM_CREATE_VCPU.request(k.arch), 0))
    dev = g.device()
    assert errno_of(g.connect, vcpu, dev, 0) == errno.EINVAL
    assert g.icp(vcpu) == RESET_ICP  # connected all the same
    assert errno_of(g.connect, vcpu, dev, 0) == errno.EBUSY


@pytest.mark.parametrize("host", XICS_HOSTS)
def test_an_icp_state_must_be_consistent(host: str) -> None:
    g = Guest(host)
    dev = g.device()
    g.connect(g.vcpus[0], dev, 0)
    g.icp(g.vcpus[0], RESET_ICP)
    assert g.icp(g.vcpus[0]) == RESET_ICP
    for bad in (0x05 << 16, 2 << 32 | 0xFF << 56 | 0x10 << 24 | 0x20 << 16, 4096 << 32 | 0x80 << 56 | 0x90 << 16):
        assert errno_of(g.icp, g.vcpus[0], bad) == errno.EINVAL
    g.source(dev, 4096, KVM_XICS_MASKED)  # its ICS exists now
    pending = 0xFF << 56 | 4096 << 32 | 0xFF << 24 | 0x05 << 16
    before = g.queue_intr(g.vcpus[0])
    g.icp(g.vcpus[0], pending)
    assert g.icp(g.vcpus[0]) == pending and g.queue_intr(g.vcpus[0]) == before + 1  # the output asserted


@pytest.mark.parametrize(("host", "vm_type"), xics_cases())
def test_irq_line_delivers_to_the_sources_server(host: str, vm_type: int) -> None:
    g = Guest(host, vm_type)
    assert errno_of(g.irq_line, 4096, 1) == errno.ENXIO  # no in-kernel interrupt controller yet
    dev = g.device()
    g.connect(g.vcpus[0], dev, 0)
    g.icp(g.vcpus[0], 0xFF << 56 | 0xFF << 24 | 0xFF << 16)  # CPPR 0xff: accepts any priority
    assert g.irq_line(4096, 1, status=True) == -errno.EINVAL  # no such source: the status says so
    g.source(dev, 4096, 5 << 32)  # server 0, priority 5, an MSI
    g.source(dev, 4097, KVM_XICS_MASKED | 5 << 32)
    before = g.queue_intr(g.vcpus[0])
    assert g.irq_line(4096, KVM_INTERRUPT_SET, status=True) == 0
    assert g.icp(g.vcpus[0]) == 0xFF << 56 | 4096 << 32 | 0xFF << 24 | 5 << 16
    assert g.queue_intr(g.vcpus[0]) == before + 1
    assert g.get_source(dev, 4096) == 5 << 32 | KVM_XICS_PRESENTED
    g.irq_line(4097, 1)  # masked: pending, not presented
    assert g.get_source(dev, 4097) == KVM_XICS_MASKED | 5 << 32 | KVM_XICS_PENDING | KVM_XICS_PRESENTED
    assert g.irq_line(4097, KVM_INTERRUPT_UNSET) == 4097  # KVM_IRQ_LINE writes nothing back


@pytest.mark.parametrize("host", XICS_HOSTS)
def test_a_beaten_interrupt_waits_for_a_resend(host: str) -> None:
    """A priority the CPPR does not let through marks the source for resend; lowering the MFRR
    below it (KVM_SET_ONE_REG) does not resend, raising it past the old one does."""
    g = Guest(host)
    dev = g.device()
    g.connect(g.vcpus[0], dev, 0)
    g.source(dev, 4096, 5 << 32)
    g.icp(g.vcpus[0], 0x05 << 56 | 0xFF << 24 | 0xFF << 16)  # CPPR 5: priority 5 does not beat it
    g.irq_line(4096, 1)
    assert g.get_source(dev, 4096) == 5 << 32 | KVM_XICS_PENDING | KVM_XICS_PRESENTED  # resend
    assert g.icp(g.vcpus[0]) == 0x05 << 56 | 0xFF << 24 | 0xFF << 16
    g.icp(g.vcpus[0], 0xFF << 56 | 0xFF << 24 | 0xFF << 16)  # MFRR not raised: no resend
    assert g.icp(g.vcpus[0]) == 0xFF << 56 | 0xFF << 24 | 0xFF << 16


@pytest.mark.parametrize("host", XICS_HOSTS)
def test_closing_the_device_frees_the_icps(host: str) -> None:
    g = Guest(host)
    dev = g.device()
    g.connect(g.vcpus[0], dev, 0)
    g.k.close(dev)
    assert errno_of(g.icp, g.vcpus[0]) == errno.ENXIO
    assert errno_of(g.irq_line, 4096, 1) == errno.ENXIO
    again = g.device()
    assert g.connect(g.vcpus[0], again, 0) == 0  # irq_type is the default again


# -- vfio.c ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", VM_HOSTS)
def test_vfio_device_one_per_vm_and_no_vfio_files(host: str) -> None:
    g = Guest(host)
    dev = g.device(KVM_DEV_TYPE_VFIO)
    assert g.k.current.file_kind(dev) is VFIO and g.k.current.link(dev) == "anon_inode:kvm-vfio"
    assert errno_of(g.create, KVM_DEV_TYPE_VFIO) == errno.EBUSY
    tce = 3 if g.k.host.spapr_tce_iommu else None
    for attr in (1, 2, 3):
        expected = 0 if attr in (1, 2) or attr == tce else errno.ENXIO
        try:
            got = g.attr(dev, KVM_HAS_DEVICE_ATTR, KVM_DEV_VFIO_FILE, attr, None)
        except OSError as exc:
            got = exc.errno or 0
        assert got == expected
    set_file = (dev, KVM_SET_DEVICE_ATTR, KVM_DEV_VFIO_FILE)
    assert errno_of(g.attr, *set_file, 1, g.vm, 4) == errno.EINVAL  # an open fd, no VFIO file
    assert errno_of(g.attr, *set_file, 1, 999, 4) == errno.EBADF
    assert errno_of(g.attr, *set_file, 2, g.vm, 4) == errno.ENOENT  # never added
    assert errno_of(g.attr, *set_file, 1, None) == errno.EFAULT
    assert errno_of(g.attr, dev, KVM_GET_DEVICE_ATTR, KVM_DEV_VFIO_FILE, 1, 0) == errno.EPERM  # no get_attr
    g.k.close(dev)
    assert g.device(KVM_DEV_TYPE_VFIO) >= 0
