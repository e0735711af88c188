"""The simulator: deterministic, well-formed, and carrying the signal the models need."""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from touchline.connectors.simulator import MALFORMED_KINDS, Simulator, SimulatorSpec
from touchline.decisions.events import Event, Rejected, parse_event
from touchline.decisions.profile import PASSIVE_TYPES

SPEC = SimulatorSpec(seed=11, contacts=400, days=21, malformed_rate=0.01)


@pytest.fixture(scope="module")
def stream():
    lines = list(Simulator(SPEC).lines())
    return lines, [parse_event(line) for line in lines]


def test_same_seed_same_bytes_other_seed_other_bytes():
    small = SimulatorSpec(seed=3, contacts=50, days=5)
    assert list(Simulator(small).lines()) == list(Simulator(small).lines())
    other = SimulatorSpec(seed=4, contacts=50, days=5)
    assert list(Simulator(small).lines()) != list(Simulator(other).lines())


def test_events_are_valid_in_time_order_and_inside_the_period(stream):
    _, parsed = stream
    events = [e for e in parsed if isinstance(e, Event)]
    assert len(events) > 10_000
    ts = [e.ts_ms for e in events]
    assert ts == sorted(ts)
    assert SPEC.start_ms <= ts[0] and ts[-1] < Simulator(SPEC).end_ms
    assert len({e.event_id for e in events}) == len(events)


def test_malformed_lines_cover_every_kind_and_are_all_rejected(stream):
    lines, parsed = stream
    rejected = [p for p in parsed if isinstance(p, Rejected)]
    share = len(rejected) / len(lines)
    assert 0.005 < share < 0.02
    assert len(rejected) >= len(MALFORMED_KINDS)
    assert {r.reason for r in rejected} == {
        "bad_json", "not_object", "missing_field", "missing_identity", "wrong_type", "bad_timestamp", "oversized"
    }


def test_both_timestamp_forms_and_unknown_types_appear(stream):
    lines, parsed = stream
    docs = [orjson.loads(line) for line, p in zip(lines, parsed) if isinstance(p, Event)]
    assert any(isinstance(d["ts"], str) for d in docs) and any(isinstance(d["ts"], int) for d in docs)
    assert any(d["type"] == "wishlist_add" for d in docs)


def test_identity_anonymous_first_then_linked_some_on_two_devices(stream):
    _, parsed = stream
    events = [e for e in parsed if isinstance(e, Event)]
    devices = defaultdict(set)
    first_seen_anonymous = set()
    seen_contacts = set()
    for e in events:
        if e.contact_id and e.anonymous_id:
            devices[e.contact_id].add(e.anonymous_id)
        if e.contact_id:
            seen_contacts.add(e.contact_id)
    identified = {e.contact_id for e in events if e.type == "identify"}
    assert len(identified) > 20
    assert any(len(d) >= 2 for d in devices.values()), "someone should use a second device"
    # every identify carries both ids, and that anonymous id browsed before it
    anon_before = defaultdict(int)
    for e in events:
        if e.contact_id is None:
            anon_before[e.anonymous_id] += 1
        elif e.type == "identify":
            first_seen_anonymous.add(anon_before[e.anonymous_id] > 0)
    assert True in first_seen_anonymous


def test_goal_events_rise_with_hidden_intent(stream):
    _, parsed = stream
    traits = {t.contact_id: t for t in Simulator(SPEC).traits()}
    goals = defaultdict(int)
    for e in parsed:
        if isinstance(e, Event) and e.contact_id and e.type in ("purchase", "form_submit"):
            goals[e.contact_id] += 1
    high = [t for t in traits.values() if t.intent > 0.4]
    low = [t for t in traits.values() if t.intent < 0.15]
    assert high and low
    rate = lambda group: sum(goals[t.contact_id] for t in group) / len(group)  # noqa: E731
    assert rate(high) > 3 * rate(low)


def test_churned_people_stop_acting(stream):
    _, parsed = stream
    traits = {t.contact_id: t for t in Simulator(SPEC).traits()}
    churned = {c for c, t in traits.items() if t.churn_at_ms is not None}
    assert churned
    for e in parsed:
        if isinstance(e, Event) and e.contact_id in churned and e.type not in PASSIVE_TYPES:
            assert e.ts_ms < traits[e.contact_id].churn_at_ms + 86_400_000, e
