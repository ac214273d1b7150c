"""arch/powerpc/kvm/book3s_xive.c: XICS-on-XIVE, the ``kvm-xive`` device a PowerNV host with XIVE
(POWER9 and later, in HV mode) registers for KVM_DEV_TYPE_XICS (``kvm_xive_ops``).

Userspace sees the XICS interface (``KVM_DEV_XICS_GRP_SOURCES``, ``KVM_REG_PPC_ICP_STATE``,
``KVM_IRQ_LINE``) plus ``KVM_DEV_XICS_GRP_CTRL``'s NR_SERVERS; underneath, every source gets an
IPI of the XIVE hardware and each connected vcpu a virtual processor (VP) with one event queue a
priority.  What the answers depend on is modelled as that hardware: an interrupt's event state
buffer (:class:`Esb`, its PQ bits: a trigger sets P, or Q where P is set; an EOI clears P, and
fires again where Q was set), where its routing sends it (a VP and priority, or nowhere), and the
queues a notification lands in (a priority is provisioned for every connected vcpu on first use).
Reading a source (``xive_get_source``) is the kernel's: the first read of a round masks every
source to collect its P and Q, scans the queues for sources still in them (PENDING), and unmasks;
the round ends when every valid source has been read.  No guest runs, so no queue is consumed and
no escalation matters.  XIVE's native device (KVM_DEV_TYPE_XIVE, book3s_xive_native.c) is not
modelled (kvmsim.kernel.powerpc.device_ops_table)."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ..uapi import (
    KVM_DEV_XICS_GRP_CTRL,
    KVM_DEV_XICS_GRP_SOURCES,
    KVM_DEV_XICS_NR_SERVERS,
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
from .book3s_xics import (
    KVMPPC_XICS_FIRST_IRQ,
    KVMPPC_XICS_ICS_SHIFT,
    KVMPPC_XICS_IRQ_PER_ICS,
    KVMPPC_XICS_MAX_ICS_ID,
    KVMPPC_XICS_NR_IRQS,
    MASKED,
    XICS_IPI,
    check_connect,
    get_source_attr,
    has_attr,
    settable_source,
)
from .errors import KvmError
from .kvm_device import AttrAccess, KvmDevice, KvmDeviceOps

KVMPPC_XIVE_Q_COUNT = 8
# an ESB's PQ bits (asm/xive-regs.h XIVE_ESB_VAL_*): P, the interrupt was presented; Q, it fired again
PQ_00, PQ_01, PQ_10, PQ_11 = 0, 1, 2, 3
VP_BASE = 0x800  # xive_native_alloc_vp_block()'s first VP: OPAL's choice, never visible to userspace


def xive_prio_from_guest(prio: int) -> int:
    """book3s_xive.h: priorities 6 and 7 (and anything above 5 but 0xff) are the host's: 6."""
    return prio if prio == MASKED or prio < 6 else 6


@attrs.define(eq=False)
class Esb:
    """One interrupt's event state buffer and its routing (the EAS): where a notification goes
    (a VP and priority; None: masked, it goes nowhere) and the number it writes there."""

    pq: int = PQ_01  # a fresh IPI is off until the kernel sets it
    target: tuple[int, int] | None = None
    eisn: int = 0

    # xive_vm_esb_load(XIVE_ESB_SET_PQ_xx): the new PQ, the old one returned
    def set_pq(self, pq: int) -> int:
        old, self.pq = self.pq, pq
        return old

    # the trigger page: 00 → 10 and a notification; 10, 11 → 11; 01 (off) stays
    def trigger(self) -> bool:
        if self.pq == PQ_00:
            self.pq = PQ_10
            return True
        if self.pq in (PQ_10, PQ_11):
            self.pq = PQ_11
        return False


