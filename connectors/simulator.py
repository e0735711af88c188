"""A deterministic clickstream simulator with hidden truth.

A population of people with hidden traits (intent, preferred channel, time zone,
churn, price sensitivity) browses in sessions, fills and abandons carts, buys,
signs up and engages with email/SMS/push. They start anonymous on one device,
become known on signup or login, and some later browse on a second device that a
login links. Intent drives depth and conversion (a lead model has signal); people
who churn thin out before they stop (a churn model has inactivity to detect).
A small share of lines is deliberately malformed, to exercise the dead letters.

Memory stays O(population): each person is a lazy generator, merged by time.

>>> sim = Simulator(SimulatorSpec(seed=1, contacts=5, days=3))
>>> lines = list(sim.lines())
>>> lines == list(Simulator(SimulatorSpec(seed=1, contacts=5, days=3)).lines())
True
>>> len(sim.traits())
5
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import orjson

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
TIMEZONES = ("Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Tokyo",
             "Australia/Sydney")
LOCALES = {"Europe/London": "en-GB", "Europe/Berlin": "de-DE", "America/New_York": "en-US",
           "America/Los_Angeles": "en-US", "Asia/Tokyo": "ja-JP", "Australia/Sydney": "en-AU"}
CHANNELS = ("email", "sms", "push")
MALFORMED_KINDS = ("bad_json", "not_object", "missing_event_id", "missing_ts", "missing_identity",
                   "ts_bool", "event_id_number", "bad_timestamp", "oversized")
_DUMP = orjson.OPT_SORT_KEYS

#: One generated event: (event time ms, person index, the person's event number, the JSON line).
#: Tuples sort by time first, so a heap of them yields the stream in time order.
_Line = tuple[int, int, int, bytes]


@dataclass(frozen=True)
class SimulatorSpec:
    """What to simulate."""

    seed: int = 7
    contacts: int = 3000
    days: float = 30.0
    start_ms: int = 1767571200000  # 2026-01-05T00:00:00Z
    malformed_rate: float = 0.002
    #: each person reads at a habitual local hour (:func:`preferred_hour`): opens come at it, and a
    #: message that waits long for it is opened less (see :func:`read_chance`)
    preferred_hours: bool = False


@dataclass(frozen=True)
class Traits:
    """Hidden truth about one person (never emitted in events)."""

    contact_id: str
    intent: float
    preferred_channel: str
    timezone: str
    churn_hazard: float
    price_sensitivity: float
    churn_at_ms: int | None
    preferred_hour: int | None = None  # local hour the person reads at (SimulatorSpec.preferred_hours)


#: Relative weight of each local hour as a person's habitual reading hour: mornings, lunch and
#: evenings, hardly at night.
PREFERRED_HOUR_WEIGHTS = (0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 1.0, 3.0, 4.0, 3.0, 1.5, 1.0,
                          2.5, 2.0, 1.0, 1.0, 1.0, 1.5, 2.5, 3.0, 3.5, 3.0, 1.5, 0.5)
#: A message waiting this many hours for its reader's hour is opened e^-1 times as often (buried).
READ_DECAY_HOURS = 8.0


def preferred_hour(seed: int, index: int) -> int:
    """A person's habitual reading hour, from a stream of its own (the person's stream is untouched).

    >>> preferred_hour(7, 3) == preferred_hour(7, 3) and 0 <= preferred_hour(7, 3) < 24
    True
    """
    rng = random.Random(_stable_seed("preferred_hour", seed, index))
    return rng.choices(range(24), weights=PREFERRED_HOUR_WEIGHTS)[0]


def reading_wait(at_ms: int, zone_name: str, hour: int | None) -> int:
    """How long a message sent at ``at_ms`` waits for its reader's local ``hour`` (0: it is that
    hour now, or the person has no preferred hour).

    >>> t = 1767614400000  # 2026-01-05 12:00 UTC = 13:00 in Berlin
    >>> [reading_wait(t, "Europe/Berlin", h) / HOUR_MS for h in (13, 14, 12, None)]
    [0.0, 1.0, 23.0, 0.0]
    """
    if hour is None:
        return 0
    zone = _zone(zone_name)
    local = datetime.fromtimestamp(at_ms / 1000, tz=zone)
    if local.hour == hour:
        return 0
    day = local.date() + timedelta(days=0 if local.hour < hour else 1)
    start = datetime(day.year, day.month, day.day, hour, tzinfo=zone)
    return int(start.timestamp() * 1000) - at_ms


def read_chance(wait_ms: int, decay_hours: float = READ_DECAY_HOURS) -> float:
    """The share of a message's chance to be read left after waiting ``wait_ms`` for its reader.

    >>> read_chance(0), round(read_chance(8 * HOUR_MS), 3)
    (1.0, 0.368)
    """
    return math.exp(-wait_ms / HOUR_MS / decay_hours)


def _stable_seed(*parts: object) -> int:
    """A seed that agrees across processes (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=None)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Visit:
    """One session in progress: its device, its clock, and whether the person is logged in
    (which decides whether its events carry the contact id)."""

    def __init__(self, person: _Person, out: list[_Line], ts: int, device: str, session: str, logged_in: bool):
        self.person = person
        self.out = out
        self.ts = ts
        self.device = device
        self.session = session
        self.logged_in = logged_in

    def emit(self, type_: str, **props: Any) -> None:
        """The visit's next event, a think time (about 45 s) after the last one."""
        self.ts += int(self.person.rng.expovariate(1 / 45_000)) + 1_000
        self.person._event(self.out, self.ts, type_, device=self.device, contact=self.logged_in,
                           session=self.session, **props)


