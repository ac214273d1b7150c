"""A pyfakefs fake ``fcntl`` module whose ``ioctl`` reaches the simulated kernel.

pyfakefs's own fake ``fcntl.ioctl`` returns 0 for everything, a silent success that would
hide every bug.  Here an ioctl on an fd of the fake ``/dev/kvm``, or on a VM fd it created,
goes to the :class:`~kvmsim.Kernel` with ``fcntl.ioctl``'s exact contract; an ioctl on any
other fake file is ENOTTY.  A VM fd is a real descriptor of the fake filesystem (a file under
:data:`ANON_INODES`), so ``os.close``, ``os.dup`` and EBADF behave as on a real host."""

from __future__ import annotations

import errno
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


class KvmFcntlModule(FakeFcntlModule):
    """Passed to pyfakefs as ``modules_to_patch={"fcntl": KvmFcntlModule}``."""

    def ioctl(self, fd: int, request: int, arg: Any = 0, mutate_flag: bool = True) -> int | bytes:
        binding: KernelBinding | None = getattr(self.filesystem, "kvmsim_binding", None)
        if binding is None:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        kfd = binding.kernel_fd(fd)
        if kfd is None:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        kernel = binding.kernel
        result = kernel.ioctl(kfd, request, arg, mutate_flag)
        if kfd == binding.dev_fd and request & 0xFFFFFFFF == kernel.KVM_CREATE_VM and isinstance(result, int):
            return binding.install_vm(result)
        return result
