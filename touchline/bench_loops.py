"""The two pipelines a user writes by hand instead of Touchline, for ``touchline bench --compare``.

Both read the events topic from its start to its end, keep each contact's recent events and
a few totals in Redis, score every event with River (``StandardScaler | LogisticRegression``,
SGD at River's default rate 0.01, the engine's default model) and learn on every event, and
produce a decision record to an output topic when a rule fires. They run the same code for
everything but the I/O, so they differ only in how they talk to Kafka and Redis:

- :func:`naive_loop`, one event at a time: poll one message, parse it, read the contact
  (``HGETALL``, ``ZRANGE``), decide, write it back one command per round trip (``ZADD``,
  ``ZREMRANGEBYSCORE``, ``HSET``, two ``EXPIRE``) and produce its decision.
- :func:`batched_loop`, a batch of up to 1,000 messages at a time: parse them all, read every
  contact of the batch in one pipeline, decide in order, write every contact back in one
  pipeline, produce the batch's decisions and serve the producer once.

What both do, as the engine does: parse each line with orjson (a malformed line is counted
and skipped); windowed counts per event type over 1 h, 24 h, 7 d and 30 d on event time (the
engine's eight feature types and four windows, from the contact's last 30 days of events kept
in a sorted set), recency, purchases, money, open cart (47 features); a repeated event id within
the contact's 30 days is ignored; the model learns from the contact's previous scoring (its
features, kept in Redis) whether this event is a goal (purchase, form_submit, signup), then
scores this one; ``welcome`` on a signup and ``sales_handoff`` when a known contact's score
crosses the threshold on an intent event, each a JSON record keyed by contact.

What they do not do, and the engine does, so read the comparison with this in mind: no JSON
Schema validation, event-time ordering, late or future events, dead letters or store-wide
event ids; no identity resolution (an anonymous visitor stays apart from the contact it turns
out to be); no timers (no cart reminders, win-backs, label horizons or profile expiry on event
time: Redis TTLs instead); one model, not two, and no progressive evaluation, champion and
challenger or model checkpoints; no journeys, experiments, holdout, consent, frequency caps,
cooldowns or arbitration between candidates; no metrics; no exactly-once: offsets are
auto-committed and a crash re-sends decisions. The engine, for its part, scores only where a
decision or a training example can follow and learns only when a sampled label resolves, so
it makes far fewer model calls than these loops.

Run one as its own process, as the comparison does; it prints its figures as one JSON object:

    python -m touchline.bench_loops naive --kafka 127.0.0.1:9092 --redis redis://127.0.0.1:6379/15 \\
        --topic touchline.events --out-topic hand.decisions
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from math import log1p
from typing import Any, Callable, Sequence

import orjson

from touchline.decisions.features import FEATURE_TYPES
from touchline.decisions.profile import PASSIVE_TYPES, WINDOWS
from touchline.decisions.triggers import INTENT_TYPES

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
KEEP_MS = WINDOWS["30d"]  # the longest window: older events are of no use to any feature
TTL_SECONDS = 31 * 24 * 3600  # a contact silent this long (wall time) is forgotten
BATCH = 1000
GOALS = frozenset({"purchase", "form_submit", "signup"})
THRESHOLD = 0.7
_NEVER = log1p(365 * 24.0)


# ------------------------------------------------------------------ events
@dataclass(slots=True)
class HandEvent:
    """The fields of an event line these loops use."""

    event_id: str
    type: str
    ts: int
    key: str  # the contact id, else "anon:" + the anonymous id
    known: bool
    value: float


def epoch_ms(ts: Any) -> int:
    """Event time in epoch milliseconds, from a number or an ISO 8601 string.

    >>> epoch_ms(1767571257776), epoch_ms("2026-01-05T00:02:21.039Z")
    (1767571257776, 1767571341039)
    """
    if isinstance(ts, bool):
        raise ValueError("ts is a boolean")
    if isinstance(ts, (int, float)):
        return int(ts)
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def parse(line: bytes) -> HandEvent | None:
    """One event line, or None when it is not a usable event.

    >>> parse(b'{"event_id":"e1","type":"add_to_cart","ts":5,"anonymous_id":"a","properties":{"value":9.5}}')
    HandEvent(event_id='e1', type='add_to_cart', ts=5, key='anon:a', known=False, value=9.5)
    >>> parse(b'{"event_id":"e1","type":"page'), parse(b'[1]'), parse(b'{"type":"login","ts":1}')
    (None, None, None)
    """
    try:
        event = orjson.loads(line)
        event_id, type_, ts = event["event_id"], event["type"], epoch_ms(event["ts"])
        contact, anonymous = event.get("contact_id"), event.get("anonymous_id")
        value = (event.get("properties") or {}).get("value")
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None
    if not (isinstance(event_id, str) and isinstance(type_, str) and (contact or anonymous)):
        return None
    key = str(contact) if contact else f"anon:{anonymous}"
    return HandEvent(event_id, type_, ts, key, bool(contact), _amount(value))


def _amount(value: Any) -> float:
    """A positive money amount, else 0.

    >>> _amount(9.5), _amount("9.5"), _amount(True), _amount(-1)
    (9.5, 0.0, 0.0, 0.0)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if value > 0 else 0.0


