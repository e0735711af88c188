"""Per-contact state: pick a store by URL scheme, Faust-style.

``memory://`` is built in; other schemes (``redis://``, plug-ins) register through the
``touchline.stores`` entry-point group as ``scheme = "package.module:StoreClass"``,
each class taking the URL as its only argument.

>>> open_store("memory://").url
'memory://'
>>> open_store("mongo://x")
Traceback (most recent call last):
...
ValueError: state URL 'mongo://x': no store for scheme 'mongo' (known: memory)
"""

from __future__ import annotations

from importlib.metadata import entry_points
from urllib.parse import urlsplit, urlunsplit

from touchline.state.base import StateStore
from touchline.state.memory import MemoryStore

BUILTIN_STORES: dict[str, type[StateStore]] = {"memory": MemoryStore}


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and printed settings.

    >>> mask_url("redis://app:s3cret@cache:6379/0"), mask_url("memory://")
    ('redis://app:***@cache:6379/0', 'memory://')
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def open_store(url: str) -> StateStore:
    """Open the store for ``url``, choosing the implementation by its scheme."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"state URL {url!r} has no scheme; use e.g. memory:// or redis://host:6379/0")
    if scheme in BUILTIN_STORES:
        return BUILTIN_STORES[scheme](url)
    plugins = {ep.name: ep for ep in entry_points(group="touchline.stores")}
    if scheme in plugins:
        return plugins[scheme].load()(url)
    known = ", ".join(sorted({*BUILTIN_STORES, *plugins}))
    raise ValueError(f"state URL {url!r}: no store for scheme {scheme!r} (known: {known})")


__all__ = ["StateStore", "MemoryStore", "open_store", "mask_url"]
