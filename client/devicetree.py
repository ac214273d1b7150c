"""The partition's own compat mode, from the device tree: ``/proc/device-tree/cpus/*/cpu-version``
(a big-endian u32).  It is a file, not part of the device seam: the real one by default, or a
host's files as a mapping (the simulated host's view, ``kvmsim.hostfs.files``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

PROC_DEVICE_TREE = "/proc/device-tree"


class DeviceTree:
    def __init__(self, root: str = PROC_DEVICE_TREE, *, files: Mapping[str, bytes] | None = None) -> None:
        self.root, self.files = root, files

    def cpu_versions(self) -> list[tuple[str, int]]:
        """(node, value) for every ``/cpus/*`` node with a 4-byte ``cpu-version``, in the
        order the directory lists them."""
        found = []
        for node in self._nodes():
            raw = self._read(f"{self.root}/cpus/{node}/cpu-version")
            if raw is not None and len(raw) == 4:
                found.append((node, int.from_bytes(raw, "big")))
        return found

    def _nodes(self) -> list[str]:
        cpus = f"{self.root}/cpus/"
        if self.files is not None:
            names = [
                p[len(cpus) :].split("/")[0]
                for p in self.files
                if p.startswith(cpus) and p.count("/") > cpus.count("/")
            ]
            return list(dict.fromkeys(names))
        try:
            return [n for n in os.listdir(cpus) if os.path.isdir(cpus + n)]
        except OSError:
            return []

    def _read(self, path: str) -> bytes | None:
        if self.files is not None:
            return self.files.get(path)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None