# ------------------------------------------------------------------ a contact in Redis
def profile_key(key: str) -> str:
    return f"hand:p:{key}"


def events_key(key: str) -> str:
    return f"hand:e:{key}"


_NUMBERS = ("first_ts", "last_ts", "last_activity_ts", "last_purchase_ts", "events_total", "purchases_total",
            "monetary_total", "cart_value", "last_lead")


@dataclass(slots=True)
class Contact:
    """A contact as read from Redis (a hash of totals, a sorted set of its last 30 days of
    events), changed in memory, then written back."""

    key: str
    known: bool = False
    totals: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, str]] = field(default_factory=list)  # (ts, type) of each event kept
    ids: set[str] = field(default_factory=set)
    pending: dict[str, float] | None = None  # the features of the previous scoring
    new: dict[str, int] = field(default_factory=dict)  # sorted-set member -> ts, to add

    @classmethod
    def load(cls, key: str, stored: dict[bytes, bytes], events: list[tuple[bytes, float]]) -> "Contact":
        """From the replies of ``HGETALL`` and ``ZRANGE 0 -1 WITHSCORES``."""
        fields = {k.decode(): v for k, v in stored.items()}
        contact = cls(key, fields.get("known") == b"1",
                      {name: float(fields[name]) for name in _NUMBERS if name in fields})
        if "pending" in fields:
            contact.pending = orjson.loads(fields["pending"])
        for member, score in events:
            type_, event_id = member.decode().split("|", 1)
            contact.history.append((int(score), type_))
            contact.ids.add(event_id)
        return contact

    def mapping(self) -> dict[str, str | bytes]:
        """The hash fields to write back."""
        out: dict[str, str | bytes] = {name: repr(value) for name, value in self.totals.items()}
        out["known"] = "1" if self.known else "0"
        if self.pending is not None:
            out["pending"] = orjson.dumps(self.pending)
        return out


def read(client: Any, key: str) -> tuple[Any, Any]:
    """Queue (pipeline) or run (client) the two reads of a contact."""
    return client.hgetall(profile_key(key)), client.zrange(events_key(key), 0, -1, withscores=True)


def save(client: Any, contact: Contact) -> None:
    """Write a contact back: its new events, the events past 30 days dropped, its totals, its
    time to live. On a client each command is a round trip; on a pipeline, one for all."""
    if contact.new:
        client.zadd(events_key(contact.key), contact.new)
    client.zremrangebyscore(events_key(contact.key), "-inf", contact.totals["last_ts"] - KEEP_MS)
    client.hset(profile_key(contact.key), mapping=contact.mapping())
    client.expire(profile_key(contact.key), TTL_SECONDS)
    client.expire(events_key(contact.key), TTL_SECONDS)


# ------------------------------------------------------------------ what an event does
def apply(contact: Contact, ev: HandEvent) -> bool:
    """Count the event into the contact; False (nothing changed) if its id was seen in the last 30 days.

    >>> c, ev = Contact("c1"), HandEvent("e1", "add_to_cart", 1_000, "c1", True, 20.0)
    >>> apply(c, ev), apply(c, ev)
    (True, False)
    >>> c.totals["cart_value"], c.totals["first_ts"], c.history, c.new
    (20.0, 1000.0, [(1000, 'add_to_cart')], {'add_to_cart|e1': 1000})
    """
    if ev.event_id in contact.ids:
        return False
    t = contact.totals
    ts = float(ev.ts)  # totals are floats, as read back from Redis
    contact.known = contact.known or ev.known
    contact.ids.add(ev.event_id)
    contact.history.append((ev.ts, ev.type))
    contact.new[f"{ev.type}|{ev.event_id}"] = ev.ts
    t["events_total"] = t.get("events_total", 0.0) + 1
    t["first_ts"] = min(t.get("first_ts", ts), ts)
    t["last_ts"] = max(t.get("last_ts", ts), ts)
    if ev.type not in PASSIVE_TYPES:  # deliveries, bounces, bookkeeping: not the person acting
        t["last_activity_ts"] = max(t.get("last_activity_ts", ts), ts)
    _apply_money(t, ev.type, ts, ev.value)
    return True


