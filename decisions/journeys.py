"""Journey definitions: the YAML format marketers write, validated before anything runs.

A journey is a small state machine per contact: an entry criterion, ordered steps
(send, wait, wait until a time of day, wait for an event, branch, hand to sales,
suppress a channel, exit),
exit criteria, a re-entry rule, a priority and caps. This module is the format and its
checks only (no I/O: text in, a :class:`Journey` or a :class:`JourneyError` out); the
reference is ``docs/journeys.md`` and the shipped examples are ``examples/journeys/``.

>>> j = parse_journey('''
... journey: welcome
... entry: {event: signup}
... steps:
...   - send: {channel: email, template: welcome/1}
...   - wait: 2d
...   - send: {channel: email, template: welcome/benefits}
... ''', "welcome.yaml")
>>> [s.id for s in j.steps], j.steps[1].wait_ms
(['step-1', 'step-2', 'step-3'], 172800000)
>>> try:
...     parse_journey("journey: x\\nentry: {event: signup}\\nsteps:\\n  - wait: 3 parsecs\\n", "x.yaml")
... except JourneyError as exc:
...     print(exc)
x.yaml:4: steps[0].wait: bad duration '3 parsecs': use a number and s, m, h, d or w (e.g. 30m, 2h, 5d, 1.5h)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo,
    field_validator, model_validator,
)

from touchline.decisions.errors import TouchlineError, did_you_mean
from touchline.decisions.events import KNOWN_TYPES
from touchline.decisions.journey_errors import YamlPath, problem_lines
from touchline.decisions.yaml_errors import describe_yaml_error
from touchline.decisions.policy import ALL_CHANNELS, _check_channels

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: Comparison operators of a condition, e.g. ``{value: {gte: 20}}``.
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "contains")
#: Profile facts a segment, branch or rule can test (the engine computes each).
PROFILE_FIELDS = {
    "known": "the contact is identified (not only an anonymous visitor)",
    "events_total": "events seen for the contact",
    "purchases_total": "purchases ever",
    "monetary_total": "value of all purchases",
    "cart_value": "value of the open cart (0 if none)",
    "days_since_last_purchase": "days since the last purchase (absent if none)",
    "days_since_last_activity": "days since the last event the person did themselves",
    "days_since_first_seen": "days since the contact's first event",
    "timezone": "the contact's IANA time zone, if known",
    "locale": "the contact's locale, if known",
    "lead_score": "the lead model's latest score (0..1)",
    "churn_score": "the churn model's latest score (0..1)",
    "email_opens_30d": "email opens in the last 30 days",
    "consent_email": "the contact may be emailed", "consent_sms": "may get SMS", "consent_push": "may get push",
}
#: Where exits come from; ``goal`` counts as a conversion.
EXIT_REASONS = ("goal", "unsubscribed", "preempted", "completed", "exit_step", "timeout", "suppressed", "removed",
                "unknown_version")


@dataclass(frozen=True)
class Vocabulary:
    """What a journey may name beyond the built-ins: the event types and custom attributes the
    settings declare (``events.custom_types``, ``[attributes.NAME]``, ``[traits]``). Given to
    :func:`parse_journey`; a definition the engine stored is read without it (a name it no
    longer knows tests false instead of making the contacts inside unreadable)."""

    event_types: frozenset[str] = frozenset()
    profile_fields: frozenset[str] = frozenset()


def _vocabulary(info: ValidationInfo | None) -> Vocabulary | None:
    """The validation's vocabulary; None: anything goes (a stored definition)."""
    context = (info.context if info is not None else None) or {}
    return None if context.get("stored") else context.get("vocabulary") or Vocabulary()


class JourneyError(TouchlineError, ValueError):
    """A journey file that cannot run; the message names the file, the line and the field."""


#: The accepted forms of a duration, for messages.
DURATION_FORMS = "a number and s, m, h, d or w (e.g. 30m, 2h, 5d, 1.5h)"


