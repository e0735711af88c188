"""The state store interface: what the engine needs from per-contact state.

Every call takes or returns a whole micro-batch, so a networked store (Redis) can do
each in one round trip. Profiles are plain data (``touchline.decisions.profile``);
a store persists them, resolves identities, keeps timers and reserves sends.
"""

from __future__ import annotations

import binascii
import hashlib
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Iterable, Iterator, Mapping, Sequence

from touchline.decisions.errors import TouchlineError
from touchline.decisions.events import Event
from touchline.decisions.journey_versions import StoredVersions, VersionKey
from touchline.decisions.policy import cap_violation
from touchline.decisions.profile import (  # the key scheme, re-exported (``X as X``) for the stores
    ANON_PREFIX as ANON_PREFIX,
    LONGEST_WINDOW_MS,
    Profile,
    Send,
    anonymous_key as anonymous_key,
    anonymous_of as anonymous_of,
    contact_key as contact_key,
    contact_of as contact_of,
    is_known_key as is_known_key,
)

if TYPE_CHECKING:
    from touchline.state.erasure import Identity, Tombstone


#: How long an event id stays claimed by the identity it first came under (see
#: :meth:`StateStore.claim_ids`): the idempotency window, as long as a profile remembers
#: its own event ids (:func:`touchline.decisions.profile.is_too_late`).
ID_CLAIM_MS = LONGEST_WINDOW_MS


#: The standard base64 alphabet's two symbols that differ in the URL-safe one.
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _digest(text: str, size: int) -> str:
    """``size`` bytes of BLAKE2b, URL-safe base64 without padding: what
    ``base64.urlsafe_b64encode`` gives, through ``binascii`` directly (two digests an event).

    >>> import base64
    >>> raw = hashlib.blake2b(b"e49", digest_size=16).digest()
    >>> base64.b64encode(raw), _digest("e49", 16) == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    (b'PB68V+R5Iosc/OF8undd2A==', True)
    """
    digest = hashlib.blake2b(text.encode(), digest_size=size).digest()
    return binascii.b2a_base64(digest, newline=False).translate(_URLSAFE).decode().rstrip("=")


def id_digest(event_id: str) -> str:
    """What a store keeps of an event id it claims: 16 bytes of BLAKE2b, URL-safe base64
    (22 characters, whatever the id's length; never a brace, space or separator).

    >>> id_digest("e1"), len(id_digest("x" * 10_000))
    ('r91EA8QQad-Dnb4iSfmK7g', 22)
    """
    return _digest(event_id, 16)


def identity_digest(event: Event) -> str:
    """Who claims an event id: 8 bytes of BLAKE2b of the profile key of the identity the event
    arrived under (its contact, else its anonymous id: :attr:`Event.identity`, in the key
    scheme's separate spaces, so contact ``x`` and anonymous visitor ``x`` differ)."""
    key = contact_key(event.contact_id) if event.contact_id is not None else anonymous_key(event.anonymous_id or "")
    return _digest(key, 8)


#: How long the readiness probe waits for a store's answer.
PROBE_TIMEOUT = 1.0


class StoreError(TouchlineError, RuntimeError):
    """The store refused or failed an operation (the message says which and why)."""


class StoreUnavailable(StoreError):
    """The store's server could not be reached (at start, or for longer than the retry budget)."""


class StoreDataLost(StoreError):
    """The store no longer holds what this engine wrote (restarted without persistence,
    flushed, or another server): going on would break caps and lose timers."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A decision committed with the state that made it, until its outputs are done with it."""

    decision_id: str
    record: bytes  # the decision record as JSON
    to_channel: bool  # a channel connector must deliver it too (not only the decisions topic)


@dataclass(slots=True)
class Pending:
    """A decision found in an outbox at start: committed, but an output never confirmed it."""

    record: dict[str, Any]
    to_decisions: bool
    to_channel: bool


@dataclass(frozen=True)
class StoreOptions:
    """Settings a networked store needs beside its URL (from ``[state]`` in the settings)."""

    ttl_days: float = 120.0  # abandoned profiles vanish this long after their last write
    retry_seconds: float = 60.0  # how long an operation retries an unreachable server
    socket_timeout: float = 5.0
    cache_profiles: int = 50_000  # profiles a Redis store keeps in memory (validated by version on load)
    username: str | None = None
    password: str | None = None  # secret: from settings' SecretStr, never logged
    erasure_key: str | None = None  # secret: keys the tombstones' hashes (state/erasure.py)


