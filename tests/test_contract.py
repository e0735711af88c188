"""The event contract: what parse_event accepts, what it rejects and why, and that the
shipped JSON Schema says the same as the reference validator."""

from __future__ import annotations

import orjson
import pytest
from jsonschema import Draft202012Validator

from touchline.decisions.events import (
    KNOWN_TYPES,
    MAX_EVENT_BYTES,
    REASONS,
    SCHEMA_VERSION,
    Event,
    Rejected,
    _contract_problem,
    _plainly_valid,
    _read_object,
    _to_event,
    load_schema,
    parse_event,
    parse_ts,
)

JAN1 = 1767225600000  # 2026-01-01T00:00:00Z
_DROP = object()  # marks a field to leave out of base()


def base(**over) -> dict:
    doc = {"event_id": "e1", "type": "page_view", "ts": JAN1, "contact_id": "c1"}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not _DROP}


def parse(doc) -> Event | Rejected:
    return parse_event(orjson.dumps(doc))


# ----------------------------------------------------------------- valid events

VALID_TS = [
    (JAN1, JAN1),
    (0, 0),
    ("2026-01-01T00:00:00Z", JAN1),
    ("2026-01-01T00:00:00z", JAN1),
    ("2026-01-01t00:00:00Z", JAN1),
    ("2026-01-01 00:00:00Z", JAN1),
    ("2026-01-01T01:00:00+01:00", JAN1),
    ("2025-12-31T19:00:00-05:00", JAN1),
    ("2026-01-01T05:30:00+05:30", JAN1),
    ("2026-01-01T00:00:00.123Z", JAN1 + 123),
    ("2026-01-01T00:00:00.5Z", JAN1 + 500),
    ("2026-01-01T00:00:00.123456Z", JAN1 + 123),
    ("2026-01-01T00:00:00.123456789Z", JAN1 + 123),
    ("2026-01-01T02:00:00.250+02:00", JAN1 + 250),
]


@pytest.mark.parametrize("ts,expected", VALID_TS)
def test_valid_timestamps_become_epoch_ms(ts, expected):
    """ts as epoch ms or RFC 3339 (Z, lowercase, space, offsets, fractions) gives UTC epoch ms."""
    ev = parse(base(ts=ts))
    assert isinstance(ev, Event), ev
    assert ev.ts_ms == expected


def test_contact_only_event():
    """An event with only contact_id parses; identity is the contact; optional parts default empty."""
    ev = parse(base())
    assert isinstance(ev, Event)
    assert (ev.event_id, ev.type, ev.contact_id, ev.anonymous_id) == ("e1", "page_view", "c1", None)
    assert ev.identity == "c1"
    assert ev.properties == {} and ev.context == {}
    assert ev.channel is None and ev.session_id is None


def test_anonymous_only_event():
    """An event with only anonymous_id parses and is identified by it."""
    ev = parse(base(contact_id=_DROP, anonymous_id="a1"))
    assert isinstance(ev, Event)
    assert ev.contact_id is None and ev.anonymous_id == "a1"
    assert ev.identity == "a1"


def test_both_ids_prefer_contact():
    """With both ids the event keeps both, and its identity is the contact."""
    ev = parse(base(anonymous_id="a1"))
    assert isinstance(ev, Event)
    assert (ev.contact_id, ev.anonymous_id, ev.identity) == ("c1", "a1", "c1")


def test_unknown_type_is_accepted():
    """Unknown event types are accepted as-is (not rejected)."""
    assert "wishlist_add" not in KNOWN_TYPES
    ev = parse(base(type="wishlist_add"))
    assert isinstance(ev, Event) and ev.type == "wishlist_add"


def test_optional_fields_are_carried():
    """channel, session_id, properties and context come through unchanged; extra keys are ignored."""
    doc = base(
        channel="email",
        session_id="s1",
        properties={"value": 12.5, "nested": {"a": [1, 2]}},
        context={"timezone": "Europe/Berlin", "locale": "de-DE", "device": "d1", "extra": 1},
        something_else=True,
    )
    ev = parse(doc)
    assert isinstance(ev, Event)
    assert ev.channel == "email" and ev.session_id == "s1"
    assert ev.properties == {"value": 12.5, "nested": {"a": [1, 2]}}
    assert ev.context["timezone"] == "Europe/Berlin" and ev.context["extra"] == 1


