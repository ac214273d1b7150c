"""The installed console scripts, run as a user runs them: text, JSON, exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from conftest import BEHAVIOUR, modes_of, needs_seccomp

from kvmsim.kernel import profile

BIN = Path(sys.executable).parent


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / script
    assert exe.exists(), f"{exe} is not installed (make test installs it)"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "code", "modes", "abi"),
    [
        (["--sim", "powervm-p11"], 0, ["power10", "power11"], "linux-7.3"),
        (["--sim", "powervm-p11", "--abi", "v4"], 0, ["power10", "power11"], "v4"),
        (["--sim", "kvm-l1-p10", "--abi", "v5"], 0, ["power9", "power10"], "v5"),
        (["--sim", "powervm-p11-be", "--abi", "v5", "--struct-size", "32"], 0, ["power10", "power11"], "v5"),
        (["--sim", "pseries-kvm-pr", "--fallback"], 0, ["power10"], "none"),
        (
            ["--sim", "powervm-p11", "--ioctl-nr", "0xb9", "--cap", "251"],
            0,
            ["power10", "power11"],
            "linux-7.3",
        ),
    ],
)
def test_json_success(args: list[str], code: int, modes: list[str], abi: str) -> None:
    r = run("kvm-compat-caps", *args, "--json")
    assert r.returncode == code, r.stderr
    out = json.loads(r.stdout)
    assert out["modes"] == modes and out["abi"] == abi and out["recommended"] == modes[-1]
    assert out["compat_capabilities"] == sum(1 << (63 - {"power9": 1, "power10": 2, "power11": 3}[m]) for m in modes)
    assert out["source"] == ("device-tree" if "--fallback" in args else "ioctl")


@pytest.mark.parametrize(
    ("host", "abi", "code", "error"),
    [
        ("kvm-l1-no-cpu-version", "linux-7.3", 1, {"errno": 22, "name": "EINVAL"}),
        ("kvm-l1-p8-compat", "linux-7.3", 1, {"errno": 22, "name": "EINVAL", "call": "KVM_CREATE_VM"}),
        ("powervm-p10-hcall-hardware", "v4", 1, {"errno": 1, "name": "EPERM"}),
        ("pseries-kvm-pr", "v5", 1, {"errno": 25, "name": "ENOTTY"}),
        ("pseries-kvm-pr", "linux-7.3", 3, {"kind": "unsupported"}),  # a PR VM: cap 250 says 0
        ("powervm-p11", "none", 3, {"kind": "unsupported"}),
        ("x86_64", "linux-7.3", 3, {"kind": "unsupported"}),
        ("no-kvm", "linux-7.3", 3, {"kind": "no-device", "name": "ENOENT"}),
    ],
)
def test_json_failure(host: str, abi: str, code: int, error: dict[str, object]) -> None:
    r = run("kvm-compat-caps", "--sim", host, "--abi", abi, "--json")
    assert r.returncode == code
    got = json.loads(r.stdout)["error"]
    assert {k: got[k] for k in error} == error
    assert len(r.stderr.strip().splitlines()) == 1


def test_text_output() -> None:
    r = run("kvm-compat-caps", "--sim", "powervm-p11")
    assert r.returncode == 0
    assert "abi:                 linux-7.3" in r.stdout
    assert "qemu_host_compat_pvr: 0x00821200" in r.stdout
    assert "compat_capabilities: 0x3000000000000000" in r.stdout
    assert "modes:               power10 power11" in r.stdout
    assert "max-cpu-compat=power11" in r.stdout
    assert "source:              ioctl" in r.stdout


def test_text_failure_is_one_line_with_the_reason() -> None:
    r = run("kvm-compat-caps", "--sim", "kvm-l1-no-cpu-version")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        "kvm-compat-caps: KVM_PPC_GET_COMPAT_CAPS: EINVAL: "
        "the host has no cpu-version property in any cpu node (nested API v1)\n"
    )


def test_real_device_that_does_not_exist_is_exit_3(tmp_path: Path) -> None:
    r = run("kvm-compat-caps", "--device", str(tmp_path / "kvm"), "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["error"]["name"] == "ENOENT"


@pytest.mark.requires_real_kvm
def test_this_machines_real_device() -> None:
    r = run("kvm-compat-caps", "--json")
    if os.uname().machine == "x86_64":
        assert r.returncode == 3
        assert json.loads(r.stdout)["error"]["kind"] == "unsupported"


BAD_USAGE = [
    ["--bogus"],
    ["--sim", "power42"],
    ["--sim", "powervm-p11", "--abi", "v6"],
    ["--sim", "powervm-p11", "--device", "/dev/kvm"],
    ["--sim", "powervm-p11", "--struct-size", "20"],
    ["--sim", "powervm-p11", "--struct-size", "abc"],
    ["--sim", "powervm-p11", "--ioctl-nr", "0x100"],
    ["--device", "/dev/kvm", "--hosts-dir", "/"],  # a real device has no host profile
]


@pytest.mark.parametrize("args", BAD_USAGE, ids=" ".join)
def test_bad_usage_is_one_line_and_exit_2(args: list[str]) -> None:
    r = run("kvm-compat-caps", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_sim_finds_the_simulator_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client imports no simulator: ``--sim`` asks the ``kvmcompat.simulators`` entry points
    (kvmsim's is ``kvmsim.user.simulated:open_host``); with none installed it is a usage error."""
    from kvmcompat import cli

    monkeypatch.setenv(profile.HOSTS_ENV, "")  # --hosts-dir sets it: restored after the test
    (ep,) = importlib.metadata.entry_points(group="kvmcompat.simulators")
    assert (ep.name, ep.value) == ("kvmsim", "kvmsim.user.simulated:open_host")
    (tmp_path / "mine.toml").write_bytes(profile.read_bytes(profile.find("powervm-p10")))
    assert cli.main(["--sim", "mine", "--hosts-dir", str(tmp_path)]) == 0
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    assert cli.main(["--sim", "powervm-p11"]) == 2


