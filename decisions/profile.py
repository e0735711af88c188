"""Per-contact state and its pure update rules: windowed counts on event time, RFM,
cart, devices, consent, sends and timers, beside one state per feature (journeys,
touches, exposures, label observations: :mod:`touchline.decisions.feature_states`).

The profile is plain data changed only by pure functions, so every store (in-process,
Redis) shares one definition of what an event does to a contact.

Window semantics, exactly: the count of type ``t`` in window ``w`` is the number of
distinct events of type ``t`` with ``as_of - w < ts <= as_of``, where ``as_of`` is the
latest time the profile has seen (its newest event, or a timer's due time). Each
window keeps its own expiry queue, so an update costs O(1) amortised instead of a
rescan; the 30-day queue doubles as the idempotency memory (event ids in window).

>>> p = Profile("c1")
>>> apply_event(p, "e1", "page_view", 1_000, {}, {})
True
>>> apply_event(p, "e1", "page_view", 1_000, {}, {})  # the same event again changes nothing
False
>>> p.window_count("1h", "page_view"), p.events_total
(1, 1)
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from touchline.decisions.feature_states import (
    Exposures,
    FeatureState,
    JourneyStates,
    Observation as Observation,  # re-exported: where observations were always imported from
    Observations,
    ObservedAt,
    Tallies,
    Touches,
)
from touchline.decisions.feedback import FEEDBACK_TYPES, apply_feedback
from touchline.decisions.send_hours import SendHours

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

#: Feature windows, shortest first. The longest one bounds idempotency memory.
WINDOWS: dict[str, int] = {"1h": HOUR_MS, "24h": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS}
LONGEST_WINDOW_MS = max(WINDOWS.values())
#: What a window's expiry queue holds: (ts, type, event id).
WindowEntry = tuple[int, str, str]

#: Types counted in windows under their own name; every other type counts as ``other``.
COUNTED_TYPES: frozenset[str] = frozenset(
    """page_view product_view add_to_cart remove_from_cart checkout_start purchase form_submit
    signup login identify email_delivered email_open email_click email_bounce sms_delivered
    sms_reply push_delivered push_open chat_message call_completed unsubscribe consent_update""".split()
)
#: Events that are not the person engaging (deliveries, bounces, bookkeeping, and an
#: unsubscribe, which is the opposite of engagement): they do not count as activity for
#: recency or churn.
PASSIVE_TYPES: frozenset[str] = frozenset(
    {"email_delivered", "email_bounce", "sms_delivered", "push_delivered", "consent_update", "unsubscribe"}
)
#: Bound on events remembered per contact inside the longest window (oldest go first).
MAX_EVENTS_IN_WINDOW = 5_000
MAX_DEVICES = 32
MAX_ALIASES = 64
CHANNELS = ("email", "sms", "push")


#: Profile keys: a known contact's key is its contact id; an anonymous visitor's is
#: ``anon:<anonymous id>``. A contact id that begins with a reserved prefix (``anon:``, the
#: escape ``~`` itself, or ``}``, which would leave a Redis Cluster hash tag empty) is stored
#: as ``~<contact id>``, so the two key spaces never meet and every ordinary id keeps its key.
ANON_PREFIX = "anon:"
ESCAPE = "~"
_RESERVED = (ANON_PREFIX, ESCAPE, "}")


def contact_key(contact_id: str) -> str:
    """Profile key of a known contact.

    >>> contact_key("c1"), contact_key("anon:x"), contact_key("~x")
    ('c1', '~anon:x', '~~x')
    """
    return ESCAPE + contact_id if contact_id.startswith(_RESERVED) else contact_id


def anonymous_key(anonymous_id: str) -> str:
    """Profile key of a visitor known only by an anonymous/device id."""
    return ANON_PREFIX + anonymous_id


def is_known_key(key: str) -> bool:
    """Whether a profile key is a known contact (not an anonymous visitor)."""
    return not key.startswith(ANON_PREFIX)


def contact_of(key: str) -> str:
    """The id a profile key stands for in outputs (decision records, exports) and hash-based
    assignments (holdout, experiments, journey splits): a known contact's id, unescaped; an
    anonymous visitor's key as it is (``anon:<id>``: no output names an anonymous visitor as a contact).

    >>> contact_of(contact_key("anon:x")), contact_of("c1"), contact_of(anonymous_key("x"))
    ('anon:x', 'c1', 'anon:x')
    """
    return key[1:] if key.startswith(ESCAPE) else key


def anonymous_of(key: str) -> str:
    """The anonymous id of an anonymous visitor's profile key."""
    return key[len(ANON_PREFIX):]


