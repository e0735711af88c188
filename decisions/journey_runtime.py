"""Running journeys per contact: entries, steps, waits, branches, exits. Pure logic.

A contact's place in each journey is plain data in ``profile.journeys[name]`` (so it is
saved with the profile, in Redis too, and survives a restart); every wait is a timer of
kind ``journey:<name>`` on the engine clock (event time in replay, the wall clock live).

The engine calls :meth:`JourneyRunner.on_event` after applying an event and
:meth:`JourneyRunner.on_timer` when a journey timer comes due. Both return the send
candidates of this decision point; the engine arbitrates them with its other candidates
(one message per decision point) and reports back with :meth:`JourneyRunner.settle`,
which moves each journey on: a sent step goes to the next one, a suppressed step is
deferred or skipped as the journey says. A step after a send runs at the next decision
point (1 ms later), so one moment never sends twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from touchline.decisions.journeys import (
    BranchStep, DateEntry, EventEntry, ExitStep, HandoffStep, Journey, ScoreEntry, SegmentEntry, SendStep,
    SuppressStep, WaitForStep, WaitStep, WaitUntilStep, WEEKDAYS, parse_duration,
)
from touchline.decisions.policy import Candidate, bucket, contact_zone
from touchline.decisions.profile import DAY_MS, Profile

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


def profile_facts(profile: Profile, now_ms: int, scores: dict[str, float], consent_default: dict[str, bool]
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
@dataclass
class JourneyCandidate:
    """A send step waiting for the engine's arbitration."""

    journey: str
    step: str
    candidate: Candidate


@dataclass
class Tallies:
    """What happened, for metrics (bounded labels: journey and step names come from files)."""

    entries: Counter[str] = field(default_factory=Counter)  # journey
    exits: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, reason)
    sends: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, step)
    suppressed: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (journey, step, deferred|skipped)