def test_malformed_profile_by_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('summary = "x"\narch = "ppc64le"\nplatform = "pseries"\n[cpu]\npvr = "P10"\n')
    for script, args in (("kvm-compat-caps", ["--sim", str(bad)]), ("kvmsim", ["show", str(bad)])):
        r = run(script, *args)
        assert r.returncode == 2
        assert r.stderr.strip().endswith(f"{bad}: cpu.pvr: expected an integer, got a string")


def test_kvmsim_hosts_lists_every_profile_with_its_summary() -> None:
    r = run("kvmsim", "hosts")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert [line.split()[0] for line in lines] == profile.names()
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_kvmsim_show() -> None:
    r = run("kvmsim", "show", "powervm-p10-hcall-hardware")
    assert r.returncode == 0
    assert "H_SUCCESS at kvm_hv init, H_HARDWARE at run time" in r.stdout
    assert "linux-7.3 kernel: cap 250 = 1; ioctl 0x2000aeb8 -> 0x2000000000000000 power10" in r.stdout
    assert "none kernel: cap 250 = 0; ioctl 0x2000aeb8 -> ENOTTY" in r.stdout
    assert "v4 draft: cap 249 = 1; ioctl 0x4018aee4 -> EPERM" in r.stdout
    assert "v5 draft: cap 250 = 1; ioctl 0x2000aee4 -> 0x2000000000000000 power10" in r.stdout


def test_kvmsim_show_says_why_a_module_refused() -> None:
    r = run("kvmsim", "show", "powervm-hcall-unavailable")
    assert "modprobe kvm_hv: ENODEV" in r.stdout
    assert "dmesg: kvm-hv: Parent hypervisor does not support nesting (rc=-2)" in r.stdout


