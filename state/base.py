"""The state store interface: what the engine needs from per-contact state.

Every call takes or returns a whole micro-batch, so a networked store (Redis) can do
each in one round trip. Profiles are plain data (``touchline.decisions.profile``);
a store persists them, resolves identities, keeps timers and reserves sends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from touchline.decisions.events import Event
from touchline.decisions.profile import Profile, Send

ANON_PREFIX = "anon:"


def anonymous_key(anonymous_id: str) -> str:
    """Profile key of a visitor known only by an anonymous/device id."""
    return ANON_PREFIX + anonymous_id


def is_known_key(key: str) -> bool:
    """Whether a profile key is a known contact (not an anonymous visitor)."""
    return not key.startswith(ANON_PREFIX)


#: How long the readiness probe waits for a store's answer.
PROBE_TIMEOUT = 1.0


class StoreError(RuntimeError):
    """The store refused or failed an operation (the message says which and why)."""


class StoreUnavailable(StoreError):
    """The store's server could not be reached (at start, or for longer than the retry budget)."""


@dataclass(frozen=True)
class StoreOptions:
    """Settings a networked store needs beside its URL (from ``[state]`` in the settings)."""

    ttl_days: float = 120.0  # abandoned profiles vanish this long after their last write
    retry_seconds: float = 60.0  # how long an operation retries an unreachable server
    socket_timeout: float = 5.0
    cache_profiles: int = 50_000  # profiles a Redis store keeps in memory (validated by version on load)
    username: str | None = None
    password: str | None = None  # secret: from settings' SecretStr, never logged


@dataclass
class StoreHealth:
    """Connection health of a networked store, read by the engine into metrics (stores
    have no metrics registry of their own)."""

    up: bool = True
    errors: Counter = field(default_factory=Counter)  # op -> failed attempts
    reconnects: int = 0


class StateStore(ABC):
    """Per-contact state behind one interface (in-process or Redis)."""

    #: URL the store was opened with (secrets masked by the caller before logging).
    url: str
    #: Set by stores that talk to a server.
    health: StoreHealth | None = None

    @abstractmethod
    def resolve(self, events: Sequence[Event]) -> list[tuple[str, str | None]]:
        """For each event, in order: (profile key, anonymous profile key to merge in or None).

        An event that carries both ``contact_id`` and ``anonymous_id`` links the
        anonymous id to the contact; from the next event on, the anonymous id
        resolves to the contact. The first time a link is made, the anonymous
        profile's key is returned beside the event so the engine folds that history
        into the contact before applying the event (events earlier in the same batch
        have been applied to the anonymous profile by then). Links are never
        re-pointed: the first contact an anonymous id was linked to keeps it, and
        only anonymous ids are ever aliases, so chains are one step and cycles cannot form.
        """

    def begin(
        self, events: Sequence[Event], now_ms: int | None, limit: int = 10_000
    ) -> tuple[list[tuple[str, str | None]], list[tuple[int, str, str]]]:
        """``resolve(events)`` and ``pop_due(now_ms)`` together (one round trip where it matters)."""
        resolved = self.resolve(events) if events else []
        return resolved, (self.pop_due(now_ms, limit) if now_ms is not None else [])

    def commit(
        self, profiles: Mapping[str, Profile], deleted: Iterable[str], timers: Iterable[tuple[str, str, int]]
    ) -> None:
        """``save(profiles, deleted)`` and ``schedule(timers)`` together."""
        self.save(profiles, deleted)
        timers = list(timers)
        if timers:
            self.schedule(timers)

    @abstractmethod
    def load(self, keys: Iterable[str]) -> dict[str, Profile]:
        """Profiles for ``keys``; an unknown key gets a new empty profile (not yet stored)."""

    @abstractmethod
    def save(self, profiles: Mapping[str, Profile], deleted: Iterable[str] = ()) -> None:
        """Persist changed profiles and drop merged-away ones (with their pending timers)."""

    @abstractmethod
    def reserve(
        self, profile: Profile, send: Send, caps: Mapping[str, Mapping[str, int]], global_caps: Mapping[str, int]
    ) -> bool:
        """Atomically check the caps and record ``send`` (also on ``profile.sends``).

        False if one more send would break a cap; then nothing is recorded. Reserving
        a send already recorded (same time, channel and action: a replayed decision)
        returns True and records nothing more.
        """

    @abstractmethod
    def schedule(self, timers: Iterable[tuple[str, str, int]]) -> None:
        """Set timers as (key, kind, due_ms); one pending timer per key and kind."""

    @abstractmethod
    def pop_due(self, now_ms: int, limit: int = 10_000) -> list[tuple[int, str, str]]:
        """Claim timers due at or before ``now_ms`` as (due_ms, key, kind), soonest first."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget a profile and its aliases (retention expiry)."""

    @abstractmethod
    def export(self, contact_id: str) -> dict[str, Any] | None:
        """Everything stored about a contact, JSON-ready; None if nothing is stored."""

    def erase(self, contact_id: str) -> bool:
        """Right to erasure: delete the contact and its aliases. True if anything existed."""
        existed = self.export(contact_id) is not None
        self.delete(contact_id)
        return existed

    def stats(self) -> dict[str, int]:
        """Sizes worth reporting (profiles, aliases, timers)."""
        return {}

    def ping(self) -> str:
        """Check the store answers within :data:`PROBE_TIMEOUT` seconds (the readiness probe);
        returns a line for the probe's answer, raises :class:`StoreUnavailable` if it does not.
        An in-process store is always there."""
        return "in-process"

    def close(self) -> None:
        """Release connections."""
