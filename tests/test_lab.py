"""The real-kernel lab's own parts, without QEMU: the probe table compiled into the guest, the
initramfs, the console read back, the private apt, the CLI's errors.  (The recordings the lab
wrote are verified in test_record.py; .ci/run runs the lab itself.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from test_cross import missing

from kvmsim import Kernel, SimDevice, cli, uapi
from kvmsim.intercept.build import compile_c
from kvmsim.lab import boot as lab_boot
from kvmsim.lab import build, configs, debian
from kvmsim.uapi import ARCHES, KVM_IRQ_LINE, KVM_PPC_CONFIGURE_V3_MMU, REVISIONS, Arch
from kvmsim.user import probe

PPC = ARCHES["ppc64le"]
NO_TOOLS = missing("ppc64le")


def test_the_guest_asks_every_probe_the_simulator_is_checked_with() -> None:
    table = build.probes_h()
    probes = list(probe.kvm_probes(REVISIONS.values(), sweep=True))
    assert table.count("\n\t{") == len(probes)
    assert all(f'"cap {n} on {fd}", ' in table for n in probe.SWEEP_CAPS for fd in ("dev", "vm"))
    for p in probes:
        assert f'"{p.name}", ' in table
    assert '"linux-7.3 ioctl size 65537", FD_VM, 0x2000aeb8UL, ARG_BUF, 65537UL' in table
    assert '"cap 250 on vm", FD_VM, 0x2000ae03UL, ARG_INT, 0xfaUL' in table
    assert '"v4 ioctl size 32 tail", FD_VM, 0x4018aee4UL, ARG_BUF, 32UL, {0, 0, 0, 0, 0, 0, 0, 0, 32,' in table


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler here")
def test_the_prober_compiles_with_the_table(tmp_path: Path) -> None:
    (tmp_path / "probes.h").write_text(build.probes_h())
    source = resources.files("kvmsim.lab").joinpath("prober.c").read_text()
    (tmp_path / "prober.c").write_text(source)
    r = subprocess.run(
        ["cc", "-fsyntax-only", "-Wall", "-Werror", str(tmp_path / "prober.c")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def parse_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    out, off = [], 0
    while True:
        assert data[off : off + 6] == b"070701"
        fields = [int(data[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        off += 110
        name = data[off : off + namesize - 1].decode()
        off += namesize + (-(off + namesize) % 4)
        body = data[off : off + size]
        off += size + (-(off + size) % 4)
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, body))


def test_initramfs_is_newc_with_init_and_the_modules(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"\x7fELF-prober")
    (tmp_path / "k").write_bytes(b"xz" * 3)
    entries = parse_newc(build.initramfs(tmp_path / "p", {"kvm.ko.xz": tmp_path / "k"}))
    assert entries == [
        ("dev", 0o40755, b""),
        ("proc", 0o40755, b""),
        ("sys", 0o40755, b""),
        ("init", 0o100755, b"\x7fELF-prober"),
        ("kvm.ko.xz", 0o100644, b"xzxzxz"),
    ]


CONSOLE = """\
[    0.4] nvram: noise
KVMSIM module\t/kvm.ko.xz\t0\r
KVMSIM module\t/kvm-hv.ko.xz\tENODEV\r
KVMSIM uname\trelease\t7.3-powerpc64le\r
KVMSIM uname\tmachine\tppc64le\r
KVMSIM pagesize\t-\t4096\r
KVMSIM cpuinfo\t-\trevision\t: 2.0 (pvr 0080 1200)\r
KVMSIM cpuinfo\t-\tplatform\t: pSeries\r
KVMSIM cpu\tPowerPC,POWER10@0\t0x0f000006\r
KVMSIM sysmodule\tkvm\tpresent\r
KVMSIM probe\topen\tfd\r
KVMSIM probe\tcreate vm\tEINVAL\r
KVMSIM probe\tcap 250 on dev\t0\r
KVMSIM probe\tv4 ioctl size 32\t0 000000 tail=changed\r
KVMSIM fileop\tdev.read\tEINVAL\r
KVMSIM fileop\tdev.link\t/dev/kvm\r
KVMSIM dmesg\t-\t<6>[    1.9] kvm-hv: Parent hypervisor does not support nesting (rc=-2)\r
KVMSIM done\t-\t-\r
"""


def test_the_console_reads_back_as_record_observations() -> None:
    b = lab_boot.Boot(configs.CONFIGS["no-nesting-p10"], (), CONSOLE, 5.0, None)
    obs = lab_boot.observations(b)
    assert obs["probes"] == {
        "open": "fd",
        "create vm": "EINVAL",
        "cap 250 on dev": 0,
        "v4 ioctl size 32": "0 000000 tail=changed",
    }
    assert (obs["kernel"], obs["machine"], obs["page_size"]) == ("7.3-powerpc64le", "ppc64le", 4096)
    assert obs["cpuinfo"] == {"revision": "2.0 (pvr 0080 1200)", "platform": "pSeries"}
    assert obs["cpus"] == [{"name": "PowerPC,POWER10@0", "cpu-version": 0x0F000006}]
    assert obs["modules"] == ["kvm"] and obs["module_init"] == {"kvm": 0, "kvm-hv": "ENODEV"}
    assert obs["file_ops"] == {"dev.read": "EINVAL", "dev.link": "/dev/kvm"}
    assert lab_boot.kvm_dmesg(obs["dmesg"]) == ["kvm-hv: Parent hypervisor does not support nesting (rc=-2)"]


def test_every_configuration_has_a_host_profile_that_boots() -> None:
    from kvmsim import Kernel
    from kvmsim.kernel import profile

    for config in configs.CONFIGS.values():
        kernel = Kernel(profile.load(config.profile), REVISIONS[configs.KERNELS[config.kernel].revision])
        assert kernel.host.name == config.profile and kernel.arch.name == "ppc64le"
        assert kernel.rev.name == configs.KERNELS[config.kernel].revision


def test_the_private_apt_touches_only_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = debian.Archive(tmp_path / "lab")
    monkeypatch.setattr(archive, "_apt", lambda *a, **k: subprocess.CompletedProcess([], 0, "", ""))
    archive.update()
    conf = archive.config.read_text()
    assert str(tmp_path) in conf and 'APT::Architectures { "amd64"; "ppc64el"; }' in conf
    assert all(str(tmp_path) in line for line in conf.splitlines() if line.startswith("Dir"))
    assert (archive.apt / "etc" / "sources.list").read_text().count("deb [arch=amd64,ppc64el") == len(debian.SUITES)


def test_no_archive_is_one_line_and_exit_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def unreachable(self: debian.Archive) -> None:
        raise debian.FetchError("cannot read Debian's archive (http://deb.debian.org/debian): Err:1 ...")

    monkeypatch.setattr(debian.Archive, "update", unreachable)
    monkeypatch.setenv("KVMSIM_CACHE", os.fspath(Path("/nonexistent")))
    assert cli.main(["lab", "--config", "powernv9", "-o", "/nonexistent/out"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read Debian's archive" in err
    assert not Path("/nonexistent/out").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lab", "--config", "p42"], "unknown configuration 'p42'"),
        (["lab", "--kernel", "7.2", "--config", "powernv9"], "no configuration"),
        (
            ["lab", "--qemu", "--config", "nested-hv-p10-linux-7.2"],
            "no QEMU start on configuration 'nested-hv-p10-linux-7.2'",
        ),
        (["lab", "--qemu", "--fuzz", "5"], "--qemu takes no --fuzz or --kernel"),
    ],
)
def test_bad_lab_usage(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_a_hung_guest_is_killed_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "usr" / "bin" / "qemu-system-ppc64"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'KVMSIM probe\topen\tfd'\nexec sleep 30\n")
    fake.chmod(0o755)
    b = lab_boot.run(configs.CONFIGS["powernv9"], tmp_path, tmp_path / "vmlinuz", tmp_path / "initrd", timeout=1)
    assert b.error is not None and "timed out after 1 s" in b.error
    assert b.seconds < 10


# -- the cache's trust (issue: nobody's planted file runs as root) ------------------------------

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
PLANT = r"""
set -e
lab="$1/lab"; out="$2"
mkdir -p "$lab/apt/state/lists/partial" "$lab/debs" "$lab/tree/usr/bin" "$lab/apt/etc"
printf '#!/bin/sh\nid > %s\n' "$out" > "$lab/tree/usr/bin/qemu-system-ppc64"
cp "$lab/tree/usr/bin/qemu-system-ppc64" "$lab/tree/usr/bin/powerpc64le-linux-gnu-as"
chmod 755 "$lab/tree/usr/bin/"*
touch -d '2099-01-01' "$lab/apt/state/updated"
: > "$lab/apt/state/lists/evil_Release"
"""


@as_root
@pytest.mark.parametrize("level", ["the cache", "its lab directory"])
def test_a_cache_planted_by_another_user_runs_nothing_as_root(level: str) -> None:
    """uid 65534 prepares a lab cache (a qemu-system-ppc64 that writes `id`, a stamp from the
    future, a forged list); root's `kvmsim lab` refuses it in one line, exit 2, runs nothing."""
    import sys
    import tempfile

    cache = Path(tempfile.mkdtemp(prefix="kvmsim-cache-", dir="/tmp"))
    proof = Path(tempfile.mkdtemp(prefix="proof-", dir="/tmp"))
    try:
        if level == "the cache":
            os.chown(cache, NOBODY, NOBODY)
        else:
            cache.chmod(0o755)
            (cache / "lab").mkdir()
            os.chown(cache / "lab", NOBODY, NOBODY)
        proof.chmod(0o777)
        nobody = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
        subprocess.run([*nobody, "sh", "-c", PLANT, "plant", str(cache), str(proof / "id")], check=True)
        kvmsim = Path(sys.executable).with_name("kvmsim")
        r = subprocess.run(
            [str(kvmsim), "lab", "--config", "powernv10", "-o", str(proof / "out")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "KVMSIM_CACHE": str(cache)},
        )
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "refusing the lab cache" in r.stderr
        assert not (proof / "id").exists()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(proof, ignore_errors=True)


