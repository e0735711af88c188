"""Experiments at run time: variants, exposures, conversions, attribution and bandit rewards.

Pure, like the rest of ``decisions/``: a :class:`~touchline.decisions.participant.Participant`
of the decision loop, called at its decision points (``shape``: variants; ``settle``:
exposures, touches), its conversion events (``on_applied``) and its timers; it changes the
contact's profile and adds the records of the experiments output (see the README).

- **Exposure** (intent to treat): the first decision point at which a known contact
  would get a message, absent the holdout. Treated contacts get it; holdout contacts do
  not, and are exposed all the same. A timing split (waits, send_at) exposes a contact
  earlier: when its journey reaches the step whose timing the arms change, before they
  differ, so a contact that converts or leaves while its arm waits counts in its arm, and
  its window is widened by the longest hold of any arm. One exposure per contact and
  experiment.
- **Outcome**: when the exposure's window closes, on the engine clock, whether the
  contact converted in it. Outcomes are what lift is computed from.
- **Conversion**: every conversion event of a known contact, with the credit each
  attribution model gives the sent decisions before it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from touchline.decisions.attribution import MAX_TOUCHES, MODELS, Touch, attribute
from touchline.decisions.experiments import (
    GLOBAL, Bandit, ExperimentSettings, Split, Variant, assign, segment_of, timing_delays,
)
from touchline.decisions.journeys import SendStep, WaitStep, parse_duration
from touchline.decisions.lift import ALL, LiftTable
from touchline.decisions.outcome import ExperimentTallies
from touchline.decisions.participant import Participant
from touchline.decisions.policy import Candidate, PolicyConfig, eligibility
from touchline.decisions.profile import Profile, money
from touchline.decisions.record import decision_id, iso_ms
from touchline.decisions.sample_ratio import sample_ratio

if TYPE_CHECKING:
    from touchline.decisions.arbitration import DecisionPoint
    from touchline.decisions.events import Event
    from touchline.decisions.moment import Moment

__all__ = ["Assignment", "ExperimentRuntime", "ExperimentTallies"]

EXPOSURE_TIMER_PREFIX = "exp:"
TOUCH_TIMER = "touches"
SetTimer = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class Assignment:
    """A candidate's variant in one split, and the bandit tag its reward goes to."""

    split: str
    variant: str
    bandit_segment: str | None = None


