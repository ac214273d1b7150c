"""A device whose kernel is a function, for tests of code above the client (httpx's
``MockTransport``, in kind): no kernel is booted, the handler answers each call.  The
simulator's device (``kvmsim.user.simulated.SimDevice``) remains the faithful one.

    def handler(call: MockCall) -> int | bytes:
        if call.name == "KVM_CHECK_EXTENSION":
            return 1
        ...
    query(MockDevice(handler))

A handler returns the ioctl's value (or the bytes of a read-only buffer's answer), writes into a
mutable ``call.arg`` as the kernel would, or raises ``OSError(errno, ...)``."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs

from kvmsim.uapi import ARCHES, DEV_KVM, Arch


@attrs.frozen
class MockCall:
    """One ioctl: on which fd (``"dev"`` or ``"vm"``), the request, its name, the argument."""

    fd: str
    request: int
    name: str
    arg: object


class MockDevice:
    """A Device (kvmcompat.Device) answered by ``handler``; KVM_CREATE_VM's answer is a VM fd."""

    def __init__(self, handler: Callable[[MockCall], int | bytes], *, arch: Arch = ARCHES["ppc64le"]) -> None:
        self.handler, self.arch, self.calls = handler, arch, list[MockCall]()
        self._fds: dict[int, str] = {}
        self._next = itertools.count(3)

    @property
    def name(self) -> str:
        return f"mock:{DEV_KVM}"

    def open(self) -> int:
        fd = next(self._next)
        self._fds[fd] = "dev"
        return fd

    def ioctl(self, fd: int, request: int, arg: object = 0, mutate_flag: bool = True) -> int | bytes:
        from kvmsim.uapi import decode_request  # the names: only when a mock is used

        call = MockCall(self._fds[fd], request, decode_request(request, self.arch), arg)
        self.calls.append(call)
        answer = self.handler(call)
        if call.name == "KVM_CREATE_VM" and isinstance(answer, int):
            answer = next(self._next)
            self._fds[answer] = "vm"
        return answer

    def close(self, fd: int) -> None:
        del self._fds[fd]
