"""Who may call the API, and how often: API keys and a token bucket per key.

A key is sent as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; it is compared with every
configured key in constant time, so a wrong key takes as long to refuse as a near miss.

>>> keys = Keys(["k" * 16, "m" * 16])
>>> keys.identify({"authorization": "Bearer " + "m" * 16}), keys.identify({"x-api-key": "k" * 16})
('key-1', 'key-0')
>>> keys.identify({"authorization": "Bearer nope"})
Traceback (most recent call last):
...
touchline.api.worker.ApiError: the API key is not one of api.keys
>>> bucket = TokenBucket(rate=1.0, burst=2)
>>> [bucket.take(now=0.0) for _ in range(3)], bucket.take(now=1.0)
([0.0, 0.0, 1.0], 0.0)
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Mapping

from touchline.api.worker import ApiError

_MISSING = ("no API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' with one of the keys in api.keys "
            "(touchline serve prints one at start when none is configured)")


class Keys:
    """The configured API keys; :meth:`identify` names the one a request carries (its rate
    bucket and the label of its metrics), never the key itself."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @staticmethod
    def generate() -> str:
        """A fresh random key (when none is configured)."""
        return secrets.token_urlsafe(24)

    def identify(self, headers: Mapping[str, str]) -> str:
        """``key-<n>`` for the key in ``headers``; a 401 when there is none or it is unknown."""
        given = _presented(headers)
        if given is None:
            raise ApiError(401, "unauthorized", _MISSING)
        found = None
        for i, key in enumerate(self._keys):  # every key compared: the time says nothing of which matched
            if hmac.compare_digest(given, key):
                found = i
        if found is None:
            raise ApiError(401, "unauthorized", "the API key is not one of api.keys")
        return f"key-{found}"


def _presented(headers: Mapping[str, str]) -> bytes | None:
    """The key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
    key = headers.get("x-api-key")
    return key.strip().encode() if key and key.strip() else None


class TokenBucket:
    """``rate`` requests a second on average, ``burst`` at once; :meth:`take` returns 0 when a
    request may go, else how many seconds until it could."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.stamp: float | None = None

    def take(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Limits:
    """One token bucket per key (used on the event loop's thread only)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, who: str) -> None:
        """A 429 with ``Retry-After`` when ``who`` is over its rate."""
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = TokenBucket(self.rate, self.burst)
        wait = bucket.take()
        if wait > 0:
            raise ApiError(429, "rate_limited", f"more than api.rate_per_second ({self.rate:g}) requests a second "
                           f"for this key (burst {self.burst}); retry in {wait:.2f} s", retry_after=round(wait, 3))
