"""kvmcompat, the userspace client of ``KVM_PPC_GET_COMPAT_CAPS``: one library over a real
/dev/kvm or the simulator.  Public face: :func:`query`, the device seam, the device tree
reader, the result and the typed failures.  Importing it loads nothing of the simulator:
``SimDevice`` (``kvmsim.user.simulated``) is loaded on first use."""

from typing import Any

from kvmsim._version import __version__

from .compat import CompatCaps, CompatError, KernelError, NoDevice, Options, Unsupported, decode, query
from .device import Device, RealDevice
from .devicetree import DeviceTree
from .mock import MockCall, MockDevice

__all__ = [
    "CompatCaps",
    "CompatError",
    "Device",
    "DeviceTree",
    "KernelError",
    "MockCall",
    "MockDevice",
    "NoDevice",
    "Options",
    "RealDevice",
    "SimDevice",
    "Unsupported",
    "__version__",
    "decode",
    "query",
]


def __getattr__(name: str) -> Any:
    if name == "SimDevice":
        from kvmsim.user.simulated import SimDevice

        return SimDevice
    raise AttributeError(f"module 'kvmcompat' has no attribute {name!r}")
