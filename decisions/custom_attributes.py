"""Custom attributes: facts a marketer defines in configuration, kept per contact.

Two kinds (settings ``[attributes.NAME]`` and ``[traits]``):

* a **windowed aggregate** over one event type, with a filter on its properties:
  ``count`` of events, ``sum`` of a numeric property, ``distinct`` values of a property, or
  the ``last`` value of a property, over a window such as ``7d``;
* a **trait**: the newest value of a property of one event type, kept without a window
  (``tier = "identify.tier"``).

Per contact an aggregate keeps one number (or a few values) per time bucket, never the
events: a window of whole days has daily buckets, any other window hourly ones, so a 90-day
sum costs at most 90 numbers. The window is the current bucket (UTC) and the ones before
it: ``7d`` is today and the 6 days before. State is in ``profile.tallies``
(:class:`~touchline.decisions.feature_states.Tallies`: merged on identity stitching, stored
in the blob); a state made under another definition of the attribute starts afresh.

>>> attrs = CustomAttributes({"shoe_views_7d": AttributeSpec(event="product_view",
...     where={"category": "shoes"}, window="7d")}, {"tier": TraitSpec.parse("identify.tier")})
>>> from touchline.decisions.profile import Profile
>>> p = Profile("c1", known=True)
>>> for i, cat in enumerate(["shoes", "hats", "shoes"]):
...     attrs.apply(p, "product_view", i * DAY_MS, {"category": cat})
>>> attrs.apply(p, "identify", 3 * DAY_MS, {"tier": "gold"})
>>> attribute_values(p, 3 * DAY_MS, attrs)
{'shoe_views_7d': 2, 'tier': 'gold'}
>>> attribute_values(p, 8 * DAY_MS, attrs)  # day 0 left the window, day 2 is still in it
{'shoe_views_7d': 1, 'tier': 'gold'}
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Literal, Mapping

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from touchline.decisions.errors import did_you_mean
from touchline.decisions.feature_states import MAX_DISTINCT, Tally, latest_only
from touchline.decisions.journey_runtime import all_match
from touchline.decisions.journeys import EventConditions, parse_duration
from touchline.decisions.profile import DAY_MS, HOUR_MS, Profile

#: A window of whole days may reach this far back (a bucket a day).
MAX_WINDOW_DAYS = 366
#: A window in hours (not whole days) may reach this far back (a bucket an hour).
MAX_WINDOW_HOURS = 168
#: Text values are kept up to this many characters.
MAX_TEXT = 200
#: A number a sum adds is below this in size (a bigger one is a tracking error, skipped).
MAX_AMOUNT = 1e12
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
Aggregate = Literal["count", "sum", "distinct", "last"]


class AttributeSpec(BaseModel):
    """One windowed aggregate (settings ``[attributes.NAME]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    event: str = Field(description="the event type it aggregates (built in, or in events.custom_types)")
    where: EventConditions = Field(default_factory=dict, description="event property -> condition, as in journeys")
    aggregate: Aggregate = Field(default="count", description="count, sum, distinct or last")
    prop: str | None = Field(default=None, alias="property", description="the event property sum, distinct and "
                             "last read")
    window: str = Field(description="e.g. 7d or 90d (whole days), or 12h")

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        ms = parse_duration(value)
        if ms <= 0 or ms % HOUR_MS:
            raise ValueError(f"window {value!r}: use whole hours or days (e.g. 12h, 7d)")
        if ms % DAY_MS == 0 and ms > MAX_WINDOW_DAYS * DAY_MS:
            raise ValueError(f"window {value!r} is longer than the {MAX_WINDOW_DAYS} days kept per contact")
        if ms % DAY_MS and ms > MAX_WINDOW_HOURS * HOUR_MS:
            raise ValueError(f"window {value!r}: an hourly window reaches at most {MAX_WINDOW_HOURS}h; "
                             "use whole days beyond that (e.g. 8d)")
        return value

    @model_validator(mode="after")
    def _property(self) -> AttributeSpec:
        if self.aggregate != "count" and not self.prop:
            raise ValueError(f"aggregate {self.aggregate} needs property = the event property it reads")
        if self.aggregate == "count" and self.prop:
            raise ValueError(f"count counts events and reads no property; to count only events with "
                             f"{self.prop!r}, use where = {{ {self.prop} = {{ exists = true }} }}")
        return self

    @property
    def window_ms(self) -> int:
        return parse_duration(self.window)

    @property
    def bucket_ms(self) -> int:
        """A day for windows of whole days, else an hour."""
        return DAY_MS if self.window_ms % DAY_MS == 0 else HOUR_MS

    @property
    def buckets(self) -> int:
        return self.window_ms // self.bucket_ms

    @property
    def version(self) -> str:
        """What the kept state means: a changed event, filter, aggregate, property or bucket starts afresh
        (a longer or shorter window of the same buckets keeps it)."""
        return _fingerprint([self.event, self.where, self.aggregate, self.prop, self.bucket_ms])


class TraitSpec(BaseModel):
    """One trait (settings ``[traits] NAME = "event.property"``): the newest value, no window."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    event: str
    prop: str = Field(alias="property")

    @classmethod
    def parse(cls, text: Any) -> TraitSpec:
        """``identify.tier`` -> event ``identify``, property ``tier``.

        >>> TraitSpec.parse("identify.tier").prop
        'tier'
        >>> TraitSpec.parse("tier")
        Traceback (most recent call last):
        ...
        ValueError: 'tier' is not EVENT.PROPERTY (e.g. identify.tier)
        """
        event, dot, prop = str(text).partition(".") if isinstance(text, str) else ("", "", "")
        if not (event and dot and prop):
            raise ValueError(f"{text!r} is not EVENT.PROPERTY (e.g. identify.tier)")
        return cls.model_validate({"event": event, "property": prop})

    @property
    def version(self) -> str:
        return _fingerprint([self.event, self.prop])


def _fingerprint(parts: list[Any]) -> str:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=4).hexdigest()


def scalar(value: Any) -> str | float | bool | None:
    """A property value an attribute can keep: text (cut to :data:`MAX_TEXT`), a finite number or
    a boolean; None for anything else (objects, lists, NaN).

    >>> scalar("gold"), scalar(3), scalar(True), scalar(float("nan")), scalar({"a": 1})
    ('gold', 3.0, True, None, None)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    return value[:MAX_TEXT] if isinstance(value, str) else None


class CustomAttributes:
    """The configured attributes and traits: how an event updates them, and their values."""

    def __init__(self, attributes: Mapping[str, AttributeSpec], traits: Mapping[str, TraitSpec]) -> None:
        self.attributes = dict(attributes)
        self.traits = dict(traits)
        self.names = (*self.attributes, *self.traits)
        #: event type -> the attributes and traits it updates
        self.by_event: dict[str, list[tuple[str, AttributeSpec | TraitSpec]]] = {}
        specs: list[tuple[str, AttributeSpec | TraitSpec]] = [*self.attributes.items(), *self.traits.items()]
        for name, spec in specs:
            self.by_event.setdefault(spec.event, []).append((name, spec))

    def __bool__(self) -> bool:
        return bool(self.names)

    def apply(self, profile: Profile, event_type: str, ts_ms: int, properties: dict[str, Any]) -> None:
        """Update the tallies an applied event counts in (call once per new event, after
        :func:`~touchline.decisions.profile.apply_event`); drop those of attributes no longer configured."""
        tallies = profile.tallies
        for stale in [n for n in tallies if n not in self.attributes and n not in self.traits]:
            del tallies[stale]
        for name, spec in self.by_event.get(event_type, ()):
            if isinstance(spec, TraitSpec):
                _keep_last(_tally(tallies, name, "trait", spec.version), ts_ms, properties.get(spec.prop))
            elif all_match(properties, spec.where):
                _count(_tally(tallies, name, spec.aggregate, spec.version), spec, ts_ms, profile.last_ts, properties)

    def values(self, profile: Profile, now_ms: int) -> dict[str, Any]:
        """Every attribute's and trait's value as of ``now_ms`` (pure: the profile is not changed).
        Counts, sums and distinct counts of nothing are 0; a last value or trait never seen is None."""
        out: dict[str, Any] = {}
        for name, spec in self.attributes.items():
            out[name] = _value(spec, _current(profile, name, spec.version), now_ms)
        for name, trait in self.traits.items():
            tally = _current(profile, name, trait.version)
            out[name] = tally.entries[0][1] if tally and tally.entries and tally.entries[0][0] <= now_ms else None
        return out

    def features(self, profile: Profile, now_ms: int) -> dict[str, float]:
        """The values as model features: counts, sums and distinct counts log-scaled (``log1p``, like the
        built-in counts); a number as it is, true/false as 1/0; text as an indicator ``NAME=VALUE`` of 1
        (a model lists ``tier=gold``). A value never seen gives no feature (the model reads 0).

        >>> attrs = CustomAttributes({}, {"tier": TraitSpec.parse("identify.tier")})
        >>> from touchline.decisions.profile import Profile
        >>> p = Profile("c1")
        >>> attrs.apply(p, "identify", 5, {"tier": "gold"})
        >>> attrs.features(p, 5)
        {'tier=gold': 1.0}
        """
        out: dict[str, float] = {}
        for name, value in self.values(profile, now_ms).items():
            if name in self.attributes and self.attributes[name].aggregate != "last":
                out[name] = math.log1p(max(0.0, float(value)))
            elif isinstance(value, bool):
                out[name] = 1.0 if value else 0.0
            elif isinstance(value, float):
                out[name] = value
            elif isinstance(value, str):
                out[f"{name}={value}"] = 1.0
        return out


def attribute_values(profile: Profile, as_of_ms: int, attributes: CustomAttributes) -> dict[str, Any]:
    """A profile's custom attribute and trait values as of ``as_of_ms`` (what the HTTP API shows).
    Pure: reads the kept buckets, changes nothing; a time before the profile's newest one sees only
    what is still kept (buckets older than a window are gone)."""
    return attributes.values(profile, as_of_ms)


def _tally(tallies: dict[str, Tally], name: str, kind: str, version: str) -> Tally:
    """The attribute's tally; a fresh one when there is none or it was made under another definition."""
    tally = tallies.get(name)
    if tally is None or tally.version != version or tally.kind != kind:
        tally = tallies[name] = Tally(kind, version)
    return tally


def _current(profile: Profile, name: str, version: str) -> Tally | None:
    tally = profile.tallies.get(name)
    return tally if tally is not None and tally.version == version else None


def _keep_last(tally: Tally, ts_ms: int, raw: Any) -> None:
    """The newest usable value wins (the first of equal times stays: order-independent replays)."""
    value = scalar(raw)
    if value is not None and (not tally.entries or ts_ms > tally.entries[0][0]):
        tally.entries = [[ts_ms, value]]


def _count(tally: Tally, spec: AttributeSpec, ts_ms: int, now_ms: int, properties: dict[str, Any]) -> None:
    """Add one event to its bucket (older than the window: nothing) and drop buckets that left the window."""
    if spec.aggregate == "last":
        if ts_ms > now_ms - spec.window_ms:
            _keep_last(tally, ts_ms, properties.get(spec.prop or ""))
        return
    value = _contribution(spec, properties)
    first = now_ms // spec.bucket_ms - spec.buckets + 1
    bucket = ts_ms // spec.bucket_ms
    if value is not None and bucket >= first:
        _add(tally, spec.aggregate, bucket, value)
    if tally.entries and tally.entries[0][0] < first:
        tally.entries = [e for e in tally.entries if e[0] >= first]


def _contribution(spec: AttributeSpec, properties: dict[str, Any]) -> Any:
    """What one event adds: 1 (count), its number (sum), its value (distinct); None: nothing."""
    if spec.aggregate == "count":
        return 1
    value = scalar(properties.get(spec.prop or ""))
    if spec.aggregate == "sum":
        return value if isinstance(value, float) and abs(value) < MAX_AMOUNT else None
    return None if value is None else _digest(value)


def _digest(value: str | float | bool) -> str:
    """What a distinct value is kept as: 16 hex digits of its hash (the count needs only its identity,
    and long text costs no more).

    >>> _digest("A") == _digest("A") != _digest(1.0), len(_digest("x" * 200))
    (True, 16)
    """
    return hashlib.blake2b(orjson.dumps(value), digest_size=8).hexdigest()


def _add(tally: Tally, kind: str, bucket: int, value: Any) -> None:
    """``value`` into ``bucket`` (usually the newest; a late event finds or makes its own, in order)."""
    entries = tally.entries
    at = len(entries)
    while at and entries[at - 1][0] > bucket:
        at -= 1
    if at and entries[at - 1][0] == bucket:
        entry = entries[at - 1]
        if kind != "distinct":
            entry[1] += value
        elif value not in entry[1]:
            entry[1].append(value)
    else:
        entries.insert(at, [bucket, [value] if kind == "distinct" else value])
    if kind == "distinct":
        tally.entries = latest_only(entries)


def _value(spec: AttributeSpec, tally: Tally | None, now_ms: int) -> Any:
    """An aggregate as of ``now_ms``: the buckets from the window's first to the current one."""
    if spec.aggregate == "last":
        return _last_value(spec, tally, now_ms)
    current = now_ms // spec.bucket_ms
    inside = [v for b, v in (tally.entries if tally else ()) if current - spec.buckets < b <= current]
    if spec.aggregate == "distinct":
        return min(MAX_DISTINCT, sum(len(values) for values in inside))  # each value is in one bucket
    total = sum(inside)
    return round(total, 6) if spec.aggregate == "sum" else total


def _last_value(spec: AttributeSpec, tally: Tally | None, now_ms: int) -> Any:
    """The newest value if it was seen within the window before ``now_ms``, else None."""
    if tally and tally.entries and now_ms - spec.window_ms < tally.entries[0][0] <= now_ms:
        return tally.entries[0][1]
    return None


def check_definitions(attributes: Mapping[str, AttributeSpec], traits: Mapping[str, TraitSpec],
                      event_types: frozenset[str], reserved: frozenset[str], retention_days: float) -> list[str]:
    """Problems across keys, each naming its key: names, event types (a near miss is named),
    windows longer than a contact is kept.

    >>> for line in check_definitions({"Views": AttributeSpec(event="product_veiw", window="7d")}, {},
    ...                               frozenset({"product_view"}), frozenset(), 730):
    ...     print(line)
    attributes.Views: a name is lowercase letters, digits and _, starting with a letter
    attributes.Views.event: unknown event type 'product_veiw' (did you mean 'product_view'?; declare your own \
in events.custom_types)
    """
    problems: list[str] = []
    for section, specs in (("attributes", attributes), ("traits", traits)):
        for name, spec in specs.items():
            problems += _name_problems(f"{section}.{name}", name, reserved)
            if spec.event not in event_types:
                hint = did_you_mean(spec.event, event_types)
                problems.append(f"{section}.{name}{'.event' if section == 'attributes' else ''}: unknown event "
                                f"type {spec.event!r} ({hint + '; ' if hint else ''}declare your own in "
                                "events.custom_types)")
    for name in sorted(set(attributes) & set(traits)):
        problems.append(f"traits.{name}: attributes.{name} has this name already")
    for name, spec in attributes.items():
        if spec.window_ms > retention_days * DAY_MS:
            problems.append(f"attributes.{name}.window: {spec.window} is longer than state.retention_days "
                            f"({retention_days:g}): a contact is forgotten before the window is full")
    return problems


def _name_problems(key: str, name: str, reserved: frozenset[str]) -> list[str]:
    if not NAME.match(name):
        return [f"{key}: a name is lowercase letters, digits and _, starting with a letter"]
    if name in reserved:
        return [f"{key}: {name!r} is a built-in profile field or model feature; choose another name"]
    return []



def declared_features(attributes: Any, traits: Any) -> tuple[frozenset[str], frozenset[str]]:
    """From the raw settings (before they are checked): the feature names custom attributes give,
    and those of them whose values are text (last values and traits: ``NAME=VALUE``).

    >>> names, text = declared_features({"views": {"aggregate": "count"}, "cat": {"aggregate": "last"}},
    ...                                 {"tier": "identify.tier"})
    >>> sorted(names), sorted(text)
    (['cat', 'tier', 'views'], ['cat', 'tier'])
    """
    attributes = attributes if isinstance(attributes, dict) else {}
    traits = traits if isinstance(traits, dict) else {}
    names = frozenset(str(n) for n in (*attributes, *traits))
    last = {str(n) for n, spec in attributes.items() if isinstance(spec, dict) and spec.get("aggregate") == "last"}
    return names, frozenset({*last, *map(str, traits)})
