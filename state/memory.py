"""The in-process store: the embedded default, no server needed.

Holds live :class:`Profile` objects in a dict, so ``load`` and ``save`` cost nothing, except
for dormant profiles (nothing left in their event windows: a known customer between purchases
is remembered for years, see ``state.retention_days``): those are kept in their stored form,
the blob and sends of :mod:`touchline.state.codec`, about a tenth of the live object, and
decoded when loaded again. It lives in one process and is not thread-safe: run it with one worker (the CLI
enforces that); scale out with the Redis store instead.

>>> from touchline.decisions.events import Event
>>> store = MemoryStore()
>>> store.resolve([Event("e0", "page_view", 0, anonymous_id="a1"),
...                Event("e1", "identify", 1, contact_id="c1", anonymous_id="a1"),
...                Event("e2", "page_view", 2, anonymous_id="a1")])
[('anon:a1', None), ('c1', 'anon:a1'), ('c1', None)]
"""

from __future__ import annotations

import heapq
import secrets
from typing import Collection, Iterator, Any, Iterable, Mapping, Sequence

from touchline.decisions.events import Event
from touchline.decisions.profile import Profile, snapshot
from touchline.state.codec import from_parts, send_entries, to_blob
from touchline.state.erasure import (
    ANONYMOUS,
    CONTACT,
    Identity,
    Tombstone,
    erasure_time,
    fresh_profile,
    tombstone_id,
    tombstones_of,
    unsubscribed,
)
from touchline.state.base import (
    ID_CLAIM_MS,
    StateStore,
    StoreOptions,
    anonymous_key,
    contact_key,
    id_digest,
    identity_digest,
    is_known_key,
)


class Dormant:
    """A profile with empty event windows in its stored form (see :mod:`touchline.state.codec`).

    >>> p = Profile("c1", known=True, last_ts=5, purchases_total=2)
    >>> d = Dormant.of(p)
    >>> d is not None and snapshot(d.profile("c1")) == snapshot(p)
    True
    >>> from touchline.decisions.profile import apply_event
    >>> _ = apply_event(p, "e1", "page_view", 6, {}, {})
    >>> Dormant.of(p) is None  # an event in its windows: kept live
    True
    """

    __slots__ = ("blob", "sends")

    def __init__(self, blob: bytes, sends: tuple[tuple[int, str], ...]) -> None:
        self.blob = blob
        self.sends = sends

    @classmethod
    def of(cls, profile: Profile) -> "Dormant | None":
        """The stored form of ``profile`` when it is dormant, else None (kept live)."""
        if profile.windows["30d"][0] or profile.seen:  # the longest window holds every shorter one's events
            return None
        # bytes(memoryview(...)) copies the blob to an exact-size object: orjson's output keeps
        # its larger build buffer (kilobytes), which would undo the saving
        return cls(bytes(memoryview(to_blob(profile))), tuple(send_entries(profile)))

    def profile(self, key: str) -> Profile:
        return from_parts(key, self.blob, (), self.sends)


def _live(key: str, stored: "Profile | Dormant") -> Profile:
    return stored.profile(key) if isinstance(stored, Dormant) else stored