class JourneyRunner:
    """All configured journeys, run for one contact at a time."""

    def __init__(self, journeys: list[Journey], default_zone: str, consent_default: dict[str, bool],
                 trace: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.journeys = sorted(journeys, key=lambda j: (-j.priority, j.journey))
        self.by_name = {j.journey: j for j in self.journeys}
        self.index = {j.journey: {s.id: i for i, s in enumerate(j.steps)} for j in self.journeys}
        self.default_zone = default_zone
        self.consent_default = consent_default
        self.trace = trace
        self.tallies = Tallies()
        self._round_robin: Counter[str] = Counter()
        #: The next turn of a named round-robin counter; the engine points this at its state
        #: store, so every worker and process shares one rotation.
        self.next_turn: Callable[[str], int] = self._local_turn
        self._date_attrs = {j.entry.date.attribute for j in self.journeys if isinstance(j.entry, DateEntry)}
        #: (contact key, journey, wait step id) -> wait in ms, or None for the file's: timing experiments
        self.wait_override: Callable[[str, str, str], int | None] | None = None

    def _local_turn(self, name: str) -> int:
        turn = self._round_robin[name]
        self._round_robin[name] += 1
        return turn

    # ------------------------------------------------------------------ engine entry points
    def on_event(self, profile: Profile, event_type: str, properties: dict[str, Any], ts_ms: int,
                 scores: dict[str, float], set_timer: Callable[[str, int], None]) -> list[JourneyCandidate]:
        """An event was applied to ``profile``: exits, waits for events, entries, then steps."""
        out: list[JourneyCandidate] = []
        facts: dict[str, Any] | None = None
        self._remember_dates(profile, properties, ts_ms, set_timer)
        for journey in self.journeys:
            state = profile.journeys.get(journey.journey)
            if state is not None and state.get("active"):
                if event_type in journey.exit.goal:
                    self._exit(profile, journey, "goal", ts_ms, set_timer)
                    continue
                if event_type == "unsubscribe" and journey.exit.unsubscribed:
                    self._exit(profile, journey, "unsubscribed", ts_ms, set_timer)
                    continue
                state.setdefault("seen", [])
                if event_type not in state["seen"] and len(state["seen"]) < 64:
                    state["seen"].append(event_type)
                step = journey.steps[min(state["step"], len(journey.steps) - 1)]
                wait = state.get("wait") or {}
                if isinstance(step, WaitForStep) and wait.get("kind") == "event" and step.wait_for.event == event_type \
                        and all_match(properties, step.wait_for.where):
                    self._goto(state, journey, step.on_event, state["step"])
                    state["wait"] = None
                    self._trace(profile, journey, step.id, ts_ms, f"{event_type} arrived")
                    out += self._run(profile, journey, ts_ms, scores, set_timer)
                continue
            entry = journey.entry
            if isinstance(entry, EventEntry):
                if entry.event != event_type or not all_match(properties, entry.where):
                    continue
                if entry.profile:
                    facts = facts or profile_facts(profile, ts_ms, scores, self.consent_default)
                    if not all_match(facts, entry.profile):
                        continue
            elif isinstance(entry, SegmentEntry):
                facts = facts or profile_facts(profile, ts_ms, scores, self.consent_default)
                self._schedule_segment_check(profile, journey, entry, set_timer)
                if not all_match(facts, entry.segment):
                    continue
            elif isinstance(entry, ScoreEntry):
                if not self._crossed(profile, entry, scores):
                    continue
            else:
                continue  # date entries start from their timer
            out += self._enter(profile, journey, ts_ms, scores, set_timer)
        for model in ("lead", "churn"):
            if model in scores:
                profile.score_memory[model] = round(scores[model], 6)
        return out

    def on_scores(self, profile: Profile, scores: dict[str, float], now_ms: int,
                  set_timer: Callable[[str, int], None]) -> list[JourneyCandidate]:
        """Scores computed without an event (the inactivity check): score-crossing entries only."""
        out: list[JourneyCandidate] = []
        for journey in self.journeys:
            if isinstance(journey.entry, ScoreEntry) and self._crossed(profile, journey.entry, scores):
                out += self._enter(profile, journey, now_ms, scores, set_timer)
        for model, value in scores.items():
            profile.score_memory[model] = round(value, 6)
        return out

    def on_timer(self, profile: Profile, name: str, now_ms: int, scores: dict[str, float],
                 set_timer: Callable[[str, int], None]) -> list[JourneyCandidate]:
        """The journey's timer came due: a wait ended, a deferred send retries, or a date entry."""
        journey = self.by_name.get(name)
        if journey is None:  # a journey removed from the configuration since the timer was set
            profile.journeys.pop(name, None)
            return []
        state = profile.journeys.get(name)
        if state is None or not state.get("active"):
            entry = journey.entry
            if isinstance(entry, DateEntry):
                self._schedule_date(profile, journey, now_ms + 1, set_timer)
                return self._enter(profile, journey, now_ms, scores, set_timer)
            if isinstance(entry, SegmentEntry):
                facts = profile_facts(profile, now_ms, scores, self.consent_default)
                if all_match(facts, entry.segment):
                    return self._enter(profile, journey, now_ms, scores, set_timer)
            return []
        wait = state.get("wait") or {}
        if state["step"] >= len(journey.steps):  # the last step was a send: the journey is done
            return self._run(profile, journey, now_ms, scores, set_timer)
        step = journey.steps[state["step"]]
        if wait.get("kind") == "event" and isinstance(step, WaitForStep):
            self._goto(state, journey, step.on_timeout, state["step"])
            self._trace(profile, journey, step.id, now_ms, f"no {step.wait_for.event} before the timeout")
        elif wait.get("kind") == "time":
            self._goto(state, journey, step.next, state["step"])
        # "retry" (a deferred send) and "continue" (after a send) resume at the current step
        state["wait"] = None
        return self._run(profile, journey, now_ms, scores, set_timer)

    def settle(self, profile: Profile, proposed: list[JourneyCandidate], sent: JourneyCandidate | None,
               reasons: dict[tuple[str, str], str], now_ms: int, set_timer: Callable[[str, int], None]
               ) -> dict[tuple[str, str], str]:
        """Move each proposing journey on after arbitration: sent, deferred or skipped.

        Returns what became of each held-back step, by (action, channel), for the record."""
        handled: dict[tuple[str, str], str] = {}
        for jc in proposed:
            journey = self.by_name[jc.journey]
            state = profile.journeys.get(jc.journey)
            if state is None or not state.get("active"):
                continue
            index = state["step"]
            step = journey.steps[index]
            if jc is sent:
                self.tallies.sends[(jc.journey, jc.step)] += 1
                state["sends"] = [t for t in state.get("sends", []) if t > now_ms - self._cap_window(journey)]
                state["sends"].append(now_ms)
                state["defers"] = 0
                self._trace(profile, journey, jc.step, now_ms, f"sent {jc.candidate.channel} {jc.candidate.template}")
                self._continue_after(state, journey, index, step, now_ms, profile, set_timer)
                continue
            reason = reasons.get((jc.candidate.action, jc.candidate.channel), "arbitration")
            defers = state.get("defers", 0)
            if journey.suppressed == "defer" and defers < journey.defer_max and reason not in NEVER_DEFER:
                state["defers"] = defers + 1
                due = now_ms + parse_duration(journey.defer_for)
                state["wait"] = {"kind": "retry", "until": due}
                set_timer(timer_kind(journey.journey), due)
                self.tallies.suppressed[(jc.journey, jc.step, "deferred")] += 1
                handled[(jc.candidate.action, jc.candidate.channel)] = f"deferred to {_iso(due)}"
                self._trace(profile, journey, jc.step, now_ms, f"suppressed ({reason}): deferred {journey.defer_for}")
            else:
                state["defers"] = 0
                self.tallies.suppressed[(jc.journey, jc.step, "skipped")] += 1
                handled[(jc.candidate.action, jc.candidate.channel)] = "skipped"
                self._trace(profile, journey, jc.step, now_ms, f"suppressed ({reason}): skipped")
                self._continue_after(state, journey, index, step, now_ms, profile, set_timer)
        return handled

    # ------------------------------------------------------------------ internals
    def _continue_after(self, state: dict[str, Any], journey: Journey, index: int, step: Any, now_ms: int,
                        profile: Profile, set_timer: Callable[[str, int], None]) -> None:
        self._goto(state, journey, step.next, index)
        if state.get("active"):  # the next step runs at the next decision point
            state["wait"] = {"kind": "continue", "until": now_ms + 1}
            set_timer(timer_kind(journey.journey), now_ms + 1)

    def _enter(self, profile: Profile, journey: Journey, now_ms: int, scores: dict[str, float],
               set_timer: Callable[[str, int], None]) -> list[JourneyCandidate]:
        if not profile.known and not journey.allow_anonymous:
            return []
        previous = profile.journeys.get(journey.journey)
        if previous is not None:
            if previous.get("active"):
                return []
            last_exit = previous.get("exited")
            if last_exit is not None and (not journey.re_entry.allowed
                                          or now_ms - last_exit < parse_duration(journey.re_entry.after)):
                return []
        for other in self.journeys:  # entering pre-empts lower-priority journeys that allow it
            other_state = profile.journeys.get(other.journey)
            if (other is not journey and other_state and other_state.get("active")
                    and other.priority < journey.priority and other.exit.higher_priority):
                self._exit(profile, other, "preempted", now_ms, set_timer)
        profile.journeys[journey.journey] = {
            "active": True, "step": 0, "entered": now_ms, "wait": None, "defers": 0, "seen": [],
            "sends": (previous or {}).get("sends", []), "entries": (previous or {}).get("entries", 0) + 1,
        }
        self.tallies.entries[journey.journey] += 1
        self._trace(profile, journey, journey.steps[0].id, now_ms, "entered")
        return self._run(profile, journey, now_ms, scores, set_timer)

    def _exit(self, profile: Profile, journey: Journey, reason: str, now_ms: int,
              set_timer: Callable[[str, int], None] | None = None) -> None:
        state = profile.journeys.get(journey.journey)
        if state is None or not state.get("active"):
            return
        state.update(active=False, exited=now_ms, exit_reason=reason, wait=None)
        for key in ("seen", "defers"):
            state.pop(key, None)
        self.tallies.exits[(journey.journey, reason)] += 1
        self._trace(profile, journey, journey.steps[min(state["step"], len(journey.steps) - 1)].id, now_ms,
                    f"exited: {reason}")
        if isinstance(journey.entry, DateEntry) and set_timer is not None:
            self._schedule_date(profile, journey, now_ms + 1, set_timer)
        elif timer_kind(journey.journey) in profile.timers:
            profile.timers.pop(timer_kind(journey.journey), None)  # its pending wait is void

    def _goto(self, state: dict[str, Any], journey: Journey, target: str | None, index: int) -> None:
        if target is not None:
            state["step"] = self.index[journey.journey][target]
        elif index + 1 < len(journey.steps):
            state["step"] = index + 1
        else:
            state["step"] = len(journey.steps)  # past the end: completed

    def _run(self, profile: Profile, journey: Journey, now_ms: int, scores: dict[str, float],
             set_timer: Callable[[str, int], None]) -> list[JourneyCandidate]:
        """Run steps until one waits, proposes a send, or the journey ends."""
        state = profile.journeys[journey.journey]
        for _ in range(MAX_STEPS_AT_ONCE):
            index = state["step"]
            if index >= len(journey.steps):
                self._exit(profile, journey, "completed", now_ms, set_timer)
                return []
            step = journey.steps[index]
            name = journey.journey
            if isinstance(step, (WaitStep, WaitUntilStep)):
                if isinstance(step, WaitStep):
                    override = self.wait_override(profile.contact_id, name, step.id) if self.wait_override else None
                    due = now_ms + (step.wait_ms if override is None else override)
                else:
                    due = next_time_of_day(now_ms, step.wait_until.time, profile.timezone, self.default_zone,
                                           step.wait_until.days)
                if due <= now_ms:  # already the time of day: go straight on
                    self._goto(state, journey, step.next, index)
                    continue
                state["wait"] = {"kind": "time", "until": due}
                set_timer(timer_kind(name), due)
                self._trace(profile, journey, step.id, now_ms, f"waiting until {_iso(due)}")
                return []
            if isinstance(step, WaitForStep):
                due = now_ms + parse_duration(step.wait_for.timeout)
                state["wait"] = {"kind": "event", "until": due, "event": step.wait_for.event}
                set_timer(timer_kind(name), due)
                self._trace(profile, journey, step.id, now_ms,
                            f"waiting for {step.wait_for.event} until {_iso(due)}")
                return []
            if isinstance(step, BranchStep):
                target = self._branch(profile, journey, step, state, now_ms, scores)
                self._trace(profile, journey, step.id, now_ms, f"branch -> {target}")
                state["step"] = self.index[name][target]
                continue
            if isinstance(step, SuppressStep):
                for channel in step.suppress.channels:
                    profile.consent[channel] = False
                self._trace(profile, journey, step.id, now_ms, f"stopped {', '.join(step.suppress.channels)}")
                self._goto(state, journey, step.next, index)
                continue
            if isinstance(step, ExitStep):
                self._exit(profile, journey, "goal" if step.exit == "goal" else "completed", now_ms, set_timer)
                return []
            if isinstance(step, (SendStep, HandoffStep)):
                if journey.caps is not None and self._capped(state, journey, now_ms):
                    self.tallies.suppressed[(name, step.id, "skipped")] += 1
                    self._trace(profile, journey, step.id, now_ms, "journey cap reached: skipped")
                    self._goto(state, journey, step.next, index)
                    continue
                return [JourneyCandidate(name, step.id, self._candidate(profile, journey, step, scores))]
            raise AssertionError(f"unknown step {step!r}")
        raise RuntimeError(f"journey {journey.journey}: more than {MAX_STEPS_AT_ONCE} steps at once")

    def _candidate(self, profile: Profile, journey: Journey, step: Any, scores: dict[str, float]) -> Candidate:
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

    def _assign(self, profile: Profile, journey: Journey, step: HandoffStep, scores: dict[str, float]) -> str:
        spec = step.hand_to_sales
        if spec.assign == "round_robin":
            return spec.reps[self.next_turn(f"{journey.journey}:{step.id}") % len(spec.reps)]
        facts = profile_facts(profile, profile.last_ts, scores, self.consent_default)
        for rule in spec.rules:
            if all_match(facts, rule.profile):
                return rule.rep
        return spec.default or ""

    def _branch(self, profile: Profile, journey: Journey, step: BranchStep, state: dict[str, Any], now_ms: int,
                scores: dict[str, float]) -> str:
        facts: dict[str, Any] | None = None
        bucket = split_bucket(profile.contact_id, journey.journey, step.id)
        cumulative = 0.0
        for case in step.branch:
            if case.event_happened is not None:
                if case.event_happened in state.get("seen", []):
                    return case.goto
            elif case.score is not None:
                current = {m: scores.get(m, profile.score_memory.get(m)) for m in case.score}
                if all_match(current, case.score):
                    return case.goto
            elif case.profile is not None:
                facts = facts or profile_facts(profile, now_ms, scores, self.consent_default)
                if all_match(facts, case.profile):
                    return case.goto
            elif case.percent is not None:
                cumulative += case.percent
                if bucket < cumulative:
                    return case.goto
        return step.else_

    def _capped(self, state: dict[str, Any], journey: Journey, now_ms: int) -> bool:
        assert journey.caps is not None
        since = now_ms - self._cap_window(journey)
        return sum(1 for t in state.get("sends", []) if t > since) >= journey.caps.sends

    @staticmethod
    def _cap_window(journey: Journey) -> int:
        return parse_duration(journey.caps.per) if journey.caps else 0

    def _crossed(self, profile: Profile, entry: ScoreEntry, scores: dict[str, float]) -> bool:
        model, threshold = entry.score.model, entry.score.crosses
        if model not in scores:
            return False
        before = profile.score_memory.get(model)
        return scores[model] >= threshold and (before is None or before < threshold)

    def _schedule_segment_check(self, profile: Profile, journey: Journey, entry: SegmentEntry,
                                set_timer: Callable[[str, int], None]) -> None:
        """A segment on inactivity becomes true without any event: check it when it can."""
        cond = entry.segment.get("days_since_last_activity")
        if not isinstance(cond, dict) or profile.last_activity_ts is None:
            return
        days = cond.get("gte", cond.get("gt"))
        if isinstance(days, (int, float)) and not (profile.journeys.get(journey.journey) or {}).get("active"):
            set_timer(timer_kind(journey.journey), profile.last_activity_ts + int(days * DAY_MS) + 1)

    def _remember_dates(self, profile: Profile, properties: dict[str, Any], ts_ms: int,
                        set_timer: Callable[[str, int], None]) -> None:
        for attr in self._date_attrs:
            value = properties.get(attr)
            if isinstance(value, str) and _parse_date(value) and profile.attributes.get(attr) != value[:10]:
                profile.attributes[attr] = value[:10]
                for journey in self.journeys:
                    if isinstance(journey.entry, DateEntry) and journey.entry.date.attribute == attr:
                        self._schedule_date(profile, journey, ts_ms, set_timer)
        if profile.first_ts is not None and "signup" in self._date_attrs and "signup" not in profile.attributes:
            profile.attributes["signup"] = _iso(profile.first_ts)[:10]
            for journey in self.journeys:
                if isinstance(journey.entry, DateEntry) and journey.entry.date.attribute == "signup":
                    self._schedule_date(profile, journey, ts_ms + DAY_MS, set_timer)

    def _schedule_date(self, profile: Profile, journey: Journey, after_ms: int,
                       set_timer: Callable[[str, int], None]) -> None:
        assert isinstance(journey.entry, DateEntry)
        if (profile.journeys.get(journey.journey) or {}).get("active"):
            return  # rescheduled when it exits
        spec = journey.entry.date
        on = _parse_date(profile.attributes.get(spec.attribute))
        if on is None:
            return
        set_timer(timer_kind(journey.journey),
                  next_anniversary(after_ms, on, spec.at, profile.timezone, self.default_zone))

    def _trace(self, profile: Profile, journey: Journey, step: str, now_ms: int, what: str) -> None:
        if self.trace is not None:
            self.trace({"time": _iso(now_ms), "contact": profile.contact_id, "journey": journey.journey, "step": step,
                        "what": what})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
