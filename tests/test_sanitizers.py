"""The C parts under AddressSanitizer and UndefinedBehaviorSanitizer (gcc's -fsanitize=
address,undefined, any report fatal): the preload shim inside a sanitized program and with
libasan preloaded before it, the seccomp launcher, and the C client, over the calls that
touch memory the most (a good query, NULL and wild pointers, signal handlers that dup and
close, threads)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import C_CLIENT, needs_cc, needs_seccomp

from kvmsim import Kernel
from kvmsim.intercept.build import compile_c
from kvmsim.intercept.server import Server, host_answer
from kvmsim.preload.library import build_shim
from kvmsim.preload.runner import shim_environment

ROOT = Path(__file__).resolve().parent.parent
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=0:exitcode=99", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}


def _libasan() -> str | None:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


pytestmark = [needs_cc, pytest.mark.skipif(_libasan() is None, reason="no libasan here (gcc's sanitizers)")]


@pytest.fixture(scope="module")
def sanitized_client() -> Path:
    return compile_c([C_CLIENT], flags=SAN)


def test_the_shim_and_the_client_under_asan_and_ubsan(sanitized_client: Path, tmp_path: Path) -> None:
    shim = build_shim(flags=SAN)
    torture = compile_c([ROOT / "tests" / "data" / "shim_torture.c"], flags=["-pthread"])
    kernel = Kernel.from_profile("powervm-p11")
    with Server(kernel, tmp_path / "kvm.sock") as server:
        env = shim_environment(host_answer(kernel), server.path, shim) | SAN_ENV
        env["LD_PRELOAD"] = f"{_libasan()} {env['LD_PRELOAD']}"  # the runtime first, as ASan requires
        runs = {
            "good": [str(sanitized_client)],
            "null": [str(sanitized_client), "--null"],
            "wild": [str(sanitized_client), "--wild"],
            "signals": [str(torture), "signals"],
            "threads": [str(torture), "threads", "4"],
        }
        for what, cmd in runs.items():
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, (what, r.stderr[-2000:])
            assert r.returncode == (1 if what in ("null", "wild") else 0), (what, r.stdout, r.stderr[-500:])


@needs_seccomp
def test_the_seccomp_launcher_under_asan_and_ubsan(
    sanitized_client: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_seccomp import supervised

    from kvmsim.seccomp import launch

    launcher = compile_c([launch.LAUNCHER_SOURCE], flags=SAN)
    monkeypatch.setattr(launch, "build_launcher", lambda: str(launcher))
    for key, value in SAN_ENV.items():
        monkeypatch.setenv(key, value)
    code, out = supervised("powervm-p11", "linux-7.3", [str(sanitized_client)], tmp_path)
    assert code == 0 and '"modes": ["power10", "power11"]' in out  # a sanitizer report would exit 99 first
