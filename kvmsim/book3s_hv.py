"""The HV backend (arch/powerpc/kvm/book3s_hv.c): module init and ``get_compat_caps``.

KVM-PR (book3s_pr.c) has no ``get_compat_caps`` op at all; its ops are :data:`PR_OPS`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import attrs

from . import papr
from .errors import KvmError
from .profile import Host
from .uapi import CAP_MODES, KVM_PPC_COMPAT_BITMASK, AbiRevision, CompatMode, mode_of_logical_pvr


def kvmhv_on_pseries(host: Host) -> bool:
    """This kernel is an L1: a guest of PowerVM or of a KVM L0."""
    return host.platform == "pseries"


def kvmhv_is_nestedv2(host: Host) -> bool:
    return kvmhv_on_pseries(host) and host.hypervisor.nested_api == 2


def guest_capabilities(host: Host) -> int:
    """The modes this L1's CPU supports (cpu_has_feature(CPU_FTR_ARCH_300/31, P11_PVR)):
    every level up to its effective mode."""
    effective = host.cpu.effective
    return caps_up_to(effective.level if effective else 0)


def caps_up_to(level: int) -> int:
    """The bits of every mode at or below ``level``."""
    caps = 0
    for mode in CAP_MODES:
        if mode.level <= level:
            caps |= mode.cap_bit
    return caps


@attrs.frozen
class KvmppcOps:
    """``struct kvmppc_ops``: only what this simulator needs of it."""

    name: str
    get_compat_caps: Callable[[], int] | None


PR_OPS = KvmppcOps("kvm_pr", None)


@attrs.define
class HvModule:
    """The loaded kvm_hv module and its state."""

    host: Host
    rev: AbiRevision
    printk: Callable[[str], None]
    nested_capabilities: int = 0  # guest & host capabilities, set at init on nested v2
    _warned_zero: bool = False

    @property
    def ops(self) -> KvmppcOps:
        return KvmppcOps("kvm_hv", self.get_compat_caps)

    # kvmppc_get_compat_caps_hv(): platform first, then the nested API
    def get_compat_caps(self) -> int:
        if not kvmhv_on_pseries(self.host):
            raise KvmError(errno.EINVAL, "not on pseries: bare-metal PowerNV is an L0, it has no compat caps to report")
        if kvmhv_is_nestedv2(self.host):
            return _NESTED_V2[self.rev.nested_v2](self)
        return _CPU_VERSION_MAP[self.rev.cpu_version_map](self._cpu_version())

    def _live_hcall(self) -> int:
        rc, bitmap = papr.h_guest_get_capabilities(self.host.hypervisor, at_init=False)
        if rc != papr.H_SUCCESS:
            # v4 returns the PAPR code as is: -1 (H_HARDWARE) reaches userspace as errno 1
            name = papr.H_NAMES.get(rc, str(rc))
            raise KvmError(-rc, f"H_GUEST_GET_CAPABILITIES failed with {name} ({rc}), returned untranslated")
        return bitmap & KVM_PPC_COMPAT_BITMASK

    def _cached(self) -> int:
        if not self.nested_capabilities and not self._warned_zero:
            self._warned_zero = True
            self.printk("KVM: no compat mode is supported by both this L1 and its L0 (caps 0)")
        return self.nested_capabilities

    def _cpu_version(self) -> int:
        # the first /cpus node carrying a cpu-version property
        for node in self.host.cpu_nodes:
            if node.cpu_version is not None:
                return node.cpu_version
        raise KvmError(errno.EINVAL, "the host has no cpu-version property in any cpu node (nested API v1)")


def _cpu_version_mode(cpu_version: int) -> CompatMode:
    mode = mode_of_logical_pvr(cpu_version)
    if mode is None or not mode.cap_bit:
        raise KvmError(
            errno.EINVAL, f"cpu-version {cpu_version:#010x} is not a POWER9/10/11 logical PVR (nested API v1)"
        )
    return mode


def _single(cpu_version: int) -> int:
    return _cpu_version_mode(cpu_version).cap_bit


def _cumulative(cpu_version: int) -> int:
    return caps_up_to(_cpu_version_mode(cpu_version).level)


_NESTED_V2: dict[str, Callable[[HvModule], int]] = {
    "live-hcall": HvModule._live_hcall,
    "cached-at-init": HvModule._cached,
}
_CPU_VERSION_MAP: dict[str, Callable[[int], int]] = {"single": _single, "cumulative": _cumulative}


def kvmppc_book3s_init_hv(host: Host, rev: AbiRevision, printk: Callable[[str], None]) -> HvModule | None:
    """Load kvm_hv; None when its init fails (the module does not load)."""
    if not host.book3s_hv:
        printk("modprobe: FATAL: Module kvm_hv not found (kernel built without Book3S HV)")
        return None
    module = HvModule(host, rev, printk)
    if kvmhv_is_nestedv2(host):
        rc, host_capabilities = papr.h_guest_get_capabilities(host.hypervisor, at_init=True)
        if rc != papr.H_SUCCESS:
            printk(
                f"KVM-HV: H_GUEST_GET_CAPABILITIES failed ({papr.H_NAMES.get(rc, rc)}): no nested v2, kvm_hv not loaded"
            )
            return None
        module.nested_capabilities = guest_capabilities(host) & host_capabilities & KVM_PPC_COMPAT_BITMASK
    return module