def parse_duration(text: Any) -> int:
    """A duration such as ``30m``, ``24h``, ``7d`` or ``2w``, in milliseconds. A bare number
    is refused: ``wait: 5`` could mean five of any unit, and seconds is rarely what was meant.

    >>> parse_duration("30m"), parse_duration("1.5h")
    (1800000, 5400000)
    >>> parse_duration(5)
    Traceback (most recent call last):
    ...
    ValueError: bad duration 5: a number needs a unit (5s, 5m, 5h, 5d or 5w?); a duration is a number and s, m, h, d or w (e.g. 30m, 2h, 5d, 1.5h)
    """
    if _is_number(text):
        raise ValueError(f"bad duration {text}: a number needs a unit "
                         f"({', '.join(f'{text}{u}' for u in 'smhd')} or {text}w?); a duration is {DURATION_FORMS}")
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"bad duration {text!r}: use {DURATION_FORMS}")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _valid_duration(value: Any, info: ValidationInfo) -> Any:
    """A duration as written (a string with a unit), checked before pydantic's own type check
    so a bare number gets the message about units, not "Input should be a valid string".

    A definition the engine stored (``context={"stored": True}``, see
    :mod:`touchline.decisions.journey_versions`) may come from a release that read a bare
    number as seconds: there it still means seconds, so the contacts inside keep their times."""
    if _is_number(value) and (info.context or {}).get("stored") and value >= 0:
        return f"{value:g}s"
    parse_duration(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid_time_of_day(value: str) -> str:
    if not _TIME_OF_DAY.match(value):
        raise ValueError(f"bad time of day {value!r}: use HH:MM, 24-hour")
    return value


def _valid_channel(value: str) -> str:
    """A channel the engine has; a near miss is named.

    >>> _valid_channel("emial")
    Traceback (most recent call last):
    ...
    ValueError: unknown channel 'emial' (did you mean 'email'?); known: email, sms, push, sales_task
    """
    if value not in ALL_CHANNELS:
        hint = did_you_mean(value, ALL_CHANNELS)
        raise ValueError(f"unknown channel {value!r}{f' ({hint})' if hint else ''}; known: {', '.join(ALL_CHANNELS)}")
    return value


def _check_condition(name: str, value: Any) -> Any:
    """A condition is a plain value (equality) or a mapping of operators to operands."""
    if isinstance(value, dict):
        bad = sorted(set(value) - set(OPERATORS))
        if bad:
            raise ValueError(f"{name}: unknown operator(s) {bad}{_hint(bad, OPERATORS)}; known: {', '.join(OPERATORS)}")
        for op in ("in", "not_in"):
            if op in value and not isinstance(value[op], list):
                raise ValueError(f"{name}: {op} needs a list")
        if "exists" in value and not isinstance(value["exists"], bool):
            raise ValueError(f"{name}: exists needs true or false")
    return value


def _event_conditions(value: dict[str, Any]) -> dict[str, Any]:
    for name, cond in value.items():
        _check_condition(name, cond)
    return value


def _hint(bad: list[Any], known: Any) -> str:
    """`` (did you mean 'x'?)`` for the first of ``bad`` that is a near miss of ``known``.

    >>> _hint(["vaule"], ["value", "currency"]), _hint(["zzz"], ["value"])
    (" (did you mean 'value'?)", '')
    """
    hints = [h for b in bad if (h := did_you_mean(b, known))]
    return f" ({hints[0]})" if hints else ""


def _profile_conditions(value: dict[str, Any], info: ValidationInfo | None) -> dict[str, Any]:
    vocabulary = _vocabulary(info)
    known = [*PROFILE_FIELDS, *sorted(vocabulary.profile_fields)] if vocabulary is not None else list(value)
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}{_hint(unknown, known)}; known: {', '.join(known)}"
                         "; custom attributes are declared in the settings' [attributes.NAME] and [traits]")
    for name, cond in value.items():
        _check_condition(name, cond)
    return value


def _event_type(value: str, info: ValidationInfo | None) -> str:
    """A known event type (built in, or declared in the settings); a near miss is named.

    >>> _event_type("purchse", None)
    Traceback (most recent call last):
    ...
    ValueError: unknown event type 'purchse' (did you mean 'purchase'?; see `touchline schema` for the known types, \
or declare your own in the settings' events.custom_types)
    """
    vocabulary = _vocabulary(info)
    if vocabulary is None:
        return value
    known = KNOWN_TYPES | vocabulary.event_types
    if value not in known:
        hint = did_you_mean(value, known)
        hint += "; " if hint else ""
        raise ValueError(f"unknown event type {value!r} ({hint}see `touchline schema` for the known types, "
                         "or declare your own in the settings' events.custom_types)")
    return value


