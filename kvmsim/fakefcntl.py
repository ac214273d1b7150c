"""A pyfakefs fake ``fcntl`` module whose ``ioctl`` reaches the simulated kernel.

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

from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_io import FakeFcntlModule
from pyfakefs.fake_os import FakeOsModule

from .uapi import DEV_KVM
from .user.simulated import Kernel

ANON_INODES = "/run/kvmsim/anon_inode:kvm-vm"


class KernelBinding:
    """Which fake files stand for which kernel fds; attached to the fake filesystem."""

    def __init__(self, kernel: Kernel, fs: FakeFilesystem) -> None:
        self.kernel, self.fs = kernel, fs
        self.dev_fd = kernel.open(DEV_KVM) if kernel.kvm.loaded else -1
        self.kernel_fds: dict[int, int] = {}  # id(FakeFile) -> kernel fd
        self.calls: list[Any] = []  # IoctlCall records, for SimulatedHost.calls
        self._objects: dict[int, object] = {}  # keeps the FakeFiles alive while bound
        self._serial = itertools.count()

    def kernel_fd(self, fake_fd: int) -> int | None:
        obj = self.fs.get_open_file(fake_fd).get_object()  # EBADF for a closed fd
        path = getattr(obj, "path", None)
        if path == DEV_KVM:
            return self.dev_fd
        return self.kernel_fds.get(id(obj))

    def install_vm(self, kernel_fd: int) -> int:
        """A new fake file for a new VM, opened: the fd userspace gets."""
        path = f"{ANON_INODES}/{next(self._serial)}"
        obj = self.fs.create_file(path)
        self.kernel_fds[id(obj)] = kernel_fd
        self._objects[id(obj)] = obj
        return int(FakeOsModule(self.fs).open(path, os.O_RDWR | os.O_CLOEXEC))

    def open_vm_fds(self) -> set[int]:
        """The fake fds still open on a VM file."""
        out = set()
        for fd, files in enumerate(self.fs.open_files):
            if files and any(id(f.get_object()) in self.kernel_fds for f in files):
                out.add(fd)
        return out


class KvmFcntlModule(FakeFcntlModule):
    """Passed to pyfakefs as ``modules_to_patch={"fcntl": KvmFcntlModule}``."""

    def ioctl(self, fd: Any, request: int, arg: Any = 0, mutate_flag: bool = True) -> int | bytes:
        fd = _fileno(fd)  # fcntl.ioctl takes an int or an object with fileno()
        binding: KernelBinding | None = getattr(self.filesystem, "kvmsim_binding", None)
        if binding is None:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        kfd = binding.kernel_fd(fd)
        if kfd is None:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        from .pytest_plugin import IoctlCall

        kernel = binding.kernel
        which = "dev" if kfd == binding.dev_fd else "vm"
        logged = bytes(arg) if isinstance(arg, bytearray | memoryview) else arg
        try:
            result = kernel.ioctl(kfd, request, arg, mutate_flag)
        except OSError as exc:
            binding.calls.append(IoctlCall(which, request, logged, errno.errorcode.get(exc.errno or 0, "?")))
            raise
        binding.calls.append(IoctlCall(which, request, logged, result))
        if which == "dev" and request & 0xFFFFFFFF == kernel.KVM_CREATE_VM and isinstance(result, int):
            return binding.install_vm(result)
        return result

    def fcntl(self, fd: Any, cmd: int, arg: Any = 0) -> Any:
        """``fcntl.fcntl``: F_DUPFD and F_DUPFD_CLOEXEC of an emulated fd share its file."""
        fd = _fileno(fd)
        if cmd in (fcntl_module.F_DUPFD, fcntl_module.F_DUPFD_CLOEXEC):
            return FakeOsModule(self.filesystem).dup(fd)
        return 0  # as pyfakefs answers any other fcntl()


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
