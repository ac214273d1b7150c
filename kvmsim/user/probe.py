"""Probes: the questions one asks a KVM device, and its answers as plain values.

A probe runs against a :class:`~kvmcompat.Device`: a real ``/dev/kvm``, or the
simulator behind :class:`~kvmsim.user.simulated.SimDevice`.  ``kvmsim show``, ``kvmsim
matrix``, ``record`` and ``verify`` share these probes, so what is recorded on real hardware
is exactly what the simulator is checked against."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import attrs
from kvmcompat import Device

from ..kernel.errors import InvalidInput
from ..uapi import (
    GENERIC_CAPS,
    KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_HALT_POLL,
    KVM_CAP_IRQ_XICS,
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
    KVM_DEV_XICS_GRP_CTRL,
    KVM_DEV_XICS_GRP_SOURCES,
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
    KVM_PPC_CPU_CHAR,
    KVM_PPC_GET_CPU_CHAR,
    KVM_PPC_GET_PVINFO,
    KVM_PPC_GET_RMMU_INFO,
    KVM_PPC_GET_SMMU_INFO,
    KVM_PPC_MMUV3_CFG,
    KVM_PPC_MMUV3_GTSE,
    KVM_PPC_MMUV3_RADIX,
    KVM_PPC_RMMU_INFO,
    KVM_PPC_RTAS_DEFINE_TOKEN,
    KVM_PPC_SMMU_INFO,
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
    KVM_XICS_LEVEL_SENSITIVE,
    KVM_XICS_MASKED,
    KVMIO,
    MSR_ME,
    ONE_REGS,
    PATB_GR,
    REVISIONS,
    RTAS_NAME_LEN,
    SIGSET_SIZE,
    STARTUP_CAPS,
    AbiRevision,
    Arch,
    ByteOrder,
    CompatCapsField,
    CompatCapsLayout,
    KvmIoctl,
    StructLayout,
    errname,
    one_reg_size,
)

Recorded = int | str  # an Answer as a recording stores it (Answer.to_toml)


# on the command line of a lab L1 whose L0 is QEMU's nested-papr (PowerVM's API v2 in TCG): QEMU 11
# aborts on H_GUEST_SET_STATE of the partition table (spapr_nested.c: copy_state_proctbl, "code should
# not be reached"), so the prober does not ask what sets it (Probe.skip_under)
QEMU_PAPR_L0 = "kvmsim_l0=qemu-papr"
NULL, WILD = 0, 8  # the bad pointers every struct probe family passes (address 8 is never mapped)
TAIL_SHOWN = 1208  # a changed tail (past the first 24 bytes) is shown in full up to this many (a struct kvm_sregs)


@attrs.frozen
class Answer:
    """What one probe got: the return value or the errno's name, a new descriptor, and for
    a struct the bytes the kernel left in it when it wrote any (``written``: the first 24;
    ``tail``: the changed bytes past them, hex, or ``"changed"`` past :data:`TAIL_SHOWN`)."""

    value: int | None = None
    error: str | None = None
    fd: bool = False
    written: bytes | None = None
    tail: str | None = None

    @classmethod
    def of_buffer(cls, head: Answer, before: bytes, after: bytes) -> Answer:
        if after == before:
            return head
        tail = None
        if after[24:] != before[24:]:
            tail = after[24:].hex() if len(after) - 24 <= TAIL_SHOWN else "changed"
        return attrs.evolve(head, written=after[:24], tail=tail)

    def field(self, layout: CompatCapsLayout, byteorder: ByteOrder, name: CompatCapsField) -> int | None:
        """A field of the struct the kernel wrote, or None when it wrote nothing."""
        return None if self.written is None else layout.unpack(byteorder, self.written)[name]

    def to_toml(self) -> Recorded:
        """As a recording stores it (and the C prober prints it): ``12``, ``"fd"``,
        ``"EINVAL"``, ``"0 1800…00"``, ``"E2BIG 1800…00 tail=ff…"``."""
        head: Recorded = "fd" if self.fd else self.error if self.error is not None else int(self.value or 0)
        if self.written is None:
            return head
        return f"{head} {self.written.hex()}" + (f" tail={self.tail}" if self.tail is not None else "")

    @classmethod
    def from_toml(cls, recorded: object) -> Answer:
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            return cls(value=recorded)
        if not isinstance(recorded, str) or not recorded:
            raise InvalidInput(f"not a probe answer: {recorded!r}")
        head, *rest = recorded.split(" ")
        if head == "fd":
            answer = cls(fd=True)
        elif head.lstrip("-").isdigit():
            answer = cls(value=int(head))
        else:
            answer = cls(error=head)
        if rest:
            tail = rest[1].removeprefix("tail=") if len(rest) > 1 else None
            answer = attrs.evolve(answer, written=bytes.fromhex(rest[0]), tail=tail)
        return answer


ONE_REG_VALUE = 16  # union kvmppc_one_reg: the most a register is


@attrs.frozen
class Probe:
    """One question: on which fd, which request, with which argument.  ``arg`` is an int
    (passed as is: a value, NULL or a wild pointer) or the initial bytes of a buffer."""

    name: str
    # vm-hv, vm-pr: the fuzz's VMs of types 1 and 2, vcpu-hv, vcpu-pr: their vcpus 0; vcpu-vm: the
    # type-0 VM where its vcpu 0 was made
    # device: the KVM device a keeps_device probe made; xics-hv, xics-pr: the fuzz VMs' XICS devices
    fd: Literal["dev", "vm", "vm-hv", "vm-pr", "vcpu", "vcpu-vm", "vcpu-hv", "vcpu-pr", "device", "xics-hv",
                "xics-pr"]  # fmt: skip
    request: Callable[[Arch], int]
    arg: Callable[[Arch], int | bytes]
    returns_fd: bool = False
    keeps_fd: bool = False  # ... and the new fd stays open to the run's end (what it holds, a LIOBN, stays taken)
    # a buffer's bytes from this offset on are in a read-only page (0: all of it; None: none),
    # the ones before it in a writable page just below (the lab's fuzz cases: kvmsim.user.fuzz)
    readonly_from: int | None = None
    on_stack: bool = False  # the buffer is on the asking program's stack (an exact-size struct)
    # KVM_GET/SET_ONE_REG of this register id: the argument is struct kvm_one_reg {id, addr}, addr
    # a buffer of ``pointee`` bytes holding ``arg``'s; the answer shows that buffer afterwards (any
    # struct of a u64 and a pointer: KVM_GET_DIRTY_LOG's {slot, padding, dirty_bitmap})
    one_reg: int | None = None
    pointee: int = ONE_REG_VALUE
    # the lab's: a kernel command-line word under which its prober does not ask this (a recording
    # without the answer: the replay does not ask it either)
    skip_under: str | None = None
    # KVM_CREATE_DEVICE: the new fd is the buffer's u32 at 4, kept as the run's "device" (answered
    # "fd"); the lab's prober keeps only an XICS device (kvm-xics, or kvm-xive: XICS-on-XIVE's) and
    # records nothing else
    keeps_device: bool = False
    needs_device: bool = False  # asked only where a keeps_device probe made the device
    device_at: int | None = None  # the buffer's u64 here is the device's fd (KVM_ENABLE_CAP's args[0])
    # with one_reg (the attribute): the struct is kvm_device_attr {0, attr_group, one_reg, addr}
    attr_group: int | None = None
    closes_device: bool = False  # then the device's fd is closed (its release), as the fuzz that follows expects

    def run(self, target: Device, fds: dict[str, int], kept: list[int] | None = None) -> Answer:
        """Ask it; a new fd is closed at once, or (``keeps_fd``) put on ``kept`` for the caller."""
        arch = target.arch
        if self.one_reg is not None:
            return self._run_one_reg(target, fds, self.one_reg)
        arg = self.arg(arch)
        if self.device_at is not None and isinstance(arg, bytes):
            at = self.device_at
            arg = arg[:at] + fds["device"].to_bytes(8, arch.byteorder) + arg[at + 8 :]
        buf = bytearray(arg) if isinstance(arg, bytes) else None
        try:
            ret = int(target.ioctl(fds[self.fd], self.request(arch), arg if buf is None else buf))
        except OSError as exc:
            head = Answer(error=errname(exc.errno))
        else:
            if self.keeps_device and buf is not None:
                fds["device"] = int.from_bytes(buf[4:8], arch.byteorder)
                if kept is not None:
                    kept.append(fds["device"])
                return Answer(fd=True)
            if self.returns_fd:
                if self.keeps_fd and kept is not None:
                    kept.append(ret)
                else:
                    target.close(ret)
                return Answer(fd=True)
            head = Answer(value=ret)
        return head if buf is None or not isinstance(arg, bytes) else Answer.of_buffer(head, arg, bytes(buf))

    def _run_one_reg(self, target: Device, fds: dict[str, int], reg_id: int) -> Answer:
        arch = target.arch
        before = bytes(self.arg(arch)).ljust(self.pointee, b"\0")[: self.pointee]
        with value_buffer(target, before) as (addr, read):
            if self.attr_group is not None:
                struct = KVM_DEVICE_ATTR.pack(arch.byteorder, {"group": self.attr_group, "attr": reg_id, "addr": addr})
            else:
                struct = KVM_ONE_REG.pack(arch.byteorder, {"id": reg_id, "addr": addr})
            try:
                ret = int(target.ioctl(fds[self.fd], self.request(arch), bytearray(struct)))
            except OSError as exc:
                head = Answer(error=errname(exc.errno))
            else:
                head = Answer(value=ret)
            return Answer.of_buffer(head, before, read())


@contextlib.contextmanager
def value_buffer(target: Device, data: bytes) -> Iterator[tuple[int, Callable[[], bytes]]]:
    """A user buffer holding ``data`` that a pointer inside an ioctl's struct can name: in the
    simulated kernel's memory, or this process's (a real device)."""
    kernel = getattr(target, "kernel", None)
    memory = getattr(kernel, "memory", None)
    if memory is not None:
        addr = memory.map(len(data), data=data)
        try:
            yield addr, lambda: memory.read(addr, len(data))
        finally:
            memory.unmap(addr)
        return
    import ctypes

    buf = ctypes.create_string_buffer(data, len(data))
    yield ctypes.addressof(buf), lambda: buf.raw


def _request(rev: AbiRevision) -> Callable[[Arch], int]:
    def request(arch: Arch) -> int:
        number = rev.request(arch)
        assert number is not None
        return number

    return request


def compat_caps_probes(rev: AbiRevision) -> Iterator[Probe]:
    """The ioctl of one revision (its numbers and layout) with the argument cases of the
    merged handler: a valid struct, caps pre-set, sizes below, at and above 24 (zero and
    non-zero tail), past a 4K and a 64K page, flags set, NULL and a wild pointer; and the
    same request on the /dev/kvm fd."""
    layout, request = rev.layout, _request(rev)

    def struct(size: int, *, flags: int = 0, caps: int = 0, length: int = 24, tail: int = 0) -> Callable[[Arch], bytes]:
        def make(arch: Arch) -> bytes:
            body = layout.pack(arch.byteorder, size=size, flags=flags, compat_capabilities=caps)
            return body + bytes([tail]) * (max(length, 24) - 24)

        return make

    n = rev.name
    yield Probe(f"{n} ioctl", "vm", request, struct(24))
    yield Probe(f"{n} ioctl caps preset", "vm", request, struct(24, caps=2**64 - 1))
    yield Probe(f"{n} ioctl size 0", "vm", request, struct(0))
    yield Probe(f"{n} ioctl size 16", "vm", request, struct(16))
    yield Probe(f"{n} ioctl size 32", "vm", request, struct(32, length=32))
    yield Probe(f"{n} ioctl size 32 tail", "vm", request, struct(32, length=32, tail=0xFF))
    yield Probe(f"{n} ioctl size 4097", "vm", request, struct(4097, length=4097))
    yield Probe(f"{n} ioctl size 65537", "vm", request, struct(65537, length=65537))
    yield Probe(f"{n} ioctl flags 1", "vm", request, struct(24, flags=1))
    yield Probe(f"{n} ioctl NULL", "vm", request, lambda a: NULL)
    yield Probe(f"{n} ioctl wild", "vm", request, lambda a: WILD)
    yield Probe(f"{n} ioctl on dev", "dev", request, struct(24))


def cap_probes(caps: Iterable[int]) -> Iterator[Probe]:
    for cap in caps:
        for fd in ("dev", "vm"):
            yield Probe(f"cap {cap} on {fd}", fd, Arch.kvm_check_extension, lambda a, c=cap: c)  # type: ignore[misc]


def probed_caps(revisions: Iterable[AbiRevision]) -> list[int]:
    """Every revision's capability number, the start-up caps and the generic ones."""
    caps = {rev.cap for rev in revisions if rev.cap is not None}
    return sorted(caps | set(STARTUP_CAPS.values()) | GENERIC_CAPS)


