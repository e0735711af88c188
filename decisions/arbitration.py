"""One decision point: participants shape the candidates, the policy picks at most one,
the caps are reserved, participants settle, and the record is built once, complete.

A contact in the global holdout gets no message (and no variant), but what it *would*
have got is worked out, so the experiments can expose it all the same (intent to treat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from touchline.decisions.moment import Moment
from touchline.decisions.policy import Candidate, PolicyConfig, Suppression, arbitrate, in_holdout
from touchline.decisions.profile import Profile, Send
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
                 score_entry: ScoreEntry) -> None:
        self.policy = policy
        self.participants = participants
        self.reserve = reserve
        self.score_entry = score_entry

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
