"""Host profiles: every shipped one loads; every malformed one is one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmsim import ProfileError
from kvmsim.kernel import profile

REQUIRED = {
    "powervm-p10", "powervm-p11", "powervm-p11-compat-p10", "powervm-p11-be", "powervm-p10-hcall-hardware",
    "powervm-hcall-unavailable", "kvm-l1-p9", "kvm-l1-p10", "kvm-l1-p11", "kvm-l1-p10-compat-p9",
    "kvm-l1-no-cpu-version", "kvm-l1-p8-compat", "powernv-p10", "pseries-kvm-pr", "x86_64", "no-kvm",
}  # fmt: skip


def test_required_profiles_exist_with_a_one_line_summary() -> None:
    assert set(profile.names()) >= REQUIRED
    for name in profile.names():
        host = profile.load(name)
        assert host.summary and "\n" not in host.summary


def test_byte_order_follows_the_arch() -> None:
    assert profile.load("powervm-p11-be").arch.byteorder == "big"
    assert profile.load("powervm-p11").arch.byteorder == "little"


def test_cpu_nodes_follow_the_mode_unless_given() -> None:
    assert profile.load("kvm-l1-p10-compat-p9").cpu_nodes[0].cpu_version == 0x0F000005
    assert profile.load("kvm-l1-no-cpu-version").cpu_nodes[0].cpu_version is None


GOOD = """\
summary = "ok"
arch = "ppc64le"
platform = "pseries"
modules = ["kvm_hv"]
[cpu]
pvr = 0x00800200
mode = "power10"
[hypervisor]
kind = "powervm"
offers = ["power10"]
"""

MALFORMED = [
    ("bad toml", "summary = ", "bad TOML"),
    ("unknown top key", GOOD + "colour = 1\n", "colour: unknown key"),
    ("unknown cpu key", GOOD.replace("[cpu]\n", "[cpu]\nfreq = 1\n"), "cpu.freq: unknown key"),
    ("missing summary", GOOD.replace('summary = "ok"\n', ""), "summary: missing"),
    ("wrong type", GOOD.replace("pvr = 0x00800200", 'pvr = "p10"'), "cpu.pvr: expected an integer, got a string"),
    ("bool for int", GOOD.replace("pvr = 0x00800200", "pvr = true"), "cpu.pvr: expected an integer, got a boolean"),
    ("unknown mode", GOOD.replace('mode = "power10"', 'mode = "power12"'), "cpu.mode: unknown mode 'power12'"),
    ("unknown offer", GOOD.replace('["power10"]', '["power8"]'), "hypervisor.offers: unknown mode 'power8'"),
    ("unknown arch", GOOD.replace("ppc64le", "s390x"), "arch: unknown value 's390x'"),
    ("powervm on x86", GOOD.replace('"ppc64le"', '"x86_64"'), "platform: pseries does not run on x86_64"),
    ("pvr out of range", GOOD.replace("0x00800200", "0x1FFFFFFFF"), "cpu.pvr: 0x1ffffffff is not the PVR"),
    ("unknown pvr", GOOD.replace("0x00800200", "0x00390000"), "cpu.pvr: 0x390000 is not the PVR"),
    ("mode above cpu", GOOD.replace("0x00800200", "0x004E1202"), "cpu.mode: a power9 processor cannot run in power10"),
    ("unknown module", GOOD.replace('["kvm_hv"]', '["kvm_intel"]'), "modules: unknown module 'kvm_intel'"),
    ("powervm nested v1", GOOD.replace('kind = "powervm"', 'kind = "powervm"\nnested_apis = [1]'), "nested_apis"),
    (
        "odd page size",
        GOOD.replace('platform = "pseries"', 'platform = "pseries"\npage_size = 8192'),
        "page_size: 8192",
    ),
    (
        "radix on power8",
        GOOD.replace('mode = "power10"', 'mode = "power8"').replace(
            'platform = "pseries"', 'platform = "pseries"\nmmu = "radix"'
        ),
        "mmu: radix needs ISA 3.0 (POWER9 or later); this partition runs in power8 mode",
    ),
    ("unknown hcall code", GOOD + 'hcall_at_init = "H_OOPS"\n', "hypervisor.hcall_at_init: unknown value 'H_OOPS'"),
    ("offers on nested v1", GOOD.replace('kind = "powervm"', 'kind = "kvm"'), "hypervisor.offers: only a nested"),
    ("missing hypervisor", GOOD.split("[hypervisor]")[0], "hypervisor.kind: missing"),
    ("cpu-version out of range", GOOD + '[[device_tree.cpus]]\nname = "c"\ncpu-version = -1\n', "cpu-version"),
    ("cpus not tables", GOOD + "[device_tree]\ncpus = [1]\n", "device_tree.cpus[0]: expected a table"),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_malformed_profile_is_one_line_naming_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as exc:
        profile.load(path)
    line = str(exc.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert message in line


def test_the_good_base_profile_loads(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    host = profile.load(path)
    assert host.hypervisor.nested_apis == (2,)
    assert (host.page_size, host.mmu, host.kvm_max_vcpus) == (65536, "radix", 2048)


def test_unknown_host_name_and_missing_file() -> None:
    with pytest.raises(ProfileError, match=r"^power42: unknown host"):
        profile.load("power42")
    with pytest.raises(ProfileError, match="cannot read profile"):
        profile.load("/nonexistent/x.toml")


def test_a_document_is_checked_as_its_file_is() -> None:
    """profile.from_mapping: what per-test overrides use, no TOML text in between."""
    import tomllib

    doc = tomllib.loads(GOOD)
    assert profile.from_mapping(doc, name="good", where="doc") == profile.parse(GOOD, name="good", where="doc")
    doc["cpu"]["mod"] = "power9"
    with pytest.raises(ProfileError, match=r"doc: cpu\.mod: unknown key"):
        profile.from_mapping(doc, name="good", where="doc")


def test_the_built_in_index_is_the_parse_of_every_built_in_file() -> None:
    """kvmsim/kernel/_hosts.py (``make hosts-index``) holds each built-in profile's CRC and
    TOML document, so a start-up skips tomllib; stale, it would only be slow (the CRC sends a
    changed file to tomllib), and this test says so first."""
    import tomllib
    import zlib

    from kvmsim.kernel._hosts import PARSED

    fresh = {}
    for name in profile.names():
        data = Path(profile.builtin_hosts(), f"{name}.toml").read_bytes()
        fresh[name] = (zlib.crc32(data), tomllib.loads(data.decode()))
    assert fresh == PARSED, "stale: run make hosts-index"


def test_a_profile_changed_after_the_index_is_parsed_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index is trusted only for the bytes it was made from."""
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    original = Path(profile.builtin_hosts(), "powervm-p11.toml").read_text()
    (hosts / "powervm-p11.toml").write_text(original.replace("summary = ", 'summary = "changed" #', 1))
    monkeypatch.setattr(profile, "builtin_hosts", lambda: str(hosts))
    assert profile.load("powervm-p11").summary == "changed"
    monkeypatch.undo()
    assert all(profile.load(n) == profile.load(n) for n in profile.names())  # from the index, twice
    test_the_built_in_index_is_the_parse_of_every_built_in_file()  # which loading left as it was


