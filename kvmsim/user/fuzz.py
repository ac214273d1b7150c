"""Differential fuzzing against the real kernel: argument cases drawn from a seed, asked of a
real kernel in the lab's guest and replayed on the simulator, answer by answer.

A case is a :class:`~kvmsim.user.probe.Probe` (the guest's prober runs it as it runs every
probe) named ``fuzz <i>``: case *i* of seed *S* is the same on every run.  The cases cover
every revision's request and its neighbours (the other direction and size bits, both the
powerpc and the generic encoding, the next and previous nr), on the /dev/kvm fd and on a VM
fd of each type (0, HV, PR; /dev/kvm where that type cannot be made); the struct's ``size``
at every edge (0, 23-25, 32, both page sizes and one either side, 2^63, 2^64-1, byte-swapped
24) with the buffer that long (or 24 bytes, where the size is past 64K: the kernel then must
not read it), or cut short at any length 1-32 (into the unmapped page); ``flags`` set or not,
a non-zero byte at any offset of the tail, the bad pointers (NULL, a kernel address, an
unmapped one); ``KVM_CHECK_EXTENSION`` of any number 0-300 and beyond, ``KVM_CREATE_VM`` of
types 0-15, the argument-less ioctls given one; and a struct in a read-only page, or running
from a writable page into a read-only one at any offset 1-32 (what a copy_to_user that
faults part-way leaves written is compared), or on the program's stack.  Each buffer ends against an unmapped page in
the guest, as it ends here (:func:`replay` maps nothing else), so a kernel reading past it faults alike in both.
A quarter of the cases go to each fuzz VM's vcpu 0 (its ioctls, ``KVM_GET/SET_ONE_REG`` of any
register id), and some to the VM's XICS device, which that vcpu is connected to: its attributes,
``KVM_IRQ_LINE(_STATUS)`` of its sources and the vcpu's ICP state."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterable
from typing import Literal

from ..kernel.errors import KvmError
from ..kernel.kvm_main import BootedKernel, Process
from ..kernel.usermem import PAGE_SIZE, AddressSpace
from ..uapi import (
    ARCHES,
    KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
    KVM_CAP_HALT_POLL,
    KVM_CAP_IRQ_MPIC,
    KVM_CAP_IRQ_XICS,
    KVM_CAP_PPC_BOOKE_WATCHDOG,
    KVM_CAP_PPC_DAWR1,
    KVM_CAP_PPC_ENABLE_HCALL,
    KVM_CAP_PPC_EPR,
    KVM_CAP_PPC_FWNMI,
    KVM_CAP_PPC_IRQ_XIVE,
    KVM_CAP_PPC_NESTED_HV,
    KVM_CAP_PPC_OSI,
    KVM_CAP_PPC_PAPR,
    KVM_CAP_PPC_SECURE_GUEST,
    KVM_CAP_PPC_SMT,
    KVM_CREATE_DEVICE,
    KVM_CREATE_DEVICE_STRUCT,
    KVM_CREATE_SPAPR_TCE,
    KVM_CREATE_SPAPR_TCE_64,
    KVM_CREATE_SPAPR_TCE_64_STRUCT,
    KVM_CREATE_SPAPR_TCE_STRUCT,
    KVM_CREATE_VCPU,
    KVM_DEV_TYPE_XICS,
    KVM_DEVICE_ATTR,
    KVM_DIRTY_LOG,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
    KVM_GET_DEVICE_ATTR,
    KVM_GET_DIRTY_LOG,
    KVM_GET_FPU,
    KVM_GET_MP_STATE,
    KVM_GET_ONE_REG,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_STATS_FD,
    KVM_HAS_DEVICE_ATTR,
    KVM_INTERRUPT,
    KVM_INTERRUPT_SET,
    KVM_INTERRUPT_SET_LEVEL,
    KVM_INTERRUPT_UNSET,
    KVM_IRQ_LINE,
    KVM_IRQ_LINE_STATUS,
    KVM_ONE_REG,
    KVM_PPC_ALLOCATE_HTAB,
    KVM_PPC_CONFIGURE_V3_MMU,
    KVM_PPC_GET_CPU_CHAR,
    KVM_PPC_GET_PVINFO,
    KVM_PPC_GET_RMMU_INFO,
    KVM_PPC_MMUV3_CFG,
    KVM_PPC_RTAS_DEFINE_TOKEN,
    KVM_REG_PPC,
    KVM_REG_PPC_ICP_CPPR_SHIFT,
    KVM_REG_PPC_ICP_MFRR_SHIFT,
    KVM_REG_PPC_ICP_PPRI_SHIFT,
    KVM_REG_PPC_ICP_XISR_SHIFT,
    KVM_REG_SIZE_MASK,
    KVM_REG_SIZE_SHIFT,
    KVM_REGS,
    KVM_RTAS_TOKEN_ARGS,
    KVM_RUN,
    KVM_SET_DEVICE_ATTR,
    KVM_SET_FPU,
    KVM_SET_GUEST_DEBUG,
    KVM_SET_MP_STATE,
    KVM_SET_ONE_REG,
    KVM_SET_REGS,
    KVM_SET_SIGNAL_MASK,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_USER_MEMORY_REGION2,
    KVM_SREGS,
    KVM_TRANSLATE,
    KVM_USERSPACE_MEMORY_REGION,
    KVM_USERSPACE_MEMORY_REGION2,
    KVM_VM_PPC_HV,
    KVM_VM_PPC_PR,
    KVM_XICS_LEVEL_SENSITIVE,
    KVM_XICS_MASKED,
    KVM_XICS_PENDING,
    KVM_XICS_PRESENTED,
    KVM_XICS_QUEUED,
    KVMIO,
    MSR_ME,
    ONE_REGS,
    PRTS_MASK,
    REVISIONS,
    RTAS_NAME_LEN,
    AbiRevision,
    Arch,
    KvmIoctl,
    StructLayout,
    errname,
)
from .probe import NULL, WILD, Answer, Probe, irq_level, reg_bytes

KERNEL_ADDRESS = 0xC000000000000000  # powerpc's linear map: access_ok() refuses it
MAX_BUFFER = 65537 + 8  # the longest buffer a case passes (the 64K edge and one past)
SIZES = (0, 1, 8, 16, 23, 24, 25, 31, 32, 33, 40, 64, 4095, 4096, 4097, 65535, 65536, 65537,
         1 << 63, (1 << 64) - 1, 24 << 56, 1 << 32)  # fmt: skip


def _requests(rev: AbiRevision, arch: Arch) -> list[int]:
    """A revision's request and its neighbours in both encodings."""
    assert rev.ioctl is not None
    nr, size = rev.ioctl.nr, rev.layout.size
    out = []
    for ioc in (arch.ioc, ARCHES["x86_64"].ioc):
        for direction in (ioc.none, ioc.read, ioc.write, ioc.read | ioc.write):
            for sz in (0, 16, size, 32):
                out.append(ioc.ioc(direction, KVMIO, nr, sz))
        out += [ioc.io(KVMIO, nr - 1), ioc.io(KVMIO, nr + 1)]
    return out


