"""The pytest plugin: the host's files, the fake fcntl, fds, and the client under it."""

from __future__ import annotations

import errno
import fcntl
import os
import platform

import pytest
from conftest import REVS
from kvmcompat import CompatError, Options, RealDevice, query

from kvmsim import Kernel, SimDevice
from kvmsim.kernel import profile
from kvmsim.plugin.fixture import KvmHost
from kvmsim.uapi import (
    KVM_CAP_IRQ_XICS,
    KVM_CAP_PPC_PAPR,
    KVM_CREATE_DEVICE,
    KVM_CREATE_DEVICE_STRUCT,
    KVM_CREATE_VCPU,
    KVM_DEV_TYPE_VFIO,
    KVM_DEV_TYPE_XICS,
    KVM_ENABLE_CAP,
    KVM_ENABLE_CAP_STRUCT,
)


def test_unparametrized_is_the_default_host(kvm_host: KvmHost) -> None:
    assert (kvm_host.name, kvm_host.abi) == ("powervm-p11", "linux-7.3")
    assert os.path.exists("/dev/kvm")


@pytest.mark.parametrize(
    ("kvm_host", "cpu_version", "modules"),
    [
        ("powervm-p11", b"\x0f\x00\x00\x07", ["kvm", "kvm_hv"]),
        ("kvm-l1-p10-compat-p9", b"\x0f\x00\x00\x05", ["kvm", "kvm_hv"]),
        ("kvm-l1-no-cpu-version", None, ["kvm", "kvm_hv"]),
        ("pseries-kvm-pr", b"\x0f\x00\x00\x06", ["kvm", "kvm_pr"]),
        ("powervm-hcall-unavailable", b"\x0f\x00\x00\x06", ["kvm"]),  # kvm_hv refused; kvm.ko stays
        ("no-kvm", b"\x0f\x00\x00\x06", []),
    ],
    indirect=["kvm_host"],
)
def test_host_files(kvm_host: KvmHost, cpu_version: bytes | None, modules: list[str]) -> None:
    assert os.path.exists("/dev/kvm") == bool(modules)
    assert sorted(os.listdir("/sys/module")) == modules if modules else not os.path.exists("/sys/module")
    node = next(n for n in os.listdir("/proc/device-tree/cpus") if "@" in n)
    path = f"/proc/device-tree/cpus/{node}/cpu-version"
    if cpu_version is None:
        assert not os.path.exists(path)
    else:
        with open(path, "rb") as f:
            assert f.read() == cpu_version
    with open(f"/proc/device-tree/cpus/{node}/device_type", "rb") as f:
        assert f.read() == b"cpu\0"


@pytest.mark.parametrize(
    ("kvm_host", "lines"),
    [
        ("powervm-p11", ["cpu\t\t: POWER11 (architected), altivec supported", "platform\t: pSeries"]),
        (
            "powervm-p11-compat-p10",
            ["cpu\t\t: POWER10 (architected), altivec supported", "revision\t: 2.0 (pvr 0082 0200)"],
        ),
        ("kvm-l1-p9", ["revision\t: 2.2 (pvr 004e 1202)", "model\t\t: IBM pSeries (emulated by qemu)"]),
        ("powernv-p10", ["cpu\t\t: POWER10 (raw), altivec supported", "platform\t: PowerNV", "firmware\t: OPAL"]),
        ("x86_64", ["vendor_id\t: GenuineIntel"]),
    ],
    indirect=["kvm_host"],
)
def test_proc_cpuinfo(kvm_host: KvmHost, lines: list[str]) -> None:
    with open("/proc/cpuinfo") as f:
        text = f.read().splitlines()
    for line in lines:
        assert line in text
    for key in ("timebase", "machine", "clock") if kvm_host.profile.arch.is_powerpc else ():
        assert any(t.startswith(key) for t in text)


