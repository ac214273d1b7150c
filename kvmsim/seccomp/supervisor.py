"""The supervisor: a simulated kernel answering the system calls a seccomp filter sends it.

Each simulated file a program holds (an open /dev/kvm, a VM fd) is a real **placeholder** in
the program (kvmsim.preload.placeholder, the table the preload shim's server keeps too),
installed with ``SECCOMP_IOCTL_NOTIF_ADDFD``.  A call on an fd finds its simulated file by the
placeholder's identity (the socket's dev/ino, from /proc/TID/fd/N), never by the fd number.

What the supervisor answers (the rest it lets CONTINUE, the real kernel's own answer):
- ``ioctl`` on a placeholder: the simulated kernel (``sys_ioctl``), with the argument read and
  written through ``process_vm_*`` (``taskmem``); FIOCLEX/FIONCLEX are the real kernel's, on
  the placeholder.  ``KVM_CREATE_VM`` answers with a new placeholder (``anon_inode_getfd``'s
  O_CLOEXEC).  An ioctl on a real /dev/kvm fd the program brought with it is refused (EPERM):
  no call reaches this machine's device.
- ``open``/``openat``/``openat2`` of the simulated /dev/kvm (any spelling, through any
  symlink: ``namei``): a placeholder, or the simulated kernel's ENOENT; of the host's files
  (/proc/cpuinfo, /proc/device-tree, /sys/module/kvm*): the run's copy, opened here and
  installed in the program.
- the stat family (``stat``, ``lstat``, ``newfstatat``, ``statx``, ``fstat``) and the access
  family of those paths and of placeholders: /dev/kvm a character device 10:232, a VM fd the
  anon inode every anon_inode file shares; ``readlink`` of /proc/PID/fd/N of a placeholder:
  ``/dev/kvm`` or ``anon_inode:kvm-vm``; ``uname``: the host's machine.

CONTINUE re-reads the program's memory after the supervisor looked (the time-of-check race
seccomp_unotify(2) warns of): harmless here, because the filter protects nothing — a program
that rewrites its own path between the two reads only fools its own simulation, and can
never do more than it could without kvmsim."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..kernel.errors import KvmError
from ..kernel.uapi import DEV_KVM, Arch
from ..kernel.usermem import Fault
from ..preload.placeholder import Placeholder, Placeholders, identity
from . import uapi
from .kstat import Kstat, dev_kvm, is_dev_kvm
from .namei import Namei, tgid
from .taskmem import TaskMemory

if TYPE_CHECKING:
    from ..kernel.kvm_main import BootedKernel
    from ..preload.trace import Call

FIOCLEX, FIONCLEX = 0x5451, 0x5450  # x86_64's: what the real kernel does to the placeholder
VM_LINK = "anon_inode:kvm-vm"
_FD_LINK = re.compile(rb"^/proc/(self|thread-self|\d+)(?:/task/(\d+))?/fd/(\d+)$")
NOTIFIED = ("ioctl", "open", "openat", "openat2", "stat", "lstat", "newfstatat", "statx", "fstat",
            "access", "faccessat", "faccessat2", "readlink", "readlinkat", "uname")  # fmt: skip


@attrs.frozen
class Answer:
    """How a notification is answered: CONTINUE, a value, an errno, or a new fd."""

    kind: str  # "continue", "value", "error", "fd"
    value: int = 0
    fd: int = -1  # "fd": the supervisor's descriptor to install
    cloexec: bool = False


CONTINUE = Answer("continue")


def value(v: int) -> Answer:
    return Answer("value", v)


def error(err: int) -> Answer:
    return Answer("error", err)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


@attrs.frozen
class Notification:
    id: int
    pid: int  # the thread that made the call
    nr: int
    args: tuple[int, ...]


class Supervisor:
    """Answers one listener's notifications from ``kernel``, until every task of the run is gone."""

    def __init__(
        self,
        boot: Callable[[], BootedKernel],
        arch: Arch,
        listener: int,
        *,
        root: str | None = None,
        host_files: Callable[[BootedKernel], object] | None = None,
        trace: Callable[[Call], None] | None = None,
        files: Placeholders | None = None,
    ) -> None:
        """``boot()`` makes the run's kernel when a call first needs it (an open of /dev/kvm,
        an ioctl on a placeholder, a stat of /dev/kvm or of the host's files), and
        ``host_files(kernel)`` then writes the host's files under ``root``: a program that
        never touches KVM never pays for the kernel model.  ``arch`` is the host's, for uname.
        ``files``: a table shared with others (a server's, which releases its files itself)."""
        self._boot, self.arch, self.listener, self.trace = boot, arch, listener, trace
        self._host_files = host_files
        self._kernel: BootedKernel | None = None
        self._files: Placeholders | None = files
        self._own_files = files is None
        self.namei = Namei(root)
        self.poller = select.poll()
        self.poller.register(listener, select.POLLIN)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self.poller.register(self._stop_r, select.POLLIN)
        self._anon = self._anon_inode_stat()
        self._handlers: dict[int, Callable[[Notification, TaskMemory], Answer]] = {
            uapi.NR[name]: getattr(self, f"sys_{name}") for name in NOTIFIED
        }
        with contextlib.suppress(OSError):  # Linux 6.6: each side is woken on the other's CPU (by value)
            fcntl.ioctl(listener, uapi.SECCOMP_IOCTL_NOTIF_SET_FLAGS, uapi.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)

    @property
    def kernel(self) -> BootedKernel:
        """The run's kernel, booted on first need, its host files written then."""
        if self._kernel is None:
            self._kernel = self._boot()
            if self._host_files is not None:
                self._host_files(self._kernel)
        return self._kernel

    @property
    def files(self) -> Placeholders:
        """The placeholders of the simulated files (made with the kernel)."""
        if self._files is None:
            self._files = Placeholders(self.kernel, on_release=self._released)
            self.poller.register(self._files.fileno(), select.POLLIN)  # released here, between calls
        return self._files

    @staticmethod
    def _anon_inode_stat() -> Kstat:
        """The inode every anon_inode file shares (a VM fd's, an eventfd's)."""
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            return Kstat.of(os.fstat(fd))
        finally:
            os.close(fd)

    # -- the loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Until the last task with the filter has exited (the listener hangs up) or stop()."""
        try:
            while True:
                for fd, events in self.poller.poll():
                    if fd == self._stop_r:
                        return
                    if fd == self.listener:
                        if events & select.POLLIN:
                            self._one()
                        elif events & (select.POLLHUP | select.POLLERR):
                            return
                    elif self._files is not None:
                        self._files.reap()
        finally:
            if self._files is not None and self._own_files:
                self._files.close()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve, name="kvmsim-seccomp", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def close(self) -> None:
        for fd in (self._stop_r, self._stop_w, self.listener):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _one(self) -> None:
        buf = bytearray(uapi.SECCOMP_NOTIF.size)
        try:
            fcntl.ioctl(self.listener, uapi.SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):  # the task died, or was signalled, first
                return
            raise
        id_, pid, _flags, nr, _arch, _ip, *args = uapi.SECCOMP_NOTIF.unpack(buf)
        n = Notification(id_, pid, nr, tuple(args))
        mem = TaskMemory(pid)
        handler = self._handlers.get(nr)
        try:
            answer = handler(n, mem) if handler is not None else CONTINUE
        except OSError:  # the task went away under us (its /proc or memory with it)
            answer = CONTINUE
        self._answer(n, answer)

    def _valid(self, n: Notification) -> bool:
        """Is the task still waiting (not killed, its pid not reused)?  Asked after reading
        its /proc and memory, before a call's side effects."""
        try:
            fcntl.ioctl(self.listener, uapi.SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", n.id))
        except OSError:
            return False
        return True

    def _answer(self, n: Notification, a: Answer) -> None:
        if a.kind == "fd":
            ours = a.fd
            addfd = uapi.SECCOMP_NOTIF_ADDFD.pack(
                n.id, uapi.SECCOMP_ADDFD_FLAG_SEND, ours, 0, os.O_CLOEXEC if a.cloexec else 0
            )
            try:
                fcntl.ioctl(self.listener, uapi.SECCOMP_IOCTL_NOTIF_ADDFD, addfd)
                return
            except OSError as exc:  # EMFILE in the program, or it is gone: answered with that
                a = error(exc.errno or errno.EBADF)
            finally:
                os.close(ours)  # the program has its own reference now, or none
        if a.kind == "continue":
            resp = uapi.SECCOMP_NOTIF_RESP.pack(n.id, 0, 0, uapi.SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        elif a.kind == "error":
            resp = uapi.SECCOMP_NOTIF_RESP.pack(n.id, 0, -a.value, 0)
        else:
            resp = uapi.SECCOMP_NOTIF_RESP.pack(n.id, a.value, 0, 0)
        with contextlib.suppress(OSError):  # ENOENT: the task was killed meanwhile
            fcntl.ioctl(self.listener, uapi.SECCOMP_IOCTL_NOTIF_SEND, resp)

    # -- placeholders -----------------------------------------------------------------------

    def _held(self, pid: int, fd: int) -> tuple[Placeholder | None, os.stat_result | None]:
        """The placeholder task ``pid``'s ``fd`` is, and what the real kernel says it is."""
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return None, None
        return (None if self._files is None else self._files.of(st)), st  # none before the first

    def _released(self, placeholder: Placeholder) -> None:
        if self.trace is not None:
            from ..preload.trace import Call  # only when traced

            self.trace(Call("kernel", "RELEASE", placeholder.sim_fd, None, None, b"", (), 0, 0, None))

    # -- ioctl(2) ---------------------------------------------------------------------------

    def sys_ioctl(self, n: Notification, mem: TaskMemory) -> Answer:
        fd, cmd, arg = _s32(n.args[0]), n.args[1] & 0xFFFFFFFF, n.args[2]
        placeholder, st = self._held(n.pid, fd)
        if placeholder is None:
            if st is not None and is_dev_kvm(st):
                return error(errno.EPERM)  # never this machine's device
            return CONTINUE
        if cmd in (FIOCLEX, FIONCLEX):
            return CONTINUE  # an fd flag: the real kernel sets it on the placeholder
        if not self._valid(n):
            return CONTINUE
        assert st is not None  # a placeholder was found by it
        window = mem.read(arg, 24) if self.trace is not None else b""
        reason = None
        try:
            _, ret, creates = self.files.ioctl(identity(st), cmd, arg, mem)
            err = 0
        except KvmError as exc:
            ret, err, reason, creates = -1, exc.errno or errno.EIO, exc.reason, False
        answer = error(err) if err else value(ret)
        if creates:
            answer = Answer("fd", fd=self.files.new(ret, is_vm=True), cloexec=True)
        if self.trace is not None:  # a Call only when traced: this is the path every ioctl takes
            from ..preload.trace import Call

            self.trace(Call(f"pid {n.pid}", "IOCTL", fd, cmd, arg, window, tuple(mem.writes), ret, err, reason))
        return answer

    # -- open(2) ----------------------------------------------------------------------------

    def _path(self, mem: TaskMemory, addr: int) -> bytes | None:
        path = mem.read_string(addr, uapi.PATH_MAX)
        return None if path is None or len(path) >= uapi.PATH_MAX else path

    def _open(self, n: Notification, mem: TaskMemory, dirfd: int, addr: int, flags: int) -> Answer:
        path = self._path(mem, addr)
        if path is None:
            return CONTINUE  # the real kernel's EFAULT or ENAMETOOLONG
        found = self.namei.lookup(n.pid, dirfd, path, follow=not flags & os.O_NOFOLLOW)
        if found.kind == "real" and not self.namei.lands_on_dev_kvm(
            n.pid, dirfd, path, follow=not flags & os.O_NOFOLLOW
        ):
            return CONTINUE
        if not self._valid(n):
            return CONTINUE
        if found.kind == "view":
            assert found.view is not None
            _ = self.kernel  # the host's files are written with it
            try:
                fd = os.open(found.view, (flags & ~os.O_CREAT) | os.O_CLOEXEC)
            except OSError as exc:
                return error(exc.errno or errno.ENOENT)
            return Answer("fd", fd=fd, cloexec=bool(flags & os.O_CLOEXEC))
        if self.kernel.kvm.loaded:  # the flags keep their meaning for a character device (the shim's kvm_open)
            if flags & os.O_CREAT and flags & os.O_EXCL:
                return error(errno.EEXIST)
            if flags & os.O_DIRECTORY:
                return error(errno.ENOTDIR)
            if flags & os.O_PATH == os.O_PATH:  # a path-only fd: no file operations, nothing to simulate
                return Answer(
                    "fd", fd=os.open("/dev/null", os.O_PATH | os.O_CLOEXEC), cloexec=bool(flags & os.O_CLOEXEC)
                )
        reason = None
        try:
            with self.files.call(mem) as process:
                ret, err = process.open(DEV_KVM, flags), 0
        except KvmError as exc:
            ret, err, reason = -1, exc.errno or errno.ENOENT, exc.reason
        if self.trace is not None:
            from ..preload.trace import Call

            self.trace(Call(f"pid {n.pid}", "OPEN", None, None, None, b"", (), ret, err, reason))
        if err:
            return error(err)
        return Answer("fd", fd=self.files.new(ret, is_vm=False, nonblock=bool(flags & os.O_NONBLOCK)),
                      cloexec=bool(flags & os.O_CLOEXEC))  # fmt: skip

    def sys_open(self, n: Notification, mem: TaskMemory) -> Answer:
        return self._open(n, mem, uapi.AT_FDCWD, n.args[0], n.args[1] & 0xFFFFFFFF)

    def sys_openat(self, n: Notification, mem: TaskMemory) -> Answer:
        return self._open(n, mem, _s32(n.args[0]), n.args[1], n.args[2] & 0xFFFFFFFF)

    def sys_openat2(self, n: Notification, mem: TaskMemory) -> Answer:
        how = mem.read(n.args[2], uapi.OPEN_HOW.size)
        if len(how) != uapi.OPEN_HOW.size or n.args[3] < uapi.OPEN_HOW.size:
            return CONTINUE  # the real kernel's EFAULT or EINVAL
        flags, _mode, _resolve = uapi.OPEN_HOW.unpack(how)
        return self._open(n, mem, _s32(n.args[0]), n.args[1], flags & 0xFFFFFFFF)

    # -- the stat family --------------------------------------------------------------------

    def _stat_of(self, n: Notification, mem: TaskMemory, dirfd: int, addr: int, flags: int) -> Kstat | int | None:
        """The simulated file's stat, an errno, or None (the real kernel answers)."""
        path = self._path(mem, addr) if addr else b""
        if path is None:
            return None
        if not path:
            if not flags & uapi.AT_EMPTY_PATH or dirfd == uapi.AT_FDCWD:
                return None
            placeholder, _ = self._held(n.pid, dirfd)
            return None if placeholder is None else self._placeholder_stat(placeholder)
        found = self.namei.lookup(n.pid, dirfd, path, follow=not flags & uapi.AT_SYMLINK_NOFOLLOW)
        if found.kind == "real":
            return None
        if found.kind == "dev-kvm":
            return self._dev_kvm_stat()
        assert found.view is not None
        _ = self.kernel  # the host's files are written with it
        try:
            return Kstat.of(os.stat(found.view, follow_symlinks=not flags & uapi.AT_SYMLINK_NOFOLLOW))
        except OSError as exc:
            return exc.errno or errno.ENOENT

    def _dev_kvm_stat(self) -> Kstat | int:
        """The simulated /dev/kvm's, or ENOENT where the host has none."""
        return dev_kvm() if self.kernel.kvm.loaded else errno.ENOENT

    def _placeholder_stat(self, placeholder: Placeholder) -> Kstat | int:
        return self._anon if placeholder.is_vm else self._dev_kvm_stat()

    def _put_stat(self, n: Notification, mem: TaskMemory, st: Kstat | int | None, buf: int) -> Answer:
        if st is None or not self._valid(n):
            return CONTINUE
        if isinstance(st, int):
            return error(st)
        try:
            mem.copy_to_user(buf, st.pack_stat())
        except Fault:
            return error(errno.EFAULT)
        return value(0)

    def sys_stat(self, n: Notification, mem: TaskMemory) -> Answer:
        return self._put_stat(n, mem, self._stat_of(n, mem, uapi.AT_FDCWD, n.args[0], 0), n.args[1])

    def sys_lstat(self, n: Notification, mem: TaskMemory) -> Answer:
        st = self._stat_of(n, mem, uapi.AT_FDCWD, n.args[0], uapi.AT_SYMLINK_NOFOLLOW)
        return self._put_stat(n, mem, st, n.args[1])

    def sys_newfstatat(self, n: Notification, mem: TaskMemory) -> Answer:
        st = self._stat_of(n, mem, _s32(n.args[0]), n.args[1], n.args[3] & 0xFFFFFFFF)
        return self._put_stat(n, mem, st, n.args[2])

    def sys_fstat(self, n: Notification, mem: TaskMemory) -> Answer:
        placeholder, _ = self._held(n.pid, _s32(n.args[0]))
        st = None if placeholder is None else self._placeholder_stat(placeholder)
        return self._put_stat(n, mem, st, n.args[1])

    def sys_statx(self, n: Notification, mem: TaskMemory) -> Answer:
        st = self._stat_of(n, mem, _s32(n.args[0]), n.args[1], n.args[2] & 0xFFFFFFFF)
        if st is None or not self._valid(n):
            return CONTINUE
        if isinstance(st, int):
            return error(st)
        try:
            mem.copy_to_user(n.args[4], st.pack_statx())
        except Fault:
            return error(errno.EFAULT)
        return value(0)

    # -- the access family ------------------------------------------------------------------

    def _access(self, n: Notification, mem: TaskMemory, dirfd: int, addr: int, mode: int, flags: int) -> Answer:
        st = self._stat_of(n, mem, dirfd, addr, flags)
        if st is None or not self._valid(n):
            return CONTINUE
        if isinstance(st, int):
            return error(st)
        return value(0)  # the simulated files are root's, and so is this check (the shim's)

    def sys_access(self, n: Notification, mem: TaskMemory) -> Answer:
        return self._access(n, mem, uapi.AT_FDCWD, n.args[0], n.args[1], 0)

    def sys_faccessat(self, n: Notification, mem: TaskMemory) -> Answer:
        return self._access(n, mem, _s32(n.args[0]), n.args[1], n.args[2], 0)

    def sys_faccessat2(self, n: Notification, mem: TaskMemory) -> Answer:
        return self._access(n, mem, _s32(n.args[0]), n.args[1], n.args[2], n.args[3] & 0xFFFFFFFF)

    # -- readlink(2), uname(2) --------------------------------------------------------------

    def _readlink(self, n: Notification, mem: TaskMemory, addr: int, buf: int, size: int) -> Answer:
        path = self._path(mem, addr)
        m = _FD_LINK.match(path or b"")
        if m is None:
            return CONTINUE
        who, task, fd = m.groups()
        owner = str(tgid(n.pid)) if who == b"self" else (
            f"{tgid(n.pid)}/task/{n.pid}" if who == b"thread-self" else who.decode()
        )  # fmt: skip
        where = f"/proc/{owner}" + (f"/task/{task.decode()}" if task else "") + f"/fd/{fd.decode()}"
        try:
            placeholder = None if self._files is None else self._files.of(os.stat(where))
        except OSError:
            return CONTINUE
        if placeholder is None or not self._valid(n):
            return CONTINUE
        size = _s32(size)
        if size <= 0:
            return error(errno.EINVAL)
        text = (VM_LINK if placeholder.is_vm else DEV_KVM).encode()[:size]
        try:
            mem.copy_to_user(buf, text)
        except Fault:
            return error(errno.EFAULT)
        return value(len(text))

    def sys_readlink(self, n: Notification, mem: TaskMemory) -> Answer:
        return self._readlink(n, mem, n.args[0], n.args[1], n.args[2])

    def sys_readlinkat(self, n: Notification, mem: TaskMemory) -> Answer:
        # only an absolute /proc/.../fd/N is answered, and an absolute path ignores dirfd
        return self._readlink(n, mem, n.args[1], n.args[2], n.args[3])

    def sys_uname(self, n: Notification, mem: TaskMemory) -> Answer:
        u = os.uname()
        fields = (u.sysname, u.nodename, u.release, u.version, self.arch.name, _domainname())
        data = b"".join(f.encode()[: uapi.UTS_FIELD - 1].ljust(uapi.UTS_FIELD, b"\0") for f in fields)
        if not self._valid(n):
            return CONTINUE
        try:
            mem.copy_to_user(n.args[0], data)
        except Fault:
            return error(errno.EFAULT)
        return value(0)


def is_listener(fd: int) -> bool:
    """Is ``fd`` a seccomp user-notification listener?  (A notification id it never issued is
    ENOENT to one, ENOTTY or EINVAL to anything else.)"""
    try:
        fcntl.ioctl(fd, uapi.SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", 0))
    except OSError as exc:
        return exc.errno == errno.ENOENT
    return True


def _domainname() -> str:
    try:
        with open("/proc/sys/kernel/domainname") as f:
            return f.read().strip()
    except OSError:
        return "(none)"
