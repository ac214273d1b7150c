"""The pytest plugin (entry point ``pytest11``): run unmodified code against a simulated
POWER host.  Inert until its fixture is used.

``kvm_host``: pyfakefs provides the host's files (``/dev/kvm``, ``/proc/device-tree``,
``/proc/cpuinfo``, ``/sys/module``) and a fake ``fcntl`` whose ``ioctl`` reaches the
simulated kernel, and ``os.uname().machine`` (hence ``platform.machine()``) is the host's
architecture (``ppc64le``, ``ppc64``, ``x86_64``).  Parametrize it indirectly with a
profile name or a ``(name, revision)`` pair; unparametrized it is :data:`DEFAULT_HOST`
with the default revision (linux-7.3).  The fixture yields a :class:`KvmHost`; it is
built on pyfakefs's own ``fs`` fixture, so both may be used in one test, in either order.

``@pytest.mark.requires_real_kvm``: skip, with the reason, unless a real /dev/kvm opens.

Inert until used: pyfakefs's fake ``fcntl`` is hooked at the setup of the first test that asks
for ``kvm_host`` (before its fixtures, so a ``from fcntl import ioctl`` that pyfakefs rebinds
reaches the simulated kernel) or at the first ``simulated_host()``; the environment is never
changed.  At teardown the kernel is unbound from the filesystem (a module-scoped ``fs`` then
answers as pyfakefs alone), and a /dev/kvm or VM fd left open is a :class:`KvmFdLeaked`
warning, shown by default in pytest's warnings summary."""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import os
import platform
import posix
import shutil
import stat
import tempfile
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from ..uapi import DEFAULT_REVISION, DEV_KVM, KVM_PPC_COMPAT_CAPS_SIZE_VER0

if TYPE_CHECKING:
    from pyfakefs.fake_file import FakeDirectory, FakeFile
    from pyfakefs.fake_filesystem import FakeFilesystem

    from ..kernel.profile import Host
    from ..user.simulated import Kernel
    from .fakefcntl import IoctlCall

DEFAULT_HOST = "powervm-p11"


NEEDS_PYFAKEFS = "kvm_host needs pyfakefs, which this environment lacks: pip install 'kvmsim[pytest]'"


class PyfakefsMissing(ImportError):
    """``kvm_host`` or :func:`simulated_host` without pyfakefs (kvmsim installed without its
    ``pytest`` extra): the plugin stays loadable, and only a test that asks for a host fails."""


def _hook_pyfakefs_fcntl() -> None:
    import importlib.util

    if importlib.util.find_spec("pyfakefs") is None:
        raise PyfakefsMissing(NEEDS_PYFAKEFS)
    from .fakefcntl import hook_pyfakefs

    hook_pyfakefs()  # before pyfakefs patches: it binds a test module's `from fcntl import ioctl` then


class KvmFdLeaked(UserWarning):
    """A /dev/kvm or VM fd a ``kvm_host`` test left open (a UserWarning: shown by default)."""


class KvmHostMarkerIgnored(UserWarning):
    """A ``kvm_host`` test both parametrized and marked: the parameter is the host it gets."""


class KvmHostUnreached(UserWarning):
    """A ``kvm_host`` test that made no ioctl through the fixture: its code may have reached
    the real kernel around it (ctypes, cffi, a C extension), where a simulated fd number means
    nothing (ENOTTY, which reads like a kernel before 7.3)."""


@attrs.frozen
class KvmHost:
    """What ``kvm_host`` yields: the profile's name, the revision, the booted kernel, the fake
    filesystem, and the ioctls made."""

    name: str
    abi: str
    kernel: Kernel
    fs: FakeFilesystem
    calls: list[IoctlCall]  # every ioctl the process made on /dev/kvm and its VM fds, in order

    @property
    def profile(self) -> Host:
        return self.kernel.host


@attrs.frozen
class KvmHostParam:
    """What ``kvm_host`` boots: a profile (name or path), a revision, and per-test changes
    (``{"cpu.mode": "power9"}``, ``{"hypervisor.offers": [...]}``, ``{"page_size": 4096}``)
    checked like a profile file, and the kernel's struct size."""

    name: str
    abi: str = DEFAULT_REVISION
    overrides: Mapping[str, Any] = attrs.field(factory=dict)
    ksize: int = KVM_PPC_COMPAT_CAPS_SIZE_VER0
    stack_junk: bool = False  # CPython's stack past a buffer: junk, not zeros (kvmsim.user.pyioctl)

    @property
    def id(self) -> str:
        label = f"{Path(self.name).stem}-{self.abi}"
        extra = [f"{k}={v}" for k, v in self.overrides.items()] + (
            [f"ksize={self.ksize}"] if self.ksize != KVM_PPC_COMPAT_CAPS_SIZE_VER0 else []
        )
        return "-".join([label, *extra, *(["stack-junk"] if self.stack_junk else [])])