@pytest.mark.parametrize("kvm_host", ["powervm-p11-be", "x86_64"], indirect=True)
def test_dev_kvm_is_a_character_device_with_no_read_or_write(kvm_host: KvmHost) -> None:
    """As the kernel and kvmsim run show it (0660, udev's); read and write are EINVAL, as
    vfs_read answers a file without .read, and ioctl still reaches the kernel."""
    import stat

    st = os.stat("/dev/kvm")
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    fd = os.open("/dev/kvm", os.O_RDWR)
    try:
        for call in (lambda: os.read(fd, 1), lambda: os.write(fd, b"\0")):
            with pytest.raises(OSError) as exc:
                call()
            assert exc.value.errno == errno.EINVAL
        assert fcntl.ioctl(fd, kvm_host.kernel.KVM_GET_API_VERSION, 0) == 12
    finally:
        os.close(fd)


def test_uname_is_the_hosts_arch(kvm_host: KvmHost) -> None:
    assert os.uname().machine == platform.machine() == kvm_host.profile.arch.name


def test_vm_fds_are_fake_fds_close_and_ebadf_behave(kvm_host: KvmHost) -> None:
    k = kvm_host.kernel
    dev = os.open("/dev/kvm", os.O_RDWR)
    vm = fcntl.ioctl(dev, k.KVM_CREATE_VM, 0)
    assert isinstance(vm, int) and vm != dev
    assert fcntl.ioctl(vm, k.KVM_CHECK_EXTENSION, k.rev.cap) == 1
    dup = os.dup(vm)
    os.close(vm)
    assert fcntl.ioctl(dup, k.KVM_CHECK_EXTENSION, k.rev.cap) == 1  # same VM file
    os.close(dup)
    with pytest.raises(OSError) as exc:
        fcntl.ioctl(vm, k.KVM_CHECK_EXTENSION, k.rev.cap)
    assert exc.value.errno == errno.EBADF
    os.close(dev)


@pytest.mark.parametrize(
    "kvm_host", [("qemu-nested-hv-p10", "linux-7.3"), ("qemu-powernv9", "linux-7.3")], indirect=True
)
def test_a_kvm_device_is_a_fake_fd_in_its_struct_and_connects_a_vcpu(kvm_host: KvmHost) -> None:
    """KVM_CREATE_DEVICE answers 0 and the struct holds the test's own (fake) fd, whether the
    argument is bytes (the copy fcntl returns) or a buffer; KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS) finds
    which file an fd is: the device, another fake file (no KVM device: EPERM), none (EBADF). On a
    pseries L1 the device is XICS's emulation, on PowerNV XICS-on-XIVE's."""
    k, bo = kvm_host.kernel, kvm_host.kernel.arch.byteorder
    dev = os.open("/dev/kvm", os.O_RDWR)
    vm = fcntl.ioctl(dev, k.KVM_CREATE_VM, 0)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU.request(k.arch), 0)
    cd = bytearray(KVM_CREATE_DEVICE_STRUCT.pack(bo, {"type": KVM_DEV_TYPE_XICS}))
    assert fcntl.ioctl(vm, KVM_CREATE_DEVICE.request(k.arch), cd) == 0
    xics = KVM_CREATE_DEVICE_STRUCT.unpack(bo, cd)["fd"]
    vfio = KVM_CREATE_DEVICE_STRUCT.pack(bo, {"type": KVM_DEV_TYPE_VFIO})
    answered = fcntl.ioctl(vm, KVM_CREATE_DEVICE.request(k.arch), vfio)
    assert isinstance(answered, bytes)
    vfio_fd = KVM_CREATE_DEVICE_STRUCT.unpack(bo, answered)["fd"]
    assert len({xics, vfio_fd, vm, vcpu}) == 4

    def connect(fd: int) -> int:
        for cap, arg0 in ((KVM_CAP_PPC_PAPR, 0), (KVM_CAP_IRQ_XICS, fd)):
            arg = KVM_ENABLE_CAP_STRUCT.pack(bo, {"cap": cap, "arg0": arg0})
            try:
                fcntl.ioctl(vcpu, KVM_ENABLE_CAP.request(k.arch), arg)
            except OSError as exc:
                return exc.errno or 0
        return 0

    with open("/proc/cpuinfo", "rb") as other:
        connected = [connect(fd) for fd in (9999, other.fileno(), vfio_fd, xics)]
    assert connected == [errno.EBADF, errno.EPERM, errno.EPERM, 0]
    for fd in (xics, vfio_fd, vcpu, vm, dev):
        os.close(fd)


