"""A small TOML writer for kvmsim's documents (profiles, recordings): str, int, bool, lists,
tables and arrays of tables.  ``tomllib`` reads what :func:`dumps` writes back unchanged."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE.match(key) else _string(key)


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:#x}" if value > 0xFFFF else str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps(doc: Mapping[str, Any], prefix: str = "") -> str:
    scalars = {k: v for k, v in doc.items() if not isinstance(v, Mapping) and not _is_table_array(v)}
    tables = {k: v for k, v in doc.items() if isinstance(v, Mapping)}
    arrays = {k: v for k, v in doc.items() if _is_table_array(v)}
    lines = [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables.items():
        name = f"{prefix}{_key(k)}"
        body = dumps(v, f"{name}.")
        out += f"\n[{name}]\n{body}" if body.strip() else ""
    for k, v in arrays.items():
        for item in v:
            out += f"\n[[{prefix}{_key(k)}]]\n{dumps(item, f'{prefix}{_key(k)}.')}"
    return out


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)
