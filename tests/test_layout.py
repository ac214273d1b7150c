"""Which way the imports go (docs "Design"): the ABI imports nothing, the kernel side only the
ABI, the client only the ABI (and the version), the user side no edge, and no folder imports
one that imports it."""

from __future__ import annotations

import ast
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The zones are folders (docs "Design"): kvmsim/uapi/ (the ABI both sides import) imports
# nothing; kvmsim/kernel/ only the ABI; the client (kvmcompat) only the ABI and the one version
# source; kvmsim/user/ the kernel and the client's device seam; every other folder is an edge
# (intercept/ with its two ways seccomp/ and preload/, plugin/, record/, lab/, cli/).
EDGES = (
    "kvmsim.intercept", "kvmsim.preload", "kvmsim.seccomp", "kvmsim.plugin", "kvmsim.record", "kvmsim.lab", "kvmsim.cli"
)  # fmt: skip


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
    return _imports(name, path, ast.parse(path.read_text()).body)


def every_import(name: str, path: Path) -> set[str]:
    """Everything a module may import, in functions too (not what only the type checker reads)."""
    tree = ast.parse(path.read_text())
    checking_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    return _imports(name, path, [n for n in ast.walk(tree) if id(n) not in checking_only])


def _imports(name: str, path: Path, nodes: list[ast.stmt] | list[ast.AST]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
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
    """The zone a module's folder says."""
    if module.startswith("kvmsim.uapi"):
        return "abi"
    if module.startswith("kvmsim.kernel"):
        return "kernel"
    if module.startswith("kvmcompat"):
        return "client"
    if module.startswith(EDGES):
        return "edge"
    if module.startswith("kvmsim.user"):
        return "user"
    return "package"  # kvmsim/__init__ (the public face, lazy) and the version


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_go_downwards(name: str) -> None:
    mine = zone(name)
    allowed = {
        "abi": {"abi"},
        "kernel": {"abi", "kernel"},
        "client": {"abi", "client"},
        "user": {"abi", "kernel", "client", "user"},
        "edge": {"abi", "kernel", "client", "user", "edge"},
        "package": {"abi", "kernel", "client", "user", "edge", "package"},
    }[mine]
    imports = every_import(name, modules()[name]) - {"kvmsim", "kvmsim._version"}
    wrong = sorted(m for m in imports if zone(m) not in allowed)
    assert not wrong, f"{name} ({mine} side) imports {wrong}"


def test_every_module_lives_in_a_zones_folder() -> None:
    """No module sits flat in kvmsim/ but the package's own face (a new module in a folder is
    always welcome: the folders, not a list of modules, are the architecture)."""
    flat = sorted(m for m in modules() if zone(m) == "package")
    assert flat == ["kvmsim", "kvmsim._version"], flat  # the face, and the one version source


def folder(module: str) -> str:
    """A module's folder: kvmsim.<folder>, or the client."""
    parts = module.split(".")
    return "kvmcompat" if parts[0] == "kvmcompat" else ".".join(parts[:2])


def folder_graph() -> dict[str, set[str]]:
    """Which folder imports which, counting every import (function-level too)."""
    graph: dict[str, set[str]] = {}
    face = {p for p in modules() if zone(p) == "package"}
    for name, path in modules().items():
        if name in face:
            continue
        mine = folder(name)
        for imported in every_import(name, path) - {"kvmsim"} - face:
            if folder(imported) != mine:
                graph.setdefault(mine, set()).add(folder(imported))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles between folders (each found once, from its first node in sorted order)."""
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append([*path, start])
            elif nxt > start and nxt not in path:
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_no_folder_imports_one_that_imports_it() -> None:
    """The interception core's two ways (seccomp/, preload/) depend on it, never on each
    other; no folder reaches back to one that reaches it, through any import."""
    graph = folder_graph()
    assert cycles(graph) == []
    assert graph.get("kvmcompat", set()) <= {"kvmsim.uapi"}, graph["kvmcompat"]  # the client stands alone
    assert graph.get("kvmsim.uapi", set()) == set()
    assert "kvmsim.preload" not in graph.get("kvmsim.seccomp", set())
    assert "kvmsim.seccomp" not in graph.get("kvmsim.preload", set())
    assert not graph.get("kvmsim.intercept", set()) & {"kvmsim.preload", "kvmsim.seccomp"}


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def public_names(path: Path) -> list[str]:
    """The names a module defines (not imports) without a leading underscore: what
    tools/uapi_face.py writes the face from."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("uapi_face", ROOT / "tools" / "uapi_face.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return list(tool.public_names(path))


def test_the_abi_face_names_every_fact_its_modules_define() -> None:
    """``kvmsim.uapi.__all__`` holds every public name its private modules define (a new
    constant cannot be left out), each the same object."""
    from kvmsim import uapi

    folder = modules()["kvmsim.uapi"].parent
    defined = {n for p in folder.glob("_*.py") for n in public_names(p)}
    assert defined == set(uapi.__all__), f"run tools/uapi_face.py: {sorted(defined ^ set(uapi.__all__))}"


@pytest.mark.parametrize("face", ["kvmsim", "kvmsim.uapi", "kvmcompat", "kvmsim.plugin"])
def test_every_name_of_a_face_resolves(face: str) -> None:
    import importlib

    module = importlib.import_module(face)
    assert all(getattr(module, name, None) is not None for name in module.__all__)


@pytest.mark.parametrize("name", sorted(modules()))
def test_a_private_module_is_imported_only_by_its_own_package(name: str) -> None:
    """``kvmsim.uapi._kvm_h`` or ``kvmcompat._compat`` are implementation: every other
    package reaches them through the face (``kvmsim.uapi``, ``kvmcompat``)."""
    private = {
        m for m in every_import(name, modules()[name])
        if m.rpartition(".")[2].startswith("_") and m != "kvmsim._version"
    }  # fmt: skip
    package = name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]
    assert {m for m in private if m.rpartition(".")[0] != package} == set()


STAR = re.compile(r"^[ \t]*from [\w.]+ import \*", re.M)


def test_no_module_star_imports() -> None:
    assert [name for name, path in modules().items() if STAR.search(path.read_text())] == []


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from ..user.probe import run\n")
    imports = top_level_imports("kvmsim.kernel.powerpc", bad)
    assert "kvmsim.user.probe" in imports and zone("kvmsim.user.probe") == "user"


CLIENT_LOADS = """
import sys
import kvmcompat, kvmcompat.cli
from kvmcompat import RealDevice, query
print(" ".join(sorted(m for m in sys.modules if m.startswith("kvmsim"))))
"""


def test_the_client_loads_nothing_of_the_simulator() -> None:
    out = subprocess.run([sys.executable, "-c", CLIENT_LOADS], capture_output=True, text=True, check=True, cwd="/")
    loaded = {m for m in out.stdout.split() if not m.startswith("kvmsim.uapi.")}
    assert loaded == {"kvmsim", "kvmsim._version", "kvmsim.uapi"}, loaded


def test_the_real_device_cli_loads_no_profile_or_kernel() -> None:
    code = "import sys; from kvmcompat.cli import main; main(['--device', '/nonexistent/kvm', '--json']); " + (
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('kvmsim'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    loaded = set(out.stdout.split("\n")[-2].split())
    assert not loaded & {
        "kvmsim.kernel.profile", "kvmsim.kernel.kvm_main", "kvmsim.kernel.powerpc", "kvmsim.user.simulated"
    }, loaded  # fmt: skip


def docs_hooks() -> dict[str, Any]:
    """tools/docs_hooks.py's names: what the docs build runs."""
    return runpy.run_path(str(ROOT / "tools" / "docs_hooks.py"))


def test_every_dotted_name_in_the_sources_readme_and_docs_exists() -> None:
    """A docstring, comment, README, SECURITY or docs line that names ``kvmsim.x.y`` or
    ``kvmcompat.x`` names a module or an attribute that exists (was: kvmsim.usermem,
    kvmsim.probe, kvmsim.wire, ... long gone).  The docs build fails on one too."""
    sources = [
        *ROOT.joinpath("kvmsim").rglob("*"),
        *ROOT.joinpath("client").rglob("*"),
        *ROOT.joinpath("docs").glob("*"),
    ]
    texts = [p.read_text() for p in sources if p.suffix in (".py", ".c", ".h", ".md")]
    texts += [ROOT.joinpath(name).read_text() for name in ("README.md", "SECURITY.md")]
    hooks = docs_hooks()
    assert hooks["stale_names"]("\n".join(texts)) == []
    assert hooks["stale_names"]("kvmsim.kernel.usermem kvmsim.probe kvmcompat.compat") == [
        "kvmcompat.compat", "kvmsim.probe"
    ]  # fmt: skip
