"""Reading a kernel's ``<linux/kvm.h>``: the revision it defines (capability number, ioctl
macro and number, struct layout) and whose rules its definition carries."""

from __future__ import annotations

import re
from typing import cast

import attrs

from ._errors import InvalidInput
from ._kvm_h import LAYOUT_V4, CompatCapsField, CompatCapsLayout
from ._revisions import _V5_ABI, LINUX_7_3, V4, V5, AbiRevision

_CAP_RE = re.compile(r"#define\s+KVM_CAP_PPC_COMPAT_CAPS\s+(\w+)")
_IOCTL_RE = re.compile(
    r"#define\s+KVM_PPC_GET_COMPAT_CAPS\s+(_IOR?)\s*\(\s*KVMIO\s*,\s*(\w+)\s*(?:,\s*struct\s+kvm_ppc_compat_caps\s*)?\)"
)
_STRUCT_RE = re.compile(r"struct\s+kvm_ppc_compat_caps\s*\{(.*?)\};", re.S)
_FIELD_RE = re.compile(r"__u64\s+(\w+)\s*;")


def revision_from_header(text: str, where: str) -> AbiRevision:
    """The revision a kernel's ``<linux/kvm.h>`` (and ``asm/kvm.h``) defines: its capability
    number, ioctl macro and number, and struct layout, with the rules of
    :func:`header_rules`.  ``where`` names it in errors."""
    cap, ioctl, body = _CAP_RE.search(text), _IOCTL_RE.search(text), _STRUCT_RE.search(text)
    for found, name in (
        (cap, "KVM_CAP_PPC_COMPAT_CAPS"),
        (ioctl, "KVM_PPC_GET_COMPAT_CAPS"),
        (body, "struct kvm_ppc_compat_caps"),
    ):
        if found is None:
            raise InvalidInput(f"{where}: no {name} definition")
    assert cap is not None and ioctl is not None and body is not None
    fields = tuple(_FIELD_RE.findall(body[1]))
    if sorted(fields) != sorted(LAYOUT_V4.fields):
        raise InvalidInput(
            f"{where}: struct kvm_ppc_compat_caps has fields {fields}, expected flags, size, compat_capabilities"
        )
    try:
        cap_number, nr = int(cap[1], 0), int(ioctl[2], 0)
    except ValueError:
        raise InvalidInput(f"{where}: KVM_CAP_PPC_COMPAT_CAPS or the ioctl's nr is not a number") from None
    if not 0 <= nr <= 0xFF:
        raise InvalidInput(f"{where}: KVM_PPC_GET_COMPAT_CAPS nr {nr:#x} does not fit 8 bits")
    layout = CompatCapsLayout(cast(tuple[CompatCapsField, CompatCapsField, CompatCapsField], fields))
    rules = header_rules(ioctl[1], nr)
    assert rules.ioctl is not None
    return attrs.evolve(rules, ioctl=attrs.evolve(rules.ioctl, layout=layout, cap=cap_number, nr=nr))


def header_rules(macro: str, nr: int) -> AbiRevision:
    """Whose rules a header's definition carries: ``_IOR`` is the v4 draft's; ``_IO`` with the
    v5 draft's number (0xe4) is v5's; any other ``_IO`` is the shipped kernel's (0xb8)."""
    if macro == "_IOR":
        return V4
    return V5 if nr == _V5_ABI.nr else LINUX_7_3