def test_ioctl_on_any_other_fake_file_is_enotty(kvm_host: KvmHost) -> None:
    with open("/proc/cpuinfo", "rb") as f, pytest.raises(OSError) as exc:
        fcntl.ioctl(f.fileno(), kvm_host.kernel.KVM_CHECK_EXTENSION, 250)
    assert exc.value.errno == errno.ENOTTY


@pytest.mark.parametrize("kvm_host", [("powervm-p11", "v5")], indirect=True)
def test_fcntl_contract_through_the_fixture(kvm_host: KvmHost) -> None:
    k = kvm_host.kernel
    dev = os.open("/dev/kvm", os.O_RDWR)
    vm = fcntl.ioctl(dev, k.KVM_CREATE_VM, 0)
    buf = bytearray(k.rev.layout.pack("little", size=32) + bytes(8))
    with pytest.raises(OSError) as exc:
        fcntl.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, buf)
    assert exc.value.errno == errno.E2BIG
    assert k.rev.layout.unpack("little", bytes(buf[:24]))["size"] == 24  # the write-back is visible
    out = fcntl.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, bytes(buf[:24]))
    assert k.rev.layout.unpack("little", out)["compat_capabilities"] == 0x3000000000000000  # type: ignore[arg-type]
    os.close(vm)
    os.close(dev)


def _answer(device: RealDevice | SimDevice) -> dict[str, object]:
    """The client's answer, without what names the device."""
    try:
        result = query(device, Options(fallback=True)).to_json()
    except CompatError as exc:
        error = exc.to_json()
        return (
            {k: error.get(k) for k in ("kind", "errno", "name", "reason", "call")}
            if error["kind"] == "kernel"
            else {
                "kind": error["kind"],
                "errno": error.get("errno"),
            }
        )
    result.pop("device")
    return result


@pytest.mark.parametrize("kvm_host", [(h, r) for h in profile.names() for r in REVS], indirect=True, ids=str)
def test_real_device_client_under_the_fixture_matches_the_sim_device(kvm_host: KvmHost) -> None:
    expected = _answer(SimDevice(Kernel.from_profile(kvm_host.name, abi=kvm_host.abi)))
    assert _answer(RealDevice()) == expected
    assert RealDevice().arch == kvm_host.profile.arch


def test_requires_real_kvm_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires_real_kvm
        def test_needs_kvm():
            assert True
        """
    )
    result = pytester.runpytest("-rs")
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if usable:
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*no usable /dev/kvm here*"])


def test_bad_fixture_parameter_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("kvm_host", [42], indirect=True)
        def test_bad(kvm_host):
            pass
        """
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["*kvm_host: expected a host name or path, (name, revision) or (name, revision, overrides), got 42*"]
    )
    assert result.ret != 0


