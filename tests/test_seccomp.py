"""kvmsim.seccomp: programs the preload shim cannot reach — a static glibc binary, a musl one, a
Go program making its system calls without libc — answer under the supervisor exactly as the
in-process client does, for every profile × revision; and the placeholders follow the real
kernel's rules for fds (exec, SCM_RIGHTS), which no table of ours has to track."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import C_CLIENT, ERRNO_OF, REVS, client_answer, needs_cc, needs_seccomp, printed_answer

from kvmsim import Kernel
from kvmsim.intercept import trust
from kvmsim.intercept.command import host_view
from kvmsim.kernel import hostfs, profile
from kvmsim.kernel.errors import KvmError
from kvmsim.seccomp import bpf, uapi
from kvmsim.seccomp.launch import launch, the_filter
from kvmsim.seccomp.supervisor import NOTIFIED, Supervisor
from kvmsim.uapi import KVM_PPC_COMPAT_CAPS_SIZE_VER0, LINUX_7_3

ROOT = Path(__file__).resolve().parent.parent
KVMSIM = Path(sys.executable).with_name("kvmsim")


# -- the filter, read as the kernel reads it ---------------------------------------------------


@pytest.mark.parametrize("name", NOTIFIED)
def test_what_the_supervisor_answers_reaches_it(name: str) -> None:
    assert bpf.run_filter(the_filter(), uapi.NR[name]) == uapi.SECCOMP_RET_USER_NOTIF


@pytest.mark.parametrize("nr", [0, 1, 3, 9, 56, 59, 60, 231, 435])  # read write close mmap clone execve ...
def test_everything_else_never_leaves_the_kernel(nr: int) -> None:
    assert bpf.run_filter(the_filter(), nr) == uapi.SECCOMP_RET_ALLOW


@pytest.mark.parametrize(
    ("nr", "arch"),
    [(54, 0x40000003), (uapi.NR["ioctl"], 0x40000003), (uapi.X32_SYSCALL_BIT | 16, uapi.AUDIT_ARCH_X86_64)],
)
def test_another_abis_system_call_is_enosys_not_unseen(nr: int, arch: int) -> None:
    """i386's int 0x80 (ioctl is its 54) and x32 could reach the real device unseen."""
    assert bpf.run_filter(the_filter(), nr, arch) == uapi.SECCOMP_RET_ERRNO | 38


# -- programs below libc, every profile × revision ----------------------------------------------


def supervised(host: str, abi: str, argv: list[str], tmp: Path) -> tuple[int, str]:
    """``argv`` under the filter with an in-process supervisor (what kvmsim run does, without
    an interpreter start each time): its exit code and output."""
    kernel = Kernel.from_profile(host, abi=abi)
    workdir = trust.temp_dir("kvmsim-run-")
    try:
        return supervised_view(kernel, host_view(kernel, workdir.subdir("root")), argv, tmp)
    finally:
        workdir.remove()


def supervised_view(kernel: Kernel, view: str, argv: list[str], tmp: Path) -> tuple[int, str]:
    """:func:`supervised` over a host view already written (a test may change it first)."""
    out = tmp / "stdout"
    with open(out, "wb") as f:
        started = launch(argv, stdout=f.fileno())
    supervisor = Supervisor(lambda: kernel, kernel.arch, started.listener, root=view)
    thread = supervisor.start()
    try:
        assert started.exec_error() is None
        code = started.proc.wait(timeout=60)
    finally:
        supervisor.stop()
        thread.join()
        supervisor.close()
    return code, out.read_text()


@pytest.fixture(scope="module")
def static_clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    d = tmp_path_factory.mktemp("static")
    built = {}
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc and subprocess.run([cc, "-O2", "-static", "-o", str(d / "glibc"), str(C_CLIENT)]).returncode == 0:
        built["glibc-static"] = d / "glibc"
    musl = shutil.which("musl-gcc")
    include = ["-idirafter", "/usr/include", "-idirafter", f"/usr/include/{os.uname().machine}-linux-gnu"]
    if (
        musl
        and subprocess.run([musl, "-O2", "-static", *include, "-o", str(d / "musl"), str(C_CLIENT)]).returncode == 0
    ):
        built["musl-static"] = d / "musl"
    yield built


