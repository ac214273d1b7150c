"""The preload shim: a compiled C program and the Python client, unchanged, against every
simulated host through `kvmsim serve`'s protocol, answering as the in-process client does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REVS, client_answer, needs_cc, printed_answer

from kvmsim import Kernel
from kvmsim.intercept.server import Server, host_answer
from kvmsim.kernel import profile
from kvmsim.preload.runner import shim_environment

ROOT = Path(__file__).resolve().parent.parent
C_CLIENT = ROOT / "examples" / "c" / "kvm_compat_caps.c"
pytestmark = needs_cc


def under_shim(
    host: str, abi: str, shim: Path, cmd: list[str], tmp: Path, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    kernel = Kernel.from_profile(host, abi=abi)
    with Server(kernel, tmp / "kvm.sock") as server:
        env = shim_environment(host_answer(kernel), server.path, shim) | extra_env
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("abi", REVS)
@pytest.mark.parametrize("host", profile.names())
def test_c_client_answers_as_the_python_client(host: str, abi: str, shim: Path, c_client: Path, tmp_path: Path) -> None:
    code, want = client_answer(host, abi)
    r = under_shim(host, abi, shim, [str(c_client)], tmp_path)
    assert r.returncode == code, r.stderr
    assert printed_answer(r.stdout) == want


@pytest.mark.parametrize("abi", [r for r in REVS if r != "none"])
@pytest.mark.parametrize("pointer", ["--null", "--wild"])
def test_bad_pointers_are_efault_not_a_crash(
    abi: str, pointer: str, shim: Path, c_client: Path, tmp_path: Path
) -> None:
    r = under_shim("powervm-p11", abi, shim, [str(c_client), pointer, "--abi", abi], tmp_path)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["error"]["name"] == "EFAULT"


@pytest.mark.parametrize(("client_size", "host"), [(32, "powervm-p11"), (32, "powervm-p11-be")])
def test_c_client_e2big_retry(client_size: int, host: str, shim: Path, c_client: Path, tmp_path: Path) -> None:
    for abi in ("linux-7.3", "v5"):  # 7.3 accepts a zero tail; the v5 draft says E2BIG, then the retry
        r = under_shim(host, abi, shim, [str(c_client), "--struct-size", str(client_size), "--abi", abi], tmp_path)
        assert json.loads(r.stdout)["modes"] == ["power10", "power11"]


@pytest.mark.parametrize(
    ("host", "abi"), [("powervm-p11", "v4"), ("kvm-l1-p10", "v5"), ("powervm-p11-be", "v5"), ("pseries-kvm-pr", "v5")]
)
def test_python_real_device_client_under_the_shim(host: str, abi: str, shim: Path, tmp_path: Path) -> None:
    code, want = client_answer(host, abi)
    r = under_shim(host, abi, shim, [sys.executable, "-m", "kvmcompat", "--json"], tmp_path)
    assert r.returncode == code, r.stderr
    assert printed_answer(r.stdout) == want


def test_other_files_and_fds_pass_through(shim: Path, tmp_path: Path) -> None:
    code = """
import fcntl, os, termios
r, w = os.pipe()
os.write(w, b"xy")
b = bytearray(4)
fcntl.ioctl(r, termios.FIONREAD, b)  # a real ioctl on a real fd goes to the real kernel
print(int.from_bytes(b, "little"), open("/proc/self/status").read() != "")
"""
    r = under_shim("powervm-p11", "v4", shim, [sys.executable, "-c", code], tmp_path)
    assert r.stdout.split() == ["2", "True"], r.stderr


def test_close_then_ebadf_and_fds_are_real(shim: Path, tmp_path: Path) -> None:
    code = """
import errno, fcntl, os
fd = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(fd, 0x2000AE01, 0)
assert os.readlink(f"/proc/self/fd/{vm}") == "anon_inode:kvm-vm"  # as the real VM fd reads
os.close(vm)
try:
    fcntl.ioctl(vm, 0x2000AE03, 250)
except OSError as e:
    print(errno.errorcode[e.errno])
