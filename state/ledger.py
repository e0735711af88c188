"""The send ledger: which decisions were delivered, so no decision reaches a person twice.

After a crash the engine re-emits decisions it committed but may not have delivered, and
for a moment two engine processes may hold the same decision. Before a connector sends,
the batch's decision ids are *claimed*: a claim is a lease with an owner token, so of
two processes only one sends, and a crashed owner's claim expires after the lease. A
final outcome replaces the claim with a long-lived *delivered* mark; a decision the
engine stopped before sending is *released* (only by its owner), so a later re-emission
sends it.

Every method takes a batch of ids: the Redis ledger does each in one round trip.

Redis layout, one hash tag per decision so Redis Cluster spreads them over its slots::

    tl:{sent:<decision_id>}   string   owner token (a claim, expires after the lease)
                                       or "delivered" (expires after delivered_ttl_days)

The Redis ledger needs Redis 7.0 or newer (``SET ... NX GET``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import redis
from touchline.redact import redact_url
from touchline.state.base import StoreError, StoreHealth, StoreOptions, StoreUnavailable

log = logging.getLogger(__name__)

#: The value of a decision's entry once it reached a final outcome.
DELIVERED = "delivered"
DAY_SECONDS = 86_400.0


class Claim(set[str]):
    """The ids the caller may deliver now (a plain set of them), and in :attr:`done` the
    skipped ids that already reached a final outcome. Skipped ids not in ``done`` are held
    by a live claim (another process, or an earlier submission of this one) and may still
    need sending if that owner dies: the caller keeps them for a later re-emission."""

    def __init__(self, claimed: Iterable[str] = (), done: Iterable[str] = ()) -> None:
        super().__init__(claimed)
        self.done: set[str] = set(done)


def _ids(ids: Iterable[str]) -> list[str]:
    """A batch of ids, deduplicated in order; a lone string is one id, not its characters."""
    return [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))


class SendLedger(ABC):
    """Claims and final outcomes of decision ids; see the module docstring."""

    #: How long a claim holds without :meth:`renew` (a crashed owner's claims lapse after it).
    lease_seconds: float

    @abstractmethod
    def claim(self, ids: Iterable[str]) -> Claim:
        """Claim ids not yet delivered nor claimed by a live lease; return the ones now ours."""

    @abstractmethod
    def delivered(self, ids: Iterable[str]) -> None:
        """Mark ids final (delivered, or dead-lettered): never claimable again."""

    @abstractmethod
    def release(self, ids: Iterable[str]) -> None:
        """Drop our claims on ids (those still ours) so a later re-emission can deliver them."""

    @abstractmethod
    def renew(self, ids: Iterable[str]) -> None:
        """Extend our claims on ids still in flight, so a slow delivery keeps its lease."""

    def close(self) -> None:
        """Release connections."""


class MemorySendLedger(SendLedger):
    """The embedded default: one process's ledger, bounded in memory.

    Entries expire (claims after the lease, delivered marks after ``delivered_ttl_days``)
    and at most ``max_entries`` are kept (about 230 bytes each), least recently used
    evicted first: the ledger of a long run cannot grow without bound. It prevents re-sends within one process only;
    across restarts and processes use :class:`RedisSendLedger`.

    Examples
    --------
    >>> ledger = MemorySendLedger(lease_seconds=60)
    >>> sorted(ledger.claim(["d1", "d2"]))
    ['d1', 'd2']
    >>> sorted(ledger.claim(["d1", "d3"]))  # d1 is claimed already
    ['d3']
    >>> ledger.delivered(["d1"])
    >>> ledger.release(["d2"])  # the engine stopped before sending d2
    >>> claim = ledger.claim(["d1", "d2"])
    >>> sorted(claim), sorted(claim.done)
    (['d2'], ['d1'])
    """

    def __init__(self, lease_seconds: float = 60.0, delivered_ttl_days: float = 30.0, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_seconds = lease_seconds
        self.delivered_seconds = delivered_ttl_days * DAY_SECONDS
        self.max_entries = max_entries
        self.token = uuid.uuid4().hex
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> (value, expires at)
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: str, expires: float) -> None:
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def claim(self, ids: Iterable[str]) -> Claim:
        claim = Claim()
        with self._lock:
            now = self._clock()
            for key in _ids(ids):
                value = self._live(key, now)
                if value is None:
                    self._put(key, self.token, now + self.lease_seconds)
                    claim.add(key)
                elif value == DELIVERED:
                    claim.done.add(key)
        return claim

    def delivered(self, ids: Iterable[str]) -> None:
        with self._lock:
            expires = self._clock() + self.delivered_seconds
            for key in _ids(ids):
                self._put(key, DELIVERED, expires)

    def release(self, ids: Iterable[str]) -> None:
        with self._lock:
            now = self._clock()
            for key in _ids(ids):
                if self._live(key, now) == self.token:
                    del self._entries[key]

    def renew(self, ids: Iterable[str]) -> None:
        with self._lock:
            now = self._clock()
            for key in _ids(ids):
                if self._live(key, now) == self.token:
                    self._put(key, self.token, now + self.lease_seconds)


# Compare-and-act on the owner token: only the claim's owner may drop or extend it.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end "
          "return 0")


class RedisSendLedger(SendLedger):
    """The production ledger, shared by every engine process and kept across restarts.

    URLs as the Redis state store takes them (``redis://``, ``rediss://``,
    ``redis+cluster://``); ``options`` gives the socket timeout and credentials. Each call
    is one pipeline. An unreachable server is retried with backoff for ``retry_seconds``,
    then :class:`~touchline.state.base.StoreUnavailable` names the (masked) URL.
    """

    def __init__(self, url: str, options: StoreOptions | None = None, *, lease_seconds: float = 60.0,
                 delivered_ttl_days: float = 30.0, retry_seconds: float = 5.0, prefix: str = "tl") -> None:
        from touchline.state.redis import _client

        self.url = url
        self.lease_seconds = lease_seconds
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.delivered_ms = max(1, int(delivered_ttl_days * DAY_SECONDS * 1000))
        self.retry_seconds = retry_seconds
        self.prefix = prefix
        self.token = uuid.uuid4().hex
        #: whether Redis answered the ledger's last call (the state store's up gauge reads it too:
        #: during an outage the engine may be waiting in a delivery, not in a state call)
        self.health = StoreHealth()
        try:
            self.client = _client(url, options or StoreOptions())
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"send ledger: cannot use Redis at {self.masked_url}: {exc}") from exc

    @property
    def masked_url(self) -> str:
        return redact_url(self.url)

    def key(self, decision_id: str) -> str:
        """The decision's entry: its own hash tag, so a batch spreads over Cluster slots."""
        return f"{self.prefix}:{{sent:{decision_id}}}"

    # ---------------------------------------------------------------- transport
    def _pipeline(self, op: str, add: Callable[[Any, str], None], ids: list[str]) -> list[Any]:
        """One pipeline with ``add(pipe, key)`` per id; retried with backoff while Redis is unreachable."""
        if not ids:
            return []
        from touchline.state.redis import _RETRYABLE

        deadline, delay = None, 0.05
        while True:
            try:
                pipe = self.client.pipeline(transaction=False)
                for decision_id in ids:
                    add(pipe, self.key(decision_id))
                replies = list(pipe.execute())
                self.health.up = True
                return replies
            except _RETRYABLE as exc:
                self.health.up = False
                self.health.count_error(f"ledger_{op}")
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_seconds
                    log.warning("send ledger: Redis at %s unreachable during %s (%s); retrying for up to %g s",
                                self.masked_url, op, exc, self.retry_seconds)
                if now >= deadline:
                    raise StoreUnavailable(f"send ledger: Redis at {self.masked_url} unreachable for "
                                           f"{self.retry_seconds:g} s during {op}: {exc}") from exc
                time.sleep(min(delay, max(0.0, deadline - now)) * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 1.0)
            except redis.ResponseError as exc:
                hint = " (the send ledger needs Redis 7.0 or newer)" if "syntax" in str(exc).lower() else ""
                raise StoreError(f"send ledger: Redis at {self.masked_url} refused {op}: {exc}{hint}") from exc
            except redis.RedisError as exc:
                raise StoreError(f"send ledger: Redis at {self.masked_url} refused {op}: {exc}") from exc

    # ---------------------------------------------------------------- ledger
    def claim(self, ids: Iterable[str]) -> Claim:
        batch = _ids(ids)
        token, lease = self.token, self.lease_ms
        previous = self._pipeline("claim", lambda p, k: p.set(k, token, nx=True, px=lease, get=True), batch)
        claim = Claim()
        for decision_id, value in zip(batch, previous):
            if value is None:
                claim.add(decision_id)
            elif value == DELIVERED:
                claim.done.add(decision_id)
        return claim

    def delivered(self, ids: Iterable[str]) -> None:
        ttl = self.delivered_ms
        self._pipeline("delivered", lambda p, k: p.set(k, DELIVERED, px=ttl), _ids(ids))

    def release(self, ids: Iterable[str]) -> None:
        token = self.token
        self._pipeline("release", lambda p, k: p.execute_command("EVAL", _RELEASE, 1, k, token), _ids(ids))

    def renew(self, ids: Iterable[str]) -> None:
        token, lease = self.token, str(self.lease_ms)
        self._pipeline("renew", lambda p, k: p.execute_command("EVAL", _RENEW, 1, k, token, lease), _ids(ids))

    def close(self) -> None:
        self.client.close()