@needs_seccomp
@needs_cc
@pytest.mark.parametrize("libc", ["glibc-static", "musl-static"])
@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", profile.names())
def test_a_static_c_client_answers_as_the_python_client(
    host: str, abi: str, libc: str, static_clients: dict[str, Path], tmp_path: Path
) -> None:
    if libc not in static_clients:
        pytest.skip(f"no {libc} build here (musl-gcc: apt-get install musl-tools)")
    code, want = client_answer(host, abi)
    got, out = supervised(host, abi, [str(static_clients[libc])], tmp_path)
    assert got == code, out
    assert printed_answer(out) == want


@pytest.fixture(scope="module")
def go_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go here (apt-get install golang-go)")
    d = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(d / "cache"), "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": ""}
    r = subprocess.run([go, "build", "-o", str(d / "gokvm"), str(ROOT / "tests" / "data" / "gokvm.go")], env=env)
    if r.returncode != 0:
        pytest.skip("go build failed here")
    return d / "gokvm"


def go_args(kernel: Kernel) -> list[str]:
    """The numbers a program built for this host sends (what the Go program is told)."""
    asked = kernel.rev if kernel.rev.ioctl is not None else LINUX_7_3
    request = asked.request(kernel.arch) or 0
    assert asked.cap is not None
    nums = [kernel.KVM_GET_API_VERSION, kernel.KVM_CREATE_VM, kernel.KVM_CHECK_EXTENSION, asked.cap, request]
    return [hex(n) for n in nums]


def model_answers(kernel: Kernel) -> dict[str, object]:
    """The same steps on the kernel model, in-process: what the Go program must print."""

    def ask(fn: object, *args: int) -> dict[str, object]:
        try:
            return {"value": fn(*args)}  # type: ignore[operator]
        except KvmError as exc:
            return {"value": -1, "errno": os.strerror(exc.errno or 0)}

    api, create, check, cap, request = (int(a, 16) for a in go_args(kernel))
    out: dict[str, object] = {"machine": kernel.arch.name}
    proc = kernel.process()
    try:
        dev = proc.open()
    except KvmError as exc:
        out["open"] = os.strerror(exc.errno or 0)
        return out
    out["api"] = ask(proc.sys_ioctl, dev, api, 0)
    vm = ask(proc.sys_ioctl, dev, create, 0)
    out["create_vm"] = vm
    if "errno" not in vm:
        vm_fd = int(vm["value"])  # type: ignore[call-overload]
        out["cap"] = ask(proc.sys_ioctl, vm_fd, check, cap)
        if request:
            buf = proc.memory.map(24, data=KVM_PPC_COMPAT_CAPS_SIZE_VER0.to_bytes(8, sys.byteorder) + bytes(16))  # type: ignore[attr-defined]
            out["compat_caps"] = ask(proc.sys_ioctl, vm_fd, request, buf)
            out["struct"] = proc.memory.copy_from_user(buf, 24).hex()
    return out


@needs_seccomp
@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", [n for n in profile.names() if profile.load(n).arch.byteorder == sys.byteorder])
def test_a_go_program_answers_as_the_kernel_model(host: str, abi: str, go_program: Path, tmp_path: Path) -> None:
    kernel = Kernel.from_profile(host, abi=abi)
    code, out = supervised(host, abi, [str(go_program), *go_args(kernel)], tmp_path)
    assert code == 0, out
    got = json.loads(out.lower())
    if "create_vm" in got:
        got["create_vm"] = {"value": 3} if "errno" not in got["create_vm"] else got["create_vm"]
    want = model_answers(kernel)
    if "create_vm" in want and "errno" not in want["create_vm"]:  # type: ignore[operator]
        want["create_vm"] = {"value": 3}  # the fd numbers are each process's own
    assert got == json.loads(json.dumps(want).lower())  # Go's errno strings are lower case


# -- the host's files, seen by a static program ---------------------------------------------------


@pytest.fixture(scope="module")
def hostfiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("hostfiles") / "hostfiles"
    cc = shutil.which(os.environ.get("CC", "cc"))
    src = ROOT / "tests" / "data" / "hostfiles.c"
    if cc is None or subprocess.run([cc, "-O2", "-static", "-o", str(exe), str(src)]).returncode != 0:
        pytest.skip("no static C build here")
    return exe


