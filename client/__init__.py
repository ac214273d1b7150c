"""kvmcompat, the userspace client of ``KVM_PPC_GET_COMPAT_CAPS``: one library over a real
/dev/kvm, the simulator, or a mock, the same code above the device seam.

Public face: :func:`query` and :func:`decode`, :class:`Options` and the result
:class:`CompatCaps`, the device seam (:class:`Device`, :class:`RealDevice`,
:func:`machine_arch`), :class:`DeviceTree`, the handler-style :class:`MockDevice`, and the
failures (:class:`CompatError` and its kinds).  The command line is :mod:`kvmcompat.cli`; its
argparse pieces, shared with ``kvmsim``'s, are :mod:`kvmcompat.args`.  The ABI's numbers are
``kvmsim.uapi``; the simulator's device is ``kvmsim.SimDevice``.  Importing this loads nothing of
the simulator, and nothing here imports it."""

from kvmsim._version import __version__

from ._compat import CompatCaps, CompatError, KernelError, NoDevice, Options, Unsupported, decode, query
from ._device import Device, RealDevice, UnknownArch, machine_arch
from ._devicetree import DeviceTree
from ._mock import MockCall, MockDevice

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
    "UnknownArch",
    "Unsupported",
    "__version__",
    "decode",
    "machine_arch",
    "query",
]
