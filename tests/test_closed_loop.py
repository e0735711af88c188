"""The closed-loop simulator: the natural stream untouched, reactions valid and in time,
deterministic, fatigue that unsubscribes, and a true lift that the realised reactions agree with."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any, Iterator

import orjson
import pytest

from touchline.connectors.closed_loop import ClosedLoopSimulator, EffectSpec, closed_loop_source
from touchline.connectors.simulator import DAY_MS, HOUR_MS, Simulator, SimulatorSpec
from touchline.decisions.events import Event, parse_event

SPEC = SimulatorSpec(seed=3, contacts=60, days=6, malformed_rate=0.01)
SURE = EffectSpec(base=0.9)  # every message to a reachable person sells


def decision(person: int | str, at: int, channel: str = "email", template: str = "t1",
             decision_id: str | None = None, **extra: Any) -> dict[str, Any]:
    contact = person if isinstance(person, str) else f"c-{person}"
    return {"decision_id": decision_id or f"d-{contact}-{channel}-{at}", "contact_id": contact,
            "channel": channel, "action": "cart_reminder", "template": template, "decision_time_ms": at,
            **extra}


def pull_until(stream: Iterator[bytes], ts_ms: int) -> list[bytes]:
    """Lines of the stream up to the first valid event at or after ``ts_ms``."""
    out = []
    for line in stream:
        out.append(line)
        event = parse_event(line)
        if isinstance(event, Event) and event.ts_ms >= ts_ms:
            break
    return out


def reactions(lines: list[bytes]) -> list[Event]:
    events = [parse_event(line) for line in lines if b'"react-' in line]
    assert all(isinstance(e, Event) for e in events)
    return events  # type: ignore[return-value]


def reachable_people(spec: SimulatorSpec, before_ms: int) -> list[int]:
    """The people who have not churned by ``before_ms``."""
    return [i for i, t in enumerate(Simulator(spec).traits()) if t.churn_at_ms is None or t.churn_at_ms > before_ms]


def reachable_person(spec: SimulatorSpec, before_ms: int) -> int:
    return reachable_people(spec, before_ms)[0]


# ------------------------------------------------------------------ stream
def test_without_reactions_the_stream_is_the_open_loop_one_byte_for_byte():
    assert list(ClosedLoopSimulator(SPEC).lines()) == list(Simulator(SPEC).lines())


def run_with_decisions(spec: SimulatorSpec, effects: EffectSpec, at_ms: int,
                       decisions: list[dict[str, Any]]) -> tuple[ClosedLoopSimulator, list[bytes]]:
    sim = ClosedLoopSimulator(spec, effects)
    stream = sim.lines()
    lines = pull_until(stream, at_ms)
    sim.react(decisions)
    return sim, lines + list(stream)


def test_reactions_are_valid_events_merged_in_time_order():
    at = SPEC.start_ms + DAY_MS
    people = reachable_people(SPEC, at + 5 * DAY_MS)[:3]
    decisions = [decision(p, at, channel) for p, channel in zip(people, ("email", "sms", "push"))]
    sim, lines = run_with_decisions(SPEC, SURE, at, decisions)
    natural = [line for line in lines if b'"react-' not in line]
    assert natural == list(Simulator(SPEC).lines())
    events = [e for e in map(parse_event, lines) if isinstance(e, Event)]
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    assert len({e.event_id for e in events}) == len(events)
    mine = reactions(lines)
    assert {e.type for e in mine} >= {"page_view", "purchase", "email_open", "email_click"}
    for e in mine:
        raw = orjson.loads(next(line for line in lines if e.event_id.encode() in line))
        assert isinstance(raw["ts"], int) and e.ts_ms > at
        assert e.contact_id in {f"c-{p}" for p in people}
        if e.type == "purchase":
            assert e.properties["currency"] == "EUR" and e.properties["value"] > 0
            assert e.properties["order_id"].startswith("ro-")
        elif e.type == "page_view":
            assert e.properties["url"].startswith("/landing") and e.properties["decision_id"]
        else:
            assert e.channel in {"email", "sms", "push"} and e.properties["decision_id"]
    assert all(m.caused for m in sim.messages())
    assert sum(e.type == "purchase" for e in mine) == len(people)


def test_a_decision_reacts_once_and_strangers_and_holdouts_are_ignored():
    at = SPEC.start_ms + DAY_MS
    person = reachable_person(SPEC, at + 5 * DAY_MS)
    sim = ClosedLoopSimulator(SPEC, SURE)
    stream = sim.lines()
    lines = pull_until(stream, at)
    once = decision(person, at)
    sim.react([once, dict(once)])
    sim.react([once])
    sim.react([decision("c-999999", at), decision("anon-7", at), decision("c-01", at), decision("", at),
               decision(person, at, decision_id="held", experiments={"global_holdout": "holdout"}),
               decision(person, at, decision_id="unsent", sent=False)])
    lines += list(stream)
    assert [m.decision_id for m in sim.messages()] == [once["decision_id"]]
    mine = reactions(lines)
    assert {e.contact_id for e in mine} == {f"c-{person}"}
    assert sum(e.type == "purchase" for e in mine) == 1


def test_same_spec_and_decisions_at_the_same_positions_give_the_same_bytes():
    at = SPEC.start_ms + 2 * DAY_MS
    decisions = [decision(p, at, ch) for p, ch in zip(range(0, 60, 7), itertools.cycle(("email", "sms", "push")))]
    _, first = run_with_decisions(SPEC, EffectSpec(), at, decisions)
    _, again = run_with_decisions(SPEC, EffectSpec(), at, decisions)
    assert first == again
    assert any(b'"react-' in line for line in first)


def test_reactions_after_the_period_are_dropped():
    late = SPEC.start_ms + int(SPEC.days * DAY_MS) - HOUR_MS
    person = reachable_person(SPEC, late + 1)
    _, lines = run_with_decisions(SPEC, EffectSpec(base=0.9, delay_mean_ms=30 * DAY_MS), late,
                                  [decision(person, late)])
    assert all(e.ts_ms < late + HOUR_MS for e in reactions(lines))
    assert not any(e.type == "purchase" for e in reactions(lines))


# ----------------------------------------------------------------- fatigue
def test_many_messages_in_a_week_make_a_person_unsubscribe_and_stop_the_effect():
    spec = SimulatorSpec(seed=3, contacts=60, days=10)
    start = spec.start_ms + DAY_MS
    person = reachable_person(spec, start + 5 * DAY_MS)
    sim = ClosedLoopSimulator(spec)
    sim.react([decision(person, start + k * 4 * HOUR_MS) for k in range(30)])
    sim.react([decision(person, start + 29 * 4 * HOUR_MS + 1, channel="sms")])
    lines = list(sim.lines())
    assert len({e.event_id for e in reactions(lines)}) == len(reactions(lines))
    unsubscribes = [e for e in reactions(lines) if e.type == "unsubscribe" and e.channel == "email"]
    assert len(unsubscribes) == 1
    emails = [m for m in sim.messages() if m.channel == "email"]
    later = [m for m in emails if m.decision_ms >= unsubscribes[0].ts_ms]
    assert later and all(m.u == 0 for m in later)
    assert all(m.u > 0 for m in emails if m.decision_ms < unsubscribes[0].ts_ms)
    assert [m.u > 0 for m in sim.messages() if m.channel == "sms"] == [True]  # still reads SMS


def test_derived_ids_stay_inside_the_event_contract():
    at = SPEC.start_ms + DAY_MS
    person = reachable_person(SPEC, at + 5 * DAY_MS)
    _, lines = run_with_decisions(SPEC, SURE, at, [decision(person, at, decision_id="x" * 300)])
    assert reactions(lines) and all(len(e.event_id) <= 256 for e in reactions(lines))


# ------------------------------------------------------------------- truth
def natural_by_person(lines: list[bytes], seed: int) -> dict[int, list[int]]:
    """Natural purchase times per person, read from the event ids ("sim-<seed>-<index>-<n>")."""
    out: dict[int, list[int]] = defaultdict(list)
    for line in lines:
        event = parse_event(line)
        if isinstance(event, Event) and event.type == "purchase" and event.event_id.startswith(f"sim-{seed}-"):
            out[int(event.event_id.split("-")[2])].append(event.ts_ms)
    return out


def outcome(person: int, exposed_at_ms: int, window_ms: int, arm: str = "treatment",
            experiment: str = "global_holdout", **segment: str) -> dict[str, Any]:
    return {"kind": "outcome", "experiment": experiment, "arm": arm, "baseline": "holdout",
            "contact_id": f"c-{person}", "exposed_at_ms": exposed_at_ms, "window_ms": window_ms,
            "segment": segment, "converted": False, "converted_at_ms": None, "value": 0.0}


def test_true_lift_of_a_hand_built_case():
    spec = SimulatorSpec(seed=4, contacts=200, days=20, malformed_rate=0.0)
    effects = EffectSpec(base=0.2, intent_gain=0.0, preferred_channel_boost=1.0, template_multipliers=(("t2", 1.5),))
    sim = ClosedLoopSimulator(spec, effects)
    lines = list(sim.lines())
    naturals = natural_by_person(lines, spec.seed)
    unsubscribed = {int(e.event_id.split("-")[2]) for e in map(parse_event, lines)
                    if isinstance(e, Event) and e.type == "unsubscribe"}
    day = spec.start_ms + 2 * DAY_MS
    window = 10 * DAY_MS
    traits = sim.traits()

    def ok(i: int) -> bool:
        return traits[i].churn_at_ms is None and i not in unsubscribed

    a = next(i for i in range(spec.contacts) if ok(i) and not any(day < t <= day + window for t in naturals[i]))
    b = next(i for i in range(spec.contacts) if ok(i) and any(spec.start_ms + 3 * DAY_MS < t for t in naturals[i]))
    b_bought = next(t for t in naturals[b] if spec.start_ms + 3 * DAY_MS < t)
    c = next(i for i in range(spec.contacts) if ok(i) and i not in (a, b) and not naturals[i])
    b_exposed = b_bought - 2 * DAY_MS
    sim.react([decision(a, day + DAY_MS), decision(a, day + 2 * DAY_MS, template="t2"),
               decision(a, day + 12 * DAY_MS),  # after the window: not part of it
               decision(b, b_exposed), decision(c, day)])
    by_person = {p: [m for m in sim.messages() if m.person == p] for p in (a, b, c)}
    assert [m.u for m in by_person[a]] == [0.2, 0.2 * 1.5, 0.2]
    assert all(m.caused_at_ms <= day + window for m in by_person[a][:2])

    lifts = sim.true_lift([
        outcome(a, day, window, lead_band="low", lifecycle="prospect"),
        outcome(b, b_exposed, 5 * DAY_MS, lead_band="high", lifecycle="prospect"),  # bought anyway: tau 0
        outcome(c, day, 60_000, lead_band="high", lifecycle="prospect"),  # its purchase would come too late
        outcome(a, day, window, arm="holdout", lead_band="low"),
        outcome(a, day, window, experiment="template_test", lead_band="low"),
        {**outcome(a, day, window), "kind": "exposure"},
    ])
    tau_a = 1 - 0.8 * 0.7
    assert sim.tau(a, day, window) == pytest.approx(tau_a)
    assert sim.tau(b, b_exposed, 5 * DAY_MS) == 0.0
    assert lifts[("all", "all")].n == 3 and lifts[("all", "all")].lift == pytest.approx(tau_a / 3)
    assert lifts[("lead_band", "low")].lift == pytest.approx(tau_a) and lifts[("lead_band", "low")].n == 1
    assert lifts[("lead_band", "high")].lift == 0.0 and lifts[("lead_band", "high")].n == 2
    assert lifts[("lifecycle", "prospect")].lift == pytest.approx(tau_a / 3)


def test_realised_caused_conversions_agree_with_the_true_lift():
    """A synthetic experiment without the engine: everyone treated once at t0; the share
    that bought because of the message and would not have anyway, read off the stream,
    is within 3 standard errors of the true lift."""
    spec = SimulatorSpec(seed=5, contacts=2000, days=12)
    t0, window = spec.start_ms + 3 * DAY_MS, 7 * DAY_MS
    channels = itertools.cycle(("email", "sms", "push"))
    sim, lines = run_with_decisions(spec, EffectSpec(), t0,
                                    [decision(i, t0, next(channels)) for i in range(spec.contacts)])
    naturals = natural_by_person(lines, spec.seed)
    caused = {int(e.contact_id[2:]) for e in reactions(lines)  # type: ignore[index]
              if e.type == "purchase" and t0 < e.ts_ms <= t0 + window}
    realised = [i in caused and not any(t0 < t <= t0 + window for t in naturals[i]) for i in range(spec.contacts)]
    traits = sim.traits()
    outcomes = [outcome(i, t0, window, lead_band="high" if traits[i].intent >= 0.5 else "low")
                for i in range(spec.contacts)]
    truth = sim.true_lift(outcomes)
    taus = [sim.tau(i, t0, window) for i in range(spec.contacts)]
    se = math.sqrt(sum(t * (1 - t) for t in taus)) / spec.contacts
    share = sum(realised) / spec.contacts
    assert truth[("all", "all")].n == spec.contacts and truth[("all", "all")].lift > 0.05
    assert abs(share - truth[("all", "all")].lift) < 3 * se
    assert truth[("lead_band", "high")].lift > truth[("lead_band", "low")].lift


def test_the_simulator_source_serves_a_closed_loop():
    sim = ClosedLoopSimulator(SimulatorSpec(seed=1, contacts=5, days=2))
    source = closed_loop_source(sim, batch_size=50)
    part = source.build_part("events", "simulator", None)
    batch = part.next_batch()[0]
    assert batch.lines == list(Simulator(sim.spec).lines())[:50]
    assert source.spec is sim.spec
