"""Probes: the questions one asks a KVM device, and its answers as plain values.

A probe runs against anything shaped like a device (``arch``, ``open``/``ioctl``/``close``):
the simulated :class:`~kvmsim.Kernel`, or a real ``/dev/kvm``.  ``kvmsim show``, ``kvmsim
matrix``, ``record`` and ``verify`` share these probes, so what is recorded on real hardware
is exactly what the simulator is checked against."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, Protocol

import attrs

from .uapi import ARCHES, DEV_KVM, GENERIC_CAPS, REVISIONS, STARTUP_CAPS, AbiRevision, Arch

# A value, "fd" for a new descriptor, an errno name such as "EINVAL", or for a struct the
# result and the bytes the kernel wrote (see describe_buffer)
Answer = int | str


class Target(Protocol):
    @property
    def arch(self) -> Arch: ...
    def open(self) -> int: ...
    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes: ...
    def close(self, fd: int) -> None: ...


def machine_arch() -> Arch:
    """The architecture of the kernel this process runs on (uname's machine: ppc64le on
    little-endian POWER, ppc64 on big-endian)."""
    machine = os.uname().machine
    try:
        return ARCHES[machine]
    except KeyError:
        raise ValueError(f"{machine}: this machine's architecture is not one kvmsim models") from None


class DeviceTarget:
    """A real KVM device through ``os.open`` and ``fcntl.ioctl``; its arch is the machine's
    unless given (a client may talk to a kernel of another arch through kvmsim's shim)."""

    def __init__(self, path: str = DEV_KVM, *, arch: Arch | None = None) -> None:
        self.path = path
        self._arch = arch

    @property
    def arch(self) -> Arch:
        if self._arch is None:
            self._arch = machine_arch()
        return self._arch

    def open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)

    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes:
        return fcntl.ioctl(fd, request, arg, mutate_flag)  # type: ignore[call-overload, no-any-return]

    def close(self, fd: int) -> None:
        os.close(fd)


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")


NULL, WILD = 0, 8  # the bad pointers every struct probe family passes (address 8 is never mapped)
TAIL_SHOWN = 64  # a changed tail (past the 24-byte struct) is shown in full up to this many bytes


def describe_buffer(head: int | str, before: bytes, after: bytes) -> Answer:
    """A struct probe's answer: the result, then the bytes if the kernel wrote any:
    ``"0 1800...00"`` (the first 24 bytes, hex), plus ``tail=<hex>`` when bytes past them
    changed (``tail=changed`` past :data:`TAIL_SHOWN`).  The C prober prints the same."""
    if after == before:
        return head
    text = f"{head} {after[:24].hex()}"
    if after[24:] != before[24:]:
        tail = after[24:]
        text += f" tail={tail.hex()}" if len(tail) <= TAIL_SHOWN else " tail=changed"
    return text


@attrs.frozen
class Probe:
    """One question: on which fd, which request, with which argument.  ``arg`` is an int
    (passed as is: a value, NULL or a wild pointer) or the initial bytes of a buffer."""

    name: str
    fd: Literal["dev", "vm"]
    request: Callable[[Arch], int]
    arg: Callable[[Arch], int | bytes]
    returns_fd: bool = False

    def run(self, target: Target, fds: dict[str, int]) -> Answer:
        arch = target.arch
        arg = self.arg(arch)
        buf = bytearray(arg) if isinstance(arg, bytes) else None
        try:
            ret = int(target.ioctl(fds[self.fd], self.request(arch), arg if buf is None else buf))
        except OSError as exc:
            head: int | str = errname(exc)
        else:
            if self.returns_fd:
                target.close(ret)
                return "fd"
            head = ret
        return head if buf is None or not isinstance(arg, bytes) else describe_buffer(head, arg, bytes(buf))


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


def kvm_probes(revisions: Iterable[AbiRevision] = REVISIONS.values()) -> Iterator[Probe]:
    """Everything ``record`` and the lab ask: API version, vCPU mmap size, VM types 0-3,
    capabilities on both fds, and every revision's request with every argument case."""
    revisions = list(revisions)
    yield Probe("api version", "dev", Arch.kvm_get_api_version, lambda a: 0)
    yield Probe("vcpu mmap size", "dev", Arch.kvm_get_vcpu_mmap_size, lambda a: 0)
    for vm_type in range(4):
        yield Probe(f"create vm type {vm_type}", "dev", Arch.kvm_create_vm, lambda a, t=vm_type: t, returns_fd=True)  # type: ignore[misc]
    yield from cap_probes(probed_caps(revisions))
    for rev in revisions:
        if rev.abi is not None:
            yield from compat_caps_probes(rev)


def run(target: Target, probes: Iterable[Probe]) -> dict[str, Answer]:
    """Open the device, create a VM (type 0), run every probe; "open" and "create vm"
    report why when the device cannot get that far."""
    try:
        dev = target.open()
    except OSError as exc:
        return {"open": errname(exc)}
    answers: dict[str, Answer] = {"open": "fd"}
    try:
        try:
            vm = int(target.ioctl(dev, target.arch.kvm_create_vm(), 0))
            answers["create vm"] = "fd"
        except OSError as exc:
            answers["create vm"] = errname(exc)
            vm = -1
        fds = {"dev": dev, "vm": vm}
        try:
            for probe in probes:
                if fds[probe.fd] >= 0:
                    answers[probe.name] = probe.run(target, fds)
        finally:
            if vm >= 0:
                target.close(vm)
    finally:
        target.close(dev)
    return answers