#: Field types that check themselves, so each rule is written once.
Duration = Annotated[str, BeforeValidator(_valid_duration)]
TimeOfDay = Annotated[str, AfterValidator(_valid_time_of_day)]
Channel = Annotated[str, AfterValidator(_valid_channel)]
EventType = Annotated[str, AfterValidator(_event_type)]
ProfileConditions = Annotated[dict[str, Any], AfterValidator(_profile_conditions)]
EventConditions = Annotated[dict[str, Any], AfterValidator(_event_conditions)]


# ---------------------------------------------------------------------------------- entry
class EventEntry(_Strict):
    """Enter when an event of this type arrives, optionally with conditions on its properties."""

    event: EventType
    where: EventConditions = Field(default_factory=dict, description="event property -> condition")
    profile: ProfileConditions = Field(default_factory=dict, description="profile field -> condition, after the event")


class ScoreCrossing(_Strict):
    model: Literal["lead", "churn"]
    crosses: float = Field(ge=0.0, le=1.0, description="enter when the score rises to or above this")


class ScoreEntry(_Strict):
    """Enter when a model's score crosses a threshold upwards (e.g. a lead becoming an MQL)."""

    score: ScoreCrossing


class SegmentEntry(_Strict):
    """Enter when the contact's profile matches, checked after each of their events."""

    segment: ProfileConditions


class DateSpec(_Strict):
    attribute: str = Field(description="a date the contact carries, e.g. birthday, or signup (first seen)")
    every: Literal["year"] = "year"
    at: TimeOfDay = Field(default="09:00", description="local time of day (contact's time zone)")


class DateEntry(_Strict):
    """Enter on the anniversary of a date field (birthday, signup), at a local time of day."""

    date: DateSpec


def _entry_tag(value: Any) -> str:
    keys = set(value) if isinstance(value, dict) else {k for k in ("event", "score", "segment", "date")
                                                         if getattr(value, k, None) is not None}
    found = [k for k in ("event", "score", "segment", "date") if k in keys]
    return found[0] if len(found) == 1 else "invalid"


Entry = Annotated[
    Union[Annotated[EventEntry, Tag("event")], Annotated[ScoreEntry, Tag("score")],
          Annotated[SegmentEntry, Tag("segment")], Annotated[DateEntry, Tag("date")]],
    Discriminator(_entry_tag, custom_error_type="entry_kind",
                  custom_error_message="entry needs exactly one of: event, score, segment, date"),
]


# ---------------------------------------------------------------------------------- steps
class _Step(_Strict):
    id: str = Field(default="", description="unique in the journey; default step-N")
    next: str | None = Field(default=None, description="step id to go to after this one (default: the next)")


def _valid_send_at(value: str) -> str:
    """``now`` or ``best_time``; a near miss is named.

    >>> _valid_send_at("best_tme")
    Traceback (most recent call last):
    ...
    ValueError: unknown send_at 'best_tme' (did you mean 'best_time'?); known: now, best_time
    """
    if value not in SEND_AT:
        raise ValueError(f"unknown send_at {value!r}{_hint([value], SEND_AT)}; known: {', '.join(SEND_AT)}")
    return value


#: When a send goes out: at once, or at the contact's best local hour within ``within``.
SEND_AT = ("now", "best_time")
SendAt = Annotated[str, AfterValidator(_valid_send_at)]
#: The longest window a best-time send may wait for its hour.
MAX_SEND_WINDOW_MS = 7 * 86_400_000


def check_send_window(within: str) -> str:
    """A best-time window: at least an hour (else there is no choice to make), at most 7 days."""
    ms = parse_duration(within)
    if not 3_600_000 <= ms <= MAX_SEND_WINDOW_MS:
        raise ValueError(f"within must be from 1h to 7d (got {within!r})")
    return within


class SendSpec(_Strict):
    channel: Channel
    template: str = Field(min_length=1)
    offer: str | None = None
    send_at: SendAt = Field(default="now", description="now, or best_time: the contact's best local hour "
                            "within `within` (learned from their opens and clicks; quiet hours respected)")
    within: Annotated[Duration, AfterValidator(check_send_window)] = Field(
        default="24h", description="best_time: the window the send may wait for its hour (1h to 7d)")

    @property
    def within_ms(self) -> int:
        return parse_duration(self.within)


class SendStep(_Step):
    """Send a message (one candidate in arbitration, subject to caps, consent, quiet hours)."""

    send: SendSpec


