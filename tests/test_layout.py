"""Which way the imports go (README "Layout"): the kernel side imports nothing above it, the
user side imports no edge, and the client loads nothing of the simulator until asked."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL = {
    "kvmsim.uapi", "kvmsim.usermem", "kvmsim.errors", "kvmsim.profile", "kvmsim.papr", "kvmsim.book3s_pr",
    "kvmsim.book3s_hv", "kvmsim.powerpc", "kvmsim.x86", "kvmsim.kvm_main", "kvmsim.hostfs",
}  # fmt: skip
USER = {
    "kvmsim.user", "kvmsim.user.device", "kvmsim.user.pyioctl", "kvmsim.user.probe", "kvmsim.user.simulated",
    "kvmcompat", "kvmcompat.compat", "kvmcompat.device", "kvmcompat.devicetree",
}  # fmt: skip


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = ["kvmcompat", *rel.parts[1:]] if rel.parts[0] == "client" else list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    files = [*ROOT.joinpath("kvmsim").rglob("*.py"), *ROOT.joinpath("client").glob("*.py")]
    return {module_name(p): p for p in files if p.name != "__main__.py"}


def top_level_imports(name: str, path: Path) -> set[str]:
    """What a module imports when it is imported (not in functions, not for type checking)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules()}


def zone(module: str) -> str:
    return "kernel" if module in KERNEL else "user" if module in USER else "edge"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_go_downwards(name: str) -> None:
    mine = zone(name)
    allowed = {"kernel": {"kernel"}, "user": {"kernel", "user"}, "edge": {"kernel", "user", "edge"}}[mine]
    imports = top_level_imports(name, modules()[name]) - {"kvmsim"}
    wrong = sorted(m for m in imports if zone(m) not in allowed)
    assert not wrong, f"{name} ({mine} side) imports {wrong}"


def test_every_module_has_a_zone_on_purpose() -> None:
    assert set(modules()) >= KERNEL | USER


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from .user.probe import run\n")
    assert top_level_imports("kvmsim.powerpc", bad) >= {"kvmsim.user.probe"}


CLIENT_LOADS = """
import sys
import kvmcompat, kvmcompat.cli
from kvmcompat import RealDevice, query
print(" ".join(sorted(m for m in sys.modules if m.startswith("kvmsim"))))
"""


def test_the_client_loads_nothing_of_the_simulator() -> None:
    out = subprocess.run([sys.executable, "-c", CLIENT_LOADS], capture_output=True, text=True, check=True, cwd="/")
    loaded = set(out.stdout.split())
    assert loaded <= {"kvmsim", "kvmsim.uapi", "kvmsim.cliargs", "kvmsim.user", "kvmsim.user.device"}, loaded


def test_the_real_device_cli_loads_no_profile_or_kernel() -> None:
    code = "import sys; from kvmcompat.cli import main; main(['--device', '/nonexistent/kvm', '--json']); " + (
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('kvmsim'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    loaded = set(out.stdout.split("\n")[-2].split())
    assert not loaded & {"kvmsim.profile", "kvmsim.kvm_main", "kvmsim.powerpc", "kvmsim.user.simulated"}, loaded