class _Person:
    """One person's lazily generated event stream."""

    def __init__(self, spec: SimulatorSpec, index: int):
        self.spec = spec
        self.index = index
        self.rng = rng = random.Random(_stable_seed("person", spec.seed, index))
        end = spec.start_ms + int(spec.days * DAY_MS)
        self.end_ms = end
        intent = rng.betavariate(1.2, 4.0)
        preferred = rng.choices(CHANNELS, weights=(0.6, 0.2, 0.2))[0]
        tz = rng.choice(TIMEZONES)
        hazard = rng.random()
        churn_at = None
        if rng.random() < 0.25 + 0.35 * hazard * (1.0 - intent):
            churn_at = spec.start_ms + int(rng.uniform(0.1, 1.0) * (end - spec.start_ms))
        self.traits = Traits(f"c-{index}", round(intent, 4), preferred, tz, round(hazard, 4),
                             round(rng.random(), 4), churn_at)
        if spec.preferred_hours:
            self.traits = replace(self.traits, preferred_hour=preferred_hour(spec.seed, index))
        self.first_ms = spec.start_ms + int(rng.random() ** 1.5 * 0.6 * (end - spec.start_ms))
        self.devices = [f"anon-{_stable_seed('dev', spec.seed, index, 1):016x}"]
        self.known = False
        self.linked: set[str] = set()
        self.n = 0
        self.consent: dict[str, bool] = {"email": True}
        self.bad_email = rng.random() < 0.02
        self.unsubscribed = False

    # ------------------------------------------------------------------ emit
    def _event(self, out: list[_Line], ts: int, type_: str, *, device: str | None = None, contact: bool = False,
               channel: str | None = None, session: str | None = None, **properties: Any) -> None:
        self.n += 1
        rng = self.rng
        doc: dict[str, Any] = {
            "event_id": f"sim-{self.spec.seed}-{self.index}-{self.n}",
            "type": type_,
            "ts": _iso(ts) if rng.random() < 0.1 else ts,
        }
        if contact:
            doc["contact_id"] = self.traits.contact_id
        if device is not None:
            doc["anonymous_id"] = device
            doc["context"] = {"timezone": self.traits.timezone, "locale": LOCALES[self.traits.timezone],
                              "device": device}
        if channel:
            doc["channel"] = channel
        if session:
            doc["session_id"] = session
        if properties:
            doc["properties"] = properties
        out.append((ts, self.index, self.n, orjson.dumps(doc, option=_DUMP)))

    # ------------------------------------------------------------- behaviour
    def _active_rate(self, ts: int) -> float:
        """Sessions per day now: grows with intent, thins out in the weeks before churn."""
        rate = 0.3 + 2.5 * self.traits.intent
        churn_at = self.traits.churn_at_ms
        if churn_at is not None:
            if ts >= churn_at:
                return 0.0
            left = (churn_at - ts) / (14 * DAY_MS)
            if left < 1.0:
                rate *= max(0.05, left)
        return rate

    def _local_hour(self, ts: int) -> int:
        return datetime.fromtimestamp(ts / 1000, tz=_zone(self.traits.timezone)).hour

    def _session(self, out: list[_Line], ts: int) -> None:
        """One visit: browse, shop, perhaps sign up or log in, then check out or get in touch.

        Every step draws from the person's own random stream in a fixed order, so the
        same seed gives the same bytes."""
        device = self._session_device()
        logged_in = self.known and device in self.linked and self.rng.random() < 0.5
        visit = _Visit(self, out, ts, device, f"s-{self.index}-{self.n}", logged_in)
        self._browse(visit)
        cart = self._shop(visit)
        self._identify(visit)
        self._checkout_or_enquire(visit, cart)
        if self.known and self.rng.random() < 0.02:
            visit.emit("chat_message")

    def _session_device(self) -> str:
        """The device of a visit: a known person sometimes comes back on a second one, which
        is how the identity graph gets more than one anonymous id per contact."""
        if self.known and self.rng.random() < 0.2:
            if len(self.devices) == 1:
                self.devices.append(f"anon-{_stable_seed('dev', self.spec.seed, self.index, 2):016x}")
            return self.devices[1]
        return self.devices[0]

    def _browse(self, visit: _Visit) -> None:
        """A landing page and a few more, as many for everyone (intent shows in product
        views and carts, see :meth:`_shop`)."""
        rng = self.rng
        visit.emit("page_view", url=rng.choice(["/", "/", "/sale", "/blog", "/pricing"]))
        for _ in range(int(rng.expovariate(1.0))):
            visit.emit("page_view", url=rng.choice(["/category/shoes", "/category/bags", "/about", "/blog"]))

    def _shop(self, visit: _Visit) -> float:
        """Product views, wishlist and cart moves, more of them with more intent; returns the
        cart's value at the end of the visit."""
        rng, intent = self.rng, self.traits.intent
        cart = 0.0
        for _ in range(int(rng.expovariate(1 / (0.6 + 4.0 * intent)))):
            product = f"p-{rng.randrange(200)}"
            price = round(rng.lognormvariate(3.5, 0.6), 2)
            visit.emit("product_view", product_id=product, price=price)
            if rng.random() < 0.03:
                visit.emit("wishlist_add", product_id=product)
            if rng.random() < 0.04 + 0.5 * intent:
                cart = self._cart_move(visit, product, price, cart)
        return cart

    def _cart_move(self, visit: _Visit, product: str, price: float, cart: float) -> float:
        """Add a product to the cart, and now and then take it out again; returns the cart's
        new value (added, then subtracted if taken out: kept as float sums in this order, so
        the same seed gives the same bytes)."""
        rng = self.rng
        qty = 1 + int(rng.random() < 0.2)
        cart += price * qty
        visit.emit("add_to_cart", product_id=product, value=round(price * qty, 2), currency="EUR")
        if rng.random() < 0.08:
            cart -= price * qty
            visit.emit("remove_from_cart", product_id=product, value=round(price * qty, 2), currency="EUR")
        return cart

    def _identify(self, visit: _Visit) -> None:
        """An anonymous visitor may sign up; a known one may log in on a device not yet
        linked. Either way the rest of the visit carries the contact id."""
        rng, intent = self.rng, self.traits.intent
        if not self.known and rng.random() < 0.01 + 0.4 * intent ** 1.5:
            self._join(visit, after_ms=20_000)
        elif self.known and visit.device not in self.linked and rng.random() < 0.6:
            visit.ts += 15_000
            self._event(visit.out, visit.ts, "login", device=visit.device, contact=True, session=visit.session)
            self.linked.add(visit.device)
            visit.logged_in = True

    def _checkout_or_enquire(self, visit: _Visit, cart: float) -> None:
        """A filled cart may go to checkout (and convert with intent, less so for the price
        sensitive); otherwise a known person may send a form."""
        rng, t = self.rng, self.traits
        if cart > 1.0 and rng.random() < 0.05 + 0.6 * t.intent:
            visit.emit("checkout_start", value=round(cart, 2), currency="EUR")
            if rng.random() < (0.15 + 0.75 * t.intent) * (1.0 - 0.4 * t.price_sensitivity):
                self._purchase(visit, cart)
        elif self.known and rng.random() < 0.005 + 0.15 * t.intent ** 1.5:
            visit.emit("form_submit", form=rng.choice(["demo_request", "contact", "newsletter"]))

    def _purchase(self, visit: _Visit, cart: float) -> None:
        """The order; a guest checkout asks for an email, so the person becomes known first."""
        if not self.known:
            self._join(visit, after_ms=10_000)
        order = f"o-{self.index}-{self.n}"
        visit.emit("purchase", value=round(cart, 2), currency="EUR", order_id=order, category=_pick(order, CATEGORIES))

    def _join(self, visit: _Visit, *, after_ms: int) -> None:
        """The person becomes known during the visit, which from then on is logged in."""
        visit.ts += after_ms
        self._become_known(visit.out, visit.ts, visit.device, visit.session)
        visit.logged_in = True

    def _become_known(self, out: list[_Line], ts: int, device: str, session: str) -> None:
        """Signup, identify and the consent answers for SMS and push (granted more often for
        the preferred channel)."""
        rng, t = self.rng, self.traits
        self.known = True
        self.linked.add(device)
        self._event(out, ts, "signup", device=device, contact=True, session=session,
                    method=rng.choice(["email", "google", "apple"]))
        self._event(out, ts + 1_000, "identify", device=device, contact=True, session=session,
                    birthday=_birthday(self.index, ts))
        for channel in ("sms", "push"):
            p_grant = 0.65 if t.preferred_channel == channel else 0.15
            granted = rng.random() < p_grant
            self.consent[channel] = granted
            self._event(out, ts + 2_000, "consent_update", contact=True, channel=channel, granted=granted)

    def _engagement(self, out: list[_Line], day_start: int) -> None:
        """Weekly newsletter and channel messages for known people, and their reactions."""
        if not self.known:
            return
        t = self.traits
        send = day_start + (10 - self._local_hour(day_start)) % 24 * HOUR_MS + self.rng.randrange(HOUR_MS)
        churned = t.churn_at_ms is not None and send >= t.churn_at_ms
        if not self.unsubscribed and self.rng.random() < 1 / 7:
            campaign = f"nl-{(day_start - self.spec.start_ms) // (7 * DAY_MS)}"
            if self.bad_email:
                self._event(out, send, "email_bounce", contact=True, channel="email", campaign_id=campaign)
                self.unsubscribed = True
                return  # a bounce ends the day: no SMS or push either
            self._newsletter(out, send, campaign, churned)
        self._channel_messages(out, send, churned)

    def _newsletter(self, out: list[_Line], send: int, campaign: str, churned: bool) -> None:
        """One newsletter delivered; opened and clicked with intent (never once churned), and
        now and then the reason to unsubscribe."""
        rng, t = self.rng, self.traits
        self._event(out, send, "email_delivered", contact=True, channel="email", campaign_id=campaign)
        p_open = 0.1 + 0.3 * (t.preferred_channel == "email") + 0.3 * t.intent
        wait = reading_wait(send, t.timezone, t.preferred_hour)
        if not churned and rng.random() < p_open * read_chance(wait):
            delay = int(rng.expovariate(1 / (3 * HOUR_MS)))
            opened = send + (delay if t.preferred_hour is None else wait + delay % HOUR_MS)
            self._event(out, opened, "email_open", contact=True, channel="email", campaign_id=campaign)
            if rng.random() < 0.25 + 0.3 * t.intent:
                self._event(out, opened + 30_000, "email_click", contact=True, channel="email",
                            campaign_id=campaign)
        if rng.random() < 0.006 + 0.02 * (churned or t.preferred_channel != "email"):
            self._event(out, send + 5 * MINUTE_MS, "unsubscribe", contact=True, channel="email")
            self.unsubscribed = True

    def _channel_messages(self, out: list[_Line], send: int, churned: bool) -> None:
        """An SMS or push message now and then where consent allows, answered more often on
        the preferred channel (never once churned)."""
        rng, t = self.rng, self.traits
        for channel, delivered, reacted in (("sms", "sms_delivered", "sms_reply"),
                                           ("push", "push_delivered", "push_open")):
            if self.consent.get(channel) and rng.random() < 1 / 10:
                at = send + rng.randrange(4 * HOUR_MS)
                self._event(out, at, delivered, contact=True, channel=channel)
                if not churned and rng.random() < 0.1 + 0.4 * (t.preferred_channel == channel):
                    self._event(out, at + int(rng.expovariate(1 / (20 * MINUTE_MS))), reacted, contact=True,
                                channel=channel)

    def _sessions(self, out: list[_Line], next_session: int, day_end: int) -> int:
        """The sessions that start before ``day_end`` (mostly in local daytime); returns when
        the next one starts (the end of the run once the person has churned)."""
        while next_session < day_end:
            rate = self._active_rate(next_session)
            if rate <= 0:
                return self.end_ms
            hour = self._local_hour(next_session)
            if 7 <= hour <= 23 or self.rng.random() < 0.15:
                self._session(out, next_session)
            next_session += int(self.rng.expovariate(rate) * DAY_MS) + 10 * MINUTE_MS
        return next_session

    def events(self) -> Iterator[_Line]:
        """This person's events in time order, generated one day at a time.

        A day's sessions and messages can reach past midnight, so they wait in a heap
        until their day comes; only what happens before the run's end is kept."""
        day = self.spec.start_ms
        next_session = self.first_ms
        spill: list[_Line] = []  # events that fall after the current day
        while day < self.end_ms:
            day_end = min(day + DAY_MS, self.end_ms)
            out: list[_Line] = []
            next_session = self._sessions(out, next_session, day_end)
            if day >= self.first_ms - DAY_MS:
                self._engagement(out, day)
            for e in out:
                if e[0] < self.end_ms:
                    heapq.heappush(spill, e)
            while spill and spill[0][0] < day_end:
                yield heapq.heappop(spill)
            day = day_end
        while spill:
            yield heapq.heappop(spill)