class WaitStep(_Step):
    """Wait a fixed duration (event time in replay, wall time live)."""

    wait: Duration

    @property
    def wait_ms(self) -> int:
        return parse_duration(self.wait)


class WaitUntilSpec(_Strict):
    time: TimeOfDay = Field(description="HH:MM in the contact's time zone (policy default zone if unknown)")
    days: list[str] = Field(default_factory=lambda: list(WEEKDAYS), description="weekdays allowed, e.g. [mon, tue]")

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        bad = [d for d in value if d not in WEEKDAYS]
        if bad or not value:
            raise ValueError(f"days must be some of {', '.join(WEEKDAYS)}{_hint(bad, WEEKDAYS)}; got {value}")
        return value


class WaitUntilStep(_Step):
    """Wait until the next time of day (and weekday) in the contact's own time zone."""

    wait_until: WaitUntilSpec


class WaitForSpec(_Strict):
    event: EventType
    where: EventConditions = Field(default_factory=dict, description="event property -> condition")
    timeout: Duration


class WaitForStep(_Step):
    """Wait until an event happens, or a timeout passes; go on by which came first."""

    wait_for: WaitForSpec
    on_event: str | None = Field(default=None, description="step id when the event came (default: next step)")
    on_timeout: str | None = Field(default=None, description="step id on timeout (default: next step)")


class BranchCase(_Strict):
    """One case; the first that holds wins."""

    event_happened: str | None = Field(default=None, description="this event type since the journey was entered")
    score: dict[str, Any] | None = Field(default=None, description="{lead: {gte: 0.7}}")
    profile: dict[str, Any] | None = Field(default=None, description="profile field -> condition")
    percent: float | None = Field(default=None, gt=0, le=100,
                                  description="random split: this share of contacts (stable per contact)")
    goto: str

    @model_validator(mode="after")
    def _one_test(self, info: ValidationInfo) -> "BranchCase":
        tests = [n for n in ("event_happened", "score", "profile", "percent") if getattr(self, n) is not None]
        if len(tests) != 1:
            raise ValueError(f"a branch case needs exactly one of event_happened, score, profile, percent "
                             f"(got {tests or 'none'})")
        if self.event_happened is not None:
            _event_type(self.event_happened, info)
        if self.score is not None:
            _score_conditions(self.score)
        if self.profile is not None:
            _profile_conditions(self.profile, info)
        return self


def _score_conditions(score: dict[str, Any]) -> None:
    """A branch on scores names known models, each with a valid condition."""
    bad = sorted(set(score) - {"lead", "churn"})
    if bad:
        raise ValueError(f"score: unknown model(s) {bad}{_hint(bad, ('lead', 'churn'))}; known: lead, churn")
    for name, cond in score.items():
        _check_condition(name, cond)


class BranchStep(_Step):
    """Go to the first case that holds, else to ``else``."""

    branch: list[BranchCase] = Field(min_length=1)
    else_: str = Field(alias="else", description="step id when no case holds")

    @model_validator(mode="after")
    def _percent_total(self) -> "BranchStep":
        total = sum(c.percent or 0 for c in self.branch)
        if total > 100:
            raise ValueError(f"random split percents add up to {total:g}, more than 100")
        return self


class AssignRule(_Strict):
    profile: ProfileConditions
    rep: str = Field(min_length=1)


class HandoffSpec(_Strict):
    assign: Literal["round_robin", "rules"]
    reps: list[str] = Field(default_factory=list, description="round_robin: the reps, in turn")
    rules: list[AssignRule] = Field(default_factory=list, description="rules: first match wins")
    default: str | None = Field(default=None, description="rules: the rep when no rule matches")
    template: str = "sales/handoff"

    @model_validator(mode="after")
    def _complete(self) -> "HandoffSpec":
        if self.assign == "round_robin" and not self.reps:
            raise ValueError("round_robin needs reps: [name, ...]")
        if self.assign == "rules" and (not self.rules or not self.default):
            raise ValueError("rules assignment needs rules: [...] and a default rep")
        return self


class HandoffStep(_Step):
    """Create a sales task for a rep (channel ``sales_task``): the MQL -> SQL hand-off."""

    hand_to_sales: HandoffSpec


class SuppressSpec(_Strict):
    channels: Annotated[list[str], AfterValidator(_check_channels)] = Field(min_length=1)
    reason: str = Field(default="journey", min_length=1)


class SuppressStep(_Step):
    """Stop messaging the contact on these channels (a sunset's "stop mailing")."""

    suppress: SuppressSpec