SWEEP_CAPS = range(0, 301)  # the lab asks every capability number up to here, on both fds


def reg_bytes(arch: Arch, *, value: int, size: int) -> bytes:
    return value.to_bytes(size, arch.byteorder)


def _vpa_bytes(arch: Arch, *, addr: int, length: int) -> bytes:
    """A register's 16-byte value: a u64 (VPA_ADDR, TB_OFFSET), or ``vpaval``'s addr and length."""
    return addr.to_bytes(8, arch.byteorder) + length.to_bytes(8, arch.byteorder)


def _pack_one_reg(arch: Arch, *, reg_id: int) -> bytes:
    return KVM_ONE_REG.pack(arch.byteorder, {"id": reg_id, "addr": 0})


def _pack_enable_cap(arch: Arch, *, values: dict[str, int]) -> bytes:
    return KVM_ENABLE_CAP_STRUCT.pack(arch.byteorder, values)


def vcpu_probes(*, registers: bool = True) -> Iterator[Probe]:
    """The vcpu's ioctls, on vcpu 0 of the type-0 VM (:func:`run` makes it first): more ids
    (EEXIST, KVM_MAX_VCPU_IDS, HV's virtual cores), the vcpu ioctls' error paths, the registers,
    and KVM_ENABLE_CAP's capabilities in an order whose answers depend on it (HV's sanity
    check passes only once PAPR is on).  KVM_RUN is asked with an argument only: a real
    kernel would run a sane vcpu's guest."""
    create = KVM_CREATE_VCPU.request
    # ids in sequence only: QEMU as a nested-papr L0 asserts that H_GUEST_CREATE_VCPU's id is
    # the guest's vcpu count (hw/ppc/spapr_nested.c), and the kernel asks it before it checks
    # the id's virtual core; 16384 and -1 fail in kvm_main before that
    for name, vcpu_id in (("1", 1), ("1 again", 1), ("2", 2), ("16384", 16384), ("-1", -1)):
        yield Probe(f"create vcpu {name}", "vcpu-vm", create, lambda a, v=vcpu_id: v, returns_fd=True)  # type: ignore[misc]
    yield Probe("vcpu run arg 1", "vcpu", KVM_RUN.request, lambda a: 1)
    # KVM_INTERRUPT before the mutex and the switch: any irq queues (UNSET dequeues), always 0
    for name, irq in (("set", KVM_INTERRUPT_SET), ("5", 5), ("set level", KVM_INTERRUPT_SET_LEVEL),
                      ("unset", KVM_INTERRUPT_UNSET)):  # fmt: skip
        value = functools.partial(reg_bytes, value=irq, size=4)
        yield Probe(f"vcpu interrupt {name}", "vcpu", KVM_INTERRUPT.request, value)
    yield Probe("vcpu interrupt NULL", "vcpu", KVM_INTERRUPT.request, lambda a: NULL)
    yield from vcpu_generic_probes()
    yield Probe("vcpu ioctl type g", "vcpu", lambda a: a.ioc.io(ord("g"), 0x80), lambda a: 0)
    yield Probe("vcpu ioctl nr 0xff", "vcpu", lambda a: a.ioc.io(KVMIO, 0xFF), lambda a: 0)
    if registers:
        yield from one_reg_probes()
    yield Probe("vcpu get regs", "vcpu", KVM_GET_REGS.request, lambda a: b"\xaa" * KVM_REGS.size)
    yield Probe("vcpu get regs NULL", "vcpu", KVM_GET_REGS.request, lambda a: NULL)
    yield Probe("vcpu set regs NULL", "vcpu", KVM_SET_REGS.request, lambda a: NULL)
    yield Probe("vcpu set regs", "vcpu", KVM_SET_REGS.request, lambda a: bytes(KVM_REGS.size))
    yield Probe("vcpu get regs after set", "vcpu", KVM_GET_REGS.request, lambda a: b"\xaa" * KVM_REGS.size)
    msr_ts = {"pc": 0x100, "msr": 3 << 33 | MSR_ME | 1}  # an illegal transaction state, ME, LE
    yield Probe("vcpu set regs msr ts", "vcpu", KVM_SET_REGS.request, lambda a: KVM_REGS.pack(a.byteorder, msr_ts))
    yield Probe("vcpu get regs after msr ts", "vcpu", KVM_GET_REGS.request, lambda a: b"\xaa" * KVM_REGS.size)
    smmu = KVM_PPC_GET_SMMU_INFO.request
    yield Probe("smmu info", "vcpu-vm", smmu, lambda a: b"\xaa" * KVM_PPC_SMMU_INFO.size)  # PR's depends on vcpu 0
    yield Probe("smmu info NULL", "vcpu-vm", smmu, lambda a: NULL)
    yield Probe("smmu info on dev", "dev", smmu, lambda a: b"\xaa" * KVM_PPC_SMMU_INFO.size)
    yield from vm_ppc_probes()
    yield from mmu_setup_probes(registers=registers)
    yield Probe("vcpu get sregs", "vcpu", KVM_GET_SREGS.request, lambda a: b"\xaa" * KVM_SREGS.size)
    yield Probe("vcpu get sregs NULL", "vcpu", KVM_GET_SREGS.request, lambda a: NULL)
    yield Probe("vcpu set sregs NULL", "vcpu", KVM_SET_SREGS.request, lambda a: NULL)

    def cap(number: int, flags: int = 0, arg0: int = 0) -> Callable[[Arch], bytes]:
        values = {"cap": number, "flags": flags, "arg0": arg0}
        return lambda a: KVM_ENABLE_CAP_STRUCT.pack(a.byteorder, values)

    enable = KVM_ENABLE_CAP.request
    # the VM's KVM_ENABLE_CAP (kvm_vm_ioctl_enable_cap_generic, then the arch's): its vcpu 0
    # exists, so a valid SMT mode is EBUSY on HV
    hcall, smt, poll = KVM_CAP_PPC_ENABLE_HCALL, KVM_CAP_PPC_SMT, KVM_CAP_HALT_POLL
    vm_caps = (
        ("flags 1", (hcall, 1, 0xE0, 1)), ("halt poll", (poll, 0, 1000, 0)), ("halt poll 2^32", (poll, 0, 1 << 32, 0)),
        ("dirty ring", (KVM_CAP_DIRTY_LOG_RING, 0, 4096, 0)),
        *((f"hcall {h:#x}", (hcall, 0, h, 1)) for h in (0x4, 0xDC, 0xE0, 0xE1, 0x300, 0x448, 0x498)),
        ("hcall 0xe0 switch 2", (hcall, 0, 0xE0, 2)),
        *((f"smt {m}", (smt, 0, m, 0)) for m in (0, 2, 3, 16)), ("smt 2 flags", (smt, 0, 2, 1)),
        ("nested hv", (KVM_CAP_PPC_NESTED_HV, 0, 0, 0)), ("secure guest", (KVM_CAP_PPC_SECURE_GUEST, 0, 0, 0)),
        ("dawr1", (KVM_CAP_PPC_DAWR1, 0, 0, 0)), ("12345", (12345, 0, 0, 0)),
    )  # fmt: skip
    yield Probe("vm enable cap NULL", "vcpu-vm", enable, lambda a: NULL)
    for name, case in vm_caps:
        values = dict(zip(("cap", "flags", "arg0", "arg1"), case, strict=True))
        struct = functools.partial(_pack_enable_cap, values=values)
        yield Probe(f"vm enable cap {name}", "vcpu-vm", enable, struct)
    yield Probe("vcpu enable cap NULL", "vcpu", enable, lambda a: NULL)
    yield Probe("vcpu enable cap papr flags 1", "vcpu", enable, cap(KVM_CAP_PPC_PAPR, flags=1))
    yield Probe("vcpu enable cap 12345", "vcpu", enable, cap(12345))
    yield Probe("vcpu enable cap xics fd 999", "vcpu", enable, cap(KVM_CAP_IRQ_XICS, arg0=999))
    yield Probe("vcpu enable cap xive fd 999", "vcpu", enable, cap(KVM_CAP_PPC_IRQ_XIVE, arg0=999))
    for when in ("before papr", "after papr"):
        if when == "after papr":
            yield Probe("vcpu enable cap papr", "vcpu", enable, cap(KVM_CAP_PPC_PAPR))
        yield Probe(f"vcpu enable cap osi {when}", "vcpu", enable, cap(KVM_CAP_PPC_OSI))
        yield Probe(f"vcpu enable cap epr {when}", "vcpu", enable, cap(KVM_CAP_PPC_EPR, arg0=1))
        yield Probe(f"vcpu enable cap fwnmi {when}", "vcpu", enable, cap(KVM_CAP_PPC_FWNMI))
    if registers:  # ARCH_COMPAT, once PAPR is on (before it, every HV set stores and is EINVAL)
        yield from arch_compat_probes("after papr")
        yield from xics_probes()


