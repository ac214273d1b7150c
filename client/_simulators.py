"""``--sim``: a simulated host behind the device seam, found by entry point, so the client
imports no simulator.  A simulator registers a function in the ``kvmcompat.simulators`` group
(kvmsim's is ``kvmsim.user.simulated:open_host``) with the shape of :class:`OpenHost`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvmsim.uapi import AbiRevision, InvalidInput

from ._device import Device
from ._devicetree import DeviceTree

GROUP = "kvmcompat.simulators"


class OpenHost(Protocol):
    """Boot a simulated host: its device, and (when ``device_tree``) its ``/proc/device-tree``
    to fall back on.  A bad host raises :class:`~kvmsim.uapi.InvalidInput`."""

    def __call__(
        self, host: str, rev: AbiRevision, *, hosts_dirs: Sequence[str], device_tree: bool
    ) -> tuple[Device, DeviceTree]: ...


def open_simulated(
    host: str, rev: AbiRevision, *, hosts_dirs: Sequence[str] = (), device_tree: bool = False
) -> tuple[Device, DeviceTree]:
    """The first simulator installed, asked for ``host``."""
    from importlib.metadata import entry_points  # only --sim looks one up

    found = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    if not found:
        raise InvalidInput(f"--sim {host}: no simulator is installed (pip install kvmsim)")
    opener: OpenHost = found[0].load()
    return opener(host, rev, hosts_dirs=hosts_dirs, device_tree=device_tree)
