"""The client's device seam, which the client owns: everything above it is the same code for
a real ``/dev/kvm`` and the simulator, as httpx owns its transport interface (:class:`Device`;
:class:`RealDevice` here, and the simulator's :class:`kvmsim.user.simulated.SimDevice`
implements it).  Importing this loads nothing of the simulated kernel (only its uapi numbers)."""

from __future__ import annotations

import fcntl
import os
from typing import Protocol

from kvmsim.uapi import ARCHES, DEV_KVM, Arch


class Device(Protocol):
    """What a program needs of a KVM device: ``os``/``fcntl``-shaped calls, and the
    architecture (ioctl encoding, byte order) of the kernel behind it."""

    @property
    def arch(self) -> Arch: ...
    @property
    def name(self) -> str: ...
    def open(self) -> int: ...
    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes: ...
    def close(self, fd: int) -> None: ...


class UnknownArch(ValueError):
    """This machine's architecture has no ioctl encoding kvmsim knows (aarch64, s390x)."""


def machine_arch() -> Arch:
    """The architecture of the kernel this process runs on (uname's machine: ppc64le on
    little-endian POWER, ppc64 on big-endian)."""
    machine = os.uname().machine
    try:
        return ARCHES[machine]
    except KeyError:
        raise UnknownArch(f"{machine}: this machine's architecture is not one kvmsim models") from None


class RealDevice:
    """A character device (default ``/dev/kvm``) through ``os.open`` and ``fcntl.ioctl``; its
    arch is the machine's unless given (a program may talk to a kernel of another arch
    through kvmsim's shim)."""

    def __init__(self, path: str = DEV_KVM, *, arch: Arch | None = None) -> None:
        self.path = path
        self._arch = arch

    @property
    def arch(self) -> Arch:
        if self._arch is None:
            self._arch = machine_arch()
        return self._arch

    @property
    def name(self) -> str:
        return self.path

    def open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)

    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes:
        return fcntl.ioctl(fd, request, arg, mutate_flag)  # type: ignore[call-overload, no-any-return]

    def close(self, fd: int) -> None:
        os.close(fd)
