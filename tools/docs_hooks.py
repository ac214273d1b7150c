"""MkDocs hooks for ``make docs`` (mkdocs.yml): the pages kvmsim generates, so they cannot drift.

- ``hosts.md``'s key reference is rendered from the profile reader's own table
  (``kvmsim.kernel.profile.SCHEMA``);
- ``benchmarks.md``'s table from ``bench.json`` (``benchmarks/bench.py`` renders it);
- ``security.md`` is ``SECURITY.md``, the file GitHub shows;
- a ``kvmsim.x.y`` or ``kvmcompat.x`` name on any page must exist, else a warning, which the
  strict build turns into a failure."""

from __future__ import annotations

import importlib
import json
import logging
import re
import runpy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("mkdocs.plugins.kvmsim")
DOTTED = re.compile(r"\b(?:kvmsim|kvmcompat)(?:\.[A-Za-z_][A-Za-z_0-9]*)+")
NOT_MODULES = {"kvmsim.serve", "kvmsim.seccomp", "kvmcompat.simulators"}  # logger names, an entry point group


def profile_keys() -> str:
    from kvmsim.kernel.profile import SCHEMA

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{k.path}` | {k.type} | {k.default} | {k.doc} |" for k in SCHEMA]
    return "\n".join(rows) + "\n"


def bench_table() -> str:
    render = runpy.run_path(str(ROOT / "benchmarks" / "bench.py"))["render_markdown"]
    table: str = render(json.loads((ROOT / "bench.json").read_text()))
    return table


def stale_names(text: str) -> list[str]:
    """The ``kvmsim.x.y`` names in ``text`` that name neither a module nor an attribute."""
    stale = []
    for ref in sorted(set(DOTTED.findall(text)) - NOT_MODULES):
        parts = ref.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                stale.append(ref)
            break
    return stale


GENERATED = {
    "hosts.md": ("<!-- profile-keys -->", profile_keys),
    "benchmarks.md": ("<!-- bench-table -->", bench_table),
}


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "security.md", content=(ROOT / "SECURITY.md").read_text()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    where = page.file.src_uri
    if where in GENERATED:
        marker, render = GENERATED[where]
        if marker not in markdown:
            log.warning(f"{where}: no {marker} to render into")
        markdown = markdown.replace(marker, render())
    for ref in stale_names(markdown):
        log.warning(f"{where}: {ref} names no module or attribute")
    return markdown
