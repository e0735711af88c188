"""Settings files for the process tests: ``{section: {key: value}}`` written as TOML."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    r"""A TOML literal for ``value``.

    >>> print(toml_value(['a"b', True, 3]))
    ["a\"b", true, 3]
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def toml_lines(sections: dict[str, dict[str, Any]]) -> list[str]:
    """One ``[section]`` table per entry (dotted names are TOML's nested tables)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return lines


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path.write_text("\n".join(toml_lines(sections)) + "\n")
    return path
