"""Shared helpers: boot a simulated kernel, issue the compat-caps ioctl at a user address."""

from __future__ import annotations

import errno
import json

import pytest

from client import CompatError, SimDevice, query
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


def client_answer(host: str, abi: str) -> tuple[int, dict[str, object]]:
    """What the in-process Python client says (exit code, answer), in the vocabulary the
    C example client prints: the kind and errno name of a failure, else the modes."""
    try:
        r = query(SimDevice(Kernel.from_profile(host, abi=abi)))
    except CompatError as exc:
        e = exc.to_json()
        return exc.exit_code, {"kind": e["kind"], "name": e.get("name")}
    return 0, {"abi": r.abi, "compat_capabilities": r.compat_capabilities, "modes": list(r.modes)}


def printed_answer(stdout: str) -> dict[str, object]:
    """A client's JSON line, reduced to what every client must agree on."""
    out = json.loads(stdout)
    if "error" in out:
        return {"kind": out["error"]["kind"], "name": out["error"]["name"]}
    assert out["recommended"] == (out["modes"][-1] if out["modes"] else None)
    return {k: out[k] for k in ("abi", "compat_capabilities", "modes")}