def _apply_money(t: dict[str, float], type_: str, ts: float, value: float) -> None:
    """What the cart and purchase events do to the totals."""
    if type_ == "add_to_cart":
        t["cart_value"] = t.get("cart_value", 0.0) + value
    elif type_ == "remove_from_cart":
        t["cart_value"] = max(0.0, t.get("cart_value", 0.0) - value)
    elif type_ == "purchase":
        t["purchases_total"] = t.get("purchases_total", 0.0) + 1
        t["monetary_total"] = t.get("monetary_total", 0.0) + value
        t["last_purchase_ts"] = max(t.get("last_purchase_ts", ts), ts)
        t["cart_value"] = 0.0


_LENGTHS = tuple(WINDOWS.values())  # shortest first, each inside the next
_NAMES = tuple((tuple((t, f"n_{t}_{w}") for t in FEATURE_TYPES), f"n_all_{w}") for w in WINDOWS)


def window_counts(history: list[tuple[int, str]], now: float) -> list[dict[str, int]]:
    """Events by type in each window (1 h, 24 h, 7 d, 30 d) as of ``now``: each event counted
    in the shortest window that holds it, then the shorter windows added into the longer.

    >>> window_counts([(0, "a"), (9, "a"), (10, "b")], 9 + HOUR_MS)[:2]  # 1 h: 9 + HOUR_MS - 1 h < ts
    [{'b': 1}, {'a': 2, 'b': 1}]
    """
    shortest: list[dict[str, int]] = [{} for _ in _LENGTHS]
    for ts, type_ in history:
        age = now - ts
        for i, length in enumerate(_LENGTHS):
            if age < length:
                counts = shortest[i]
                counts[type_] = counts.get(type_, 0) + 1
                break
    for shorter, longer in zip(shortest, shortest[1:]):
        for type_, n in shorter.items():
            longer[type_] = longer.get(type_, 0) + n
    return shortest


def features(contact: Contact) -> dict[str, float]:
    """The feature vector as of the contact's newest event.

    >>> c = Contact("c1", known=True)
    >>> _ = apply(c, HandEvent("e1", "page_view", 0, "c1", True, 0.0))
    >>> _ = apply(c, HandEvent("e2", "page_view", 2 * HOUR_MS, "c1", True, 0.0))
    >>> f = features(c)
    >>> round(f["n_page_view_1h"], 3), round(f["n_page_view_24h"], 3), f["known"], len(f)  # log1p(1), log1p(2)
    (0.693, 1.099, 1.0, 47)
    """
    t = contact.totals
    now = t["last_ts"]
    counts = window_counts(contact.history, now)
    out: dict[str, float] = {}
    for (names, all_name), by_type in zip(_NAMES, counts):
        for type_, name in names:
            out[name] = log1p(by_type.get(type_, 0))
        out[all_name] = log1p(sum(by_type.values()))
    month = counts[-1]
    out["email_open_rate_30d"] = month.get("email_open", 0) / (month.get("email_delivered", 0) + 1)
    out["n_sms_reply_30d"] = log1p(month.get("sms_reply", 0))
    out["n_push_open_30d"] = log1p(month.get("push_open", 0))
    out["hours_since_activity"] = _hours_since(now, t.get("last_activity_ts"))
    out["hours_since_purchase"] = _hours_since(now, t.get("last_purchase_ts"))
    out["days_known"] = log1p((now - t["first_ts"]) / DAY_MS)
    out["purchases_total"] = log1p(t.get("purchases_total", 0.0))
    out["monetary_total"] = log1p(t.get("monetary_total", 0.0))
    cart = t.get("cart_value", 0.0)
    out["cart_value"] = log1p(cart)
    out["has_open_cart"] = 1.0 if cart > 0 else 0.0
    out["known"] = 1.0 if contact.known else 0.0
    return out


