"""The ABI revisions as values: ``linux-7.3`` (what shipped, the default), ``none`` (every
kernel before it) and the posted drafts ``v5`` and ``v4``.  A revision is one frozen
:class:`AbiRevision`: its numbers and struct (:class:`~.uapi.CompatCapsAbi`), its place in
time and whether it shipped.  What each revision's kernel *does* is the kernel side's
(``powerpc.STEPS``, ``book3s_hv.HV_STEPS``).  Users derive their own with ``attrs.evolve`` or
:func:`revision` (``cap=``/``nr=``), or from a kernel header (:mod:`.header`)."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ._errors import InvalidInput
from ._kvm_h import LAYOUT_V4, LAYOUT_V5, Arch, CompatCapsAbi, CompatCapsLayout


@attrs.frozen
class AbiRevision:
    """One kernel's knowledge of the feature: ``ioctl`` is None for a kernel without it
    (``none``: every kernel before Linux 7.3).  ``generation`` orders revisions, newest
    highest; ``draft`` marks posted patches that never shipped."""

    name: str
    generation: int
    draft: bool
    ioctl: CompatCapsAbi | None  # its numbers and layout (None: a kernel without the ioctl)
    rules: str  # whose order of checks it follows: STEPS and HV_STEPS are keyed by it, never by name

    def request(self, arch: Arch) -> int | None:
        return None if self.ioctl is None else self.ioctl.request(arch)

    @property
    def cap(self) -> int | None:
        return None if self.ioctl is None else self.ioctl.cap

    @property
    def layout(self) -> CompatCapsLayout:
        """The struct layout userspace packs for this revision (v5's for ``none``, which has
        none of its own: what a program built against today's headers sends)."""
        return LAYOUT_V5 if self.ioctl is None else self.ioctl.layout


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

NONE = AbiRevision("none", generation=0, draft=False, ioctl=None, rules="none")
V4 = AbiRevision("v4", generation=1, draft=True, ioctl=_V4_ABI, rules="v4")
V5 = AbiRevision("v5", generation=2, draft=True, ioctl=_V5_ABI, rules="v5")
LINUX_7_3 = AbiRevision("linux-7.3", generation=3, draft=False, ioctl=_LINUX_7_3_ABI, rules="linux-7.3")
REVISIONS: dict[str, AbiRevision] = {r.name: r for r in (LINUX_7_3, NONE, V5, V4)}
DEFAULT_REVISION = LINUX_7_3.name


def negotiable(revisions: Iterable[AbiRevision]) -> list[AbiRevision]:
    """What a client asks for, in order: for each capability number the newest revision that
    uses it (250 means linux-7.3, not the v5 draft that shared it), newest first."""
    chosen: dict[int, AbiRevision] = {}
    for rev in sorted(revisions, key=lambda r: r.generation, reverse=True):
        if rev.ioctl is not None and rev.ioctl.cap not in chosen:
            chosen[rev.ioctl.cap] = rev
    return list(chosen.values())


def revision(name: str, *, cap: int | None = None, nr: int | None = None) -> AbiRevision:
    """A named revision, optionally with the capability or ioctl number overridden."""
    try:
        rev = REVISIONS[name]
    except KeyError:
        known = ", ".join(REVISIONS)
        raise InvalidInput(f"unknown ABI revision {name!r} (known: {known})") from None
    if rev.ioctl is None:
        return rev  # a kernel without the feature has no numbers to override
    numbers = rev.ioctl
    if cap is not None:
        numbers = attrs.evolve(numbers, cap=cap)
    if nr is not None:
        if not 0 <= nr <= 0xFF:
            raise InvalidInput(f"ioctl nr {nr:#x} does not fit 8 bits")
        numbers = attrs.evolve(numbers, nr=nr)
    return attrs.evolve(rev, ioctl=numbers)
