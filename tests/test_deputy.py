"""The deputy rule (issue "Fail closed"): the supervisor and the server act for a program, often
as root, and never with more than the program's own rights; every error on a path they own
answers the program with an errno — never CONTINUE, never a dead supervisor, never this
machine's device.  One test (or table) per attack; the uid ones run the victim run as root and
the attacker with setpriv --reuid=65534, and skip where this is not root."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ERRNO_OF, needs_seccomp

from kvmsim import Kernel
from kvmsim.intercept import placeholder, server, trust, wire
from kvmsim.intercept.command import host_view
from kvmsim.kernel import hostfs
from kvmsim.seccomp import cred, kernfs, uapi
from kvmsim.seccomp.kstat import Kstat
from kvmsim.seccomp.launch import the_filter
from kvmsim.seccomp.supervisor import Notification, Supervisor
from kvmsim.seccomp.taskmem import TaskMemory

KVMSIM = Path(sys.executable).with_name("kvmsim")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the victim's run is root's")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
UP = "/proc/device-tree/" + "../" * 24  # climbs out of the host's files, then to / (and stays)


def run(
    *command: str, intercept: str = "seccomp", wrapper: tuple[str, ...] = (), timeout: float = 60, **options: Any
) -> subprocess.CompletedProcess[str]:
    """``kvmsim run --host powervm-p11 --intercept INTERCEPT -- COMMAND``, under ``wrapper``
    (setpriv, prlimit), with subprocess's ``options`` (pass_fds=, env=)."""
    return subprocess.run(
        [*wrapper, str(KVMSIM), "run", "--host", "powervm-p11", "--intercept", intercept, "--", *command],
        capture_output=True, text=True, timeout=timeout, **options,
    )  # fmt: skip


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[Path]:
    """A root 0600 file in a directory the attacker may search."""
    tmp_path.chmod(0o755)
    f = tmp_path / "secret"
    f.write_text("root only\n")
    f.chmod(0o600)
    yield f


# -- 1. the host's files: beneath the host tree, read-only, the task's rights -------------------


@needs_seccomp
@as_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv here")
def test_an_unprivileged_child_cannot_read_list_or_append_to_roots_files_through_the_device_tree(
    secret: Path,
) -> None:
    script = (
        f"cat {UP}{secret}; echo read=$?; ls {UP}root >/dev/null; echo list=$?; "
        f"echo pwned >> {UP}{secret}; echo append=$?"
    )
    r = run(*NOBODY, "sh", "-c", script)
    assert "root only" not in r.stdout
    assert "read=1" in r.stdout and "list=2" in r.stdout and "append=2" in r.stdout, r.stdout + r.stderr
    assert secret.read_text() == "root only\n"