def test_kvmsim_matrix_has_every_profile_and_every_revision() -> None:
    r = run("kvmsim", "matrix")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["HOST", "ARCH", "LINUX-7.3", "NONE", "V5", "V4"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == profile.names()
    assert rows["kvm-l1-p11"].split()[2:] == [
        "1",
        "P9",
        "P10",
        "P11",
        "0",
        "ENOTTY",
        "1",
        "P9",
        "P10",
        "P11",
        "1",
        "P11",
    ]
    assert "ENOENT (open)" in rows["no-kvm"]


@pytest.mark.parametrize("args", [[], ["show"], ["frobnicate"], ["show", "power42"]])
def test_kvmsim_bad_usage(args: list[str]) -> None:
    r = run("kvmsim", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("module", ["kvmcompat", "kvmsim"])
def test_python_dash_m_works(module: str) -> None:
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "usage:" in r.stdout


def test_numbers_from_a_kernel_header(tmp_path: Path) -> None:
    from test_uapi import V5_HEADER

    header = tmp_path / "kvm.h"
    header.write_text(V5_HEADER.replace("0xe4", "0xb8"))  # Linux 7.3's <linux/kvm.h>
    r = run("kvm-compat-caps", "--sim", "kvm-l1-p11", "--header", str(header), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["abi"] == "linux-7.3"  # the kernel and the client both speak the header's
    r = run("kvm-compat-caps", "--sim", "kvm-l1-p11", "--header", str(header), "--abi", "v4")
    assert r.returncode == 2 and "defines a linux-7.3 ioctl, but --abi v4 was given" in r.stderr
    r = run("kvm-compat-caps", "--sim", "kvm-l1-p11", "--header", str(tmp_path / "none.h"))
    assert r.returncode == 2 and "No such file" in r.stderr


def test_kvmsim_matrix_json_is_the_behaviour_table() -> None:
    r = run("kvmsim", "matrix", "--json")
    assert r.returncode == 0
    rows = {row["host"]: row for row in json.loads(r.stdout)}
    assert sorted(rows) == profile.names()
    for host, revisions in BEHAVIOUR.items():
        for abi, (cap, _, expected) in revisions.items():
            got = rows[host][abi]
            assert got["cap"] == cap, (host, abi)
            if isinstance(expected, int):
                assert (got["compat_capabilities"], got["modes"]) == (expected, list(modes_of(expected)))
            else:
                stage, _, name = expected.rpartition(":")
                assert (got["error"], got["stage"]) == (
                    name,
                    {"": "ioctl", "create": "KVM_CREATE_VM"}.get(stage, stage),
                )


def test_a_successful_answer_of_zero_is_zero_not_an_error() -> None:
    from kvmsim.cli.commands import simulate
    from kvmsim.uapi import LINUX_7_3, POWER11

    base = profile.load("powervm-p10")  # its L0 offers only what the L1 cannot run: caps 0
    host = attrs.evolve(base, hypervisor=attrs.evolve(base.hypervisor, offers=(POWER11,)))
    seen = simulate(host, LINUX_7_3)
    assert seen.to_json() == {"cap": 1, "compat_capabilities": 0, "modes": []}
    assert seen.text() == "0x0000000000000000 (none)"


# -- what a new user hits first (issue: numbers, devices and messages) ---------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sim", "powervm-p11", "--struct-size", "1180591620717411303424"], "does not fit a __u64"),
        (["--sim", "powervm-p11", "--struct-size", "-8"], "does not fit a __u64"),
        (["--sim", "powervm-p11", "--cap", "99999999999999999999999"], "does not fit a C int"),
        (["--sim", "powervm-p11", "--ioctl-nr", "0x1b8"], "does not fit an ioctl nr"),
        (["--sim", ""], "an empty host name"),
        (["--sim", "powervm-p11", "--hosts-dir", "/nonexistent"], "/nonexistent: not a directory"),
    ],
)
def test_every_number_and_name_is_checked_where_it_is_parsed(args: list[str], message: str) -> None:
    r = run("kvm-compat-caps", *args)
    assert (r.returncode, r.stdout) == (2, "") and len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr


def test_kvmsim_run_checks_the_cap_as_the_client_does() -> None:
    r = run("kvmsim", "run", "--host", "powervm-p11", "--cap", "99999999999999999999999", "--", "true")
    assert r.returncode == 2 and "does not fit a C int" in r.stderr


def test_a_huge_struct_size_is_answered_at_once_without_allocating_it() -> None:
    """2 GiB in the size field: the kernel refuses it at the PAGE_SIZE guard; the client
    allocates no more than a kernel could read (this took 55 s and 10.5 GB before)."""
    import resource

    r = run("kvm-compat-caps", "--sim", "powervm-p11", "--struct-size", str(2**31), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["name"] == "E2BIG"
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 1 << 20  # KiB: under 1 GiB


def test_a_device_that_is_not_kvm_says_so() -> None:
    r = run("kvm-compat-caps", "--device", "/dev/null", "--json")
    assert r.returncode == 3, r.stderr
    assert "not a KVM device" in r.stderr and json.loads(r.stdout)["error"]["kind"] == "no-device"


def test_record_of_a_device_that_is_not_kvm_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.toml"
    r = run("kvmsim", "record", "--device", "/dev/null", "-o", str(out))
    assert r.returncode == 3 and "/dev/null is not a KVM device" in r.stderr and not out.exists()


@pytest.mark.parametrize(("host", "abi"), [("powernv-p10", "v5"), ("x86_64", "v5"), ("powernv-p10", "linux-7.3")])
def test_a_forced_protocol_still_asks_its_capability_first(host: str, abi: str) -> None:
    r = run("kvm-compat-caps", "--sim", host, "--abi", abi, "--json")
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["error"]["kind"] == "unsupported"
    assert "no capability 250" in r.stderr or "no KVM_CAP_PPC_COMPAT_CAPS" in r.stderr


@pytest.mark.parametrize("command", [["show", "HOST"], ["run", "--host", "HOST", "--", "true"], ["matrix"]])
def test_hosts_dir_is_taken_after_the_subcommand_too(tmp_path: Path, command: list[str]) -> None:
    src = profile.resolve("powervm-p11")
    (tmp_path / "my-host.toml").write_text(src.read_text())
    argv = [a.replace("HOST", "my-host") for a in command]
    where = argv.index("--") if "--" in argv else len(argv)
    r = run("kvmsim", *argv[:where], "--hosts-dir", str(tmp_path), *argv[where:])
    assert r.returncode == 0, r.stderr
    if command[0] == "matrix":
        assert "my-host" in r.stdout
    assert "--hosts-dir" in run("kvmsim", command[0], "--help").stdout


def test_stale_and_vague_messages_name_what_was_wrong(tmp_path: Path) -> None:
    r = run("kvmsim", "record", "--no-device-ok", "-o", str(tmp_path / "rec" / "x.toml"))
    assert r.returncode == 2 and "rec does not exist" in r.stderr
    r = run("kvmsim", "lab", "-j", "-3")
    assert r.returncode == 2 and "argument -j/--jobs" in r.stderr and "does not fit" in r.stderr
    binary = tmp_path / "x.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    r = run("kvmsim", "verify", str(binary))
    assert r.returncode == 2 and str(binary) in r.stderr and "not UTF-8" in r.stderr


def test_help_says_how_a_header_is_read_and_it_is_so(tmp_path: Path) -> None:
    """Where --help states a fact about behaviour, the behaviour holds it."""
    from kvmsim.uapi import header_rules

    helptext = " ".join(run("kvm-compat-caps", "--help").stdout.split())
    assert "an _IOR definition means v4's rules; _IO with nr 0xe4 v5's; any other _IO" in helptext
    assert (header_rules("_IOR", 0xE4).name, header_rules("_IO", 0xE4).name, header_rules("_IO", 0xB8).name) == (
        "v4",
        "v5",
        "linux-7.3",
    )


@pytest.mark.skipif(subprocess.run(["cc", "--version"], capture_output=True).returncode != 0, reason="no cc")
def test_a_static_program_under_the_shim_is_refused_rather_than_let_reach_the_real_device(tmp_path: Path) -> None:
    """--intercept preload cannot reach a static program: refused unless asked; the default
    (seccomp) runs it against the simulated host (tests/test_seccomp.py)."""
    src = tmp_path / "p.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("ran"); return 0; }\n')
    exe = tmp_path / "p"
    if subprocess.run(["cc", "-static", "-o", str(exe), str(src)], capture_output=True).returncode != 0:
        pytest.skip("no static libc here")
    r = run("kvmsim", "run", "--host", "powervm-p11", "--intercept", "preload", "--", str(exe))
    assert r.returncode == 125 and "statically linked" in r.stderr and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    r = run("kvmsim", "run", "--host", "powervm-p11", "--intercept", "preload", "--allow-unreached", "--", str(exe))
    assert r.returncode == 0 and r.stdout == "ran\n"
    r = run("kvmsim", "run", "--host", "powervm-p11", "--", str(exe))
    assert r.returncode == 0 and r.stdout == "ran\n"


# -- start-up: what a path does not use, it does not import (make bench has the times) ---------

IMPORTED = """
import sys
from kvmcompat.cli import main
main(sys.argv[1:])
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "absent"),
    [
        (
            ["--device", "/dev/null"],
            ["json", "shutil", "pathlib", "tomllib", "kvmsim.kernel.kvm_main", "importlib.metadata"],
        ),
        (["--device", "/dev/null", "--json"], ["shutil", "pathlib", "kvmsim.kernel.kvm_main", "importlib.metadata"]),
        (
            ["--sim", "powervm-p11"],
            ["json", "difflib", "tomllib", "kvmsim.kernel.x86", "kvmsim.kernel.hostfs"],
        ),  # a built-in profile comes from its index (kvmsim.kernel._hosts), not tomllib; the
        # simulator is found by entry point (importlib.metadata brings pathlib and shutil)
    ],
)
def test_a_start_up_path_imports_only_what_it_uses(args: list[str], absent: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", IMPORTED, *args], capture_output=True, text=True, check=False)
    imported = set(proc.stderr.split("\n")[-2].split())
    assert "kvmcompat.cli" in imported
    assert imported.isdisjoint(absent), sorted(imported & set(absent))


RUN_IMPORTED = """
import sys
from kvmsim.cli import main
main(sys.argv[1:])
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


@needs_seccomp
def test_kvmsim_run_under_seccomp_loads_nothing_of_the_preload_path() -> None:
    """The server, its channel, the shim's wire and logging are the preload path's."""
    cmd = [sys.executable, "-c", RUN_IMPORTED, "run", "--host", "powervm-p11", "--", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    imported = set(proc.stderr.split("\n")[-2].split())
    assert "kvmsim.seccomp.supervisor" in imported
    absent = {
        "kvmsim.intercept.server",
        "kvmsim.intercept.channel",
        "kvmsim.preload.runner",
        "logging",
        "json",
        "tomllib",
    }
    assert imported.isdisjoint(absent), sorted(imported & absent)


@pytest.mark.parametrize("columns", ["", "0", "33", "120", "junk"])
def test_help_is_as_wide_as_argparse_makes_it(columns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from kvmcompat.args import TerminalWidth

    monkeypatch.setenv("COLUMNS", columns)
    assert TerminalWidth("x")._width == argparse.HelpFormatter("x")._width


# -- "The first hour, second pass": a bad trace path, record over a profile, --version --------


@pytest.mark.parametrize("trace", ["/nonexistent/dir/t.log", "/etc"])
@pytest.mark.parametrize(
    "command", [["run", "--host", "powervm-p11", "--", "true"], ["serve", "--host", "powervm-p11"]]
)
def test_a_bad_trace_path_is_one_line_naming_the_trace_file_before_anything_starts(
    trace: str, command: list[str], tmp_path: Path
) -> None:
    """Was: `./prog: command not found` (127), "cannot execute: Is a directory" (126), a traceback."""
    if command[0] == "serve":
        command = [*command, "--socket", str(tmp_path / "s.sock")]
    r = subprocess.run(
        [str(Path(sys.executable).with_name("kvmsim")), command[0], f"--trace={trace}", *command[1:]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert (
        r.stderr.startswith(f"kvmsim: error: --trace {trace}: cannot write the trace there")
        and "Traceback" not in r.stderr
    )
    assert not (tmp_path / "s.sock").exists()


def test_record_refuses_to_overwrite_a_profile_without_force(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text("# hand-written\n")
    r = subprocess.run(
        [str(Path(sys.executable).with_name("kvmsim")), "record", "--device", str(tmp_path / "none"), "-o", str(mine)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (r.returncode, mine.read_text()) == (2, "# hand-written\n")
    assert "already exists; nothing written (--force replaces it)" in r.stderr


@pytest.mark.parametrize("prog", ["kvmsim", "kvm-compat-caps"])
def test_version_is_one_source(prog: str) -> None:
    import kvmcompat

    import kvmsim
    from kvmsim._version import __version__

    r = subprocess.run([str(Path(sys.executable).with_name(prog)), "--version"], capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, f"{prog} {__version__}")
    assert kvmsim.__version__ == kvmcompat.__version__ == __version__ == importlib.metadata.version("kvmsim")


def test_fallback_with_nothing_in_the_device_tree_says_so() -> None:
    r = subprocess.run(
        [str(Path(sys.executable).with_name("kvm-compat-caps")), "--sim", "powernv-p10", "--fallback"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 3
    assert (
        r.stderr.splitlines()[-1] == "kvm-compat-caps: --fallback: the device tree has no cpu-version to fall back on"
    )


@pytest.mark.parametrize(("module", "argv"), [("kvmsim.cli", ["show"]), ("kvmcompat.cli", ["--sim"])])
def test_ctrl_c_during_start_up_is_exit_130_without_a_traceback(module: str, argv: list[str], tmp_path: Path) -> None:
    """SIGINT while the CLI reads its profile (tomllib made slow, so the signal lands there)."""
    import shutil
    import signal
    import time

    mine = tmp_path / "mine.toml"
    shutil.copy(profile.resolve("powervm-p11"), mine)
    code = (
        "import sys, time, tomllib\n"
        "real = tomllib.loads\n"
        "def slow(*a, **k):\n"
        "    print('loading', flush=True); time.sleep(30); return real(*a, **k)\n"
        "tomllib.loads = slow\n"
        f"from {module} import main\n"
        f"sys.exit(main({[*argv, str(mine)]!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while proc.stdout.readline() != "loading\n":
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert (proc.returncode, "Traceback" in err) == (130, False), err