def arch_compat_probes(when: str) -> Iterator[Probe]:
    """KVM_SET_ONE_REG(ARCH_COMPAT) of every architected PVR and others, each read back."""
    reg_id = ONE_REGS["ARCH_COMPAT"]
    for value in (0x0F000005, 0x0F000006, 0x0F000007, 0x0F000004, 0x0F000001, 0x0F000008, 0x12345678, 0):
        data = functools.partial(reg_bytes, value=value, size=4)
        yield Probe(f"one reg set ARCH_COMPAT {value:#x} {when}", "vcpu", KVM_SET_ONE_REG.request, data, one_reg=reg_id)
        yield Probe(f"one reg get ARCH_COMPAT after {value:#x} {when}", "vcpu", KVM_GET_ONE_REG.request,
                    lambda a: b"\xaa" * 16, one_reg=reg_id)  # fmt: skip


def _signal_mask(arch: Arch, *, length: int) -> bytes:
    return length.to_bytes(4, arch.byteorder) + b"\xff" * 8  # struct kvm_signal_mask, then the sigset


def vcpu_generic_probes() -> Iterator[Probe]:
    """kvm_vcpu_ioctl's other generic cases, each with NULL too: the MP state (EINVAL on powerpc,
    before or after the copy), KVM_TRANSLATE (0, the struct back as it came; the fuzz asks
    read-only ones), KVM_SET_GUEST_DEBUG (control 0), KVM_SET_SIGNAL_MASK (NULL clears; the
    length must be 8), KVM_GET/SET_FPU (EOPNOTSUPP on Book3S, after SET's copy)."""
    cases: tuple[tuple[str, KvmIoctl, Callable[[Arch], int | bytes]], ...] = (
        ("get mp state", KVM_GET_MP_STATE, lambda a: b"\xaa" * 4),
        ("set mp state", KVM_SET_MP_STATE, lambda a: bytes(4)),
        ("translate", KVM_TRANSLATE, lambda a: bytes(range(1, 25))),
        ("set guest debug", KVM_SET_GUEST_DEBUG, lambda a: bytes(KVM_SET_GUEST_DEBUG.size)),
        ("set signal mask", KVM_SET_SIGNAL_MASK, functools.partial(_signal_mask, length=SIGSET_SIZE)),
        ("set signal mask len 4", KVM_SET_SIGNAL_MASK, functools.partial(_signal_mask, length=4)),
        ("get fpu", KVM_GET_FPU, lambda a: b"\xaa" * KVM_GET_FPU.size),
        ("set fpu", KVM_SET_FPU, lambda a: bytes(KVM_SET_FPU.size)),
    )
    for name, io, arg in cases:
        yield Probe(f"vcpu {name}", "vcpu", io.request, arg)
    for io in (KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_TRANSLATE, KVM_SET_GUEST_DEBUG, KVM_SET_SIGNAL_MASK,
               KVM_GET_FPU, KVM_SET_FPU):  # fmt: skip
        yield Probe(f"vcpu {io.name[4:].lower().replace('_', ' ')} NULL", "vcpu", io.request, lambda a: NULL)