class MemoryStore(StateStore):
    """Profiles, aliases and timers in Python dicts and a heap."""

    def __init__(self, url: str = "memory://", options: StoreOptions | None = None) -> None:
        self.url = url
        self._profiles: dict[str, Profile | Dormant] = {}
        self._known = 0  # known contacts among the profiles (kept as they come and go)
        self._aliases: dict[str, str] = {}  # anonymous id -> the contact's profile key
        self._links: dict[str, set[str]] = {}  # contact's profile key -> every anonymous id linked to it
        self._timers: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[int, str, str]] = []
        #: tombstone id -> tombstone of an erased identity (state/erasure.py)
        self._tombstones: dict[str, Tombstone] = {}
        #: no key configured: a random one, which lives exactly as long as the tombstones here
        secret = options.erasure_key if options is not None else None
        self._erasure_key = secret.encode() if secret else secrets.token_bytes(32)

        self._claims: dict[str, tuple[str, int]] = {}  # event id digest -> (identity digest, event time)
        self._claim_times: list[tuple[int, str]] = []  # (event time, id digest): oldest pruned first
        self._newest_claim = 0

    # event ids ----------------------------------------------------------------
    def claim_ids(self, events: Sequence[Event]) -> list[bool]:
        """See :meth:`StateStore.claim_ids`. Claims older than the window behind the newest event
        claimed so far are pruned (event time: a replay keeps as many as living through it)."""
        out = [self._claim(ev) for ev in events]
        self._prune_claims()
        return out

    def _claim(self, ev: Event) -> bool:
        """Claim ``ev``'s id for its identity: False if another identity holds it within the window."""
        digest, who, ts = id_digest(ev.event_id), identity_digest(ev), ev.ts_ms
        held = self._claims.get(digest)
        if held is not None and held[0] != who and abs(ts - held[1]) < ID_CLAIM_MS:
            return False
        if held is None or held[0] != who:
            self._claims[digest] = (who, ts)
            heapq.heappush(self._claim_times, (ts, digest))
        self._newest_claim = max(self._newest_claim, ts)
        return True

    def _prune_claims(self) -> None:
        """Forget claims older than the window behind the newest event claimed (a claim renewed
        since by a later event of another identity stays: its time no longer matches)."""
        claims, times = self._claims, self._claim_times
        horizon = self._newest_claim - ID_CLAIM_MS
        while times and times[0][0] <= horizon:
            ts, digest = heapq.heappop(times)
            held = claims.get(digest)
            if held is not None and held[1] == ts:
                del claims[digest]

    # identity -----------------------------------------------------------------
    def resolve(self, events: Sequence[Event]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        aliases = self._aliases
        for ev in events:
            if ev.contact_id is not None:
                merged = None
                anon = ev.anonymous_id
                key = contact_key(ev.contact_id)
                if anon is not None and anon not in aliases:
                    aliases[anon] = key
                    self._links.setdefault(key, set()).add(anon)
                    merged = anonymous_key(anon)
                out.append((key, merged))
            else:
                anon = ev.anonymous_id or ""
                out.append((aliases.get(anon) or anonymous_key(anon), None))
        return out

    # profiles -----------------------------------------------------------------
    def load(self, keys: Iterable[str]) -> dict[str, Profile]:
        return {key: self._get(key) or Profile(key, known=is_known_key(key)) for key in keys}

    def _get(self, key: str) -> Profile | None:
        stored = self._profiles.get(key)
        return None if stored is None else _live(key, stored)

    def save(self, profiles: Mapping[str, Profile], deleted: Iterable[str] = ()) -> None:
        for key in deleted:
            self._drop(key)
        stored = self._profiles
        self._known += sum(1 for key in profiles if key not in stored and is_known_key(key))
        stored.update((key, Dormant.of(profile) or profile) for key, profile in profiles.items())

    def _drop(self, key: str) -> None:
        """Forget one profile, its timers and its place in the known count."""
        gone = self._profiles.pop(key, None)
        if gone is not None:
            self._known -= is_known_key(key)
            for kind in _live(key, gone).timers:
                self._timers.pop((key, kind), None)

    def known_contacts(self, max_age_seconds: float = 10.0) -> int:
        return self._known

    # timers -------------------------------------------------------------------
    def schedule(self, timers: Iterable[tuple[str, str, int]]) -> None:
        for key, kind, due in timers:
            self._timers[(key, kind)] = due
            heapq.heappush(self._heap, (due, key, kind))

    def pop_due(self, now_ms: int, limit: int = 10_000, partition: int = 0) -> list[tuple[int, str, str]]:
        out: list[tuple[int, str, str]] = []
        heap, timers = self._heap, self._timers
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            due, key, kind = heapq.heappop(heap)
            if timers.get((key, kind)) == due:  # skip entries replaced or cancelled since
                del timers[(key, kind)]
                out.append((due, key, kind))
        return out

    # lifecycle and privacy ----------------------------------------------------
    def delete(self, key: str) -> None:
        self._drop(key)
        for anon in self._links.pop(key, ()):
            del self._aliases[anon]

    def export(self, contact_id: str) -> dict[str, Any] | None:
        key = contact_key(contact_id)
        profile = self._get(key)
        aliases = sorted(self._links.get(key, ()))
        if profile is None and not aliases:
            return None
        return {"contact_id": contact_id, "aliases": aliases, "profile": snapshot(profile) if profile else None}

    def erase(self, contact_id: str, now_ms: int | None = None) -> bool:
        existed = self.export(contact_id) is not None
        pkey = contact_key(contact_id)
        anons = sorted(self._links.get(pkey, ()))
        profile = self._get(pkey)
        anon_profiles = [self._get(anonymous_key(a)) for a in anons]
        at = erasure_time(now_ms, [p.last_ts for p in (profile, *anon_profiles) if p is not None])
        key = self._erasure_key
        self._tombstones[tombstone_id(key, (CONTACT, contact_id))] = Tombstone(
            at, unsubscribed([profile, *anon_profiles]))
        for a in anons:
            self._tombstones[tombstone_id(key, (ANONYMOUS, a))] = Tombstone(at)
            self._drop(anonymous_key(a))
        self.delete(pkey)
        return existed

    def tombstones(self, identities: Collection[Identity]) -> dict[Identity, Tombstone]:
        if not self._tombstones:
            return {}
        return tombstones_of(self._tombstones, self._erasure_key, identities)

    def readmit(self, contact_id: str, hits: Mapping[Identity, Tombstone], ts_ms: int) -> None:
        refused = [ch for t in hits.values() for ch in t.unsubscribed]
        pkey = contact_key(contact_id)
        if (CONTACT, contact_id) in hits and pkey not in self._profiles:
            self.save({pkey: fresh_profile(contact_id, refused)})
        for identity, t in hits.items():
            self._tombstones[tombstone_id(self._erasure_key, identity)] = t.readmitted(ts_ms)

    def profiles(self) -> Iterator[Profile]:
        """Every stored profile (offline evaluation counts what is still pending)."""
        return (_live(key, stored) for key, stored in self._profiles.items())

    def dormant(self) -> int:
        """How many stored profiles are kept in their compact dormant form."""
        return sum(isinstance(stored, Dormant) for stored in self._profiles.values())

    def stats(self) -> dict[str, int]:
        return {"profiles": len(self._profiles), "aliases": len(self._aliases), "timers": len(self._timers)}