def _struct(rng: random.Random, rev: AbiRevision, arch: Arch) -> bytes:
    size = rng.choice(SIZES)
    length = size if 24 <= size <= 65537 else rng.choice((24, 32)) if size > 65537 else rng.choice((8, 16, 24))
    flags = rng.choice((0, 0, 0, 1, 1 << 63))
    caps = rng.choice((0, 0, (1 << 64) - 1))
    body = rev.layout.pack(arch.byteorder, size=size & ((1 << 64) - 1), flags=flags, compat_capabilities=caps)
    if rng.random() < 0.2:  # cut short: the struct runs into the unmapped page at any offset 1-32
        length = rng.randrange(1, 33)
    buf = bytearray(body[:length].ljust(length, b"\0"))
    if length > 24 and rng.random() < 0.5:  # a non-zero byte somewhere in the tail
        buf[rng.randrange(24, length)] = rng.randrange(1, 256)
    return bytes(buf)


# KVM_ENABLE_CAP on a vcpu: the capabilities kvm_vcpu_ioctl_enable_cap knows, and others.  A
# device fd argument is one no process has open (fdget's unsigned int of args[0]: 1 << 32 would
# be fd 0, open in the guest and not in the replay)
VCPU_CAPS = (KVM_CAP_PPC_OSI, KVM_CAP_PPC_PAPR, KVM_CAP_PPC_EPR, KVM_CAP_PPC_FWNMI, KVM_CAP_IRQ_XICS,
             KVM_CAP_PPC_IRQ_XIVE, KVM_CAP_IRQ_MPIC, KVM_CAP_PPC_BOOKE_WATCHDOG)  # fmt: skip
NO_FD = (999, 4096, 1_000_000)
# KVM_ENABLE_CAP on a VM: the generic ones and powerpc's (kvm_vm_ioctl_enable_cap)
VM_CAPS = (KVM_CAP_HALT_POLL, KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_PPC_ENABLE_HCALL,
           KVM_CAP_PPC_ENABLE_HCALL, KVM_CAP_PPC_SMT, KVM_CAP_PPC_NESTED_HV, KVM_CAP_PPC_SECURE_GUEST,
           KVM_CAP_PPC_DAWR1)  # fmt: skip
# vcpu ids that reach no hypervisor: QEMU as a nested-papr L0 asserts that a new vcpu's id is
# its count (hw/ppc/spapr_nested.c), so no case makes a new vcpu below KVM_MAX_VCPU_IDS
# (16384 with Book3S HV built), only the one each fuzz VM has (0) again
VCPU_IDS = (0, 16384, 16385, (1 << 31) - 1, (1 << 32) - 1, 1 << 32, -1)
# MSRs for KVM_SET_REGS: never MSR_POW (1 << 18), which halts a PR vcpu inside the ioctl until an
# interrupt (kvmsim: not modelled), nor a transaction without MSR_PR (PR's tabort, not modelled)
MSR_PR = 1 << 14
VCPU_GENERIC = (KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_TRANSLATE, KVM_SET_GUEST_DEBUG, KVM_SET_SIGNAL_MASK,
                KVM_GET_FPU, KVM_SET_FPU)  # fmt: skip
MSRS = (0, MSR_ME, 1 << 63, 3 << 33 | MSR_ME, 1 << 33, 1 << 34 | MSR_PR, ((1 << 64) - 1) & ~(1 << 18), 1 << 60 | MSR_ME)


def _vcpu_requests(arch: Arch) -> list[int]:
    """The vcpu ioctls kvmsim models and their neighbours in direction and size (never KVM_RUN
    itself: a real kernel would run a sane vcpu's guest)."""
    out = []
    ioc = arch.ioc
    for io in (KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_ENABLE_CAP, KVM_RUN):
        for direction in (ioc.none, ioc.read, ioc.write, ioc.read | ioc.write):
            for sz in (0, 16, 104, 392, 1232):
                out.append(ioc.ioc(direction, KVMIO, io.nr, sz))
    return [r for r in out if r != KVM_RUN.request(arch)]


def _vcpu_case(rng: random.Random, name: str) -> Probe:
    """A vcpu ioctl on a fuzz VM's vcpu 0 (of the HV or the PR VM; /dev/kvm where none)."""
    fd = rng.choice(("vcpu-hv", "vcpu-pr"))
    kind = rng.random()
    if kind < 0.4:  # KVM_ENABLE_CAP: a capability, flags, an argument; whole, cut short or a bad pointer
        cap = rng.choice((*VCPU_CAPS, *VCPU_CAPS, rng.randrange(0, 301), rng.randrange(1 << 32)))
        device = cap in (KVM_CAP_IRQ_XICS, KVM_CAP_PPC_IRQ_XIVE, KVM_CAP_IRQ_MPIC)  # args[0] is an fd
        arg0 = rng.choice(NO_FD if device else (0, 1, *NO_FD))
        values = {"cap": cap, "flags": rng.choice((0, 0, 0, 1, 1 << 31)), "arg0": arg0}
        length = rng.choice((KVM_ENABLE_CAP_STRUCT.size,) * 4 + (rng.randrange(1, KVM_ENABLE_CAP_STRUCT.size),))
        # a kernel address only where the kernel checks it: copy_from_user's mask makes a top-bit
        # address read kernel memory on a bare-metal radix host (powerpc.masked_read_reaches_the_kernel)
        bad = rng.choice((None, None, None, None, NULL, WILD, WILD))

        def cap_arg(a: Arch, v: dict[str, int] = values, n: int = length, b: int | None = bad) -> int | bytes:
            return b if b is not None else KVM_ENABLE_CAP_STRUCT.pack(a.byteorder, v)[:n]

        return Probe(name, fd, KVM_ENABLE_CAP.request, cap_arg)  # type: ignore[arg-type]
    if kind < 0.75:  # KVM_SET_REGS then (in a later case) KVM_GET_REGS, any length: a short buffer
        # ends against the unmapped page, and what a copy_to_user that faults part-way wrote shows
        io = rng.choice((KVM_GET_REGS, KVM_SET_REGS))
        # pc ... msr as drawn, the rest one byte repeated (the prober's table gives a buffer's
        # first PROBE_HEAD bytes one by one, then a fill byte)
        rest = int.from_bytes(bytes([rng.choice((0, 0, 0xFF, 0x5A))]) * 8, "little")
        regs = dict.fromkeys(KVM_REGS.fields, rest)
        regs |= {f: rng.choice((0, 1, (1 << 64) - 1, rng.randrange(1 << 64))) for f in ("pc", "cr", "ctr", "lr", "xer")}
        regs["msr"] = rng.choice(MSRS)
        length = rng.choice((KVM_REGS.size,) * 3 + (rng.randrange(1, KVM_REGS.size), 48, 40))
        bad = rng.choice((None, None, None, None, NULL, WILD))

        def regs_arg(a: Arch, v: dict[str, int] = regs, n: int = length, b: int | None = bad) -> int | bytes:
            return b if b is not None else KVM_REGS.pack(a.byteorder, v)[:n]

        return Probe(name, fd, io.request, regs_arg)  # type: ignore[arg-type]
    if kind < 0.82:  # KVM_GET_SREGS at any length; KVM_SET_SREGS cut short or a bad pointer (a whole
        # one with another PVR is EINVAL on HV, a 32-bit Book3S PR vcpu on PR: not modelled)
        io = rng.choice((KVM_GET_SREGS, KVM_SET_SREGS))
        n = rng.choice((KVM_SREGS.size, rng.randrange(1, KVM_SREGS.size), 24, 1040))
        fill = bytes([rng.choice((0, 0xAA))])
        if io is KVM_SET_SREGS:
            n = rng.randrange(1, KVM_SREGS.size)
        bad = rng.choice((None, None, None, NULL, WILD))
        return Probe(name, fd, io.request, _const(bad) if bad is not None else _const_bytes(fill * n))  # type: ignore[arg-type]
    if kind < 0.85:  # KVM_INTERRUPT: an irq whole, cut short, or a bad pointer
        irq = rng.choice(
            (KVM_INTERRUPT_UNSET, KVM_INTERRUPT_SET, KVM_INTERRUPT_SET_LEVEL, 0, 5, rng.randrange(1 << 32))
        )
        length = rng.choice((4, 4, 4, rng.randrange(1, 4)))
        bad = rng.choice((None, None, None, NULL, WILD))
        data = functools.partial(_irq_bytes, irq=irq, length=length)  # the arch's byte order
        return Probe(name, fd, KVM_INTERRUPT.request, _const(bad) if bad is not None else data)  # type: ignore[arg-type]
    if kind < 0.88:  # kvm_vcpu_ioctl's other generic cases: whole, cut short, read-only, a bad pointer
        io = rng.choice(VCPU_GENERIC)
        fill = bytes([rng.choice((0, 0xAA))])
        whole = 12 if io is KVM_SET_SIGNAL_MASK else io.size  # a signal mask's length, then the sigset
        length = rng.choice((whole,) * 3 + (rng.randrange(1, whole),))
        arg = functools.partial(_generic_bytes, io=io, fill=fill, mask_len=rng.choice((8, 8, 4, 0, 1 << 31)), n=length)
        roll = rng.random()
        if roll < 0.2:
            return Probe(name, fd, io.request, _const(rng.choice((NULL, WILD))))  # type: ignore[arg-type]
        if roll < 0.35:
            return Probe(name, fd, io.request, arg, readonly_from=0)  # type: ignore[arg-type]
        return Probe(name, fd, io.request, arg)  # type: ignore[arg-type]
    if kind < 0.92:  # a modelled request's neighbour, or another type's
        pick = rng.randrange(1 << 30)

        def req(a: Arch, p: int = pick) -> int:
            choices = _vcpu_requests(a)
            return choices[p % len(choices)] if p % 5 else a.ioc.io(ord("g"), p % 256)

        return Probe(name, fd, req, _const(rng.choice((0, 1, NULL, WILD))))  # type: ignore[arg-type]
    # on the vcpu's VM: KVM_CREATE_VCPU, or the VM's KVM_ENABLE_CAP; or KVM_RUN with an argument
    vm: Literal["vm-hv", "vm-pr"] = "vm-hv" if fd == "vcpu-hv" else "vm-pr"
    roll = rng.random()
    if roll < 0.3:
        return Probe(name, vm, KVM_CREATE_VCPU.request, _const(rng.choice(VCPU_IDS)), returns_fd=True)
    if roll < 0.45:
        return Probe(name, fd, KVM_RUN.request, _const(rng.choice((1, 2, WILD, -1))))  # type: ignore[arg-type]
    cap = rng.choice((*VM_CAPS, *VM_CAPS, rng.randrange(0, 301)))
    arg0 = rng.choice((rng.randrange(0, 0x500, 4), rng.randrange(0, 0x500), rng.randrange(0, 17), 1 << 32, 0))
    values = {"cap": cap, "flags": rng.choice((0, 0, 0, 0, 1)), "arg0": arg0, "arg1": rng.choice((0, 1, 1, 2))}
    struct = functools.partial(_packed, layout=KVM_ENABLE_CAP_STRUCT, values=values)
    return Probe(name, vm, KVM_ENABLE_CAP.request, struct)


# RTAS names: the kernel's four handlers, a prefix of one, one with junk after its NUL, unknown ones
RTAS_NAMES = (b"ibm,set-xive", b"ibm,get-xive", b"ibm,int-off", b"ibm,int-on", b"ibm,int", b"ibm,int-on\0x",
              b"ibm,nonesuch", b"", b"i" * RTAS_NAME_LEN)  # fmt: skip
VM_PPC_IOCTLS = (KVM_PPC_GET_CPU_CHAR, KVM_PPC_GET_RMMU_INFO, KVM_PPC_RTAS_DEFINE_TOKEN, KVM_PPC_ALLOCATE_HTAB,
                 KVM_PPC_CONFIGURE_V3_MMU, KVM_PPC_GET_PVINFO, KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS,
                 KVM_CREATE_SPAPR_TCE_64, KVM_CREATE_SPAPR_TCE, KVM_CREATE_DEVICE)  # fmt: skip
# KVM_CREATE_DEVICE: every type number and some past them, with KVM_CREATE_DEVICE_TEST always (a
# device made would put its fd in the struct: a number of the asking process's own) and other bits
DEVICE_TYPES = (*range(18), 0x7FFFFFFF, 1 << 31, (1 << 32) - 1)
DEVICE_FLAGS = (1, 1, 3, 1 | 1 << 31)
# TCE tables: never the LIOBN the probes keep a table of on the same VM (the replay has none), sizes
# whose tables are far from the allocator's 16MB (the probes ask its edge)
U64 = (1 << 64) - 1
TCE_LIOBNS = (0, 1, 0x80000000, 0x80000001, 0xFFFFFFFF, 1 << 63)
TCE_PAGE_SHIFTS = (0, 11, 12, 12, 16, 16, 24, 34, 35, 1 << 31)
TCE_SIZES = (0, 1, 16, 1 << 18, 1 << 20, 1 << 30, 1 << 34, 1 << 40, 1 << 63, U64)
TCE_OFFSETS = (0, 0, 1 << 20, U64 >> 12, U64 >> 16, U64 - 1, U64)
TCE_WINDOWS = (0, 4095, 4096, 1 << 24, 1 << 30, (1 << 32) - 1)
# HPT orders: never 0 (with no HPT Linux 7.3 clears a NULL one), none past the buddy allocator's 16MB
# but refused ones (whether kvm_cma has room depends on what else holds it)
HPT_ORDERS = (17, 18, 18, 19, 20, 24, 24, 47, 0xFFFFFFFF, 1 << 31)
MMUV3_FLAGS = (0, 1, 2, 3, 3, 4, 7)
MMUV3_TABLES = (0, 5, 1 << 63 | 5, 1 << 63 | 24, 1 << 63 | 25, 0x1000 | 5, 1 << 63)  # GR, PRTS 5, 24, 25


