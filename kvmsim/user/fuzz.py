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
the guest, as it ends here (:func:`replay` maps nothing else), so a kernel reading past it faults alike in both."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable

from ..kernel.errors import KvmError
from ..kernel.kvm_main import BootedKernel, Process
from ..kernel.usermem import PAGE_SIZE, AddressSpace
from ..uapi import ARCHES, KVM_VM_PPC_HV, KVM_VM_PPC_PR, KVMIO, REVISIONS, AbiRevision, Arch, errname
from .probe import NULL, WILD, Answer, Probe

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


def cases(seed: int, n: int, revisions: Iterable[AbiRevision] = REVISIONS.values()) -> list[Probe]:
    """``n`` cases from ``seed``, for the arch each is asked on (the requests are built then)."""
    rng = random.Random(seed)
    revs = [r for r in revisions if r.ioctl is not None]
    out = []
    for i in range(n):
        kind = rng.random()
        fd = rng.choice(("dev", "vm", "vm", "vm-hv", "vm-pr"))  # a VM of type 0, 1 (HV) or 2 (PR)
        name = f"fuzz {i}"
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
        elif kind < 0.8:  # KVM_CHECK_EXTENSION of any number
            cap = rng.choice((rng.randrange(0, 301), rng.randrange(301, 1 << 16), (1 << 31) - 1, -1, -250))
            out.append(Probe(name, fd, Arch.kvm_check_extension, _const(cap)))  # type: ignore[arg-type]
        elif kind < 0.9:  # KVM_CREATE_VM of every type (a VM fd asked it: ENOTTY)
            out.append(Probe(name, fd, Arch.kvm_create_vm, _const(rng.randrange(16)), returns_fd=True))  # type: ignore[arg-type]
        else:  # the argument-less ioctls, given an argument or not
            request = rng.choice((Arch.kvm_get_api_version, Arch.kvm_get_vcpu_mmap_size))
            out.append(Probe(name, fd, request, _const(rng.choice((0, 0, 1, WILD)))))  # type: ignore[arg-type]
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


def replay(kernel: BootedKernel, probe: Probe, fds: dict[str, int], process: Process) -> Answer:
    """``probe`` on the simulated kernel as the guest's prober asks it: an int argument
    passed as is; a buffer mapped alone, where the prober places it, read back afterwards."""
    mem = process.memory
    assert isinstance(mem, AddressSpace)  # kernel.process()'s own
    arch = kernel.arch
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
    return {p.name: replay(kernel, p, fds, process) for p in probes}
