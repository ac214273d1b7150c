"""KVM-PR (arch/powerpc/kvm/book3s_pr.c): its init check, and its ops, which have no
``get_compat_caps`` at all."""

from __future__ import annotations

import errno
from collections.abc import Callable

import attrs

from .book3s import Book3sVcpu, new_vcpu
from .errors import KvmError
from .profile import Host


@attrs.frozen
class KvmppcOps:
    """``struct kvmppc_ops``: only what this simulator needs of it."""

    name: str
    get_compat_caps: Callable[[], int] | None


PR_OPS = KvmppcOps("kvm_pr", None)


def kvmppc_core_vcpu_create_pr(host: Host) -> Book3sVcpu:
    """The host's PVR (a machine with 1T segments: every POWER here), an MSR of 0 (the shared
    page starts zeroed), and sane: PR runs non-PAPR guests too."""
    assert host.cpu.pvr is not None
    return new_vcpu(False, host.cpu.pvr, 0)


# kvmppc_core_check_processor_compat_pr(): PR cannot run on a radix POWER9+ partition
def kvmppc_book3s_init_pr(host: Host) -> KvmppcOps:
    if host.cpu.isa_300 and host.mmu == "radix":
        raise KvmError(errno.EIO, "kvm_pr cannot run under a radix MMU (ISA 3.0)")
    return PR_OPS