TEXT_P10 = """summary = "x"
arch = "ppc64le"
platform = "pseries"
modules = ["kvm_hv"]
[cpu]
pvr = 0x00800200
[hypervisor]
kind = "powervm"
offers = ["power10"]
"""


def test_the_schema_lists_exactly_the_keys_the_reader_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' key reference is rendered from ``profile.SCHEMA``: the reader refuses to look
    up a key it does not list (an assertion in ``_Table``), and every key it lists is looked up
    by some built-in profile's reading (so none is left there after the reader drops it)."""
    looked: set[str] = set()
    look = profile._Table._look

    def recording(self: profile._Table, key: str) -> None:
        look(self, key)
        looked.add(profile._INDEX.sub("[]", self.prefix + key))

    monkeypatch.setattr(profile._Table, "_look", recording)
    for name in profile.names():
        profile.from_mapping(profile.document(profile.find(name), name), name=name, where=name)
    nodes = 'name = "PowerPC,POWER10@0"\nreg = 0\ncpu-version = 0x0f000006'
    profile.parse(TEXT_P10 + f"[[device_tree.cpus]]\n{nodes}\n", name="nodes", where="nodes")  # no built-in has them
    assert looked == profile.SCHEMA_PATHS


def test_a_key_outside_the_schema_cannot_be_read() -> None:
    with pytest.raises(AssertionError, match=r"not in profile\.SCHEMA"):
        profile._Table("x", "cpu.", {}).take("speed", int, 1)
