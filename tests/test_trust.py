"""kvmsim.intercept.trust, and what it keeps out: a temporary base or cache another user prepared, a
rename or symlink swapped in under a root run, a library replaced between its build and its
preload, and what a dead run leaves behind.  The attackers run as uid 65534 (setpriv)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_cc

from kvmsim.intercept import build, trust
from kvmsim.preload.library import build_shim

ROOT = Path(__file__).resolve().parent.parent
KVMSIM = Path(sys.executable).with_name("kvmsim")
NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")


def as_nobody(*argv: str) -> list[str]:
    return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *argv]


@contextlib.contextmanager
def nobodys_dir(mode: int = 0o755) -> Iterator[Path]:
    """A directory of uid 65534's in /tmp (the attacker's TMPDIR or cache)."""
    d = Path(tempfile.mkdtemp(prefix="nobody-", dir="/tmp"))
    try:
        os.chown(d, NOBODY, NOBODY)
        d.chmod(mode)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "sticky_ok"),
    [(0o700, True), (0o755, True), (0o1777, True), (0o777, False), (0o775, False)],
)
def test_a_temporary_base_is_ours_or_roots_and_others_cannot_rename_in_it(
    tmp_path: Path, mode: int, sticky_ok: bool
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(mode)
    assert (trust.safe_ancestors(base / "x") is None) is sticky_ok


def test_a_symlink_or_others_writable_directory_is_not_private(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(trust.UntrustedError, match="link"):
        trust.Dir.open(tmp_path / "link")
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(trust.UntrustedError, match="not private"):
        trust.Dir.open(tmp_path / "open")


def test_a_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    with trust.Dir.private(tmp_path / "d") as d:
        (tmp_path / "d" / "apt.conf").symlink_to(victim)
        d.write("apt.conf", "ours")
    assert victim.read_text() == "untouched"
    assert not (tmp_path / "d" / "apt.conf").is_symlink() and (tmp_path / "d" / "apt.conf").read_text() == "ours"


def test_a_subdirectory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with trust.Dir.private(tmp_path / "d") as d:
        (tmp_path / "d" / "tree").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(trust.UntrustedError, match="tree"):
            d.subdir("tree")


@as_root
def test_an_untrusted_tmpdir_is_passed_over_once_with_a_word(monkeypatch: pytest.MonkeyPatch) -> None:
    with nobodys_dir() as evil:
        monkeypatch.setenv("TMPDIR", str(evil))
        monkeypatch.setattr(tempfile, "tempdir", None)
        monkeypatch.setattr(trust, "_said", set())
        with trust.temp_dir("kvmsim-test-") as d:
            assert not d.path.startswith(str(evil))
        assert list(evil.iterdir()) == []


def test_a_dead_processs_directory_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    dead = base / "kvmsim-run-dead"
    dead.mkdir(mode=0o700)
    (dead / "kvm.sock").write_text("")
    young = base / "kvmsim-run-young"  # made a moment ago, not locked yet: left alone
    young.mkdir(mode=0o700)
    old = time.time() - 2 * trust.SWEEP_AGE
    os.utime(dead, (old, old))
    live = trust.Dir.open(tempfile.mkdtemp(prefix="kvmsim-run-", dir=base))
    import fcntl

    fcntl.flock(live.fd, fcntl.LOCK_EX)
    try:
        assert trust.sweep(str(base), "kvmsim-run-") == [str(dead)]
        assert not dead.exists() and young.exists() and Path(live.path).exists()
    finally:
        live.remove()


# -- 2. temporary directories under a root run -------------------------------------------------

SWAPPER = r"""
import os, sys, time
base, target = sys.argv[1], sys.argv[2]
end = time.time() + 20
while time.time() < end:
    for name in os.listdir(base):
        if name.startswith("kvmsim-") and not name.endswith(".gone"):
            try:
                os.rename(os.path.join(base, name), os.path.join(base, name + ".gone"))
                os.symlink(target, os.path.join(base, name))
            except OSError:
                pass