class ExitStep(_Step):
    """Leave the journey here."""

    exit: Literal["goal", "completed"] = "completed"


_STEP_KINDS = ("send", "wait", "wait_until", "wait_for", "branch", "hand_to_sales", "suppress", "exit")


def _step_tag(value: Any) -> str:
    keys = set(value) if isinstance(value, dict) else {k for k in _STEP_KINDS if hasattr(value, k)}
    found = [k for k in _STEP_KINDS if k in keys]
    return found[0] if len(found) == 1 else "invalid"


Step = Annotated[
    Union[Annotated[SendStep, Tag("send")], Annotated[WaitStep, Tag("wait")],
          Annotated[WaitUntilStep, Tag("wait_until")], Annotated[WaitForStep, Tag("wait_for")],
          Annotated[BranchStep, Tag("branch")], Annotated[HandoffStep, Tag("hand_to_sales")],
          Annotated[SuppressStep, Tag("suppress")], Annotated[ExitStep, Tag("exit")]],
    Discriminator(_step_tag, custom_error_type="step_kind",
                  custom_error_message=f"a step needs exactly one of: {', '.join(_STEP_KINDS)}"),
]


# ---------------------------------------------------------------------------------- journey
class ExitCriteria(_Strict):
    goal: list[EventType] = Field(default_factory=list, description="event types that end the journey as converted")
    unsubscribed: bool = Field(default=True, description="leave when the contact unsubscribes")
    higher_priority: bool = Field(default=True, description="leave when a higher-priority journey is entered")



class ReEntry(_Strict):
    allowed: bool = False
    after: Duration = Field(default="0s", description="minimum time since the last exit")


class JourneyCaps(_Strict):
    sends: int = Field(ge=1, description="at most this many messages from this journey ...")
    per: Duration = Field(default="30d", description="... within this window")


class Journey(_Strict):
    """One journey file."""

    journey: str = Field(pattern=r"^[a-z][a-z0-9_\-]{0,63}$", description="name: lowercase, digits, _ or -")
    description: str = ""
    priority: int = Field(default=50, ge=0, le=1000, description="higher wins arbitration and pre-empts")
    allow_anonymous: bool = Field(default=False, description="let anonymous visitors enter (they cannot be "
                                  "messaged until identified; steps wait for that)")
    entry: Entry
    exit: ExitCriteria = Field(default_factory=ExitCriteria)
    re_entry: ReEntry = Field(default_factory=ReEntry)
    caps: JourneyCaps | None = None
    suppressed: Literal["defer", "skip"] = Field(
        default="defer", description="a send step the policy suppresses: retry later (defer) or move on (skip)")
    defer_for: Duration = Field(default="1h", description="how long a deferred send waits before trying again")
    defer_max: int = Field(default=24, ge=1, le=1000, description="deferrals before the step is skipped")
    steps: list[Step] = Field(min_length=1)

    @cached_property
    def step_index(self) -> dict[str, int]:
        """Step id -> its place in ``steps`` (where a jump lands; ids are final once parsed)."""
        return {s.id: i for i, s in enumerate(self.steps)}



# ---------------------------------------------------------------------------------- loading
def _load_with_lines(text: str) -> tuple[Any, dict[YamlPath, int]]:
    """Safe-load YAML and remember the line of every key and list item (for error messages).
    A key given twice in one mapping is an error (PyYAML would silently keep the last)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None, {}
    loader = yaml.SafeLoader("")
    data = loader.construct_document(node)
    lines: dict[YamlPath, int] = {}

    def mark(n: yaml.Node, path: YamlPath) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in n.value:
                key = loader.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.MarkedYAMLError(problem=f"key {key!r} appears twice in one mapping (first at "
                                               f"line {seen[key]}); the second would silently win",
                                               problem_mark=key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
                mark(value_node, (*path, key))
                lines[(*path, key)] = key_node.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                mark(item, (*path, i))

    mark(node, ())
    return data, lines


def parse_journey(text: str, source: str = "<journey>", vocabulary: Vocabulary | None = None) -> Journey:
    """Parse and check one journey; every problem is named with file, line and field. Event types
    and profile fields beyond the built-ins are those of ``vocabulary`` (the settings' own)."""
    data, lines = _load_journey_yaml(text, source)
    try:
        journey = Journey.model_validate(data, context={"vocabulary": vocabulary or Vocabulary()})
    except ValidationError as exc:
        raise JourneyError("\n".join(problem_lines(exc.errors(), data, lines, source, Journey))) from None
    _check_flow(journey, data, lines, source)
    return journey


def _load_journey_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[YamlPath, int]]:
    """The document as a mapping with the line of every key; YAML errors name the line."""
    try:
        data, lines = _load_with_lines(text)
    except yaml.MarkedYAMLError as exc:
        raise JourneyError(describe_yaml_error(exc, source)) from None
    except yaml.YAMLError as exc:
        raise JourneyError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JourneyError(f"{source}:1: a journey file is a mapping with journey, entry and steps; "
                           f"got {type(data).__name__}")
    return data, lines


