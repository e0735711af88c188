"""A journey's validation errors as ``file:line: field: message``, with a "did you mean".

Pydantic names a problem by a location inside its own schema (``steps.0.send.send.chanel``,
union tags included); a person wants the line in the file and the field as written there,
and for a misspelt key the key that was meant: the keys allowed at that place are read
from the model itself, so a suggestion is always one that would be accepted there.

>>> from touchline.decisions.journeys import Journey
>>> sorted(keys_at(Journey, ("steps", 0, "send", "send", "chanel")))  # a send step's send: {...}
['channel', 'offer', 'send_at', 'template', 'within']
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag

from touchline.decisions.errors import close_match, did_you_mean

#: Where a node sits in a YAML document: its mapping keys (as YAML constructed them: any
#: hashable) and list indices, from the top.
YamlPath = tuple[Any, ...]


def problem_lines(errors: list[Any], data: dict[str, Any], lines: dict[YamlPath, int], source: str,
                  model: type[BaseModel]) -> list[str]:
    """Every error as a line, in order, without repeats; a required key reported missing is left
    out when a misspelt key beside it is already named as that key (``chanel``: did you mean
    ``channel``? says it all)."""
    meant = {(tuple(e["loc"][:-1]), close_match(e["loc"][-1], keys_at(model, e["loc"])))
             for e in errors if e["type"] == "extra_forbidden"}
    kept = [e for e in errors if not (e["type"] == "missing" and (tuple(e["loc"][:-1]), e["loc"][-1]) in meant)]
    found = sorted((problem_line(e, data, lines, model), i) for i, e in enumerate(kept))
    return list(dict.fromkeys(f"{source}:{line}: {text}" for (line, text), _ in found))


def problem_line(err: Any, data: dict[str, Any], lines: dict[YamlPath, int],
                 model: type[BaseModel]) -> tuple[int, str]:
    """One pydantic error as (line, ``field: message``)."""
    line, path = _line_of(err["loc"], data, lines, model)
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        msg = _unknown_key(err["loc"], model)
    elif kind == "missing":
        path = f"{path}.{err['loc'][-1]}" if path != "(top level)" else str(err["loc"][-1])
        msg = "missing (required)"
    elif kind in ("step_kind", "entry_kind") and isinstance(err.get("input"), dict):
        msg += _kind_hint(msg, err["input"])
    return line or 1, f"{path}: {msg}"


def _unknown_key(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """``unknown key`` with the key meant, or the keys allowed there."""
    allowed = keys_at(model, loc)
    hint = did_you_mean(loc[-1], allowed)
    if hint:
        return f"unknown key ({hint})"
    return f"unknown key; allowed here: {', '.join(sorted(allowed))}" if allowed else "unknown key"


def _kind_hint(msg: str, given: dict[Any, Any]) -> str:
    """`` (got keys: ...)``, and the kind a misspelt key was probably meant to be."""
    kinds = [k.strip() for k in msg.partition(": ")[2].split(",")]
    hints = [h for key in given if (h := did_you_mean(key, kinds)) and key not in kinds]
    return f" (got keys: {', '.join(map(str, given))}" + (f"; {hints[0]}" if hints else "") + ")"


# ------------------------------------------------------------------ allowed keys, from the model
def keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    """The keys a mapping at ``loc[:-1]`` accepts (aliases as written in files)."""
    current: list[Any] = [model]
    for part in loc[:-1]:
        current = [t for tp in current for t in _step_into(tp, part)]
    keys: set[str] = set()
    for tp in current:
        for _tag, member in _members(tp):
            if isinstance(member, type) and issubclass(member, BaseModel):
                keys |= {f.alias or name for name, f in member.model_fields.items()}
    return keys


def _step_into(tp: Any, part: Any) -> list[Any]:
    """The types one location step below ``tp``: a union tag, a model field, a list item or a dict value."""
    members = _members(tp)
    tagged = [m for tag, m in members if tag == part]
    return tagged or [t for _tag, member in members for t in _child(member, part)]


def _child(member: Any, part: Any) -> list[Any]:
    """The type of ``member``'s field, item or value ``part`` (none if it has no such thing)."""
    if isinstance(member, type) and issubclass(member, BaseModel):
        return [f.annotation for name, f in member.model_fields.items() if part in (name, f.alias)]
    origin = get_origin(member)
    if origin is list and isinstance(part, int):
        return [get_args(member)[0]]
    if origin is dict and isinstance(part, str):
        return [get_args(member)[1]]
    return []


def _members(tp: Any, tag: str | None = None) -> list[tuple[str | None, Any]]:
    """The alternatives of a (possibly annotated) union, each with its discriminator tag."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        return _members(base, next((m.tag for m in meta if isinstance(m, Tag)), tag))
    if get_origin(tp) in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [(tag, tp)]


# ------------------------------------------------------------------ lines
def _line_of(loc: YamlPath, data: Any, lines: dict[YamlPath, int],
             model: type[BaseModel]) -> tuple[int | None, str]:
    """Map a pydantic error location to (line, dotted path), skipping union tags.

    >>> from touchline.decisions.journeys import Journey
    >>> data = {"steps": [{"branch": [], "else": "x"}]}
    >>> lines = {("steps",): 1, ("steps", 0): 2, ("steps", 0, "else"): 3}
    >>> _line_of(("steps", 0, "branch", "else_"), data, lines, Journey)
    (3, 'steps[0].else')
    """
    path = _data_path(loc, data, model)
    return _nearest_line(path, lines), _dotted(path) or "(top level)"


def _data_path(loc: YamlPath, data: Any, model: type[BaseModel]) -> list[Any]:
    """The parts of ``loc`` that exist in ``data``: union tags are skipped even where a key of
    the same name exists (``entry: {event: x, wher: ..}`` is at ``entry.wher``, not inside
    ``event``), and pydantic's ``else_`` is the file's ``else``."""
    path: list[Any] = []
    current = data
    types: list[Any] = [model]
    for part in loc:
        tagged = [m for tp in types for tag, m in _members(tp) if tag == part]
        types = tagged or [t for tp in types for t in _step_into(tp, part)]
        key = None if tagged else _key_in(current, part)
        if key is not None:
            path.append(key)
            current = current[key]
    return path


def _key_in(current: Any, part: Any) -> Any:
    """``part`` as a key or index of ``current`` (``else_`` as ``else``), or None if it is not one."""
    if isinstance(current, dict):
        return part if part in current else "else" if part == "else_" and "else" in current else None
    if isinstance(current, list) and isinstance(part, int) and part < len(current):
        return part
    return None


def _nearest_line(path: list[Any], lines: dict[YamlPath, int]) -> int | None:
    """The line of ``path``, else of its closest ancestor that has one."""
    for end in range(len(path), -1, -1):
        if tuple(path[:end]) in lines:
            return lines[tuple(path[:end])]
    return None


def _dotted(path: list[Any]) -> str:
    """``["steps", 0, "next"]`` -> ``steps[0].next``.

    >>> _dotted(["steps", 0, "next"])
    'steps[0].next'
    """
    dotted = ""
    for part in path:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
    return dotted
