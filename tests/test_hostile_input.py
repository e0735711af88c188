"""Hostile input never crashes the engine and is never lost: every line is accounted for."""

from __future__ import annotations

import random

import orjson
from prometheus_client import CollectorRegistry

from touchline.decisions.engine import DecisionCore, LabelSettings
from touchline.decisions.models import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.flows.step import Engine, RawBatch
from touchline.metrics.engine import EngineMetrics
from touchline.state import open_store

T0 = 1767610800000
VALUES = [None, True, False, 0, -1, 2**63 - 1, 1.5, float("1e308"), "", "x" * 300, "2026-01-05T10:00:00Z",
          [], [1, [2]], {}, {"a": {"b": {"c": None}}}, "Europe/Nowhere", "\u0000\u2028", "drop table;"]
FIELDS = ["event_id", "type", "ts", "contact_id", "anonymous_id", "channel", "session_id", "properties", "context"]


def _mutations(rng: random.Random, n: int) -> list[bytes]:
    lines: list[bytes] = []
    for i in range(n):
        doc = {"event_id": f"e{i % 700}", "type": rng.choice(["page_view", "add_to_cart", "purchase", "identify",
                                                             "unsubscribe", "consent_update", "weird"]),
               "ts": T0 + rng.randrange(10**9), "contact_id": f"c{rng.randrange(30)}",
               "anonymous_id": f"a{rng.randrange(60)}",
               "properties": {"value": rng.choice([10.0, -5, "NaN", None, 1e300]),
                              "channel": rng.choice(["email", "sms", 7, None, "all"]), "granted": rng.choice([True, "yes"])},
               "context": {"timezone": rng.choice(["Asia/Tokyo", "Mars/Base", 5]), "device": f"d{rng.randrange(5)}"}}
        for _ in range(rng.randrange(3)):
            field = rng.choice(FIELDS)
            if rng.random() < 0.3:
                doc.pop(field, None)
            else:
                doc[field] = rng.choice(VALUES)
        raw = orjson.dumps(doc, default=str) if rng.random() > 0.05 else bytes(rng.randrange(256) for _ in range(40))
        if rng.random() < 0.03:
            raw = raw[: rng.randrange(len(raw) + 1)]
        lines.append(raw)
    return lines


def test_thousands_of_mutated_events_are_all_accounted_for():
    rng = random.Random(20261123)
    registry = CollectorRegistry()
    core = DecisionCore(PolicyConfig(holdout_share=0.0),
                        {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")},
                        LabelSettings(7, 7, frozenset({"purchase", "signup"})))
    engine = Engine(open_store("memory://"), core, EngineMetrics(registry))
    lines = _mutations(rng, 5_000)
    dead_total = 0
    for start in range(0, len(lines), 250):
        result = engine.process(RawBatch(lines[start:start + 250], "fuzz", start + 1))
        dead_total += len(result.dead_letters)
        for record in result.dead_letters:
            assert record["reason"] and record["detail"]
    t = engine.totals
    # every line is an applied event, a duplicate, or a dead letter: nothing vanishes
    assert t.events + t.duplicates + dead_total == len(lines)
    assert t.events > 500 and t.duplicates > 20 and dead_total > 500
    assert t.dead_letters["duplicate_id"] > 100  # ids reused by other contacts: never applied to them


def test_hostile_ids_are_kept_apart_or_named_dead_letters():
    """Ids built to collide: a contact spelled like an anonymous key, the escape, braces,
    unicode, control characters (the unit separator the store joins members with), a 10 KB id,
    and one event_id reused by another contact. Each valid one is its own contact and gets its
    welcome under its real id; each invalid line is a dead letter naming its line and why."""
    registry = CollectorRegistry()
    core = DecisionCore(PolicyConfig(holdout_share=0.0),
                        {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")},
                        LabelSettings(7, 7, frozenset({"purchase", "signup"})))
    engine = Engine(open_store("memory://"), core, EngineMetrics(registry))
    good = ["anon:x", "~", "~anon:x", "{x}", "}x", "x}", "über-☃"]
    bad = ["x\x1fcart", "\x1f", "c1\n", "k" * 10_240]
    lines = [orjson.dumps({"event_id": f"v-{i}", "type": "page_view", "ts": T0, "anonymous_id": c})
             for i, c in enumerate(good)]
    lines += [orjson.dumps({"event_id": f"s-{i}", "type": "signup", "ts": T0 + 1, "contact_id": c})
              for i, c in enumerate(good + bad)]
    lines.append(orjson.dumps({"event_id": "s-0", "type": "signup", "ts": T0 + 2, "contact_id": "victim"}))
    res = engine.process(RawBatch(lines, "ids.jsonl", 1))
    assert sorted(d["contact_id"] for d in res.decisions) == sorted(good)
    dead = [(d["reason"], d["source"]) for d in res.dead_letters]
    first_bad = len(good) * 2 + 1
    assert dead == [("invalid", f"ids.jsonl:{first_bad + i}") for i in range(len(bad))] + [
        ("duplicate_id", f"ids.jsonl:{len(lines)}")]
    assert "control characters" in res.dead_letters[0]["detail"]
    assert "256" in res.dead_letters[3]["detail"]
    assert engine.store.stats()["profiles"] == 2 * len(good)  # every visitor and every contact apart
    assert registry.get_sample_value("touchline_dead_letters_total", {"reason": "duplicate_id"}) == 1