def test_to_dict_round_trips_through_parse():
    """Event.to_dict is a valid contract event that parses back to an equal Event."""
    ev = parse(base(ts="2026-01-01T00:00:00.042Z", anonymous_id="a1", channel="sms",
                    properties={"v": 1}, context={"device": "x"}))
    assert isinstance(ev, Event)
    again = parse(ev.to_dict())
    assert again == ev
    assert ev.to_dict()["ts"] == JAN1 + 42


def test_parse_ts_direct():
    """parse_ts takes ints unchanged and rejects strings without an offset with ValueError."""
    assert parse_ts(123) == 123
    assert parse_ts("1970-01-01T00:00:01Z") == 1000
    with pytest.raises(ValueError, match="offset"):
        parse_ts("2026-01-01T00:00:00")


# --------------------------------------------------------------- invalid events

INVALID_DOCS = [
    # (id, doc, reason, words the detail must contain)
    ("missing_event_id", base(event_id=_DROP), "missing_field", ["event_id"]),
    ("missing_type", base(type=_DROP), "missing_field", ["type"]),
    ("missing_ts", base(ts=_DROP), "missing_field", ["ts"]),
    ("missing_identity", base(contact_id=_DROP), "missing_identity", ["contact_id", "anonymous_id"]),
    ("event_id_number", base(event_id=5), "wrong_type", ["event_id"]),
    ("type_number", base(type=7), "wrong_type", ["type"]),
    ("ts_bool", base(ts=True), "wrong_type", ["ts", "bool"]),
    ("ts_float", base(ts=1.5), "wrong_type", ["ts", "float"]),
    ("ts_negative", base(ts=-1), "bad_timestamp", ["ts"]),
    ("ts_too_large", base(ts=32503680000001), "bad_timestamp", ["ts"]),
    ("ts_null", base(ts=None), "wrong_type", ["ts"]),
    ("ts_empty_string", base(ts=""), "bad_timestamp", ["ts"]),
    ("ts_too_long_string", base(ts="2026-01-01T00:00:00.000000000000000000000Z"), "bad_timestamp", ["ts"]),
    ("ts_object", base(ts={"ms": 1}), "wrong_type", ["ts"]),
    ("properties_list", base(properties=[1, 2]), "wrong_type", ["properties"]),
    ("properties_string", base(properties="x"), "wrong_type", ["properties"]),
    ("context_list", base(context=[]), "wrong_type", ["context"]),
    ("context_timezone_number", base(context={"timezone": 5}), "wrong_type", ["context.timezone"]),
    ("contact_id_number", base(contact_id=12), "wrong_type", ["contact_id"]),
    ("anonymous_id_null", base(anonymous_id=None), "wrong_type", ["anonymous_id"]),
    ("contact_id_empty", base(contact_id=""), "invalid", ["contact_id"]),
    ("contact_id_empty_with_anon", base(contact_id="", anonymous_id="a"), "invalid", ["contact_id"]),
    ("event_id_empty", base(event_id=""), "invalid", ["event_id"]),
    ("event_id_too_long", base(event_id="x" * 257), "invalid", ["event_id"]),
    ("ts_no_offset", base(ts="2026-01-01T00:00:00"), "bad_timestamp", ["ts", "2026-01-01T00:00:00"]),
    ("ts_garbage", base(ts="yesterday"), "bad_timestamp", ["ts", "yesterday"]),
    ("ts_date_only", base(ts="2026-01-01"), "bad_timestamp", ["ts"]),
    ("ts_bad_month", base(ts="2026-13-01T00:00:00Z"), "bad_timestamp", ["month"]),
    ("ts_numeric_string", base(ts="1767225600000"), "bad_timestamp", ["ts"]),
]