def _check_flow(journey: Journey, data: dict[str, Any], lines: dict[YamlPath, int], source: str) -> None:
    """Step ids unique, every jump lands on a step, and no loop runs without waiting."""
    for i, step in enumerate(journey.steps):
        if not step.id:
            step.id = f"step-{i + 1}"
    problems = _duplicate_ids(journey, lines, source) + _dangling_jumps(journey, lines, source)
    if not problems:
        problems = _instant_loop_problem(journey, lines, source)
    if problems:
        raise JourneyError("\n".join(problems))


def _duplicate_ids(journey: Journey, lines: dict[YamlPath, int], source: str) -> list[str]:
    """A problem for every step whose id an earlier step already has."""
    problems = []
    seen: set[str] = set()
    for i, step in enumerate(journey.steps):
        if step.id in seen:
            problems.append(f"{source}:{lines.get(('steps', i), 1)}: steps[{i}].id: duplicate step id {step.id!r}")
        seen.add(step.id)
    return problems


def _dangling_jumps(journey: Journey, lines: dict[YamlPath, int], source: str) -> list[str]:
    """A problem for every jump (next, on_event, goto, ...) to an id no step has."""
    ids = [s.id for s in journey.steps]
    known = set(ids)
    problems = []
    for i, step in enumerate(journey.steps):
        for field_name, target in _jumps(step):
            if target not in known:
                line = lines.get(("steps", i, field_name), lines.get(("steps", i), 1))
                problems.append(f"{source}:{line}: steps[{i}].{field_name}: no step with id {target!r}; "
                                f"steps: {', '.join(ids)}")
    return problems


def _instant_loop_problem(journey: Journey, lines: dict[YamlPath, int], source: str) -> list[str]:
    """The problem of a loop without a wait, named at its first step (none: empty)."""
    loop = _instant_loop(journey)
    if not loop:
        return []
    i = [s.id for s in journey.steps].index(loop[0])
    return [f"{source}:{lines.get(('steps', i), 1)}: steps[{i}]: steps {' -> '.join(loop)} loop "
            "without a wait; add a wait, wait_until or wait_for step to the loop"]


def _jumps(step: Any) -> list[tuple[str, str]]:
    out = [("next", step.next)] if step.next else []
    if isinstance(step, WaitForStep):
        out += [(n, t) for n, t in (("on_event", step.on_event), ("on_timeout", step.on_timeout)) if t]
    if isinstance(step, BranchStep):
        out += [(f"branch[{k}].goto", c.goto) for k, c in enumerate(step.branch)] + [("else", step.else_)]
    return out


def successors(journey: Journey, index: int) -> list[int]:
    """Indexes of the steps that can follow step ``index`` (end of list: none)."""
    step = journey.steps[index]
    ids = {s.id: i for i, s in enumerate(journey.steps)}
    following = [index + 1] if index + 1 < len(journey.steps) else []
    if isinstance(step, ExitStep):
        return []
    if isinstance(step, BranchStep):
        return [ids[c.goto] for c in step.branch] + [ids[step.else_]]
    if isinstance(step, WaitForStep):
        return [*([ids[step.on_event]] if step.on_event else following),
                *([ids[step.on_timeout]] if step.on_timeout else following)]
    return [ids[step.next]] if step.next else following


def _instant_loop(journey: Journey) -> list[str] | None:
    """A cycle of steps none of which waits (it would spin forever within one moment)."""
    waiting = (WaitStep, WaitUntilStep, WaitForStep)
    for start in range(len(journey.steps)):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            if isinstance(journey.steps[node], waiting):
                continue
            for nxt in successors(journey, node):
                if nxt == start:
                    return [journey.steps[i].id for i in [*path, start]]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    return None