class ExperimentRuntime(Participant):
    """Per worker: the settings, one bandit per adaptive split, and the lift tallies."""

    def __init__(self, settings: ExperimentSettings, holdout_name: str = GLOBAL, seed: int = 0,
                 policy: PolicyConfig | None = None) -> None:
        self.settings = settings
        #: the policy a bandit's arms are checked against (only arms that could be sent now)
        self.policy = policy or PolicyConfig()
        self.holdout_name = holdout_name
        self.conversion_types = frozenset(settings.conversion_types)
        self.window_ms = settings.window_ms
        self.bandits = {name: Bandit(name, split, seed) for name, split in settings.splits.items()
                        if split.assignment != "hash"}
        self.lift = LiftTable()
        #: (model, channel) -> [conversions, value] credited over the run (summary)
        self.credited: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.credited_value: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._waits = {
            (split.journey, step): (name, {v.name: parse_duration(v.waits[step]) for v in split.variants
                                           if step in v.waits})
            for name, split in settings.splits.items() if split.journey is not None
            for v in split.variants for step in v.waits
        }

    # ---------------------------------------------------------------- participant hooks
    def on_applied(self, at: Moment, event: Event) -> None:
        """A conversion event (of a known contact): exposures in window convert, touches get credit."""
        if event.type in self.conversion_types:
            self.on_event(at.profile, event.type, event.event_id, event.ts_ms, money(event.properties.get("value")),
                          at.outcome.exp, at.set_timer)

    def owns_timer(self, kind: str) -> bool:
        return kind == TOUCH_TIMER or kind.startswith(EXPOSURE_TIMER_PREFIX)

    def on_timer(self, at: Moment, kind: str) -> list[Candidate]:
        self.close(at.profile, kind, at.now_ms, at.outcome.exp, at.set_timer)
        return []

    def shape(self, at: Moment, point: DecisionPoint) -> None:
        """Variants: each split applied to the candidates it covers."""
        point.candidates, point.marks = self.vary(at.profile, point.candidates, point.lead, at.now_ms, self.policy,
                                                  at.outcome.exp)

    def settle(self, at: Moment, point: DecisionPoint) -> None:
        """Exposures, touches for attribution and bandits, and the record's experiments and segment."""
        arms = self.on_decision(at.profile, sent=point.winner, would_send=point.would_send,
                                marks=point.winner_marks(), trigger_id=point.trigger.trigger_id, lead=point.lead,
                                now_ms=at.now_ms, tallies=at.outcome.exp, set_timer=at.set_timer)
        point.arms, point.segment = arms["experiments"], arms["segment"]

    # ---------------------------------------------------------------- variants
    def wait_override(self, contact: str, journey: str, step: str) -> int | None:
        """A timing variant's wait for this contact, or None (the journey file's)."""
        found = self._waits.get((journey, step))
        if found is None:
            return None
        name, waits = found
        return waits.get(assign(contact, name, self.settings.splits[name]).name)

    def send_at_override(self, contact: str, journey: str, step: str) -> tuple[str, int | None] | None:
        """A send-time variant's (send_at, window ms or None: the step's) for this contact's send step,
        or None (the file's).
        A variant without ``send_at`` (a control that changes nothing) leaves the file's."""
        for name, split in self.settings.splits.items():
            if split.journey == journey and (split.step is None or split.step == step):
                timing = assign(contact, name, split).send_timing()
                if timing is not None:
                    return timing
        return None

    def timing_reached(self, at: Moment, journey: str, step: WaitStep | SendStep, lead: float | None) -> None:
        """A known contact reaches a step a timing split changes: it is exposed now, in the arm
        its hash assigns, for the conversion window plus the longest hold of any arm (both arms
        are then followed for as long from the same moment)."""
        profile = at.profile
        if not profile.known:
            return
        for name, split in self.settings.splits.items():
            delays = timing_delays(split, journey, step) if name not in profile.exposures else None
            if delays is None:
                continue
            about = {"action": f"{journey}.{step.id}" if isinstance(step, SendStep) else None,
                     "channel": step.send.channel if isinstance(step, SendStep) else None,
                     "journey": journey, "step": step.id, "decision_id": None, "sent": None}
            self._expose(profile, name, assign(profile.contact_id, name, split).name, split.baseline,
                         segment_of(profile, lead, self.settings.lead_bands), at.now_ms, at.outcome.exp,
                         at.set_timer, about, self.window_ms + max(delays.values()))

    def vary(self, profile: Profile, candidates: list[Candidate], lead: float | None, now_ms: int,
             policy: PolicyConfig, tallies: ExperimentTallies) -> tuple[list[Candidate], dict[int, list[Assignment]]]:
        """Apply each split to the candidates it covers; returns them and their assignments
        (by position in the returned list). A variant that moves a candidate onto a channel
        another candidate of the action already has is merged into it."""
        if not self.settings.splits:
            return candidates, {}
        segment = segment_of(profile, lead, self.settings.lead_bands)
        chosen: dict[str, Assignment] = {}
        out: list[Candidate] = []
        assigned: dict[int, list[Assignment]] = {}
        seen: set[tuple[str, str]] = set()
        for cand in candidates:
            marks: list[Assignment] = []
            for name, split in self.settings.splits.items():
                if not split.matches(cand):
                    continue
                if name not in chosen:
                    chosen[name] = self._choose(name, split, profile, cand, segment, now_ms, policy, tallies)
                mark = chosen[name]
                cand = _variant(split, mark.variant).apply(cand)
                marks.append(mark)
            if (cand.action, cand.channel) in seen:
                continue
            seen.add((cand.action, cand.channel))
            if marks:
                assigned[len(out)] = marks
            out.append(cand)
        return out, assigned

    def _choose(self, name: str, split: Split, profile: Profile, cand: Candidate, segment: dict[str, str],
                now_ms: int, policy: PolicyConfig, tallies: ExperimentTallies) -> Assignment:
        bandit = self.bandits.get(name)
        if bandit is None:
            return Assignment(name, assign(profile.contact_id, name, split).name)
        seg = "all" if split.segment_by == "none" else segment[split.segment_by]
        # Only arms that could be sent now: a variant on a channel without consent teaches nothing.
        arms = [v.name for v in split.variants if eligibility(v.apply(cand), profile, now_ms, policy, False) is None]
        arm, explored = bandit.choose(seg, arms or [v.name for v in split.variants])
        tallies.choices[(name, arm, "true" if explored else "false")] += 1
        return Assignment(name, arm, seg)

    # ---------------------------------------------------------------- decisions
    def on_decision(self, profile: Profile, *, sent: Candidate | None, would_send: Candidate | None,
                    marks: list[Assignment], trigger_id: str, lead: float | None, now_ms: int,
                    tallies: ExperimentTallies, set_timer: SetTimer) -> dict[str, Any]:
        """After arbitration: remember a sent decision for attribution and bandits, and
        expose the contact where this is its first chance. Returns the record's
        ``experiments`` and ``segment`` fields."""
        segment = segment_of(profile, lead, self.settings.lead_bands)
        arms = {self.holdout_name: "treatment" if sent is not None else "holdout"}
        arms.update({m.split: m.variant for m in marks})
        if not profile.known:
            return {"experiments": arms, "segment": segment}
        target = sent or would_send
        if target is not None and self.holdout_name not in profile.exposures:
            self._expose(profile, self.holdout_name, arms[self.holdout_name], "holdout", segment, now_ms, tallies,
                         set_timer, _about(profile, target, sent is not None, trigger_id))
        if sent is not None:
            self._sent(profile, sent, marks, trigger_id, segment, now_ms, tallies, set_timer)
        return {"experiments": arms, "segment": segment}

    def _sent(self, profile: Profile, sent: Candidate, marks: list[Assignment], trigger_id: str,
              segment: dict[str, str], now_ms: int, tallies: ExperimentTallies, set_timer: SetTimer) -> None:
        """A sent decision: first exposure to each split it was varied by, and a touch that
        attribution credits and a bandit's arm is rewarded through."""
        for mark in marks:
            if mark.split not in profile.exposures:
                self._expose(profile, mark.split, mark.variant, self.settings.splits[mark.split].baseline, segment,
                             now_ms, tallies, set_timer, _about(profile, sent, True, trigger_id))
        tag = [[m.split, m.bandit_segment, m.variant] for m in marks if m.bandit_segment is not None]
        self._expire_touches(profile, now_ms, set_timer)
        profile.touches.append([now_ms, decision_id(profile.contact_id, sent.action, sent.channel, trigger_id),
                                sent.channel, sent.action, tag or None, False])
        if tag and TOUCH_TIMER not in profile.timers:
            set_timer(TOUCH_TIMER, now_ms + self.window_ms)

    def _expose(self, profile: Profile, experiment: str, arm: str, baseline: str, segment: dict[str, str],
                now_ms: int, tallies: ExperimentTallies, set_timer: SetTimer, about: dict[str, Any],
                window_ms: int | None = None) -> None:
        """Expose the contact to ``experiment`` in ``arm`` now, followed for ``window_ms`` (the
        conversion window unless a timing split widens it); ``about``: what it was exposed at."""
        window = self.window_ms if window_ms is None else window_ms
        profile.exposures[experiment] = {"arm": arm, "baseline": baseline, "at": now_ms, "segment": segment,
                                         "converted_at": None, "value": 0.0}
        if window != self.window_ms:
            profile.exposures[experiment]["window_ms"] = window
        set_timer(EXPOSURE_TIMER_PREFIX + experiment, now_ms + window)
        tallies.exposures[(experiment, arm)] += 1
        tallies.records.append({
            "kind": "exposure", "experiment": experiment, "arm": arm, "baseline": baseline,
            "contact_id": profile.contact_id, "exposed_at_ms": now_ms, "exposed_at": iso_ms(now_ms),
            "window_ms": window, "segment": segment, **about,
        })

    def _window(self, exposure: dict[str, Any]) -> int:
        """An exposure's window: its own (a timing split's, widened), else the conversion window."""
        return int(exposure.get("window_ms", self.window_ms))

    # ---------------------------------------------------------------- conversions
    def on_event(self, profile: Profile, event_type: str, event_id: str, ts_ms: int, value: float,
                 tallies: ExperimentTallies, set_timer: SetTimer) -> None:
        """A conversion event of a known contact: exposures in window convert, touches get credit."""
        if event_type not in self.conversion_types or not profile.known:
            return
        self._convert_exposures(profile, ts_ms, value)
        self._expire_touches(profile, ts_ms, set_timer)
        touches = [Touch(t[0], t[1], t[2], t[3]) for t in profile.touches]
        credits = attribute(touches, ts_ms, self.window_ms, self.settings.half_life_ms)
        self._credit(credits, value, tallies)
        for t in profile.touches:  # a bandit arm is rewarded by the first conversion after it
            if t[0] < ts_ms:
                self._reward(t, True)
        tallies.records.append({
            "kind": "conversion", "contact_id": profile.contact_id, "event_id": event_id, "ts_ms": ts_ms,
            "ts": iso_ms(ts_ms), "type": event_type, "value": value,
            "credits": {m: [{"decision_id": t.decision_id, "channel": t.channel, "action": t.action,
                             "weight": round(w, 6)} for t, w in credits[m]] for m in MODELS},
        })

    def _convert_exposures(self, profile: Profile, ts_ms: int, value: float) -> None:
        """Open exposures whose window holds the conversion convert (the first conversion only)."""
        for exp in profile.exposures.values():
            if "closed" not in exp and exp["converted_at"] is None and exp["at"] < ts_ms <= exp["at"] + self._window(exp):
                exp["converted_at"], exp["value"] = ts_ms, value

    def _credit(self, credits: dict[str, list[tuple[Touch, float]]], value: float, tallies: ExperimentTallies) -> None:
        """Each attribution model's credit per channel: this batch's tallies and the run's totals."""
        for model in MODELS:
            for touch, weight in credits[model]:
                key = (model, touch.channel)
                tallies.credit[key] += weight
                tallies.credit_value[key] += weight * value
                self.credited[key] += weight
                self.credited_value[key] += weight * value
        tallies.conversions["true" if credits["last_touch"] else "false"] += 1

    # ---------------------------------------------------------------- timers
    def close(self, profile: Profile, kind: str, now_ms: int, tallies: ExperimentTallies,
              set_timer: SetTimer) -> bool:
        """Handle an experiments timer (touches expire, an exposure's window closes); False if ``kind`` is not one."""
        if kind == TOUCH_TIMER:
            self._expire_touches(profile, now_ms, set_timer)
            return True
        if not kind.startswith(EXPOSURE_TIMER_PREFIX):
            return False
        experiment = kind[len(EXPOSURE_TIMER_PREFIX):]
        exp = profile.exposures.get(experiment)
        if exp is None or "closed" in exp:
            return True
        converted = exp["converted_at"] is not None
        profile.exposures[experiment] = {"arm": exp["arm"], "closed": now_ms}
        self.lift.add(experiment, exp["arm"], exp["baseline"], exp["segment"], converted)
        tallies.outcomes[(experiment, exp["arm"], "true" if converted else "false")] += 1
        tallies.records.append({
            "kind": "outcome", "experiment": experiment, "arm": exp["arm"], "baseline": exp["baseline"],
            "contact_id": profile.contact_id, "exposed_at_ms": exp["at"], "window_ms": self._window(exp),
            "segment": exp["segment"], "converted": converted, "converted_at_ms": exp["converted_at"],
            "value": exp["value"],
        })
        return True

    def _expire_touches(self, profile: Profile, now_ms: int, set_timer: SetTimer) -> None:
        """Drop touches past the window; a bandit arm never followed by a conversion gets 0."""
        horizon = now_ms - self.window_ms
        live = [t for t in profile.touches if t[0] > horizon]
        keep = live[-MAX_TOUCHES:]  # bounded: a contact messaged very often keeps its newest touches
        for t in profile.touches:
            if t[0] <= horizon or t not in keep:
                self._reward(t, False)
        profile.touches[:] = keep
        pending = [t[0] for t in keep if t[4] and not t[5]]
        if pending:
            set_timer(TOUCH_TIMER, min(pending) + self.window_ms)
        else:
            profile.timers.pop(TOUCH_TIMER, None)

    def _reward(self, touch: list[Any], converted: bool) -> None:
        """Settle a touch's bandit arms once: 1 for a conversion after it, 0 when it leaves the window."""
        if not touch[4] or touch[5]:
            return
        touch[5] = True
        for split, seg, arm in touch[4]:
            if split in self.bandits:
                self.bandits[split].reward(seg, arm, converted)

    def summary(self) -> dict[str, Any]:
        """Lift per experiment and segment, attribution totals and bandit state, as JSON."""
        s = self.settings
        experiments = {}
        for name in self.lift.experiments():
            experiments[name] = [e.to_dict() for e in self.lift.estimates(name, s.confidence, s.min_per_arm)]
        attribution: dict[str, dict[str, dict[str, float]]] = {}
        for (model, channel), n in sorted(self.credited.items()):
            attribution.setdefault(model, {})[channel] = {
                "conversions": round(n, 3), "value": round(self.credited_value[(model, channel)], 2)}
        return {"window_ms": self.window_ms, "lift": experiments, "attribution": attribution,
                "bandits": {name: b.status() for name, b in self.bandits.items()},
                "sample_ratio": self.sample_ratios()}

    def sample_ratios(self) -> dict[str, dict[str, Any]]:
        """Per experiment assigned by hash, the contacts whose window closed in each arm against
        the shares assigned (see :mod:`touchline.decisions.sample_ratio`); bandits choose
        adaptively and have no fixed shares."""
        out = {}
        for name in self.lift.experiments():
            shares = self._assigned_shares(name)
            observed = {arm: self.lift.tally(name, arm, *ALL)[0] for arm in self.lift.arms[name]}
            found = sample_ratio(name, observed, shares) if shares else None
            if found is not None:
                out[name] = found.to_dict()
        return out

    def _assigned_shares(self, name: str) -> dict[str, float] | None:
        if name == self.holdout_name:
            share = self.policy.holdout_share
            return {"treatment": 1.0 - share, "holdout": share}
        split = self.settings.splits.get(name)
        if split is None or split.assignment != "hash":
            return None
        return {v.name: v.weight for v in split.variants}


def _variant(split: Split, name: str) -> Variant:
    return next(v for v in split.variants if v.name == name)


def _about(profile: Profile, target: Candidate, sent: bool, trigger_id: str) -> dict[str, Any]:
    """What an exposure at a decision was exposed at: the message, sent or (holdout) held back."""
    return {"action": target.action, "channel": target.channel,
            "decision_id": decision_id(profile.contact_id, target.action, target.channel, trigger_id), "sent": sent}