@needs_seccomp
@as_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv here")
def test_the_same_through_a_server_supervising_the_program(secret: Path, tmp_path: Path) -> None:
    sock = tmp_path / "kvmsim.sock"
    serve = subprocess.Popen([str(KVMSIM), "serve", "--host", "powervm-p11", "--socket", str(sock)])
    try:
        for _ in range(300):
            if sock.exists():
                break
            time.sleep(0.05)
        r = subprocess.run(
            [str(KVMSIM), "run", "--server", str(sock), "--", *NOBODY, "sh", "-c",
             f"cat {UP}{secret}; echo pwned >> {UP}{secret}; cat /proc/device-tree/cpus/*/name"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert "root only" not in r.stdout and secret.read_text() == "root only\n"
    assert "PowerPC,POWER11" in r.stdout, r.stderr  # the host's own files still served


@needs_seccomp
def test_write_opens_of_the_host_files_are_what_procfs_and_sysfs_answer() -> None:
    """Root here (as the real kernel lets root open /proc/cpuinfo for writing, kvmsim refuses
    it with sysfs's EACCES: SECURITY.md); the copy is never changed."""
    probe = (
        "import os\n"
        "def o(p, f):\n"
        "    try:\n"
        "        os.close(os.open(p, f)); return 'ok'\n"
        "    except OSError as e:\n"
        "        return e.errno\n"
        "c = '/proc/cpuinfo'; d = '/proc/device-tree/cpus'\n"
        "print(o(c, os.O_WRONLY), o(c, os.O_RDWR | os.O_APPEND), o(c, os.O_RDONLY | os.O_CREAT | os.O_EXCL),"
        " o(d, os.O_WRONLY), o(d + '/new', os.O_RDONLY | os.O_CREAT), o(c + '/', os.O_RDONLY),"
        " o(c, os.O_RDONLY | os.O_TRUNC))\n"
        "print(open(c).read().startswith('processor'))\n"
    )
    r = run(sys.executable, "-c", probe)
    acc, exist, isdir, notdir = errno.EACCES, errno.EEXIST, errno.EISDIR, errno.ENOTDIR
    trunc = "ok" if os.geteuid() == 0 else acc
    assert r.stdout.split("\n")[:2] == [f"{acc} {acc} {exist} {isdir} {acc} {notdir} {trunc}", "True"], r.stderr


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    kernel = Kernel.from_profile("powervm-p11")
    root = tmp_path / "root"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hostfs.write_tree(hostfs.files(kernel), fd)
    finally:
        os.close(fd)
    return root


ROOT_CRED = cred.Cred(0, 0, (1 << 41) - 1, (1 << 41) - 1)
NOBODY_CRED = cred.Cred(65534, 65534, 0, 0)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (b"device-tree/../../../../../../etc/passwd", errno.EXDEV),  # climbs out: refused by openat2 itself
        (b"/etc/passwd", errno.EXDEV),
        (b"device-tree/link", errno.ELOOP),  # a symlink planted in the copy
        (b"device-tree/cpus/../link", errno.ELOOP),
    ],
)
def test_kernfs_opens_nothing_outside_the_host_tree(tree: Path, path: bytes, why: int) -> None:
    (tree / "proc" / "device-tree" / "link").symlink_to("/etc/passwd")
    with pytest.raises(OSError) as exc:
        kernfs.open_file(str(tree / "proc"), path, os.O_RDONLY, ROOT_CRED)
    assert exc.value.errno == why


@pytest.mark.parametrize(
    ("who", "mask", "eaccess", "want"),
    [
        (ROOT_CRED, os.W_OK, False, 0),  # generic_permission: CAP_DAC_OVERRIDE
        (ROOT_CRED, os.X_OK, False, errno.EACCES),  # no x bit: not even root
        (NOBODY_CRED, os.R_OK, False, 0),
        (NOBODY_CRED, os.W_OK, False, errno.EACCES),
        (cred.Cred(65534, 0, 0, (1 << 41) - 1), os.W_OK, False, errno.EACCES),  # access(2): the real uid
        (cred.Cred(65534, 0, 0, (1 << 41) - 1), os.W_OK, True, 0),  # AT_EACCESS: the effective ones
    ],
)
def test_access_to_a_host_file_is_decided_with_the_tasks_credentials(
    who: cred.Cred, mask: int, eaccess: bool, want: int
) -> None:
    assert kernfs.may_access(Kstat(stat.S_IFREG | 0o444), who, mask, eaccess=eaccess) == want


# -- 2. a task the supervisor may not inspect -------------------------------------------------

NOT_DUMPABLE = """
import ctypes, fcntl, os
ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE, 0
def errno_of(f):
    try:
        return f()
    except OSError as exc:
        return exc.errno
print(errno_of(lambda: os.uname().machine), errno_of(lambda: os.open("/proc/cpuinfo", os.O_RDONLY) and "fd"),
      errno_of(lambda: os.open("/dev/kvm", os.O_RDWR) and "fd"))
"""


@needs_seccomp
@as_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv here")
def test_a_non_dumpable_program_is_answered_eperm_never_this_machine() -> None:
    """The run without CAP_SYS_PTRACE (a non-root user's): process_vm_readv, pidfd_getfd and
    /proc/PID/fd are closed to it.  Was: uname x86_64, this machine's cpuinfo, the real /dev/kvm."""
    r = run(
        sys.executable, "-c", NOT_DUMPABLE, wrapper=("setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace")
    )
    assert r.stdout.split() == [str(errno.EPERM)] * 3, r.stdout + r.stderr


