"""Hostile input never crashes the engine and is never lost: every line is accounted for."""

from __future__ import annotations

import random

import orjson
from prometheus_client import CollectorRegistry

from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.decisions.events import Event, Rejected, _duplicate_key, _may_repeat_keys, parse_event
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.batch_service import Engine
from touchline.decisions.batches import RawBatch
from touchline.metrics.engine_metrics import EngineMetrics
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


# -- repeated keys: orjson keeps the last silently; the contract says an event has each key once

BASE = b'"type":"page_view","ts":1767610800000,"contact_id":"c1"'


def _reject(raw: bytes) -> tuple[str, str]:
    result = parse_event(raw)
    assert isinstance(result, Rejected), result
    return result.reason, result.detail


def test_a_repeated_top_level_key_is_rejected_naming_it():
    assert _reject(b'{"event_id":"e1",' + BASE + b',"event_id":"e2"}') == ("invalid", 'duplicate key "event_id"')


def test_a_repeated_nested_key_is_rejected_with_its_path():
    raw = b'{"event_id":"e1",' + BASE + b',"properties":{"sku":"a","value":3,"sku":"b"}}'
    assert _reject(raw) == ("invalid", 'duplicate key "sku" in properties')
    raw = b'{"event_id":"e1",' + BASE + b',"context":{"device":{"os":"x"}},"properties":{"items":[{"q":1},{"q":1,"q":2}]}}'
    assert _reject(raw) == ("invalid", 'duplicate key "q" in properties.items[1]')


def test_whitespace_before_the_colon_does_not_hide_a_repeat():
    raw = b'{ "event_id" : "e1" ,\t"type":"page_view", "ts" :1767610800000, "contact_id"\r\n:"c1", "event_id"\t:\n"e2" }'
    assert _reject(raw) == ("invalid", 'duplicate key "event_id"')


def test_a_key_spelled_with_an_escape_is_the_same_key():
    assert _reject(b'{"event_id":"e1",' + BASE + b',"\\u0065vent_id":"e2"}') == ("invalid", 'duplicate key "event_id"')


def test_an_escaped_quote_before_a_colon_in_a_value_is_not_a_repeat():
    # '\":' inside a string looks like the end of a key to the fast count: the exact check
    # runs and finds nothing repeated
    for value in (b'"say \\": hi"', b'"\\"  :\\":"', b'"a\\\\\\":b"'):
        raw = b'{"event_id":"e1",' + BASE + b',"properties":{"note":' + value + b',"k\\":":1}}'
        assert _may_repeat_keys(raw, orjson.loads(raw))
        event = parse_event(raw)
        assert isinstance(event, Event), (raw, event)
        assert event.properties["note"] == orjson.loads(value)
    # a backslash-escaped backslash before a key's closing quote is still a key
    raw = b'{"event_id":"e1",' + BASE + b',"properties":{"a\\\\":1,"a\\\\":2}}'
    assert _reject(raw) == ("invalid", 'duplicate key "a\\\\" in properties')


def test_the_fast_check_agrees_with_an_exact_parse_on_random_documents():
    rng = random.Random(20261202)
    keys = ["a", "b", "a\\\"", "\\\":", "\\u0061", "x y", "é"]
    strings = ['"v"', '"\\":"', '": "', '"\\\\"', '"http://x:1/"', '"\\u0022:"']
    ws = ["", " ", "\t", "\r\n", "  "]

    def value(depth: int) -> str:
        roll = rng.random()
        if depth < 3 and roll < 0.25:
            members = [f'"{rng.choice(keys)}"{rng.choice(ws)}:{rng.choice(ws)}{value(depth + 1)}'
                       for _ in range(rng.randrange(4))]
            return "{" + ",".join(members) + "}"
        if depth < 3 and roll < 0.35:
            return "[" + ",".join(value(depth + 1) for _ in range(rng.randrange(3))) + "]"
        return rng.choice(strings + ["1", "null", "true"])

    import json

    def repeats(raw: bytes) -> bool:
        found = []

        def hook(pairs: list) -> dict:
            found.append(len({k for k, _ in pairs}) != len(pairs))
            return dict(pairs)
        json.loads(raw, object_pairs_hook=hook)
        return any(found)

    checked = with_repeats = 0
    for _ in range(3000):
        raw = ("{" + f'"p"{rng.choice(ws)}:' + value(0) + "}").encode()
        doc = orjson.loads(raw)
        truth = repeats(raw)
        with_repeats += truth
        checked += 1
        if truth:
            assert _may_repeat_keys(raw, doc) and _duplicate_key(raw), raw
        elif _may_repeat_keys(raw, doc):
            assert _duplicate_key(raw) is None, raw
    assert with_repeats > 100 and checked - with_repeats > 100


def test_byte_order_mark_nul_and_crlf():
    event = b'{"event_id":"e1",' + BASE + b'}'
    # a UTF-8 BOM is not JSON text (RFC 8259 8.1: senders must not add one): a clear bad_json
    reason, detail = _reject(b"\xef\xbb\xbf" + event)
    assert reason == "bad_json" and "byte order mark" in detail
    assert _reject(event + b"\x00")[0] == "bad_json"
    assert _reject(event[:20] + b"\x00" + event[20:])[0] == "bad_json"
    assert isinstance(parse_event(event + b"\r"), Event)  # a CR left by a CRLF line end is whitespace
    assert isinstance(parse_event(event + b"\r\n"), Event)


def test_deep_nesting_is_answered_not_raised():
    for depth in (500, 1020, 1100):
        nested = b'{"a":' * depth + b'{"b":1,"b":2}' + b"}" * depth
        result = parse_event(b'{"event_id":"e1",' + BASE + b',"properties":' + nested + b"}")
        assert isinstance(result, Rejected) and result.reason in ("invalid", "bad_json"), result
