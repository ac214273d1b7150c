"""The pytest plugin (entry point ``pytest11``): run unmodified code against a simulated
POWER host.  Inert until its fixture is used.

``kvm_host``: pyfakefs provides the host's files (``/dev/kvm``, ``/proc/device-tree``,
``/proc/cpuinfo``, ``/sys/module``) and a fake ``fcntl`` whose ``ioctl`` reaches the
simulated kernel, and ``os.uname().machine`` (hence ``platform.machine()``) is the host's
architecture (``ppc64le``, ``ppc64``, ``x86_64``).  Parametrize it indirectly with a
profile name or a ``(name, revision)`` pair; unparametrized it is :data:`DEFAULT_HOST`
with the default revision (linux-7.3).  The fixture yields a :class:`SimulatedHost`; use its ``fs`` (a pyfakefs
``FakeFilesystem``) to add files, rather than pyfakefs's own ``fs`` fixture, which would
start a second patcher.

``@pytest.mark.requires_real_kvm``: skip, with the reason, unless a real /dev/kvm opens."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from .uapi import DEFAULT_REVISION

if TYPE_CHECKING:
    from pyfakefs.fake_filesystem import FakeFilesystem

    from .profile import Host
    from .user.simulated import Kernel

DEFAULT_HOST = "powervm-p11"


@attrs.frozen
class SimulatedHost:
    name: str
    abi: str
    kernel: Kernel
    fs: FakeFilesystem

    @property
    def profile(self) -> Host:
        return self.kernel.host


def host_spec(param: object) -> tuple[str, str]:
    """``"powervm-p11"`` or ``("kvm-l1-p10", "v5")`` → (name, revision)."""
    if isinstance(param, str):
        return param, DEFAULT_REVISION
    if isinstance(param, tuple) and len(param) == 2 and all(isinstance(p, str) for p in param):
        return param[0], param[1]
    raise pytest.UsageError(f"kvm_host: expected a host name or a (name, revision) pair, got {param!r}")


def real_kvm_unusable() -> str | None:
    """Why a real /dev/kvm cannot be used here, or None when it can."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"no usable /dev/kvm here: {exc.strerror}"
    return None


def _uname_of(machine: str) -> os.uname_result:
    real = os.uname()
    return os.uname_result((real.sysname, real.nodename, real.release, real.version, machine))


@contextlib.contextmanager
def simulated_host(name: str = DEFAULT_HOST, abi: str = DEFAULT_REVISION) -> Iterator[SimulatedHost]:
    """The fixture's work as a context manager: the process sees host ``name`` inside."""
    from pyfakefs.fake_filesystem_unittest import Patcher

    from . import hostfs
    from .fakefcntl import KernelBinding, KvmFcntlModule
    from .profile import search_path
    from .user.simulated import Kernel

    kernel = Kernel.from_profile(name, abi=abi)  # read the profile before the fake fs hides it
    files = hostfs.files(kernel)
    profile_dirs = [str(d) for d in search_path() if d.is_dir()]  # profiles stay readable by name inside
    uname = _uname_of(kernel.arch.name)
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.setattr(os, "uname", lambda: uname)  # the process runs on the host's arch
        monkeypatch.setattr(platform, "_uname_cache", None)
        fake_modules: dict[str, Any] = {"fcntl": KvmFcntlModule}  # pyfakefs instantiates it with the fs
        with Patcher(modules_to_patch=fake_modules) as patcher:
            fs = patcher.fs
            assert fs is not None
            for path, data in files.items():
                fs.create_file(path, contents=data)
            for directory in profile_dirs:
                fs.add_real_directory(directory)
            fs.kvmsim_binding = KernelBinding(kernel, fs)  # type: ignore[attr-defined]
            yield SimulatedHost(name, abi, kernel, fs)
    finally:
        monkeypatch.undo()


@pytest.fixture
def kvm_host(request: pytest.FixtureRequest) -> Iterator[SimulatedHost]:
    with simulated_host(*host_spec(getattr(request, "param", DEFAULT_HOST))) as host:
        yield host


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("kvmsim_hosts", "directories of your own host profiles, searched first", type="paths", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_real_kvm: skip unless a real /dev/kvm can be opened")
    dirs = [str(p) for p in config.getini("kvmsim_hosts")]
    if dirs:
        from .profile import HOSTS_ENV

        os.environ[HOSTS_ENV] = os.pathsep.join([*dirs, *filter(None, [os.environ.get(HOSTS_ENV)])])


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_real_kvm") is not None:
        reason = real_kvm_unusable()
        if reason is not None:
            pytest.skip(reason)
