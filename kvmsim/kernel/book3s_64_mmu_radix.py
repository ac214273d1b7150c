"""arch/powerpc/kvm/book3s_64_mmu_radix.c: what an HV VM's radix guests may use
(KVM_PPC_GET_RMMU_INFO)."""

from __future__ import annotations

import errno

from .errors import KvmError
from .profile import Host

P9_SUPPORTED_RADIX_BITS = (5, 9, 9, 13)  # p9_supported_radix_bits[]: the tree's levels, root first
MMU_PAGE_ORDER = (12, 16, 21, 30)  # MMU_PAGE_4K, 64K, 2M, 1G: get_idx_from_shift()'s, in add_rmmu_ap_encoding()'s order
NO_AP_PROPERTY = {12: 0x0, 16: 0x5}  # radix__early_init_devtree()'s assumption: 4K and 64K


def mmu_psize_defs(encodings: tuple[int, ...]) -> dict[int, int]:
    """radix_dt_scan_page_sizes(): each cell's shift (its top three bits cleared) and AP (those
    bits), by shift, for the page sizes the kernel knows (the last cell of a shift wins)."""
    if not encodings:
        return dict(NO_AP_PROPERTY)
    defs: dict[int, int] = {}
    for cell in encodings:
        shift = cell & ~(0xE << 28)
        if shift in MMU_PAGE_ORDER:
            defs[shift] = cell >> 29
    return defs


def kvmhv_get_rmmu_info(host: Host) -> dict[str, int]:
    """radix_enabled() or EINVAL; two geometries (4K and 64K pages), then add_rmmu_ap_encoding()
    for each page size the MMU has, in the order 4K, 64K, 2M, 1G."""
    if host.mmu != "radix":
        raise KvmError(errno.EINVAL, "KVM_PPC_GET_RMMU_INFO: the host's MMU is hash (radix_enabled() is false)")
    info = {"geo0_page_shift": 12, "geo0_level_bits0": 9, "geo1_page_shift": 16}
    info |= {f"geo0_level_bits{i}": P9_SUPPORTED_RADIX_BITS[i] for i in range(1, 4)}
    info |= {f"geo1_level_bits{i}": P9_SUPPORTED_RADIX_BITS[i] for i in range(4)}
    defs = mmu_psize_defs(host.radix_ap_encodings)
    present = [shift for shift in MMU_PAGE_ORDER if shift in defs]
    return info | {f"ap_encoding{i}": shift | defs[shift] << 29 for i, shift in enumerate(present)}