# -- 3. the real /dev/kvm, however reached ----------------------------------------------------

WAYS_IN = """
import ctypes, errno, fcntl, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def cap(fd):
    try:
        return fcntl.ioctl(fd, 0x2000AE03, 250)
    except OSError as exc:
        return errno.errorcode[exc.errno]
out = []
# openat2(dirfd of /dev, "/kvm", RESOLVE_IN_ROOT)
dev = os.open("/dev", os.O_PATH | os.O_DIRECTORY)
how = struct.pack("=QQQ", os.O_RDWR, 0, 0x10)
fd = libc.syscall(437, dev, b"/kvm", how, 24)
out.append(cap(fd) if fd >= 0 else errno.errorcode[ctypes.get_errno()])
# a device node of the right numbers, anywhere
node = sys.argv[1]
os.mknod(node, 0o600 | 0o020000, os.makedev(10, 232))
out.append(cap(os.open(node, os.O_RDWR)))
# io_uring, whose SQEs open and ioctl unseen
params = ctypes.create_string_buffer(120)
r = libc.syscall(425, 8, params)
out.append("ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
# a real VM fd brought in
out.append(cap(int(sys.argv[2])))
print(*out)
"""


@needs_seccomp
@as_root
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm here")
def test_every_way_to_the_real_device_answers_the_simulated_kernel_or_eperm(tmp_path: Path) -> None:
    import fcntl

    real = os.open("/dev/kvm", os.O_RDWR)
    vm = fcntl.ioctl(real, 0xAE01, 0)  # KVM_CREATE_VM on this machine's device
    try:
        r = run(sys.executable, "-c", WAYS_IN, str(tmp_path / "kvm-node"), str(vm), pass_fds=(vm,))
    finally:
        os.close(vm)
        os.close(real)
    assert r.stdout.split() == ["1", "1", "ENOSYS", "EPERM"], r.stdout + r.stderr


RACE = """
import fcntl, os, sys, threading
real, null = int(sys.argv[1]), os.open("/dev/null", os.O_RDWR)
target = os.dup(null)
stop = False
def swap():
    while not stop:
        os.dup2(real, target)
        os.dup2(null, target)
t = threading.Thread(target=swap)
t.start()
seen = set()
for _ in range(20000):
    try:
        seen.add(fcntl.ioctl(target, 0xAE03, 3))  # x86 KVM_CHECK_EXTENSION(USER_MEMORY): the real one says 1
    except OSError as exc:
        seen.add(exc.errno)
stop = True
t.join()
print(sorted(seen))
"""


@needs_seccomp
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm here")
def test_a_dup2_racing_the_decision_never_reaches_the_real_device() -> None:
    """N swaps between /dev/null and the real /dev/kvm while another thread asks a KVM ioctl
    on it (was: /dev/null seen, CONTINUE, the real device answered 1).  The fd is pinned
    (pidfd_getfd) and a KVM-type ioctl on anything but a placeholder is EPERM."""
    real = os.open("/dev/kvm", os.O_RDWR)
    try:
        r = run(sys.executable, "-c", RACE, str(real), timeout=120, pass_fds=(real,))
    finally:
        os.close(real)
    assert r.stdout.strip() == str([errno.EPERM]), r.stdout + r.stderr


def test_io_uring_is_refused_by_the_filter() -> None:
    from kvmsim.seccomp import bpf

    for nr in uapi.IO_URING_NRS:
        assert bpf.run_filter(the_filter(), nr) == uapi.SECCOMP_RET_ERRNO | errno.ENOSYS


# -- 4. a stalled client stalls itself only ----------------------------------------------------