@dataclass(slots=True)
class Send:
    """One reserved send: used for frequency caps and per-action cooldowns."""

    ts_ms: int
    channel: str
    action: str


@dataclass(slots=True)
class Profile:
    """Everything the engine keeps about one contact (or one still-anonymous visitor): a core
    (RFM, cart, identity, consent and feedback, windows, sends, timers) that the functions
    here update, plus one state per feature (:data:`FEATURE_STATES`) that merges and
    encodes itself."""

    key: str
    known: bool = False
    first_ts: int | None = None
    last_ts: int = 0  # as_of: the newest time this profile has been evaluated at
    last_activity_ts: int | None = None
    events_total: int = 0
    purchases_total: int = 0
    monetary_total: float = 0.0
    first_purchase_ts: int | None = None  # tenure as a customer (None in blobs written before it was kept)
    last_purchase_ts: int | None = None
    #: UTC days with a purchase: several purchases on one day are one repeat purchase to the
    #: customer-base features (None in blobs written before it was kept: purchases_total stands in)
    purchase_days: int | None = None
    cart_value: float = 0.0
    cart_updated_ts: int | None = None
    timezone: str | None = None
    locale: str | None = None
    devices: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    consent: dict[str, bool] = field(default_factory=dict)
    bounced: list[str] = field(default_factory=list)
    #: channel -> feedback outcome (delivered, open, click, reply, bounce, unsubscribe) -> count
    engagement: dict[str, dict[str, int]] = field(default_factory=dict)
    last_engaged_ts: int | None = None
    soft_bounces: dict[str, int] = field(default_factory=dict)  # channel -> soft bounces in a row
    score_memory: dict[str, float] = field(default_factory=dict)  # model -> last score (threshold crossings)
    attributes: dict[str, str] = field(default_factory=dict)  # dates journeys use, e.g. birthday
    sends: list[Send] = field(default_factory=list)
    last_lead: float | None = None  # the lead score at the previous scoring (threshold crossings)
    timers: dict[str, int] = field(default_factory=dict)
    # window name -> (expiry queue of (ts, type, event_id), counts by type)
    windows: dict[str, tuple[deque[WindowEntry], dict[str, int]]] = field(
        default_factory=lambda: {name: (deque(), {}) for name in WINDOWS}
    )
    seen: set[str] = field(default_factory=set)
    # per-feature states (decisions/feature_states.py), each listed in FEATURE_STATES
    journeys: JourneyStates = field(default_factory=JourneyStates)
    pending: Observations = field(default_factory=Observations)
    observed: ObservedAt = field(default_factory=ObservedAt)
    exposures: Exposures = field(default_factory=Exposures)
    touches: Touches = field(default_factory=Touches)
    tallies: Tallies = field(default_factory=Tallies)  # custom attributes (decisions/custom_attributes.py)
    send_hours: SendHours = field(default_factory=SendHours)  # engagement by local hour (decisions/send_time.py)

    @property
    def contact_id(self) -> str:
        """The contact id outputs show for this profile (see :func:`contact_of`)."""
        return contact_of(self.key)

    def window_count(self, window: str, type_: str) -> int:
        """Events of ``type_`` in ``window`` as of :attr:`last_ts`."""
        return self.windows[window][1].get(type_, 0)

    def window_total(self, window: str) -> int:
        """All events in ``window`` as of :attr:`last_ts`."""
        return len(self.windows[window][0])