def _fake_index(archive: debian.Archive, monkeypatch: pytest.MonkeyPatch, blob: bytes) -> debian.Candidate:
    import hashlib

    candidate = debian.Candidate("qemu-system-ppc", "1:10.1+ds-1", "amd64", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(archive, "candidates", lambda packages: {p.name: candidate for p in packages})
    return candidate


def test_a_deb_is_reused_only_when_its_sha256_is_the_signed_indexs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = debian.Archive(tmp_path / "lab")
    archive._setup()
    good = b"the real package"
    candidate = _fake_index(archive, monkeypatch, good)
    assert candidate.filename == "qemu-system-ppc_1%3a10.1+ds-1_amd64.deb"
    debs = archive.debs
    (debs / "qemu-system-ppc_1%3a10.1+ds-1_aaa.deb").write_bytes(b"planted: sorts first")
    (debs / candidate.filename).write_bytes(b"planted: the right name, the wrong bytes")
    downloads: list[tuple[str, ...]] = []

    def apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        downloads.append(args)
        (debs / candidate.filename).write_bytes(good)
        return subprocess.CompletedProcess([], 0, "", "")

    unpacked: list[str] = []
    monkeypatch.setattr(archive, "_apt", apt)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: unpacked.append(str(cmd[2])))
    pkg = configs.QEMU[0]
    archive.fetch([pkg])
    assert downloads == [("download", pkg.spec)]  # the wrong bytes were not taken
    assert unpacked == [str(debs / candidate.filename)]
    archive.fetch([pkg])
    assert len(downloads) == 1  # the verified one is reused


