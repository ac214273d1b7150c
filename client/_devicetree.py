"""The partition's own compat mode, from the device tree: ``/proc/device-tree/cpus/*/cpu-version``
(a big-endian u32).  It is a file, not part of the device seam: the real one by default, or a
host's files as a mapping (the simulated host's view, ``kvmsim.kernel.hostfs.files``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

PROC_DEVICE_TREE = "/proc/device-tree"


class DeviceTree:
    def __init__(self, root: str = PROC_DEVICE_TREE, *, files: Mapping[str, bytes] | None = None) -> None:
        self.root, self.files = root, files

    def cpu_nodes(self) -> list[tuple[str, int | None]]:
        """Every ``/cpus/*`` node, in the order the directory lists them, with its
        ``cpu-version`` (None where it has no 4-byte one).  OSError when the cpus directory
        itself cannot be listed (there is no device tree here)."""
        nodes = []
        for node in self._nodes():
            raw = self._read(f"{self.root}/cpus/{node}/cpu-version")
            nodes.append((node, int.from_bytes(raw, "big") if raw is not None and len(raw) == 4 else None))
        return nodes

    def cpu_versions(self) -> list[tuple[str, int]]:
        """(node, value) for every ``/cpus/*`` node with a 4-byte ``cpu-version``; none where
        there is no device tree."""
        try:
            return [(node, version) for node, version in self.cpu_nodes() if version is not None]
        except OSError:
            return []

    def _nodes(self) -> list[str]:
        cpus = f"{self.root}/cpus/"
        if self.files is not None:
            names = [
                p[len(cpus) :].split("/")[0]
                for p in self.files
                if p.startswith(cpus) and p.count("/") > cpus.count("/")
            ]
            return list(dict.fromkeys(names))
        return [n for n in os.listdir(cpus) if os.path.isdir(cpus + n)]

    def _read(self, path: str) -> bytes | None:
        if self.files is not None:
            return self.files.get(path)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None
