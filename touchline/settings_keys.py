"""The keys a settings table accepts, for a "did you mean" on an unknown one.

>>> from touchline.settings import Settings
>>> unknown_key_hint(Settings, ("policy", "holdout_shar"))
" (did you mean 'holdout_share'?)"
>>> unknown_key_hint(Settings, ("delivery", "channels", "sms", "bearer_tokn"))
" (did you mean 'bearer_token'?)"
>>> unknown_key_hint(Settings, ("attributes", "views", "proprety"))  # the key as written, not the field
" (did you mean 'property'?)"
>>> unknown_key_hint(Settings, ("polcy",)), unknown_key_hint(Settings, ("policy", "zzz"))
(" (did you mean 'policy'?)", '')
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from touchline.decisions.errors import did_you_mean

#: A table's possible shapes: pydantic models, or ("dict", value annotation) for a table of tables.
Shapes = list[Any]


def _shapes(annotation: Any) -> Shapes:
    """The pydantic models and dict value types an annotation can hold (Optional, Annotated, unions)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _shapes(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _shapes(arg)]
    if origin is dict:
        return [("dict", typing.get_args(annotation)[1])]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _step(shapes: Shapes, part: str) -> Shapes:
    """The shapes one key further down."""
    out: Shapes = []
    for shape in shapes:
        if isinstance(shape, tuple):  # a table of tables: ``part`` is its own name
            out += _shapes(shape[1])
        elif part in shape.model_fields:
            out += _shapes(shape.model_fields[part].annotation)
    return out


def known_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys the table holding ``loc[-1]`` accepts ([] where that cannot be told)."""
    shapes: Shapes = [model]
    for part in loc[:-1]:
        shapes = _step(shapes, str(part))
    return sorted({field.alias or name for shape in shapes if not isinstance(shape, tuple)
                   for name, field in shape.model_fields.items()})


def unknown_key_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """`` (did you mean 'x'?)`` for a near miss of a key the table accepts, else ''."""
    hint = did_you_mean(str(loc[-1]), known_keys(model, loc)) if loc else ""
    return f" ({hint})" if hint else ""