def test_a_download_whose_sha256_is_wrong_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = debian.Archive(tmp_path / "lab")
    archive._setup()
    candidate = _fake_index(archive, monkeypatch, b"the real package")

    def apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        (archive.debs / candidate.filename).write_bytes(b"what a mirror swapped in")
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(archive, "_apt", apt)
    with pytest.raises(debian.FetchError, match="SHA256 is not the signed index's"):
        archive.fetch([configs.QEMU[0]])


def test_a_stamp_from_the_future_does_not_stop_the_refetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = debian.Archive(tmp_path / "lab")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(archive, "_apt", lambda *a, **k: calls.append(a) or subprocess.CompletedProcess([], 0, "", ""))
    archive.update()
    archive.update()
    assert calls == [("update",)]  # fresh: once a day
    stamp = archive.apt / "state" / "updated"
    os.utime(stamp, (4102444800, 4102444800))  # 2100
    archive.update()
    assert calls == [("update",), ("update",)]


def test_apt_checks_signatures_and_skips_the_date_only_where_the_snapshot_needs_it(tmp_path: Path) -> None:
    archive = debian.Archive(tmp_path / "lab")
    archive._setup()
    conf = archive.config.read_text()
    assert "Check-Valid-Until" not in conf and "AllowInsecure" not in conf and "trusted=yes" not in conf
    for line in (archive.apt / "etc" / "sources.list").read_text().splitlines():
        suite = line.split()[-2]
        assert f"signed-by={debian.KEYRING}" in line
        assert ("check-valid-until=no" in line) == (suite in debian.STALE_OK)


