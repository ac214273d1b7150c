"""kvmsim: the Linux kernel side of ``KVM_PPC_GET_COMPAT_CAPS``, simulated.

The public face: :class:`Kernel` (boot one from a host profile and talk to it as to
``/dev/kvm``), :class:`SimDevice` (a kernel behind the client's device seam),
:class:`KvmError`, :class:`ProfileError`, :class:`Host`; and ``kvmsim.uapi``, the ABI both
sides import.  They load on first use, so ``import kvmsim.uapi`` (what the client needs on a
real device) loads nothing of the simulator.  Every other module is the implementation: the
zones' folders (``kernel``, ``user``, ``intercept`` with ``seccomp`` and ``preload``,
``plugin``, ``record``, ``lab``, ``cli``) may change between releases."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kernel.errors import KvmError
    from .kernel.profile import Host, ProfileError
    from .user.simulated import Kernel, SimDevice

_EXPORTS = {
    "Host": "kernel.profile",
    "ProfileError": "kernel.profile",
    "KvmError": "kernel.errors",
    "Kernel": "user.simulated",
    "SimDevice": "user.simulated",
}
__all__ = ["Host", "Kernel", "KvmError", "ProfileError", "SimDevice", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one source, the client's (pyproject.toml reads it too)
        from ._version import __version__

        return __version__
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvmsim' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
