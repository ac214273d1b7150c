"""The userspace client of ``KVM_PPC_GET_COMPAT_CAPS``: one library over a real /dev/kvm or
the simulator.  Public face: :func:`query`, the devices, the result and the typed failures."""

from .compat import CompatCaps, CompatError, KernelError, NoDevice, Options, Unsupported, decode, query
from .device import Device, RealDevice, SimDevice

__all__ = [
    "CompatCaps",
    "CompatError",
    "Device",
    "KernelError",
    "NoDevice",
    "Options",
    "RealDevice",
    "SimDevice",
    "Unsupported",
    "decode",
    "query",
]
