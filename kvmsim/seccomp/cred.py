"""A task's credentials (the kernel's ``struct cred``), read from ``/proc/TID/status``, which
any process may read whatever the task's dumpable state: the supervisor decides a permission
the way the kernel would for the task, never with its own rights."""

from __future__ import annotations

import attrs

CAP_DAC_OVERRIDE = 1  # include/uapi/linux/capability.h
CAP_DAC_READ_SEARCH = 2


@attrs.frozen
class Cred:
    uid: int  # real
    fsuid: int
    caps_permitted: int
    caps_effective: int

    def capable(self, cap: int, *, access: bool = False) -> bool:
        """``capable(cap)`` for an open (the effective set), or for access(2), which checks
        with the real uid and, for root, the permitted set (``do_faccessat``'s override creds)."""
        if access:
            return self.uid == 0 and bool(self.caps_permitted >> cap & 1)
        return bool(self.caps_effective >> cap & 1)


def of_task(tid: int) -> Cred:
    """Task ``tid``'s credentials; OSError when it is gone."""
    fields: dict[bytes, list[bytes]] = {}
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            key, _, value = line.partition(b":")
            if key in (b"Uid", b"CapPrm", b"CapEff"):
                fields[key] = value.split()
    try:
        uids = fields[b"Uid"]
        return Cred(int(uids[0]), int(uids[3]), int(fields[b"CapPrm"][0], 16), int(fields[b"CapEff"][0], 16))
    except (KeyError, IndexError, ValueError):
        raise OSError(f"/proc/{tid}/status: no credentials") from None
