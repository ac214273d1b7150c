"""arch/powerpc/kvm/book3s_xics.c: KVM's emulation of the PAPR XICS interrupt controller, the
``kvm-xics`` device (``kvm_xics_ops``) a pseries host (and any host without XIVE in HV mode)
registers for KVM_DEV_TYPE_XICS.

The sources live in ICSs of 1024 (``kvmppc_ics``, made as a source is first set), each vcpu
connected by ``KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS)`` has a presentation controller (``kvmppc_icp``)
with the server number userspace gave it.  Userspace sets and reads a source's state through the
device's ``KVM_DEV_XICS_GRP_SOURCES`` attributes (a u64 at ``addr``), an ICP's through
``KVM_REG_PPC_ICP_STATE``, and raises a source with ``KVM_IRQ_LINE``.  Delivery is the kernel's:
a source presented to its server's ICP where the priority beats the ICP's CPPR, MFRR and pending
priority (the external interrupt then queued on the vcpu), else left for a resend; a masked
source keeps its interrupt pending (``masked_pending``).  No guest runs, so nothing is ever
accepted (H_XIRR) or completed (H_EOI)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import attrs

from ..uapi import (
    KVM_DEV_XICS_GRP_SOURCES,
    KVM_INTERRUPT_SET,
    KVM_INTERRUPT_SET_LEVEL,
    KVM_INTERRUPT_UNSET,
    KVM_REG_PPC_ICP_CPPR_SHIFT,
    KVM_REG_PPC_ICP_MFRR_SHIFT,
    KVM_REG_PPC_ICP_PPRI_SHIFT,
    KVM_REG_PPC_ICP_XISR_MASK,
    KVM_REG_PPC_ICP_XISR_SHIFT,
    KVM_XICS_DESTINATION_MASK,
    KVM_XICS_LEVEL_SENSITIVE,
    KVM_XICS_MASKED,
    KVM_XICS_PENDING,
    KVM_XICS_PRESENTED,
    KVM_XICS_PRIORITY_SHIFT,
    KVM_XICS_QUEUED,
)
from .anon_inodes import FileKind
from .errors import KvmError
from .kvm_device import AttrAccess, KvmDevice, KvmDeviceOps

# book3s_xics.h
KVMPPC_XICS_MAX_ICS_ID, KVMPPC_XICS_ICS_SHIFT = 1023, 10
KVMPPC_XICS_IRQ_PER_ICS = 1 << KVMPPC_XICS_ICS_SHIFT
KVMPPC_XICS_FIRST_IRQ = 16  # 0 is no interrupt, 2 the IPI, the rest below 16 reserved
KVMPPC_XICS_NR_IRQS = (KVMPPC_XICS_MAX_ICS_ID + 1) * KVMPPC_XICS_IRQ_PER_ICS
MASKED = 0xFF
XICS_IPI = 2
PQ_PRESENTED, PQ_QUEUED = 1, 2


def settable_source(attr: int) -> int:
    """The source a set names: the attribute as a long, ENOENT outside KVMPPC_XICS_FIRST_IRQ ..
    KVMPPC_XICS_NR_IRQS - 1 (xics_set_source's and xive_set_source's first check)."""
    irq = attr - (1 << 64) if attr >> 63 else attr
    if irq < KVMPPC_XICS_FIRST_IRQ or irq >= KVMPPC_XICS_NR_IRQS:
        raise KvmError(errno.ENOENT, f"XICS source {irq:#x}: not in {KVMPPC_XICS_FIRST_IRQ}..{KVMPPC_XICS_NR_IRQS - 1}")
    return irq


@attrs.define
class IcsIrqState:
    """``struct ics_irq_state``: one source."""

    number: int
    server: int = 0
    pq_state: int = 0
    priority: int = MASKED
    saved_priority: int = MASKED
    resend: bool = False
    masked_pending: bool = False
    lsi: bool = False  # level-sensitive
    exists: bool = False


@attrs.define
class Ics:
    """``struct kvmppc_ics``: 1024 sources, every one masked until set."""

    icsid: int
    irq_state: list[IcsIrqState]

    @classmethod
    def create(cls, icsid: int) -> Ics:  # kvmppc_xics_create_ics()
        first = icsid << KVMPPC_XICS_ICS_SHIFT
        return cls(icsid, [IcsIrqState(first | i) for i in range(KVMPPC_XICS_IRQ_PER_ICS)])


@attrs.define(eq=False)
class Icp:
    """``struct kvmppc_icp``: its server number and ``union kvmppc_icp_state``, its resend map,
    and how it queues the external interrupt on its vcpu (kvmppc_book3s_queue_irqprio) and
    takes it back (kvmppc_book3s_dequeue_irqprio)."""

    server_num: int
    queue: Callable[[], None]
    dequeue: Callable[[], None]
    cppr: int = 0
    mfrr: int = MASKED
    pending_pri: int = MASKED
    xisr: int = 0
    need_resend: bool = False
    out_ee: bool = False
    resend_map: set[int] = attrs.Factory(set)
    xics: Xics | None = None  # vcpu->kvm->arch.xics, which outlives no ICP

    def state(self) -> tuple[int, int, int, int]:
        return self.cppr, self.mfrr, self.pending_pri, self.xisr


@attrs.define(eq=False)
class Xics:
    """``struct kvmppc_xics``: the VM's ICSs by id; ``icps`` lists the VM's vcpus' ICPs (what
    kvm_for_each_vcpu finds in ``vcpu->arch.icp``)."""

    icps: Callable[[], list[Icp]]
    printk: Callable[[str], None]
    ics: dict[int, Ics] = attrs.Factory(dict)
    max_icsid: int = 0

    # kvmppc_xics_find_ics(): by the u32 irq's ICS id
    def find_ics(self, irq: int) -> tuple[Ics | None, int]:
        irq &= 0xFFFFFFFF
        icsid, src = irq >> KVMPPC_XICS_ICS_SHIFT, irq & (KVMPPC_XICS_IRQ_PER_ICS - 1)
        if icsid > KVMPPC_XICS_MAX_ICS_ID:
            return None, src
        return self.ics.get(icsid), src

    # kvmppc_xics_find_server()
    def find_server(self, nr: int) -> Icp | None:
        return next((icp for icp in self.icps() if icp.server_num == nr), None)

    def create_ics(self, irq: int) -> Ics:
        icsid = irq >> KVMPPC_XICS_ICS_SHIFT
        if icsid not in self.ics:
            self.ics[icsid] = Ics.create(icsid)
            self.max_icsid = max(self.max_icsid, icsid)
        return self.ics[icsid]

    # -- the device's attributes (xics_set_attr, xics_get_attr, xics_has_attr) ----------------

    # xics_set_source(): the range, the ICS made, then get_user of the state, the server, the store
    def set_source(self, irq: int, get_user: Callable[[], int]) -> None:
        irq = settable_source(irq)
        ics, idx = self.find_ics(irq)
        if ics is None:
            ics = self.create_ics(irq)
        irqp = ics.irq_state[idx]
        val = get_user()
        server = val & KVM_XICS_DESTINATION_MASK
        prio = (val >> KVM_XICS_PRIORITY_SHIFT) & 0xFF
        if prio != MASKED and self.find_server(server) is None:
            raise KvmError(errno.EINVAL, f"XICS source {irq:#x}: server {server} has no ICP (no vcpu connected as it)")
        irqp.server, irqp.saved_priority = server, prio
        irqp.priority = MASKED if val & KVM_XICS_MASKED else prio
        irqp.resend = irqp.masked_pending = False
        irqp.lsi = bool(val & KVM_XICS_LEVEL_SENSITIVE)
        irqp.pq_state = 0
        if val & (KVM_XICS_PRESENTED | KVM_XICS_PENDING):  # P set for PENDING too (old code saved no P)
            irqp.pq_state |= PQ_PRESENTED
        if val & KVM_XICS_QUEUED:
            irqp.pq_state |= PQ_QUEUED
        irqp.exists = True
        if val & KVM_XICS_PENDING:
            self.icp_deliver_irq(None, irqp.number, check_resend=False)

    # xics_get_source(): the u32 irq's ICS (no range check), ENOENT for a source never set
    def get_source(self, irq: int) -> int:
        ics, idx = self.find_ics(irq)
        if ics is None or not ics.irq_state[idx].exists:
            raise KvmError(errno.ENOENT, f"XICS source {irq & 0xFFFFFFFF:#x}: never set")
        irqp = ics.irq_state[idx]
        val, prio = irqp.server, irqp.priority
        if prio == MASKED:
            val |= KVM_XICS_MASKED
            prio = irqp.saved_priority
        val |= prio << KVM_XICS_PRIORITY_SHIFT
        if irqp.lsi:
            val |= KVM_XICS_LEVEL_SENSITIVE
            if irqp.pq_state & PQ_PRESENTED:
                val |= KVM_XICS_PENDING
        elif irqp.masked_pending or irqp.resend:
            val |= KVM_XICS_PENDING
        if irqp.pq_state & PQ_PRESENTED:
            val |= KVM_XICS_PRESENTED
        if irqp.pq_state & PQ_QUEUED:
            val |= KVM_XICS_QUEUED
        return val

    @staticmethod
    def has_attr(group: int, attr: int) -> None:
        if group == KVM_DEV_XICS_GRP_SOURCES and KVMPPC_XICS_FIRST_IRQ <= attr < KVMPPC_XICS_NR_IRQS:
            return
        raise KvmError(errno.ENXIO, f"XICS has no attribute {attr:#x} in group {group}")

    # -- delivery -------------------------------------------------------------------------------

    # ics_deliver_irq(): KVM_IRQ_LINE's kvm_set_irq; its return is the line's status
    def ics_deliver_irq(self, irq: int, level: int) -> int:
        ics, src = self.find_ics(irq)
        if ics is None or not ics.irq_state[src].exists:
            return -errno.EINVAL
        state = ics.irq_state[src]
        if level in (KVM_INTERRUPT_SET_LEVEL, KVM_INTERRUPT_SET):
            level = 1
        elif level == KVM_INTERRUPT_UNSET:
            level = 0  # any other value counts as 1
        if not state.lsi and level == 0:  # a no-op for an MSI
            return 0
        if state.lsi:
            if level and state.pq_state & PQ_PRESENTED:
                return 0  # an LSI already set
            pq_new = PQ_PRESENTED if level else 0
        else:
            pq_new = ((state.pq_state << 1) & 3) | PQ_PRESENTED
        state.pq_state = pq_new
        if pq_new == PQ_PRESENTED:  # P=1, Q=0: the only case that presents
            self.icp_deliver_irq(None, irq, check_resend=False)
        return 0

    # icp_deliver_irq(): to the source's server, unless masked (then pending) or beaten (resend)
    def icp_deliver_irq(self, icp: Icp | None, new_irq: int, *, check_resend: bool) -> None:
        while True:
            ics, src = self.find_ics(new_irq)
            if ics is None:
                return
            state = ics.irq_state[src]
            if icp is None or state.server != icp.server_num:
                icp = self.find_server(state.server)
                if icp is None:
                    self.printk(f"icp_deliver_irq: IRQ 0x{new_irq:06x} server 0x{state.server:x} not found !")
                    return
            if check_resend and not state.resend:
                return
            state.resend = False
            if state.priority == MASKED:
                state.masked_pending = True
                return
            delivered, reject = icp_try_to_deliver(icp, new_irq, state.priority)
            if delivered:
                if reject and reject != XICS_IPI:  # it displaced another: deliver that one again
                    new_irq, check_resend = reject, False
                    continue
            else:
                state.resend = True
                icp.resend_map.add(ics.icsid)
            return

    # icp_check_resend() and ics_check_resend(): the ICSs with a source waiting on this ICP
    def icp_check_resend(self, icp: Icp) -> None:
        for icsid in sorted(i for i in icp.resend_map if i <= self.max_icsid):
            icp.resend_map.discard(icsid)
            ics = self.ics.get(icsid)
            if ics is None:
                continue
            for state in ics.irq_state:
                if state.resend:
                    self.icp_deliver_irq(icp, state.number, check_resend=True)


# icp_try_update(): the new state, its output (an interrupt pending that beats the CPPR) queued
def icp_try_update(icp: Icp, cppr: int, mfrr: int, pending_pri: int, xisr: int, need_resend: bool) -> None:
    icp.cppr, icp.mfrr, icp.pending_pri, icp.xisr, icp.need_resend = cppr, mfrr, pending_pri, xisr, need_resend
    icp.out_ee = bool(xisr) and pending_pri < cppr
    if icp.out_ee:
        icp.queue()


# icp_try_to_deliver(): (delivered, the interrupt it displaced)
def icp_try_to_deliver(icp: Icp, irq: int, priority: int) -> tuple[bool, int]:
    if icp.cppr > priority and icp.mfrr > priority and icp.pending_pri > priority:
        reject = icp.xisr
        icp_try_update(icp, icp.cppr, icp.mfrr, priority, irq, icp.need_resend)
        return True, reject
    icp_try_update(icp, icp.cppr, icp.mfrr, icp.pending_pri, icp.xisr, True)
    return False, 0


# kvmppc_xics_get_icp(): KVM_GET_ONE_REG(KVM_REG_PPC_ICP_STATE)
def get_icp(icp: Icp) -> int:
    return (
        icp.cppr << KVM_REG_PPC_ICP_CPPR_SHIFT
        | icp.xisr << KVM_REG_PPC_ICP_XISR_SHIFT
        | icp.mfrr << KVM_REG_PPC_ICP_MFRR_SHIFT
        | icp.pending_pri << KVM_REG_PPC_ICP_PPRI_SHIFT
    )


# kvmppc_xics_set_icp(): a state consistent in itself, the external interrupt taken back, the update
def set_icp(icp: Icp, icpval: int) -> None:
    xics = icp.xics
    if xics is None:
        raise KvmError(errno.ENOENT, "KVM_SET_ONE_REG(ICP_STATE): the VM's XICS device is gone")
    cppr = (icpval >> KVM_REG_PPC_ICP_CPPR_SHIFT) & 0xFF
    xisr = (icpval >> KVM_REG_PPC_ICP_XISR_SHIFT) & KVM_REG_PPC_ICP_XISR_MASK
    mfrr = (icpval >> KVM_REG_PPC_ICP_MFRR_SHIFT) & 0xFF
    pending_pri = (icpval >> KVM_REG_PPC_ICP_PPRI_SHIFT) & 0xFF
    bad = f"KVM_SET_ONE_REG(ICP_STATE) {icpval:#018x}: inconsistent"
    if xisr == 0:
        if pending_pri != MASKED:
            raise KvmError(errno.EINVAL, f"{bad} (no interrupt, pending priority {pending_pri:#x})")
    elif xisr == XICS_IPI:
        if pending_pri != mfrr or pending_pri >= cppr:
            raise KvmError(errno.EINVAL, f"{bad} (an IPI's priority must be the MFRR's and beat the CPPR)")
    else:
        if pending_pri >= mfrr or pending_pri >= cppr:
            raise KvmError(errno.EINVAL, f"{bad} (the pending priority must beat the MFRR and the CPPR)")
        if xics.find_ics(xisr)[0] is None:
            raise KvmError(errno.EINVAL, f"{bad} (interrupt {xisr:#x} has no ICS)")
    icp.dequeue()  # kvmppc_book3s_dequeue_irqprio(BOOK3S_INTERRUPT_EXTERNAL)
    if mfrr <= icp.mfrr:
        resend, need_resend = False, icp.need_resend
    else:
        resend, need_resend = icp.need_resend, False
    icp_try_update(icp, cppr, mfrr, pending_pri, xisr, need_resend)
    if resend:
        xics.icp_check_resend(icp)


# -- kvm_xics_ops ------------------------------------------------------------------------------


def kvm_xics_ops(kind: FileKind, printk: Callable[[str], None]) -> KvmDeviceOps:
    """book3s_xics.c's ``kvm_xics_ops``, its delivery warnings going to ``printk``."""

    # kvmppc_xics_create(): one per VM
    def create(dev: KvmDevice, type_: int) -> None:
        vm = dev.kvm
        if vm.xics is not None:
            raise KvmError(errno.EEXIST, "KVM_CREATE_DEVICE: the VM has its XICS device already")
        dev.private = vm.xics = Xics(lambda: [v.icp for v in vm.vcpus if v.icp is not None], printk)

    return KvmDeviceOps("kvm-xics", kind, create, xics_set_attr, get_source_attr, has_attr, xics_release)


