"""One decision point: participants shape the candidates, the policy picks at most one,
the caps are reserved, participants settle, and the record is built once, complete: a
decision record when something is sent, else (sampled) a no-action record with why each
candidate was held back (:mod:`~touchline.decisions.no_action`).

A contact in the global holdout gets no message (and no variant), but what it *would*
have got is worked out, so the experiments can expose it all the same (intent to treat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from touchline.decisions.moment import Moment
from touchline.decisions.no_action import HeldBack, build_no_action, no_action_id, sampled
from touchline.decisions.policy import Candidate, PolicyConfig, Suppression, arbitrate, in_holdout
from touchline.decisions.profile import Profile, Send, anonymous_of, is_known_key
from touchline.decisions.record import build_record

if TYPE_CHECKING:
    from touchline.decisions.experiment_runtime import Assignment
    from touchline.decisions.participant import Participant

#: Atomically check caps and record a send (a state store's ``reserve``).
Reserve = Callable[[Profile, Send, Mapping[str, Mapping[str, int]], Mapping[str, int]], bool]
#: What a record says about one score (see :meth:`touchline.decisions.scoring.Scorer.entry`).
ScoreEntry = Callable[[str, float], dict[str, Any]]


@dataclass
class Trigger:
    """What caused a decision point: the record's ``trigger`` and the id its decision id hashes."""

    what: dict[str, Any]
    trigger_id: str
    event_ms: int


@dataclass
class DecisionPoint:
    """The candidates of one moment and what became of them."""

    #: as proposed: a participant recognises its own candidates by identity
    proposed: list[Candidate]
    scores: dict[str, float]
    trigger: Trigger
    holdout: bool
    #: after shaping (experiment variants)
    candidates: list[Candidate] = field(default_factory=list)
    #: experiment assignments by position in ``candidates``
    marks: dict[int, list[Assignment]] = field(default_factory=dict)
    winner: Candidate | None = None
    suppressed: list[Suppression] = field(default_factory=list)
    #: what a holdout contact would have got
    would_send: Candidate | None = None
    #: the record's ``experiments`` and ``segment`` (set by the experiments when they settle)
    arms: dict[str, str] | None = None
    segment: dict[str, str] | None = None
    #: (action, channel) -> what became of a held-back journey step (deferred to when, skipped)
    step_notes: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def lead(self) -> float | None:
        return self.scores.get("lead")

    def winner_marks(self) -> list[Assignment]:
        """The experiment assignments of the candidate that won."""
        return next((self.marks.get(i, []) for i, c in enumerate(self.candidates) if c is self.winner), [])


class Arbiter:
    """Decides the decision points of one batch."""

    def __init__(self, policy: PolicyConfig, participants: Sequence[Participant], reserve: Reserve,
                 score_entry: ScoreEntry, no_action_share: float = 1.0) -> None:
        self.policy = policy
        self.participants = participants
        self.reserve = reserve
        self.score_entry = score_entry
        #: share of the points where nothing is sent that get a no-action record
        self.no_action_share = no_action_share

    def decide(self, at: Moment, proposed: list[Candidate], scores: dict[str, float],
               trigger: Trigger) -> DecisionPoint | None:
        """Arbitrate, reserve, settle and record; None when nothing was proposed."""
        if not proposed:
            return None
        policy = self.policy
        point = DecisionPoint(proposed, scores, trigger,
                              in_holdout(at.profile.contact_id, policy.holdout_name, policy.holdout_share),
                              candidates=proposed)
        if not point.holdout:  # a holdout contact gets no message, so no variant either
            for participant in self.participants:
                participant.shape(at, point)
        self._arbitrate(at, point)
        self._reserve(at, point)
        for s in point.suppressed:
            at.outcome.suppressed[s.reason] += 1
        for participant in self.participants:
            participant.settle(at, point)
        if point.winner is not None:
            at.outcome.decided[(point.winner.action, point.winner.channel)] += 1
            at.outcome.decisions.append(self._record(at, point))
        else:
            self._no_action(at, point)
        return point

    def _arbitrate(self, at: Moment, point: DecisionPoint) -> None:
        profile, policy = at.profile, self.policy
        point.winner, point.suppressed = arbitrate(point.candidates, profile, at.now_ms, policy, point.holdout)
        if point.holdout and profile.known and policy.holdout_name not in profile.exposures:
            point.would_send = arbitrate(point.candidates, profile, at.now_ms, policy, False)[0]

    def _reserve(self, at: Moment, point: DecisionPoint) -> None:
        """The caps are checked and the send recorded atomically, across workers and processes."""
        winner, policy = point.winner, self.policy
        if winner is not None and not self.reserve(at.profile, Send(at.now_ms, winner.channel, winner.action),
                                                   policy.caps, policy.global_caps):
            point.suppressed.append(Suppression(winner.action, winner.channel, "cap_reserved_elsewhere"))
            point.winner = None

    def _no_action(self, at: Moment, point: DecisionPoint) -> None:
        """Every candidate was held back: counted, and recorded if its id is in the sampled share."""
        share = self.no_action_share
        record_id = no_action_id(at.profile.contact_id, point.trigger.trigger_id) if share > 0 else ""
        recorded = share > 0 and sampled(record_id, share)
        at.outcome.no_action_points["true" if recorded else "false"] += 1
        if recorded:
            at.outcome.no_actions.append(self._no_action_record(at, point, record_id))
            at.outcome.no_action_keys.append(at.profile.key)

    def _no_action_record(self, at: Moment, point: DecisionPoint, record_id: str) -> dict[str, Any]:
        profile, trigger, policy = at.profile, point.trigger, self.policy
        would_send = point.would_send
        if point.holdout and would_send is None:  # what the holdout kept from the contact (worked out once)
            would_send = arbitrate(point.candidates, profile, at.now_ms, policy, False)[0]
        held = HeldBack(
            record_id=record_id, contact=profile.contact_id,
            anonymous_id=None if is_known_key(profile.key) else anonymous_of(profile.key),
            trigger=trigger.what, event_time_ms=trigger.event_ms,
            decision_time_ms=at.now_ms, holdout=point.holdout,
            experiments={**(point.arms or {}), policy.holdout_name: "holdout" if point.holdout else "treatment"},
            segment=point.segment or {},
            scores={name: self.score_entry(name, p) for name, p in sorted(point.scores.items())})
        return build_no_action(held, point.candidates, point.suppressed, point.step_notes, would_send)

    def _record(self, at: Moment, point: DecisionPoint) -> dict[str, Any]:
        assert point.winner is not None
        trigger = point.trigger
        return build_record(
            contact=at.profile.contact_id,
            chosen=point.winner,
            suppressed=point.suppressed,
            scores={name: self.score_entry(name, p) for name, p in sorted(point.scores.items())},
            trigger=trigger.what,
            trigger_id=trigger.trigger_id,
            event_time_ms=trigger.event_ms,
            decision_time_ms=at.now_ms,
            experiment={"name": self.policy.holdout_name, "arm": "treatment"},
            experiments=point.arms,
            segment=point.segment,
            step_notes=point.step_notes,
        )