@pytest.mark.parametrize("doc,reason,words", [c[1:] for c in INVALID_DOCS], ids=[c[0] for c in INVALID_DOCS])
def test_invalid_documents_are_rejected_with_reason(doc, reason, words):
    """Each invalid object is Rejected with the expected reason, a detail naming the field, and the raw kept."""
    raw = orjson.dumps(doc)
    got = parse_event(raw)
    assert isinstance(got, Rejected), got
    assert got.reason == reason, got.detail
    assert got.reason in REASONS
    for word in words:
        assert word in got.detail, (word, got.detail)
    assert got.raw == raw


def test_missing_several_fields_names_one_of_them():
    """With event_id and type both missing the detail names a missing field, not the whole event."""
    got = parse({"ts": 1, "contact_id": "c"})
    assert isinstance(got, Rejected) and got.reason == "missing_field"
    assert got.detail in ("event_id is required", "type is required")


@pytest.mark.parametrize(
    "raw,reason,word",
    [
        (b"not json", "bad_json", "JSON"),
        (b'{"event_id": "e1",', "bad_json", "JSON"),
        (b"", "bad_json", "JSON"),
        (b'{"event_id":"e1","type":"x","ts":NaN,"contact_id":"c"}', "bad_json", "JSON"),
        (b'{"event_id":"\xff\xfe","type":"x","ts":1,"contact_id":"c"}', "bad_json", "UTF-8"),
        (b"[1, 2]", "not_object", "list"),
        (b"42", "not_object", "int"),
        (b'"a string"', "not_object", "str"),
        (b"null", "not_object", "NoneType"),
    ],
)
def test_unparseable_payloads(raw, reason, word):
    """Bad JSON, non-UTF-8 bytes and non-object JSON are rejected with reason and a telling detail."""
    got = parse_event(raw)
    assert isinstance(got, Rejected)
    assert got.reason == reason
    assert word in got.detail
    assert got.raw == raw


def _padded(size: int) -> bytes:
    head = b'{"event_id":"e1","type":"page_view","ts":1,"contact_id":"c1","properties":{"blob":"'
    tail = b'"}}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def test_exactly_max_size_is_accepted():
    """An event of exactly MAX_EVENT_BYTES is parsed normally."""
    raw = _padded(MAX_EVENT_BYTES)
    assert len(raw) == MAX_EVENT_BYTES
    assert isinstance(parse_event(raw), Event)


def test_oversized_is_rejected_and_raw_truncated():
    """One byte over the limit: 'oversized', detail gives size and limit, raw kept truncated to the limit."""
    raw = _padded(MAX_EVENT_BYTES + 1)
    got = parse_event(raw)
    assert isinstance(got, Rejected)
    assert got.reason == "oversized"
    assert str(MAX_EVENT_BYTES + 1) in got.detail and str(MAX_EVENT_BYTES) in got.detail
    assert got.raw == raw[:MAX_EVENT_BYTES]
    assert len(got.raw) == MAX_EVENT_BYTES


def test_oversized_garbage_is_oversized_not_bad_json():
    """Size is checked before parsing: a huge non-JSON payload is 'oversized'."""
    got = parse_event(b"\xff" * (MAX_EVENT_BYTES * 2))
    assert isinstance(got, Rejected) and got.reason == "oversized"


# ----------------------------------------------------------------- dead letters

def test_dead_letter_record_shape():
    """to_dead_letter gives kind, reason, detail, source and the raw text decoded as-is."""
    raw = orjson.dumps(base(event_id=_DROP, properties={"name": "Zoë ✓"}))
    got = parse_event(raw)
    assert isinstance(got, Rejected)
    dl = got.to_dead_letter("events.jsonl:17")
    assert dl == {
        "kind": "invalid_event",
        "reason": "missing_field",
        "detail": "event_id is required",
        "source": "events.jsonl:17",
        "raw": raw.decode("utf-8"),
    }
    assert "Zoë ✓" in dl["raw"]
    orjson.dumps(dl)  # JSON-ready