def _hours_since(now: float, then: float | None) -> float:
    return _NEVER if then is None else log1p(max(0.0, now - then) / HOUR_MS)


def new_model() -> Any:
    """The engine's default model: ``StandardScaler | LogisticRegression`` (SGD, rate 0.01)."""
    from river import linear_model, optim, preprocessing

    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))


@dataclass
class Decider:
    """Learn, score and decide for one event at a time; what both loops share."""

    threshold: float = THRESHOLD
    goals: frozenset[str] = GOALS
    model: Any = field(default_factory=new_model)
    duplicates: int = 0
    decisions: int = 0

    def on_event(self, contact: Contact, ev: HandEvent) -> bytes | None:
        """Apply ``ev`` to ``contact``; the decision record it triggers, if any."""
        if not apply(contact, ev):
            self.duplicates += 1
            return None
        if contact.pending is not None:  # did the previous scoring lead to a goal? it did if this is one
            self.model.learn_one(contact.pending, ev.type in self.goals)
        feats = features(contact)
        score = self.model.predict_proba_one(feats).get(True, 0.0)
        contact.pending = feats
        previous = contact.totals.get("last_lead")
        if contact.known and ev.type in INTENT_TYPES:
            contact.totals["last_lead"] = score
        action = self._action(contact, ev, score, previous)
        if action is None:
            return None
        self.decisions += 1
        return orjson.dumps({
            "decision_id": f"{ev.event_id}:{action}", "contact_id": ev.key, "action": action, "channel": "email",
            "score": round(score, 4), "ts": ev.ts, "trigger": {"kind": "event", "event_id": ev.event_id,
                                                                 "type": ev.type}})

    def _action(self, contact: Contact, ev: HandEvent, score: float, previous: float | None) -> str | None:
        if ev.type == "signup":
            return "welcome"
        crossed = score >= self.threshold and (previous is None or previous < self.threshold)
        if contact.known and ev.type in INTENT_TYPES and crossed:
            return "sales_handoff"
        return None


# ------------------------------------------------------------------ Kafka and the figures
@dataclass
class LoopConfig:
    """Where a loop reads and writes."""

    bootstrap: str
    redis_url: str
    topic: str
    out_topic: str
    threshold: float = THRESHOLD
    goals: frozenset[str] = GOALS
    idle_seconds: float = 30.0  # give up when nothing arrives for this long before the end of the topic


@dataclass
class Tally:
    """What a loop counts while it runs."""

    consumed: int = 0
    invalid: int = 0
    latencies: list[tuple[float, int]] = field(default_factory=list)  # (ms, events it applies to)
    started: float = field(default_factory=time.perf_counter)

    def figures(self, decider: Decider) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        return {
            "consumed": self.consumed, "invalid": self.invalid, "duplicates": decider.duplicates,
            "decisions": decider.decisions, "seconds": round(seconds, 3),
            "events_per_second": round(self.consumed / seconds, 1) if seconds > 0 else None,
            "processing_ms": {"p50": _quantile(self.latencies, 0.5), "p99": _quantile(self.latencies, 0.99)},
        }


def _quantile(samples: list[tuple[float, int]], q: float) -> float | None:
    """The q-quantile of values with weights.

    >>> _quantile([(1.0, 98), (50.0, 2)], 0.99), _quantile([], 0.5)
    (50.0, None)
    """
    total = sum(w for _, w in samples)
    seen = 0
    for value, weight in sorted(samples):
        seen += weight
        if seen >= q * total:
            return round(value, 3)
    return None


class TopicReader:
    """A consumer of every partition of ``topic`` from its start, under a fresh group id,
    that knows when it has reached the end of every partition."""

    def __init__(self, config: LoopConfig) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": config.bootstrap, "group.id": f"hand-{uuid.uuid4().hex[:8]}",
                                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
        partitions = self.consumer.list_topics(config.topic, timeout=10).topics[config.topic].partitions
        # assign, not subscribe: a group join on Tansu takes ~20 s (the engine assigns too)
        self.consumer.assign([TopicPartition(config.topic, p, OFFSET_BEGINNING) for p in partitions])
        self.open = set(partitions)
        self.idle_seconds = config.idle_seconds
        self.last_message = time.monotonic()

    @property
    def done(self) -> bool:
        if time.monotonic() - self.last_message > self.idle_seconds:
            raise RuntimeError(f"no message for {self.idle_seconds:g} s before the end of the topic")
        return not self.open

    def values(self, messages: list[Any]) -> list[bytes]:
        """The message values, noting partitions at their end."""
        from confluent_kafka import KafkaError, KafkaException

        out = []
        for msg in messages:
            error = msg.error()
            if error is None:
                self.open.add(msg.partition())
                out.append(msg.value())
            elif error.code() == KafkaError._PARTITION_EOF:
                self.open.discard(msg.partition())
            else:
                raise KafkaException(error)
        if out:
            self.last_message = time.monotonic()
        return out

    def close(self) -> None:
        self.consumer.close()