def rtas_token_args(arch: Arch, *, name: bytes, token: int) -> bytes:
    struct = KVM_RTAS_TOKEN_ARGS.pack(arch.byteorder, {"token": token})
    return name.ljust(RTAS_NAME_LEN, b"\0")[:RTAS_NAME_LEN] + struct[RTAS_NAME_LEN:]


def vm_ppc_probes() -> Iterator[Probe]:
    """kvm_arch_vm_ioctl's Book3S cases QEMU asks: the CPU's speculation characteristics, the radix
    MMU's geometry, KVM_IRQ_LINE(_STATUS) (no in-kernel interrupt controller), the paravirtual
    hcall, and RTAS tokens defined, defined again and undefined, in an order whose answers depend
    on it."""
    cpu_char, rmmu = KVM_PPC_GET_CPU_CHAR.request, KVM_PPC_GET_RMMU_INFO.request
    yield Probe("cpu char", "vm", cpu_char, lambda a: b"\xaa" * KVM_PPC_CPU_CHAR.size)
    yield Probe("cpu char NULL", "vm", cpu_char, lambda a: NULL)
    yield Probe("cpu char on dev", "dev", cpu_char, lambda a: b"\xaa" * KVM_PPC_CPU_CHAR.size)
    yield Probe("rmmu info", "vm", rmmu, lambda a: b"\xaa" * KVM_PPC_RMMU_INFO.size)
    yield Probe("rmmu info NULL", "vm", rmmu, lambda a: NULL)
    for io in (KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS):  # no in-kernel interrupt controller: ENXIO after the copy
        name = io.name[4:].lower().replace("_", " ")
        yield Probe(name, "vm", io.request, functools.partial(reg_bytes, value=1 << 32 | 5, size=8))
        yield Probe(f"{name} NULL", "vm", io.request, lambda a: NULL)
    yield from spapr_tce_probes()
    yield from create_device_probes()
    # kvm_vm_ioctl's and kvm_vcpu_ioctl's: the argument unread (POWER's: on the VM whose vcpu was made)
    stats = KVM_GET_STATS_FD.request
    yield Probe("vm stats fd", "vcpu-vm", stats, lambda a: 0, returns_fd=True)
    yield Probe("vm stats fd arg wild", "vcpu-vm", stats, lambda a: WILD, returns_fd=True)
    yield Probe("vcpu stats fd", "vcpu", stats, lambda a: 0, returns_fd=True)
    yield Probe("stats fd on dev", "dev", stats, lambda a: 0, returns_fd=True)
    pvinfo = KVM_PPC_GET_PVINFO.request
    yield Probe("pvinfo", "vm", pvinfo, lambda a: b"\xaa" * KVM_PPC_GET_PVINFO.size)
    yield Probe("pvinfo NULL", "vm", pvinfo, lambda a: NULL)
    define = KVM_PPC_RTAS_DEFINE_TOKEN.request
    # tokens of one non-zero byte (the lab's prober gives a buffer past its first PROBE_HEAD bytes as
    # one byte repeated and one other), or all "i" as the name that fills the struct
    no_nul = int.from_bytes(b"i" * 8, "little")
    tokens = (
        ("set-xive", b"ibm,set-xive", 0x2000), ("set-xive again", b"ibm,set-xive", 0x2000),
        ("int-on same token", b"ibm,int-on", 0x2000), ("unknown name", b"ibm,nonesuch", 0x3000),
        ("unknown name same token", b"ibm,nonesuch", 0x2000), ("get-xive", b"ibm,get-xive", 0x2100),
        ("set-xive second token", b"ibm,set-xive\0junk", 0x2200), ("undefine get-xive", b"ibm,get-xive", 0),
        ("get-xive after undefine", b"ibm,get-xive", 0x2100), ("undefine unknown", b"ibm,nonesuch", 0),
        ("no NUL", b"i" * RTAS_NAME_LEN, no_nul), ("int-off", b"ibm,int-off", 0xFF << 56),
        ("undefine int-off", b"ibm,int-off", 0), ("int-off again", b"ibm,int-off", 0xFF << 56),
    )  # fmt: skip
    for name, rtas, token in tokens:
        yield Probe(f"rtas token {name}", "vm", define, functools.partial(rtas_token_args, name=rtas, token=token))
    yield Probe("rtas token NULL", "vm", define, lambda a: NULL)
    # the VM's tokens go, as the fuzz that follows on it expects
    for i, left in enumerate((b"ibm,set-xive", b"ibm,set-xive", b"ibm,get-xive", b"ibm,int-off")):
        yield Probe(f"rtas token undefine {i}", "vm", define, functools.partial(rtas_token_args, name=left, token=0))


def _create_device(arch: Arch, *, dev_type: int, flags: int) -> bytes:
    return KVM_CREATE_DEVICE_STRUCT.pack(arch.byteorder, {"type": dev_type, "fd": 0xEEEE, "flags": flags})


def create_device_probes() -> Iterator[Probe]:
    """KVM_CREATE_DEVICE with KVM_CREATE_DEVICE_TEST (which types this kernel registers: XICS's
    emulation or XICS-on-XIVE, XIVE's native device, VFIO; the struct left as it came), types no
    Book3S kernel has (ENODEV, before TEST), past KVM_DEV_TYPE_MAX, NULL.  The devices themselves
    are made by the prober for their file operations (their fd in the struct is the asking
    process's own number)."""
    create = KVM_CREATE_DEVICE.request
    for name, dev_type, flags in (("xics test", 3, 1), ("vfio test", 4, 1), ("xive test", 9, 1), ("type 0", 0, 0),
                                  ("mpic test", 1, 1), ("type 17 test", 17, 1), ("type 2^31", 1 << 31, 0)):  # fmt: skip
        yield Probe(
            f"create device {name}", "vm", create, functools.partial(_create_device, dev_type=dev_type, flags=flags)
        )
    yield Probe("create device NULL", "vm", create, lambda a: NULL)


def irq_level(arch: Arch, *, irq: int, level: int) -> bytes:
    """struct kvm_irq_level: the irq (a __u32; KVM_IRQ_LINE_STATUS writes its status there), the level."""
    return irq.to_bytes(4, arch.byteorder) + level.to_bytes(4, arch.byteorder)