"""


@as_root
@needs_cc
def test_a_run_in_someone_elses_tmpdir_cannot_be_redirected() -> None:
    """uid 65534 owns TMPDIR and swaps every kvmsim-* entry for a symlink to root's directory
    the moment it appears: the run uses a safe base instead, so nothing appears there."""
    with nobodys_dir(0o777) as evil, tempfile.TemporaryDirectory() as secret:
        (Path(secret) / "proc").mkdir()
        (Path(secret) / "proc" / "cpuinfo").write_text("root's own file\n")
        Path(secret).chmod(0o700)
        swapper = subprocess.Popen(as_nobody(sys.executable, "-c", SWAPPER, str(evil), secret))
        try:
            r = subprocess.run(
                [str(KVMSIM), "run", "--host", "powervm-p11", "--", "cat", "/proc/cpuinfo"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "TMPDIR": str(evil), "KVMSIM_CACHE": str(Path(secret) / "cache")},
            )
        finally:
            swapper.kill()
            swapper.wait()
        assert r.returncode == 0, r.stderr
        assert "POWER11" in r.stdout
        assert f"{evil} is not safe" in r.stderr and r.stderr.count("is not safe") == 1
        assert (Path(secret) / "proc" / "cpuinfo").read_text() == "root's own file\n"
        assert sorted(p.name for p in evil.iterdir()) == []


@needs_cc
def test_a_library_replaced_after_its_build_is_not_preloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMSIM_CACHE", str(tmp_path / "cache"))
    shim = build_shim()
    assert build.preloadable(shim) == str(shim)
    other = tmp_path / "cache" / "other.so"
    shutil.copy(shim, other)
    other.chmod(0o755)
    os.replace(other, shim)  # same bytes, same owner, same mode: another file
    with pytest.raises(build.BuildError, match="replaced after it was built"):
        build.preloadable(shim)
    with pytest.raises(build.BuildError, match="not built by this process"):
        build.preloadable(tmp_path / "cache" / "never-built.so")


@as_root
@needs_cc
def test_a_cache_in_someone_elses_directory_falls_back_and_leaves_nothing(tmp_path: Path) -> None:
    """$KVMSIM_CACHE inside uid 65534's directory, holding a library with the right name:
    the run builds into a private directory instead, and removes it when it ends. (Its own
    $TMPDIR: the other workers' runs make and remove private directories in /tmp meanwhile.)"""
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    with nobodys_dir() as evil:
        cache = evil / "cache"
        subprocess.run(as_nobody("mkdir", "-m", "0700", str(cache)), check=True)
        r = subprocess.run(
            [str(KVMSIM), "run", "--host", "powervm-p11", "--", "true"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KVMSIM_CACHE": str(cache), "TMPDIR": str(tmp)},
        )
        assert r.returncode == 0, r.stderr
        assert "is not private" in r.stderr and f"building into {tmp}/kvmsim-private-" in r.stderr
        assert list(tmp.iterdir()) == []


# -- 7. leftovers ------------------------------------------------------------------------------


def test_a_tmpdir_too_long_for_a_socket_is_one_line_and_exit_125(tmp_path: Path) -> None:
    """The preload path's server needs a socket there (the seccomp path needs none)."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir(mode=0o700)
    r = subprocess.run(
        [str(KVMSIM), "run", "--host", "powervm-p11", "--intercept", "preload", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(deep)},
    )
    assert r.returncode == 125, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "longer than a Unix socket path" in r.stderr
    assert list(deep.iterdir()) == []


def test_serve_after_a_kill_9_takes_its_socket_back_and_sweeps_its_directory(tmp_path: Path) -> None:
    sock = tmp_path / "kvm.sock"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    argv = [str(KVMSIM), "serve", "--host", "powervm-p11", "--socket", str(sock)]
    first = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    assert first.stderr is not None
    assert "on " in first.stderr.readline()  # listening
    first.send_signal(signal.SIGKILL)
    first.wait()
    (left,) = tmp_path.glob("kvmsim-serve-*")  # what SIGKILL leaves
    assert sock.exists()
    old = time.time() - 2 * trust.SWEEP_AGE
    os.utime(left, (old, old))
    second = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    assert second.stderr is not None
    try:
        lines = [second.stderr.readline(), second.stderr.readline()]
        assert "removed the socket a dead server left" in lines[0], lines
        assert "on " in lines[1]
        assert len(list(tmp_path.glob("kvmsim-serve-*"))) == 1  # the dead one's swept, ours made
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
    finally:
        second.terminate()
        second.wait(timeout=10)
    assert not sock.exists() and list(tmp_path.glob("kvmsim-serve-*")) == []


def test_serve_on_a_live_servers_socket_says_so(tmp_path: Path) -> None:
    sock = tmp_path / "kvm.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen()
    try:
        start = time.monotonic()
        r = subprocess.run(
            [str(KVMSIM), "serve", "--host", "powervm-p11", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert time.monotonic() - start < 20
    finally:
        listener.close()
    assert r.returncode == 2 and "a server is listening there" in r.stderr


BUILD_THEN_PRELOAD = """
import sys, time
from kvmsim.intercept.build import preloadable
from kvmsim.preload.library import build_shim
shim = build_shim()
time.sleep(1.0)  # the other builder finishes meanwhile
print(preloadable(shim))
"""


@needs_cc
def test_two_builders_of_one_library_each_preload_what_they_checked(tmp_path: Path) -> None:
    """pytest -n 2 on an empty cache: two processes build the same shim at once; neither may
    swap the file under the other (which then refused it as replaced after its build)."""
    env = {**os.environ, "KVMSIM_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_THEN_PRELOAD],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert outs[0][0] == outs[1][0]  # one library, the same path


def test_removing_a_run_directory_takes_its_tree_and_never_follows_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the run's")
    d = trust.Dir.open(tempfile.mkdtemp(prefix="kvmsim-run-", dir=tmp_path))
    root = Path(d.path)
    (root / "proc" / "device-tree" / "cpus").mkdir(parents=True)
    (root / "proc" / "device-tree" / "cpus" / "cpu-version").write_bytes(b"\x0f\x00\x00\x06")
    (root / "proc" / "cpuinfo").write_text("cpu : POWER11\n")
    (root / "proc" / "device-tree" / "planted").symlink_to(outside)
    d.remove()
    assert not root.exists()
    assert (outside / "keep").read_text() == "not the run's"
