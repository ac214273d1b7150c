"""The hypervisor below an L1 (PowerVM, or QEMU/KVM as an L0): the hcalls kvm_hv makes at
init and in ``get_compat_caps``, answered as that L0 would.  Return codes are PAPR's
(arch/powerpc/include/asm/hvcall.h)."""

from __future__ import annotations

from typing import Literal

import attrs

from ..uapi import CompatMode

H_SUCCESS = 0
MAX_HCALL_OPCODE = 0x494  # asm/hvcall.h: H_PKS_UNWRAP_OBJECT, the highest hcall number
H_FUNCTION = -2
H_RETURN_CODES: dict[str, int] = {
    "H_SUCCESS": H_SUCCESS,
    "H_HARDWARE": -1,
    "H_FUNCTION": -2,
    "H_PRIVILEGE": -3,
    "H_PARAMETER": -4,
    "H_BAD_MODE": -5,
    "H_NOT_FOUND": -7,
    "H_NO_MEM": -9,
    "H_AUTHORITY": -10,
    "H_PERMISSION": -11,
    "H_RESOURCE": -16,
    "H_STATE": -32,
    "H_UNSUPPORTED_FLAG": -256,
}
H_NAMES = {v: k for k, v in H_RETURN_CODES.items()}

HypervisorKind = Literal["powervm", "qemu", "kvm", "none"]


@attrs.frozen
class Hypervisor:
    """The L0 below this partition, as far as nested KVM can tell."""

    kind: HypervisorKind
    nested_apis: tuple[int, ...]  # 1: H_SET_PARTITION_TABLE/H_ENTER_NESTED; 2: the H_GUEST_* calls
    offers: tuple[CompatMode, ...]  # modes H_GUEST_GET_CAPABILITIES reports (nested v2)
    other_capability_bits: int  # further H_GUEST_CAP_* bits in its answer
    hcall_at_init: int  # PAPR return code of H_GUEST_GET_CAPABILITIES at kvm_hv init
    hcall_at_runtime: int  # ... and on every later call (the v4 draft's live hcall)
    set_capabilities: int  # PAPR return code of H_GUEST_SET_CAPABILITIES


def h_guest_get_capabilities(hv: Hypervisor, *, at_init: bool) -> tuple[int, int]:
    """``plpar_guest_get_capabilities(0, &capabilities)``: (return code, bitmap).

    An L0 without nested API v2 does not implement the hcall (H_FUNCTION).  The bitmap is
    every mode the L0 offers nested guests plus its other capability bits; on failure 0."""
    if 2 not in hv.nested_apis:
        return H_FUNCTION, 0
    rc = hv.hcall_at_init if at_init else hv.hcall_at_runtime
    if rc != H_SUCCESS:
        return rc, 0
    bitmap = hv.other_capability_bits
    for mode in hv.offers:
        bitmap |= mode.cap_bit
    return H_SUCCESS, bitmap


def h_guest_set_capabilities(hv: Hypervisor, capabilities: int) -> int:
    """``plpar_guest_set_capabilities(0, capabilities)``: the return code."""
    if 2 not in hv.nested_apis:
        return H_FUNCTION
    return hv.set_capabilities


def h_set_partition_table(hv: Hypervisor) -> int:
    """``plpar_hcall_norets(H_SET_PARTITION_TABLE, ptcr)``: nested API v1's first call."""
    return H_SUCCESS if 1 in hv.nested_apis else H_FUNCTION
