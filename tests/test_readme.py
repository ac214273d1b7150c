"""The README's examples run as written, and it opens with the two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_opens_with_the_two_commands() -> None:
    first = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first is not None and README.index(first[0]) < README.index("\n## ")
    assert [line.split()[:2] for line in first[1].strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_the_pytest_plugin_example(pytester: pytest.Pytester) -> None:
    example = next(b for b in BLOCKS if "kvm_host" in b)
    pytester.makepyfile(test_example=example)
    # in a process of its own: an in-process run takes back what it imported, and the aliases with it
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)  # linux-7.3 and none


def test_the_simulated_kernel_example() -> None:
    example = next(b for b in BLOCKS if "Kernel.from_profile" in b)
    scope: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), scope)
    layout, buf = scope["k"].rev.layout, scope["buf"]  # type: ignore[attr-defined]
    assert layout.unpack("little", buf) == {"size": 24, "flags": 0, "compat_capabilities": 0x3000000000000000}


def test_the_profile_example_loads_and_answers_as_its_summary_says() -> None:
    from kvmsim import Kernel
    from kvmsim.uapi import REVISIONS
    from kvmsim.kernel import profile

    (text,) = re.findall(r"```toml\n(.*?)```", README, re.S)
    host = profile.parse(text, name="readme", where="README.md")
    k = Kernel(host, REVISIONS["linux-7.3"])
    vm = int(k.ioctl(k.open(), k.KVM_CREATE_VM, 0))
    out = k.ioctl(vm, k.KVM_PPC_GET_COMPAT_CAPS, k.rev.layout.pack("little", size=24))
    assert k.rev.layout.unpack("little", out)["compat_capabilities"] == 0x3000000000000000  # type: ignore[arg-type]


def test_the_speed_table_is_bench_json_rendered() -> None:
    """``make bench`` writes bench.json and the README's table from it; they must agree."""
    import importlib.util
    import json

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("bench", root / "benchmarks" / "bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = json.loads((root / "bench.json").read_text())
    block = README.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    assert block == "\n" + bench.render_markdown(data)
    assert {r["verdict"] for r in data["rows"]} <= {"", "OK", "MISSED", "skipped"}
