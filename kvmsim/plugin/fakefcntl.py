"""pyfakefs's fake ``fcntl``, reaching the simulated kernel while a :class:`KernelBinding` is
on its filesystem (:func:`hook_pyfakefs`).

pyfakefs's own fake ``fcntl.ioctl`` returns 0 for everything, a silent success that would
hide every bug.  Here an ioctl on an fd of the fake ``/dev/kvm``, or on a VM fd it created,
goes to the :class:`~kvmsim.Kernel` with ``fcntl.ioctl``'s exact contract; an ioctl on any
other fake file is ENOTTY.  A VM fd is a real descriptor of the fake filesystem (a file under
:data:`ANON_INODES`), so ``os.close``, ``os.dup`` and EBADF behave as on a real host."""

from __future__ import annotations

import errno
import fcntl as fcntl_module
import itertools
import os
from typing import Any

import attrs
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_io import FakeFcntlModule
from pyfakefs.fake_os import FakeOsModule

from ..kernel.kvm_main import FOREIGN, File, ForeignFile
from ..uapi import DEV_KVM, VM_LINK, decode_request, errname
from ..user.simulated import Kernel

ANON_INODES = f"/run/kvmsim/{VM_LINK}"
# The real fcntl functions, taken before pyfakefs patches anything, kept in a tuple: pyfakefs
# rebinds a module's top-level names that hold an fcntl function (`from fcntl import ioctl`)
_REAL = (fcntl_module.ioctl, fcntl_module.fcntl)
_VM_SERIAL = itertools.count()  # one a session: a module- or session-scoped fake filesystem keeps old VMs' files


class KernelBinding:
    """Which fake files stand for which kernel fds; attached to the fake filesystem."""

    def __init__(self, kernel: Kernel, fs: FakeFilesystem) -> None:
        self.kernel, self.fs = kernel, fs
        self.dev_fd = kernel.open(DEV_KVM) if kernel.kvm.loaded else -1
        self.kernel_fds: dict[int, int] = {}  # id(FakeFile) -> kernel fd
        self.calls: list[IoctlCall] = []  # for KvmHost.calls
        self._objects: dict[int, object] = {}  # keeps the FakeFiles alive while bound
        # fd numbers that were the host's (/dev/kvm, a VM): closed, they stay EBADF rather than
        # reach a real descriptor that happens to have the same number (fake and real overlap)
        self.handed: set[int] = set()

    def is_fake(self, fd: int) -> bool:
        """Is ``fd`` a file of the fake filesystem (not a real socket, pipe or tty, nor the
        standard streams pyfakefs lets through to the real ones)?"""
        from pyfakefs.fake_file import StandardStreamWrapper

        try:
            return not isinstance(self.fs.get_open_file(fd), StandardStreamWrapper)
        except OSError:
            return False

    def kernel_fd(self, fake_fd: int) -> int | None:
        obj = self.fs.get_open_file(fake_fd).get_object()  # EBADF for a closed fd
        path = getattr(obj, "path", None)
        kfd = self.dev_fd if path == DEV_KVM else self.kernel_fds.get(id(obj))
        if kfd is not None:
            self.handed.add(fake_fd)
        return kfd

    def install_file(self, kernel_fd: int) -> int:
        """A new fake file for a new simulated file (a VM, a vcpu, a TCE table), opened: the fd
        userspace gets."""
        path = f"{ANON_INODES}/{next(_VM_SERIAL)}"
        process = self.kernel.current
        # a stats file reads what the kernel's does (as it was when made: a fake file is no live one)
        contents = process.contents(kernel_fd) if process.file_kind(kernel_fd).backing == "contents" else b""
        obj = self.fs.create_file(path, contents=contents)
        self.kernel_fds[id(obj)] = kernel_fd
        self._objects[id(obj)] = obj
        fd = int(FakeOsModule(self.fs).open(path, os.O_RDWR | os.O_CLOEXEC))
        self.handed.add(fd)
        return fd

    def release_closed(self) -> None:
        """Close the kernel fd of every simulated file whose fake fds are all closed (the kernel's
        fput at the last close: a TCE table's LIOBN is free again); asked before a call that
        makes a file, as a real kernel has released them by then."""
        still_open = {id(f.get_object()) for files in self.fs.open_files if files for f in files
                      if not getattr(f, "closed", False)}  # fmt: skip
        for key, kfd in list(self.kernel_fds.items()):
            if key not in still_open:
                del self.kernel_fds[key]
                self._objects.pop(key, None)
                self.kernel.close(kfd)

    def resolve(self, fd: int) -> File | ForeignFile | None:
        """fget() of an fd an ioctl's argument names (KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS)'s device):
        the simulated file a fake fd stands for, FOREIGN for any other open file (a fake one, or a
        real descriptor), None for a closed one."""
        if self.is_fake(fd):
            try:
                kfd = self.kernel_fd(fd)
            except OSError:
                return None
            return FOREIGN if kfd is None else self.kernel.current.file_at(kfd)
        try:
            os.fstat(fd)
        except OSError:
            return None
        return FOREIGN

    def real(self, fd: int) -> bool:
        """Should a call on ``fd`` go to the real fcntl?  Not for a fake file, nor for a number
        the host handed out and the test closed (that is EBADF, as the fake world says)."""
        if self.is_fake(fd):
            return False
        if fd in self.handed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return True

    def _open_fds(self, wanted: Any) -> set[int]:
        """The fake fds still open on a file ``wanted(obj)`` says yes to (a wrapper pyfakefs
        keeps after closing a dup'd fd says ``closed``)."""
        return {
            fd
            for fd, files in enumerate(self.fs.open_files)
            if files and any(not getattr(f, "closed", False) and wanted(f.get_object()) for f in files)
        }

    def open_vm_fds(self) -> set[int]:
        """The fake fds still open on a VM file."""
        return self._open_fds(lambda obj: id(obj) in self.kernel_fds)

    def open_dev_fds(self) -> set[int]:
        """The fake fds still open on /dev/kvm."""
        return self._open_fds(lambda obj: getattr(obj, "path", None) == DEV_KVM)