@attrs.define(eq=False)
class XiveIrqState:
    """``struct kvmppc_xive_irq_state``: one source, its IPI's ESB (``ipi``, made at first set)."""

    number: int
    valid: bool = False
    lsi: bool = False
    asserted: bool = False
    guest_priority: int = MASKED
    saved_priority: int = MASKED
    act_priority: int = MASKED
    act_server: int = 0
    old_p: bool = False
    old_q: bool = False
    saved_p: bool = False
    saved_q: bool = False
    saved_scan_prio: int = 0
    in_queue: bool = False
    ipi: Esb | None = None


@attrs.define(eq=False)
class XiveSrcBlock:
    """``struct kvmppc_xive_src_block``: 1024 sources, every one masked until set."""

    id: int
    irq_state: list[XiveIrqState]

    @classmethod
    def create(cls, bid: int) -> XiveSrcBlock:  # kvmppc_xive_create_src_block()
        first = bid << KVMPPC_XICS_ICS_SHIFT
        return cls(bid, [XiveIrqState(first | i) for i in range(KVMPPC_XICS_IRQ_PER_ICS)])


@attrs.define(eq=False)
class XiveVcpu:
    """``struct kvmppc_xive_vcpu``: a connected vcpu's server number, VP, CPPR and MFRR, its VP
    IPI, and its event queues by priority (a provisioned queue: the numbers written to it)."""

    server_num: int
    vp_id: int
    vp_ipi: Esb
    cppr: int = 0
    mfrr: int = MASKED
    valid: bool = True
    delayed_irq: int = 0
    queues: dict[int, list[int]] = attrs.Factory(dict)
    xive: Xive | None = None  # xc->xive


@attrs.define(eq=False)
class Xive:
    """``struct kvmppc_xive``: the VM's source blocks, its VP block (allocated at the first
    connect, sized by NR_SERVERS), the priorities provisioned (``qmap``), and the save round's
    counts.  ``vcpus`` lists the VM's vcpus' XIVE state in kvm_for_each_vcpu's order (None for a
    vcpu not connected); ``pack`` is kvmppc_pack_vcpu_id for the VM."""

    vcpus: Callable[[], list[XiveVcpu | None]]
    pack: Callable[[int], int]
    kvm_max_vcpus: int
    kvm_max_vcpu_ids: int
    printk: Callable[[str], None]
    src_blocks: dict[int, XiveSrcBlock] = attrs.Factory(dict)
    max_sbid: int = 0
    src_count: int = 0
    saved_src_count: int = 0
    nr_servers: int = 0
    vp_base: int | None = None  # XIVE_INVALID_VP until the first connect
    qmap: int = 0
    delayed_irqs: int = 0

    def connected(self) -> Iterator[XiveVcpu]:
        return (xc for xc in self.vcpus() if xc is not None)

    # kvmppc_xive_find_source(): by the u32 irq's block
    def find_source(self, irq: int) -> tuple[XiveSrcBlock | None, int]:
        irq &= 0xFFFFFFFF
        bid, idx = irq >> KVMPPC_XICS_ICS_SHIFT, irq & (KVMPPC_XICS_IRQ_PER_ICS - 1)
        return (None if bid > KVMPPC_XICS_MAX_ICS_ID else self.src_blocks.get(bid)), idx

    def find_server(self, nr: int) -> XiveVcpu | None:  # kvmppc_xive_find_server()
        return next((xc for xc in self.connected() if xc.server_num == nr), None)

    def vp(self, server: int) -> int:  # kvmppc_xive_vp()
        assert self.vp_base is not None
        return self.vp_base + self.pack(server)

    # -- the hardware: notifications into queues -----------------------------------------------

    def trigger(self, esb: Esb) -> None:
        if esb.trigger():
            self.notify(esb)

    # the router: the EAS's VP and priority, a notification written to that queue if it has one
    def notify(self, esb: Esb) -> None:
        if esb.target is None:
            return
        vp_id, prio = esb.target
        xc = next((xc for xc in self.connected() if xc.vp_id == vp_id), None)
        if xc is not None and xc.valid and prio in xc.queues:
            xc.queues[prio].append(esb.eisn)

    # xive_vm_source_eoi(): P and Q cleared, fired again where Q was set (a store EOI, or the
    # SET_PQ_00 load and a trigger: the same for an IPI, whose PQ is 10 or 11 here)
    def source_eoi(self, esb: Esb) -> None:
        if esb.set_pq(PQ_00) & 1:
            self.trigger(esb)

    # xive_lock_and_mask(): masked, its P and Q saved (PQ set to 10), unless it was masked already
    def lock_and_mask(self, state: XiveIrqState) -> int:
        old_prio, state.guest_priority = state.guest_priority, MASKED
        if old_prio == MASKED:
            return old_prio
        assert state.ipi is not None
        val = state.ipi.set_pq(PQ_10)
        state.old_p, state.old_q = bool(val & 2), bool(val & 1)
        return old_prio

    # xive_finish_unmask(): the saved Q put back (PQ 11), and an EOI unless it was presented
    def finish_unmask(self, state: XiveIrqState, prio: int) -> None:
        if state.guest_priority == MASKED:
            assert state.ipi is not None
            if state.old_q:
                state.ipi.set_pq(PQ_11)
            if not state.old_p:
                self.source_eoi(state.ipi)
        state.guest_priority = prio

    # xive_check_provisioning(): a queue of this priority for every connected vcpu, once
    def check_provisioning(self, prio: int) -> None:
        if self.qmap & 1 << prio:
            return
        for xc in self.connected():
            xc.queues[prio] = []  # xive_provision_queue()
        self.qmap |= 1 << prio

    # kvmppc_xive_select_target(): the server's vcpu, else any connected vcpu with room
    def select_target(self, server: int, prio: int) -> int:
        xc = self.find_server(server)
        if xc is None:
            raise KvmError(errno.EINVAL, f"XICS-on-XIVE: server {server} is no connected vcpu")
        if xc.valid and prio in xc.queues:  # xive_try_pick_queue(): its queue's room is not modelled
            return server
        other = next((x for x in self.connected() if x.valid and prio in x.queues), None)
        if other is None:
            raise KvmError(errno.EBUSY, "XICS-on-XIVE: no vcpu has a queue of that priority")
        return other.server_num

    # xive_target_interrupt(): the target chosen, then the IPI routed to its VP and priority
    def target_interrupt(self, state: XiveIrqState, server: int, prio: int) -> None:
        server = self.select_target(server, prio)
        state.act_priority, state.act_server = prio, server
        assert state.ipi is not None
        state.ipi.target, state.ipi.eisn = (self.vp(server), prio), state.number

    # -- the device's attributes (xive_set_attr, xive_get_attr, xive_has_attr) -----------------

    # xive_set_source(): the range, the block made, get_user, the IPI, masked, targeted (a failure
    # leaves it untargeted, never an error), then its P, Q and priority restored
    def set_source(self, irq: int, get_user: Callable[[], int]) -> None:
        irq = settable_source(irq)
        sb, idx = self.find_source(irq)
        if sb is None:
            sb = self.src_blocks[irq >> KVMPPC_XICS_ICS_SHIFT] = XiveSrcBlock.create(irq >> KVMPPC_XICS_ICS_SHIFT)
            self.max_sbid = max(self.max_sbid, sb.id)
        state = sb.irq_state[idx]
        val = get_user()
        server = val & KVM_XICS_DESTINATION_MASK
        guest_prio = (val >> KVM_XICS_PRIORITY_SHIFT) & 0xFF
        if state.ipi is None:  # xive_native_alloc_irq()
            state.ipi = Esb()
        state.guest_priority = 0  # so that xive_lock_and_mask() masks it
        self.lock_and_mask(state)
        act_prio = xive_prio_from_guest(guest_prio)
        state.act_priority = MASKED
        if act_prio != MASKED:
            self.check_provisioning(act_prio)
            with contextlib.suppress(KvmError):  # a failure leaves it untargeted until the guest targets it
                self.target_interrupt(state, server, act_prio)
        if self.delayed_irqs and self.check_delayed_irq(irq):
            val |= KVM_XICS_PENDING
        state.old_p = state.old_q = state.lsi = state.asserted = False
        if val & KVM_XICS_LEVEL_SENSITIVE:
            state.lsi = True
            state.asserted = bool(val & KVM_XICS_PENDING)
        if val & KVM_XICS_PRESENTED and not val & KVM_XICS_PENDING:
            state.old_p = True
        if val & (KVM_XICS_QUEUED | KVM_XICS_PENDING):
            state.old_q = True
        if val & KVM_XICS_MASKED:
            state.guest_priority = MASKED
        else:
            self.finish_unmask(state, guest_prio)
        state.saved_priority = guest_prio
        if not state.valid:
            self.src_count += 1
        state.valid = True

    # xive_check_delayed_irq(): an ICP state restored before its source (kvmppc_xive_set_icp)
    def check_delayed_irq(self, irq: int) -> bool:
        for xc in self.connected():
            if xc.delayed_irq == irq:
                xc.delayed_irq = 0
                self.delayed_irqs -= 1
                return True
        return False

    # xive_get_source(): the save round (its first read scans), the state as XICS's bits
    def get_source(self, irq: int) -> int:
        sb, idx = self.find_source(irq)
        if sb is None or not sb.irq_state[idx].valid:
            raise KvmError(errno.ENOENT, f"XICS source {irq & 0xFFFFFFFF:#x}: never set")
        state = sb.irq_state[idx]
        if self.saved_src_count == 0:
            self.pre_save_scan()
        self.saved_src_count += 1
        val, prio = state.act_server, state.saved_scan_prio
        if prio == MASKED:
            val |= KVM_XICS_MASKED
            prio = state.saved_priority
        val |= prio << KVM_XICS_PRIORITY_SHIFT
        if state.lsi:
            val |= KVM_XICS_LEVEL_SENSITIVE
            if state.saved_p:
                val |= KVM_XICS_PENDING
        else:
            if state.saved_p:
                val |= KVM_XICS_PRESENTED
            if state.saved_q:
                val |= KVM_XICS_QUEUED
            if state.in_queue or (prio == MASKED and state.saved_q):
                val |= KVM_XICS_PENDING
        if self.saved_src_count == self.src_count:
            self.post_save_scan()
        return val

    def valid_states(self) -> Iterator[XiveIrqState]:
        for bid in range(self.max_sbid + 1):
            sb = self.src_blocks.get(bid)
            if sb is not None:
                yield from (s for s in sb.irq_state if s.valid)

    # xive_pre_save_scan(): every source masked (its P and Q saved), the queues scanned, unmasked
    def pre_save_scan(self) -> None:
        for state in self.valid_states():  # xive_pre_save_mask_irq()
            state.saved_scan_prio = self.lock_and_mask(state)
            state.saved_p, state.saved_q = state.old_p, state.old_q
        for xc in self.connected():  # xive_pre_save_queue(): what no guest has taken from them
            for prio in range(KVMPPC_XIVE_Q_COUNT):
                for irq in xc.queues.get(prio, ()):
                    if irq > XICS_IPI:
                        self.pre_save_set_queued(irq)
        for state in self.valid_states():  # xive_pre_save_unmask_irq()
            if state.saved_scan_prio != MASKED:
                self.finish_unmask(state, state.saved_scan_prio)

    def pre_save_set_queued(self, irq: int) -> None:
        sb, idx = self.find_source(irq)
        if sb is None:
            return
        state = sb.irq_state[idx]
        if not state.valid:
            self.printk(f"invalid irq 0x{irq:x} in cpu queue!")
            return
        if not state.saved_p:
            self.printk(f"Interrupt 0x{irq:x} is marked in a queue but P not set !")
        state.in_queue = True

    def post_save_scan(self) -> None:  # xive_post_save_scan()
        for sb in self.src_blocks.values():
            for state in sb.irq_state:
                state.in_queue = False
        self.saved_src_count = 0

    # kvmppc_xive_set_nr_servers(): a u32; only before the VP block is allocated
    def set_nr_servers(self, get_user: Callable[[], int]) -> None:
        nr_servers = get_user()
        if not nr_servers or nr_servers > self.kvm_max_vcpu_ids:
            raise KvmError(errno.EINVAL, f"XICS-on-XIVE NR_SERVERS {nr_servers}: not in 1..{self.kvm_max_vcpu_ids}")
        if self.vp_base is not None:
            raise KvmError(errno.EBUSY, "XICS-on-XIVE NR_SERVERS: the VP block is allocated (a vcpu is connected)")
        self.nr_servers = min(nr_servers, self.kvm_max_vcpus)

    @staticmethod
    def has_attr(group: int, attr: int) -> None:
        if group == KVM_DEV_XICS_GRP_SOURCES and KVMPPC_XICS_FIRST_IRQ <= attr < KVMPPC_XICS_NR_IRQS:
            return
        if group == KVM_DEV_XICS_GRP_CTRL and attr == KVM_DEV_XICS_NR_SERVERS:
            return
        raise KvmError(errno.ENXIO, f"XICS-on-XIVE has no attribute {attr:#x} in group {group}")

    # -- KVM_IRQ_LINE --------------------------------------------------------------------------

    # kvmppc_xive_set_irq(): a valid source; an LSI's level kept; anything but a lowering triggers
    def set_irq(self, irq: int, level: int) -> int:
        sb, idx = self.find_source(irq)
        if sb is None or not sb.irq_state[idx].valid:
            return -errno.EINVAL
        state = sb.irq_state[idx]
        if (level == 1 and state.lsi) or level == KVM_INTERRUPT_SET_LEVEL:
            state.asserted = True
        elif level in (0, KVM_INTERRUPT_UNSET):
            state.asserted = False
            return 0
        assert state.ipi is not None
        self.trigger(state.ipi)
        return 0

    # -- a vcpu's presenter ----------------------------------------------------------------------

    # kvmppc_xive_connect_vcpu() after its checks of the device and vcpu: the VP's id, then the vcpu
    def connect_vcpu(self, cpu: int) -> XiveVcpu:
        vp_id = self.compute_vp_id(cpu)
        xc = XiveVcpu(cpu, vp_id, Esb(target=(vp_id, 0), eisn=XICS_IPI), xive=self)
        for prio in range(KVMPPC_XIVE_Q_COUNT):
            if self.qmap & 1 << prio:  # a priority in use: its queue provisioned
                xc.queues[prio] = []
        xc.vp_ipi.set_pq(PQ_00)  # the IPI routed to the VP's queue 0, on
        return xc

    # kvmppc_xive_compute_vp_id(): the packed id below NR_SERVERS, the VP block, the VP free
    def compute_vp_id(self, cpu: int) -> int:
        if self.pack(cpu) >= self.nr_servers:
            raise KvmError(errno.EINVAL, f"KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS): server {cpu} is past NR_SERVERS")
        if self.vp_base is None:
            self.vp_base = VP_BASE  # xive_native_alloc_vp_block(nr_servers)
        vp_id = self.vp(cpu)
        if any(xc.vp_id == vp_id for xc in self.connected()):
            raise KvmError(errno.EEXIST, f"KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS): server {cpu}'s VP is another vcpu's")
        return vp_id

    # xive_restore_pending_irq(): a source's IPI triggered again (an ICP's XISR restored)
    def restore_pending_irq(self, irq: int) -> bool:
        sb, idx = self.find_source(irq)
        if sb is None or not sb.irq_state[idx].valid:
            return False
        ipi = sb.irq_state[idx].ipi
        assert ipi is not None
        self.trigger(ipi)
        return True


