"""The ABI revisions as values: ``linux-7.3`` (what shipped, the default), ``none`` (every
kernel before it) and the posted drafts ``v5`` and ``v4``.  A revision is one frozen
:class:`AbiRevision`: its numbers and struct (:class:`~.uapi.CompatCapsAbi`), its place in
time and whether it shipped.  What each revision's kernel *does* is the kernel side's
(``powerpc.STEPS``, ``book3s_hv.HV_STEPS``).  Users derive their own with ``attrs.evolve`` or
:func:`revision` (``cap=``/``nr=``), or from a kernel header (:mod:`.header`)."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .errors import InvalidInput
from .uapi import LAYOUT_V4, LAYOUT_V5, Arch, CompatCapsAbi, CompatCapsLayout


@attrs.frozen
class AbiRevision:
    """One kernel's knowledge of the feature: ``abi`` is None for a kernel without it
    (``none``: every kernel before Linux 7.3).  ``generation`` orders revisions, newest
    highest; ``draft`` marks posted patches that never shipped."""

    name: str
    generation: int
    draft: bool
    abi: CompatCapsAbi | None

    def request(self, arch: Arch) -> int | None:
        return None if self.abi is None else self.abi.request(arch)

    @property
    def cap(self) -> int | None:
        return None if self.abi is None else self.abi.cap

    @property
    def layout(self) -> CompatCapsLayout:
        """The struct layout userspace packs for this revision (v5's for ``none``, which has
        none of its own: what a program built against today's headers sends)."""
        return LAYOUT_V5 if self.abi is None else self.abi.layout


_V4_ABI = CompatCapsAbi(
    layout=LAYOUT_V4,
    cap=249,
    nr=0xE4,
    macro="_IOR",
)
_V5_ABI = CompatCapsAbi(
    layout=LAYOUT_V5,
    cap=250,
    nr=0xE4,
    macro="_IO",
)
# torvalds/linux ac3e65dd: include/uapi/linux/kvm.h, arch/powerpc/kvm/powerpc.c
_LINUX_7_3_ABI = attrs.evolve(_V5_ABI, nr=0xB8)

NONE = AbiRevision("none", generation=0, draft=False, abi=None)
V4 = AbiRevision("v4", generation=1, draft=True, abi=_V4_ABI)
V5 = AbiRevision("v5", generation=2, draft=True, abi=_V5_ABI)
LINUX_7_3 = AbiRevision("linux-7.3", generation=3, draft=False, abi=_LINUX_7_3_ABI)
REVISIONS: dict[str, AbiRevision] = {r.name: r for r in (LINUX_7_3, NONE, V5, V4)}
DEFAULT_REVISION = LINUX_7_3.name


def negotiable(revisions: Iterable[AbiRevision]) -> list[AbiRevision]:
    """What a client asks for, in order: for each capability number the newest revision that
    uses it (250 means linux-7.3, not the v5 draft that shared it), newest first."""
    chosen: dict[int, AbiRevision] = {}
    for rev in sorted(revisions, key=lambda r: r.generation, reverse=True):
        if rev.abi is not None and rev.abi.cap not in chosen:
            chosen[rev.abi.cap] = rev
    return list(chosen.values())


def revision(name: str, *, cap: int | None = None, nr: int | None = None) -> AbiRevision:
    """A named revision, optionally with the capability or ioctl number overridden."""
    try:
        rev = REVISIONS[name]
    except KeyError:
        known = ", ".join(REVISIONS)
        raise InvalidInput(f"unknown ABI revision {name!r} (known: {known})") from None
    if rev.abi is None:
        return rev  # a kernel without the feature has no numbers to override
    abi = rev.abi
    if cap is not None:
        abi = attrs.evolve(abi, cap=cap)
    if nr is not None:
        if not 0 <= nr <= 0xFF:
            raise InvalidInput(f"ioctl nr {nr:#x} does not fit 8 bits")
        abi = attrs.evolve(abi, nr=nr)
    return attrs.evolve(rev, abi=abi)