def test_plugin_is_inert_without_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import array, fcntl, os, termios, types

        def test_real_fs():
            assert os.path.exists(os.getcwd())
            assert isinstance(fcntl, types.ModuleType) and fcntl.ioctl.__self__ is fcntl  # the builtin
            r, w = os.pipe()
            os.write(w, b"abcd")
            buf = array.array("i", [0])
            fcntl.ioctl(r, termios.FIONREAD, buf)  # a real ioctl on a real pipe
            assert buf[0] == 4
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_users_see_readable_ids_a_marker_overrides_and_the_call_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, struct, warnings
        from fcntl import ioctl
        from pathlib import Path
        import pytest

        def modes():
            fd = os.open("/dev/kvm", os.O_RDWR)
            vm = ioctl(fd, 0x2000AE01, 0)
            assert ioctl(vm, 0x2000AE03, 250) == 1
            buf = bytearray(struct.pack("<QQQ", 24, 0, 0))
            ioctl(vm, 0x2000AEB8, buf)
            os.close(vm)
            os.close(fd)
            return struct.unpack("<QQQ", buf)[2]

        @pytest.mark.parametrize("kvm_host", ["powervm-p11", ("kvm-l1-p10", "v5")], indirect=True)
        def test_ids(kvm_host, request):
            assert request.node.callspec.id in ("powervm-p11-linux-7.3", "kvm-l1-p10-v5")

        @pytest.mark.kvm_host("kvm-l1-p11", **{"cpu.mode": "power9"})
        def test_marker_with_an_override(kvm_host):
            assert kvm_host.profile.cpu.mode.name == "power9"
            assert modes() == 0x4000000000000000

        OFFERS = [("powervm-p11", "linux-7.3", {"hypervisor.offers": ["power10"]})]

        @pytest.mark.parametrize("kvm_host", OFFERS, indirect=True)
        def test_offers_override_and_calls(kvm_host):
            assert modes() == 0x2000000000000000
            checked = [c for c in kvm_host.calls if c.request == 0x2000AE03]
            assert [(c.fd, c.name, c.arg, c.result, c.errno) for c in checked] == [
                ("vm", "KVM_CHECK_EXTENSION", 250, 1, None)
            ]

        def test_a_failed_call_is_a_record_with_its_errno(kvm_host):
            import errno
            import fcntl
            import os

            fd = os.open("/dev/kvm", os.O_RDWR)
            try:
                fcntl.ioctl(fd, 0x2000AEB8, 0)  # a VM ioctl on /dev/kvm
            except OSError:
                pass
            os.close(fd)
            (call,) = kvm_host.calls
            assert call.name.startswith("KVM_PPC_GET_COMPAT_CAPS"), call.name
            assert (call.fd, call.result, call.errno, call.errname) == ("dev", None, errno.EINVAL, "EINVAL")

        @pytest.mark.parametrize("kvm_host", [Path("/nonexistent/x.toml")], indirect=True)
        def test_a_path(kvm_host):
            pass

        @pytest.mark.kvm_host("powervm-p11", **{"cpu.mod": "power9"})
        def test_a_bad_override(kvm_host):
            pass

        def test_left_open(kvm_host):
            fd = os.open("/dev/kvm", os.O_RDWR)
            ioctl(fd, 0x2000AE01, 0)

        def test_fcntl_contract(kvm_host):
            import fcntl
            fd = os.open("/dev/kvm", os.O_RDWR)
            class F:
                def fileno(self):
                    return fd
            assert ioctl(F(), 0x2000AE00, 0) == 12
            with pytest.raises(ValueError):
                ioctl(-1, 0x2000AE00, 0)
            vm = ioctl(fd, 0x2000AE01, 0)
            vm2 = fcntl.fcntl(vm, fcntl.F_DUPFD_CLOEXEC, 0)
            assert ioctl(vm2, 0x2000AE03, 250) == 1
            for x in (vm, vm2, fd):
                os.close(x)
        """
    )
    result = pytester.runpytest("-v", "-W", "always::ResourceWarning")
    result.stdout.fnmatch_lines(
        [
            "*test_ids?powervm-p11-linux-7.3? PASSED*",
            "*test_ids?kvm-l1-p10-v5? PASSED*",
            "*test_marker_with_an_override PASSED*",
            "*test_offers_override_and_calls?powervm-p11-linux-7.3-hypervisor.offers=?'power10'?? PASSED*",
            "*test_a_failed_call_is_a_record_with_its_errno PASSED*",
            "*test_a_path?x-linux-7.3? ERROR*",
            "*test_fcntl_contract PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(["*cpu.mod: unknown key (did you mean 'mode'?)*"])
    result.stdout.fnmatch_lines(["*KvmFdLeaked*VM fd(s) left open*"])


def test_kvm_host_and_pyfakefs_fs_share_one_filesystem_in_either_order(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(autouse=True)
        def everywhere(fs):  # a suite that fakes the filesystem in every test
            fs.create_file("/etc/app.conf", contents="x")
        """
    )
    pytester.makepyfile(
        """
        import os
        from fcntl import ioctl

        def test_fs_first(fs, kvm_host):
            assert fs is kvm_host.fs and os.path.exists("/etc/app.conf")
            assert ioctl(os.open("/dev/kvm", os.O_RDWR), 0x2000AE00, 0) == 12

        def test_kvm_host_first(kvm_host, fs):
            assert fs is kvm_host.fs
            fs.create_file("/tmp/mine")
            assert os.path.exists("/proc/device-tree/cpus") and os.path.exists("/tmp/mine")

        def test_plain_pyfakefs_is_unchanged(fs):
            fs.create_file("/x")
            assert ioctl(os.open("/x", os.O_RDONLY), 0x5401, 0) == 0  # pyfakefs's own answer
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_simulated_host_inside_hypothesis(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        from fcntl import ioctl

        def test_hypothesis_inside_simulated_host():
            from hypothesis import given, settings, strategies as st
            from kvmsim.plugin.fixture import simulated_host

            @settings(max_examples=20, deadline=None)
            @given(st.sampled_from(["powervm-p11", "kvm-l1-p10"]))
            def check(name):
                with simulated_host(name):
                    assert ioctl(os.open("/dev/kvm", os.O_RDWR), 0x2000AE00, 0) == 12

            check()
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_tests_own_files_win_and_the_host_fills_in_around_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.fixture
        def mine(fs):
            fs.create_file("/proc/cpuinfo", contents="mine")
            fs.create_file("/sys/module/kvm/refcnt", contents="7")

        def test_fs_filled_first(mine, kvm_host):
            assert open("/proc/cpuinfo").read() == "mine"
            assert open("/sys/module/kvm/refcnt").read() == "7"
            assert sorted(os.listdir("/sys/module")) == ["kvm", "kvm_hv"]
            assert os.path.exists("/proc/device-tree/cpus") and os.path.exists("/dev/kvm")

        def test_dev_kvm_opens_read_write(kvm_host):
            os.close(os.open("/dev/kvm", os.O_RDWR))
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_profile_edited_during_the_session_is_read_again(tmp_path: os.PathLike[str]) -> None:
    from kvmsim.plugin.fixture import simulated_host

    path = os.path.join(tmp_path, "mine.toml")
    text = profile.resolve("powervm-p11").read_text()
    with open(path, "w") as f:
        f.write(text)
    with simulated_host(path) as host:
        assert host.profile.cpu.mode.name == "power11"
    with open(path, "w") as f:
        f.write(text.replace('mode = "power11"', 'mode = "power10"'))
    os.utime(path, ns=(0, 1))  # a distinct mtime even on a coarse clock
    with simulated_host(path) as host:
        assert host.profile.cpu.mode.name == "power10"


def test_profiles_stay_readable_by_name_inside_from_every_search_directory(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmsim.plugin.fixture import simulated_host

    mine = os.path.join(tmp_path, "mine")
    os.mkdir(mine)
    with open(os.path.join(mine, "my-host.toml"), "w") as f:
        f.write(profile.resolve("kvm-l1-p9").read_text())
    monkeypatch.setenv("KVMSIM_HOSTS", mine)
    with simulated_host("my-host") as host:
        assert profile.load("my-host").cpu.mode.name == host.profile.cpu.mode.name == "power9"
        assert profile.load("powervm-p11").name == "powervm-p11"  # the built-in ones too
        builtin = profile.builtin_hosts()
        assert os.path.basename(builtin) in os.listdir(os.path.dirname(builtin))  # parents made when looked into


# -- what a new user hits first (issue: plugin traps) ----------------------------------------------


def test_profiles_are_found_on_the_real_filesystem_while_a_test_fakes_it(pytester: pytest.Pytester) -> None:
    """simulated_host() inside a test that already has pyfakefs's fs, with a profile no
    earlier test loaded (its own, from the kvmsim_hosts ini): never 'unknown host'."""
    from kvmsim.kernel import profile

    hosts = pytester.mkdir("my-hosts")
    (hosts / "only-here.toml").write_text(profile.resolve("powervm-p11").read_text())
    pytester.makeini(f"[pytest]\nkvmsim_hosts = {hosts}\n")
    pytester.makepyfile(
        """
        import os
        from kvmsim.plugin.fixture import simulated_host

        def test_inside_fs(fs):
            fs.create_file("/etc/app.conf")
            with simulated_host("only-here") as host:
                assert os.path.exists("/dev/kvm") and host.kernel.host.name == "only-here"

        def test_with_overrides_inside_fs(fs):
            with simulated_host("only-here", **{"hypervisor.offers": ["power10"]}):
                assert os.path.exists("/proc/device-tree")
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_real_descriptors_reach_the_real_fcntl_under_kvm_host(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import array, fcntl, os, socket, struct, termios

        def test_socketpair(kvm_host):
            a, b = socket.socketpair()
            b.send(b"abc")
            buf = array.array("i", [0])
            fcntl.ioctl(a.fileno(), termios.FIONREAD, buf)
            assert buf[0] == 3
            assert fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_RDWR == os.O_RDWR

        def test_tty(kvm_host):
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            assert struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, bytes(8)))[:2] == (24, 80)

        def test_a_fake_file_is_still_enotty(kvm_host, fs):
            import errno, pytest
            fs.create_file("/tmp/x")
            fd = os.open("/tmp/x", os.O_RDONLY)
            with pytest.raises(OSError) as exc:
                fcntl.ioctl(fd, 0x2000AE00, 0)
            assert exc.value.errno == errno.ENOTTY
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_a_module_scoped_fake_filesystem_serves_every_tests_vm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import fcntl, os, pytest

        @pytest.mark.parametrize("round", range(3))
        def test_create_vm(fs_module, kvm_host, round):
            fd = os.open("/dev/kvm", os.O_RDWR)
            vm = fcntl.ioctl(fd, 0x2000AE01, 0)
            assert fcntl.ioctl(vm, 0x2000AE03, 250) == 1
            os.close(vm)
            os.close(fd)
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_a_tests_own_host_file_wins_and_says_so(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture(autouse=True)
        def intel(fs):
            fs.create_file("/proc/cpuinfo", contents="vendor_id : GenuineIntel\\n")

        def test_reads_its_own(kvm_host):
            assert "GenuineIntel" in open("/proc/cpuinfo").read()
            assert open("/proc/device-tree/cpus/PowerPC,POWER11@0/name", "rb").read().startswith(b"PowerPC")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*HostFileShadowed: kvm_host: the test's own /proc/cpuinfo hides*"])


def test_one_public_name_per_thing() -> None:
    """Nothing has been released: the old aliases are gone, not kept beside the new names."""
    import importlib

    from kvmsim.plugin import fixture

    assert not hasattr(fixture, "SimulatedHost") and not hasattr(fixture, "HostSpec")
    for old in ("kvmsim.hostfs", "kvmsim.profile", "kvmsim.pytest_plugin"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


# -- "The first hour, second pass": no silent bypass, nothing left behind, inert until used ------


def test_ctypes_around_the_fixture_is_a_warning_naming_the_way_out(pytester: pytest.Pytester) -> None:
    """Was: ENOTTY from the real kernel (a fake fd number), read as "a kernel before 7.3"."""
    pytester.makepyfile(
        """
        import ctypes, os

        def test_bypass(kvm_host):
            fd = os.open("/dev/kvm", os.O_RDWR)
            ctypes.CDLL(None, use_errno=True).ioctl(fd, 0x2000AE00, None)
            os.close(fd)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*KvmHostUnreached*no ioctl reached the simulated kernel*kvmsim run*"])


def test_a_module_scoped_filesystem_forgets_the_kernel_after_its_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import errno, fcntl, os
        import pytest

        @pytest.fixture(scope="module")
        def shared(fs_module):
            return fs_module

        def test_first(shared, kvm_host):
            fd = os.open("/dev/kvm", os.O_RDWR)
            assert fcntl.ioctl(fd, 0x2000AE00, 0) == 12
            os.close(fd)

        def test_later_without_kvm_host(shared):
            fd = os.open("/dev/kvm", os.O_RDWR)  # the file stays: the kernel does not
            assert fcntl.ioctl(fd, 0x2000AE00, 0) == 0  # pyfakefs's own answer
            os.close(fd)
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_the_plugin_is_inert_until_used_and_leaves_the_environment_alone(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nkvmsim_hosts = myhosts\n")
    pytester.makepyfile(
        """
        import os
        from pyfakefs.fake_io import FakeFcntlModule

        def test_inert():
            assert not getattr(FakeFcntlModule, "_kvmsim_hooked", False)
            assert "KVMSIM_HOSTS" not in os.environ
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_two_hosts_never_share_a_tree() -> None:
    from kvmsim.plugin import fixture

    with fixture.simulated_host("powervm-p11") as a:
        tree_a = fixture._materialized(a.fs, {"/proc/cpuinfo": b"a"})
        assert fixture._materialized(a.fs, {"/proc/cpuinfo": b"b"}) != tree_a
        assert fixture._materialized(a.fs, {"/proc/cpuinfo": b"a"}) == tree_a


def test_leaked_fds_are_a_warning_shown_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import fcntl, os

        def test_leaks(kvm_host):
            fcntl.ioctl(os.open("/dev/kvm", os.O_RDWR), 0x2000AE01, 0)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=2)
    result.stdout.fnmatch_lines(["*KvmFdLeaked*1 /dev/kvm fd(s) left open*", "*KvmFdLeaked*1 VM fd(s) left open*"])


def test_a_parameter_and_a_marker_warn_that_the_parameter_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.kvm_host("kvm-l1-p10")
        @pytest.mark.parametrize("kvm_host", ["powervm-p11"], indirect=True)
        def test_both(kvm_host):
            assert kvm_host.name == "powervm-p11"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*KvmHostMarkerIgnored*powervm-p11-linux-7.3 wins over*kvm-l1-p10*"])


def test_a_size_larger_than_the_buffer_warns_and_stack_junk_shows_what_cpython_would(
    pytester: pytest.Pytester,
) -> None:
    """A 16-byte buffer whose size says 24: the answer is cut off, with a WrotePastBuffer
    warning (was: a silent success); size 32 reads past it, which with stack_junk=True is
    E2BIG (CPython's stack is not zeros), and with the default zeros passes."""
    pytester.makepyfile(
        """
        import errno, fcntl, os, struct
        import pytest

        def ask(size):
            fd = os.open("/dev/kvm", os.O_RDWR)
            vm = fcntl.ioctl(fd, 0x2000AE01, 0)
            try:
                buf = bytearray(struct.pack("<QQ", size, 0))
                return fcntl.ioctl(vm, 0x2000AEB8, buf)
            except OSError as exc:
                return errno.errorcode[exc.errno]
            finally:
                os.close(vm)
                os.close(fd)

        def test_cut_off(kvm_host):
            assert ask(24) == 0

        def test_zeros_past_the_buffer(kvm_host):
            assert ask(32) == 0

        @pytest.mark.kvm_host("powervm-p11", stack_junk=True)
        def test_junk_past_the_buffer(kvm_host):
            assert ask(32) == "E2BIG"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(["*WrotePastBuffer*wrote 8 byte(s) past the 16-byte buffer*"])


def test_a_subprocess_inside_kvm_host_fails_with_the_way_out(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import subprocess, sys

        def test_child(kvm_host):
            subprocess.run([sys.executable, "-c", "pass"], check=True, capture_output=True)

        def test_tmp(kvm_host, tmp_path):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*a child process sees the real filesystem*kvmsim run --host*"])
    result.stdout.fnmatch_lines(["*tmp_path is made inside pyfakefs's fake filesystem*fs.create_dir*"])


def test_a_vcpu_made_through_fcntl_is_a_fake_fd_and_its_calls_say_vcpu() -> None:
    from kvmsim.plugin import simulated_host

    with simulated_host("powervm-p11") as host:
        dev = os.open("/dev/kvm", os.O_RDWR)
        vm = fcntl.ioctl(dev, 0x2000AE01, 0)  # KVM_CREATE_VM
        vcpu = fcntl.ioctl(vm, 0x2000AE41, 0)  # KVM_CREATE_VCPU
        with pytest.raises(OSError) as exc:
            fcntl.ioctl(vcpu, 0x2000AE80, 0)  # KVM_RUN before KVM_ENABLE_CAP(PAPR): not sane
        assert exc.value.errno == errno.EINVAL
        assert [(c.fd, c.name) for c in host.calls[-2:]] == [("vm", "KVM_CREATE_VCPU"), ("vcpu", "KVM_RUN")]
        for fd in (vcpu, vm, dev):
            os.close(fd)