# kvmppc_xive_get_icp(): the CPPR and MFRR; no XISR, the pending priority always 0xff
def get_icp(xc: XiveVcpu) -> int:
    return (
        xc.cppr << KVM_REG_PPC_ICP_CPPR_SHIFT
        | xc.mfrr << KVM_REG_PPC_ICP_MFRR_SHIFT
        | MASKED << KVM_REG_PPC_ICP_PPRI_SHIFT
    )


# kvmppc_xive_set_icp(): no consistency check; an MFRR that beats the CPPR fires the VP's IPI,
# an XISR past the IPI fires its source again (or waits for the source to be set)
def set_icp(xc: XiveVcpu, icpval: int) -> None:
    xive = xc.xive
    if xive is None:
        raise KvmError(errno.ENOENT, "KVM_SET_ONE_REG(ICP_STATE): the VM's XICS-on-XIVE device is gone")
    cppr = (icpval >> KVM_REG_PPC_ICP_CPPR_SHIFT) & 0xFF
    xisr = (icpval >> KVM_REG_PPC_ICP_XISR_SHIFT) & KVM_REG_PPC_ICP_XISR_MASK
    mfrr = (icpval >> KVM_REG_PPC_ICP_MFRR_SHIFT) & 0xFF
    xc.cppr, xc.mfrr = cppr, mfrr
    if mfrr < cppr:
        xive.trigger(xc.vp_ipi)
    if xisr > XICS_IPI and not xive.restore_pending_irq(xisr):
        xc.delayed_irq = xisr
        xive.delayed_irqs += 1


