"""A profile as Redis holds it: a compact blob plus two sorted sets, and back.

Redis keeps the parts that grow with activity in sorted sets scored by event time,
so expiry is one ``ZREMRANGEBYSCORE`` and idempotency survives restarts:

* the event log (``type<US>event_id`` by event time): the 30-day window every shorter
  window is a slice of, and the memory of event ids seen;
* the sends (``channel<US>action<US>ts`` by send time): what frequency caps count;
* everything else in one orjson blob, rewritten when the profile changes: the core's
  fields (RFM, cart, consent, devices, timers ...) under their names, and each feature's
  state (journeys, pending label observations ...: ``FEATURE_STATES``) under its field's
  name, as its own ``to_json`` writes it.

Pure functions, no I/O: :mod:`touchline.decisions.profile` stays the one definition of
what an event does; this module only says how a profile is laid out.

>>> from touchline.decisions.profile import apply_event, snapshot
>>> p = Profile("c1", known=True)
>>> _ = apply_event(p, "e1", "add_to_cart", 1_000, {"value": 5.0}, {})
>>> back = from_parts("c1", to_blob(p), log_entries(p), [])
>>> snapshot(back) == snapshot(p), back.seen
(True, {'e1'})
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson

from touchline.decisions.profile import (
    FEATURE_STATES,
    LONGEST_WINDOW_MS,
    WINDOWS,
    Profile,
    Send,
    WindowEntry,
)
from touchline.decisions.feature_states import Observations
from touchline.state.base import is_known_key

#: The blob's field for the pending observations of the built-in feature vector, stored by
#: value (see Observations.packed_json); the others stay in ``pending``.
PACKED_PENDING = "pending_packed"
SEP = "\x1f"  # ASCII unit separator: never part of an event type, channel or action name

#: The core's fields kept in the blob as they are (all but the key, windows, seen ids and
#: sends); the feature states follow, each under its field's name.
_CORE_FIELDS = (
    "first_ts", "last_ts", "last_activity_ts", "events_total", "purchases_total", "monetary_total",
    "last_purchase_ts", "first_purchase_ts", "purchase_days", "cart_value", "cart_updated_ts", "timezone", "locale", "devices", "aliases",
    "consent", "bounced", "last_lead", "timers", "engagement", "last_engaged_ts", "soft_bounces",
    "score_memory", "attributes",
)


def log_member(type_key: str, event_id: str) -> str:
    """Sorted-set member of one event in the log (scored by its event time)."""
    return f"{type_key}{SEP}{event_id}"


def send_member(send: Send) -> str:
    """Sorted-set member of one send: unique per (channel, action, time), so a replayed
    reservation of the same decision is recognised instead of counted twice.

    >>> send_member(Send(5, "email", "welcome")).split(SEP)
    ['email', 'welcome', '5']
    """
    return f"{send.channel}{SEP}{send.action}{SEP}{send.ts_ms}"


def parse_send(member: str, ts_ms: int) -> Send:
    channel, _, rest = member.partition(SEP)
    action = rest.rpartition(SEP)[0]
    return Send(ts_ms, channel, action)


def log_entries(profile: Profile) -> list[tuple[int, str]]:
    """The profile's event log as (event time, member)."""
    return [(ts, log_member(key, event_id)) for ts, key, event_id in profile.windows["30d"][0]]


def log_index(members: Iterable[str]) -> dict[str, str]:
    """Event id -> log member, for the members a store holds."""
    return {m.split(SEP, 1)[1]: m for m in members}


def log_diff(profile: Profile, held: dict[str, str]) -> tuple[list[tuple[int, str, str]], list[str]]:
    """What changed in the event log since the store held ``held`` (event id -> member):
    entries to add as (ts, member, event id) and members to remove.

    Cheap for the usual case: new events sit at the newest end of the log, so the scan
    stops as soon as all of them are found.

    >>> from touchline.decisions.profile import apply_event
    >>> p = Profile("c1")
    >>> _ = apply_event(p, "e1", "page_view", 1_000, {}, {})
    >>> log_diff(p, {"e0": "page_view" + SEP + "e0"})[0][0][0], len(log_diff(p, {})[0])
    (1000, 1)
    """
    seen = profile.seen
    removes = [held[i] for i in held.keys() - seen]
    new_ids = seen - held.keys()
    adds: list[tuple[int, str, str]] = []
    if new_ids:
        want = len(new_ids)
        for ts, key, event_id in reversed(profile.windows["30d"][0]):
            if event_id in new_ids:
                adds.append((ts, log_member(key, event_id), event_id))
                if len(adds) == want:
                    break
    return adds, removes


