"""Running journeys per contact: entries, steps, waits, branches, exits. Pure logic.

A contact's place in each journey is plain data in ``profile.journeys[name]`` (so it is
saved with the profile, in Redis too, and survives a restart): the version of the journey
it entered and a step of that version, so an edited file moves no one inside
(:mod:`~touchline.decisions.journey_versions`); every wait is a timer of kind
``journey:<name>`` on the engine clock (event time in replay, the wall clock live).

The runner is a :class:`~touchline.decisions.participant.Participant` of the decision loop:
:meth:`JourneyRunner.propose` after an event is applied (or after scores computed without
one) and :meth:`JourneyRunner.on_timer` when a journey timer comes due return the send
candidates of this decision point; the engine arbitrates them with its other candidates
(one message per decision point) and reports back with :meth:`JourneyRunner.settle`,
which moves each journey on: a sent step goes to the next one, a suppressed step is
deferred or skipped as the journey says. A step after a send runs at the next decision
point (1 ms later), so one moment never sends twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping

from touchline.decisions.journey_versions import VERSION, JourneyVersions
from touchline.decisions.journeys import (
    BranchStep, DateEntry, EventEntry, ExitStep, HandoffStep, Journey, ScoreEntry, SegmentEntry, SendStep,
    SuppressStep, WaitForStep, WaitStep, WaitUntilStep, WEEKDAYS, parse_duration,
)
from touchline.decisions.policy import Candidate, QuietHours, bucket, contact_zone
from touchline.decisions.send_time import SendTime
from touchline.decisions.participant import Participant
from touchline.decisions.profile import DAY_MS, Profile

if TYPE_CHECKING:
    from touchline.decisions.arbitration import DecisionPoint
    from touchline.decisions.custom_attributes import CustomAttributes
    from touchline.decisions.events import Event
    from touchline.decisions.moment import Moment

TIMER_PREFIX = "journey:"
#: Suppressions that waiting will not lift: the step is skipped even when the journey defers.
NEVER_DEFER = frozenset({"holdout", "no_consent", "bounced"})
#: Steps run at most this many times in one go (a guard; the file check forbids instant loops).
MAX_STEPS_AT_ONCE = 100


def timer_kind(name: str) -> str:
    return TIMER_PREFIX + name


# ---------------------------------------------------------------------------------- conditions
def matches(value: Any, condition: Any) -> bool:
    """One condition: a plain value means equality; a mapping holds operators.

    >>> matches(25, {"gte": 20}), matches("DE", {"in": ["AT", "CH"]}), matches(None, {"exists": False})
    (True, False, True)
    """
    if not isinstance(condition, dict):
        return bool(value == condition)
    for op, operand in condition.items():
        if op == "exists":
            if (value is not None) != operand:
                return False
            continue
        if value is None:
            return False
        try:
            tests: dict[str, Callable[[], object]] = {
                "eq": lambda: value == operand, "ne": lambda: value != operand,
                "gt": lambda: value > operand, "gte": lambda: value >= operand,
                "lt": lambda: value < operand, "lte": lambda: value <= operand,
                "in": lambda: value in operand, "not_in": lambda: value not in operand,
                "contains": lambda: operand in value,
            }
            ok = tests[op]()
        except TypeError:  # comparing a number with a string: not a match
            return False
        if not ok:
            return False
    return True


def profile_facts(profile: Profile, now_ms: int, scores: Mapping[str, float], consent_default: dict[str, bool]
                  ) -> dict[str, Any]:
    """The profile fields a journey condition can test (see ``PROFILE_FIELDS``)."""
    def days_since(ts: int | None) -> float | None:
        return None if ts is None else (now_ms - ts) / DAY_MS

    facts: dict[str, Any] = {
        "known": profile.known,
        "events_total": profile.events_total,
        "purchases_total": profile.purchases_total,
        "monetary_total": profile.monetary_total,
        "cart_value": profile.cart_value,
        "days_since_last_purchase": days_since(profile.last_purchase_ts),
        "days_since_last_activity": days_since(profile.last_activity_ts),
        "days_since_first_seen": days_since(profile.first_ts),
        "timezone": profile.timezone,
        "locale": profile.locale,
        "lead_score": scores.get("lead", profile.score_memory.get("lead")),
        "churn_score": scores.get("churn", profile.score_memory.get("churn")),
        "email_opens_30d": profile.window_count("30d", "email_open"),
    }
    for channel in ("email", "sms", "push"):
        facts[f"consent_{channel}"] = profile.consent.get(channel, consent_default.get(channel, False))
    return facts


def all_match(values: dict[str, Any], conditions: dict[str, Any]) -> bool:
    return all(matches(values.get(name), cond) for name, cond in conditions.items())


def split_bucket(contact: str, journey: str, step: str) -> float:
    """A stable number in [0, 100) per contact and step: random splits without state."""
    return bucket(contact, f"{journey}:{step}") * 100


# ---------------------------------------------------------------------------------- time of day
def next_time_of_day(now_ms: int, hhmm: str, zone_name: str | None, default_zone: str,
                     days: list[str] | tuple[str, ...] = WEEKDAYS) -> int:
    """The next moment at or after ``now_ms`` that is ``hhmm`` local time on an allowed weekday.

    >>> t = 1767614400000  # 2026-01-05T12:00Z, a Monday
    >>> (next_time_of_day(t, "09:00", "Europe/Berlin", "UTC") - t) / 3_600_000  # Tue 09:00 CET = 08:00Z
    20.0
    >>> (next_time_of_day(t, "13:30", "Europe/Berlin", "UTC") - t) / 3_600_000
    0.5
    """
    zone = contact_zone(zone_name, default_zone)
    hour, minute = map(int, hhmm.split(":"))
    local = datetime.fromtimestamp(now_ms / 1000, tz=zone)
    for add in range(0, 8):
        day = (local + timedelta(days=add)).date()
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        if WEEKDAYS[candidate.weekday()] in days and candidate.timestamp() * 1000 >= now_ms:
            return int(candidate.timestamp() * 1000)
    raise ValueError(f"no allowed day in {days}")


def next_anniversary(now_ms: int, on: date, hhmm: str, zone_name: str | None, default_zone: str) -> int:
    """The next yearly return of the date ``on`` at ``hhmm`` local time (29 Feb -> 28 Feb)."""
    zone = contact_zone(zone_name, default_zone)
    hour, minute = map(int, hhmm.split(":"))
    year = datetime.fromtimestamp(now_ms / 1000, tz=zone).year
    for y in (year, year + 1):
        day = on.day if not (on.month == 2 and on.day == 29) or _leap(y) else 28
        at = datetime(y, on.month, day, hour, minute, tzinfo=zone)
        if at.timestamp() * 1000 > now_ms:
            return int(at.timestamp() * 1000)
    raise AssertionError("unreachable")


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _parse_date(value: Any) -> date | None:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------------------------- runner
class _Facts:
    """The profile facts of one decision point, computed at first need and then kept."""

    def __init__(self, runner: JourneyRunner, profile: Profile, now_ms: int, scores: Mapping[str, float]) -> None:
        self._runner, self._args = runner, (profile, now_ms, scores)
        self._facts: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        if self._facts is None:
            self._facts = self._runner.facts(*self._args)
        return self._facts


@dataclass(slots=True)
class _Walk:
    """One run of a journey's steps for one contact."""

    profile: Profile
    journey: Journey
    state: dict[str, Any]
    now_ms: int
    scores: Mapping[str, float]
    at: Moment