# -- kvm_xive_ops ------------------------------------------------------------------------------


def kvm_xive_ops(kind: FileKind, printk: Callable[[str], None], kvm_max_vcpus: int, kvm_max_vcpu_ids: int,
                 pack: Callable[[Any, int], int]) -> KvmDeviceOps:  # fmt: skip
    """book3s_xive.c's ``kvm_xive_ops``: ``pack(vm, id)`` is kvmppc_pack_vcpu_id for a VM."""

    # kvmppc_xive_create(): one per VM (a VM with XICS's or XIVE's device has one already)
    def create(dev: KvmDevice, type_: int) -> None:
        vm = dev.kvm
        if vm.xive is not None:
            raise KvmError(errno.EEXIST, "KVM_CREATE_DEVICE: the VM has its XICS-on-XIVE device already")
        dev.private = vm.xive = Xive(
            lambda: [v.xive_vcpu for v in vm.vcpus],
            lambda cpu: pack(vm, cpu),
            kvm_max_vcpus,
            kvm_max_vcpu_ids,
            printk,
            nr_servers=kvm_max_vcpus,
        )

    return KvmDeviceOps("kvm-xive", kind, create, xive_set_attr, get_source_attr, has_attr, xive_release)


def xive_set_attr(dev: KvmDevice, attr: dict[str, int], access: AttrAccess) -> int:
    xive: Xive = dev.private
    if attr["group"] == KVM_DEV_XICS_GRP_SOURCES:
        xive.set_source(attr["attr"], lambda: access.get_user(attr["addr"], 8))
        return 0
    if attr["group"] == KVM_DEV_XICS_GRP_CTRL and attr["attr"] == KVM_DEV_XICS_NR_SERVERS:
        xive.set_nr_servers(lambda: access.get_user(attr["addr"], 4))
        return 0
    raise KvmError(errno.ENXIO, f"XICS-on-XIVE sets no attribute {attr['attr']:#x} of group {attr['group']}")


# kvmppc_xive_release(): every vcpu's presenter freed (its irq_type back to the default), the VM's
# XIVE gone (its sources masked and freed with it)
def xive_release(dev: KvmDevice) -> None:
    vm = dev.kvm
    for vcpu in vm.vcpus:
        vcpu.xive_vcpu = None
    vm.xive = None


# kvmppc_xive_connect_vcpu(): the device's ops and VM, the vcpu's irq_type, then its VP
def connect_vcpu(dev: KvmDevice, vcpu_vm: Any, has_irq: bool, cpu: int) -> XiveVcpu:
    check_connect(dev, vcpu_vm, has_irq, Xive)
    xive: Xive = dev.private
    return xive.connect_vcpu(cpu)