def kvm_host_param(param: object) -> KvmHostParam:
    """``"powervm-p11"``, a ``Path``, ``(name, revision)`` or ``(name, revision, overrides)``,
    or a :class:`KvmHostParam`."""
    if isinstance(param, KvmHostParam):
        return param
    if isinstance(param, str | os.PathLike):
        return KvmHostParam(os.fspath(param))
    if isinstance(param, tuple) and 2 <= len(param) <= 3 and isinstance(param[1], str):
        name = param[0]
        if isinstance(name, str | os.PathLike):
            overrides = param[2] if len(param) == 3 else {}
            if isinstance(overrides, Mapping):
                return KvmHostParam(os.fspath(name), param[1], dict(overrides))
    raise pytest.UsageError(
        f"kvm_host: expected a host name or path, (name, revision) or (name, revision, overrides), got {param!r}"
    )


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


def _boot(spec: KvmHostParam) -> Kernel:
    """The kernel for ``spec``; overrides are applied to the profile's document and checked as
    a profile file is (``profile.from_mapping``: a mistake is one line naming the key).
    Profiles are read from the real filesystem (kvmsim.kernel.profile reads through posix), whether
    or not pyfakefs is patched in."""
    from ..kernel import profile
    from ..uapi import revision
    from ..user.simulated import Kernel

    if not spec.overrides:
        return Kernel(_profile(spec.name), revision(spec.abi), ksize=spec.ksize)
    path = profile.resolve(spec.name)
    doc = tomllib.loads(profile.read_text(path))
    for dotted, value in spec.overrides.items():
        *tables, key = dotted.split(".")
        where = doc
        for table in tables:
            where = where.setdefault(table, {})
        where[key] = value
    host = profile.from_mapping(doc, name=path.stem, where=f"{path} with {dict(spec.overrides)}", path=str(path))
    return Kernel(host, revision(spec.abi), ksize=spec.ksize)


# A profile is parsed once a session while its file is unchanged: (name, search path) ->
# (path, mtime, Host).  posix.stat is the real one even while pyfakefs is patched in.
_HOSTS: dict[tuple[str, str], tuple[str, int, Host]] = {}


def _profile_key(name: str) -> tuple[str, str]:
    from ..kernel.profile import search_path

    return name, os.pathsep.join(search_path())  # a name means another file on another search path


def _cached_profile(name: str) -> Host | None:
    cached = _HOSTS.get(_profile_key(name))
    if cached is None:
        return None
    path, mtime, host = cached
    try:
        return host if posix.stat(path).st_mtime_ns == mtime else None
    except OSError:
        return None


def _profile(name: str) -> Host:
    from ..kernel import profile

    host = _cached_profile(name)
    if host is None:
        path = str(profile.resolve(name))
        mtime = posix.stat(path).st_mtime_ns
        host = profile.load(path)
        _HOSTS[_profile_key(name)] = (path, mtime, host)
    return host


@functools.cache
def _lazy_path_class() -> Callable[[str, FakeFilesystem, list[str], str], FakeDirectory]:
    from pyfakefs.fake_file import FakeDirectory, FakeDirectoryFromRealDirectory

    class LazyPath(FakeDirectory):
        """A parent of a real directory mapped in (a profile directory): its one entry, the
        next parent or the real directory itself, is made on first look."""

        def __init__(self, name: str, fs: FakeFilesystem, rest: list[str], real: str) -> None:
            super().__init__(name, filesystem=fs)
            self._rest, self._real, self._made = rest, real, False

        @property
        def entries(self) -> dict[str, Any]:
            if not self._made:
                self._made = True
                fs, (name, *rest) = self.filesystem, self._rest
                child: FakeDirectory
                if rest:
                    child = LazyPath(name, fs, rest, self._real)
                else:
                    child = FakeDirectoryFromRealDirectory(self._real, fs, read_only=True)
                self.add_entry(child)
            return self._entries

    return LazyPath


_TREES: dict[tuple[tuple[str, bytes], ...], str] = {}