class Simulator:
    """Deterministic event stream for a population: same spec, same bytes."""

    def __init__(self, spec: SimulatorSpec):
        self.spec = spec

    @property
    def end_ms(self) -> int:
        return self.spec.start_ms + int(self.spec.days * DAY_MS)

    def traits(self) -> list[Traits]:
        """The hidden truth of every person, in index order."""
        return [_Person(self.spec, i).traits for i in range(self.spec.contacts)]

    def lines(self) -> Iterator[bytes]:
        """Raw JSON lines in nondecreasing event time, malformed ones interleaved."""
        for _ts, _person, line in self.timed_lines():
            yield line

    def timed_lines(self) -> Iterator[tuple[int, int, bytes]]:
        """:meth:`lines` with each line's event time (epoch ms) and person index (-1 for a
        malformed line), so a consumer (the closed-loop simulator) need not parse them."""
        people = [_Person(self.spec, i).events() for i in range(self.spec.contacts)]
        bad = random.Random(_stable_seed("malformed", self.spec.seed))
        rate = self.spec.malformed_rate
        kinds = 0
        for ts, person, _n, line in heapq.merge(*people):
            yield ts, person, line
            if rate and bad.random() < rate:
                yield ts, -1, _malformed(MALFORMED_KINDS[kinds % len(MALFORMED_KINDS)], ts, kinds, self.spec.seed)
                kinds += 1