def xics_probes() -> Iterator[Probe]:
    """The XICS device as QEMU drives it, on the type-0 VM once its vcpu 0 has PAPR: XICS's
    emulation (book3s_xics.c), or on a PowerNV host XICS-on-XIVE (book3s_xive.c, which answers
    the same interface its own way: a CTRL group with NR_SERVERS, a source targeted at a server no
    vcpu is left untargeted, an ICP state never checked, interrupts in the XIVE's queues).  The
    device made (kept: the run's "device"), made again, its attributes (SOURCES from 16 below
    2^20, NR_SERVERS), sources set masked, with a priority for a server no vcpu is, and read back;
    vcpu 0 connected as server 0 (again: EBUSY), its ICP read, set consistent and not; then
    KVM_IRQ_LINE(_STATUS) of a source with a priority (presented to the ICP: its output queued,
    ``queue_intr`` in the vcpu's statistics; or in the vcpu's XIVE queue), of a masked one
    (pending), of none (the status: -EINVAL) and an MSI's unset (nothing); the sources read
    again."""
    create, enable = KVM_CREATE_DEVICE.request, KVM_ENABLE_CAP.request
    xics = functools.partial(_create_device, dev_type=KVM_DEV_TYPE_XICS, flags=0)
    yield Probe("xics create", "vcpu-vm", create, xics, keeps_device=True)
    yield Probe("xics create again", "vcpu-vm", create, xics, needs_device=True)
    sources, ctrl = KVM_DEV_XICS_GRP_SOURCES, KVM_DEV_XICS_GRP_CTRL

    def attr(name: str, io: KvmIoctl, group: int, number: int, value: int = 0xAAAA) -> Probe:
        data = functools.partial(reg_bytes, value=value, size=8)
        return Probe(f"xics {name}", "device", io.request, data, one_reg=number, attr_group=group, needs_device=True)

    for name, group, number in (("has source 16", sources, 16), ("has source 15", sources, 15),
                                ("has source 2^20", sources, 1 << 20), ("has nr servers", ctrl, 1)):  # fmt: skip
        yield attr(name, KVM_HAS_DEVICE_ATTR, group, number)
    yield attr("get source 4096 unset", KVM_GET_DEVICE_ATTR, sources, 4096)
    masked = KVM_XICS_MASKED | 0xFF << 32 | KVM_XICS_LEVEL_SENSITIVE
    yield attr("set source 4096 masked lsi", KVM_SET_DEVICE_ATTR, sources, 4096, masked)
    yield attr("get source 4096", KVM_GET_DEVICE_ATTR, sources, 4096)
    yield attr("get source 4097 of its ics", KVM_GET_DEVICE_ATTR, sources, 4097)
    yield attr("set source 4097 priority 5 no icp", KVM_SET_DEVICE_ATTR, sources, 4097, 5 << 32)
    yield attr("set source 15", KVM_SET_DEVICE_ATTR, sources, 15, KVM_XICS_MASKED)
    yield attr("set nr servers", KVM_SET_DEVICE_ATTR, ctrl, 1, 8)
    icp = ONE_REGS["ICP_STATE"]

    def connect(name: str, server: int) -> Probe:
        values = {"cap": KVM_CAP_IRQ_XICS, "arg1": server}
        struct = functools.partial(_pack_enable_cap, values=values)
        return Probe(f"xics {name}", "vcpu", enable, struct, device_at=8, needs_device=True)

    yield connect("connect vcpu 0", 0)
    yield connect("connect vcpu 0 again", 1)
    for name, value in (("icp reset", 0xFF << 24 | 0xFF << 16), ("icp cppr ff", 0xFF << 56 | 0xFF << 24 | 0xFF << 16),
                        ("icp inconsistent", 0x05 << 16)):  # fmt: skip
        data = functools.partial(reg_bytes, value=value, size=8)
        yield Probe(f"xics {name}", "vcpu", KVM_SET_ONE_REG.request, data, one_reg=icp, needs_device=True)
        yield Probe(f"xics get after {name}", "vcpu", KVM_GET_ONE_REG.request, lambda a: b"\xaa" * 16, one_reg=icp,
                    needs_device=True)  # fmt: skip
    yield attr("set source 4096 priority 5", KVM_SET_DEVICE_ATTR, sources, 4096, 5 << 32)
    yield attr("set source 4097 masked priority 5", KVM_SET_DEVICE_ATTR, sources, 4097, KVM_XICS_MASKED | 5 << 32)
    for name, irq, level in (("4096", 4096, 1), ("4097 masked", 4097, 1), ("5000 unset", 5000, 1),
                             ("4096 unset", 4096, KVM_INTERRUPT_UNSET)):  # fmt: skip
        line = functools.partial(irq_level, irq=irq, level=level)
        yield Probe(f"xics irq line status {name}", "vcpu-vm", KVM_IRQ_LINE_STATUS.request, line, needs_device=True)
        yield Probe(f"xics get icp after irq {name}", "vcpu", KVM_GET_ONE_REG.request, lambda a: b"\xaa" * 16,
                    one_reg=icp, needs_device=True)  # fmt: skip
    yield attr("get source 4096 after irq", KVM_GET_DEVICE_ATTR, sources, 4096)
    last = attr("get source 4097 after irq", KVM_GET_DEVICE_ATTR, sources, 4097)
    yield attrs.evolve(last, closes_device=True)  # the VM without its XICS again (KVM_IRQ_LINE: ENXIO)


TCE64_DEFAULTS = {"page_shift": 12, "flags": 0, "offset": 0, "size": 1 << 18}  # a 1G window of 4K pages, QEMU's first


def tce64(arch: Arch, *, values: dict[str, int]) -> bytes:
    """struct kvm_create_spapr_tce_64: ``values`` over :data:`TCE64_DEFAULTS`."""
    return KVM_CREATE_SPAPR_TCE_64_STRUCT.pack(arch.byteorder, TCE64_DEFAULTS | values)


def tce32(arch: Arch, *, liobn: int, window_size: int) -> bytes:
    """struct kvm_create_spapr_tce: a window of ``window_size`` bytes of 4K pages at 0."""
    return KVM_CREATE_SPAPR_TCE_STRUCT.pack(arch.byteorder, {"liobn": liobn, "window_size": window_size})


KEPT_LIOBN = 0x7E57  # a TCE table :func:`spapr_tce_probes` keeps to the run's end
TCE_FILE = {"liobn": 0xF11E}  # the TCE table whose file operations the lab and `kvmsim record` ask
# the most pages of TCEs one table may have: kzalloc_flex's 112-byte header and 8 bytes a page in the
# largest block the page allocator gives (16MB with either page size); a window of 4K or 64K kernel
# pages of TCEs, at that limit and one page past it
_TCE_LIMIT = ((16 << 20) - 112) // 8


def spapr_tce_probes() -> Iterator[Probe]:
    """KVM_CREATE_SPAPR_TCE(_64) (a kvm-spapr-tce fd: CONFIG_SPAPR_TCE_IOMMU): the window's checks in
    their order, a LIOBN in use (EBUSY) while its fd is open and free again once closed, the first
    ioctl's 4K window, and the largest table the allocator gives."""
    io64, io32 = KVM_CREATE_SPAPR_TCE_64.request, KVM_CREATE_SPAPR_TCE.request
    u64 = (1 << 64) - 1
    cases64: tuple[tuple[str, dict[str, int], bool], ...] = (
        ("1G of 4K", {"liobn": 0x80000000}, False),
        ("kept", {"liobn": KEPT_LIOBN}, True),
        ("kept liobn again", {"liobn": KEPT_LIOBN, "page_shift": 16, "size": 16}, False),
        ("1G of 4K again", {"liobn": 0x80000000}, False),
        ("flags 1", {"liobn": 1, "flags": 1}, False),
        ("size 0", {"liobn": 1, "size": 0}, False),
        ("page shift 11", {"liobn": 1, "page_shift": 11}, False),
        ("page shift 34", {"liobn": 1, "page_shift": 34, "size": 4}, False),
        ("page shift 35", {"liobn": 1, "page_shift": 35, "size": 4}, False),
        ("past 2^64", {"liobn": 1, "page_shift": 16, "offset": (u64 >> 16) - 1, "size": 2}, False),
        ("offset wraps", {"liobn": 1, "offset": u64, "size": 2}, False),
        ("16MB table of 4K pages", {"liobn": 2, "size": _TCE_LIMIT * 512}, False),
        ("past 16MB of 4K pages", {"liobn": 2, "size": (_TCE_LIMIT + 1) * 512}, False),
        ("16MB table of 64K pages", {"liobn": 2, "size": _TCE_LIMIT * 8192}, False),
        ("past 16MB of 64K pages", {"liobn": 2, "size": (_TCE_LIMIT + 1) * 8192}, False),
    )
    for name, values, keep in cases64:
        arg = functools.partial(tce64, values=values)
        yield Probe(f"tce64 {name}", "vm", io64, arg, returns_fd=True, keeps_fd=keep)
    yield Probe("tce64 NULL", "vm", io64, lambda a: NULL, returns_fd=True)
    for name, liobn, window in (("1G", 0x80000001, 1 << 30), ("kept liobn", KEPT_LIOBN, 1 << 30),
                                ("4095 bytes", 3, 4095), ("4G - 4K", 3, (1 << 32) - 4096)):  # fmt: skip
        arg = functools.partial(tce32, liobn=liobn, window_size=window)
        yield Probe(f"tce32 {name}", "vm", io32, arg, returns_fd=True)
    yield Probe("tce32 NULL", "vm", io32, lambda a: NULL, returns_fd=True)