print(os.uname().machine)
"""
    r = under_shim("powervm-p11", "v5", shim, [sys.executable, "-c", code], tmp_path)
    assert r.stdout.split() == ["EBADF", "ppc64le"], r.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "kvmsim"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_kvmsim_run_returns_the_commands_exit_code_and_cleans_up(c_client: Path, tmp_path: Path) -> None:
    env_tmp = {"TMPDIR": str(tmp_path)}
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "kvmsim"),
            "run",
            "--host",
            "kvm-l1-p11",
            "--abi",
            "linux-7.3",
            "--",
            str(c_client),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env_tmp},
    )
    assert r.returncode == 0
    assert json.loads(r.stdout)["modes"] == ["power9", "power10", "power11"]
    assert list(tmp_path.iterdir()) == []  # the private socket directory is gone
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    r = subprocess.run(
        [str(Path(sys.executable).parent / "kvmsim"), "run", "--host", "powervm-p11", "--", *crash],
        capture_output=True,
        timeout=120,
        env={**os.environ, **env_tmp},
    )
    assert r.returncode == 128 + 11
    assert list(tmp_path.iterdir()) == []
    r = run_cli("run", "--host", "powervm-p11", "--", "sh", "-c", "exit 7")
    assert r.returncode == 7


@pytest.mark.parametrize("intercept", ["seccomp", "preload"])
def test_a_file_the_kernel_will_not_execute_is_126_not_a_shell_script(intercept: str, tmp_path: Path) -> None:
    script = tmp_path / "no-shebang"
    script.write_text("touch ran\n")
    script.chmod(0o755)
    r = run_cli("run", "--host", "powervm-p11", "--intercept", intercept, "--", str(script))
    assert (r.returncode, "cannot execute: Exec format error" in r.stderr) == (126, True), r.stderr
    assert not (Path.cwd() / "ran").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--host", "powervm-p11", "--", "/nonexistent/prog"], 127, "command not found"),
        (["run", "--host", "powervm-p11"], 2, "no command given"),
        (["run", "--host", "power42", "--", "true"], 2, "unknown host"),
        (["run", "--", "true"], 2, "--host"),
        (["run", "--host", "powervm-p11", "--intercept", "preload", "--", "/nonexistent/prog"], 127, "not found"),
        (["run", "--host", "powervm-p11", "--intercept", "seccomp", "--", "/etc/passwd"], 126, "not executable"),
        (["run", "--host", "powervm-p11", "--intercept", "preload", "--", "/etc/passwd"], 126, "not executable"),
        (["run", "--host", "powervm-p11", "--intercept", "ptrace", "--", "true"], 2, "invalid choice"),
    ],
)
def test_kvmsim_run_bad_input(args: list[str], code: int, message: str) -> None:
    r = run_cli(*args)
    assert r.returncode == code
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_kvmsim_serve_cli(tmp_path: Path) -> None:
    from pyshim import PyShim

    sock = tmp_path / "kvm.sock"
    exe = Path(sys.executable).parent / "kvmsim"
    proc = subprocess.Popen([str(exe), "serve", "--host", "kvm-l1-p10", "--abi", "v5", "--socket", str(sock)])
    try:
        for _ in range(200):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        shim = PyShim(str(sock))
        assert shim.open()[1] == 0
        shim.close()
        r = run_cli("serve", "--host", "kvm-l1-p10", "--socket", str(sock))
        assert r.returncode == 2 and "already exists" in r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
    assert not sock.exists()


@pytest.mark.parametrize(
    ("host", "numbers"),
    [
        ("powervm-p11", (0x2000AE03, 0x2000AEB8, 0x4018AEE4, 0x2000AEE4)),
        ("x86_64", (0xAE03, 0xAEB8, 0x8018AEE4, 0xAEE4)),
    ],
)
def test_a_native_c_client_computes_the_simulated_kernels_numbers(
    host: str, numbers: tuple[int, int, int, int], shim: Path, c_client: Path, tmp_path: Path
) -> None:
    # built for x86, it encodes for the arch uname() reports: the shim reports the host's
    r = under_shim(host, "v4", shim, [str(c_client), "--numbers"], tmp_path)
    out = json.loads(r.stdout)
    assert (out["KVM_CHECK_EXTENSION"], out["linux-7.3"], out["v4"], out["v5"]) == numbers


def test_dup_shares_the_kernel_file_until_the_last_close(shim: Path, tmp_path: Path) -> None:
    code = """
import errno, fcntl, os
def cap(fd):
    try:
        return fcntl.ioctl(fd, 0x2000AE03, 250)
    except OSError as e:
        return errno.errorcode[e.errno]
