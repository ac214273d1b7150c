"""How the simulated kernel fails: an ``OSError`` with the kernel's errno, plus the reason
the simulator knows (a real kernel would at most have said it in dmesg)."""

from __future__ import annotations

import functools
import os


class KvmError(OSError):
    """``-errno`` from the simulated kernel.  ``reason`` says which check failed.

    Like ``OSError(errno, ...)`` it is also the matching subclass where Python has one
    (ENOENT is a ``FileNotFoundError``, EBADF... stays an ``OSError``)."""

    def __new__(cls, err: int, reason: str) -> KvmError:
        if cls is KvmError:
            cls = _with_builtin_subclass(err)
        return super().__new__(cls, err, os.strerror(err))

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(err, os.strerror(err))
        self.reason = reason

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.strerror}: {self.reason}"


@functools.cache
def _with_builtin_subclass(err: int) -> type[KvmError]:
    builtin = type(OSError(err, ""))
    if builtin is OSError:
        return KvmError
    return type(f"Kvm{builtin.__name__}", (KvmError, builtin), {})
