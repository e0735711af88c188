"""The no-action record: the audit trail of a decision point where every candidate was held back.

A decision record exists only when something is sent, so without this record "why did this
contact get nothing?" has no answer. It lists every candidate of the point with the reason
it was held back (the reason codes ``touchline_suppressions_total`` counts), and goes to an
output of its own: never the decisions output, which channel connectors consume.

``audit.no_action_share`` records all such points (1.0) or a share of them. The id is a
stable hash of contact and trigger in a namespace of its own (never equal to a decision id),
and the sampling is decided on it, so every run, worker and process records the same points.

>>> rid = no_action_id("c1", "e-17")
>>> rid
'5b5290b5acf64e69218163ce84c354fe'
>>> sampled(rid, 1.0), sampled(rid, 0.0), sampled(rid, 0.36), sampled(rid, 0.35)
(True, False, True, False)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from touchline.decisions.policy import Candidate, Suppression
from touchline.decisions.record import iso_ms

NO_ACTION_SCHEMA_VERSION = 1


class AuditSettings(BaseModel):
    """``[audit]``: what the engine records beside its decisions."""

    model_config = ConfigDict(extra="forbid")

    no_action_share: float = Field(
        default=1.0, ge=0.0, le=1.0, description="share of the decision points where every candidate was held back "
        "that get a no-action record (1: all, 0: none); sampled by a stable hash of contact and trigger")


def no_action_id(contact: str, trigger_id: str) -> str:
    """Deterministic id of the no-action record of ``contact`` at ``trigger_id``."""
    return hashlib.blake2b(f"no_action\x1f{contact}\x1f{trigger_id}".encode(), digest_size=16).hexdigest()


def sampled(record_id: str, share: float) -> bool:
    """Whether a record is within ``share``: its id's first 64 bits as a number in [0, 1)."""
    return share >= 1.0 or int(record_id[:16], 16) / 2**64 < share


@dataclass(frozen=True, slots=True)
class HeldBack:
    """What the record says about one decision point besides its candidates."""

    #: the record's :func:`no_action_id`
    record_id: str
    contact: str
    #: the anonymous id of a visitor not yet linked to a contact (None for a known contact)
    anonymous_id: str | None
    trigger: dict[str, Any]
    event_time_ms: int
    decision_time_ms: int
    holdout: bool
    experiments: dict[str, str]
    segment: dict[str, str]
    scores: dict[str, dict[str, Any]]


def build_no_action(point: HeldBack, candidates: Sequence[Candidate], suppressed: Sequence[Suppression],
                    step_notes: dict[tuple[str, str], str] | None = None,
                    would_send: Candidate | None = None) -> dict[str, Any]:
    """Assemble the no-action record: ``suppressed`` says why each of ``candidates`` was held
    back (matched by action and channel), ``step_notes`` what a journey did with a held-back
    step, ``would_send`` what a contact in the holdout would have been sent."""
    record: dict[str, Any] = {
        "schema_version": NO_ACTION_SCHEMA_VERSION,
        "kind": "no_action",
        "no_action_id": point.record_id,
        "contact_id": point.contact,
        "candidates": candidate_entries(candidates, suppressed, step_notes or {}),
        "holdout": point.holdout,
        "experiments": point.experiments,
        "segment": point.segment,
        "scores": point.scores,
        "trigger": point.trigger,
        "event_time": (event_time := iso_ms(point.event_time_ms)),
        "decision_time": event_time if point.decision_time_ms == point.event_time_ms else iso_ms(point.decision_time_ms),
        "event_time_ms": point.event_time_ms,
        "decision_time_ms": point.decision_time_ms,
    }
    if point.anonymous_id is not None:
        record["anonymous_id"] = point.anonymous_id
    if would_send is not None:
        record["would_send"] = {"action": would_send.action, "channel": would_send.channel}
    return record


def candidate_entries(candidates: Sequence[Candidate], suppressed: Sequence[Suppression],
                      step_notes: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """One entry per held-back candidate, in the order they were held back.

    >>> c = Candidate("cart_reminder", "sms", 80, 12.5, "cart 25.00 open for 30 min")
    >>> candidate_entries([c], [Suppression("cart_reminder", "sms", "no_consent")], {})[0]["reason"]
    'no_consent'
    """
    by_key: dict[tuple[str, str], Candidate] = {}
    for cand in candidates:
        by_key.setdefault((cand.action, cand.channel), cand)
    return [_entry(s, by_key.get((s.action, s.channel)), step_notes.get((s.action, s.channel))) for s in suppressed]


def _entry(s: Suppression, cand: Candidate | None, note: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"action": s.action, "channel": s.channel, "reason": s.reason}
    if cand is not None:
        entry.update(journey=cand.journey, step=cand.step, template=cand.template, priority=cand.priority,
                     expected_value=cand.expected_value, why=cand.why)
        if cand.offer is not None:
            entry["offer"] = cand.offer
    if note is not None:
        entry["journey_step"] = note
    return entry