def test_a_client_that_stops_answering_costs_that_client_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client A's ioctl needs a MEM_READ it never answers; client B's calls go on at once
    (was: the table's lock held until A answered), and A's connection ends at CLIENT_DEADLINE."""
    from test_hardening import call, connect, ioctl, open_vm, read_frame

    monkeypatch.setattr(server, "CLIENT_DEADLINE", 4.0)
    kernel = Kernel.from_profile("powervm-p11")
    with server.Server(kernel, tmp_path / "s.sock") as srv:
        a, b = connect(srv), connect(srv)
        vm_a = open_vm(a)
        a.sendall(wire.frame(wire.Msg.IOCTL, ioctl(vm_a, 0x2000AEB8, 0x10000)))  # the compat-caps struct, no window
        assert read_frame(a)[0] == wire.Msg.MEM_READ  # A now stalls, inside its call
        started = time.monotonic()
        vm_b = open_vm(b)  # an OPEN and a KVM_CREATE_VM while A's call waits
        assert time.monotonic() - started < 2.0  # was: behind A's stall, until A's deadline (4 s here)
        assert a.recv(1) == b""  # the deadline closed A's connection, A's only
        assert call(b, wire.Msg.IOCTL, ioctl(vm_b, 0x2000AE03, 250)) == (1, 0)
        for fd in (vm_a, vm_b):
            os.close(fd)
        a.close()
        b.close()


# -- 5. no exception kills a supervisor ---------------------------------------------------------


@needs_seccomp
def test_a_host_file_dated_1960_is_stat_as_the_kernel_does_and_the_supervisor_lives(tmp_path: Path) -> None:
    """Was: struct.error packing a negative time, the supervisor thread dead, the run hung."""
    from test_seccomp import supervised_view

    probe = "import os\nprint(int(os.stat('/proc/cpuinfo').st_mtime), os.uname().machine)\n"
    kernel = Kernel.from_profile("powervm-p11")
    workdir = trust.temp_dir("kvmsim-run-")
    try:
        view = host_view(kernel, workdir.subdir("root"))
        os.utime(os.path.join(view, "proc", "cpuinfo"), (-315619200, -315619200))
        code, out = supervised_view(kernel, view, [sys.executable, "-c", probe], tmp_path)
    finally:
        workdir.remove()
    assert (code, out.split()) == (0, ["-315619200", "ppc64le"])


class _Probe(Supervisor):
    """The supervisor's handlers asked directly for a live task (the notification is made
    up, so its id is never valid to the kernel: ``_valid`` is taken as true)."""

    def _valid(self, n: Notification) -> bool:
        return True


def _handled(sup: Supervisor, n: Notification) -> object:
    """What ``_one`` answers for ``n`` (its exception handling included), the fd closed."""
    from kvmsim.seccomp.supervisor import CONTINUE, Response

    handler = sup._handlers[n.nr]
    try:
        answer = handler(n, TaskMemory(n.pid))
    except OSError as exc:
        answer = Response("error", exc.errno or 0)
    except Exception as exc:  # what _one turns into EIO: a handler must not get here
        raise AssertionError(f"{handler.__name__} raised {exc!r}") from exc
    if answer.kind == "fd":
        st = os.fstat(answer.fd)
        os.close(answer.fd)
        assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(10, 232)), "a real KVM device"
    assert answer == CONTINUE or answer.kind in ("value", "error", "fd")
    return answer


def _start_stack(pid: int) -> int:
    """The task's startstack (/proc/PID/stat): the parent may see its exec done (the CLOEXEC pipe
    closed) before load_elf_binary sets it, and reads 0 meanwhile -- a flake under load before."""
    for _ in range(500):
        with open(f"/proc/{pid}/stat") as f:
            stack = int(f.read().rsplit(")", 1)[1].split()[25])
        if stack:
            return stack
        time.sleep(0.01)
    raise AssertionError(f"pid {pid}: no start of stack after 5 s")


@needs_seccomp
def test_every_handler_answers_hostile_values_with_an_errno_a_value_or_continue(tree: Path) -> None:
    """The property: random arguments (pointers into the task's real memory, its stack, NULL,
    kernel addresses; fds; flags) and random host-file states (times before 1970 and past
    2038, sizes, modes, a planted symlink, ``..``): never an exception, never a real KVM fd."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    kernel = Kernel.from_profile("powervm-p11")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    listener_r, listener_w = os.pipe()
    try:
        sup = _Probe(lambda: kernel, kernel.arch, listener_r, root=str(tree))
        paths = [b"/proc/cpuinfo", b"/proc/device-tree/cpus", b"/dev/kvm", b"/dev/kvm/", b"/proc/device-tree/..",
                 b"/proc/device-tree/cpus/../../x", b"/sys/module/kvm_hv/refcnt", b"/proc/device-tree/link",
                 b"/proc/self/fd/0", b"/proc/self/root/dev/kvm"]  # fmt: skip
        where = _start_stack(child.pid) - 8192  # below the stack's start: mapped stack
        addrs = st.sampled_from([0, 1, where, where + 4096 - 3, 0xFFFF_8000_0000_0000, 2**64 - 8, 0x1000])
        args = st.tuples(*[st.one_of(addrs, st.integers(0, 2**64 - 1), st.integers(-100, 1100).map(lambda v: v % 2**64))
                           for _ in range(6)])  # fmt: skip
        files = st.sampled_from(["proc/cpuinfo", "proc/device-tree/cpus", "sys/module/kvm_hv/refcnt"])
        memory = TaskMemory(child.pid)

        @hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
        @hypothesis.given(
            nr=st.sampled_from(sorted(sup._handlers)),
            argv=args,
            path=st.sampled_from(paths),
            target=files,
            when=st.integers(-(2**40), 2**40),
            mode=st.integers(0, 0o7777),
            planted=st.booleans(),
        )
        def check(
            nr: int, argv: tuple[int, ...], path: bytes, target: str, when: int, mode: int, planted: bool
        ) -> None:
            memory.copy_to_user(where, path + b"\0")  # the path an argument may point at
            f = tree / target
            os.utime(f, ns=(when * 10**9, when * 10**9), follow_symlinks=False)
            if not f.is_dir():
                f.chmod(mode)
            link = tree / "proc" / "device-tree" / "link"
            if planted and not link.is_symlink():
                link.symlink_to("/dev/kvm")
            elif not planted and link.is_symlink():
                link.unlink()
            _handled(sup, Notification(1, child.pid, nr, argv))

        check()
    finally:
        child.kill()
        child.wait()
        os.close(listener_r)
        os.close(listener_w)