def _materialized(fs: FakeFilesystem, files: Mapping[str, bytes]) -> str:
    """A real directory holding ``files``, written once a session per distinct host view by
    kvmsim.kernel.hostfs.write_tree (the same writer as ``kvmsim run``'s); keyed by the files
    themselves, so two views never share a tree."""
    key = tuple(sorted(files.items()))
    tree = _TREES.get(key)
    if tree is None:
        from pyfakefs.fake_filesystem_unittest import Pause

        with Pause(fs):  # (hostfs.write_tree writes through posix: real whether or not paused)
            tree = tempfile.mkdtemp(prefix="kvmsim-host-")
            atexit.register(shutil.rmtree, tree, True)
        from ..kernel import hostfs

        root = posix.open(tree, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
        try:
            hostfs.write_tree(files, root)
        finally:
            posix.close(root)
        _TREES[key] = tree
    return tree


def _graft(fs: FakeFilesystem, files: Mapping[str, bytes], real_dirs: list[str]) -> None:
    """The host's ``files`` and the (real) ``real_dirs`` in ``fs``, read on first use."""
    from pyfakefs.fake_file import FakeDirectory, FakeDirectoryFromRealDirectory

    _merge(fs, fs.root, "", _materialized(fs, files), files)
    for real in real_dirs:  # at the first directory the test lacks, made only when looked into
        names = real.strip("/").split("/")
        where = fs.root
        for depth, name in enumerate(names):
            found = where.entries.get(name)
            if found is None:
                if depth == len(names) - 1:
                    where.add_entry(FakeDirectoryFromRealDirectory(real, fs, read_only=True))
                else:
                    where.add_entry(_lazy_path_class()(name, fs, names[depth + 1 :], real))
                break
            if not isinstance(found, FakeDirectory):
                break  # the test put a file in the way
            where = found


def _merge(fs: FakeFilesystem, where: FakeDirectory, target: str, source: str, files: Mapping[str, bytes]) -> None:
    """The real directory ``source`` (a copy of the host's ``files``) into ``where``, the fake
    directory at ``target``: an entry the test lacks is mapped from the real one (a directory
    lazily: usually one object each for /proc, /sys and /dev); a directory the test has is
    merged into; a file it has is left alone, so ``fs`` may be filled before or after."""
    from pyfakefs.fake_file import FakeDirectory, FakeDirectoryFromRealDirectory, FakeFile

    for name in posix.listdir(source):
        path, real = f"{target}/{name}", f"{source}/{name}"
        found = where.entries.get(name)
        if stat.S_ISDIR(posix.stat(real).st_mode):
            if found is None and path == "/dev":  # its own: /dev/kvm is a device, not the real file
                found = FakeDirectory(name, filesystem=fs)
                where.add_entry(found)
            if found is None:  # /proc and /sys are read-only as a kernel's
                where.add_entry(FakeDirectoryFromRealDirectory(real, fs, read_only=True, target_path=path))
            elif isinstance(found, FakeDirectory):
                _merge(fs, found, path, real, files)
        elif found is None:
            if path == DEV_KVM:  # a misc device, 0660 (udev's), as kvmsim run shows it
                leaf = _device_class()(name, st_mode=stat.S_IFCHR | 0o660, filesystem=fs)  # type: ignore[arg-type]
            else:
                leaf = FakeFile(name, st_mode=stat.S_IFREG | 0o644, filesystem=fs)
                leaf.set_contents(files[path])
            leaf.kvmsim_host_file = True
            where.add_entry(leaf)
        elif not _ours(found) and getattr(found, "byte_contents", None) != files[path]:
            warnings.warn(
                HostFileShadowed(f"kvm_host: the test's own {path} hides the simulated host's (the test's wins)"),
                stacklevel=1,
            )


@functools.cache
def _device_class() -> type[FakeFile]:
    from pyfakefs.fake_file import FakeFile

    class MiscDevice(FakeFile):
        """A device file with no read or write (kvm_chardev_ops): pyfakefs asks every read and
        write whether the file is a "large" one first, and this answers EINVAL, as vfs_read
        does without .read.  pyfakefs keeps no device number (no ``st_rdev``)."""

        def is_large_file(self) -> bool:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    return MiscDevice


class HostFileShadowed(UserWarning):
    """A file the test made where the simulated host has one: the test's is what code reads."""


def _ours(entry: object) -> bool:
    """A host file an earlier graft on this filesystem put there (a module-scoped ``fs``)."""
    if getattr(entry, "kvmsim_host_file", False):
        return True
    real = getattr(entry, "file_path", None)
    return isinstance(real, str) and any(real.startswith(tree + "/") for tree in _TREES.values())


def _spec(name: str | os.PathLike[str] | KvmHostParam, abi: str, overrides: dict[str, Any]) -> KvmHostParam:
    if isinstance(name, KvmHostParam):
        return name
    ksize = int(overrides.pop("ksize", KVM_PPC_COMPAT_CAPS_SIZE_VER0))
    return KvmHostParam(os.fspath(name), abi, overrides, ksize)


@contextlib.contextmanager
def _on(fs: FakeFilesystem, spec: KvmHostParam) -> Iterator[KvmHost]:
    """Make ``fs`` (a pyfakefs filesystem already patched in) the host of ``spec``: its files,
    an ``fcntl`` whose ioctl reaches the kernel, and the host's ``uname``."""
    from ..kernel import hostfs
    from .fakefcntl import KernelBinding

    kernel = _boot(spec)
    kernel.stack_junk, kernel.warn_past_buffer = spec.stack_junk, True
    _graft(fs, hostfs.files(kernel), _profile_dirs())  # profiles stay readable by name inside
    monkeypatch = pytest.MonkeyPatch()
    try:
        uname = _uname_of(kernel.arch.name)
        monkeypatch.setattr(os, "uname", lambda: uname)  # the process runs on the host's arch
        monkeypatch.setattr(platform, "_uname_cache", None)
        binding = KernelBinding(kernel, fs)
        fs.kvmsim_binding = binding  # type: ignore[attr-defined]
        opened: list[bool] = []  # /dev/kvm was opened in this test
        plain_add = fs.add_open_file

        def add_open_file(file_obj: Any, new_fd: int = -1) -> int:
            if not opened and getattr(getattr(file_obj, "get_object", lambda: None)(), "path", None) == DEV_KVM:
                opened.append(True)
            return plain_add(file_obj, new_fd)

        monkeypatch.setattr(fs, "add_open_file", add_open_file)
        try:
            yield KvmHost(spec.name, spec.abi, kernel, fs, binding.calls)
            if opened and not binding.calls:  # opened here, then asked elsewhere
                warnings.warn(
                    KvmHostUnreached(
                        f"kvm_host {spec.id}: /dev/kvm was opened but no ioctl reached the simulated kernel; code "
                        "that calls ioctl through ctypes, cffi or a C extension reaches the real kernel with a "
                        "fake fd number instead: run it under `kvmsim run`"
                    ),
                    stacklevel=1,
                )
            for what, left in (("/dev/kvm", binding.open_dev_fds()), ("VM", binding.open_vm_fds())):
                if left:
                    warnings.warn(
                        KvmFdLeaked(f"kvm_host {spec.id}: {len(left)} {what} fd(s) left open: {sorted(left)}"),
                        stacklevel=1,
                    )
        finally:
            fs.kvmsim_binding = None  # type: ignore[attr-defined]  # a module-scoped fs outlives the test
    finally:
        monkeypatch.undo()


_PROFILE_DIRS: dict[str, list[str]] = {}  # $KVMSIM_HOSTS -> the search path's real directories


def _profile_dirs() -> list[str]:
    from ..kernel.profile import search_path

    key = os.pathsep.join(search_path())
    dirs = _PROFILE_DIRS.get(key)
    if dirs is None:
        dirs = _PROFILE_DIRS[key] = [str(d) for d in search_path() if _real_isdir(str(d))]
    return dirs


def _real_isdir(path: str) -> bool:
    try:
        return stat.S_ISDIR(posix.stat(path).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def simulated_host(
    name: str | os.PathLike[str] | KvmHostParam = DEFAULT_HOST, abi: str = DEFAULT_REVISION, **overrides: Any
) -> Iterator[KvmHost]:
    """The fixture's work as a context manager: the process sees host ``name`` inside.
    ``overrides`` change the profile for this host only (``**{"cpu.mode": "power9"}``);
    ``ksize=`` is the kernel's struct size."""
    spec = _spec(name, abi, overrides)
    _boot(spec)  # a bad profile fails here, before anything is patched
    _hook_pyfakefs_fcntl()
    from pyfakefs.fake_filesystem_unittest import Patcher

    with Patcher() as patcher:  # pyfakefs's own patcher: its fake fcntl is the one _on redirects
        assert patcher.fs is not None
        with _on(patcher.fs, spec) as host:
            yield host


@pytest.fixture
def kvm_host(request: pytest.FixtureRequest) -> Iterator[KvmHost]:
    """A simulated POWER host for this test: /dev/kvm, /proc/device-tree, /proc/cpuinfo,
    /sys/module and ``fcntl.ioctl`` reach kvmsim's kernel (pyfakefs), ``os.uname()`` is the
    host's arch.  Choose it with ``@pytest.mark.parametrize("kvm_host", [...], indirect=True)``
    (a name, a path, ``(name, revision)`` or ``(name, revision, overrides)``) or
    ``@pytest.mark.kvm_host("powervm-p11", abi="linux-7.3", **overrides)``; the default is
    powervm-p11 on linux-7.3.  Yields a KvmHost: ``.name`` (the profile), ``.abi`` (the
    revision's name), ``.kernel``, ``.fs`` (the pyfakefs filesystem) and ``.calls`` (every
    ioctl on /dev/kvm and its VM fds: ``.fd``, ``.request``, ``.name``, ``.arg``, ``.result``,
    ``.errno``)."""
    if hasattr(request, "param"):
        spec = kvm_host_param(request.param)
        marker = request.node.get_closest_marker("kvm_host")
        if marker is not None:
            warnings.warn(
                KvmHostMarkerIgnored(
                    f"kvm_host: the test's parameter {spec.id} wins over its @pytest.mark.kvm_host{marker.args}"
                ),
                stacklevel=1,
            )
    else:
        marker = request.node.get_closest_marker("kvm_host")
        if marker is None:
            spec = KvmHostParam(DEFAULT_HOST)
        else:
            kwargs = dict(marker.kwargs)
            abi = str(kwargs.pop("abi", DEFAULT_REVISION))
            ksize = int(kwargs.pop("ksize", KVM_PPC_COMPAT_CAPS_SIZE_VER0))
            junk = bool(kwargs.pop("stack_junk", False))
            spec = KvmHostParam(os.fspath(marker.args[0]) if marker.args else DEFAULT_HOST, abi, kwargs, ksize, junk)
    fs = request.getfixturevalue("fs")  # pyfakefs's own fixture: one fake filesystem, in any order
    with _on(fs, spec) as host:
        yield host


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Readable ids for ``kvm_host`` parameters: ``powervm-p11-linux-7.3``."""
    if argname != "kvm_host":
        return None
    try:
        return kvm_host_param(val).id
    except pytest.UsageError:
        return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("kvmsim_hosts", "directories of your own host profiles, searched first", type="paths", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_real_kvm: skip unless a real /dev/kvm can be opened")
    config.addinivalue_line(
        "markers", "kvm_host(name, abi=..., **overrides): the simulated host the kvm_host fixture boots for this test"
    )
    dirs = [str(p) for p in config.getini("kvmsim_hosts")]
    if dirs:  # searched first, in this process only: the environment (and children's) is left alone
        from ..kernel import profile

        profile.CONFIGURED_DIRS[:] = dirs


# Failures a fake filesystem causes, and the way out: (what the traceback shows, all of it; the hint)
_WAYS_OUT = (
    (("subprocess.py", "Errno 9"), "a child process sees the real filesystem, not kvm_host's (pyfakefs's EBADF): "
     "run the program under `kvmsim run --host HOST -- CMD` instead"),
    (("numbered dir",), "tmp_path is made inside pyfakefs's fake filesystem under kvm_host: use fs.create_dir, or "
     "a test without kvm_host"),
)  # fmt: skip


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """A kvm_host test that failed the way pyfakefs makes tests fail gets the way out beside it."""
    outcome: Any = yield
    if call.excinfo is None or "kvm_host" not in getattr(item, "fixturenames", ()):
        return
    report = outcome.get_result()
    if not report.failed:
        return
    text = str(call.excinfo.getrepr(style="short"))
    if call.when == "setup" and {"tmp_path", "tmpdir"} & set(getattr(item, "fixturenames", ())):
        text = "numbered dir"  # tmp_path's set-up failed inside the fake filesystem
    for needles, hint in _WAYS_OUT:
        if all(needle in text for needle in needles):
            report.sections.append(("kvm_host", hint))
            break


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "kvm_host" in getattr(item, "fixturenames", ()):
        try:
            _hook_pyfakefs_fcntl()  # before this test's fixtures: pyfakefs binds fcntl's functions as it starts
        except PyfakefsMissing as exc:
            pytest.fail(str(exc), pytrace=False)
    if item.get_closest_marker("requires_real_kvm") is not None:
        reason = real_kvm_unusable()
        if reason is not None:
            pytest.skip(reason)