def _mmuv3_cfg(arch: Arch, *, flags: int, process_table: int) -> bytes:
    return KVM_PPC_MMUV3_CFG.pack(arch.byteorder, {"flags": flags, "process_table": process_table})


def mmu_setup_probes(*, registers: bool = True) -> Iterator[Probe]:
    """The VM's MMU: KVM_PPC_ALLOCATE_HTAB (an L1: EOPNOTSUPP; bare metal: a radix VM made HPT
    before the order is checked, orders from the buddy allocator and, with ``registers``, from
    kvm_cma and one too big for either), then KVM_PPC_CONFIGURE_V3_MMU's checks, HPT and radix
    with and without GTSE; with ``registers`` (see :func:`one_reg_probes`) vcpu 0's LPCR read
    after each change.  Order 0 is never asked: with no HPT, Linux 7.3 clears a NULL one.  The
    VM ends as it began (radix with GTSE on a radix host, no HPT)."""
    alloc, configure = KVM_PPC_ALLOCATE_HTAB.request, KVM_PPC_CONFIGURE_V3_MMU.request
    lpcr = ONE_REGS["LPCR_64"]

    def read_lpcr(after: str) -> Probe:
        return Probe(f"mmu lpcr after {after}", "vcpu", KVM_GET_ONE_REG.request, lambda a: b"\xaa" * 16, one_reg=lpcr)

    yield Probe("allocate htab NULL", "vcpu-vm", alloc, lambda a: NULL)
    orders = [("17", 17), ("47", 47), ("0xffffffff", 0xFFFFFFFF), ("18", 18), ("18 again", 18), ("24", 24)]
    if registers:  # the lab's: kvm_cma's 5% of a 2GB machine's RAM holds 64MB, not 128MB
        orders += [("26", 26), ("27", 27)]
    for name, order in [*orders, ("46", 46)]:
        yield Probe(f"allocate htab order {name}", "vcpu-vm", alloc, functools.partial(reg_bytes, value=order, size=4))
        if registers and name in ("17", "27"):
            yield read_lpcr(f"allocate htab order {name}")
    radix, gtse, gr, pt = KVM_PPC_MMUV3_RADIX, KVM_PPC_MMUV3_GTSE, PATB_GR, 5
    configs = (("flags 4", 4, gr | pt), ("radix without GR", radix, pt), ("GR without radix", 0, gr | pt),
               ("size 25", radix, gr | 25), ("hpt gtse", gtse, 0x1000 | pt), ("hpt", 0, 0),
               ("radix", radix, gr | pt), ("radix gtse", radix | gtse, gr | 24))  # fmt: skip
    for name, flags, table in configs:
        struct = functools.partial(_mmuv3_cfg, flags=flags, process_table=table)
        sets_ptbl = QEMU_PAPR_L0 if name in ("radix", "radix gtse") else None  # an L1 takes them: sent to the L0
        yield Probe(f"configure mmu {name}", "vcpu-vm", configure, struct, skip_under=sets_ptbl)
        if registers and name in ("hpt gtse", "hpt", "radix", "radix gtse"):
            yield read_lpcr(f"configure mmu {name}")
    yield Probe("configure mmu NULL", "vcpu-vm", configure, lambda a: NULL)


def _memory_region(arch: Arch, *, layout: StructLayout, values: dict[str, int]) -> bytes:
    return layout.pack(arch.byteorder, values)


def memslot_probes(*, huge: bool = False) -> Iterator[Probe]:
    """KVM_SET_USER_MEMORY_REGION(2) on the type-0 VM (a powerpc host's: x86's is not modelled),
    in an order whose answers depend on it: create, the same again, an overlap, move, resize,
    dirty logging, the flags no powerpc slot takes, ids and address spaces out of range, each
    alignment, the top of user space (``access_ok`` checks address and size apart, and
    TASK_SIZE_USER64 is 64TB with 4K pages, 4PB with 64K), a wrapping guest address, delete.
    With ``huge`` (the lab's): slots of KVM_MEM_MAX_NR_PAGES pages and one more — HV's reverse
    map of such a slot needs more than a small machine's RAM, and a real host would allocate it —
    and :func:`dirty_log_probes`."""
    v1, v2 = KVM_SET_USER_MEMORY_REGION.request, KVM_SET_USER_MEMORY_REGION2.request
    mib, top = 1 << 20, 1 << 46  # TASK_SIZE_64TB
    g, u = 4096 * mib, 0x50000000  # a free guest address and user address for the refused slots
    # (name, v1, slot, flags, guest_phys_addr, memory_size, userspace_addr)
    table = (
        ("create", True, 0, 0, 0, 256 * mib, 0x10000000), ("same again", True, 0, 0, 0, 256 * mib, 0x10000000),
        ("overlap", True, 1, 0, 128 * mib, 256 * mib, 0x40000000),
        ("second", True, 1, 0, 256 * mib, 256 * mib, 0x40000000),
        ("move", True, 1, 0, 1024 * mib, 256 * mib, 0x40000000),
        ("move onto slot 0", True, 1, 0, 0, 256 * mib, 0x40000000),
        ("resize", True, 1, 0, 1024 * mib, 512 * mib, 0x40000000),
        ("new address", True, 1, 0, 1024 * mib, 256 * mib, 0x80000000),
        ("log dirty", True, 1, 1, 1024 * mib, 256 * mib, 0x40000000),
        ("readonly", True, 2, 2, g, mib, u), ("guest memfd v1", True, 2, 4, g, mib, u),
        ("guest memfd", False, 2, 4, g, mib, u), ("flags 8", False, 2, 8, g, mib, u),
        ("slot 32767", True, 32767, 0, g, mib, u), ("slot 0xffff", True, 0xFFFF, 0, g, mib, u),
        ("address space 1", True, 0x10002, 0, g, mib, u), ("size unaligned", True, 2, 0, g, mib + 2048, u),
        ("gpa unaligned", True, 2, 0, g + 2048, mib, u), ("uaddr unaligned", True, 2, 0, g, mib, u + 2048),
        ("size of 4K pages", True, 6, 0, 8 * g, mib + 4096, u),  # a whole page of a 4K kernel, not of a 64K one
        ("uaddr past the top", True, 2, 0, g, mib, top - 65536), ("uaddr at the top", True, 3, 0, 2 * g, mib, top),
        ("uaddr kernel", True, 5, 0, 4 * g, mib, 1 << 63), ("gpa wraps", True, 5, 0, (1 << 64) - mib, 2 * mib, u),
        ("delete", True, 1, 0, 0, 0, 0), ("delete again", True, 1, 0, 0, 0, 0),
        ("v2", False, 1, 0, 2048 * mib, 64 * mib, 0x60000000),
        ("small dirty", True, 7, 1, 16 * g, 65536, 0x70000000),  # one 64K page, 16 of 4K: one long of bitmap
    )  # fmt: skip
    fields = ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr")
    cases = [(name, old, dict(zip(fields, row, strict=True))) for name, old, *row in table]
    if huge:  # sizes each kernel answers without trying an allocation that might or might not fit:
        # 8TB less 4K is not 64K-aligned (EINVAL with 64K pages), 128TB is past 64TB (EINVAL with 4K)
        pages = (1 << 31) - 1
        for name, size in (("4K", pages << 12), ("64K", pages << 16), ("64K and one", (pages + 1) << 16)):
            values = {"slot": 4, "guest_phys_addr": 1 << 44, "memory_size": size, "userspace_addr": 1 << 32}
            cases.append((f"max pages of {name}", True, values))
        cases.append(("delete huge", True, {"slot": 4}))
    for name, old, values in cases:
        layout = KVM_USERSPACE_MEMORY_REGION if old else KVM_USERSPACE_MEMORY_REGION2
        struct = functools.partial(_memory_region, layout=layout, values=values)
        yield Probe(f"memory region {name}", "vcpu-vm", v1 if old else v2, struct)
    yield Probe("memory region NULL", "vcpu-vm", v1, lambda a: NULL)
    yield Probe("memory region2 NULL", "vcpu-vm", v2, lambda a: NULL)
    if huge:  # the lab's: a pointer inside the struct (the pytest plugin's fcntl cannot follow it)
        yield from dirty_log_probes()
    for slot in (0, 1, 2, 3, 5, 6, 7):  # the VM's slots go, as the fuzz that follows on it expects
        struct = functools.partial(_memory_region, layout=KVM_USERSPACE_MEMORY_REGION, values={"slot": slot})
        yield Probe(f"memory region delete slot {slot}", "vcpu-vm", v1, struct)


