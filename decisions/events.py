"""The event contract: parse and validate one raw event, or say exactly why not.

The JSON Schema in ``schema/event-v1.json`` is the single source of truth; it is
compiled once with fastjsonschema (about 6 µs per event). An event of the common
shape is vouched for by a plain check of about 1 µs instead (:func:`_plainly_valid`,
which the tests hold to be never more lenient than the schema); every other line is
judged by the schema, which words each reason and message. Parsing never raises for
bad input: it returns a :class:`Rejected` with a reason code and a message naming the
field, which the flow sends to the dead-letter output together with the raw payload.

>>> ev = parse_event(b'{"event_id":"e1","type":"page_view","ts":"2026-01-01T00:00:00Z","contact_id":"c1"}')
>>> ev.contact_id, ev.ts_ms
('c1', 1767225600000)
>>> bad = parse_event(b'{"type":"page_view","ts":1,"contact_id":"c1"}')
>>> bad.reason, bad.detail
('missing_field', 'event_id is required')
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, Iterable

import fastjsonschema
import orjson

from touchline.decisions.profile import usable_amount

SCHEMA_VERSION = 1
#: Largest accepted raw event; bigger payloads are dead-lettered before parsing.
MAX_EVENT_BYTES = 64 * 1024

#: Event types the engine knows by name (metrics label them individually);
#: anything else is accepted, kept and counted under ``other``.
KNOWN_TYPES: frozenset[str] = frozenset(
    """page_view product_view add_to_cart remove_from_cart checkout_start purchase
    form_submit signup login identify email_delivered email_open email_click email_bounce
    sms_delivered sms_reply push_delivered push_open chat_message call_completed
    unsubscribe consent_update""".split()
)

# Dead-letter reason codes (a bounded set: they are Prometheus label values).
REASONS = (
    "oversized",
    "bad_json",
    "not_object",
    "missing_field",
    "missing_identity",
    "wrong_type",
    "bad_timestamp",
    "invalid",
    "future_event",
    "before_floor",
    "late_event",
    "internal_error",
    "duplicate_id",  # event_id already used by another identity (the store's claim, see StateStore.claim_ids)
)


#: Attributes the decisions rely on, by event type. An event without one is still
#: processed (a default applies: no cart value, the default time zone, consent left as
#: it was), and counted in ``touchline_missing_attributes_total`` so a tracking change
#: that drops a field shows up on a dashboard instead of as quietly worse decisions.
EXPECTED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "add_to_cart": ("value",),
    "remove_from_cart": ("value",),
    "purchase": ("value",),
    "consent_update": ("channel", "granted"),
    "signup": ("timezone",),
    "identify": ("timezone",),
}


def missing_attributes(event_type: str, properties: dict[str, Any], context: dict[str, Any],
                       channel: str | None) -> tuple[str, ...]:
    """The expected attributes (:data:`EXPECTED_ATTRIBUTES`) this event lacks or has unusable.

    >>> missing_attributes("purchase", {"value": "12"}, {}, None)
    ('value',)
    >>> missing_attributes("consent_update", {"granted": True}, {}, "sms")
    ()
    """
    expected = EXPECTED_ATTRIBUTES.get(event_type)
    if not expected:
        return ()
    missing = []
    for name in expected:
        if name == "value":
            ok = usable_amount(properties.get("value"))
        elif name == "granted":
            ok = isinstance(properties.get("granted"), bool)
        elif name == "channel":
            ok = isinstance(properties.get("channel") or channel, str)
        else:  # timezone
            ok = isinstance(context.get("timezone"), str) and bool(context["timezone"])
        if not ok:
            missing.append(name)
    return tuple(missing)


def check_known_types(value: list[str]) -> list[str]:
    """A settings validator: every name is a known event type (a typo is an error, not a
    goal or conversion that never happens).

    >>> check_known_types(["purchase"])
    ['purchase']
    """
    unknown = sorted(set(value) - KNOWN_TYPES)
    if unknown:
        raise ValueError(f"unknown event type(s) {unknown}")
    return value


def load_schema() -> dict[str, Any]:
    """Return the shipped event JSON Schema (version :data:`SCHEMA_VERSION`)."""
    text = resources.files("touchline.decisions").joinpath("schema/event-v1.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema


#: The schema's pattern for ids: no control characters. Ids go into keys, set members and the
#: decision id's hash input, all joined with the unit separator U+001F; an id holding one could
#: collide with another (see the README's Redis key layout), so the contract keeps them out.
NO_CONTROLS = "^[^\\u0000-\\u001f\\u007f]*$"


def _python_patterns(node: Any) -> Any:
    """The schema with each pattern's ``$`` as Python's ``\\Z``: JSON Schema patterns are
    ECMA-262, whose ``$`` is the end of the text, but Python's also matches before a final
    newline (so ``"c1\\n"`` would pass a no-control-characters pattern)."""
    if isinstance(node, dict):
        return {k: (v[:-1] + "\\Z" if k == "pattern" and isinstance(v, str) and v.endswith("$")
                    else _python_patterns(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_python_patterns(v) for v in node]
    return node


_validate = fastjsonschema.compile(_python_patterns(load_schema()))
_REQUIRED: tuple[str, ...] = tuple(load_schema()["required"])


@dataclass(slots=True)
class Event:
    """A validated event. ``ts_ms`` is event time in epoch milliseconds (UTC)."""

    event_id: str
    type: str
    ts_ms: int
    contact_id: str | None = None
    anonymous_id: str | None = None
    channel: str | None = None
    session_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    #: where it was read (``file:line``, ``topic[partition]:offset``), for a dead letter made
    #: of it later; not part of the event
    source: str | None = field(default=None, compare=False)
    #: the line as read (dead letters quote it whole; held events are kept as it)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def identity(self) -> str:
        """The id the event arrived under: the contact if known, else the anonymous id."""
        return self.contact_id or self.anonymous_id  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """The event in contract form (ts as epoch ms), for re-publishing or tests."""
        out: dict[str, Any] = {"event_id": self.event_id, "type": self.type, "ts": self.ts_ms}
        for name in ("contact_id", "anonymous_id", "channel", "session_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.properties:
            out["properties"] = self.properties
        if self.context:
            out["context"] = self.context
        return out

    def to_dead_letter(self, reason: str, detail: str) -> dict[str, Any]:
        """A dead letter of a valid event the engine refused later (late, a reused id, a bug):
        where it was read, and the line as read (an event made in code: its contract form).

        >>> Event("e1", "page_view", 5, "c1", source="in.jsonl:3", raw=b'{"x":1}').to_dead_letter("late_event", "old")
        {'kind': 'invalid_event', 'reason': 'late_event', 'detail': 'old', 'source': 'in.jsonl:3', 'raw': '{"x":1}'}
        """
        raw = self.raw
        if raw is None:
            try:
                raw = orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)
            except orjson.JSONEncodeError:  # nested deeper than orjson writes
                raw = repr(self.to_dict())[:MAX_EVENT_BYTES].encode()
        return Rejected(reason, detail, raw).to_dead_letter(self.source or "engine")


@dataclass(slots=True, frozen=True)
class Rejected:
    """An invalid event: a reason code, a human message, and the raw payload kept whole."""

    reason: str
    detail: str
    raw: bytes

    def to_dead_letter(self, source: str) -> dict[str, Any]:
        """The dead-letter record: why, where from, and the payload (decoded losslessly)."""
        return {
            "kind": "invalid_event",
            "reason": self.reason,
            "detail": self.detail,
            "source": source,
            "raw": self.raw.decode("utf-8", errors="backslashreplace"),
        }


def _members(value: Any) -> int:
    """Members of every object in a parsed JSON object or array, nested ones included."""
    items: Iterable[Any]
    if type(value) is dict:
        count, items = len(value), value.values()
    else:
        count, items = 0, value
    for item in items:
        kind = type(item)
        if kind is dict or kind is list:
            count += _members(item)
    return count


def _may_repeat_keys(raw: bytes, doc: dict[str, Any]) -> bool:
    """False when ``raw``, a JSON text orjson parsed into ``doc``, certainly has no repeated
    key in any object; True when it might (then :func:`_duplicate_key` decides).

    In valid JSON every ``"`` inside a string is escaped, so each key ends with a ``"`` that
    is followed, after optional whitespace, by ``:``, and a value's closing ``"`` never is.
    With the whitespace deleted, ``":`` therefore occurs once per key written, plus once per
    string that starts with a colon (``":80"``) or has an escaped quote before one
    (``"a\\":b"``), never fewer. orjson keeps the last of repeated keys, so the parsed objects
    hold fewer members than keys were written exactly when a key repeats: equal counts prove
    there is none, and only unequal ones pay for the exact check. About 1 µs a typical
    event (the regex ``"\\s*:`` counts the same but costs twice that).
    """
    try:
        members = _members(doc)
    except RecursionError:  # orjson reads 1024 levels, Python recurses about 1000
        return True
    return raw.translate(None, b" \t\n\r").count(b'":') != members


class _Repeated(dict[str, Any]):
    """An object read by :func:`_duplicate_key` that had a key more than once."""

    key = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            break
        seen.add(key)
    repeated = _Repeated(obj)
    repeated.key = key
    return repeated


def _duplicate_key(raw: bytes) -> str | None:
    """Which key ``raw`` (valid JSON) repeats first, and where; None if none does.

    >>> _duplicate_key(b'{"a":1,"p":{"x":[{"k":1}, {"k":2,"k":3}]}}')
    'duplicate key "k" in p.x[1]'
    """
    doc = _read_keeping_repeats(raw)
    return doc if isinstance(doc, str) else _first_repeat(doc)


def _read_keeping_repeats(raw: bytes) -> Any:
    """``raw`` parsed with each object that repeats a key marked as :class:`_Repeated`, or a
    message when it cannot be (the json module nests less deeply than orjson)."""
    try:
        return json.loads(raw, object_pairs_hook=_pairs)
    except RecursionError:  # orjson reads 1024 levels, the json module fewer
        return "nested too deeply to check for duplicate keys"
    except ValueError as exc:  # never seen (orjson is the stricter parser), but never a traceback
        return f"could not be checked for duplicate keys: {exc}"


def _first_repeat(doc: Any) -> str | None:
    """The first :class:`_Repeated` object in document order, named with its path."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:  # depth first, in document order
        item, path = stack.pop()
        if isinstance(item, _Repeated):
            where = f" in {path}" if len(path) <= 200 else f" in ...{path[-200:]}"
            return f"duplicate key {orjson.dumps(item.key).decode()}" + (where if path else "")
        stack.extend(reversed(_children(item, path)))
    return None


def _children(item: Any, path: str) -> list[tuple[Any, str]]:
    """The members of an object or the items of an array, each with its path.

    >>> _children({"a": 1}, "p"), _children([True], "p"), _children(3, "p")
    ([(1, 'p.a')], [(True, 'p[0]')], [])
    """
    if isinstance(item, dict):
        return [(v, f"{path}.{k}" if path else k) for k, v in item.items()]
    if isinstance(item, list):
        return [(v, f"{path}[{i}]") for i, v in enumerate(item)]
    return []


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_ts(value: str | int | float) -> int:
    """Event time as epoch ms from RFC 3339 (offset required) or epoch ms.

    >>> parse_ts("2026-01-01T01:00:00+01:00"), parse_ts(1767225600000)
    (1767225600000, 1767225600000)
    """
    if isinstance(value, float) and value.is_integer():  # 1.7e12 is an integer to JSON Schema
        value = int(value)
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError(f"ts {value!r} is not RFC 3339 with a time zone offset")
    text = value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T").replace(" ", "T")
    frac = re.search(r"\.(\d+)", text)
    if frac and len(frac.group(1)) > 6:  # fromisoformat takes at most microseconds
        text = text.replace(frac.group(0), "." + frac.group(1)[:6])
    return (datetime.fromisoformat(text) - _EPOCH) // _ONE_MS  # integer math: no float rounding


def _describe(exc: fastjsonschema.JsonSchemaValueException) -> tuple[str, str]:
    """Turn a schema violation into (reason code, message naming the field)."""
    name = _field_name(exc)
    if exc.rule == "required":
        return "missing_field", _missing(exc, name)
    if exc.rule == "anyOf" and name == "event":
        return "missing_identity", "one of contact_id or anonymous_id is required"
    if exc.rule in ("type", "oneOf", "anyOf"):
        return "wrong_type", _wrong_type(exc, name)
    return _bad_value(exc, name)


def _field_name(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """The dotted path of the field the violation is about, ``event`` for the whole event."""
    return ".".join(str(p) for p in (exc.path or []) if p != "data") or "event"


def _missing(exc: fastjsonschema.JsonSchemaValueException, name: str) -> str:
    """The message for a ``required`` rule: the first field it names that is absent."""
    missing = [k for k in exc.rule_definition if k not in (exc.value or {})]
    return f"{missing[0] if missing else name} is required"


def _wrong_type(exc: fastjsonschema.JsonSchemaValueException, name: str) -> str:
    """The message for a field of the wrong JSON type, naming the type it has."""
    got = type(exc.value).__name__
    if name == "ts":
        return f"ts must be an RFC 3339 string or epoch milliseconds, got {got}"
    return f"{name} has the wrong type ({got}): {exc.message.replace('data.', '')}"


def _bad_value(exc: fastjsonschema.JsonSchemaValueException, name: str) -> tuple[str, str]:
    """(reason, message) for a field of the right type whose value breaks a rule (length,
    range, pattern): a ts is a bad timestamp, anything else invalid."""
    if exc.rule == "pattern" and exc.rule_definition == NO_CONTROLS.replace("$", "\\Z"):
        return "invalid", f"{name} must not contain control characters (U+0000-U+001F, U+007F)"
    message = exc.message.replace("data.", "")
    if name == "ts":
        return "bad_timestamp", message
    return "invalid", message if message.startswith(name) else f"{name}: {message}"


_ABSENT: Any = object()
#: The schema's largest epoch-ms ``ts`` (year 3000) and the context fields whose length it bounds
#: (tests/test_contract.py holds :func:`_plainly_valid` to the schema at each bound).
_MAX_TS_MS = 32503680000000
_CONTEXT_LIMITS = (("timezone", 64), ("locale", 64), ("device", 256))


def _plainly_valid(doc: dict[str, Any]) -> bool:
    """True only for an event the schema certainly accepts, told in about 1 µs: the common
    shape (an int or string ts, printable ids, every field of its type and length). Anything
    else, valid or not, answers False and goes through the compiled schema (about 6 µs, and
    needed for the exact message anyway). Never True where the schema says no:
    ``test_contract`` holds it to the reference validator.

    >>> _plainly_valid({"event_id": "e1", "type": "t", "ts": 0, "anonymous_id": "a"})
    True
    >>> _plainly_valid({"event_id": "e1", "type": "t", "ts": 0})  # no identity
    False
    """
    return _plain_required(doc) and _plain_identity(doc) and _plain_optional(doc)


def _plain_required(doc: dict[str, Any]) -> bool:
    ts, kind = doc.get("ts"), doc.get("type")
    if type(ts) is int:
        if not 0 <= ts <= _MAX_TS_MS:
            return False
    elif type(ts) is not str or not 0 < len(ts) <= 40:
        return False
    return type(kind) is str and 0 < len(kind) <= 64 and _plain_id(doc.get("event_id"))


def _plain_id(value: Any) -> bool:
    """An id the schema accepts: printable text has no control characters (an id that is
    valid but not printable, say with U+2028, is left to the schema)."""
    return type(value) is str and 0 < len(value) <= 256 and value.isprintable()


def _plain_identity(doc: dict[str, Any]) -> bool:
    contact, anonymous = doc.get("contact_id", _ABSENT), doc.get("anonymous_id", _ABSENT)
    if contact is _ABSENT:
        return anonymous is not _ABSENT and _plain_id(anonymous)
    return _plain_id(contact) and (anonymous is _ABSENT or _plain_id(anonymous))


def _plain_optional(doc: dict[str, Any]) -> bool:
    channel, session = doc.get("channel", _ABSENT), doc.get("session_id", _ABSENT)
    if channel is not _ABSENT and (type(channel) is not str or not 0 < len(channel) <= 64):
        return False
    if session is not _ABSENT and (type(session) is not str or len(session) > 256):
        return False
    properties = doc.get("properties", _ABSENT)
    return (properties is _ABSENT or type(properties) is dict) and _plain_context(doc.get("context", _ABSENT))


def _plain_context(context: Any) -> bool:
    if context is _ABSENT:
        return True
    if type(context) is not dict:
        return False
    for name, limit in _CONTEXT_LIMITS:
        value = context.get(name, _ABSENT)
        if value is not _ABSENT and (type(value) is not str or len(value) > limit):
            return False
    return True


def _read_object(raw: bytes) -> dict[str, Any] | Rejected:
    """The JSON object ``raw`` holds, or why it holds none."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected("bad_json", f"not valid JSON: {exc}", raw)
    if not isinstance(doc, dict):
        return Rejected("not_object", f"event must be a JSON object, got {type(doc).__name__}", raw)
    return doc


def _contract_problem(raw: bytes, doc: dict[str, Any]) -> Rejected | None:
    """The first way ``doc`` (read from ``raw``) breaks the contract, in a fixed order: a
    repeated key, a missing required field, then the schema's first complaint."""
    if _may_repeat_keys(raw, doc):  # orjson silently keeps the last of repeated keys
        problem = _duplicate_key(raw)
        if problem is not None:
            return Rejected("invalid", problem, raw)
    for name in _REQUIRED:  # name the first missing field before any other complaint
        if name not in doc:
            return Rejected("missing_field", f"{name} is required", raw)
    try:
        _validate(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        return Rejected(*_describe(exc), raw)
    return None


def _to_event(raw: bytes, doc: dict[str, Any]) -> Event | Rejected:
    """The event of a document that meets the schema (its ts may still not be a real time)."""
    try:
        ts_ms = parse_ts(doc["ts"])
    except ValueError as exc:
        return Rejected("bad_timestamp", str(exc), raw)
    return Event(
        event_id=doc["event_id"],
        type=doc["type"],
        ts_ms=ts_ms,
        contact_id=doc.get("contact_id"),
        anonymous_id=doc.get("anonymous_id"),
        channel=doc.get("channel"),
        session_id=doc.get("session_id"),
        properties=doc.get("properties") or {},
        context=doc.get("context") or {},
        raw=raw,
    )


def parse_event(raw: bytes) -> Event | Rejected:
    """Parse one raw event; never raises for bad input.

    An event of the common shape (:func:`_plainly_valid`, no repeated key) skips the compiled
    schema; every other line is judged by it, so each reason and message is the schema's.

    >>> parse_event(b'{"event_id":"e","type":"x","ts":"yesterday","anonymous_id":"a"}').reason
    'bad_timestamp'
    >>> parse_event(b'not json').reason
    'bad_json'
    >>> parse_event(b'{"event_id":"e","type":"x","ts":1,"anonymous_id":"a","event_id":"f"}').detail
    'duplicate key "event_id"'
    """
    if len(raw) > MAX_EVENT_BYTES:
        return Rejected("oversized", f"event is {len(raw)} bytes, limit {MAX_EVENT_BYTES}", raw[:MAX_EVENT_BYTES])
    doc = _read_object(raw)
    if isinstance(doc, Rejected):
        return doc
    if not _plainly_valid(doc) or _may_repeat_keys(raw, doc):
        problem = _contract_problem(raw, doc)
        if problem is not None:
            return problem
    return _to_event(raw, doc)
