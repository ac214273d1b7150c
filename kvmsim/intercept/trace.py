"""``--trace``: one line per call a server serves, for people (text) or programs (JSON
lines): the process, the call, the fd, the request decoded, the argument's bytes in and out,
the result or errno, and the simulated kernel's reason."""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import IO

import attrs

from .. import uapi
from ..uapi import Arch, decode_request, errname


@functools.cache
def capability_names() -> Mapping[int, str]:
    """KVM_CAP_* by number, from the kernel's uapi (the trace names what KVM_CHECK_EXTENSION asks)."""
    from ..uapi import REVISIONS

    names = {v: k for k, v in vars(uapi).items() if k.startswith("KVM_CAP_") and isinstance(v, int)}
    for rev in REVISIONS.values():  # the compat query's own, per revision (249 the v4 draft's)
        if rev.ioctl is not None:
            names.setdefault(rev.ioctl.cap, f"KVM_CAP_PPC_COMPAT_CAPS ({rev.name})")
    return names


@attrs.frozen
class Call:
    process: str  # "connection 3 (pid 1234)"
    call: str  # OPEN, IOCTL, CLOSE
    fd: int | None
    request: int | None
    arg: int | None
    data_in: bytes  # the argument's bytes the process had (the read-ahead window, first 24)
    writes: tuple[tuple[int, bytes], ...]  # what the kernel wrote: (address, bytes)
    result: int
    errno: int
    reason: str | None
    path: str | None = None  # OPEN: the path the program named

    def meaning(self, arch: Arch) -> str | None:
        """What the call asked or got, decoded: the capability KVM_CHECK_EXTENSION asks, the
        struct KVM_PPC_GET_COMPAT_CAPS wrote (size, flags, caps and their modes)."""
        if self.request is None:
            return None
        name = decode_request(self.request, arch)
        if name == "KVM_CHECK_EXTENSION" and self.arg is not None:
            return f"cap {self.arg} {capability_names().get(self.arg, '(unknown)')}"
        if name.startswith("KVM_PPC_GET_COMPAT_CAPS (") and self.writes:
            from ..uapi import REVISIONS

            rev = REVISIONS.get(name.removeprefix("KVM_PPC_GET_COMPAT_CAPS (").rstrip(")"))
            data = self.writes[-1][1]
            if rev is None or rev.ioctl is None or len(data) < uapi.KVM_PPC_COMPAT_CAPS_SIZE_VER0:
                return None
            fields = rev.ioctl.layout.unpack(arch.byteorder, data[: uapi.KVM_PPC_COMPAT_CAPS_SIZE_VER0])
            caps = fields["compat_capabilities"]
            modes = ", ".join(m.name for m in uapi.modes_of_caps(caps)) or "none"
            return f"size={fields['size']} flags={fields['flags']:#x} compat_capabilities={caps:#x} ({modes})"
        return None

    def to_json(self, arch: Arch) -> dict[str, object]:
        return {
            "process": self.process,
            "call": self.call,
            "fd": self.fd,
            "path": self.path,
            "request": self.request,
            "decoded": decode_request(self.request, arch) if self.request is not None else None,
            "arg": self.arg,
            "in": self.data_in.hex(),
            "out": [{"addr": addr, "bytes": data.hex()} for addr, data in self.writes],
            "meaning": self.meaning(arch),
            "result": self.result,
            "errno": errname(self.errno) if self.errno else None,
            "reason": self.reason,
        }

    def text(self, arch: Arch) -> str:
        what = self.call
        if self.request is not None:
            what = f"ioctl({self.fd}, {self.request:#x} {decode_request(self.request, arch)}, {self.arg:#x})"
        elif self.path is not None:
            what = f"{self.call.lower()}({self.path!r})"
        elif self.fd is not None:
            what = f"{self.call.lower()}({self.fd})"
        outcome = f"= {self.result}" if not self.errno else f"= -1 {errname(self.errno)}"
        line = f"{self.process}: {what} {outcome}"
        if self.data_in:
            line += f" in={self.data_in.hex()}"
        for addr, data in self.writes:
            line += f" out@{addr:#x}={data[:24].hex()}"
        meaning = self.meaning(arch)
        if meaning is not None:
            line += f"  [{meaning}]"
        return line + (f"  # {self.reason}" if self.reason and self.errno else "")


class Tracer:
    """Writes each :class:`Call` to ``stream``, one line each, whole lines from any thread."""

    def __init__(self, stream: IO[str], arch: Arch, *, json_lines: bool = False) -> None:
        self.stream, self.arch, self.json_lines = stream, arch, json_lines
        self._lock = threading.Lock()

    def intercept(self, how: str, why: str) -> None:
        """The first line: how ``kvmsim run`` reaches the program, and why that way."""
        self._write(_json({"intercept": how, "why": why}) if self.json_lines else f"# intercept: {how} ({why})")

    def __call__(self, call: Call) -> None:
        self._write(_json(call.to_json(self.arch)) if self.json_lines else call.text(self.arch))

    def _write(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _json(doc: dict[str, object]) -> str:
    import json  # only for --trace-format json

    return json.dumps(doc)