@needs_seccomp
@pytest.mark.parametrize("host", ["powervm-p11", "no-kvm", "powervm-hcall-unavailable", "kvm-l1-p9-be", "x86_64"])
def test_a_static_program_sees_the_simulated_hosts_files(host: str, hostfiles: Path, tmp_path: Path) -> None:
    kernel = Kernel.from_profile(host)
    files = hostfs.files(kernel)
    code, out = supervised(host, "linux-7.3", [str(hostfiles), hex(kernel.KVM_CREATE_VM)], tmp_path)
    lines = {k: v for k, _, v in (line.partition(" ") for line in out.splitlines())}
    loaded = kernel.kvm.loaded
    proc = kernel.process()
    try:
        proc.sys_ioctl(proc.open(), kernel.KVM_CREATE_VM, 0)
        vm_made = True
    except KvmError:
        vm_made = False
    cpus = sorted({p.split("/")[4] for p in files if p.startswith("/proc/device-tree/cpus/")})
    assert code == 0 and lines == {
        "machine": kernel.arch.name,
        "access": str(int(loaded)),
        "stat": "chr 10:232 660" if loaded else "-1",
        "cpuinfo": files["/proc/cpuinfo"].decode().splitlines()[0] if "/proc/cpuinfo" in files else lines["cpuinfo"],
        "cpus": " ".join(cpus),
        "dev-link": "/dev/kvm" if loaded else "-",
        "vm-link": "anon_inode:kvm-vm" if vm_made else "-",
    }


# -- fds follow the real kernel's rules ---------------------------------------------------------

EXEC = """
import fcntl, os, sys
if sys.argv[1:2] == ["child"]:
    keep, drop = int(sys.argv[2]), int(sys.argv[3])
    print(fcntl.ioctl(keep, 0x2000AE00, 0), end=" ")
    try:
        fcntl.ioctl(drop, 0x2000AE00, 0)
    except OSError as exc:
        print(exc.errno)
    sys.exit(0)
keep = os.open("/dev/kvm", os.O_RDWR)
os.set_inheritable(keep, True)        # FIONCLEX: kept across exec, as a real fd is
drop = os.open("/dev/kvm", os.O_RDWR)  # O_CLOEXEC: gone after exec
os.execv(sys.executable, [sys.executable, "-c", SELF, "child", str(keep), str(drop)])
"""

SCM_RIGHTS = """
import fcntl, os, socket
dev = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(dev, 0x2000AE01, 0)
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    a.close()
    _, fds, _, _ = socket.recv_fds(b, 1, 1)
    print(fcntl.ioctl(fds[0], 0x2000AE03, 250), flush=True)   # another process, the same VM
    os._exit(0)
socket.send_fds(a, [b"x"], [vm])
os.close(vm)                       # the receiver's reference keeps the file
os.waitpid(pid, 0)
"""

STATUS = """
import os
def field(path, name):
    return next(l.split()[1] for l in open(path) if l.startswith(name + ":"))
links = []
for n in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink(f"/proc/self/fd/{n}"))
    except FileNotFoundError:  # listdir's own fd, closed by now
        pass
print(field("/proc/self/status", "Seccomp"), field("/proc/self/status", "NoNewPrivs"),
      field(f"/proc/{os.getppid()}/status", "Seccomp"), any("seccomp" in l for l in links))
"""


INTERCEPT = "seccomp"
BOTH = pytest.mark.parametrize(
    "intercept", [pytest.param("seccomp", marks=needs_seccomp), "preload"]
)  # the real kernel's rules for placeholders, on either path


def under_run(code: str, host: str = "powervm-p11", intercept: str = INTERCEPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KVMSIM), "run", "--host", host, "--intercept", intercept, "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )


@BOTH
def test_exec_keeps_an_inheritable_dev_kvm_and_drops_a_cloexec_one(intercept: str) -> None:
    r = under_run(EXEC.replace("SELF", repr(EXEC)), intercept=intercept)
    assert r.stdout.strip() == "12 9", r.stderr  # the kept fd answers; the dropped one is EBADF


@BOTH
def test_a_vm_fd_passed_with_scm_rights_still_answers(intercept: str) -> None:
    r = under_run(SCM_RIGHTS, intercept=intercept)
    assert r.stdout.strip() == "1", r.stderr


@needs_seccomp
def test_the_filter_is_the_programs_alone_and_its_listener_is_not_in_it() -> None:
    """The program runs filtered with no_new_privs (a setuid program it execs gains nothing),
    kvmsim run itself is not filtered, and the listener never reaches the program."""
    r = under_run(STATUS)
    assert r.stdout.split() == ["2", "1", "0", "False"], r.stderr