@dataclass
class StoreHealth:
    """Connection health of a networked store, read by the engine into metrics (stores
    have no metrics registry of their own)."""

    up: bool = True
    errors: Counter[str] = field(default_factory=Counter)  # op -> failed attempts
    reconnects: int = 0
    #: The send ledger counts from the connectors' threads while the engine takes the counts.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_error(self, op: str) -> None:
        """One failed attempt at ``op`` (it will be retried)."""
        with self._lock:
            self.errors[op] += 1

    def take_errors(self) -> Counter[str]:
        """The failed attempts counted since the last call, which start again from zero.

        >>> health = StoreHealth()
        >>> health.count_error("claim"); health.count_error("claim")
        >>> health.take_errors(), health.take_errors()
        (Counter({'claim': 2}), Counter())
        """
        with self._lock:
            taken, self.errors = self.errors, Counter()
        return taken


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
        self, events: Sequence[Event], now_ms: int | None, limit: int = 10_000, partition: int = 0
    ) -> tuple[list[tuple[str, str | None]], list[tuple[int, str, str]]]:
        """``resolve(events)`` and ``pop_due(now_ms)`` together (one round trip where it matters).

        ``partition``: the input partition the events came from. A shared store keeps the
        timers set while processing a partition with that partition, claimed only by the
        worker reading it, on that partition's event clock."""
        resolved = self.resolve(events) if events else []
        return resolved, (self.pop_due(now_ms, limit, partition) if now_ms is not None else [])

    def commit(
        self, profiles: Mapping[str, Profile], deleted: Iterable[str], timers: Iterable[tuple[str, str, int]],
        *, outbox: Mapping[str, Sequence[OutboxEntry]] | None = None, fired: Iterable[tuple[int, str, str]] = (),
        merged_into: Mapping[str, str] | None = None, watermark: int | None = None, partition: int = 0,
    ) -> set[str]:
        """``save(profiles, deleted)`` and ``schedule(timers)`` together; returns the profiles
        that were not written because another writer changed them since they were loaded
        (reload and redo them). ``outbox`` holds each profile's new decisions, written with
        it; ``fired`` the claimed timers this batch handled (their claim ends here);
        ``merged_into`` says which profile each merged-away one went into (a merge whose
        target was not written keeps its source); ``watermark`` is the partition's event
        clock after the batch, written with it (see :meth:`watermark`). An in-process store has no other
        writer, and nothing of it survives a crash, so it needs no outbox."""
        self.save(profiles, deleted)
        timers = list(timers)
        if timers:
            self.schedule(timers)
        return set()

    @abstractmethod
    def claim_ids(self, events: Sequence[Event]) -> list[bool]:
        """Claim each event's ``event_id`` for the identity it arrived under, in order; False for
        an event whose id another identity claimed (the engine dead-letters it, ``duplicate_id``).

        ``event_id`` is the idempotency key of the whole store, not of one contact: without
        this, an id first seen under one contact would be applied again under another. The
        same identity claiming again gets True (a replay: the profile's own dedupe counts it
        as a duplicate, and a batch that claimed its ids and crashed before committing still
        applies when replayed). A claim holds for events within :data:`ID_CLAIM_MS` of its
        event time; after that the id is free again (for the next identity that uses it).
        Claims are atomic across processes sharing the store (exactly one identity wins an
        id), kept as digests (:func:`id_digest`, :func:`identity_digest`) and forgotten once
        out of the window, so memory stays bounded.
        """

    @abstractmethod
    def load(self, keys: Iterable[str]) -> dict[str, Profile]:
        """Profiles for ``keys``; an unknown key gets a new empty profile (not yet stored)."""

    @abstractmethod
    def save(self, profiles: Mapping[str, Profile], deleted: Iterable[str] = ()) -> None:
        """Persist changed profiles and drop merged-away ones (with their pending timers)."""

    def reserve(
        self, profile: Profile, send: Send, caps: Mapping[str, Mapping[str, int]], global_caps: Mapping[str, int]
    ) -> bool:
        """Check the caps against the sends loaded with ``profile`` and record ``send`` on it.

        False if one more send would break a cap; then nothing is recorded. Reserving
        a send already recorded (same time, channel and action: a replayed decision)
        returns True and records nothing more. No round trip: the send is stored by the
        :meth:`commit` of the profile, which checks the profile's version, so of two writers
        deciding for one contact at once the second is redone on the first's sends (the
        caps hold across workers and processes, and no send is stored for a decision that
        was never committed).
        """
        if send in profile.sends:  # a replayed decision: already reserved
            return True
        if cap_violation(profile.sends, send.channel, send.ts_ms, dict(caps), dict(global_caps)):
            return False
        profile.sends.append(send)
        return True

    @abstractmethod
    def schedule(self, timers: Iterable[tuple[str, str, int]]) -> None:
        """Set timers as (key, kind, due_ms); one pending timer per key and kind."""

    @abstractmethod
    def pop_due(self, now_ms: int, limit: int = 10_000, partition: int = 0) -> list[tuple[int, str, str]]:
        """Claim timers due at or before ``now_ms`` as (due_ms, key, kind), soonest first."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget a profile (by its profile key) and its aliases (retention expiry)."""

    @abstractmethod
    def export(self, contact_id: str) -> dict[str, Any] | None:
        """Everything stored about a contact (by its contact id, not its profile key), JSON-ready;
        None if nothing is stored."""

    # ------------------------------------------------------------ erasure (state/erasure.py)
    def erase(self, contact_id: str, now_ms: int | None = None) -> bool:
        """Right to erasure: tombstone the contact and its linked anonymous ids (kept beyond
        retention), then delete the contact, its sends, timers, outbox and aliases. True if
        anything was stored. ``now_ms``: the erasure's time if not the wall clock."""
        raise NotImplementedError(f"{type(self).__name__} keeps no tombstones: it cannot erase for good")

    def tombstones(self, identities: "Collection[Identity]") -> "dict[Identity, Tombstone]":
        """The tombstones of those identities that have one (one lookup for all of them)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no tombstones")

    def readmit(self, contact_id: str, hits: "Mapping[Identity, Tombstone]", ts_ms: int) -> None:
        """A re-admitting event at ``ts_ms``: the contact starts afresh with its refused channels
        still refused, and the tombstones ``hits`` are marked re-admitted (they keep their time)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no tombstones")

    # ------------------------------------------------------------ crash safety
    def ack(self, done: Iterable[tuple[str, str, str]]) -> None:
        """Outputs are done with outbox entries: (profile key, decision id, ``d`` for the
        decisions output or ``c`` for the channel delivery)."""

    def pending(self, limit: int = 100_000) -> list[Pending]:
        """Decisions committed but not confirmed by their outputs (to emit again at start)."""
        return []

    def watermark(self, partition: int) -> int | None:
        """The event clock of an input partition after its last committed batch: a restarted
        engine goes on from it, so timers fire as they would have without the restart (the
        store already holds what that clock made happen)."""
        return None

    def held(self, source: str) -> list[tuple[int, str, bytes]]:
        """Events the reorder buffer of an input (``topic[partition]``) was holding, waiting
        for the watermark to pass them, at its last batch, as (position, where read, line), by
        position: the input may already be committed past them, so a restart must not lose them."""
        return []

    def hold(self, source: str, add: Mapping[int, tuple[str, bytes]], drop: Iterable[int]) -> None:
        """Keep events an input's reorder buffer holds (position -> (where read, line)) and
        forget released ones (only once the batch that applied them has committed)."""

    def claim_epoch(self, expected: str | None) -> str:
        """Mark the store as this deployment's and check the mark on every commit from now on;
        returns the mark. ``expected``: the mark a recovery snapshot was taken with, which
        the store must still hold (else :class:`StoreDataLost`); None on a first start."""
        return ""

    def durability(self) -> str:
        """A line about whether the store's data survives a restart of its server; starts
        with ``WARNING`` when it does not."""
        return "in-process: nothing survives the process"

    def next_turn(self, name: str) -> int:
        """The next number of a counter shared by every worker (round-robin assignment)."""
        self._turns: dict[str, int] = getattr(self, "_turns", {})
        turn = self._turns.get(name, 0)
        self._turns[name] = turn + 1
        return turn

    def add_send_hours(self, delta: Sequence[int], cap: int) -> list[int]:
        """Add engagement counts by local hour (24) to the population's, which every process
        shares and a restart keeps, halving them all (rounding down) once their sum passes
        ``cap``; returns the totals. All zeros only reads them. This default keeps them in
        the process (enough for a store that keeps nothing longer).

        >>> from touchline.state.memory import MemoryStore
        >>> store = MemoryStore()
        >>> store.add_send_hours([3] + [0] * 23, cap=10)[0], store.add_send_hours([9] + [0] * 23, cap=10)[0]
        (3, 6)
        """
        totals: list[int] = getattr(self, "_send_hours", [0] * 24)
        totals = [n + d for n, d in zip(totals, checked_send_hours(delta))]
        if sum(totals) > cap:
            totals = [n // 2 for n in totals]
        self._send_hours = totals
        return list(totals)

    def swap_count(self, name: str, count: int) -> int | None:
        """Record ``count`` under ``name`` for every process and restart; returns what was
        recorded before (None: nothing). How many API workers used a range of timer partitions."""
        counts: dict[str, int] = getattr(self, "_counts", {})
        self._counts = counts
        before = counts.get(name)
        counts[name] = count
        return before

    def move_timers(self, source: int, target: int) -> int:
        """Move every timer of partition ``source`` (due and claimed alike: no process reads it
        any more) into partition ``target``'s; returns how many moved. A store without
        partitions of timers has nothing to move."""
        return 0

    # ------------------------------------------------------------ journey versions (decisions/journey_versions.py)
    def keep_journey_versions(self, definitions: Mapping[VersionKey, str]) -> None:
        """Keep journey definitions by (journey, version) for every process and restart; keeping
        one again changes nothing (a version is its content). The first version kept of a
        journey becomes its baseline: the version of contacts whose state names none.
        This default keeps them in the process (enough for a store that keeps nothing longer)."""
        self._versions().keep(dict(definitions))

    def journey_versions(self, keys: Iterable[VersionKey] | None = None) -> StoredVersions:
        """The kept definitions of these versions (None: all of them), and every baseline."""
        return self._versions().select(keys)

    def forget_journey_versions(self, keys: Iterable[VersionKey]) -> None:
        """Drop kept definitions (of versions no contact is in any more)."""
        self._versions().forget(keys)

    def _versions(self) -> StoredVersions:
        kept: StoredVersions | None = getattr(self, "_kept_versions", None)
        if kept is None:
            kept = self._kept_versions = StoredVersions()
        return kept

    def profiles(self) -> Iterator[Profile]:
        """Every stored profile, anonymous visitors' too (for tools, never the hot path)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its profiles")

    def journey_states(self) -> Iterator[tuple[str, Mapping[str, dict[str, Any]]]]:
        """(profile key, journey name -> state) of every stored profile: what ``journeys check``
        counts. A store may read only that much of each profile."""
        for profile in self.profiles():
            yield profile.key, profile.journeys

    def stats(self) -> dict[str, int]:
        """Sizes worth reporting (profiles, aliases, timers)."""
        return {}

    def known_contacts(self, max_age_seconds: float = 10.0) -> int | None:
        """How many known contacts the store holds, cheaply (a running count; an estimate on a
        networked store, where a crash between a commit and its count can leave it a few off);
        None when the store cannot tell. What the reach of an action is measured against; a
        networked store may answer from a read up to ``max_age_seconds`` old."""
        return None

    def ping(self) -> str:
        """Check the store answers within :data:`PROBE_TIMEOUT` seconds (the readiness probe);
        returns a line for the probe's answer, raises :class:`StoreUnavailable` if it does not.
        An in-process store is always there."""
        return "in-process"

    def close(self) -> None:
        """Release connections."""


def checked_send_hours(delta: Sequence[int]) -> Sequence[int]:
    """``delta`` if it is 24 counters that are not negative, else a ValueError naming what is wrong."""
    if len(delta) != 24 or any(n < 0 for n in delta):
        raise ValueError(f"send hours to add must be 24 counters, none negative: {list(delta)}")
    return delta