def test_dead_letter_keeps_invalid_bytes_visible():
    """Non-UTF-8 bytes survive into the dead letter as \\x escapes (nothing dropped or replaced by '?')."""
    raw = b'{"event_id":"\xff","type":"x"}'
    dl = parse_event(raw).to_dead_letter("k:0")
    assert dl["reason"] == "bad_json"
    assert dl["raw"] == '{"event_id":"\\xff","type":"x"}'
    assert dl["raw"].encode("utf-8").replace(b"\\xff", b"\xff") == raw


# ------------------------------------------------------- schema vs jsonschema

def _corpus() -> list[dict]:
    docs = [base(ts=ts) for ts, _ in VALID_TS]
    docs += [
        base(),
        base(contact_id=_DROP, anonymous_id="a1"),
        base(anonymous_id="a1"),
        base(type="wishlist_add"),
        base(channel="email", session_id="", properties={}, context={"timezone": "UTC"}),
        base(extra_field=[1, 2, 3]),
    ]
    docs += [doc for _, doc, _, _ in INVALID_DOCS]
    docs += [
        {},
        {"event_id": "e"},
        base(channel=""),
        base(channel=3),
        base(session_id=None),
        base(ts=32503680000000),
        base(ts=32503680000001),
        base(ts="x" * 41),
        base(context={"device": "d" * 257}),
        base(type="t" * 65),
        base(ts=1767225600000.0),
        base(ts=1.5e12 + 0.5),
    ]
    return docs


def test_shipped_schema_is_valid_draft_2020_12():
    """The shipped schema is itself a valid Draft 2020-12 schema, versioned."""
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    assert SCHEMA_VERSION == 1 and "v1" in schema["$id"]


@pytest.mark.parametrize("doc", _corpus(), ids=lambda d: orjson.dumps(d).decode()[:70])
def test_schema_agrees_with_reference_validator(doc):
    """jsonschema (Draft 2020-12) accepts a document exactly when parse_event accepts it,
    except that parse_event may additionally reject a bad timestamp string."""
    reference_ok = Draft202012Validator(load_schema()).is_valid(doc)
    got = parse(doc)
    if reference_ok:
        assert isinstance(got, Event) or (got.reason == "bad_timestamp" and isinstance(doc["ts"], str)), got
    else:
        assert isinstance(got, Rejected), doc


@pytest.mark.parametrize("ts", [1767225600000.0, 1.7672256e12])
def test_integral_float_ts_is_epoch_ms(ts):
    """A ts like 1767225600000.0 is an integer to JSON Schema; parse_event accepts it as an int
    (this used to raise TypeError)."""
    doc = base(ts=ts)
    assert Draft202012Validator(load_schema()).is_valid(doc)
    got = parse(doc)
    assert isinstance(got, Event) and got.ts_ms == int(ts) and type(got.ts_ms) is int


@pytest.mark.parametrize("text,ms", [("2038-12-27T09:14:45.101Z", 2177054085101),
                                     ("1970-01-25T10:02:35.658Z", 2109755658),
                                     ("2038-12-27T10:14:45.101999+01:00", 2177054085101)])
def test_millisecond_fractions_are_exact(text, ms):
    """RFC 3339 with a fraction gives exactly that epoch millisecond, truncated, never 1 ms early
    (float math used to lose a millisecond on these)."""
    assert parse_ts(text) == ms
    assert type(parse_ts(text)) is int


def test_ms_exact_over_many_random_times():
    """Epoch ms -> RFC 3339 text -> parse_ts is the identity over 20k seeded random instants (1970-2100)."""
    import random
    from datetime import datetime, timezone

    rng = random.Random(7)
    for _ in range(20_000):
        ms = rng.randrange(0, 4102444800000)
        text = datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
        assert parse_ts(text) == ms, text


def test_empty_object_names_the_first_required_field():
    """With nothing present, the message names event_id (not the identity rule)."""
    got = parse_event(b"{}")
    assert isinstance(got, Rejected)
    assert (got.reason, got.detail) == ("missing_field", "event_id is required")