def _producer(config: LoopConfig) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": config.bootstrap})


def naive_loop(config: LoopConfig) -> dict[str, Any]:
    """One event at a time, one Redis round trip per command (see the module's docstring)."""
    import redis

    client = redis.Redis.from_url(config.redis_url)
    decider = Decider(config.threshold, config.goals)
    tally = Tally()
    reader = TopicReader(config)
    producer = _producer(config)
    while not reader.done:
        msg = reader.consumer.poll(0.5)
        for line in reader.values([msg] if msg is not None else []):
            started = time.perf_counter()
            tally.consumed += 1
            ev = parse(line)
            if ev is None:
                tally.invalid += 1
                continue
            contact = Contact.load(ev.key, *read(client, ev.key))
            record = decider.on_event(contact, ev)
            if contact.new:
                save(client, contact)
            if record is not None:
                producer.produce(config.out_topic, record, ev.key.encode())
            producer.poll(0)
            tally.latencies.append(((time.perf_counter() - started) * 1000, 1))
    producer.flush(30)
    reader.close()
    client.close()
    return tally.figures(decider)


def batched_loop(config: LoopConfig) -> dict[str, Any]:
    """A batch of up to 1,000 events at a time: one pipeline to read, one to write (see the
    module's docstring)."""
    import redis

    client = redis.Redis.from_url(config.redis_url)
    decider = Decider(config.threshold, config.goals)
    tally = Tally()
    reader = TopicReader(config)
    producer = _producer(config)
    while not reader.done:
        lines = reader.values(reader.consumer.consume(BATCH, 0.5))
        if not lines:
            continue
        started = time.perf_counter()
        tally.consumed += len(lines)
        events = [ev for ev in map(parse, lines) if ev is not None]
        tally.invalid += len(lines) - len(events)
        contacts = _load_all(client, events)
        records = [(ev.key, decider.on_event(contacts[ev.key], ev)) for ev in events]
        _save_all(client, contacts)
        for key, record in records:
            if record is not None:
                producer.produce(config.out_topic, record, key.encode())
        producer.poll(0)
        tally.latencies.append(((time.perf_counter() - started) * 1000, len(lines)))
    producer.flush(30)
    reader.close()
    client.close()
    return tally.figures(decider)


def _load_all(client: Any, events: list[HandEvent]) -> dict[str, Contact]:
    """Every contact of a batch, read in one pipeline."""
    keys = list(dict.fromkeys(ev.key for ev in events))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        read(pipe, key)
    replies = pipe.execute()
    return {key: Contact.load(key, replies[2 * i], replies[2 * i + 1]) for i, key in enumerate(keys)}


def _save_all(client: Any, contacts: dict[str, Contact]) -> None:
    """Every changed contact of a batch, written in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for contact in contacts.values():
        if contact.new:
            save(pipe, contact)
    pipe.execute()


LOOPS: dict[str, Callable[[LoopConfig], dict[str, Any]]] = {"naive": naive_loop, "batched": batched_loop}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m touchline.bench_loops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("loop", choices=sorted(LOOPS))
    p.add_argument("--kafka", required=True, metavar="HOST:PORT")
    p.add_argument("--redis", required=True, metavar="URL", help="state (keys hand:*)")
    p.add_argument("--topic", required=True, help="the events topic, read from its start to its end")
    p.add_argument("--out-topic", required=True, help="where the decisions go")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="sales hand-off threshold (default 0.7)")
    p.add_argument("--goals", default=",".join(sorted(GOALS)), help="goal event types (default %(default)s)")
    args = p.parse_args(argv)
    config = LoopConfig(args.kafka, args.redis, args.topic, args.out_topic, args.threshold,
                        frozenset(g.strip() for g in args.goals.split(",") if g.strip()))
    print(orjson.dumps(LOOPS[args.loop](config)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
