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

from .kvm_main import DEV_KVM
from .uapi import ARCHES, AbiRevision, Arch, CompatCapsField

Answer = int | str  # a value, "fd" for a new descriptor, or an errno name such as "EINVAL"


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


@attrs.frozen
class Probe:
    name: str
    fd: Literal["dev", "vm"]
    request: Callable[[Arch], int]
    arg: Callable[[Arch], int | bytearray]
    read_back: Callable[[Arch, bytearray], int] | None = None  # what a struct probe reports
    size_back: Callable[[Arch, bytearray], int] | None = None  # its size field, after an error
    returns_fd: bool = False

    def run(self, target: Target, fds: dict[str, int]) -> Answer:
        arch = target.arch
        arg = self.arg(arch)
        before = bytes(arg) if isinstance(arg, bytearray) else b""
        try:
            ret = int(target.ioctl(fds[self.fd], self.request(arch), arg))
        except OSError as exc:
            if self.size_back is not None and isinstance(arg, bytearray) and bytes(arg) != before:
                return f"{errname(exc)} size={self.size_back(arch, arg)}"  # v5's E2BIG write-back
            return errname(exc)
        if self.returns_fd:
            target.close(ret)
            return "fd"
        if self.read_back is not None and isinstance(arg, bytearray):
            return self.read_back(arch, arg)
        return ret


def compat_caps_probes(rev: AbiRevision) -> Iterator[Probe]:
    """The ioctl with a valid struct, a short size, a large size and, for v5, flags set."""

    def struct(size: int, flags: int = 0) -> Callable[[Arch], bytearray]:
        return lambda arch: bytearray(
            rev.layout.pack(arch.byteorder, size=size, flags=flags).ljust(max(size, 24), b"\0")
        )

    def field(name: CompatCapsField) -> Callable[[Arch, bytearray], int]:
        return lambda arch, buf: rev.layout.unpack(arch.byteorder, bytes(buf[:24]))[name]

    caps, size = field("compat_capabilities"), field("size")
    yield Probe(f"{rev.name} ioctl", "vm", rev.request, struct(24), caps, size)
    yield Probe(f"{rev.name} ioctl size 16", "vm", rev.request, struct(16), caps, size)
    yield Probe(f"{rev.name} ioctl size 32", "vm", rev.request, struct(32), caps, size)
    if rev.checks_flags:
        yield Probe(f"{rev.name} ioctl flags 1", "vm", rev.request, struct(24, flags=1), caps, size)


def cap_probes(revisions: Iterable[AbiRevision]) -> Iterator[Probe]:
    for rev in revisions:
        for fd in ("dev", "vm"):
            yield Probe(f"cap {rev.cap} on {fd}", fd, Arch.kvm_check_extension, lambda a, c=rev.cap: c)  # type: ignore[misc]


def kvm_probes(revisions: Iterable[AbiRevision]) -> Iterator[Probe]:
    """Everything ``record`` asks: API version, VM types, capabilities on both fds, the ioctl."""
    revisions = list(revisions)
    yield Probe("api version", "dev", Arch.kvm_get_api_version, lambda a: 0)
    for vm_type in (0, 1, 2):
        yield Probe(f"create vm type {vm_type}", "dev", Arch.kvm_create_vm, lambda a, t=vm_type: t, returns_fd=True)  # type: ignore[misc]
    yield from cap_probes(revisions)
    for rev in revisions:
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
