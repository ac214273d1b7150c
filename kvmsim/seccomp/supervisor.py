"""The supervisor: a simulated kernel answering the system calls a seccomp filter sends it.

Each simulated file a program holds (an open /dev/kvm, a VM fd) is a real **placeholder** in
the program (kvmsim.intercept.placeholder, the table the preload shim's server keeps too),
installed with ``SECCOMP_IOCTL_NOTIF_ADDFD``.  A call on an fd finds its simulated file by the
placeholder's identity (the socket's dev/ino, from /proc/TID/fd/N), never by the fd number.

What the supervisor answers (the rest it lets CONTINUE, the real kernel's own answer):
- ``ioctl`` on a placeholder: the simulated kernel (``sys_ioctl``), with the argument read and
  written through ``process_vm_*`` (``taskmem``); FIOCLEX/FIONCLEX are the real kernel's, on
  the placeholder.  ``KVM_CREATE_VM`` answers with a new placeholder (``anon_inode_getfd``'s
  O_CLOEXEC).  The fd is pinned for the decision (``pidfd_getfd``), and a KVM-type ioctl
  (type 0xAE) on any file that is not a placeholder — a real /dev/kvm however it was opened,
  a real VM or vcpu — is EPERM: no call reaches this machine's device.
- ``open``/``openat``/``openat2`` of the simulated /dev/kvm (any spelling, through any
  symlink: ``namei``): a placeholder, or the simulated kernel's ENOENT; of the host's files
  (/proc/cpuinfo, /proc/device-tree, /sys/module/kvm*): the run's copy, opened here strictly
  beneath the host tree and read-only (``kernfs``, with the task's credentials deciding a
  write open), and installed in the program.  A path whose ``..`` climbs out of the host's
  files is the program's own (CONTINUE).
- the stat family (``stat``, ``lstat``, ``newfstatat``, ``statx``, ``fstat``) and the access
  family of those paths and of placeholders: /dev/kvm a character device 10:232, a VM fd the
  anon inode every anon_inode file shares; ``readlink`` of /proc/PID/fd/N of a placeholder:
  ``/dev/kvm`` or ``anon_inode:kvm-vm``; ``uname``: the host's machine.

CONTINUE re-reads the program's memory after the supervisor looked (the time-of-check race
seccomp_unotify(2) warns of): harmless here, because the filter protects nothing — a program
that rewrites its own path between the two reads only fools its own simulation, and can
never do more than it could without kvmsim (a KVM-type ioctl is never continued).

**Fail closed.**  A call the supervisor cannot inspect (the task is not dumpable and this
process lacks CAP_SYS_PTRACE, so its memory, its /proc and its fds are closed to it) is EPERM,
except an ioctl that is not KVM-type (it cannot reach KVM: CONTINUE); an fd the supervisor
cannot make is the program's EMFILE/ENFILE; any other failure of a handler is EIO, logged,
and the supervisor goes on serving.  None of them is ever CONTINUE."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import select
import stat
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..intercept.placeholder import Identity, Placeholder, Placeholders, identity, raise_fd_limit
from ..kernel.anon_inodes import DEV
from ..kernel.errors import KvmError
from ..kernel.usermem import Fault
from ..uapi import ARCHES, DEV_KVM, Arch, ByteOrder
from . import pidfd, uapi
from .kstat import Kstat, dev_kvm
from .namei import Found, Namei, tgid
from .taskmem import TaskMemory

if TYPE_CHECKING:
    from ..intercept.trace import Call
    from ..kernel.kvm_main import BootedKernel

# x86_64's (the supervisor runs there): what the real kernel does to the placeholder itself
FD_FLAG_IOCTLS = frozenset(ARCHES["x86_64"].vfs_ioctls[name] for name in ("FIOCLEX", "FIONCLEX"))
KVMIO = 0xAE  # include/uapi/linux/kvm.h: the type of every KVM ioctl, on every architecture
_FD_LINK = re.compile(rb"^/proc/(self|thread-self|\d+)(?:/task/(\d+))?/fd/(\d+)$")
NOTIFIED = ("ioctl", "open", "openat", "openat2", "stat", "lstat", "newfstatat", "statx", "fstat",
            "access", "faccessat", "faccessat2", "readlink", "readlinkat", "uname")  # fmt: skip


@attrs.frozen
class Response:
    """How a notification is answered: CONTINUE, a value, an errno, or a new fd."""

    kind: str  # "continue", "value", "error", "fd"
    value: int = 0
    fd: int = -1  # "fd": the supervisor's descriptor to install
    cloexec: bool = False
    # "fd" into the call's argument (KVM_CREATE_DEVICE): where the installed number goes, a u32 in
    # ``byteorder`` (the call answers 0), and the task's memory to write it to
    field_at: int | None = None
    byteorder: ByteOrder = "little"
    mem: TaskMemory | None = None


CONTINUE = Response("continue")


def value(v: int) -> Response:
    return Response("value", v)


def error(err: int) -> Response:
    return Response("error", err)


def _inspection_errno(err: int | None) -> int:
    """The program's errno when a handler's own system call failed: EPERM where the task may
    not be inspected (ptrace access: process_vm_readv, pidfd_getfd, /proc/PID/fd), EMFILE or
    ENFILE where no fd could be made for it, ESRCH where it is gone, else EIO."""
    if err in (errno.EPERM, errno.EACCES):
        return errno.EPERM
    if err in (errno.EMFILE, errno.ENFILE, errno.ESRCH):
        return err
    return errno.EIO


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
        placeholders: Placeholders | None = None,
    ) -> None:
        """``boot()`` makes the run's kernel when a call first needs it (an open of /dev/kvm,
        an ioctl on a placeholder, a stat of /dev/kvm or of the host's files), and
        ``host_files(kernel)`` then writes the host's files under ``root``: a program that
        never touches KVM never pays for the kernel model.  ``arch`` is the host's, for uname.
        ``placeholders``: a table shared with others (a server's, which releases its files itself)."""
        self._boot, self.arch, self.listener, self.trace = boot, arch, listener, trace
        self.owner = f"listener {listener} of pid {os.getpid()}"  # its programs' share of a shared table
        self.pidfds = pidfd.Pidfds()  # the threads' pidfds, kept between their calls
        raise_fd_limit()
        self._host_files = host_files
        self._kernel: BootedKernel | None = None
        self._placeholders: Placeholders | None = placeholders
        self._own_placeholders = placeholders is None
        self.namei = Namei(root)
        self.poller = select.poll()
        self.poller.register(listener, select.POLLIN)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self.poller.register(self._stop_r, select.POLLIN)
        self._anon = self._anon_inode_stat()
        self._handlers: dict[int, Callable[[Notification, TaskMemory], Response]] = {
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
    def placeholders(self) -> Placeholders:
        """The placeholders of the simulated files (made with the kernel)."""
        if self._placeholders is None:
            self._placeholders = Placeholders(self.kernel, on_release=self._released)
            self.poller.register(self._placeholders.fileno(), select.POLLIN)  # released here, between calls
        return self._placeholders

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
                    elif self._placeholders is not None:
                        self._placeholders.reap()
        finally:
            if self._placeholders is not None and self._own_placeholders:
                self._placeholders.close()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve, name="kvmsim-seccomp", daemon=True)
        t.start()
        return t

    @property
    def stopping(self) -> int:
        """Readable once :meth:`stop` was called (another loop may watch it too)."""
        return self._stop_r

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def close(self) -> None:
        self.pidfds.close()
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
        handler = self._handlers.get(nr)
        if handler is None:  # the filter sends nothing else; never let an unknown call through
            answer = self._failed(n, errno.ENOSYS, f"system call {nr} is not the supervisor's")
        else:
            try:
                answer = handler(n, TaskMemory(pid))
            except OSError as exc:  # the task could not be inspected, or went away under us
                answer = self._failed(n, _inspection_errno(exc.errno), f"pid {pid}: {exc.strerror or exc}")
            except Exception as exc:  # a supervisor never dies of one call: EIO, logged, go on
                import logging  # only when a handler failed: logging stays off the start-up path

                logging.getLogger("kvmsim.seccomp").exception("pid %d: %s failed", pid, uapi.NAME_OF_NR.get(nr, nr))
                answer = self._failed(n, errno.EIO, f"the supervisor failed: {type(exc).__name__}: {exc}")
        self._answer(n, answer)

    def _failed(self, n: Notification, err: int, why: str) -> Response:
        """The errno for a call the supervisor could not answer (never CONTINUE), traced with why."""
        if self.trace is not None:
            from ..intercept.trace import Call

            name = uapi.NAME_OF_NR.get(n.nr, str(n.nr)).upper()
            self.trace(Call(f"pid {n.pid}", name, None, None, None, b"", (), -1, err, why))
        return error(err)

    def _valid(self, n: Notification) -> bool:
        """Is the task still waiting (not killed, its pid not reused)?  Asked after reading
        its /proc and memory, before a call's side effects."""
        try:
            fcntl.ioctl(self.listener, uapi.SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", n.id))
        except OSError:
            return False
        return True

    def _answer(self, n: Notification, a: Response) -> None:
        if a.kind == "fd":
            ours = a.fd
            send = uapi.SECCOMP_ADDFD_FLAG_SEND if a.field_at is None else 0
            addfd = uapi.SECCOMP_NOTIF_ADDFD.pack(n.id, send, ours, 0, os.O_CLOEXEC if a.cloexec else 0)
            try:
                theirs = fcntl.ioctl(self.listener, uapi.SECCOMP_IOCTL_NOTIF_ADDFD, bytearray(addfd), True)
                if a.field_at is None:
                    return
                assert a.mem is not None  # the number into the struct, as the kernel's copy_to_user
                try:
                    a.mem.copy_to_user(a.field_at, theirs.to_bytes(4, a.byteorder))
                    a = value(0)
                except Fault:  # the program unmapped it meanwhile: the fd stays, as the kernel's would
                    a = error(errno.EFAULT)
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
        """The placeholder task ``pid``'s ``fd`` is, and what the real kernel says it is
        (:meth:`_pinned_stat`); (None, None) where the task has no such fd.  OSError (EPERM)
        where the task may not be inspected."""
        st = self._pinned_stat(pid, fd)
        if st is None:
            return None, None
        return (None if self._placeholders is None else self._placeholders.of(st)), st  # none before the first

    def _pinned_stat(self, pid: int, fd: int) -> os.stat_result | None:
        """The stat of the very file task ``pid``'s ``fd`` is, pinned (``pidfd_getfd``); None where
        the task has no such fd.  OSError (EPERM) where the task may not be inspected."""
        try:
            pinned = self.pidfds.getfd(pid, fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return None
            raise
        try:
            return os.fstat(pinned)
        finally:
            os.close(pinned)

    def _fd_identity(self, pid: int, fd: int) -> Identity | None:
        """What task ``pid``'s ``fd`` (an fd an ioctl's argument names) is; None where it has none.
        A task that may not be inspected fails closed.  Called under the placeholders' lock: the
        pinned file's identity only, no lookup of its own."""
        try:
            st = self._pinned_stat(pid, fd)
        except OSError as exc:
            raise KvmError(_inspection_errno(exc.errno), f"fd {fd} of pid {pid} cannot be inspected") from None
        return None if st is None else identity(st)

    def _released(self, placeholder: Placeholder) -> None:
        if self.trace is not None:
            from ..intercept.trace import Call  # only when traced

            self.trace(Call("kernel", "RELEASE", placeholder.sim_fd, None, None, b"", (), 0, 0, None))

    # -- ioctl(2) ---------------------------------------------------------------------------

    def sys_ioctl(self, n: Notification, mem: TaskMemory) -> Response:
        fd, cmd, arg = _s32(n.args[0]), n.args[1] & 0xFFFFFFFF, n.args[2]
        kvm_type = (cmd >> 8) & 0xFF == KVMIO
        try:
            placeholder, st = self._held(n.pid, fd)
        except OSError:
            if kvm_type:
                raise  # fail closed: EPERM
            return CONTINUE  # not a KVM ioctl: whatever the file, it cannot reach KVM
        if placeholder is None:
            if kvm_type:  # a real /dev/kvm, a real VM or vcpu, anything: never this machine's KVM
                _ = self.kernel  # (a standby's, whose server is gone, raises EIO here)
                return self._failed(n, errno.EBADF if st is None else errno.EPERM, f"fd {fd} is no simulated file")
            return CONTINUE
        if cmd in FD_FLAG_IOCTLS and placeholder.sim_fd >= 0:
            return CONTINUE  # an fd flag: the real kernel sets it on the placeholder
        if not self._valid(n):
            return error(errno.ESRCH)  # the task is gone: nobody reads the answer
        assert st is not None  # a placeholder was found by it
        window = mem.read(arg, 24) if self.trace is not None else b""
        reason = None
        try:
            _, ret, creates, field = self.placeholders.ioctl(
                identity(st), cmd, arg, mem, tgid(n.pid), functools.partial(self._fd_identity, n.pid)
            )
            err = 0
        except KvmError as exc:
            ret, err, reason, creates, field = -1, exc.errno or errno.EIO, exc.reason, False, None
        answer = error(err) if err else value(ret)
        if creates:
            try:
                answer = self._new_file(ret, cloexec=True)
                if field is not None:
                    answer = attrs.evolve(answer, field_at=arg + field, byteorder=self.kernel.arch.byteorder, mem=mem)
            except OSError:  # no placeholder for it (EMFILE, ENFILE): the new VM is released
                with contextlib.suppress(KvmError), self.placeholders.call(mem) as process:
                    process.close(ret)
                raise
        if self.trace is not None:  # a Call only when traced: this is the path every ioctl takes
            from ..intercept.trace import Call

            shown = 0 if creates and field is not None else ret  # the new fd went into the struct: 0
            self.trace(Call(f"pid {n.pid}", "IOCTL", fd, cmd, arg, window, tuple(mem.writes), shown, err, reason))
        return answer

    # -- open(2) ----------------------------------------------------------------------------

    def _path(self, mem: TaskMemory, addr: int) -> bytes | None:
        path = mem.read_string(addr, uapi.PATH_MAX)
        return None if path is None or len(path) >= uapi.PATH_MAX else path

    def _open(self, n: Notification, mem: TaskMemory, dirfd: int, addr: int, flags: int, resolve: int = 0) -> Response:
        path = self._path(mem, addr)
        if path is None:
            return CONTINUE  # the real kernel's EFAULT or ENAMETOOLONG
        follow = not flags & os.O_NOFOLLOW
        found = self.namei.lookup(n.pid, dirfd, path, follow=follow, resolve=resolve)
        if found.kind == "real" and (resolve or not self.namei.lands_on_dev_kvm(n.pid, dirfd, path, follow=follow)):
            return CONTINUE  # a KVM ioctl on what the real kernel opens is refused (sys_ioctl)
        if not self._valid(n):
            return error(errno.ESRCH)  # the task is gone: nobody reads the answer
        if found.kind == "view":
            return self._open_view(n, found, flags)
        cloexec = bool(flags & os.O_CLOEXEC)
        if self.kernel.kvm.loaded:  # the flags keep their meaning for a character device (the shim's kvm_open)
            if flags & os.O_CREAT and flags & os.O_EXCL:
                return error(errno.EEXIST)
            if found.slash:
                return error(errno.EISDIR if flags & os.O_CREAT else errno.ENOTDIR)
            if flags & os.O_DIRECTORY:
                return error(errno.ENOTDIR)
            if flags & os.O_PATH == os.O_PATH:  # a path-only fd: every ioctl EBADF, stat as /dev/kvm
                return self._new_file(-1, cloexec=cloexec)
        reason = None
        try:
            with self.placeholders.call(mem) as process:
                ret, err = process.open(DEV_KVM, flags), 0
        except KvmError as exc:
            ret, err, reason = -1, exc.errno or errno.ENOENT, exc.reason
        if self.trace is not None:
            from ..intercept.trace import Call

            self.trace(Call(f"pid {n.pid}", "OPEN", None, None, None, b"", (), ret, err, reason, os.fsdecode(path)))
        if err:
            return error(err)
        try:
            return self._new_file(ret, cloexec=cloexec, nonblock=bool(flags & os.O_NONBLOCK))
        except OSError:
            with contextlib.suppress(KvmError), self.placeholders.call(mem) as process:
                process.close(ret)
            raise

    def _new_file(self, sim_fd: int, *, cloexec: bool, nonblock: bool = False) -> Response:
        """A placeholder for ``sim_fd`` to install; the program's EMFILE or ENFILE where this
        process or the program's share of the table is out of descriptors (``Placeholders``)."""
        return Response("fd", fd=self.placeholders.new(sim_fd, nonblock=nonblock, owner=self.owner), cloexec=cloexec)

    def _open_view(self, n: Notification, found: Found, flags: int) -> Response:
        """A host file, beneath the host tree, read-only, as the task's credentials allow."""
        assert found.base is not None
        _ = self.kernel  # the host's files are written with it
        try:
            from . import cred, kernfs  # the host's files: only when a program opens one

            fd = kernfs.open_file(found.base, found.beneath, flags, cred.of_task(n.pid))
        except OSError as exc:
            return error(exc.errno or errno.EIO)
        return Response("fd", fd=fd, cloexec=bool(flags & os.O_CLOEXEC))

    def sys_open(self, n: Notification, mem: TaskMemory) -> Response:
        return self._open(n, mem, uapi.AT_FDCWD, n.args[0], n.args[1] & 0xFFFFFFFF)

    def sys_openat(self, n: Notification, mem: TaskMemory) -> Response:
        return self._open(n, mem, _s32(n.args[0]), n.args[1], n.args[2] & 0xFFFFFFFF)

    def sys_openat2(self, n: Notification, mem: TaskMemory) -> Response:
        """``copy_struct_from_user`` and ``build_open_how``'s checks are path-free: where they
        fail, the real kernel answers (CONTINUE); the lookup honours ``resolve``."""
        size = n.args[3]
        if size < uapi.OPEN_HOW_SIZE_VER0 or size > 4096:
            return CONTINUE  # EINVAL, E2BIG
        how = mem.read(n.args[2], size)
        if len(how) != size or any(how[uapi.OPEN_HOW.size :]):
            return CONTINUE  # EFAULT, E2BIG (a non-zero tail)
        flags, mode, resolve = uapi.OPEN_HOW.unpack_from(how)
        if flags >> 32 or resolve & ~uapi.VALID_RESOLVE_FLAGS or mode & ~0o7777:
            return CONTINUE  # EINVAL
        if mode and not flags & (os.O_CREAT | uapi.O_TMPFILE_BIT):
            return CONTINUE  # EINVAL
        if resolve & uapi.RESOLVE_BENEATH and resolve & uapi.RESOLVE_IN_ROOT:
            return CONTINUE  # EINVAL
        return self._open(n, mem, _s32(n.args[0]), n.args[1], flags, resolve or 0)

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
        follow = not flags & uapi.AT_SYMLINK_NOFOLLOW
        found = self.namei.lookup(n.pid, dirfd, path, follow=follow)
        if found.kind == "real":
            return None
        if found.kind == "dev-kvm":
            st = self._dev_kvm_stat()
            return errno.ENOTDIR if found.slash and not isinstance(st, int) else st
        assert found.base is not None
        _ = self.kernel  # the host's files are written with it
        try:
            from . import kernfs

            return kernfs.stat_file(found.base, found.beneath, follow=follow)
        except OSError as exc:
            return exc.errno or errno.ENOENT

    def _dev_kvm_stat(self) -> Kstat | int:
        """The simulated /dev/kvm's, or ENOENT where the host has none."""
        return dev_kvm() if self.kernel.kvm.loaded else errno.ENOENT

    def _placeholder_stat(self, placeholder: Placeholder) -> Kstat | int:
        return self._dev_kvm_stat() if placeholder.kind is DEV else self._anon

    def _put_stat(self, n: Notification, mem: TaskMemory, st: Kstat | int | None, buf: int) -> Response:
        if st is None:
            return CONTINUE
        if not self._valid(n):
            return error(errno.ESRCH)
        if isinstance(st, int):
            return error(st)
        try:
            mem.copy_to_user(buf, st.pack_stat())
        except Fault:
            return error(errno.EFAULT)
        return value(0)

    def sys_stat(self, n: Notification, mem: TaskMemory) -> Response:
        return self._put_stat(n, mem, self._stat_of(n, mem, uapi.AT_FDCWD, n.args[0], 0), n.args[1])

    def sys_lstat(self, n: Notification, mem: TaskMemory) -> Response:
        st = self._stat_of(n, mem, uapi.AT_FDCWD, n.args[0], uapi.AT_SYMLINK_NOFOLLOW)
        return self._put_stat(n, mem, st, n.args[1])

    def sys_newfstatat(self, n: Notification, mem: TaskMemory) -> Response:
        st = self._stat_of(n, mem, _s32(n.args[0]), n.args[1], n.args[3] & 0xFFFFFFFF)
        return self._put_stat(n, mem, st, n.args[2])

    def sys_fstat(self, n: Notification, mem: TaskMemory) -> Response:
        placeholder, _ = self._held(n.pid, _s32(n.args[0]))
        st = None if placeholder is None else self._placeholder_stat(placeholder)
        return self._put_stat(n, mem, st, n.args[1])

    def sys_statx(self, n: Notification, mem: TaskMemory) -> Response:
        st = self._stat_of(n, mem, _s32(n.args[0]), n.args[1], n.args[2] & 0xFFFFFFFF)
        if st is None:
            return CONTINUE
        if not self._valid(n):
            return error(errno.ESRCH)
        if isinstance(st, int):
            return error(st)
        try:
            mem.copy_to_user(n.args[4], st.pack_statx())
        except Fault:
            return error(errno.EFAULT)
        return value(0)

    # -- the access family ------------------------------------------------------------------

    def _access(self, n: Notification, mem: TaskMemory, dirfd: int, addr: int, mode: int, flags: int) -> Response:
        st = self._stat_of(n, mem, dirfd, addr, flags)
        if st is None:
            return CONTINUE
        if not self._valid(n):
            return error(errno.ESRCH)
        if isinstance(st, int):
            return error(st)
        if stat.S_ISCHR(st.mode) or st is self._anon:
            return value(0)  # the simulated /dev/kvm opens for every user: so does its access (the shim's)
        from . import cred, kernfs

        err = kernfs.may_access(st, cred.of_task(n.pid), mode, eaccess=bool(flags & uapi.AT_EACCESS))
        return error(err) if err else value(0)  # a host file: as generic_permission() decides for the task

    def sys_access(self, n: Notification, mem: TaskMemory) -> Response:
        return self._access(n, mem, uapi.AT_FDCWD, n.args[0], n.args[1], 0)

    def sys_faccessat(self, n: Notification, mem: TaskMemory) -> Response:
        return self._access(n, mem, _s32(n.args[0]), n.args[1], n.args[2], 0)

    def sys_faccessat2(self, n: Notification, mem: TaskMemory) -> Response:
        return self._access(n, mem, _s32(n.args[0]), n.args[1], n.args[2], n.args[3] & 0xFFFFFFFF)

    # -- readlink(2), uname(2) --------------------------------------------------------------

    def _readlink(self, n: Notification, mem: TaskMemory, addr: int, buf: int, size: int) -> Response:
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
            placeholder = None if self._placeholders is None else self._placeholders.of(os.stat(where))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                return error(exc.errno)  # a task's fds it may not read: never ours to reveal
            return CONTINUE  # no such fd: the real kernel's ENOENT
        if placeholder is None:
            return CONTINUE
        if not self._valid(n):
            return error(errno.ESRCH)
        size = _s32(size)
        if size <= 0:
            return error(errno.EINVAL)
        text = placeholder.link.encode()[:size]
        try:
            mem.copy_to_user(buf, text)
        except Fault:
            return error(errno.EFAULT)
        return value(len(text))

    def sys_readlink(self, n: Notification, mem: TaskMemory) -> Response:
        return self._readlink(n, mem, n.args[0], n.args[1], n.args[2])

    def sys_readlinkat(self, n: Notification, mem: TaskMemory) -> Response:
        # only an absolute /proc/.../fd/N is answered, and an absolute path ignores dirfd
        return self._readlink(n, mem, n.args[1], n.args[2], n.args[3])

    def sys_uname(self, n: Notification, mem: TaskMemory) -> Response:
        u = os.uname()
        fields = (u.sysname, u.nodename, u.release, u.version, self.arch.name, _domainname())
        data = b"".join(f.encode()[: uapi.UTS_FIELD - 1].ljust(uapi.UTS_FIELD, b"\0") for f in fields)
        if not self._valid(n):
            return error(errno.ESRCH)
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


class SeccompSupervision:
    """The seccomp way of catching calls, as the interception core's server takes it
    (kvmsim.intercept.server.Supervision): ``kvmsim serve`` gives the server one, so a program
    ``kvmsim run --server`` starts under the filter is supervised from the served kernel."""

    def unavailable(self) -> str | None:
        from .launch import unavailable

        return unavailable()

    def is_listener(self, fd: int) -> bool:
        return is_listener(fd)

    def supervisor(
        self,
        listener: int,
        kernel: BootedKernel,
        placeholders: Placeholders,
        root: str | None,
        trace: Callable[[Call], None] | None,
    ) -> Supervisor:
        return Supervisor(lambda: kernel, kernel.arch, listener, root=root, placeholders=placeholders, trace=trace)