#: The profile's per-feature states by field name: merging, the snapshot and the stored blob
#: loop over these (each merges and encodes itself), so a new feature's state is one class
#: and one line here.
FEATURE_STATES: dict[str, type[FeatureState]] = {
    "journeys": JourneyStates,
    "pending": Observations,
    "observed": ObservedAt,
    "exposures": Exposures,
    "touches": Touches,
    "tallies": Tallies,
    "send_hours": SendHours,
}


def type_key(event_type: str) -> str:
    """The bounded name an event type is counted under."""
    return event_type if event_type in COUNTED_TYPES else "other"


def advance(profile: Profile, now_ms: int) -> None:
    """Move the profile's clock forward to ``now_ms`` and expire window entries."""
    if now_ms <= profile.last_ts:
        return
    profile.last_ts = now_ms
    for name, length in WINDOWS.items():
        queue, counts = profile.windows[name]
        horizon = now_ms - length
        while queue and queue[0][0] <= horizon:
            _, key, event_id = queue.popleft()
            counts[key] -= 1
            if name == "30d":
                profile.seen.discard(event_id)
    horizon = now_ms - LONGEST_WINDOW_MS
    if profile.sends and profile.sends[0].ts_ms <= horizon:
        profile.sends = [s for s in profile.sends if s.ts_ms > horizon]


def purchase_span_ms(profile: Profile) -> tuple[int, float] | None:
    """First to last purchase (ms) and the mean gap between purchase days (ms, 0 before a
    purchase on a second day); None for a contact that never bought. A blob written before the
    first purchase was kept has its first purchase taken as the last.

    >>> p = Profile("c1")
    >>> for i, day in enumerate((0, 10, 10.5, 30)):
    ...     _ = apply_event(p, f"e{i}", "purchase", int(day * DAY_MS), {"value": 5.0}, {})
    >>> span, gap = purchase_span_ms(p)
    >>> span / DAY_MS, gap / DAY_MS, p.purchases_total, purchase_days(p)
    (30.0, 15.0, 4, 3)
    """
    last = profile.last_purchase_ts
    if last is None or not profile.purchases_total:
        return None
    first = last if profile.first_purchase_ts is None else profile.first_purchase_ts
    span, repeats = last - first, purchase_days(profile) - 1
    return span, span / repeats if repeats else 0.0


def purchase_days(profile: Profile) -> int:
    """The UTC days the contact bought on: what the customer-base features count, as the
    literature counts CDNOW's purchases (a second order the same day is one visit, not a repeat
    purchase). A profile stored before days were kept counts its purchases.

    >>> p = Profile("c1")
    >>> p.purchases_total = 3
    >>> purchase_days(p)
    3
    """
    return profile.purchases_total if profile.purchase_days is None else profile.purchase_days


def _bought_on_day_of(profile: Profile, ts_ms: int) -> bool:
    """Whether a purchase at ``ts_ms`` falls on the UTC day of the first or the last purchase so
    far (the days a purchase in time order can share; one out of order may count a day twice)."""
    day = ts_ms // DAY_MS
    return any(t is not None and t // DAY_MS == day for t in (profile.first_purchase_ts, profile.last_purchase_ts))


def is_too_late(profile: Profile, ts_ms: int) -> bool:
    """True when an event is older than idempotency memory reaches for this profile.

    Such an event cannot be told apart from a replay, so it is rejected, not counted.
    """
    return profile.last_ts - ts_ms >= LONGEST_WINDOW_MS and profile.events_total > 0


def _insert_windowed(profile: Profile, entry: tuple[int, str, str]) -> None:
    ts = entry[0]
    for name, length in WINDOWS.items():
        if ts <= profile.last_ts - length:
            continue
        queue, counts = profile.windows[name]
        if not queue or queue[-1][0] <= ts:
            queue.append(entry)
        else:  # late within the window: keep the queue ordered (rare)
            items = list(queue)
            insort(items, entry)
            queue.clear()
            queue.extend(items)
        counts[entry[1]] = counts.get(entry[1], 0) + 1
    queue, counts = profile.windows["30d"]
    while len(queue) > MAX_EVENTS_IN_WINDOW:  # bound memory for runaway ids
        _, key, old_id = queue.popleft()
        counts[key] -= 1
        profile.seen.discard(old_id)
        for name in ("1h", "24h", "7d"):
            q, c = profile.windows[name]
            if q and q[0][2] == old_id:
                q.popleft()
                c[key] -= 1


def usable_amount(value: Any) -> bool:
    """A number that can be a money amount: not a bool, negative, NaN or absurdly large.

    >>> usable_amount(12.5), usable_amount("12"), usable_amount(float("nan"))
    (True, False, False)
    """
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1e12  # NaN fails


def money(value: Any) -> float:
    """A usable amount, or 0 (see :func:`usable_amount`)."""
    return float(value) if usable_amount(value) else 0.0


def apply_event(
    profile: Profile,
    event_id: str,
    event_type: str,
    ts_ms: int,
    properties: dict[str, Any],
    context: dict[str, Any],
    channel: str | None = None,
) -> bool:
    """Apply one event; return False (and change nothing) if it was seen before."""
    if event_id in profile.seen:
        return False
    advance(profile, ts_ms)
    profile.seen.add(event_id)
    _insert_windowed(profile, (ts_ms, type_key(event_type), event_id))
    profile.events_total += 1
    if profile.first_ts is None or ts_ms < profile.first_ts:
        profile.first_ts = ts_ms
    if event_type not in PASSIVE_TYPES and (
        profile.last_activity_ts is None or ts_ms > profile.last_activity_ts
    ):
        profile.last_activity_ts = ts_ms
    _apply_context(profile, context)
    _apply_semantics(profile, event_type, ts_ms, properties, channel)
    return True


def _apply_context(profile: Profile, context: dict[str, Any]) -> None:
    """Where the event came from: the newest timezone and locale, and a bounded list of devices."""
    timezone, locale, device = context.get("timezone"), context.get("locale"), context.get("device")
    if isinstance(timezone, str):
        profile.timezone = timezone
    if isinstance(locale, str):
        profile.locale = locale
    if isinstance(device, str) and device not in profile.devices and len(profile.devices) < MAX_DEVICES:
        profile.devices.append(device)


#: Event types that change the cart (a purchase also counts towards RFM).
CART_TYPES = frozenset({"add_to_cart", "remove_from_cart", "checkout_start", "purchase"})
#: Event types that change consent.
CONSENT_TYPES = frozenset({"unsubscribe", "consent_update"})


def _apply_semantics(
    profile: Profile, event_type: str, ts_ms: int, properties: dict[str, Any], channel: str | None
) -> None:
    """What specific event types mean for the contact beyond being counted."""
    if event_type in CART_TYPES:
        _apply_cart(profile, event_type, ts_ms, money(properties.get("value")))
    elif event_type in CONSENT_TYPES:
        _apply_consent(profile, event_type, properties, channel)
    if event_type in FEEDBACK_TYPES:
        apply_feedback(profile, event_type, ts_ms, properties, channel)


def _apply_cart(profile: Profile, event_type: str, ts_ms: int, value: float) -> None:
    """A cart event of :data:`CART_TYPES`: the cart's value and when it last changed; a purchase
    empties the cart into the RFM totals.

    >>> p = Profile("c1")
    >>> _apply_cart(p, "add_to_cart", 1, 30.0); _apply_cart(p, "remove_from_cart", 2, 50.0)
    >>> p.cart_value, p.cart_updated_ts
    (0.0, 2)
    """
    if event_type == "add_to_cart":
        profile.cart_value += value
    elif event_type == "remove_from_cart":
        profile.cart_value = max(0.0, profile.cart_value - value)
    elif event_type == "purchase":
        profile.purchase_days = purchase_days(profile) + (0 if _bought_on_day_of(profile, ts_ms) else 1)
        profile.purchases_total += 1
        profile.monetary_total += value
        profile.last_purchase_ts = max(ts_ms, profile.last_purchase_ts or ts_ms)
        first = profile.first_purchase_ts
        profile.first_purchase_ts = ts_ms if first is None else min(ts_ms, first)
        profile.cart_value = 0.0
    profile.cart_updated_ts = ts_ms


def _apply_consent(profile: Profile, event_type: str, properties: dict[str, Any], channel: str | None) -> None:
    """An event of :data:`CONSENT_TYPES`: an unsubscribe refuses its channel (no channel or
    ``all``: every channel); a consent update sets its channel's consent when it says which.

    >>> p = Profile("c1")
    >>> _apply_consent(p, "consent_update", {"channel": "sms", "granted": True}, None)
    >>> _apply_consent(p, "unsubscribe", {}, None)
    >>> p.consent
    {'sms': False, 'email': False, 'push': False}
    """
    target = properties.get("channel") or channel
    if event_type == "unsubscribe":
        for ch in CHANNELS if target in (None, "all") else (target,):
            if isinstance(ch, str):
                profile.consent[ch] = False
        return
    granted = properties.get("granted")
    if isinstance(target, str) and isinstance(granted, bool):
        profile.consent[target] = granted


def merge_into(target: Profile, source: Profile) -> dict[str, int]:
    """Fold an anonymous profile's history into the known contact it turned out to be.

    Idempotency survives the merge: the source's seen event ids come along, so a
    replayed anonymous event still counts once. Returns the timers (kind -> due) the
    target adopted from the source, which the caller must schedule under the target.
    """
    advance(target, source.last_ts)
    advance(source, target.last_ts)
    _merge_windows(target, source)
    _merge_totals(target, source)
    _merge_cart(target, source)
    _merge_identity(target, source)
    _merge_channels(target, source)
    for name in FEATURE_STATES:
        getattr(target, name).merge(getattr(source, name))
    target.sends = sorted([*target.sends, *source.sends], key=lambda s: s.ts_ms)
    adopted = {kind: due for kind, due in source.timers.items() if kind not in target.timers}
    target.timers.update(adopted)
    return adopted


def _merge_windows(target: Profile, source: Profile) -> None:
    """Both sides' events in every window (the target's copy of an event id wins), and their seen ids."""
    for name in WINDOWS:
        queue, counts = target.windows[name]
        src_queue, _ = source.windows[name]
        merged = sorted([*queue, *(e for e in src_queue if e[2] not in target.seen)])
        queue.clear()
        queue.extend(merged)
        counts.clear()
        for _, key, _ in merged:
            counts[key] = counts.get(key, 0) + 1
    target.seen |= source.seen


def _earliest(a: int | None, b: int | None) -> int | None:
    """The earlier of two times either of which may be unknown.

    >>> _earliest(None, 5), _earliest(3, 5), _earliest(None, None)
    (5, 3, None)
    """
    return b if a is None else a if b is None else min(a, b)


def _latest(a: int | None, b: int | None) -> int | None:
    """The later of two times either of which may be unknown."""
    return b if a is None else a if b is None else max(a, b)


def _merge_totals(target: Profile, source: Profile) -> None:
    """RFM: totals add up; first, last-activity and last-purchase times span both sides."""
    target.events_total += source.events_total
    target.purchase_days = purchase_days(target) + purchase_days(source)
    target.purchases_total += source.purchases_total
    target.monetary_total += source.monetary_total
    target.first_ts = _earliest(target.first_ts, source.first_ts)
    target.last_activity_ts = _latest(target.last_activity_ts, source.last_activity_ts)
    target.last_purchase_ts = _latest(target.last_purchase_ts, source.last_purchase_ts)
    target.first_purchase_ts = _earliest(target.first_purchase_ts, source.first_purchase_ts)


def _merge_cart(target: Profile, source: Profile) -> None:
    """The cart of whichever side changed it last."""
    if source.cart_updated_ts is not None and (
        target.cart_updated_ts is None or source.cart_updated_ts > target.cart_updated_ts
    ):
        target.cart_value, target.cart_updated_ts = source.cart_value, source.cart_updated_ts


def _merge_identity(target: Profile, source: Profile) -> None:
    """What the contact is known by: its own timezone, locale and attributes first, the
    visitor's where it has none; the devices of both (bounded)."""
    target.timezone = target.timezone or source.timezone
    target.locale = target.locale or source.locale
    for name, value in source.attributes.items():
        target.attributes.setdefault(name, value)
    for device in source.devices:
        if device not in target.devices and len(target.devices) < MAX_DEVICES:
            target.devices.append(device)


def _merge_channels(target: Profile, source: Profile) -> None:
    """Consent and channel feedback: a refusal on either side wins, a bounced channel stays
    bounced, engagement adds up, the longer soft-bounce streak counts."""
    for channel, granted in source.consent.items():
        target.consent[channel] = granted and target.consent.get(channel, True)
    for channel in source.bounced:
        if channel not in target.bounced:
            target.bounced.append(channel)
    for channel, counts in source.engagement.items():
        mine = target.engagement.setdefault(channel, {})
        for outcome, n in counts.items():
            mine[outcome] = mine.get(outcome, 0) + n
    if source.last_engaged_ts is not None:
        target.last_engaged_ts = max(source.last_engaged_ts, target.last_engaged_ts or source.last_engaged_ts)
    for channel, streak in source.soft_bounces.items():
        target.soft_bounces[channel] = max(streak, target.soft_bounces.get(channel, 0))


def sends_in_windows(profile: Profile) -> dict[str, dict[str, int]]:
    """Sends per channel per window, as of the profile's time (what frequency caps see).

    >>> p = Profile("c1", last_ts=2 * DAY_MS)
    >>> p.sends = [Send(DAY_MS + 1, "email", "welcome"), Send(2 * DAY_MS, "email", "cart_reminder")]
    >>> sends_in_windows(p)["email"]
    {'1h': 1, '24h': 2, '7d': 2, '30d': 2}
    """
    out: dict[str, dict[str, int]] = {}
    for send in profile.sends:
        per_window = out.setdefault(send.channel, dict.fromkeys(WINDOWS, 0))
        for name, length in WINDOWS.items():
            if send.ts_ms > profile.last_ts - length:
                per_window[name] += 1
    return out


def snapshot(profile: Profile) -> dict[str, Any]:
    """A JSON-ready view of the profile (export, debugging, audit): the core, then what
    each feature's state shows of itself."""
    view = {
        "key": profile.key,
        "known": profile.known,
        "first_ts": profile.first_ts,
        "last_ts": profile.last_ts,
        "last_activity_ts": profile.last_activity_ts,
        "events_total": profile.events_total,
        "purchases_total": profile.purchases_total,
        "monetary_total": round(profile.monetary_total, 2),
        "first_purchase_ts": profile.first_purchase_ts,
        "last_purchase_ts": profile.last_purchase_ts,
        "purchase_days": purchase_days(profile),
        "cart_value": round(profile.cart_value, 2),
        "timezone": profile.timezone,
        "locale": profile.locale,
        "devices": list(profile.devices),
        "aliases": list(profile.aliases),
        "consent": dict(profile.consent),
        "bounced": list(profile.bounced),
        "engagement": {ch: dict(c) for ch, c in profile.engagement.items()},
        "last_engaged_ts": profile.last_engaged_ts,
        "attributes": dict(profile.attributes),
        "sends": [{"ts": s.ts_ms, "channel": s.channel, "action": s.action} for s in profile.sends],
        "sends_in_windows": sends_in_windows(profile),
        "windows": {name: dict(sorted((k, v) for k, v in c.items() if v)) for name, (_, c) in profile.windows.items()},
        "timers": dict(profile.timers),
    }
    for name in FEATURE_STATES:
        view.update(getattr(profile, name).view())
    return view
