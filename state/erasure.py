"""Erasure that sticks: tombstones of erased identities, and the rule that re-admits them.

``touchline contact erase ID`` deletes what the store holds about a contact and leaves a
*tombstone* for the contact and for every anonymous id linked to it. A tombstone is named
by a keyed hash of the identity (HMAC-SHA256 with ``state.erasure_key``), never by the id
itself, and holds only:

- ``at``: when the contact was erased (see :func:`erasure_time`);
- ``unsub``: the channels the contact had refused (consent false), so an unsubscribe
  survives the erasure;
- ``v``: the profile's version in the store when it was erased (a number, so a profile
  written again later never reuses a version another process may hold in its cache);
- ``back``: once re-admitted, the time of the event that re-admitted it.

The engine screens every micro-batch before anything else touches it (:func:`screen`, one
store lookup for the batch's distinct identities): an event of a tombstoned identity is
dropped and counted, never stored, decided on or dead-lettered. Two things end that:

- a **re-admitting event**: a ``signup``, or a ``consent_update`` with ``granted: true``,
  carrying the contact id, whose event time is *after* the erasure. The profile starts
  afresh, with the channels in ``unsub`` still refused (unless that event grants one), and
  the tombstone keeps ``at`` with ``back`` set;
- nothing else: replayed old events (their times are not after ``at``, which is at least the
  contact's newest event time) are dropped even after a re-admission, so replaying the old
  stream, its old signup included, never rebuilds the contact.

>>> t = Tombstone(erased_ms=1000, unsubscribed=("email",), version=3)
>>> Tombstone.loads(t.dumps()) == t
True
>>> t.admits(2000), t.readmitted(1500).admits(2000), t.readmitted(1500).admits(1000)
(False, True, False)
>>> from touchline.decisions.events import Event
>>> readmits(Event("e", "signup", 1, contact_id="c1")), readmits(Event("e", "signup", 1, anonymous_id="a1"))
(True, False)
>>> readmits(Event("e", "consent_update", 1, contact_id="c1", properties={"channel": "email", "granted": False}))
False
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import orjson

from touchline.decisions.events import Event
from touchline.decisions.profile import Profile, contact_key

if TYPE_CHECKING:
    from touchline.state.base import StateStore

#: The kinds of identity a tombstone can name (hashed apart: a contact id and an anonymous id
#: spelled alike never share a tombstone).
CONTACT, ANONYMOUS = "contact", "anonymous"
#: (kind, id): one identity an event carries.
Identity = tuple[str, str]
#: Event types that may re-admit an erased contact (a consent_update only when it grants).
READMITTING_TYPES = frozenset({"signup", "consent_update"})


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What is kept of an erased identity (see the module docstring)."""

    erased_ms: int
    unsubscribed: tuple[str, ...] = ()
    version: int = 0
    readmitted_ms: int | None = None

    def dumps(self) -> bytes:
        doc: dict[str, object] = {"at": self.erased_ms, "v": self.version}
        if self.unsubscribed:
            doc["unsub"] = sorted(self.unsubscribed)
        if self.readmitted_ms is not None:
            doc["back"] = self.readmitted_ms
        return orjson.dumps(doc)

    @classmethod
    def loads(cls, raw: bytes | str) -> "Tombstone":
        doc = orjson.loads(raw)
        back = doc.get("back")
        return cls(int(doc["at"]), tuple(doc.get("unsub", ())), int(doc.get("v", 0)),
                   int(back) if back is not None else None)

    def admits(self, ts_ms: int) -> bool:
        """Whether an event at ``ts_ms`` passes: only once re-admitted, and only if newer than the erasure."""
        return self.readmitted_ms is not None and ts_ms > self.erased_ms

    def readmitted(self, ts_ms: int) -> "Tombstone":
        """The tombstone after a re-admission at ``ts_ms``: the refused channels moved into the new profile."""
        return replace(self, unsubscribed=(), readmitted_ms=ts_ms)


def tombstone_id(key: bytes, identity: Identity) -> str:
    """The name of an identity's tombstone: HMAC-SHA256 of kind and id under the erasure key, hex.

    >>> tombstone_id(b"k", (CONTACT, "c1")) == tombstone_id(b"k", (ANONYMOUS, "c1"))
    False
    >>> len(tombstone_id(b"k", (CONTACT, "c1")))
    64
    """
    kind, value = identity
    return hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()


def identities(event: Event) -> list[Identity]:
    """The identities an event carries."""
    out = []
    if event.contact_id is not None:
        out.append((CONTACT, event.contact_id))
    if event.anonymous_id is not None:
        out.append((ANONYMOUS, event.anonymous_id))
    return out