# -- 6. out of descriptors: the program that asked gets the errno -----------------------------

HOG = """
import errno, fcntl, os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the program's own limit, above the run's soft one
answers = {}
for _ in range(4200):
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as exc:
        answers[errno.errorcode[exc.errno]] = answers.get(errno.errorcode[exc.errno], 0) + 1
        continue
    cap = fcntl.ioctl(fd, 0x2000AE03, 250)  # 1: simulated; anything else: this machine's device
    answers[f"cap={cap}"] = answers.get(f"cap={cap}", 0) + 1
print(answers)
"""


@needs_seccomp
@pytest.mark.skipif(shutil.which("prlimit") is None, reason="no prlimit here")
@pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 5000, reason="a hard RLIMIT_NOFILE under 5000")
def test_out_of_descriptors_is_the_programs_emfile_never_the_real_device() -> None:
    """The run's soft limit 1024 (was: from about the 1,013th open, this machine's /dev/kvm):
    the supervisor raises its own to the hard limit once the program is started, and a
    program past MAX_FILES_PER_PROGRAM simulated files gets EMFILE."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    r = run(sys.executable, "-c", HOG, wrapper=("prlimit", f"--nofile=1024:{hard}"), timeout=120)
    cap = placeholder.MAX_FILES_PER_PROGRAM
    assert r.stdout.strip() == str({"cap=1": cap, "EMFILE": 4200 - cap}), r.stdout + r.stderr


def test_one_program_cannot_starve_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shim program past its share is EMFILE, its connection lives, and another program
    still opens (was: EMFILE in dispatch closed the next program's connection)."""
    from test_hardening import call, connect

    monkeypatch.setattr(placeholder, "MAX_FILES_PER_PROGRAM", 3)
    kernel = Kernel.from_profile("powervm-p11")
    open_dev = wire.OPEN.pack(os.O_RDWR) + b"/dev/kvm"
    with server.Server(kernel, tmp_path / "s.sock") as srv:
        hog, other = connect(srv), connect(srv)
        held = [call(hog, wire.Msg.OPEN, open_dev) for _ in range(4)]
        assert [err for _, err in held] == [0, 0, 0, errno.EMFILE]
        fd, err = call(other, wire.Msg.OPEN, open_dev)
        assert err == 0
        assert call(hog, wire.Msg.OPEN, open_dev)[1] == errno.EMFILE  # still its connection, still its share
        for ret, err in [*held, (fd, 0)]:
            if not err:
                os.close(ret)
        hog.close()
        other.close()


