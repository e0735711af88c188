"""What one micro-batch did: the tallies the metrics and the summary read, once per batch.

The decision loop only adds to a :class:`BatchOutcome`; the service around it reads the
outcome after the batch (and folds in the outcome of a redo of conflicted profiles), so no
counter outlives its batch and nothing outside ``decisions/`` resets one.

>>> a, b = BatchOutcome(), BatchOutcome()
>>> a.by_type["purchase"] += 1; b.by_type["purchase"] += 2; b.duplicates = 1
>>> a.absorb(b); a.by_type["purchase"], a.duplicates
(3, 1)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from touchline.decisions.champion import Drift


@dataclass
class JourneyTallies:
    """Journey entries, exits, sends and held-back steps (journey and step names come from files)."""

    entries: Counter[str] = field(default_factory=Counter)  # journey
    exits: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, reason)
    sends: Counter[tuple[str, str]] = field(default_factory=Counter)  # (journey, step)
    suppressed: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (journey, step, deferred|skipped)

    def absorb(self, other: JourneyTallies) -> None:
        self.entries.update(other.entries)
        self.exits.update(other.exits)
        self.sends.update(other.sends)
        self.suppressed.update(other.suppressed)


@dataclass
class ExperimentTallies:
    """Exposures, outcomes, conversions and their records (the experiments output)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (experiment, arm)
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (experiment, arm, converted)
    conversions: Counter[str] = field(default_factory=Counter)  # attributed: "true" / "false"
    #: (model, channel) -> conversions credited (fractional: a float sum, not a Counter's int counts)
    credit: defaultdict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    #: (model, channel) -> value credited
    credit_value: defaultdict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    choices: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (split, arm, explored) of bandits

    def absorb(self, other: ExperimentTallies) -> None:
        self.records.extend(other.records)
        self.exposures.update(other.exposures)
        self.outcomes.update(other.outcomes)
        self.conversions.update(other.conversions)
        self.choices.update(other.choices)
        for sums, more in ((self.credit, other.credit), (self.credit_value, other.credit_value)):
            for key, value in more.items():
                sums[key] += value


@dataclass
class BatchOutcome:
    """Everything one run of the decision loop over a batch produced, besides changed profiles."""

    #: dead letters (late events) and the profile each came from (a redone profile's are made again)
    dead: list[dict[str, Any]] = field(default_factory=list)
    dead_keys: list[str] = field(default_factory=list)
    #: internal_error dead letters
    errors: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    #: no-action records (``audit.no_action_share``) and the profile each came from
    no_actions: list[dict[str, Any]] = field(default_factory=list)
    no_action_keys: list[str] = field(default_factory=list)
    #: decision points where every candidate was held back, by whether one was recorded ("true", "false")
    no_action_points: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    #: (channel, outcome, linked to a decision id) -> feedback events applied
    feedback: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    decided: Counter[tuple[str, str]] = field(default_factory=Counter)
    timers_fired: Counter[str] = field(default_factory=Counter)
    labelled: Counter[tuple[str, str]] = field(default_factory=Counter)
    exp: ExperimentTallies = field(default_factory=ExperimentTallies)
    journeys: JourneyTallies = field(default_factory=JourneyTallies)
    #: model -> label delays (seconds, event time) of the labels resolved in this batch
    label_delays: dict[str, list[float]] = field(default_factory=dict)
    drifts: list[Drift] = field(default_factory=list)
    #: model -> every score it gave (the score histogram)
    scores: dict[str, list[float]] = field(default_factory=dict)
    duplicates: int = 0
    #: where each event ignored as a replay was read (the API says which), and its profile
    duplicated: list[str] = field(default_factory=list)
    duplicated_keys: list[str] = field(default_factory=list)
    #: identity of each applied event: known, anonymous_resolved or anonymous_unresolved
    identities: Counter[str] = field(default_factory=Counter)
    #: anonymous ids linked to a known contact in this batch
    merges: int = 0
    #: whole days between a contact's consecutive purchases (capped at 10 years): the repeat-purchase
    #: rhythm a churn horizon should be set against
    purchase_gap_days: Counter[int] = field(default_factory=Counter)
    #: profiles that saw their first event, by identity (known, anonymous)
    new_ids: Counter[str] = field(default_factory=Counter)
    #: (event type, attribute) -> events without an attribute the decisions rely on
    missing: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: time spent in model predictions (the "score" stage; the rest of the loop is "policy")
    score_ns: int = 0
    #: time the loop took in all (set by the caller, which also times the reservations in it)
    run_ns: int = 0

    def drop_profiles(self, keys: set[str], key_of: Callable[[str], str]) -> None:
        """Forget the decisions, no-action records and dead letters of profiles that were not
        written (they are redone)."""
        self.decisions = [d for d in self.decisions if key_of(d["contact_id"]) not in keys]
        self.dead, self.dead_keys = _without(self.dead, self.dead_keys, keys)
        self.no_actions, self.no_action_keys = _without(self.no_actions, self.no_action_keys, keys)
        self.exp.records = [r for r in self.exp.records if key_of(r["contact_id"]) not in keys]
        self.duplicated, self.duplicated_keys = _without(self.duplicated, self.duplicated_keys, keys)

    def absorb(self, other: BatchOutcome) -> None:
        """Add a redo's outcome to this one."""
        for name in ("dead", "dead_keys", "errors", "decisions", "no_actions", "no_action_keys", "drifts",
                     "duplicated", "duplicated_keys"):
            getattr(self, name).extend(getattr(other, name))
        for name in ("by_type", "feedback", "suppressed", "decided", "timers_fired", "labelled", "identities",
                     "new_ids", "missing", "purchase_gap_days", "no_action_points"):
            getattr(self, name).update(getattr(other, name))
        for name in ("duplicates", "merges", "score_ns", "run_ns"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.exp.absorb(other.exp)
        self.journeys.absorb(other.journeys)
        for target, more in ((self.label_delays, other.label_delays), (self.scores, other.scores)):
            for model, values in more.items():
                target.setdefault(model, []).extend(values)


T = TypeVar("T")


def _without(records: list[T], keys_of: list[str], keys: set[str]) -> tuple[list[T], list[str]]:
    """``records`` (each from the profile beside it in ``keys_of``) without those of ``keys``."""
    kept = [(r, k) for r, k in zip(records, keys_of) if k not in keys]
    return [r for r, _ in kept], [k for _, k in kept]
