"""Shared helpers: boot a simulated kernel, issue the compat-caps ioctl at a user address."""

from __future__ import annotations

import errno

import pytest

from kvmsim import Kernel

pytest_plugins = ["pytester"]

REVS = ("v4", "v5")
MB = {"P9": 1 << 62, "P10": 1 << 61, "P11": 1 << 60}


def caps(*names: str) -> int:
    value = 0
    for n in names:
        value |= MB[n]
    return value


class Vm:
    """A booted kernel with /dev/kvm open and one VM created."""

    def __init__(self, host: str, abi: str, *, vm_type: int = 0, ksize: int = 24) -> None:
        self.k = Kernel.from_profile(host, abi=abi, ksize=ksize)
        self.dev = self.k.open()
        self.vm = self.k.ioctl(self.dev, self.k.KVM_CREATE_VM, vm_type)
        self.layout = self.k.rev.layout
        self.bo = self.k.host.arch.byteorder

    def struct(self, size: int = 24, flags: int = 0, caps: int = 0) -> bytes:
        return self.layout.pack(self.bo, size=size, flags=flags, compat_capabilities=caps)

    def call(self, addr: int) -> int:
        return int(self.k.ioctl(self.vm, self.k.KVM_PPC_GET_COMPAT_CAPS, addr))

    def errno_of(self, addr: int) -> int:
        with pytest.raises(OSError) as exc:
            self.call(addr)
        return exc.value.errno  # type: ignore[return-value]

    def fields(self, addr: int) -> dict[str, int]:
        return dict(self.layout.unpack(self.bo, self.k.memory.read(addr, 24)))


@pytest.fixture(params=REVS)
def abi(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def errname(err: int) -> str:
    return errno.errorcode[err]
