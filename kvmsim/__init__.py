"""kvmsim: the Linux kernel side of ``KVM_PPC_GET_COMPAT_CAPS``, simulated.

The public face: :class:`Kernel` (boot one from a host profile and talk to it as to
``/dev/kvm``), :class:`KvmError`, :class:`ProfileError`, :class:`Host`, and the ABI data in
``kvmsim.uapi``.  They load on first use, so ``import kvmsim.uapi`` (what a client needs on a
real device) loads nothing of the simulator."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kernel.errors import KvmError
    from .kernel.profile import Host, ProfileError
    from .kernel.revisions import REVISIONS, AbiRevision
    from .kernel.uapi import DEV_KVM
    from .user.simulated import Kernel

_EXPORTS = {
    "DEV_KVM": "kernel.uapi",
    "REVISIONS": "kernel.revisions",
    "AbiRevision": "kernel.revisions",
    "Host": "kernel.profile",
    "ProfileError": "kernel.profile",
    "KvmError": "kernel.errors",
    "Kernel": "user.simulated",
}
__all__ = ["DEV_KVM", "REVISIONS", "AbiRevision", "Host", "Kernel", "KvmError", "ProfileError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one source, the client's (pyproject.toml reads it too)
        from ._version import __version__

        return __version__
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvmsim' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
