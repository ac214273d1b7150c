"""The README's and the docs' examples run as written; the README opens with the two set-up
commands and stays short; the generated pages render from their sources."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAGES = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_opens_with_the_two_commands() -> None:
    first = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first is not None and README.index(first[0]) < README.index("\n## ")
    assert [line.split()[:2] for line in first[1].strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_the_readme_lists_what_is_not_modelled() -> None:
    """Issue #32's rule: every ioctl a simulated kernel answers "not modelled" is in the README
    (kvmsim.uapi.UNMODELLED_IOCTLS), POWER's then x86's own, and nothing else is."""
    from kvmsim.uapi import UNMODELLED_IOCTLS

    section = README.split("## Not modelled yet", 1)[1].split("\n## ", 1)[0]
    power, x86 = section.split("on an x86 host", 1)
    named = re.findall(r"`(KVM_[A-Z0-9_]+)`", power)
    assert named[:2] == ["KVM_CREATE_DEVICE", "KVM_DEV_TYPE_XIVE"]  # XIVE native's device
    assert named[2:] == [u.name for u in UNMODELLED_IOCTLS if u.only != "x86"]
    assert re.findall(r"`(KVM_[A-Z0-9_]+)`", x86) == [u.name for u in UNMODELLED_IOCTLS if u.only == "x86"]


def test_the_readme_is_short_and_links_every_page() -> None:
    assert len(README.splitlines()) <= 150
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README))
    assert linked == set(PAGES), set(PAGES) ^ linked


@pytest.mark.parametrize("where", ["README.md", "pytest.md"])
def test_the_pytest_plugin_example(where: str, pytester: pytest.Pytester) -> None:
    (example,) = [b for b in blocks(README if where == "README.md" else PAGES[where], "python") if "kvm_host" in b][:1]
    pytester.makepyfile(test_example=example)
    # in a process of its own: an in-process run takes back what it imported
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)  # linux-7.3 and none


def test_the_readme_client_example() -> None:
    (example,) = [b for b in blocks(README, "python") if "query(" in b]
    exec(compile(example, "README.md", "exec"), {})


def test_the_simulated_kernel_example() -> None:
    (example,) = [b for b in blocks(PAGES["design.md"], "python") if "Kernel.from_profile" in b]
    scope: dict[str, object] = {}
    exec(compile(example, "design.md", "exec"), scope)
    layout, buf = scope["k"].rev.layout, scope["buf"]  # type: ignore[attr-defined]
    assert layout.unpack("little", buf) == {"size": 24, "flags": 0, "compat_capabilities": 0x3000000000000000}


def test_the_profile_example_loads_and_answers_as_its_summary_says() -> None:
    from kvmsim import Kernel
    from kvmsim.kernel import profile
    from kvmsim.uapi import REVISIONS

    (text,) = blocks(PAGES["hosts.md"], "toml")
    host = profile.parse(text, name="docs", where="hosts.md")
    k = Kernel(host, REVISIONS["linux-7.3"])
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    out = k.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, k.rev.layout.pack("little", size=24))
    assert k.rev.layout.unpack("little", out)["compat_capabilities"] == 0x3000000000000000  # type: ignore[arg-type]


def docs_hooks() -> dict[str, Any]:
    """tools/docs_hooks.py's names: what the docs build runs."""
    return runpy.run_path(str(ROOT / "tools" / "docs_hooks.py"))


def test_the_generated_pages_render_from_their_sources() -> None:
    """hosts.md's key table is profile.SCHEMA's; benchmarks.md's table is bench.json's, with a
    verdict a row may have; each page keeps the marker the build renders into."""
    import json

    from kvmsim.kernel.profile import SCHEMA

    hooks = docs_hooks()
    keys = hooks["profile_keys"]()
    assert [row.split("|")[1].strip(" `") for row in keys.splitlines()[2:]] == [k.path for k in SCHEMA]
    data = json.loads((ROOT / "bench.json").read_text())
    table = hooks["bench_table"]().splitlines()
    assert [row.split(" | ")[0].lstrip("| ") for row in table[4:]] == [r["name"] for r in data["rows"]]
    assert {r["verdict"] for r in data["rows"]} <= {"", "OK", "MISSED", "skipped"}
    for page, (marker, _render) in hooks["GENERATED"].items():
        assert marker in PAGES[page]