def _vm_ppc_case(rng: random.Random, name: str, fd: str) -> Probe:
    """One of kvm_arch_vm_ioctl's Book3S cases (or a neighbour in direction and size) with its
    struct whole, cut short against the unmapped page, read-only, or a bad pointer."""
    io = rng.choice(VM_PPC_IOCTLS)
    size = io.size
    struct: Callable[[Arch], bytes]
    if io is KVM_PPC_RTAS_DEFINE_TOKEN:  # a token of one non-zero byte (the prober's buffers), or 0
        rtas = rng.choice(RTAS_NAMES)
        token = rng.choice((0, 0, rng.randrange(1, 256) << 8 * rng.randrange(8)))
        if len(rtas) == RTAS_NAME_LEN:  # a name that fills the struct: a token of the same byte
            token = int.from_bytes(rtas[:8], "little")
        struct = functools.partial(_rtas_args, name=rtas, token=token)
    elif io is KVM_PPC_ALLOCATE_HTAB:
        struct = functools.partial(_irq_bytes, irq=rng.choice(HPT_ORDERS), length=4)
    elif io is KVM_CREATE_SPAPR_TCE_64:
        values = {"liobn": rng.choice(TCE_LIOBNS), "page_shift": rng.choice(TCE_PAGE_SHIFTS),
                  "flags": rng.choice((0, 0, 0, 1, 1 << 31)), "offset": rng.choice(TCE_OFFSETS),
                  "size": rng.choice(TCE_SIZES)}  # fmt: skip
        struct = functools.partial(_packed, layout=KVM_CREATE_SPAPR_TCE_64_STRUCT, values=values)
    elif io is KVM_CREATE_SPAPR_TCE:
        values = {"liobn": rng.choice(TCE_LIOBNS), "window_size": rng.choice(TCE_WINDOWS)}
        struct = functools.partial(_packed, layout=KVM_CREATE_SPAPR_TCE_STRUCT, values=values)
    elif io is KVM_CREATE_DEVICE:
        values = {
            "type": rng.choice(DEVICE_TYPES),
            "fd": rng.choice((0, 0xAAAAAAAA)),
            "flags": rng.choice(DEVICE_FLAGS),
        }
        struct = functools.partial(_packed, layout=KVM_CREATE_DEVICE_STRUCT, values=values)
    elif io is KVM_PPC_CONFIGURE_V3_MMU:
        values = {"flags": rng.choice(MMUV3_FLAGS), "process_table": rng.choice(MMUV3_TABLES)}
        if values["flags"] & 5 == 1 and values["process_table"] >> 63:  # never a radix table the kernel
            values["process_table"] |= PRTS_MASK  # takes: QEMU's nested-papr L0 aborts on it (the probes ask)
        struct = functools.partial(_packed, layout=KVM_PPC_MMUV3_CFG, values=values)
    else:
        struct = _const_bytes(bytes([rng.choice((0, 0xAA))]) * size)
    roll = rng.random()
    makes_fd = io in (KVM_CREATE_SPAPR_TCE_64, KVM_CREATE_SPAPR_TCE)  # its answer "fd", the fd closed at once
    if roll < 0.1 and not makes_fd:  # a neighbour: another direction or size of the same number (0xA8's
        pick = rng.randrange(1 << 30)  # would be the other TCE ioctl)

        def req(a: Arch, nr: int = io.nr, p: int = pick) -> int:
            ioc = a.ioc
            direction = (ioc.none, ioc.read, ioc.write, ioc.read | ioc.write)[p % 4]
            return ioc.ioc(direction, KVMIO, nr, (0, 16, 32, 96, 128)[p // 4 % 5])

        return Probe(name, fd, req, struct)  # type: ignore[arg-type]
    if roll < 0.25:  # never a kernel address: copy_from_user's mask would read kernel memory
        return Probe(name, fd, io.request, _const(rng.choice((NULL, WILD))), returns_fd=makes_fd)  # type: ignore[arg-type]
    if roll < 0.4:  # cut short: its end against the unmapped page
        short = functools.partial(_cut, make=struct, length=rng.randrange(1, size))
        return Probe(name, fd, io.request, short, returns_fd=makes_fd)  # type: ignore[arg-type]
    if roll < 0.5:  # read-only throughout: a read succeeds, a write faults
        return Probe(name, fd, io.request, struct, readonly_from=0, returns_fd=makes_fd)  # type: ignore[arg-type]
    return Probe(name, fd, io.request, struct, returns_fd=makes_fd)  # type: ignore[arg-type]


# the XICS device's attributes: every group number near XICS's (SOURCES 1, CTRL 2) and some far,
# sources at its edges (16 to 2^20 - 1; the u32 a get looks up, the long a set checks), and an
# addr NULL, unmapped or a kernel address (a set or get that reaches it faults: get_user/put_user
# check access_ok); no value is set (the sources stay as they were: none)
DEVICE_GROUPS = (0, 1, 1, 1, 2, 3, 0xFFFFFFFF)
DEVICE_ATTRS = (0, 15, 16, 4096, 4097, (1 << 20) - 1, 1 << 20, 1 << 32 | 4096, 1 << 63, (1 << 64) - 1)
DEVICE_IOCTLS = (KVM_SET_DEVICE_ATTR, KVM_GET_DEVICE_ATTR, KVM_HAS_DEVICE_ATTR)
# a source's state: masked (by its bit, or priority 0xff) for any server, or a priority for server 0
# or another (no vcpu of the fuzz's is connected: EINVAL, the ICS made first)
SOURCE_STATES = (KVM_XICS_MASKED, KVM_XICS_MASKED | 5 << 32, 0xFF << 32, 0xFF << 32 | 7, KVM_XICS_MASKED | 0xFFFFFFFF,
                 5 << 32, 0, 1 << 63)  # fmt: skip


def _device_case(rng: random.Random, name: str) -> Probe:
    """An attribute ioctl on a fuzz VM's XICS device (/dev/kvm where it has none): a source's state
    set or read through ``addr``, or struct kvm_device_attr whole, cut short, read-only or a bad
    pointer, or a neighbour request."""
    fd: Literal["xics-hv", "xics-pr"] = rng.choice(("xics-hv", "xics-pr"))
    io = rng.choice(DEVICE_IOCTLS)
    values = {"flags": rng.choice((0, 0, 0, 1)), "group": rng.choice(DEVICE_GROUPS), "attr": rng.choice(DEVICE_ATTRS),
              "addr": rng.choice((NULL, WILD, KERNEL_ADDRESS))}  # fmt: skip
    struct = functools.partial(_packed, layout=KVM_DEVICE_ATTR, values=values)
    roll = rng.random()
    if roll < 0.35:  # a source's state at addr, set (any bits: a server no vcpu is, masked or not) or read
        state = rng.choice(SOURCE_STATES) | rng.choice((0, 0, KVM_XICS_LEVEL_SENSITIVE, KVM_XICS_PENDING,
                                                         KVM_XICS_PRESENTED | KVM_XICS_QUEUED))  # fmt: skip
        data = functools.partial(reg_bytes, value=state, size=8)
        group = rng.choice(DEVICE_GROUPS)
        io = rng.choice((KVM_SET_DEVICE_ATTR, KVM_SET_DEVICE_ATTR, KVM_GET_DEVICE_ATTR))
        return Probe(name, fd, io.request, data, one_reg=rng.choice(DEVICE_ATTRS), attr_group=group)
    roll = rng.random()
    if roll < 0.1:  # a neighbour: another direction or size of the attribute numbers, or 0xE4
        pick = rng.randrange(1 << 30)

        def req(a: Arch, p: int = pick) -> int:
            ioc = a.ioc
            direction = (ioc.none, ioc.read, ioc.write, ioc.read | ioc.write)[p % 4]
            return ioc.ioc(direction, KVMIO, (0xE1, 0xE2, 0xE3, 0xE4)[p // 4 % 4], (0, 16, 24, 32)[p // 16 % 4])

        return Probe(name, fd, req, struct)
    if roll < 0.25:  # never a kernel address: copy_from_user's mask would read kernel memory
        return Probe(name, fd, io.request, _const(rng.choice((NULL, WILD))))
    if roll < 0.4:  # cut short: its end against the unmapped page
        return Probe(name, fd, io.request, functools.partial(_cut, make=struct, length=rng.randrange(1, 24)))
    if roll < 0.5:  # read-only throughout: the struct is only read
        return Probe(name, fd, io.request, struct, readonly_from=0)
    return Probe(name, fd, io.request, struct)


# memory slots: sizes no kernel needs a large allocation for (up to 1G: HV's reverse map of such a
# slot is 2M at most) or that every kernel refuses before it allocates (past TASK_SIZE_USER64, a
# 2^31-page slot of 64K pages on either page size); ids up to 7 so that slots meet again
MEMSLOT_SIZES = (0, 0, 4096, 65536, 1 << 20, (1 << 20) + 4096, 1 << 30, 2048, 1 << 52, 1 << 47, (1 << 64) - 65536)
MEMSLOT_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x10001, (1 << 32) - 1)
MEMSLOT_FLAGS = (0, 0, 0, 1, 1, 2, 3, 4, 5, 8, 1 << 31)


# KVM_IRQ_LINE(_STATUS) of the sources the device cases set (and none), at every level the kernels
# tell apart; KVM_REG_PPC_ICP_STATE set to states XICS's emulation finds consistent and not (CPPR,
# XISR: none, the IPI, a source; MFRR, pending priority), read back
IRQS = (16, 4096, 4096, 4097, 4097, 5000, (1 << 20) - 1, 1 << 20)
LEVELS = (0, 1, 1, 2, KVM_INTERRUPT_SET, KVM_INTERRUPT_UNSET, KVM_INTERRUPT_SET_LEVEL)
ICP_PRIORITIES = (0, 5, 5, 6, 0xFE, 0xFF, 0xFF)
ICP_XISRS = (0, 0, 2, 4096, 4097, 16, 0xFFFFFF)


def _icp_state(rng: random.Random) -> int:
    cppr, mfrr, pending = (rng.choice(ICP_PRIORITIES) for _ in range(3))
    return (cppr << KVM_REG_PPC_ICP_CPPR_SHIFT | rng.choice(ICP_XISRS) << KVM_REG_PPC_ICP_XISR_SHIFT
            | mfrr << KVM_REG_PPC_ICP_MFRR_SHIFT | pending << KVM_REG_PPC_ICP_PPRI_SHIFT)  # fmt: skip


def _delivery_case(rng: random.Random, name: str) -> Probe:
    """A fuzz VM's XICS at work (its vcpu 0 connected as server 0): KVM_IRQ_LINE(_STATUS) of a
    source, or the vcpu's KVM_REG_PPC_ICP_STATE set or read."""
    which = rng.choice(("hv", "pr"))
    if rng.random() < 0.6:
        io = rng.choice((KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS))
        level = functools.partial(irq_level, irq=rng.choice(IRQS), level=rng.choice(LEVELS))
        return Probe(name, f"vm-{which}", io.request, level)  # type: ignore[arg-type]
    io = rng.choice((KVM_SET_ONE_REG, KVM_GET_ONE_REG))
    state = functools.partial(reg_bytes, value=_icp_state(rng), size=8)
    return Probe(name, f"vcpu-{which}", io.request, state, one_reg=ONE_REGS["ICP_STATE"])  # type: ignore[arg-type]


# register ids: every one kvmsim names (Book3S's and the others', which Book3S answers EINVAL),
# with another size, a neighbour's index, or any id; values at their edges and in between
ONE_REG_NAMES = tuple(sorted(ONE_REGS))
ONE_REG_VALUES = (0, 1, 0xFF, 1 << 31, (1 << 32) - 1, 1 << 63, (1 << 64) - 1, 0x0F000004, 0x0F000005, 0x0F000006)


def _one_reg_id(rng: random.Random) -> int:
    reg = ONE_REGS[rng.choice(ONE_REG_NAMES)]
    roll = rng.random()
    if roll < 0.6:
        return reg
    if roll < 0.75:  # another size (the id is another register, or none)
        return reg & ~KVM_REG_SIZE_MASK | rng.randrange(16) << KVM_REG_SIZE_SHIFT
    if roll < 0.9:  # a neighbour's index
        return reg + rng.choice((-1, 1, 2, 0x10))
    return rng.choice((KVM_REG_PPC | rng.randrange(1 << 16), rng.randrange(1 << 64), 0))


def _one_reg_case(rng: random.Random, name: str) -> Probe:
    """KVM_GET_ONE_REG or KVM_SET_ONE_REG on a fuzz VM's vcpu 0 (HV's or PR's) of any register
    id, the value (set: a u64 at an edge, random, or a random 16 bytes) in the 16-byte buffer
    ``addr`` points at."""
    io = rng.choice((KVM_GET_ONE_REG, KVM_SET_ONE_REG))
    if rng.random() < 0.7:
        value = rng.choice((*ONE_REG_VALUES, rng.randrange(1 << 64)))
        data = functools.partial(reg_bytes, value=value, size=8)
    else:
        data = functools.partial(reg_bytes, value=rng.randrange(1 << 128), size=16)
    if io is KVM_GET_ONE_REG:
        data = functools.partial(reg_bytes, value=int.from_bytes(b"\xaa" * 16, "little"), size=16)
    fd = rng.choice(("vcpu-hv", "vcpu-pr"))
    reg = _one_reg_id(rng)
    if fd == "vcpu-pr" and io is KVM_GET_ONE_REG and _fp_state(reg):
        # a real PR vcpu's FPR0 read back differently on two boots of the same cases (most likely
        # what a guest a KVM_RUN case entered left in its FPU, saved on exit): no guest runs here,
        # so a PR vcpu's FP, VMX and VSX state is not read
        reg = ONE_REGS["DEBUG_INST"]
    if io is KVM_GET_ONE_REG and reg == ONE_REGS["DEC_EXPIRY"]:
        # a TB_OFFSET set when none expired sets it from the timebase now: never the same twice
        reg = ONE_REGS["DEBUG_INST"]
    return Probe(name, fd, io.request, data, one_reg=reg)  # type: ignore[arg-type]


FP_STATE = frozenset(ONE_REGS[n] & 0xFFFF for n in ("FPSCR", "VSCR", "VRSAVE"))


def _fp_state(reg: int) -> bool:
    """Is ``reg`` (any size) an FPR, VR or VSR, FPSCR, VSCR or VRSAVE?"""
    index = reg & 0xFFFF
    return reg >> 60 == KVM_REG_PPC >> 60 and (0x20 <= index < 0x80 or index in FP_STATE)


def _memslot_case(rng: random.Random, name: str, fd: str) -> Probe:
    """KVM_SET_USER_MEMORY_REGION or ...2 with a slot, flags, guest and user addresses drawn to
    meet each other's slots and every check's edges; whole, cut short or a bad pointer."""
    if rng.random() < 0.2:  # KVM_GET_DIRTY_LOG of a slot these cases may have made, into no memory
        values = {
            "slot": rng.choice(MEMSLOT_IDS),
            "padding1": rng.choice((0, 7)),
            "dirty_bitmap": rng.choice((NULL, WILD)),
        }
        log = functools.partial(_packed, layout=KVM_DIRTY_LOG, values=values)
        return Probe(name, fd, KVM_GET_DIRTY_LOG.request, log)  # type: ignore[arg-type]
    v1 = rng.random() < 0.6
    io, layout = (
        (KVM_SET_USER_MEMORY_REGION, KVM_USERSPACE_MEMORY_REGION) if v1
        else (KVM_SET_USER_MEMORY_REGION2, KVM_USERSPACE_MEMORY_REGION2)
    )  # fmt: skip
    gpa = rng.choice((0, 1 << 28, 1 << 30, 3 << 30, rng.randrange(8) << 28, (1 << 64) - (1 << 20), 4096, 2048))
    uaddr = rng.choice((1 << 28, 1 << 32, 5 << 28, (1 << 46) - 65536, 1 << 46, 1 << 52, 1 << 63, 2048, 4096))
    values = {"slot": rng.choice(MEMSLOT_IDS), "flags": rng.choice(MEMSLOT_FLAGS), "guest_phys_addr": gpa,
              "memory_size": rng.choice(MEMSLOT_SIZES), "userspace_addr": uaddr,
              "guest_memfd_offset": rng.choice((0, 0, 4096, 1 << 63)), "guest_memfd": rng.choice((0, 999))}  # fmt: skip
    if values["flags"] & 1 and values["memory_size"] > 1 << 30:  # no dirty bitmap of a huge slot: it may not fit
        values["memory_size"] = 1 << 20
    struct = functools.partial(_packed, layout=layout, values=values)
    roll = rng.random()
    if roll < 0.1:
        return Probe(name, fd, io.request, _const(rng.choice((NULL, WILD))))  # type: ignore[arg-type]
    if roll < 0.2:
        short = functools.partial(_cut, make=struct, length=rng.randrange(1, layout.size))
        return Probe(name, fd, io.request, short)  # type: ignore[arg-type]
    return Probe(name, fd, io.request, struct)  # type: ignore[arg-type]


def _generic_bytes(arch: Arch, *, io: KvmIoctl, fill: bytes, mask_len: int, n: int) -> bytes:
    """A generic vcpu ioctl's struct, its first ``n`` bytes: KVM_SET_SIGNAL_MASK's length (the
    arch's byte order) then a sigset, KVM_TRANSLATE's bytes 1..24, else one byte repeated."""
    if io is KVM_SET_SIGNAL_MASK:
        return (mask_len.to_bytes(4, arch.byteorder) + fill * 8)[:n]
    return (bytes(range(1, 25)) if io is KVM_TRANSLATE else fill * io.size)[:n]


def _irq_bytes(arch: Arch, *, irq: int, length: int) -> bytes:
    """A __u32 (an irq, an HPT order), cut to ``length``."""
    return irq.to_bytes(4, arch.byteorder)[:length]


def _cut(arch: Arch, *, make: Callable[[Arch], bytes], length: int) -> bytes:
    return make(arch)[:length]


def _rtas_args(arch: Arch, *, name: bytes, token: int) -> bytes:
    tail = KVM_RTAS_TOKEN_ARGS.pack(arch.byteorder, {"token": token})[RTAS_NAME_LEN:]
    return name.ljust(RTAS_NAME_LEN, b"\0")[:RTAS_NAME_LEN] + tail


def cases(seed: int, n: int, revisions: Iterable[AbiRevision] = REVISIONS.values()) -> list[Probe]:
    """``n`` cases from ``seed``, for the arch each is asked on (the requests are built then)."""
    rng = random.Random(seed)
    revs = [r for r in revisions if r.ioctl is not None]
    out = []
    for i in range(n):
        kind = rng.random()
        fd = rng.choice(("dev", "vm", "vm", "vm-hv", "vm-pr"))  # a VM of type 0, 1 (HV) or 2 (PR)
        name = f"fuzz {i}"
        if rng.random() < 0.25:  # a quarter of the cases: the vcpu's
            out.append(_vcpu_case(random.Random(rng.randrange(1 << 30)), name))
            continue
        if rng.random() < 0.03:  # the fuzz VMs' XICS devices' attribute ioctls
            out.append(_device_case(random.Random(rng.randrange(1 << 30)), name))
            continue
        if rng.random() < 0.02:  # their delivery: KVM_IRQ_LINE of their sources, the vcpu's ICP state
            out.append(_delivery_case(random.Random(rng.randrange(1 << 30)), name))
            continue
        if rng.random() < 0.04:  # KVM_GET/SET_ONE_REG of any register id on the fuzz vcpus
            out.append(_one_reg_case(random.Random(rng.randrange(1 << 30)), name))
            continue
        if kind < 0.55:  # a revision's request or a neighbour, with a struct or a bad pointer
            rev = rng.choice(revs)
            pick = rng.randrange(1 << 30)
            struct_seed = rng.randrange(1 << 30)
            bad = rng.random() < 0.15
            pointer = rng.choice((NULL, WILD, KERNEL_ADDRESS))

            def req(a: Arch, r: AbiRevision = rev, p: int = pick) -> int:
                if p % 2 == 0:  # half the time the revision's own request, else a neighbour
                    number = r.request(a)
                    assert number is not None
                    return number
                choices = _requests(r, a)
                return choices[p // 2 % len(choices)]

            def arg(
                a: Arch, r: AbiRevision = rev, s: int = struct_seed, b: bool = bad, ptr: int = pointer
            ) -> int | bytes:
                return ptr if b else _struct(random.Random(s), r, a)

            layout = rng.random()
            if layout < 0.1 and not bad:  # the struct in a read-only page throughout
                out.append(Probe(name, fd, req, arg, readonly_from=0))  # type: ignore[arg-type]
            elif layout < 0.15 and not bad:  # on the stack (an exact-size struct: nothing past it is read)
                exact = functools.partial(_exact, rev=rev, seed=struct_seed, length=rng.choice((24, 32)))
                out.append(Probe(name, fd, req, exact, on_stack=True))  # type: ignore[arg-type]
            elif layout < 0.3 and not bad:  # writable up to a page boundary, read-only past it
                k = rng.randrange(1, 33)
                length = rng.choice((24, 32))
                exact = functools.partial(_exact, rev=rev, seed=struct_seed, length=max(length, k + 1))
                out.append(Probe(name, fd, req, exact, readonly_from=k))  # type: ignore[arg-type]
            else:
                out.append(Probe(name, fd, req, arg))  # type: ignore[arg-type]
        elif kind < 0.6:  # kvm_arch_vm_ioctl's Book3S cases: CPU_CHAR, RMMU_INFO, RTAS tokens, the MMU's
            out.append(_vm_ppc_case(random.Random(rng.randrange(1 << 30)), name, fd))
        elif kind < 0.65:  # KVM_SET_USER_MEMORY_REGION(2)
            out.append(_memslot_case(random.Random(rng.randrange(1 << 30)), name, fd))
        elif kind < 0.8:  # KVM_CHECK_EXTENSION of any number
            cap = rng.choice((rng.randrange(0, 301), rng.randrange(301, 1 << 16), (1 << 31) - 1, -1, -250))
            out.append(Probe(name, fd, Arch.kvm_check_extension, _const(cap)))  # type: ignore[arg-type]
        elif kind < 0.9:  # KVM_CREATE_VM of every type (a VM fd asked it: ENOTTY)
            out.append(Probe(name, fd, Arch.kvm_create_vm, _const(rng.randrange(16)), returns_fd=True))  # type: ignore[arg-type]
        else:  # the argument-less ioctls, given an argument or not (the stats fd: a new file, closed at once)
            stats = KVM_GET_STATS_FD.request
            request = rng.choice((Arch.kvm_get_api_version, Arch.kvm_get_vcpu_mmap_size, stats))
            value = _const(rng.choice((0, 0, 1, WILD)))
            out.append(Probe(name, fd, request, value, returns_fd=request is stats))  # type: ignore[arg-type]
    return out


def _exact(a: Arch, *, rev: AbiRevision, seed: int, length: int) -> bytes:
    """A struct whose size is its buffer's length (nothing past it is read: the guest's page
    past a read-only part is mapped, where the replay maps nothing)."""
    rng = random.Random(seed)
    caps = rng.choice((0, (1 << 64) - 1))  # preset: the kernel's write of the answer shows byte by byte
    body = rev.layout.pack(a.byteorder, size=length, flags=rng.choice((0, 0, 1)), compat_capabilities=caps)
    return body.ljust(length, b"\0")


def _const(value: int) -> Callable[[Arch], int]:
    return lambda _arch: value


def _packed(arch: Arch, *, layout: StructLayout, values: dict[str, int]) -> bytes:
    return layout.pack(arch.byteorder, values)


def _const_bytes(value: bytes) -> Callable[[Arch], bytes]:
    return lambda _arch: value


def replay(kernel: BootedKernel, probe: Probe, fds: dict[str, int], process: Process) -> Answer:
    """``probe`` on the simulated kernel as the guest's prober asks it: an int argument
    passed as is; a buffer mapped alone, where the prober places it, read back afterwards."""
    mem = process.memory
    assert isinstance(mem, AddressSpace)  # kernel.process()'s own
    arch = kernel.arch
    if probe.one_reg is not None:
        return _replay_pointee(kernel, probe, fds[probe.fd], process, mem)
    arg = probe.arg(arch)
    request = probe.request(arch) & 0xFFFFFFFF
    fd = fds[probe.fd]
    addr = None
    if isinstance(arg, bytes):  # placed as the prober places it, to the byte within its page
        k, n = probe.readonly_from, len(arg)
        if not k:  # its end against the unmapped page
            addr = mem.map_parts([(n, k is None)], arg, offset=-n % PAGE_SIZE)
        else:  # k bytes below a page boundary, read-only from there to the end of that page
            addr = mem.map_parts([(k, True), (-(-(n - k) // PAGE_SIZE) * PAGE_SIZE, False)], arg, offset=-k % PAGE_SIZE)
        argp = addr
    else:
        argp = arg & ((1 << 64) - 1)
    try:
        try:
            ret = process.sys_ioctl(fd, request, argp)
        except KvmError as exc:
            head = Answer(error=errname(exc.errno or 0))
        else:
            if probe.returns_fd and process.returns_fd(fd, request):
                process.close(ret)
                return Answer(fd=True)
            head = Answer(value=ret)
        if addr is None or not isinstance(arg, bytes):
            return head
        return Answer.of_buffer(head, arg, mem.read(addr, len(arg)))
    finally:
        if addr is not None:
            mem.unmap(addr)


def _replay_pointee(kernel: BootedKernel, probe: Probe, fd: int, process: Process, mem: AddressSpace) -> Answer:
    """A {u64, pointer} probe (kvm_one_reg; kvm_device_attr with ``attr_group``) as the prober asks
    it: the struct and the buffer it points at mapped, the buffer read back afterwards."""
    assert probe.one_reg is not None
    bo = kernel.arch.byteorder
    before = bytes(probe.arg(kernel.arch)).ljust(probe.pointee, b"\0")[: probe.pointee]
    value = mem.map(len(before), data=before)
    if probe.attr_group is not None:
        struct = KVM_DEVICE_ATTR.pack(bo, {"group": probe.attr_group, "attr": probe.one_reg, "addr": value})
    else:
        struct = KVM_ONE_REG.pack(bo, {"id": probe.one_reg, "addr": value})
    addr = mem.map(len(struct), data=struct)
    try:
        try:
            head = Answer(value=process.sys_ioctl(fd, probe.request(kernel.arch) & 0xFFFFFFFF, addr))
        except KvmError as exc:
            head = Answer(error=errname(exc.errno or 0))
        return Answer.of_buffer(head, before, mem.read(value, len(before)))
    finally:
        mem.unmap(addr)
        mem.unmap(value)


def simulate(kernel: BootedKernel, probes: Iterable[Probe]) -> dict[str, Answer]:
    """Every case on one simulated process: /dev/kvm and a type-0 VM, as the prober has them
    and one of each type (HV, PR) that can be made; a VM-fd case is asked of /dev/kvm where
    its VM cannot be made, as the prober asks it."""
    process = kernel.process()
    try:
        dev = process.open()
    except KvmError:
        return {}
    try:
        vm = process.sys_ioctl(dev, kernel.KVM_CREATE_VM, 0)
    except KvmError:
        vm = -1
    fds = {"dev": dev, "vm": vm if vm >= 0 else dev}
    for name, vm_type in (("vm-hv", KVM_VM_PPC_HV), ("vm-pr", KVM_VM_PPC_PR)):  # the prober's too
        try:
            fds[name] = process.sys_ioctl(dev, kernel.KVM_CREATE_VM, vm_type)
        except KvmError:
            fds[name] = dev
        fds["vcpu" + name[2:]] = dev  # and the VM's vcpu 0, where it has one
        if fds[name] != dev and kernel.models_vcpus:
            with contextlib.suppress(KvmError):
                fds["vcpu" + name[2:]] = process.sys_ioctl(fds[name], kernel.KVM_CREATE_VCPU, 0)
        fds["xics" + name[2:]] = xics = _xics_of(kernel, process, fds[name], dev) if fds[name] != dev else dev
        if xics != dev and fds["vcpu" + name[2:]] != dev:
            _connect(kernel, process, fds["vcpu" + name[2:]], xics)
    return {p.name: replay(kernel, p, fds, process) for p in probes}


def _with_struct(process: Process, fd: int, request: int, struct: bytes) -> bytes:
    """ioctl(fd, request, &struct) on the simulated process: the struct after the call (KvmError as
    the call raises it)."""
    mem = process.memory
    assert isinstance(mem, AddressSpace)
    addr = mem.map(len(struct), data=struct)
    try:
        process.sys_ioctl(fd, request & 0xFFFFFFFF, addr)
        return mem.read(addr, len(struct))
    finally:
        mem.unmap(addr)


def _connect(kernel: BootedKernel, process: Process, vcpu: int, xics: int) -> None:
    """vcpu connected to its VM's XICS device as server 0, as the prober connects it (whatever
    the answer: an HV vcpu without PAPR is connected and answered EINVAL)."""
    cap = KVM_ENABLE_CAP_STRUCT.pack(kernel.arch.byteorder, {"cap": KVM_CAP_IRQ_XICS, "arg0": xics})
    with contextlib.suppress(KvmError):
        _with_struct(process, vcpu, KVM_ENABLE_CAP.request(kernel.arch), cap)


def _xics_of(kernel: BootedKernel, process: Process, vm: int, dev: int) -> int:
    """The VM's XICS device (XICS's emulation, or XICS-on-XIVE's on PowerNV), as the prober makes
    it after the vcpu; /dev/kvm's fd where it cannot (the prober falls back too)."""
    bo = kernel.arch.byteorder
    struct = KVM_CREATE_DEVICE_STRUCT.pack(bo, {"type": KVM_DEV_TYPE_XICS})
    try:
        return KVM_CREATE_DEVICE_STRUCT.unpack(bo, _with_struct(process, vm, kernel.KVM_CREATE_DEVICE, struct))["fd"]
    except KvmError:
        return dev
