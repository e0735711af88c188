"""Per-contact state: pick a store by URL scheme, Faust-style.

``memory://`` is built in; other schemes (``redis://``, plug-ins) register through the
``touchline.stores`` entry-point group as ``scheme = "package.module:StoreClass"``,
each class taking the URL and :class:`StoreOptions` as its arguments.

>>> open_store("memory://").url
'memory://'
>>> open_store("mongo://x")
Traceback (most recent call last):
...
ValueError: state URL 'mongo://x': no store for scheme 'mongo' (known: memory, redis, redis+cluster, redis+naive, rediss, rediss+cluster, rediss+naive)
"""

from __future__ import annotations

from collections.abc import Callable

from touchline.decisions.plugins import Registry, UnknownPlugin
from touchline.redact import redact_url
from touchline.state.base import StateStore, StoreError, StoreOptions, StoreUnavailable
from touchline.state.memory import MemoryStore

BUILTIN_STORES: dict[str, str] = {
    "memory": "touchline.state.memory:MemoryStore",
    "redis": "touchline.state.redis:RedisStore",
    "rediss": "touchline.state.redis:RedisStore",
    "redis+cluster": "touchline.state.redis:RedisStore",
    "rediss+cluster": "touchline.state.redis:RedisStore",
    "redis+naive": "touchline.state.redis_naive:NaiveRedisStore",
    "rediss+naive": "touchline.state.redis_naive:NaiveRedisStore",
}


#: The one URL redaction (:func:`touchline.redact.redact_url`), under the name this package
#: has always exported: password and query values masked, user name kept.
mask_url = redact_url


#: What opens a store: a :class:`StateStore` class, called with ``(url, options)``.
StoreFactory = Callable[[str, StoreOptions | None], StateStore]
#: Stores by URL scheme: the built-in ones, then the ``touchline.stores`` entry points.
STORES = Registry("state store", "touchline.stores", BUILTIN_STORES)


def open_store(url: str, options: StoreOptions | None = None) -> StateStore:
    """Open the store for ``url``, choosing the implementation by its scheme.

    Classes take ``(url, options)``; the in-process store ignores the options.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"state URL {redact_url(url)!r} has no scheme; use e.g. memory:// or redis://host:6379/0")
    try:
        factory: StoreFactory = STORES.load(scheme)
    except UnknownPlugin:
        raise ValueError(f"state URL {redact_url(url)!r}: no store for scheme {scheme!r} "
                         f"(known: {', '.join(STORES.names())})") from None
    return factory(url, options)


__all__ = ["StateStore", "StoreError", "StoreOptions", "StoreUnavailable", "MemoryStore", "open_store", "mask_url"]