def dirty_log_probes() -> Iterator[Probe]:
    """KVM_GET_DIRTY_LOG after :func:`memslot_probes`' slots: the dirty-logged slot 7's bitmap (one
    long, zeros: no guest ran) into a buffer of 0xaa, slots without a log or none, ids past
    KVM_USER_MEM_SLOTS and in address space 1 (HV compares the whole u32, PR its halves), a NULL
    bitmap, a NULL struct.  The struct is {slot, padding, pointer}: its first u64 the slot twice,
    whatever the byte order."""
    log = KVM_GET_DIRTY_LOG.request
    for name, slot in (("slot 7", 7), ("slot 0", 0), ("slot 1", 1), ("slot 4", 4), ("slot 32767", 32767),
                       ("address space 1", 0x10007)):  # fmt: skip
        yield Probe(f"dirty log {name}", "vcpu-vm", log, lambda a: b"\xaa" * 64, one_reg=slot * 0x100000001, pointee=64)
    null_bitmap = functools.partial(_dirty_log, values={"slot": 7, "dirty_bitmap": 0})
    yield Probe("dirty log slot 7 NULL bitmap", "vcpu-vm", log, null_bitmap)
    yield Probe("dirty log NULL", "vcpu-vm", log, lambda a: NULL)


def _dirty_log(arch: Arch, *, values: dict[str, int]) -> bytes:
    return KVM_DIRTY_LOG.pack(arch.byteorder, values)


def one_reg_probes() -> Iterator[Probe]:
    """KVM_GET/SET_ONE_REG, by a pointer inside the struct (what the pytest plugin's in-process
    fcntl cannot follow: ``kvmsim record`` leaves them to the lab)."""
    # every register's KVM_GET_ONE_REG, before anything is set: which a backend knows, and its value
    for name, reg_id in ONE_REGS.items():
        yield Probe(f"one reg get {name}", "vcpu", KVM_GET_ONE_REG.request, lambda a: b"\xaa" * 16, one_reg=reg_id)
    # then sets, each read back: plain storage, a u32's width, HV's HIOR, FSCR (PR's set writes
    # FPSCR), an FPR inside its VSR, a VR, HV's one-bit DPDES, PR's LPCR_ILE, DEBUG_INST unset
    sets = (("DSCR", 0x1234), ("PMC1", 0xDEADBEEF), ("HIOR", 0x100), ("FSCR", 0x55), ("FPR0", 0x1122334455667788),
            ("DPDES", 3), ("LPCR_64", 0x02000000), ("ONLINE", 1), ("VSCR", 0xFFFFFFFF), ("DEBUG_INST", 1))  # fmt: skip
    for name, value in sets:
        reg_id = ONE_REGS[name]
        data = functools.partial(reg_bytes, value=value, size=one_reg_size(reg_id))
        yield Probe(f"one reg set {name}", "vcpu", KVM_SET_ONE_REG.request, data, one_reg=reg_id)
        shown = {"FSCR": ("FSCR", "FPSCR"), "FPR0": ("FPR0", "VSR0"), "LPCR_64": ("LPCR", "LPCR_64")}.get(name, (name,))
        for after in shown:
            yield Probe(f"one reg get {after} after set {name}", "vcpu", KVM_GET_ONE_REG.request,
                        lambda a: b"\xaa" * 16, one_reg=ONE_REGS[after])  # fmt: skip
    yield from arch_compat_probes("before papr")
    # the VPA, SLB shadow and DTL in an order whose answers depend on it, each read back; the
    # timebase offset rounded up to 2^24 (DEC_EXPIRY, which it sets from the host's timebase, unread)
    vpas = (("VPA_SLB", 0x20000, 0x100), ("VPA_ADDR", 0x10040, 0), ("VPA_ADDR", 0x10080, 0),
            ("VPA_SLB", 0x20000, 0x123), ("VPA_DTL", 0x30000, 40), ("VPA_DTL", 0x30000, 100),
            ("VPA_DTL", 0x30020, 96), ("VPA_ADDR", 0, 0), ("VPA_DTL", 0, 100), ("VPA_SLB", 0, 5),
            ("VPA_ADDR", 0, 0), ("TB_OFFSET", 1, 0), ("TB_OFFSET", (1 << 64) - 1, 0))  # fmt: skip
    for step, (name, addr, length) in enumerate(vpas):
        data = functools.partial(_vpa_bytes, addr=addr, length=length)
        what = f"{addr:#x}" + (f" len {length:#x}" if name in ("VPA_SLB", "VPA_DTL") else "") + f" (step {step})"
        yield Probe(f"one reg set {name} {what}", "vcpu", KVM_SET_ONE_REG.request, data, one_reg=ONE_REGS[name])
        yield Probe(f"one reg get {name} after {what}", "vcpu", KVM_GET_ONE_REG.request, lambda a: b"\xaa" * 16,
                    one_reg=ONE_REGS[name])  # fmt: skip
    vr = bytes(range(16))
    yield Probe("one reg set VR0", "vcpu", KVM_SET_ONE_REG.request, lambda a: vr, one_reg=ONE_REGS["VR0"])
    yield Probe(
        "one reg get VR0 after set", "vcpu", KVM_GET_ONE_REG.request, lambda a: bytes(16), one_reg=ONE_REGS["VR0"]
    )
    wide = 0x1050000000000000 | ONE_REGS["DSCR"] & 0xFFFF  # a 32-byte register: past the union
    yield Probe("one reg get 32 bytes", "vcpu", KVM_GET_ONE_REG.request, lambda a: bytes(16), one_reg=wide)
    for name in ("DSCR", "IAC1"):  # the struct's addr NULL: GET computes first, SET copies first
        for io in (KVM_GET_ONE_REG, KVM_SET_ONE_REG):
            struct = functools.partial(_pack_one_reg, reg_id=ONE_REGS[name])
            yield Probe(f"one reg {io.name[4:7].lower()} {name} addr NULL", "vcpu", io.request, struct)


def kvm_probes(revisions: Iterable[AbiRevision] = REVISIONS.values(), *, sweep: bool = False) -> Iterator[Probe]:
    """Everything ``record`` and the lab ask: API version, vCPU mmap size, VM types 0-3,
    capabilities on both fds (with ``sweep``, every number in :data:`SWEEP_CAPS`: the lab's),
    and every revision's request with every argument case."""
    revisions = list(revisions)
    yield Probe("api version", "dev", Arch.kvm_get_api_version, lambda a: 0)
    yield Probe("vcpu mmap size", "dev", Arch.kvm_get_vcpu_mmap_size, lambda a: 0)
    for vm_type in range(4):
        yield Probe(f"create vm type {vm_type}", "dev", Arch.kvm_create_vm, lambda a, t=vm_type: t, returns_fd=True)  # type: ignore[misc]
    yield from cap_probes(sorted(set(probed_caps(revisions)) | (set(SWEEP_CAPS) if sweep else set())))
    for rev in revisions:
        if rev.ioctl is not None:
            yield from compat_caps_probes(rev)
    yield from vcpu_probes(registers=sweep)
    yield from memslot_probes(huge=sweep)