def _awaited(step: Any, state: dict[str, Any], event_type: str, properties: dict[str, Any]) -> bool:
    """Whether ``step`` is waiting for this event (type and conditions)."""
    wait = state.get("wait") or {}
    return (isinstance(step, WaitForStep) and wait.get("kind") == "event" and step.wait_for.event == event_type
            and all_match(properties, step.wait_for.where))


class JourneyRunner(Participant):
    """All configured journeys, run for one contact at a time; a :class:`Participant` of the decision loop."""

    def __init__(self, journeys: list[Journey], default_zone: str, consent_default: dict[str, bool],
                 trace: Callable[[dict[str, Any]], None] | None = None,
                 attributes: CustomAttributes | None = None) -> None:
        self.journeys = sorted(journeys, key=lambda j: (-j.priority, j.journey))
        #: the configured custom attributes, which conditions test like built-in profile fields
        self.attributes = attributes
        #: journey name -> its definition in the files (the current version)
        self.by_name = {j.journey: j for j in self.journeys}
        #: every version a contact may be in: a contact finishes the one it entered
        self.versions = JourneyVersions(self.journeys)
        self.default_zone = default_zone
        self.consent_default = consent_default
        self.trace = trace
        self._round_robin: Counter[str] = Counter()
        #: The next turn of a named round-robin counter; the engine points this at its state
        #: store, so every worker and process shares one rotation.
        self.next_turn: Callable[[str], int] = self._local_turn
        self._date_attrs = {j.entry.date.attribute for j in self.journeys if isinstance(j.entry, DateEntry)}
        #: (contact key, journey, wait step id) -> wait in ms, or None for the file's: timing experiments
        self.wait_override: Callable[[str, str, str], int | None] | None = None
        #: (contact key, journey, send step id) -> (send_at, window ms), or None for the file's: send-time experiments
        self.send_at_override: Callable[[str, str, str], tuple[str, int | None] | None] | None = None
        #: told when a contact reaches a wait or send step: the experiments expose it to a timing
        #: split there, before the arms' timing differs (intent to treat)
        self.timing_reached: Callable[[Moment, str, WaitStep | SendStep, float | None], None] | None = None
        #: when a ``send_at: best_time`` step goes out (the engine gives its learner, with the policy's quiet hours)
        self.send_time = SendTime(default_zone, QuietHours(default_timezone=default_zone))

    def facts(self, profile: Profile, now_ms: int, scores: Mapping[str, float]) -> dict[str, Any]:
        """What a condition can test: the built-in profile fields, then the custom attributes'
        values as of ``now_ms`` (their names never clash: the settings refuse it)."""
        facts = profile_facts(profile, now_ms, scores, self.consent_default)
        if self.attributes:
            facts.update(self.attributes.values(profile, now_ms))
        return facts

    def _local_turn(self, name: str) -> int:
        turn = self._round_robin[name]
        self._round_robin[name] += 1
        return turn

    # ------------------------------------------------------------------ participant hooks
    def propose(self, at: Moment, event: Event | None, scores: Mapping[str, float]) -> list[Candidate]:
        """After an event: exits, waits for events, entries, then steps. After scores computed
        without an event (the inactivity check): score-crossing entries only."""
        if event is None:
            out = self._on_scores(at, scores)
        else:
            out = self._on_event(at, event.type, event.properties, scores)
        self._remember_scores(at.profile, scores, ("lead", "churn") if event is not None else tuple(scores))
        return out

    def owns_timer(self, kind: str) -> bool:
        return kind.startswith(TIMER_PREFIX)

    def on_timer(self, at: Moment, kind: str) -> list[Candidate]:
        """The journey's timer came due: a wait ended, a deferred send retries, or a date entry."""
        profile, name, now_ms = at.profile, kind[len(TIMER_PREFIX):], at.now_ms
        state = profile.journeys.get(name)
        if name not in self.by_name:  # a journey removed from the configuration since the timer was set
            self._removed(at, name, state)
            return []
        if state is None or not state.get("active"):
            return self._entry_timer(at, self.by_name[name])
        journey = self._own(at, name, state)
        if journey is None:
            return []
        if state["step"] < len(journey.steps):  # past the end: the last step was a send, the journey is done
            self._end_wait(at, journey, state)
        return self._run(profile, journey, now_ms, {}, at)

    def settle(self, at: Moment, point: DecisionPoint) -> None:
        """Move each journey that proposed at ``point`` on: sent, deferred or skipped, and note
        in the record what became of each held-back step."""
        proposed = [c for c in point.proposed if c.journey is not None]
        if not proposed:
            return
        reasons = {(s.action, s.channel): s.reason for s in point.suppressed}
        for cand in proposed:
            state = at.profile.journeys.get(cand.journey or "")
            if state is None or not state.get("active"):
                continue
            if cand is point.winner:
                self._sent(at, cand, state)
            else:
                reason = reasons.get((cand.action, cand.channel), "arbitration")
                point.step_notes[(cand.action, cand.channel)] = self._held_back(at, cand, state, reason)

    # ------------------------------------------------------------------ hook steps
    def _on_event(self, at: Moment, event_type: str, properties: dict[str, Any],
                  scores: Mapping[str, float]) -> list[Candidate]:
        profile, ts_ms = at.profile, at.now_ms
        out: list[Candidate] = []
        facts = _Facts(self, profile, ts_ms, scores)
        self._remember_dates(profile, properties, ts_ms, at)
        for journey in self.journeys:
            state = profile.journeys.get(journey.journey)
            if state is not None and state.get("active"):
                own = self._own(at, journey.journey, state)
                out += self._event_inside(at, own, state, event_type, properties, scores) if own is not None else []
            elif self._event_enters(at, journey, event_type, properties, scores, facts):
                out += self._enter(profile, journey, ts_ms, scores, at)
        return out

    def _event_inside(self, at: Moment, journey: Journey, state: dict[str, Any], event_type: str,
                      properties: dict[str, Any], scores: Mapping[str, float]) -> list[Candidate]:
        """An event of a contact inside ``journey``: a goal or unsubscribe exits; an awaited event moves on."""
        profile, ts_ms = at.profile, at.now_ms
        if event_type in journey.exit.goal:
            self._exit(profile, journey, "goal", ts_ms, at)
            return []
        if event_type == "unsubscribe" and journey.exit.unsubscribed:
            self._exit(profile, journey, "unsubscribed", ts_ms, at)
            return []
        seen = state.setdefault("seen", [])
        if event_type not in seen and len(seen) < 64:
            seen.append(event_type)
        step = journey.steps[min(state["step"], len(journey.steps) - 1)]
        if not _awaited(step, state, event_type, properties):
            return []
        assert isinstance(step, WaitForStep)
        self._goto(state, journey, step.on_event, state["step"])
        state["wait"] = None
        self._trace(profile, journey, step.id, ts_ms, f"{event_type} arrived")
        return self._run(profile, journey, ts_ms, scores, at)

    def _event_enters(self, at: Moment, journey: Journey, event_type: str, properties: dict[str, Any],
                      scores: Mapping[str, float], facts: _Facts) -> bool:
        """Whether this event makes the contact enter ``journey`` (date entries start from their timer)."""
        entry = journey.entry
        if isinstance(entry, EventEntry):
            return (entry.event == event_type and all_match(properties, entry.where)
                    and (not entry.profile or all_match(facts.get(), entry.profile)))
        if isinstance(entry, SegmentEntry):
            found = facts.get()
            self._schedule_segment_check(at.profile, journey, entry, at)
            return all_match(found, entry.segment)
        if isinstance(entry, ScoreEntry):
            return self._crossed(at.profile, entry, scores)
        return False

    def _on_scores(self, at: Moment, scores: Mapping[str, float]) -> list[Candidate]:
        out: list[Candidate] = []
        for journey in self.journeys:
            if isinstance(journey.entry, ScoreEntry) and self._crossed(at.profile, journey.entry, scores):
                out += self._enter(at.profile, journey, at.now_ms, scores, at)
        return out

    @staticmethod
    def _remember_scores(profile: Profile, scores: Mapping[str, float], models: tuple[str, ...]) -> None:
        """The scores a later score-crossing entry compares with."""
        for model in models:
            if model in scores:
                profile.score_memory[model] = round(scores[model], 6)

    def _entry_timer(self, at: Moment, journey: Journey) -> list[Candidate]:
        """The timer of a journey the contact is not in: a date entry, or a segment that may now be true."""
        profile, now_ms = at.profile, at.now_ms
        entry = journey.entry
        if isinstance(entry, DateEntry):
            self._schedule_date(profile, journey, now_ms + 1, at)
            return self._enter(profile, journey, now_ms, {}, at)
        if isinstance(entry, SegmentEntry) and all_match(self.facts(profile, now_ms, {}),
                                                         entry.segment):
            return self._enter(profile, journey, now_ms, {}, at)
        return []

    def _end_wait(self, at: Moment, journey: Journey, state: dict[str, Any]) -> None:
        """A wait ended: a timeout of a wait for an event, or a timed wait. A deferred send
        ("retry") and the step after a send ("continue") resume at the current step."""
        wait = state.get("wait") or {}
        step = journey.steps[state["step"]]
        if wait.get("kind") == "event" and isinstance(step, WaitForStep):
            self._goto(state, journey, step.on_timeout, state["step"])
            self._trace(at.profile, journey, step.id, at.now_ms, f"no {step.wait_for.event} before the timeout")
        elif wait.get("kind") == "time":
            self._goto(state, journey, step.next, state["step"])
        state["wait"] = None

    def _sent(self, at: Moment, cand: Candidate, state: dict[str, Any]) -> None:
        """The journey's step was sent: count it against the journey's cap and go on."""
        journey, now_ms = self._proposer(cand, state), at.now_ms
        index = state["step"]
        at.outcome.journeys.sends[(journey.journey, cand.step or "")] += 1
        state["sends"] = [t for t in state.get("sends", []) if t > now_ms - self._cap_window(journey)]
        state["sends"].append(now_ms)
        state["defers"] = 0
        self._trace(at.profile, journey, cand.step or "", now_ms, f"sent {cand.channel} {cand.template}")
        self._continue_after(state, journey, index, journey.steps[index], now_ms, at.profile, at)

    def _held_back(self, at: Moment, cand: Candidate, state: dict[str, Any], reason: str) -> str:
        """The journey's step was held back: deferred (when the journey says so and waiting can
        help) or skipped. Returns what became of it, for the record."""
        journey, now_ms, step_id = self._proposer(cand, state), at.now_ms, cand.step or ""
        defers = state.get("defers", 0)
        if journey.suppressed == "defer" and defers < journey.defer_max and reason not in NEVER_DEFER:
            state["defers"] = defers + 1
            due = now_ms + parse_duration(journey.defer_for)
            state["wait"] = {"kind": "retry", "until": due}
            at.set_timer(timer_kind(journey.journey), due)
            at.outcome.journeys.suppressed[(journey.journey, step_id, "deferred")] += 1
            self._trace(at.profile, journey, step_id, now_ms, f"suppressed ({reason}): deferred {journey.defer_for}")
            return f"deferred to {_iso(due)}"
        state["defers"] = 0
        at.outcome.journeys.suppressed[(journey.journey, step_id, "skipped")] += 1
        self._trace(at.profile, journey, step_id, now_ms, f"suppressed ({reason}): skipped")
        index = state["step"]
        self._continue_after(state, journey, index, journey.steps[index], now_ms, at.profile, at)
        return "skipped"

    # ------------------------------------------------------------------ internals
    def _continue_after(self, state: dict[str, Any], journey: Journey, index: int, step: Any, now_ms: int,
                        profile: Profile, at: Moment) -> None:
        state.pop("timed", None)
        self._goto(state, journey, step.next, index)
        if state.get("active"):  # the next step runs at the next decision point
            state["wait"] = {"kind": "continue", "until": now_ms + 1}
            at.set_timer(timer_kind(journey.journey), now_ms + 1)

    def _enter(self, profile: Profile, journey: Journey, now_ms: int, scores: Mapping[str, float],
               at: Moment) -> list[Candidate]:
        previous = profile.journeys.get(journey.journey)
        if not self._may_enter(profile, journey, previous, now_ms):
            return []
        self._preempt_for(profile, journey, now_ms, at)
        profile.journeys[journey.journey] = {
            "active": True, VERSION: self.versions.current[journey.journey], "step": 0, "entered": now_ms,
            "wait": None, "defers": 0, "seen": [],
            "sends": (previous or {}).get("sends", []), "entries": (previous or {}).get("entries", 0) + 1,
        }
        at.outcome.journeys.entries[journey.journey] += 1
        self._trace(profile, journey, journey.steps[0].id, now_ms, "entered")
        return self._run(profile, journey, now_ms, scores, at)

    @staticmethod
    def _may_enter(profile: Profile, journey: Journey, previous: dict[str, Any] | None, now_ms: int) -> bool:
        """Anonymous visitors only where allowed; not while inside; re-entry as the journey says."""
        if not profile.known and not journey.allow_anonymous:
            return False
        if previous is None:
            return True
        if previous.get("active"):
            return False
        last_exit = previous.get("exited")
        return last_exit is None or (journey.re_entry.allowed
                                     and now_ms - last_exit >= parse_duration(journey.re_entry.after))

    def _preempt_for(self, profile: Profile, journey: Journey, now_ms: int, at: Moment) -> None:
        """Entering ``journey`` pre-empts the lower-priority journeys that allow it."""
        for current in self.journeys:
            other_state = profile.journeys.get(current.journey)
            if current is journey or not other_state or not other_state.get("active"):
                continue
            other = self._own(at, current.journey, other_state)  # the version the contact is in
            if other is not None and other.priority < journey.priority and other.exit.higher_priority:
                self._exit(profile, other, "preempted", now_ms, at)

    def _exit(self, profile: Profile, journey: Journey, reason: str, now_ms: int,
              at: Moment) -> None:
        """Leave ``journey`` (the version the contact is in)."""
        state = profile.journeys.get(journey.journey)
        if state is None or not state.get("active"):
            return
        self._leave(at, journey.journey, state, reason, journey.steps[min(state["step"], len(journey.steps) - 1)].id)

    def _leave(self, at: Moment, name: str, state: dict[str, Any], reason: str, step_id: str) -> None:
        """Exit, then set the next date entry (as the files say) or void the pending wait."""
        self._close(at, name, state, reason, step_id)
        current, profile = self.by_name.get(name), at.profile
        if current is not None and isinstance(current.entry, DateEntry):
            self._schedule_date(profile, current, at.now_ms + 1, at)
        elif timer_kind(name) in profile.timers:
            profile.timers.pop(timer_kind(name), None)  # its pending wait is void

    def _close(self, at: Moment, name: str, state: dict[str, Any], reason: str, step_id: str) -> None:
        """Mark ``state`` exited for ``reason``, count it and trace it."""
        state.update(active=False, exited=at.now_ms, exit_reason=reason, wait=None)
        for key in ("seen", "defers", "timed"):
            state.pop(key, None)
        at.outcome.journeys.exits[(name, reason)] += 1
        self._trace_name(at.profile, name, step_id, at.now_ms, f"exited: {reason}")

    def _own(self, at: Moment, name: str, state: dict[str, Any]) -> Journey | None:
        """The version of ``name`` the contact is in; a contact in a version no definition is
        kept of anywhere leaves the journey (reason ``unknown_version``), never guessed onto another."""
        journey = self.versions.own(name, state)
        if journey is None:
            self._leave(at, name, state, "unknown_version", _step_number(state))
        return journey

    def _proposer(self, cand: Candidate, state: dict[str, Any]) -> Journey:
        """The version whose step proposed ``cand`` (known: it was found to propose)."""
        journey = self.versions.own(cand.journey or "", state)
        assert journey is not None
        return journey

    def _removed(self, at: Moment, name: str, state: dict[str, Any] | None) -> None:
        """The timer of a journey no longer configured: a contact inside leaves it (reason
        ``removed``) instead of getting its next step; a finished one's state is dropped."""
        if state is None:
            return
        if not state.get("active"):
            at.profile.journeys.pop(name, None)
            return
        self._close(at, name, state, "removed", _step_number(state))

    def _goto(self, state: dict[str, Any], journey: Journey, target: str | None, index: int) -> None:
        if target is not None:
            state["step"] = journey.step_index[target]
        elif index + 1 < len(journey.steps):
            state["step"] = index + 1
        else:
            state["step"] = len(journey.steps)  # past the end: completed

    def _run(self, profile: Profile, journey: Journey, now_ms: int, scores: Mapping[str, float],
             at: Moment) -> list[Candidate]:
        """Run steps until one waits, proposes a send, or the journey ends."""
        walk = _Walk(profile, journey, profile.journeys[journey.journey], now_ms, scores, at)
        for _ in range(MAX_STEPS_AT_ONCE):
            index = walk.state["step"]
            if index >= len(journey.steps):
                self._exit(profile, journey, "completed", now_ms, at)
                return []
            stop = self._step(walk, journey.steps[index], index)
            if stop is not None:
                return stop
        raise RuntimeError(f"journey {journey.journey}: more than {MAX_STEPS_AT_ONCE} steps at once")

    def _step(self, walk: _Walk, step: Any, index: int) -> list[Candidate] | None:
        """Run one step: None to go on to the next, else what the run ends with (a send, or nothing)."""
        if isinstance(step, (WaitStep, WaitUntilStep)):
            return self._wait(walk, step, index)
        if isinstance(step, WaitForStep):
            return self._wait_for(walk, step)
        if isinstance(step, BranchStep):
            target = self._branch(walk.profile, walk.journey, step, walk.state, walk.now_ms, walk.scores)
            self._trace(walk.profile, walk.journey, step.id, walk.now_ms, f"branch -> {target}")
            walk.state["step"] = walk.journey.step_index[target]
            return None
        if isinstance(step, SuppressStep):
            for channel in step.suppress.channels:
                walk.profile.consent[channel] = False
            self._trace(walk.profile, walk.journey, step.id, walk.now_ms,
                        f"stopped {', '.join(step.suppress.channels)}")
            self._goto(walk.state, walk.journey, step.next, index)
            return None
        if isinstance(step, ExitStep):
            self._exit(walk.profile, walk.journey, "goal" if step.exit == "goal" else "completed", walk.now_ms, walk.at)
            return []
        if isinstance(step, (SendStep, HandoffStep)):
            return self._send(walk, step, index)
        raise AssertionError(f"unknown step {step!r}")

    def _wait(self, walk: _Walk, step: WaitStep | WaitUntilStep, index: int) -> list[Candidate] | None:
        """A timed wait (its length may be an experiment's), or until a time of day."""
        profile, name, now_ms = walk.profile, walk.journey.journey, walk.now_ms
        if isinstance(step, WaitStep):
            self._reached(walk, step)
            override = self.wait_override(profile.contact_id, name, step.id) if self.wait_override else None
            due = now_ms + (step.wait_ms if override is None else override)
        else:
            due = next_time_of_day(now_ms, step.wait_until.time, profile.timezone, self.default_zone,
                                   step.wait_until.days)
        if due <= now_ms:  # already the time of day: go straight on
            self._goto(walk.state, walk.journey, step.next, index)
            return None
        walk.state["wait"] = {"kind": "time", "until": due}
        walk.at.set_timer(timer_kind(name), due)
        self._trace(profile, walk.journey, step.id, now_ms, f"waiting until {_iso(due)}")
        return []

    def _wait_for(self, walk: _Walk, step: WaitForStep) -> list[Candidate]:
        """Wait for an event, until a timeout."""
        due = walk.now_ms + parse_duration(step.wait_for.timeout)
        walk.state["wait"] = {"kind": "event", "until": due, "event": step.wait_for.event}
        walk.at.set_timer(timer_kind(walk.journey.journey), due)
        self._trace(walk.profile, walk.journey, step.id, walk.now_ms,
                    f"waiting for {step.wait_for.event} until {_iso(due)}")
        return []

    def _send(self, walk: _Walk, step: SendStep | HandoffStep, index: int) -> list[Candidate] | None:
        """Propose the send, unless the journey's own cap is reached (then the step is skipped)."""
        journey = walk.journey
        if isinstance(step, SendStep):
            self._reached(walk, step)
        if journey.caps is not None and self._capped(walk.state, journey, walk.now_ms):
            walk.at.outcome.journeys.suppressed[(journey.journey, step.id, "skipped")] += 1
            self._trace(walk.profile, journey, step.id, walk.now_ms, "journey cap reached: skipped")
            self._goto(walk.state, journey, step.next, index)
            return None
        if isinstance(step, SendStep) and self._wait_for_best_time(walk, step):
            return []
        return [self._candidate(walk.profile, journey, step, walk.scores)]

    def _reached(self, walk: _Walk, step: WaitStep | SendStep) -> None:
        if self.timing_reached is not None:
            self.timing_reached(walk.at, walk.journey.journey, step, walk.scores.get("lead"))

    def _send_timing(self, contact: str, journey: str, step: SendStep) -> tuple[str, int]:
        """(send_at, window ms) of a send step for this contact: an experiment's, else the file's."""
        override = self.send_at_override(contact, journey, step.id) if self.send_at_override else None
        if override is None:
            return step.send.send_at, step.send.within_ms
        return override[0], override[1] or step.send.within_ms

    def _wait_for_best_time(self, walk: _Walk, step: SendStep) -> bool:
        """A best-time send waits (a timer: it survives a restart) for the contact's best local
        hour in its window, once; True while it waits. Now being best, it goes at once."""
        send_at, within_ms = self._send_timing(walk.profile.contact_id, walk.journey.journey, step)
        if send_at != "best_time" or walk.state.get("timed") == step.id:
            return False
        walk.state["timed"] = step.id  # planned: a retry after a deferral does not plan again
        due = self.send_time.when(walk.profile, walk.now_ms, within_ms, step.send.channel)
        if due <= walk.now_ms:
            return False
        walk.state["wait"] = {"kind": "send_at", "until": due}
        walk.at.set_timer(timer_kind(walk.journey.journey), due)
        self._trace(walk.profile, walk.journey, step.id, walk.now_ms, f"best time: sending at {_iso(due)}")
        return True

    def _candidate(self, profile: Profile, journey: Journey, step: Any, scores: Mapping[str, float]) -> Candidate:
        action = f"{journey.journey}.{step.id}"
        if isinstance(step, SendStep):
            return Candidate(action, step.send.channel, journey.priority, 1.0,
                             f"journey {journey.journey}, step {step.id}", step.send.template,
                             journey=journey.journey, step=step.id, offer=step.send.offer)
        spec = step.hand_to_sales
        rep = self._assign(profile, journey, step, scores)
        return Candidate(action, "sales_task", journey.priority, 1.0,
                         f"journey {journey.journey}, step {step.id}: hand to sales ({spec.assign})",
                         spec.template, journey=journey.journey, step=step.id, assignee=rep)

    def _assign(self, profile: Profile, journey: Journey, step: HandoffStep, scores: Mapping[str, float]) -> str:
        spec = step.hand_to_sales
        if spec.assign == "round_robin":
            return spec.reps[self.next_turn(f"{journey.journey}:{step.id}") % len(spec.reps)]
        facts = self.facts(profile, profile.last_ts, scores)
        for rule in spec.rules:
            if all_match(facts, rule.profile):
                return rule.rep
        return spec.default or ""

    def _branch(self, profile: Profile, journey: Journey, step: BranchStep, state: dict[str, Any], now_ms: int,
                scores: Mapping[str, float]) -> str:
        """The first case that holds: an event seen in the journey, a score, a profile fact,
        or a share of contacts (a stable bucket per contact); else the ``else`` step."""
        facts = _Facts(self, profile, now_ms, scores)
        bucket = split_bucket(profile.contact_id, journey.journey, step.id)
        cumulative = 0.0
        for case in step.branch:
            if case.percent is not None and case.event_happened is None and case.score is None \
                    and case.profile is None:
                cumulative += case.percent
                if bucket < cumulative:
                    return case.goto
            elif self._case_holds(case, profile, state, scores, facts):
                return case.goto
        return step.else_

    @staticmethod
    def _case_holds(case: Any, profile: Profile, state: dict[str, Any], scores: Mapping[str, float],
                    facts: _Facts) -> bool:
        if case.event_happened is not None:
            return case.event_happened in state.get("seen", [])
        if case.score is not None:
            return all_match({m: scores.get(m, profile.score_memory.get(m)) for m in case.score}, case.score)
        if case.profile is not None:
            return all_match(facts.get(), case.profile)
        return False

    def _capped(self, state: dict[str, Any], journey: Journey, now_ms: int) -> bool:
        assert journey.caps is not None
        since = now_ms - self._cap_window(journey)
        return sum(1 for t in state.get("sends", []) if t > since) >= journey.caps.sends

    @staticmethod
    def _cap_window(journey: Journey) -> int:
        return parse_duration(journey.caps.per) if journey.caps else 0

    def _crossed(self, profile: Profile, entry: ScoreEntry, scores: Mapping[str, float]) -> bool:
        model, threshold = entry.score.model, entry.score.crosses
        if model not in scores:
            return False
        before = profile.score_memory.get(model)
        return scores[model] >= threshold and (before is None or before < threshold)

    def _schedule_segment_check(self, profile: Profile, journey: Journey, entry: SegmentEntry,
                                at: Moment) -> None:
        """A segment on inactivity becomes true without any event: check it when it can."""
        cond = entry.segment.get("days_since_last_activity")
        if not isinstance(cond, dict) or profile.last_activity_ts is None:
            return
        days = cond.get("gte", cond.get("gt"))
        if isinstance(days, (int, float)) and not (profile.journeys.get(journey.journey) or {}).get("active"):
            at.set_timer(timer_kind(journey.journey), profile.last_activity_ts + int(days * DAY_MS) + 1)

    def _remember_dates(self, profile: Profile, properties: dict[str, Any], ts_ms: int,
                        at: Moment) -> None:
        """Dates date entries start from: those an event carries (a birthday), and the signup day."""
        for attr in self._date_attrs:
            value = properties.get(attr)
            if isinstance(value, str) and _parse_date(value) and profile.attributes.get(attr) != value[:10]:
                profile.attributes[attr] = value[:10]
                self._schedule_dates_on(profile, attr, ts_ms, at)
        if profile.first_ts is not None and "signup" in self._date_attrs and "signup" not in profile.attributes:
            profile.attributes["signup"] = _iso(profile.first_ts)[:10]
            self._schedule_dates_on(profile, "signup", ts_ms + DAY_MS, at)

    def _schedule_dates_on(self, profile: Profile, attr: str, after_ms: int, at: Moment) -> None:
        for journey in self.journeys:
            if isinstance(journey.entry, DateEntry) and journey.entry.date.attribute == attr:
                self._schedule_date(profile, journey, after_ms, at)

    def _schedule_date(self, profile: Profile, journey: Journey, after_ms: int,
                       at: Moment) -> None:
        assert isinstance(journey.entry, DateEntry)
        if (profile.journeys.get(journey.journey) or {}).get("active"):
            return  # rescheduled when it exits
        spec = journey.entry.date
        on = _parse_date(profile.attributes.get(spec.attribute))
        if on is None:
            return
        at.set_timer(timer_kind(journey.journey),
                  next_anniversary(after_ms, on, spec.at, profile.timezone, self.default_zone))

    def _trace(self, profile: Profile, journey: Journey, step: str, now_ms: int, what: str) -> None:
        self._trace_name(profile, journey.journey, step, now_ms, what)

    def _trace_name(self, profile: Profile, name: str, step: str, now_ms: int, what: str) -> None:
        if self.trace is not None:
            self.trace({"time": _iso(now_ms), "contact": profile.contact_id, "journey": name, "step": step,
                        "what": what})


def _step_number(state: dict[str, Any]) -> str:
    """A step named by its place (counted from 1) where no definition names it.

    >>> _step_number({"step": 2}), _step_number({"step": "odd"})
    ('#3', '#?')
    """
    step = state.get("step")
    return f"#{step + 1}" if isinstance(step, int) else "#?"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