def _malformed(kind: str, ts: int, n: int, seed: int) -> bytes:
    """One deliberately invalid line of the given kind."""
    base: dict[str, Any] = {"event_id": f"bad-{seed}-{n}", "type": "page_view", "ts": ts, "anonymous_id": f"anon-bad-{n}"}
    if kind == "bad_json":
        return orjson.dumps(base, option=_DUMP)[:-7]  # truncated mid-object
    if kind == "not_object":
        return orjson.dumps([base])
    if kind == "missing_event_id":
        del base["event_id"]
    elif kind == "missing_ts":
        del base["ts"]
    elif kind == "missing_identity":
        del base["anonymous_id"]
    elif kind == "ts_bool":
        base["ts"] = True
    elif kind == "event_id_number":
        base["event_id"] = n
    elif kind == "bad_timestamp":
        base["ts"] = "05/01/2026 10:00"
    elif kind == "oversized":
        base["properties"] = {"blob": "x" * (70 * 1024)}
    return orjson.dumps(base, option=_DUMP)


#: Product categories of simulated purchases (some are consumables, for replenishment journeys).
CATEGORIES = ("shoes", "bags", "coffee", "consumables", "pet-food", "accessories")


def _pick(key: str, options: tuple[str, ...]) -> str:
    """A stable choice by hash (no draw from the simulator's random stream, so adding the
    property left every other simulated event unchanged)."""
    return options[int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % len(options)]


def _birthday(index: int, ts_ms: int) -> str:
    """A stable date of birth (age 18-70) per simulated person, a few of them within the run."""
    h = int.from_bytes(hashlib.blake2b(f"birthday:{index}".encode(), digest_size=8).digest(), "big")
    year = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).year - 18 - h % 52
    day = datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(days=(h >> 8) % 365)
    return day.date().isoformat()