def run(
    target: Device, probes: Iterable[Probe], finish: Callable[[Device, dict[str, int]], None] | None = None
) -> dict[str, Answer]:
    """Open the device, create a VM (type 0) and (on powerpc) its vcpu 0, run every probe, then
    ``finish`` with the fds while they are open (the stats files are read there, after what the
    probes did); "open", "create vm" and "create vcpu" report why when the device cannot get that far."""
    try:
        dev = target.open()
    except OSError as exc:
        return {"open": Answer(error=errname(exc.errno))}
    answers: dict[str, Answer] = {"open": Answer(fd=True)}
    try:
        try:
            vm = int(target.ioctl(dev, target.arch.kvm_create_vm(), 0))
            answers["create vm"] = Answer(fd=True)
        except OSError as exc:
            answers["create vm"] = Answer(error=errname(exc.errno))
            vm = -1
        vcpu = -1
        if vm >= 0 and target.arch.is_powerpc:  # a vcpu of vm: what the vcpu probes ask (x86's is not modelled)
            try:
                vcpu = int(target.ioctl(vm, KVM_CREATE_VCPU.request(target.arch), 0))
                answers["create vcpu"] = Answer(fd=True)
            except OSError as exc:
                answers["create vcpu"] = Answer(error=errname(exc.errno))
        fds = {"dev": dev, "vm": vm, "vcpu": vcpu, "vcpu-vm": vm if vcpu >= 0 else -1, "device": -1}
        kept: list[int] = []
        try:
            for probe in probes:
                if probe.needs_device and fds["device"] < 0:
                    continue
                if fds[probe.fd] >= 0:
                    answers[probe.name] = probe.run(target, fds, kept)
                if probe.closes_device and fds["device"] >= 0:
                    kept.remove(fds["device"])
                    target.close(fds["device"])
                    fds["device"] = -1
            if finish is not None:
                finish(target, fds)
        finally:
            for fd in kept:
                target.close(fd)
            if vcpu >= 0:
                target.close(vcpu)
            if vm >= 0:
                target.close(vm)
    finally:
        target.close(dev)
    return answers


FILE_OPS = ("read", "write", "pread", "pwrite", "lseek", "mmap", "poll", "fstat", "link")


def file_ops(fd: int) -> dict[str, str]:
    """What a real fd answers besides ioctl, each as anon_inodes.FILE_OPS writes it (the lab's
    prober asks the same in C): an errno name or the result."""
    import mmap
    import select

    def tried(call: Callable[[], object]) -> str:
        try:
            return str(call())
        except OSError as exc:
            return errname(exc.errno)

    def mapped() -> str:
        with mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ):
            return "mapped"

    def polled() -> str:
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLOUT)
        ready = p.poll(0)
        events = ready[0][1] if ready else 0
        return "|".join(n for n, bit in (("IN", select.POLLIN), ("OUT", select.POLLOUT)) if events & bit) or "-"

    return {
        "read": tried(lambda: len(os.read(fd, 1))),
        "write": tried(lambda: os.write(fd, b"\0")),
        "pread": tried(lambda: len(os.pread(fd, 1, 0))),
        "pwrite": tried(lambda: os.pwrite(fd, b"\0", 0)),
        "lseek": tried(lambda: os.lseek(fd, 0, os.SEEK_CUR)),
        "mmap": tried(mapped),
        "poll": polled(),
        "fstat": tried(lambda: _file_kind(os.fstat(fd))),
        "link": tried(lambda: os.readlink(f"/proc/self/fd/{fd}")),
    }


def _file_kind(st: os.stat_result) -> str:
    """A device by its number, the anon inode every anon_inode file shares, else the mode."""
    import stat

    if stat.S_ISCHR(st.st_mode):
        return f"chr {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    probe = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        anon = os.fstat(probe)
    finally:
        os.close(probe)
    return "anon_inode" if (st.st_dev, st.st_ino) == (anon.st_dev, anon.st_ino) else f"mode {st.st_mode:o}"


def _new_file_ops(target: Device, vm: int, kind: str, request: int, arg: int | bytearray) -> dict[str, str]:
    """:func:`file_ops` of the file ``request`` on ``vm`` makes, as ``kind.read`` ...; nothing
    where the kernel makes none (a TCE table without CONFIG_SPAPR_TCE_IOMMU, x86's vcpu)."""
    try:
        fd = int(target.ioctl(vm, request, arg))
    except OSError:
        return {}
    try:
        return {f"{kind}.{op}": v for op, v in file_ops(fd).items()}
    finally:
        target.close(fd)


def read_stats(target: Device, fds: dict[str, int], read: Callable[[int], bytes]) -> dict[str, int | str]:
    """What the stats files of :func:`run`'s VM and vcpu 0 read from 0 (``read`` of a new stats
    fd), hex, after the probes, and the pid their ids name: what ``kvmsim record`` and the lab
    keep.  POWER's only (x86's descriptors are not modelled)."""
    if not target.arch.is_powerpc or fds["vm"] < 0:
        return {}
    found: dict[str, int | str] = {}
    for name in ("vm", "vcpu"):
        if fds[name] < 0:
            continue
        try:
            sfd = int(target.ioctl(fds[name], KVM_GET_STATS_FD.request(target.arch), 0))
        except OSError:
            continue
        try:
            found[name] = read(sfd).hex()
        finally:
            target.close(sfd)
    return found


def real_stats(target: Device, fds: dict[str, int]) -> dict[str, int | str]:
    """:func:`read_stats` of a real device, this process's pid their ids'."""
    found = read_stats(target, fds, lambda fd: os.read(fd, 1 << 14))  # a new file reads from 0
    return {"pid": os.getpid(), **found} if found else {}


def real_file_ops(target: Device) -> dict[str, str]:
    """:func:`file_ops` of a real device's /dev/kvm fd, a VM fd (type 0) and its vcpu 0, as
    ``dev.read`` ...: what ``kvmsim record`` and the lab keep beside the probes.  Nothing of a
    file that is not the misc device 10:232 (a test's fake /dev/kvm has no device number)."""
    try:
        dev = target.open()
    except OSError:
        return {}
    try:
        rdev = getattr(os.fstat(dev), "st_rdev", None)
        if rdev is None or (os.major(rdev), os.minor(rdev)) != (10, 232):
            return {}
        found = {f"dev.{op}": v for op, v in file_ops(dev).items()}
        try:
            vm = int(target.ioctl(dev, target.arch.kvm_create_vm(), 0))
        except OSError:
            return found
        try:
            found |= {f"vm.{op}": v for op, v in file_ops(vm).items()}
            found |= _new_file_ops(target, vm, "spapr-tce", KVM_CREATE_SPAPR_TCE_64.request(target.arch),
                                   bytearray(tce64(target.arch, values=TCE_FILE)))  # fmt: skip
            if target.arch.is_powerpc:  # x86's stats files are not modelled
                found |= _new_file_ops(target, vm, "vm-stats", KVM_GET_STATS_FD.request(target.arch), 0)
            try:
                vcpu = int(target.ioctl(vm, KVM_CREATE_VCPU.request(target.arch), 0))
            except OSError:
                return found
            try:
                found |= {f"vcpu.{op}": v for op, v in file_ops(vcpu).items()}
                if target.arch.is_powerpc:
                    found |= _new_file_ops(target, vcpu, "vcpu-stats", KVM_GET_STATS_FD.request(target.arch), 0)
                return found
            finally:
                target.close(vcpu)
        finally:
            target.close(vm)
    finally:
        target.close(dev)