# -- 9. open as the kernel opens --------------------------------------------------------------

OPENS = """
import ctypes, errno, fcntl, os, stat, struct
libc = ctypes.CDLL(None, use_errno=True)
def e(f):
    try:
        r = f()
        return r if isinstance(r, str) else "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
def openat2(dirfd, path, flags, resolve, size=24, tail=b""):
    how = struct.pack("=QQQ", flags, 0, resolve) + tail
    fd = libc.syscall(437, dirfd, path, ctypes.create_string_buffer(how, len(how)), size)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "")
    return fd
p = os.open("/dev/kvm", os.O_PATH)
st = os.fstat(p)
print(stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(10, 232), e(lambda: fcntl.ioctl(p, 0xAE00, 0)))
print(e(lambda: os.open("/dev/kvm/", os.O_RDWR)), e(lambda: os.stat("/dev/kvm/")))
os.symlink("/dev/kvm", "/tmp/kvmsim-test-link-%d" % os.getpid())
link = b"/tmp/kvmsim-test-link-%d" % os.getpid()
print(e(lambda: openat2(-100, b"/dev/kvm", os.O_RDWR, 0x08)), e(lambda: openat2(-100, link, os.O_RDWR, 0x04)),
      e(lambda: openat2(-100, b"/dev/kvm", os.O_RDWR, 0, 32, b"\\1" + bytes(7))),
      e(lambda: fcntl.ioctl(openat2(-100, b"/dev/kvm", os.O_RDWR, 0, 32, bytes(8)), 0x2000AE03, 250) and "sim"))
os.unlink(link)
"""


@needs_seccomp
def test_open_semantics_are_the_kernels() -> None:
    """O_PATH is a path fd (every ioctl EBADF), a trailing slash ENOTDIR, and openat2's
    RESOLVE_BENEATH (EXDEV), RESOLVE_NO_SYMLINKS (ELOOP) and a larger open_how (E2BIG with
    a non-zero tail, honoured with a zero one) as this machine's kernel answers them."""
    r = run(sys.executable, "-c", OPENS)
    assert r.stdout.split("\n")[:3] == ["True EBADF", "ENOTDIR ENOTDIR", "EXDEV ELOOP E2BIG sim"], r.stderr


ESCAPES = (
    ERRNO_OF
    + """
import os, sys
print(e(lambda: os.open("/dev/kvm/", os.O_RDWR)), e(lambda: os.stat("/dev/kvm/")),
      e(lambda: open(sys.argv[1]).read().strip()), e(lambda: open("/proc/device-tree/cpus/../cpus/#size-cells", "rb")
      .read().hex()))
"""
)


@pytest.mark.parametrize("intercept", ["seccomp", "preload"])
def test_both_intercepts_leave_the_host_files_where_the_kernel_would(intercept: str, secret: Path) -> None:
    """`/dev/kvm/` is ENOTDIR, a `..` that climbs out of the host's files is the program's own
    path (ENOENT here: this machine has no /proc/device-tree), one that stays in is the host's."""
    if intercept == "seccomp" and needs_seccomp.args[0]:
        pytest.skip(needs_seccomp.kwargs["reason"])
    r = run(sys.executable, "-c", ESCAPES, f"{UP}{secret}", intercept=intercept)
    assert r.stdout.split() == ["ENOTDIR", "ENOTDIR", "ENOENT", "00000000"], r.stdout + r.stderr