def send_entries(profile: Profile) -> list[tuple[int, str]]:
    return [(s.ts_ms, send_member(s)) for s in profile.sends]


def to_blob(profile: Profile) -> bytes:
    """Everything but the log and the sends, as compact JSON."""
    data: dict[str, Any] = {name: getattr(profile, name) for name in _CORE_FIELDS}
    #: sends up to here were decided with this state; later ones in the sends set are only
    #: reservations (a run stopped between reserving and committing: see from_parts)
    data["sent_through"] = max((s.ts_ms for s in profile.sends), default=0)
    for name in FEATURE_STATES:
        data[name] = getattr(profile, name).to_json()
    packed = profile.pending.packed_json()
    if packed:
        data[PACKED_PENDING] = packed
    return orjson.dumps(data)


def journeys_of(blob: bytes | str | None) -> dict[str, dict[str, Any]]:
    """The journey states in a stored blob, without rebuilding the profile (tools that count them).

    >>> p = Profile("c1")
    >>> p.journeys["welcome"] = {"active": True, "step": 1}
    >>> journeys_of(to_blob(p)), journeys_of(None)
    ({'welcome': {'active': True, 'step': 1}}, {})
    """
    found = orjson.loads(blob).get("journeys") if blob else None
    return found if isinstance(found, dict) else {}


def _log_entry(ts: int, member: str) -> WindowEntry:
    """A log member (``type<SEP>event id``) at ``ts`` as a window entry: (ts, type, event id)."""
    type_, event_id = member.split(SEP, 1)
    return ts, type_, event_id


def from_parts(
    key: str,
    blob: bytes | str | None,
    log: Iterable[tuple[int, str]],
    sends: Iterable[tuple[int, str]],
) -> Profile:
    """Rebuild a profile from its blob, event log and sends (as :func:`to_blob` and the sets hold them)."""
    profile = Profile(key, known=is_known_key(key))
    through: int | None = 0  # no state yet: every send in the set is a reservation of a lost batch
    if blob:
        data = orjson.loads(blob)
        through = data.get("sent_through")  # None: written before reservations were told apart
        _restore_fields(profile, data)
    _restore_windows(profile, log)
    profile.sends = _committed_sends(sends, through)
    return profile


def _restore_fields(profile: Profile, data: dict[str, Any]) -> None:
    """The blob's fields into ``profile``; a field the blob lacks (written before it existed) keeps its default."""
    for name in _CORE_FIELDS:
        if name in data:
            setattr(profile, name, data[name])
    for name, state in FEATURE_STATES.items():
        if name in data:
            setattr(profile, name, state.from_json(data[name]))
    if PACKED_PENDING in data:
        profile.pending = Observations.from_json(data.get("pending") or {}, data[PACKED_PENDING])


def _restore_windows(profile: Profile, log: Iterable[tuple[int, str]]) -> None:
    """The windows and seen ids from the event log, as of the profile's time.

    Each window is the slice of the log newer than ``last_ts - window``: the same
    entries the in-process windows hold, because both expire on the same rule.
    """
    entries = sorted(_log_entry(ts, member) for ts, member in log)  # oldest first
    horizon_30d = profile.last_ts - LONGEST_WINDOW_MS
    for name, length in WINDOWS.items():
        queue, counts = profile.windows[name]
        since = max(profile.last_ts - length, horizon_30d)
        for entry in entries:
            if entry[0] > since:
                queue.append(entry)
                counts[entry[1]] = counts.get(entry[1], 0) + 1
    profile.seen = {entry[2] for entry in profile.windows["30d"][0]}


def _committed_sends(sends: Iterable[tuple[int, str]], through: int | None) -> list[Send]:
    """The sends a committed state knows of, oldest first: those up to ``through`` (None: all).

    A reservation no committed state knows of is the decision a crashed run made and never
    committed: its replay makes it again (and the reservation matches), so it must not
    hold that same decision back as if already sent.

    >>> _committed_sends([(9, "email" + SEP + "x" + SEP + "9"), (5, "sms" + SEP + "y" + SEP + "5")], 5)
    [Send(ts_ms=5, channel='sms', action='y')]
    """
    every = sorted((parse_send(m, ts) for ts, m in sends), key=lambda s: s.ts_ms)
    return every if through is None else [s for s in every if s.ts_ms <= through]