# -- the kernel built here (kvmsim.lab.kbuild) --------------------------------------------------


def test_the_built_kernels_configurations_pack_what_they_load(tmp_path: Path) -> None:
    from kvmsim.lab import kbuild, kernel_files

    mods = {m: tmp_path / f"{m}.ko.xz" for m in kbuild.MODULES}
    built = kbuild.Built(tmp_path / "vmlinux", mods, "7.3.0-rc7", 0.0)
    archive = debian.Archive(tmp_path / "archive")
    for name, modules in [
        ("nested-hv-p10-64k", ["kvm", "kvm-hv"]),
        ("pr-p10-hash-64k", ["kvm", "kvm-pr"]),
        ("powernv9-hash-hv-pr-64k", ["kvm", "kvm-hv", "kvm-pr"]),
    ]:
        config = configs.CONFIGS[name]
        assert isinstance(configs.KERNELS[config.kernel], configs.KernelBuild)
        vmlinux, packed = kernel_files(config, archive, built)
        assert vmlinux == tmp_path / "vmlinux" and packed == {f"{m}.ko.xz": mods[m] for m in modules}
        assert config.recording == f"qemu-{name}-linux-7.3.toml"


def test_a_build_is_cached_by_its_inputs(tmp_path: Path) -> None:
    from kvmsim.lab import kbuild

    first = kbuild.digest("7.3~rc7-1~exp1", tmp_path)
    assert kbuild.digest("7.3~rc7-1~exp1", tmp_path) == first
    assert kbuild.digest("7.3-1", tmp_path) != first  # a new source package rebuilds
    assert "CONFIG_PPC_64K_PAGES=y" in kbuild.FRAGMENT and "CONFIG_KVM_BOOK3S_64_PR=m" in kbuild.FRAGMENT


def test_a_build_missing_its_modules_is_one_line(tmp_path: Path) -> None:
    from kvmsim.lab import kbuild

    (tmp_path / "out/include/config").mkdir(parents=True)
    (tmp_path / "out/include/config/kernel.release").write_text("7.3.0\n")
    (tmp_path / "out/vmlinux").write_bytes(b"")
    with pytest.raises(debian.FetchError, match="missing kvm, kvm-hv, kvm-pr"):
        kbuild._built(tmp_path, 0.0)


# -- the archive is the machine's own (a site mirror or proxy), or the one the environment names --


