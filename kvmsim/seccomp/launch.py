"""Start a program under the filter: the launcher (``launcher/kvmsim_launch.c``, built like the
shim) installs it, hands its listener back over a socketpair and execs the program; the
socket's close says the exec succeeded, an errno on it that it failed."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence

from ..intercept.build import BuildError, build
from . import bpf, uapi
from .supervisor import NOTIFIED

LAUNCHER_SOURCE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "launcher", "kvmsim_launch.c")
ACTIONS = "/proc/sys/kernel/seccomp/actions_avail"
HANDOFF_TIMEOUT = 30.0  # seconds the launcher may take to hand over its listener


class LaunchError(BuildError):
    """The program cannot be started under the filter; one line."""


def unavailable() -> str | None:
    """Why this machine cannot intercept by seccomp, or None."""
    if platform.machine() != "x86_64":
        return f"the seccomp path knows x86_64's system calls, not {platform.machine()}'s"
    try:
        with open(ACTIONS) as f:
            actions = f.read().split()
    except OSError:
        return f"this kernel has no {ACTIONS}"
    if "user_notif" not in actions:
        return "this kernel's seccomp has no user notification (Linux 5.0)"
    return None


def the_filter() -> bytes:
    return bpf.notify_filter((uapi.NR[name] for name in NOTIFIED), uapi.IO_URING_NRS)


def build_launcher() -> str:
    return build([LAUNCHER_SOURCE])


class Launched:
    """A started program: its process, the listener, and the socket that reports its exec."""

    def __init__(self, proc: subprocess.Popen[bytes], listener: int, report: socket.socket) -> None:
        self.proc, self.listener, self.report = proc, listener, report

    def exec_error(self) -> OSError | None:
        """Wait for the exec: None when the program is running, else why it is not."""
        with self.report:
            self.report.settimeout(None)
            data = self.report.recv(4)
        if len(data) < 4:
            return None
        err = int.from_bytes(data, sys.byteorder)
        self.proc.wait()
        return OSError(err, os.strerror(err))  # FileNotFoundError, PermissionError, ... by errno


def launch(command: Sequence[str], env: dict[str, str] | None = None, stdout: int | None = None) -> Launched:
    """Start ``command`` under the filter; its listener is ours to supervise."""
    launcher = build_launcher()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        os.set_inheritable(r, True)
        os.set_inheritable(theirs.fileno(), True)
        # close_fds=False: CMD gets what the caller gave kvmsim run (fds 3+, as any wrapper
        # passes them); kvmsim's own fds are close-on-exec (PEP 446), these two the launcher's
        proc = subprocess.Popen(
            [str(launcher), str(r), str(theirs.fileno()), *command], env=env, stdout=stdout, close_fds=False
        )
    finally:
        os.close(r)
        theirs.close()
    with contextlib.closing(os.fdopen(w, "wb")) as f:
        f.write(the_filter())
    ours.settimeout(HANDOFF_TIMEOUT)
    try:
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    except (OSError, TimeoutError):
        fds = []
    if not fds:
        code = proc.wait()
        ours.close()
        raise LaunchError(f"the seccomp launcher handed over no listener (exit {code})")
    return Launched(proc, fds[0], ours)