def xics_set_attr(dev: KvmDevice, attr: dict[str, int], access: AttrAccess) -> int:
    if attr["group"] != KVM_DEV_XICS_GRP_SOURCES:
        raise KvmError(errno.ENXIO, f"XICS has no group {attr['group']} to set")
    dev.private.set_source(attr["attr"], lambda: access.get_user(attr["addr"], 8))
    return 0


# xics_get_attr() and book3s_xive.c's xive_get_attr(): the sources only, a source's u64 put at addr
def get_source_attr(dev: KvmDevice, attr: dict[str, int], access: AttrAccess) -> int:
    if attr["group"] != KVM_DEV_XICS_GRP_SOURCES:
        raise KvmError(errno.ENXIO, f"{dev.ops.name} has no group {attr['group']} to get")
    access.put_user(attr["addr"], dev.private.get_source(attr["attr"]), 8)
    return 0


# xics_has_attr() and xive_has_attr(): the device's own table of attributes
def has_attr(dev: KvmDevice, attr: dict[str, int], access: AttrAccess) -> int:
    dev.private.has_attr(attr["group"], attr["attr"])
    return 0


# the first checks of kvmppc_xics_connect_vcpu() and kvmppc_xive_connect_vcpu(): the device's ops
# (its private part of type ``private``), its VM the vcpu's, the vcpu's irq_type the default
def check_connect(dev: KvmDevice, vcpu_vm: Any, has_irq: bool, private: type) -> None:
    cap = "KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS)"
    if not isinstance(dev.private, private):
        raise KvmError(errno.EPERM, f"{cap}: the fd is {dev.ops.name}, not the host's XICS device")
    if dev.kvm is not vcpu_vm:
        raise KvmError(errno.EPERM, f"{cap}: the {dev.ops.name} device is another VM's")
    if has_irq:
        raise KvmError(errno.EBUSY, f"{cap}: the vcpu is connected already")


# kvmppc_xics_release(): every vcpu's ICP freed (its irq_type back to the default), the VM's XICS gone
def xics_release(dev: KvmDevice) -> None:
    vm = dev.kvm
    for vcpu in vm.vcpus:
        vcpu.icp = None
    vm.xics = None


# kvmppc_xics_connect_vcpu(): the device's ops and VM, the vcpu's irq_type, then its ICP
# (kvmppc_xics_create_icp: ENODEV without the VM's XICS, EEXIST for a server number taken)
def connect_vcpu(dev: KvmDevice, vcpu_vm: Any, has_irq: bool, server_num: int,
                 queue: Callable[[], None], dequeue: Callable[[], None]) -> Icp:  # fmt: skip
    check_connect(dev, vcpu_vm, has_irq, Xics)
    xics = dev.kvm.xics
    if xics is None:
        raise KvmError(errno.ENODEV, "KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS): the VM has no XICS device")
    if xics.find_server(server_num) is not None:
        raise KvmError(errno.EEXIST, f"KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS): server {server_num} is another vcpu's")
    return Icp(server_num, queue, dequeue, xics=xics)