@pytest.mark.parametrize(
    ("files", "env", "want"),
    [
        ({"debian.sources": "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
          "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
          "Suites: bookworm-security\n"}, None, "http://mirror.example/debian"),
        ({"a.list": "# deb http://commented.example/debian sid main\n"
          "deb [arch=amd64 signed-by=/k.gpg] http://proxy.example:3142/debian bookworm main\n"}, None,
         "http://proxy.example:3142/debian"),
        ({"other.sources": "Types: deb\nURIs: https://third.party/apt\nSuites: stable\n"}, None, debian.MIRROR),
        ({"debian.sources": "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"},
         "http://override.example/debian/", "http://override.example/debian"),
    ],
)  # fmt: skip
def test_the_mirror_is_the_machines_own_unless_the_environment_names_one(
    files: dict[str, str], env: str | None, want: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if env is None:
        monkeypatch.delenv(debian.MIRROR_ENV, raising=False)
    else:
        monkeypatch.setenv(debian.MIRROR_ENV, env)
    uri, where = debian.mirror((str(tmp_path),))
    assert uri == want
    if env:
        assert where == f"${debian.MIRROR_ENV}"
    elif want == debian.MIRROR:
        assert where.startswith("the default")
    else:
        assert where == str(tmp_path / next(iter(files)))


def test_the_private_apt_uses_the_mirror_and_refetches_its_lists_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("apt-get") is None or not Path(debian.KEYRING).exists():
        pytest.skip("no apt here")
    asked: list[tuple[str, ...]] = []

    def apt(self: debian.Archive, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        asked.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(debian.Archive, "_apt", apt)
    monkeypatch.setenv(debian.MIRROR_ENV, "http://site.example/debian")
    archive = debian.Archive(tmp_path / "lab")
    archive.update()
    assert " http://site.example/debian sid main" in (archive.apt / "etc" / "sources.list").read_text()
    archive.update()  # fresh lists of this mirror: not fetched again
    assert asked == [("update",)]
    monkeypatch.setenv(debian.MIRROR_ENV, "http://other.example/debian")
    debian.Archive(tmp_path / "lab").update()  # another mirror: its own lists
    assert asked == [("update",), ("update",)]


@pytest.mark.parametrize("sweep", [False, True])
def test_every_probe_has_its_own_name(sweep: bool) -> None:
    """A recording keys answers by name: two probes of one name would keep only the last answer
    (the VPA probes once set VPA_ADDR to 0 twice, and the refused first set went unseen)."""
    from collections import Counter

    from kvmsim.user import probe

    names = Counter(p.name for p in probe.kvm_probes(sweep=sweep))
    assert [n for n, count in names.items() if count > 1] == []


def test_a_nested_papr_boot_tells_the_prober_its_l0_is_qemus() -> None:
    """QEMU's nested-papr L0 aborts on the partition table a radix KVM_PPC_CONFIGURE_V3_MMU sends
    it: those boots carry the word, and the probes that would send it are marked with it."""
    papr = {name for name, c in configs.CONFIGS.items() if "cap-nested-papr=on" in c.opts}
    assert papr and all(
        (probe.QEMU_PAPR_L0 in c.cmdline().split()) == (name in papr) for name, c in configs.CONFIGS.items()
    )
    marked = {p.name for p in probe.kvm_probes(sweep=True) if p.skip_under == probe.QEMU_PAPR_L0}
    assert marked == {"configure mmu radix", "configure mmu radix gtse"}
    table = build.probes_h()
    assert f'"configure mmu radix", FD_VCPU_VM, {KVM_PPC_CONFIGURE_V3_MMU.request(PPC):#x}UL' in table
    assert table.count(f'"{probe.QEMU_PAPR_L0}", ') == 2 and table.count(", NULL, ") == table.count("\n\t{") - 2


@pytest.mark.skipif(NO_TOOLS is not None, reason=str(NO_TOOLS))
def test_the_prober_skips_a_probe_whose_word_is_on_the_kernel_command_line() -> None:
    """The prober, cross-built and run under kvmsim run, reads /proc/cmdline (this machine's):
    a probe marked with one of its words is not asked, one marked with another word is."""
    words = Path("/proc/cmdline").read_text().split()
    if not words:
        pytest.skip("this machine's kernel command line is empty")
    api = Arch.kvm_get_api_version
    table = build.probes_h(base=[
        probe.Probe("asked", "dev", api, lambda a: 0),
        probe.Probe("skipped", "dev", api, lambda a: 0, skip_under=words[0]),
        probe.Probe("asked too", "dev", api, lambda a: 0, skip_under="kvmsim.no-such-word"),
    ])  # fmt: skip
    source = resources.files("kvmsim.lab").joinpath("prober.c")
    with resources.as_file(source) as path:
        prober = compile_c([path], cc="powerpc64le-linux-gnu-gcc", headers={"probes.h": table}, name="skip_probe")
    kvmsim = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run([str(kvmsim), "run", "--host", "qemu-nested-papr-p10", "--", str(prober)],
                       capture_output=True, text=True, timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    asked = re.findall(r"^KVMSIM probe\t([^\t]*)\t", r.stdout, re.M)
    assert asked == ["open", "create vm", "create vcpu", "asked", "asked too"]


@pytest.mark.skipif(NO_TOOLS is not None, reason=str(NO_TOOLS))
@pytest.mark.parametrize("host", ["qemu-nested-hv-p10", "qemu-powernv9"])
def test_the_prober_asks_the_xics_device_as_the_replay_does(host: str) -> None:
    """The cross-built prober's KVM device probes (the XICS device kept from its struct's fd, that
    fd put into KVM_ENABLE_CAP and used for the attributes, closed at the end) under kvmsim run
    answer as the replay's probe.run does in-process, XICS's emulation's and (PowerNV)
    XICS-on-XIVE's."""
    papr = next(p for p in probe.kvm_probes(sweep=True) if p.name == "vcpu enable cap papr")
    base = [papr, *probe.xics_probes(), probe.Probe("irq line after", "vm", KVM_IRQ_LINE.request, lambda a: bytes(8))]
    source = resources.files("kvmsim.lab").joinpath("prober.c")
    with resources.as_file(source) as path:
        headers = {"probes.h": build.probes_h(base=base)}
        prober = compile_c([path], cc="powerpc64le-linux-gnu-gcc", headers=headers, name="xics_probe")
    kvmsim = Path(sys.executable).parent / "kvmsim"
    r = subprocess.run([str(kvmsim), "run", "--host", host, "--", str(prober)], capture_output=True, text=True,
                       timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    asked = dict(re.findall(r"^KVMSIM probe\t([^\t]*)\t(.*)$", r.stdout, re.M))
    replayed = probe.run(SimDevice(Kernel.from_profile(host)), base)
    assert asked == {name: str(a.to_toml()) for name, a in replayed.items()}
    assert asked["xics create"] == "fd" and asked["xics connect vcpu 0"] == "0"
    # XICS-on-XIVE (PowerNV) takes what XICS's emulation refuses, and has NR_SERVERS
    xive = host == "qemu-powernv9"
    assert (asked["xics set source 4097 priority 5 no icp"] == "0") == xive
    assert (asked["xics has nr servers"] == "0") == xive
    assert asked["irq line after"] == "ENXIO"  # no XICS: released, or never made


def test_an_attribute_probes_group_is_never_taken_for_a_one_reg() -> None:
    """The prober tells a kvm_device_attr probe from a kvm_one_reg one by its group, a long: group
    0xffffffff is a group (an int's -1 would have sent a kvm_one_reg: the first fuzz run's one
    disagreement, the prober's own)."""
    get = uapi.KVM_GET_DEVICE_ATTR.request
    attr = probe.Probe("attr", "device", get, lambda a: bytes(8), one_reg=4096, attr_group=0xFFFFFFFF)
    reg = probe.Probe("reg", "vcpu", get, lambda a: bytes(8), one_reg=4096)
    table = build.probes_h(base=[attr, reg])
    assert ", 4294967295L, 0}," in table and ", -1L, 0}," in table
