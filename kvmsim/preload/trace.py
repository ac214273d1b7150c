"""``--trace``: one line per call a server serves, for people (text) or programs (JSON
lines): the process, the call, the fd, the request decoded, the argument's bytes in and out,
the result or errno, and the simulated kernel's reason."""

from __future__ import annotations

import threading
from typing import IO

import attrs

from ..kernel.requests import decode_request
from ..kernel.uapi import Arch, errname


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

    def to_json(self, arch: Arch) -> dict[str, object]:
        return {
            "process": self.process,
            "call": self.call,
            "fd": self.fd,
            "request": self.request,
            "decoded": decode_request(self.request, arch) if self.request is not None else None,
            "arg": self.arg,
            "in": self.data_in.hex(),
            "out": [{"addr": addr, "bytes": data.hex()} for addr, data in self.writes],
            "result": self.result,
            "errno": errname(self.errno) if self.errno else None,
            "reason": self.reason,
        }

    def text(self, arch: Arch) -> str:
        what = self.call
        if self.request is not None:
            what = f"ioctl({self.fd}, {self.request:#x} {decode_request(self.request, arch)}, {self.arg:#x})"
        elif self.fd is not None:
            what = f"{self.call.lower()}({self.fd})"
        outcome = f"= {self.result}" if not self.errno else f"= -1 {errname(self.errno)}"
        line = f"{self.process}: {what} {outcome}"
        if self.data_in:
            line += f" in={self.data_in.hex()}"
        for addr, data in self.writes:
            line += f" out@{addr:#x}={data[:24].hex()}"
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