# -- 7. a server that stops or dies holds no ordinary call hostage -----------------------------

AFTER = (
    ERRNO_OF
    + """
import os, sys, time
print(e(lambda: os.open("/dev/kvm", os.O_RDWR) and "fd"), flush=True)
sys.stdin.readline()  # the server is stopped or gone now
t = time.monotonic()
print(e(lambda: len(open("/etc/hostname").read()) >= 0), e(lambda: os.uname().machine),
      e(lambda: os.stat("/usr/bin/env") and "stat"), e(lambda: os.open("/dev/kvm", os.O_RDWR) and "fd"),
      e(lambda: open("/proc/cpuinfo").read()[:3]), time.monotonic() - t < 8, flush=True)
"""
)


def _until_stopped_or_gone(pid: int) -> None:
    """Every thread of ``pid`` stopped (T) or the process gone: a signal is delivered when each
    thread next leaves the kernel, so a server thread may yet take one more notification."""
    for _ in range(400):
        try:
            states = {(Path(f"/proc/{pid}/task") / t / "stat").read_text().rsplit(")", 1)[1].split()[0]
                      for t in os.listdir(f"/proc/{pid}/task")}  # fmt: skip
        except OSError:
            return
        if states <= {"T", "t", "Z"}:
            return
        time.sleep(0.01)


