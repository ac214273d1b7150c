"""kvmsim's error family, and how the simulated kernel fails.

:class:`KvmsimError` is the root of the errors kvmsim reports; ``str()`` is one line naming
what was wrong and where.  :class:`InvalidInput` (the ABI's, ``kvmsim.uapi``: the client raises
it too) is what a command line answers with exit 2 (a bad name, number, profile or header: the
user's input; a ``ValueError``); the simulator's own bad inputs (``ProfileError``) derive from
both.  :class:`KvmError` is the simulated kernel's ``-errno`` (an ``OSError``, with the reason
the simulator knows: a real kernel would at most have said it in dmesg).  The other branches
live beside what raises them (the lab's FetchError, the server's ProtocolError, ...); only the
kernel-internal fault signals of ``usermem`` stay outside the family."""

from __future__ import annotations

import functools
import os

from ..uapi import InvalidInput

__all__ = ["InvalidInput", "KvmError", "KvmsimError"]


class KvmsimError(Exception):
    """The root of kvmsim's errors."""


class KvmError(KvmsimError, OSError):
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
