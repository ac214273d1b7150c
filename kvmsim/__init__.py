"""kvmsim: the Linux kernel side of ``KVM_PPC_GET_COMPAT_CAPS``, simulated.

The public face: :class:`Kernel` (boot one from a host profile and talk to it as to
``/dev/kvm``), :class:`KvmError`, :class:`ProfileError`, and the ABI data in ``kvmsim.uapi``.
"""

from .errors import KvmError
from .kvm_main import Kernel
from .profile import Host, ProfileError
from .uapi import DEV_KVM, REVISIONS, AbiRevision

__all__ = ["DEV_KVM", "REVISIONS", "AbiRevision", "Host", "Kernel", "KvmError", "ProfileError"]
