"""The decision record: the audit trail of one next-best-action decision.

The id is a stable hash of what caused the decision (contact, action, channel and
the trigger), so the same input gives the same id on every run and every worker,
and a downstream sender can use it as an idempotency key.

>>> decision_id("c1", "welcome", "email", "e-17")
'9665d4246b5adaea876c7179ae05ee1d'
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from touchline.decisions.policy import Candidate, Suppression

DECISION_SCHEMA_VERSION = 1


def decision_id(contact: str, action: str, channel: str, trigger_id: str) -> str:
    """Deterministic id: same contact, action, channel and trigger give the same id."""
    key = f"{contact}\x1f{action}\x1f{channel}\x1f{trigger_id}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def iso_ms(ts_ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with milliseconds, in integers (no float division: every
    millisecond of year 9999 is exact), without a datetime: it is in every record and answer.

    >>> iso_ms(1767225600123), iso_ms(253402300799999)
    ('2026-01-01T00:00:00.123Z', '9999-12-31T23:59:59.999Z')
    """
    seconds, ms = divmod(ts_ms, 1000)
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, ms)


def build_record(
    *,
    contact: str,
    chosen: Candidate,
    suppressed: list[Suppression],
    scores: dict[str, dict[str, Any]],
    trigger: dict[str, Any],
    trigger_id: str,
    event_time_ms: int,
    decision_time_ms: int,
    experiment: dict[str, str],
    experiments: dict[str, str] | None = None,
    segment: dict[str, str] | None = None,
    step_notes: dict[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """Assemble the decision record (DESIGN.md contract). ``step_notes``: what became of a
    held-back journey step, by (action, channel): ``journey_step`` of its suppressed entry."""
    record = {
        "schema_version": DECISION_SCHEMA_VERSION,
        "decision_id": decision_id(contact, chosen.action, chosen.channel, trigger_id),
        "contact_id": contact,
        "action": chosen.action,
        "channel": chosen.channel,
        "template": chosen.template,
        "offer": chosen.offer,
        "journey": chosen.journey,
        "step": chosen.step,
        "priority": chosen.priority,
        "expected_value": chosen.expected_value,
        "scores": scores,
        "reasons": [chosen.why, f"priority {chosen.priority}, expected value {chosen.expected_value:.4g}"],
        "suppressed": [_suppressed_entry(s, step_notes) for s in suppressed],
        "experiment": experiment,
        "experiments": experiments if experiments is not None else {experiment["name"]: experiment["arm"]},
        "segment": segment or {},
        "trigger": trigger,
        "event_time": iso_ms(event_time_ms),
        "decision_time": iso_ms(decision_time_ms),
        "event_time_ms": event_time_ms,
        "decision_time_ms": decision_time_ms,
    }
    if chosen.assignee is not None:
        record["assignee"] = chosen.assignee
    return record


def _suppressed_entry(s: Suppression, step_notes: dict[tuple[str, str], str] | None) -> dict[str, str]:
    entry = {"action": s.action, "channel": s.channel, "reason": s.reason}
    note = step_notes.get((s.action, s.channel)) if step_notes else None
    if note is not None:
        entry["journey_step"] = note
    return entry