def readmits(event: Event) -> bool:
    """Whether the event is one that may re-admit an erased contact (time not checked here)."""
    if event.contact_id is None or event.type not in READMITTING_TYPES:
        return False
    return event.type == "signup" or event.properties.get("granted") is True


def erasure_time(now_ms: int | None, clocks: Iterable[int | None]) -> int:
    """When an erasure happens, for the re-admission rule: the latest of the wall clock (or
    ``now_ms``), the erased profiles' newest event times and the store's event clocks. Every
    event the store has already seen is then not newer than the erasure, whatever clock the
    deployment runs on, so a replay of it cannot re-admit; a live signup after the request is."""
    wall = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return max([wall, *(c for c in clocks if c is not None)])


def unsubscribed(profiles: Iterable[Profile | None]) -> tuple[str, ...]:
    """The channels any of these profiles refused (consent false)."""
    return tuple(sorted({ch for p in profiles if p is not None for ch, ok in p.consent.items() if not ok}))


def fresh_profile(contact_id: str, refused: Sequence[str]) -> Profile:
    """The profile a re-admitted contact starts from: empty, its refused channels still refused."""
    return Profile(contact_key(contact_id), known=True, consent={ch: False for ch in refused})


def screen(store: "StateStore", events: list[Event]) -> tuple[list[Event], int]:
    """The events that may be processed, and how many were dropped as an erased identity's.

    One store lookup for the batch's distinct identities; re-admissions (rare) cost one more
    call each. ``events`` in time order, so the events of a contact that follow its
    re-admitting event in the same batch pass and those before it do not.
    """
    wanted = _identities_of(events)
    found = dict(store.tombstones(wanted)) if wanted else {}
    if not found:
        return events, 0
    kept: list[Event] = []
    for ev in events:  # in order: a re-admission lets the contact's later events pass
        if _passes(store, ev, found):
            kept.append(ev)
    return kept, len(events) - len(kept)


def _identities_of(events: list[Event]) -> set[Identity]:
    """The distinct identities a batch carries (what :func:`screen` looks up)."""
    wanted = {(CONTACT, c) for ev in events if (c := ev.contact_id) is not None}
    wanted.update((ANONYMOUS, a) for ev in events if (a := ev.anonymous_id) is not None)
    return wanted


def _passes(store: "StateStore", ev: Event, found: dict[Identity, Tombstone]) -> bool:
    """Whether ``ev`` passes the tombstones ``found``: none of its identities is erased, or each
    is re-admitted and the event is newer than the erasure, or the event re-admits them."""
    hits = {i: found[i] for i in identities(ev) if i in found}
    if not hits or all(t.admits(ev.ts_ms) for t in hits.values()):
        return True
    if readmits(ev) and all(ev.ts_ms > t.erased_ms for t in hits.values()):
        _readmit(store, ev, hits, found)
        return True
    return False


def _readmit(store: "StateStore", ev: Event, hits: dict[Identity, Tombstone], found: dict[Identity, Tombstone]) -> None:
    """Re-admit the event's erased identities not yet re-admitted, in the store and in ``found``."""
    assert ev.contact_id is not None  # readmits() holds
    store.readmit(ev.contact_id, {i: t for i, t in hits.items() if t.readmitted_ms is None}, ev.ts_ms)
    for i, t in hits.items():
        if t.readmitted_ms is None:
            found[i] = t.readmitted(ev.ts_ms)


def erased_lines(lines: Iterable[bytes], ids: Iterable[str]) -> list[bool]:
    """For each JSONL line, whether it mentions one of ``ids`` as a JSON string value (also
    inside an embedded JSON text, as a dead letter's ``raw`` holds it). ``c1`` does not match
    ``c10``.

    >>> erased_lines([b'{"contact_id":"c1"}', b'{"contact_id":"c10"}', b'{"raw":"{\\\\"anonymous_id\\\\":\\\\"c1\\\\"}"}'], ["c1"])
    [True, False, True]
    """
    needles = []
    for value in ids:
        quoted = orjson.dumps(value)  # "c1", escaped as JSON escapes it
        needles += [quoted, b'\\"' + quoted[1:-1].replace(b"\\", b"\\\\") + b'\\"']
    return [any(n in line for n in needles) for line in lines]


def tombstones_of(fields: Mapping[str, Tombstone], key: bytes, wanted: Iterable[Identity]) -> dict[Identity, Tombstone]:
    """The tombstones among ``fields`` (by tombstone id) of the identities ``wanted``."""
    out = {}
    for identity in wanted:
        t = fields.get(tombstone_id(key, identity))
        if t is not None:
            out[identity] = t
    return out
