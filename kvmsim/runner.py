"""``kvmsim run``: a command run against a simulated host through the preload shim.

A server on a private socket (a fresh 0700 directory), the command with the shim preloaded,
the command's exit code returned; the server and its directory are removed however the
command ends (normal exit, crash, or Ctrl-C, which is forwarded to it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .build import build_shim
from .kvm_main import Kernel
from .server import Server


def shim_environment(
    kernel: Kernel, socket_path: str, shim: Path, base: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{shim} {preload}".strip()
    env["KVMSIM_SOCKET"] = socket_path
    env["KVMSIM_MACHINE"] = kernel.arch.name  # uname()'s machine, as on the simulated host
    return env


def run(kernel: Kernel, command: Sequence[str], *, shim: Path | None = None) -> int:
    """Run ``command`` against ``kernel``; its exit code (128 + N when killed by signal N)."""
    shim = shim or build_shim()
    workdir = tempfile.mkdtemp(prefix="kvmsim-run-")
    server = Server(kernel, os.path.join(workdir, "kvm.sock"))
    server.start()
    try:
        proc = subprocess.Popen(list(command), env=shim_environment(kernel, server.path, shim))
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
        return code if code >= 0 else 128 - code
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