POLL = """
import os, select
dev = os.open("/dev/kvm", os.O_RDWR)
p = select.poll()
p.register(dev, select.POLLIN | select.POLLOUT)
(fd, events), = p.poll(0)
print(bool(events & select.POLLIN), bool(events & select.POLLOUT))
"""

REAL_FD = """
import fcntl, sys
try:
    print(fcntl.ioctl(int(sys.argv[1]), 0xAE00, 0))
except OSError as exc:
    print(exc.errno)
"""


@BOTH
def test_poll_of_a_simulated_fd_is_the_devices_default_mask(intercept: str) -> None:
    """/dev/kvm has no poll op: DEFAULT_POLLMASK, readable and writable at once (the
    placeholder is: the server's end is shut for writing, so a read never waits)."""
    assert under_run(POLL, intercept=intercept).stdout.split() == ["True", "True"]


@needs_seccomp
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm here")
def test_a_real_dev_kvm_fd_brought_into_the_run_is_refused_not_reached() -> None:
    real = os.open("/dev/kvm", os.O_RDWR)
    try:
        r = subprocess.run(
            [str(KVMSIM), "run", "--host", "x86_64", "--intercept", "seccomp", "--",
             sys.executable, "-c", REAL_FD, str(real)],
            capture_output=True, text=True, timeout=60, pass_fds=(real,),
        )  # fmt: skip
    finally:
        os.close(real)
    assert r.stdout.strip() == "1", r.stderr  # EPERM, where the real kernel would answer 12


EMFILE = """
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    os.open("/dev/kvm", os.O_RDWR)
except OSError as exc:
    print(exc.errno, end=" ")
os.close(held.pop())
import fcntl
print(fcntl.ioctl(os.open("/dev/kvm", os.O_RDWR), 0x2000AE00, 0))
"""


@needs_seccomp
def test_out_of_descriptors_an_open_is_emfile_and_the_next_one_works() -> None:
    """SECCOMP_IOCTL_NOTIF_ADDFD fails in the program's own RLIMIT_NOFILE: the open answers
    EMFILE, as the real kernel's would, and the supervisor goes on."""
    r = under_run(EMFILE)
    assert r.stdout.strip() == "24 12", r.stderr


VCPU_MAPPING = (
    ERRNO_OF
    + """
import fcntl, mmap, os, struct
dev = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(dev, 0x2000AE01, 0)
vcpu = fcntl.ioctl(vm, 0x2000AE41, 0)
size = fcntl.ioctl(dev, 0x2000AE04, 0)
run = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
exit_reason = lambda: struct.unpack_from("<I", run, 8)[0]
before = e(lambda: fcntl.ioctl(vcpu, 0x2000AE80, 0))  # HV, no PAPR yet: EINVAL, KVM_EXIT_INTERNAL_ERROR
insane = exit_reason()
cap = bytearray(struct.pack("<II", 68, 0) + bytes(96))  # KVM_ENABLE_CAP(KVM_CAP_PPC_PAPR)
papr = fcntl.ioctl(vcpu, 0x8068AEA3, cap)
ran = fcntl.ioctl(vcpu, 0x2000AE80, 0)
event = struct.unpack_from("<II", run, 32)
run[1] = 1  # immediate_exit, written by the program: the kernel reads it
again = e(lambda: fcntl.ioctl(vcpu, 0x2000AE80, 0))
print(size, before, insane, papr, ran, exit_reason(), event[0], again,
      e(lambda: os.ftruncate(vcpu, 0)), e(lambda: os.ftruncate(vcpu, 1 << 20)), os.readlink(f"/proc/self/fd/{vcpu}"))
"""
)


@BOTH
def test_a_vcpu_fd_maps_kvm_run_shared_with_the_simulated_kernel(intercept: str) -> None:
    """The program's own mmap of its vcpu fd (a sealed memfd placeholder) is the simulated
    vcpu's kvm_run: the kernel's exit_reason shows in it, the program's immediate_exit reaches
    the kernel, and the program cannot resize it under the simulator (EPERM: sealed)."""
    r = under_run(VCPU_MAPPING, intercept=intercept)
    assert r.stdout.split() == [
        "65536", "EINVAL", "17", "0", "0", "24", "1", "EINTR", "EPERM", "EPERM", "anon_inode:kvm-vcpu:0"
    ], r.stderr  # fmt: skip