@attrs.frozen
class IoctlCall:
    """One ``fcntl.ioctl`` on a simulated fd: which fd ("dev", "vm" or "vcpu"), the request and its
    name, the argument as passed, and either ``result`` (a value or bytes) or ``errno``."""

    fd: str
    request: int
    name: str  # KVM_CHECK_EXTENSION, or the _IOC fields of a request the kernel does not know
    arg: object
    result: int | bytes | None  # None when the call failed
    errno: int | None = None  # the failure's errno; None on success

    @property
    def errname(self) -> str | None:
        """``"EINVAL"``, or None on success."""
        return None if self.errno is None else errname(self.errno)


def kvm_ioctl(binding: KernelBinding, fd: Any, request: int, arg: Any, mutate_flag: bool) -> int | bytes:
    """``fcntl.ioctl`` on the fake filesystem of ``binding``: its /dev/kvm and VM fds reach the
    simulated kernel (with fcntl's contract), any other fake file is ENOTTY, never a silent 0;
    a real descriptor (a socket, a pipe, a tty) reaches the real ``fcntl.ioctl`` untouched."""
    if binding.real(_fileno(fd)):
        result: int | bytes = _REAL[0](fd, request, arg, mutate_flag)
        return result
    kfd = binding.kernel_fd(_fileno(fd))
    if kfd is None:
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
    kernel = binding.kernel
    which = kernel.current.kind(kfd)
    logged = bytes(arg) if isinstance(arg, bytearray | memoryview) else arg
    name = decode_request(request & 0xFFFFFFFF, kernel.arch)
    makes_fd = kernel.current.returns_fd(kfd, request & 0xFFFFFFFF)
    if makes_fd:
        binding.release_closed()
    process = kernel.current
    process.resolve_fd = binding.resolve
    try:
        result = kernel.ioctl(kfd, request, arg, mutate_flag)
    except OSError as exc:
        binding.calls.append(IoctlCall(which, request, name, logged, None, exc.errno))
        raise
    finally:
        process.resolve_fd = None
    binding.calls.append(IoctlCall(which, request, name, logged, result))
    if makes_fd and process.new_fds:
        field = process.fd_field(kfd, request & 0xFFFFFFFF)
        fake = binding.install_file(process.new_fds[-1])
        if field is None:
            return fake
        # KVM_CREATE_DEVICE: the struct says the fd userspace got (the fake one), in its byte order
        number = fake.to_bytes(4, kernel.arch.byteorder)
        if isinstance(result, bytes):
            return result[:field] + number + result[field + 4 :]
        if mutate_flag and isinstance(arg, bytearray | memoryview):
            arg[field : field + 4] = number
    return result


def kvm_fcntl(binding: KernelBinding, fd: Any, cmd: int, arg: Any) -> Any:
    """``fcntl.fcntl``: F_DUPFD and F_DUPFD_CLOEXEC of an emulated fd share its file; a real
    descriptor reaches the real ``fcntl.fcntl``."""
    if binding.real(_fileno(fd)):
        return _REAL[1](fd, cmd, arg)
    fd = _fileno(fd)
    if cmd in (fcntl_module.F_DUPFD, fcntl_module.F_DUPFD_CLOEXEC):
        return FakeOsModule(binding.fs).dup(fd)
    return 0  # as pyfakefs answers any other fcntl()


def hook_pyfakefs() -> None:
    """pyfakefs's fake ``fcntl`` (however a test module imported it, ``from fcntl import
    ioctl`` included: those are bound when pyfakefs patches) reaches the simulated kernel of
    its filesystem while a :class:`KernelBinding` is on it, and behaves as pyfakefs's otherwise."""
    if getattr(FakeFcntlModule, "_kvmsim_hooked", False):
        return
    plain_ioctl, plain_fcntl = FakeFcntlModule.ioctl, FakeFcntlModule.fcntl

    def ioctl(self: FakeFcntlModule, fd: Any, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        binding = getattr(self.filesystem, "kvmsim_binding", None)
        if binding is None:
            return plain_ioctl(self, fd, request, arg, mutate_flag)
        return kvm_ioctl(binding, fd, request, arg, mutate_flag)

    def fcntl(self: FakeFcntlModule, fd: Any, cmd: int, arg: Any = 0) -> Any:
        binding = getattr(self.filesystem, "kvmsim_binding", None)
        if binding is None:
            return plain_fcntl(self, fd, cmd, arg)
        return kvm_fcntl(binding, fd, cmd, arg)

    FakeFcntlModule.ioctl = ioctl  # type: ignore[method-assign]
    FakeFcntlModule.fcntl = fcntl  # type: ignore[method-assign]
    FakeFcntlModule._kvmsim_hooked = True  # type: ignore[attr-defined]


def _fileno(fd: Any) -> int:
    """fcntl's own fd argument rules: an int, or an object whose fileno() is one; never negative."""
    if not isinstance(fd, int):
        fileno = getattr(fd, "fileno", None)
        if fileno is None:
            raise TypeError("argument must be an int, or have a fileno() method.")
        fd = fileno()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd
