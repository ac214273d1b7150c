"""Write ``kvmsim/uapi/__init__.py``'s imports and ``__all__`` from the public names its private
modules define (its docstring kept): ``python tools/uapi_face.py`` after adding an ABI fact;
tests/test_layout.py fails while the face misses one."""

from __future__ import annotations

import ast
import pathlib

BASE = pathlib.Path(__file__).resolve().parent.parent / "kvmsim" / "uapi"
ORDER = ("_errors", "_kvm_h", "_revisions", "_requests", "_header")  # each imports only those before it


def public_names(path: pathlib.Path) -> list[str]:
    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                elts = target.elts if isinstance(target, ast.Tuple) else [target]
                names += [e.id for e in elts if isinstance(e, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_")]


def main() -> None:
    init = BASE / "__init__.py"
    text = init.read_text()
    parts = [text[: text.index('"""', 3) + 3] + "\n\n"]
    every: list[str] = []
    for module in ORDER:
        names = public_names(BASE / f"{module}.py")
        every += names
        parts.append(f"from .{module} import (\n" + "".join(f"    {n},\n" for n in names) + ")\n")
    parts.append("\n__all__ = [\n" + "".join(f'    "{n}",\n' for n in every) + "]\n")
    init.write_text("".join(parts))


if __name__ == "__main__":
    main()