@needs_seccomp
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_stopped_or_dead_server_holds_no_ordinary_call_hostage(how: str, tmp_path: Path) -> None:
    """Was: ENOSYS on every open, stat, exec and uname after the server died, a hang while it
    was stopped.  Now: ordinary calls are the program's own, the simulated host's are EIO,
    within STALL (2 s) of a stopped server."""
    import signal

    sock = tmp_path / "s.sock"
    serve = subprocess.Popen([str(KVMSIM), "serve", "--host", "powervm-p11", "--socket", str(sock)],
                             stderr=subprocess.DEVNULL)  # fmt: skip
    prog: subprocess.Popen[str] | None = None
    try:
        for _ in range(300):
            if sock.exists():
                break
            time.sleep(0.05)
        prog = subprocess.Popen(
            [str(KVMSIM), "run", "--server", str(sock), "--", sys.executable, "-c", AFTER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert prog.stdout is not None and prog.stdin is not None
        assert prog.stdout.readline().split() == ["fd"]
        serve.send_signal(getattr(signal, how))
        _until_stopped_or_gone(serve.pid)  # a call the server had taken before it stopped waits for it
        prog.stdin.write("\n")
        prog.stdin.flush()
        out, err = prog.communicate(timeout=60)
    finally:
        serve.kill()
        serve.wait()
        if prog is not None and prog.poll() is None:  # a failed step leaves no run behind waiting on stdin
            prog.kill()
            prog.wait()
    assert (prog.returncode, out.split()) == (0, ["True", "ppc64le", "stat", "EIO", "EIO", "True"]), err


# -- 8. preload: a dup2 onto the shim's socket mid-call, threads or not -------------------------

DUP2_MID_CALL = """
import errno, fcntl, os, threading, time
vm = fcntl.ioctl(os.open("/dev/kvm", os.O_RDWR), 0x2000AE01, 0)
def link(n):
    try:
        return os.readlink(f"/proc/self/fd/{n}")
    except OSError:
        return ""
fds = [int(n) for n in os.listdir("/proc/self/fd")]
shim_sock = max(n for n in fds if n >= 900 and link(n).startswith("socket:"))  # the shim's (HIGH_FD)
null = os.open("/dev/null", os.O_RDONLY)
answers = []
def calls():
    for _ in range(4000):
        try:
            answers.append(fcntl.ioctl(vm, 0x2000AE03, 250))
        except OSError as exc:
            answers.append(errno.errorcode[exc.errno])
t = threading.Thread(target=calls)
t.start()
while len(answers) < 1000:
    time.sleep(0.001)
os.dup2(null, shim_sock)  # mid-call, most likely: the other thread calls without pause
t.join()
after = answers[answers.index("EIO") + 1:] if "EIO" in answers else answers[1000:]
print(after.count(1) > 0 and set(after) <= {1, "EIO"} and after[-1] == 1)
"""


@pytest.mark.parametrize("channel", ["socket", "shared"])
def test_a_dup2_onto_the_shims_socket_mid_call_connects_again_on_the_next_call(channel: str) -> None:
    """Was: with another thread in a call, the connection was lost for good (every later call
    EIO).  As documented: the call in flight may fail (EIO), the next ones connect again."""
    env = {**os.environ, "KVMSIM_CHANNEL": channel} if channel == "socket" else None
    r = run(sys.executable, "-c", DUP2_MID_CALL, intercept="preload", timeout=120, env=env)
    assert r.stdout.strip() == "True", r.stdout + r.stderr


def test_a_kept_pidfd_of_a_gone_thread_is_never_another_tasks() -> None:
    """The supervisor keeps its threads' pidfds between calls: a thread that is gone answers
    ESRCH (and is forgotten), never the files of whatever task has its tid now."""
    from kvmsim.seccomp.pidfd import Pidfds

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE)
    pidfds = Pidfds()
    try:
        os.close(pidfds.getfd(child.pid, 0))  # its stdin: a pipe
        child.kill()
        child.wait()
        with pytest.raises(OSError) as exc:
            pidfds.getfd(child.pid, 0)
        assert exc.value.errno == errno.ESRCH
        with pytest.raises(OSError) as bad:
            pidfds.getfd(os.getpid(), -1)
        assert bad.value.errno == errno.EBADF
    finally:
        pidfds.close()


def test_the_server_answers_any_frame_with_a_result_or_ends_that_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's side of the property: a frame of any type with any payload (identities of
    real placeholders among them, arguments anywhere, a client that never answers MEM_READ)
    is a RESULT, or a ProtocolError that closes that one connection: never another exception,
    never a placeholder of a file it does not hold."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    from kvmsim.intercept.wire import ProtocolError

    monkeypatch.setattr(server, "CLIENT_DEADLINE", 0.01)
    kernel = Kernel.from_profile("powervm-p11")
    table = placeholder.Placeholders(kernel)
    ours, theirs = socket.socketpair()
    conn = server.Connection(table, ours, "fuzz")
    with conn.placeholders.call(conn.memory) as process:
        dev = process.open("/dev/kvm", os.O_RDWR)
    held = table.new(dev)
    known = placeholder.identity(os.fstat(held))
    msgs = st.sampled_from(list(wire.Msg))
    numbers = st.one_of(st.sampled_from([0, 1, 0x2000AE01, 0x2000AE03, 0x2000AEB8, 2**32 - 1, 2**64 - 8]),
                        st.integers(0, 2**64 - 1))  # fmt: skip

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(msg=msgs, cmd=numbers, arg=numbers, mine=st.booleans(), tail=st.binary(max_size=64))
    def check(msg: wire.Msg, cmd: int, arg: int, mine: bool, tail: bytes) -> None:
        dev_ino = known if mine else (arg & 0xFFFF, cmd & 0xFFFF)
        payload = wire.IOCTL.pack(3, cmd & 0xFFFFFFFF, arg, *dev_ino) + tail if msg == wire.Msg.IOCTL else tail
        try:
            frame, new = conn.dispatch(msg, payload)
        except ProtocolError:
            return  # that connection ends, the server goes on
        assert wire.HEADER.unpack_from(frame)[2] == wire.Msg.RESULT
        if new is not None:
            assert mine  # a new placeholder only for a file this connection holds
            os.close(new)

    try:
        check()
    finally:
        os.close(held)
        ours.close()
        theirs.close()
        table.close()


def test_a_path_fd_of_a_host_file_ignores_the_access_mode(tree: Path) -> None:
    """O_PATH | O_WRONLY is a path fd on the real kernel (do_o_path): read-only here, never EACCES."""
    fd = kernfs.open_file(str(tree / "proc"), b"cpuinfo", os.O_PATH | os.O_WRONLY, NOBODY_CRED)
    try:
        assert os.read(fd, 9) == b"processor"
    finally:
        os.close(fd)