dev = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(dev, 0x2000AE01, 0)
d = os.dup(vm)
os.close(vm)
print(cap(d))                      # the VM lives on in the dup
d2 = os.dup2(d, 50)
os.close(d)
print(cap(d2))
os.dup2(dev, d2)                   # d2 now names /dev/kvm: the VM's last fd is gone
print(cap(d2), fcntl.ioctl(d2, 0x2000AE00, 0))
os.close(d2)
print(cap(d2))
"""
    r = under_shim("powervm-p11", "v5", shim, [sys.executable, "-c", code], tmp_path)
    assert r.stdout.split() == ["1", "1", "1", "12", "EBADF"], r.stderr


def test_the_shims_protocol_constants_come_from_the_python_side() -> None:
    """kvmsim_wire.h is generated from wire.py and channel.py at build time; the C holds none
    of those numbers by hand (they were hand-copied #defines nothing checked)."""
    import re

    from kvmsim.intercept import channel
    from kvmsim.intercept import wire as w
    from kvmsim.preload import shimdefs
    from kvmsim.preload.library import shim_sources

    source = "".join(Path(p).read_text() for p in [*shim_sources(), ROOT / "kvmsim" / "preload" / "shim" / "shim.h"])
    assert '#include "kvmsim_wire.h"' in source
    for name in ("KVMSIM_MAGIC", "KVMSIM_VERSION", "MAX_PAYLOAD", "SHM_CAPACITY", "SHM_CONTROL", "RESULT_NEW_FD"):
        assert not re.search(rf"#define {name}\b", source), name
    assert not re.search(r"enum \{ OPEN = ", source)
    h = shimdefs.header()
    assert f"#define SHM_CAPACITY {channel.CAPACITY}u" in h and f"#define RESULT_SIZE {w.RESULT.size}u" in h
    assert all(f"{m.name} = {m.value}" in h for m in w.Msg)
    # and each kind of file (anon_inodes.FILE_KINDS: links, errnos), not literals in the hooks
    from kvmsim.kernel.anon_inodes import FILE_KINDS

    for k in FILE_KINDS:
        ops = ", ".join(
            k.ops[op] if k.ops[op].startswith("E") else "0" for op in ("read", "write", "pread", "pwrite", "lseek")
        )
        assert f'[{k.code}] = {{"{k.link.replace("{id}", "%ld")}", {ops}, {int(k.mapped)}}},' in h
    hooks = re.sub(r"/\*.*?\*/", "", (ROOT / "kvmsim" / "preload" / "shim" / "hooks.c").read_text(), flags=re.S)
    assert "ESPIPE" not in hooks and "anon_inode" not in hooks and "FILE_OP_ERR(fd, pread)" in hooks


@pytest.mark.parametrize("intercept", ["seccomp", "preload"])
def test_kvmsim_run_passes_the_callers_descriptors_on(intercept: str, tmp_path: Path) -> None:
    """As any wrapper does (env, nice, timeout): CMD gets the fds kvmsim run was given."""
    given = tmp_path / "given"
    given.write_text("from the caller")
    fd = os.open(given, os.O_RDONLY)
    try:
        r = subprocess.run(
            [str(Path(sys.executable).parent / "kvmsim"), "run", "--host", "powervm-p11", "--intercept", intercept,
             "--", sys.executable, "-c", f"import os; print(os.read({fd}, 100).decode())"],
            capture_output=True, text=True, timeout=60, pass_fds=(fd,),
        )  # fmt: skip
    finally:
        os.close(fd)
    assert r.stdout.strip() == "from the caller", r.stderr


def test_every_libc_entry_point_the_shim_finds_is_checked() -> None:
    """No dlsym result is called unchecked: each is NEED (one line and exit 127 at load when
    libc lacks it) or has its fallback (open64 → open, statx → ENOSYS)."""
    import re

    source = (ROOT / "kvmsim" / "preload" / "shim" / "init.c").read_text()
    assert source.count("dlsym(") == 1  # the one FIND macro
    body = source[source.index("static void shim_init(void)") :]
    finds = re.findall(r"\b(NEED|FIND)\((\w+)\)", body)
    unchecked = [name for how, name in finds if how == "FIND" and f"if (!FIND({name}))" not in body]
    assert finds and not unchecked


ONE_REG_SCRIPT = """
import ctypes, fcntl, mmap, os, struct, sys
reg, get, put, create_vm, create_vcpu = (int(a, 0) for a in sys.argv[1:6])
dev = os.open("/dev/kvm", os.O_RDWR)
vcpu = fcntl.ioctl(fcntl.ioctl(dev, create_vm, 0), create_vcpu, 0)
value = mmap.mmap(-1, 4096)  # a mapping of its own: far from the struct, which CPython copies to its stack
addr = ctypes.addressof(ctypes.c_char.from_buffer(value))
value[:8] = struct.pack("<Q", 0x1234)
fcntl.ioctl(vcpu, put, bytearray(struct.pack("<QQ", reg, addr)))
value[:8] = bytes(8)
fcntl.ioctl(vcpu, get, bytearray(struct.pack("<QQ", reg, addr)))
print(hex(struct.unpack("<Q", value[:8])[0]))
"""


def test_one_reg_reaches_the_value_its_struct_points_at_through_the_shim() -> None:
    """KVM_GET/SET_ONE_REG's struct points at the value elsewhere in the program: the shim lets the
    server read and write those 16 bytes too (the program named them), not only the struct's window."""
    from kvmsim.uapi import KVM_GET_ONE_REG, KVM_SET_ONE_REG, ONE_REGS

    k = Kernel.from_profile("powervm-p10")
    numbers = [ONE_REGS["DSCR"], KVM_GET_ONE_REG.request(k.arch), KVM_SET_ONE_REG.request(k.arch),
               k.KVM_CREATE_VM, k.KVM_CREATE_VCPU]  # fmt: skip
    kvmsim = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run(
        [str(kvmsim), "run", "--intercept", "preload", "--host", "powervm-p10", "--", sys.executable, "-c",
         ONE_REG_SCRIPT, *map(hex, numbers)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0x1234"