# ------------------------------------------------- the plain check and the schema

def _boundary_docs() -> list[dict]:
    """Each string field of the schema at and either side of its length bounds, each integer
    bound of ts, ids with control and with valid non-printable characters, wrong types."""
    schema = load_schema()
    docs = []
    fields = [((name,), rule) for name, rule in schema["properties"].items() if rule.get("type") == "string"]
    fields += [(("context", name), rule) for name, rule in schema["properties"]["context"]["properties"].items()]
    for path, rule in fields:
        lo, hi = rule.get("minLength", 0), rule["maxLength"]
        for value in ["x" * n for n in {max(0, lo - 1), lo, hi, hi + 1}] + ["\u2028", "a\x7f", "\x00", "\xa0", "é" * hi, 5, None, [], True]:
            docs.append(base(**{path[0]: value}) if len(path) == 1 else base(context={path[1]: value}))
    ts = schema["properties"]["ts"]
    docs += [base(ts=v) for v in (ts["minimum"] - 1, ts["minimum"], ts["maximum"], ts["maximum"] + 1,
                                  "x" * ts["maxLength"], "x" * (ts["maxLength"] + 1), True, 1.0, [], {})]
    docs += [base(contact_id=_DROP, anonymous_id=v) for v in ("a", "", "\u0085", 1, None)]
    docs += [base(properties=v) for v in ({}, {"k": [1]}, [], None, "x")]
    docs += [base(context=v) for v in ({}, {"extra": 1}, [], None)]
    return docs


@pytest.mark.parametrize("doc", _corpus() + _boundary_docs(), ids=lambda d: orjson.dumps(d).decode()[:70])
def test_plain_check_never_accepts_what_the_schema_rejects(doc):
    """The fast path skips the compiled schema for documents _plainly_valid vouches for: each
    must be valid to the reference validator (it may pass a valid one on to the schema)."""
    if _plainly_valid(doc):
        assert Draft202012Validator(load_schema()).is_valid(doc), doc


def _full_path(raw: bytes) -> Event | Rejected:
    """parse_event without the fast path: every line through the compiled schema."""
    doc = _read_object(raw)
    if isinstance(doc, Rejected):
        return doc
    return _contract_problem(raw, doc) or _to_event(raw, doc)


def test_fast_path_answers_as_the_schema_does_on_mutated_events():
    """On thousands of seeded random mutations (wrong types, bounds, control characters,
    repeated keys, big integers), parse_event gives the same event, or the same reason and
    message, as the full path through the schema."""
    import json
    import random

    rng = random.Random(20261202)
    values = [None, True, 0, -1, 2**70, 1.5, 1e12, "", "x" * 300, "a\u2028b", "c\x1f", "2026-01-01T00:00:00Z",
              "2026-13-01T00:00:00Z", [], {}, {"timezone": 5}, {"device": "d" * 300}, {"n": {"k": [1, 2**70]}}]
    names = ["event_id", "type", "ts", "contact_id", "anonymous_id", "channel", "session_id", "properties",
             "context", "extra"]
    fast = 0
    for i in range(4000):
        doc = base(anonymous_id="a1", channel="email", session_id="s", properties={"value": 3.5},
                   context={"timezone": "UTC"})
        for _ in range(rng.randrange(3)):
            name = rng.choice(names)
            if rng.random() < 0.3:
                doc.pop(name, None)
            else:
                doc[name] = rng.choice(values)
        raw = json.dumps(doc).encode()  # writes 2**70 (orjson will not), and spaces round colons
        if rng.random() < 0.1:  # a key written twice: orjson would keep the last silently
            raw = raw[:-1] + b',"' + rng.choice(names).encode() + b'":"again"}'
        got, want = parse_event(raw), _full_path(raw)
        fast += isinstance(got, Event)
        assert type(got) is type(want) and repr(got) == repr(want), raw
    assert 500 < fast < 3500  # both outcomes exercised
