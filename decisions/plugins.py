"""One plug-in registry for every kind of implementation: state stores (by URL scheme),
channel connectors and model estimators, Faust-style.

Each kind has its built-in implementations by name (``"package.module:attribute"``) and an
entry-point group that installed plug-ins register theirs in; a plug-in never shadows a
built-in name. Loading is lazy: a name's module is imported when it is first asked for.

>>> stores = Registry("state store", "touchline.stores", {"memory": "touchline.state.memory:MemoryStore"})
>>> stores.load("memory").__name__, "memory" in stores, stores.names()[:1]
('MemoryStore', True, ['memory'])
>>> try:
...     stores.load("mongo")
... except UnknownPlugin as exc:
...     print(exc)
no state store named 'mongo' (known: memory)
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Mapping

from touchline.decisions.errors import TouchlineError


class UnknownPlugin(TouchlineError, LookupError):
    """No built-in implementation or installed plug-in has this name."""


class Registry:
    """Implementations of one kind: built-in ones by name, then those of an entry-point group."""

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str]) -> None:
        self.kind = kind
        self.group = group
        self.builtins = dict(builtins)

    def paths(self) -> dict[str, str]:
        """Name -> import path (``package.module:attribute``), plug-ins' and built-in ones."""
        found = {ep.name: ep.value for ep in entry_points(group=self.group)}
        return {**found, **self.builtins}

    def names(self) -> list[str]:
        return sorted(self.paths())

    def __contains__(self, name: object) -> bool:
        return name in self.builtins or any(ep.name == name for ep in entry_points(group=self.group))

    def load(self, name: str) -> Any:
        """The implementation registered as ``name``."""
        path = self.builtins.get(name)
        if path is not None:
            return load_path(path)
        for ep in entry_points(group=self.group):
            if ep.name == name:
                return ep.load()
        raise UnknownPlugin(f"no {self.kind} named {name!r} (known: {', '.join(self.names())})")


def load_path(path: str) -> Any:
    """The object at ``package.module:attribute`` (dots after the colon walk attributes)."""
    module, _, attribute = path.partition(":")
    target: Any = import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target
