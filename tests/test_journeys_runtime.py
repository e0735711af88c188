"""Journeys in the engine, driven with hand-built events on event time: the shipped
examples step by step, waits, branches, exits, re-entry, caps, arbitration with the
built-in triggers, quiet hours, and durability across a restart on Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from test_engine_step import HIGH, MIN, T0, line, run
from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.decisions.journey_runtime import JourneyRunner
from touchline.decisions.journeys import parse_journey
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.decisions.profile import DAY_MS, HOUR_MS
from touchline.batch_service import Engine
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.state.memory import MemoryStore

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "journeys"
BUILT_INS_OFF = {name: {"enabled": False} for name in ("welcome", "cart_reminder", "winback_offer", "sales_handoff")}
GOALS = frozenset({"purchase", "form_submit", "signup"})


def example(name: str):
    path = EXAMPLES / f"{name}.yaml"
    return parse_journey(path.read_text(), str(path))


def journey_engine(*journeys, built_ins: bool = False, lead: str | None = None, churn: str | None = None,
                   registry: CollectorRegistry | None = None, store=None, trace=None, **policy) -> Engine:
    cfg = PolicyConfig(holdout_share=0.0, **({} if built_ins else {"actions": BUILT_INS_OFF}), **policy)
    runner = JourneyRunner(list(journeys), cfg.quiet_hours.default_timezone, cfg.consent_default, trace)
    models = {"lead": ModelConfig(name="lead", **({"estimator": lead} if lead else {})),
              "churn": ModelConfig(name="churn", **({"estimator": churn} if churn else {}))}
    core = DecisionCore(cfg, models, LabelSettings(7.0, 7.0, GOALS), journeys=runner)
    return Engine(store or MemoryStore(), core, EngineMetrics(registry or CollectorRegistry()))


def steps(decisions: list[dict]) -> list[tuple[str, str, str]]:
    return [(d["journey"], d["step"], d["channel"]) for d in decisions]


def advance(e: Engine, until_ms: int, every_ms: int = HOUR_MS) -> list[dict]:
    """Move event time forward in steps (as idle ticks would), collecting decisions."""
    out: list[dict] = []
    t = e.clock.now()
    while t < until_ms:
        t = min(until_ms, t + every_ms)
        out += run(e, [], advance_to=t)
    return out


def test_welcome_series_sends_three_emails_over_five_days():
    e = journey_engine(example("welcome"))
    got = run(e, [line("s1", "signup", T0, "c1")])
    assert steps(got) == [("welcome", "welcome", "email")]
    assert got[0]["template"] == "welcome/1" and got[0]["action"] == "welcome.welcome"
    later = advance(e, T0 + 6 * DAY_MS)
    assert steps(later) == [("welcome", "benefits", "email"), ("welcome", "first_purchase_offer", "email")]
    assert later[0]["event_time"] == "2026-01-07T12:00:00.001Z"  # two days after the first send
    assert later[1]["offer"] == "welcome-15"
    state = e.store.load(["c1"])["c1"].journeys["welcome"]
    assert not state["active"] and state["exit_reason"] == "completed"


def test_abandoned_cart_switches_channel_when_the_email_is_not_opened():
    e = journey_engine(example("abandoned_cart"))
    run(e, [line("s1", "signup", T0 - DAY_MS, "c1"),
            line("p1", "consent_update", T0 - DAY_MS + 1, "c1", channel="push", properties={"granted": True}),
            line("a1", "add_to_cart", T0, "c1", properties={"value": 40})])
    got = advance(e, T0 + 2 * DAY_MS)
    assert steps(got) == [("abandoned_cart", "reminder", "email"), ("abandoned_cart", "offer_push", "push")]
    assert got[0]["event_time"] == "2026-01-05T12:30:00.000Z"
    assert got[1]["event_time"] == "2026-01-06T12:30:00.001Z"  # the 24 h timeout, then the switch


def test_abandoned_cart_opened_email_gets_the_offer_by_email_and_purchase_ends_it():
    reg = CollectorRegistry()
    e = journey_engine(example("abandoned_cart"), registry=reg)
    run(e, [line("s1", "signup", T0 - 3 * DAY_MS, "c1"), line("a1", "add_to_cart", T0, "c1", properties={"value": 40})])
    assert steps(advance(e, T0 + HOUR_MS)) == [("abandoned_cart", "reminder", "email")]
    run(e, [line("o1", "email_open", T0 + 2 * HOUR_MS, "c1")])
    got = advance(e, T0 + 3 * DAY_MS)
    assert steps(got) == [("abandoned_cart", "offer_email", "email")]
    assert got[0]["event_time"] >= "2026-01-06T12:30:00"  # deferred until the email cap (1 per 24 h) allowed it
    assert reg.get_sample_value("touchline_journey_steps_suppressed_total",
                                {"journey": "abandoned_cart", "step": "offer_email", "handling": "deferred"}) >= 1
    run(e, [line("a2", "add_to_cart", T0 + 20 * DAY_MS, "c1", properties={"value": 10}),
            line("b2", "purchase", T0 + 20 * DAY_MS + 5 * MIN, "c1", properties={"value": 10})])
    assert advance(e, T0 + 21 * DAY_MS) == []  # bought before the reminder: the goal ends the journey
    assert reg.get_sample_value("touchline_journey_conversions_total", {"journey": "abandoned_cart"}) == 1
    assert reg.get_sample_value("touchline_journey_entries_total", {"journey": "abandoned_cart"}) == 2


def test_re_entry_waits_for_its_interval_and_anonymous_visitors_do_not_enter():
    e = journey_engine(example("abandoned_cart"))
    run(e, [line("s1", "signup", T0 - 3 * DAY_MS, "c1"), line("a1", "add_to_cart", T0, "c1", properties={"value": 40}),
            line("x1", "add_to_cart", T0, anon="v9", properties={"value": 40})])
    advance(e, T0 + 3 * DAY_MS)
    assert "abandoned_cart" not in e.store.load(["anon:v9"])["anon:v9"].journeys
    run(e, [line("a2", "add_to_cart", T0 + 4 * DAY_MS, "c1", properties={"value": 5})])  # 7 d not over
    assert e.store.load(["c1"])["c1"].journeys["abandoned_cart"]["entries"] == 1
    run(e, [line("a3", "add_to_cart", T0 + 12 * DAY_MS, "c1", properties={"value": 5})])
    assert e.store.load(["c1"])["c1"].journeys["abandoned_cart"]["entries"] == 2


def test_lead_nurturing_hands_hot_leads_to_the_rep_the_rules_pick():
    e = journey_engine(example("lead_nurturing"), lead=HIGH)
    run(e, [line("s1", "signup", T0 - DAY_MS, "c1", context={"timezone": "Europe/Berlin"}),
            line("f1", "form_submit", T0, "c1")])
    got = advance(e, T0 + 4 * DAY_MS)
    assert steps(got) == [("lead_nurturing", "handoff", "sales_task")]
    assert got[0]["assignee"] == "dach-team" and got[0]["template"] == "sales/handoff"
    state = e.store.load(["c1"])["c1"].journeys["lead_nurturing"]
    assert state["exit_reason"] == "goal"


def test_round_robin_assignment_takes_turns():
    spec = parse_journey("journey: rr\nentry: {event: form_submit}\nsteps:\n"
                         "  - hand_to_sales: {assign: round_robin, reps: [ann, bob]}\n")
    e = journey_engine(spec)
    got = run(e, [line(f"f{i}", "form_submit", T0 + i * MIN, f"c{i}") for i in range(4)])
    assert [d["assignee"] for d in got] == ["ann", "bob", "ann", "bob"]


def test_winback_enters_when_churn_crosses_and_sends_at_ten_local():
    e = journey_engine(example("winback"), churn=HIGH)
    got = run(e, [line("s1", "signup", T0, "c1", context={"timezone": "America/New_York"})])  # 07:00 there
    got += advance(e, T0 + 2 * DAY_MS)
    assert steps(got)[0] == ("winback", "offer", "email")
    assert got[0]["event_time"] == "2026-01-05T15:00:00.000Z"  # 10:00 in New York, the same morning
    assert e.store.load(["c1"])["c1"].score_memory["churn"] == 0.9


def test_quiet_hours_defer_a_journey_sms_until_morning():
    spec = parse_journey("journey: night\nentry: {event: chat_message}\nsteps:\n"
                         "  - send: {channel: sms, template: t}\n")
    e = journey_engine(spec)
    night = T0 + 10 * HOUR_MS  # 22:00 UTC, inside the default 21-08 quiet hours
    run(e, [line("s1", "signup", T0, "c1"),
            line("c1", "consent_update", T0 + 1, "c1", channel="sms", properties={"granted": True}),
            line("m1", "chat_message", night, "c1")])
    got = advance(e, night + DAY_MS)
    assert steps(got) == [("night", "step-1", "sms")]
    assert got[0]["event_time"] == "2026-01-06T08:00:00.000Z"


def test_one_message_per_decision_point_with_the_built_in_triggers():
    e = journey_engine(example("welcome"), built_ins=True)
    got = run(e, [line("s1", "signup", T0, "c1")])
    assert len(got) == 1  # the built-in welcome and the journey's first step compete
    [beaten] = [s for s in got[0]["suppressed"] if s["action"] == "welcome.welcome"]
    assert beaten["reason"] == "arbitration"
    assert beaten["journey_step"] == "deferred to 2026-01-05T13:00:00Z"  # the record says which and why


def test_onboarding_after_a_first_purchase_only_on_weekday_mornings():
    e = journey_engine(example("onboarding"))
    run(e, [line("s1", "signup", T0 - DAY_MS, "c1", context={"timezone": "Europe/Paris"}),
            line("b1", "purchase", T0 + 4 * DAY_MS, "c1", properties={"value": 30})])  # Friday 12:00 UTC
    got = advance(e, T0 + 30 * DAY_MS, every_ms=6 * HOUR_MS)
    assert steps(got) == [("onboarding", "how_to", "email"), ("onboarding", "review", "email"),
                          ("onboarding", "send_cross_sell", "email")]
    assert got[0]["event_time"] == "2026-01-11T08:30:00.000Z"  # a day later, then the next 09:30 in Paris
    assert got[1]["event_time"] == "2026-01-19T08:30:00.000Z"  # a week later, moved to Monday 09:30
    run(e, [line("b2", "purchase", T0 + 31 * DAY_MS, "c1", properties={"value": 30})])  # not a first purchase
    assert "onboarding" not in {d["journey"] for d in advance(e, T0 + 40 * DAY_MS)}


def test_live_mode_waits_run_on_the_wall_clock_and_fire_on_idle_ticks():
    from test_engine_step import FakeWallClock

    clock = FakeWallClock(T0)
    spec = parse_journey("journey: live\nentry: {event: chat_message}\nsteps:\n  - wait: 10m\n"
                         "  - send: {channel: email, template: t}\n")
    cfg = PolicyConfig(holdout_share=0.0, actions=BUILT_INS_OFF)
    core = DecisionCore(cfg, {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")},
                        LabelSettings(7.0, 7.0, GOALS), clock,
                        journeys=JourneyRunner([spec], "UTC", cfg.consent_default))
    e = Engine(MemoryStore(), core, EngineMetrics(CollectorRegistry()))
    run(e, [line("s1", "signup", T0 - DAY_MS, "c1"), line("m1", "chat_message", T0 - DAY_MS, "c1")])
    clock.t = T0 + 9 * MIN  # event times are a day old: the wait runs from the wall clock's now
    assert run(e, []) == []
    clock.t = T0 + 10 * MIN
    assert steps(run(e, [])) == [("live", "step-2", "email")]


def test_birthday_greeting_at_nine_local_on_the_day():
    e = journey_engine(example("birthday"))
    run(e, [line("s1", "signup", T0, "c1", context={"timezone": "Asia/Tokyo"}),
            line("i1", "identify", T0 + 1, "c1", properties={"birthday": "1990-01-09"})])
    got = advance(e, T0 + 5 * DAY_MS)
    assert steps(got) == [("birthday", "step-1", "email")]
    assert got[0]["event_time"] == "2026-01-09T00:00:00.000Z"  # 09:00 in Tokyo


def test_sunset_after_long_inactivity_gives_a_last_incentive_then_stops_email():
    e = journey_engine(example("sunset"))
    run(e, [line("s1", "signup", T0, "c1"),
            line("c1", "consent_update", T0 + 1, "c1", channel="push", properties={"granted": True})])
    got = advance(e, T0 + 80 * DAY_MS, every_ms=DAY_MS)
    assert steps(got) == [("sunset", "push_incentive", "push")]
    profile = e.store.load(["c1"])["c1"]
    assert profile.consent["email"] is False
    assert profile.journeys["sunset"]["exit_reason"] == "completed"


def test_replenishment_reminds_after_25_days_at_six_pm():
    e = journey_engine(example("replenishment"))
    run(e, [line("s1", "signup", T0 - DAY_MS, "c1"),
            line("b1", "purchase", T0, "c1", properties={"value": 12, "category": "coffee"}),
            line("b2", "purchase", T0 + HOUR_MS, "c2", properties={"value": 12, "category": "shoes"})])
    got = advance(e, T0 + 27 * DAY_MS, every_ms=6 * HOUR_MS)
    assert steps(got)[0] == ("replenishment", "remind", "email")
    assert got[0]["event_time"] == "2026-01-30T18:00:00.000Z" and all(d["contact_id"] == "c1" for d in got)


def test_journey_caps_limit_sends_per_window():
    spec = parse_journey("journey: chatty\nentry: {event: chat_message}\ncaps: {sends: 1, per: 30d}\n"
                         "steps:\n  - send: {channel: email, template: a}\n  - wait: 2d\n"
                         "  - send: {channel: email, template: b}\n")
    e = journey_engine(spec)
    got = run(e, [line("s1", "signup", T0 - DAY_MS, "c1"), line("m1", "chat_message", T0, "c1")])
    got += advance(e, T0 + 5 * DAY_MS)
    assert [d["template"] for d in got] == ["a"]


def test_higher_priority_entry_preempts_a_lower_journey():
    low = parse_journey("journey: low\npriority: 10\nentry: {event: chat_message}\nsteps:\n  - wait: 5d\n"
                        "  - send: {channel: email, template: low}\n")
    e = journey_engine(low, example("abandoned_cart"))
    run(e, [line("s1", "signup", T0 - DAY_MS, "c1"), line("m1", "chat_message", T0, "c1"),
            line("a1", "add_to_cart", T0 + HOUR_MS, "c1", properties={"value": 9})])
    assert e.store.load(["c1"])["c1"].journeys["low"]["exit_reason"] == "preempted"
    assert all(d["journey"] != "low" for d in advance(e, T0 + 7 * DAY_MS))


def test_journeys_resume_after_a_restart_on_redis(redis_url):
    """Pending waits live in the store: a new engine on the same Redis carries on."""
    from touchline.state import open_store
    from touchline.state.base import StoreOptions

    def engine():
        return journey_engine(example("welcome"), store=open_store(redis_url, StoreOptions()))

    first = engine()
    assert steps(run(first, [line("s1", "signup", T0, "c1")])) == [("welcome", "welcome", "email")]
    run(first, [], advance_to=T0 + DAY_MS)
    first.store.close()
    second = engine()  # a restart: nothing in memory
    run(second, [], advance_to=T0 + DAY_MS)
    got = advance(second, T0 + 6 * DAY_MS)
    assert steps(got) == [("welcome", "benefits", "email"), ("welcome", "first_purchase_offer", "email")]
    second.store.close()


@pytest.mark.parametrize("days", [30])
def test_a_month_of_simulated_events_exercises_every_kind_of_wait(small_settings, days):
    from touchline.runner import run as run_engine

    trace: list[dict] = []
    settings = small_settings(**{"simulator.contacts": 1500, "simulator.days": days,
                                 "journeys.files": [EXAMPLES], "policy.actions": BUILT_INS_OFF})
    import touchline.runner as runner_module

    build = runner_module.build_engine
    runner_module.build_engine = lambda s, r, trace_hook=None: build(s, r, trace.append)
    try:
        result = run_engine(settings, progress=None)
    finally:
        runner_module.build_engine = build
    what = [t["what"] for t in trace]
    assert any(w.startswith("waiting until") for w in what)  # wait and wait_until
    assert any(w.startswith("waiting for") for w in what)  # wait_for ...
    assert any(w.endswith("arrived") for w in what)  # ... the event came
    assert any(w.startswith("no ") and w.endswith("before the timeout") for w in what)  # ... or it timed out
    assert any(w.startswith("branch ->") for w in what)
    journeys = result.summary["journeys"]
    entered = {k.split()[0] for k in journeys if k.endswith(" entered")}
    assert {"welcome", "abandoned_cart", "onboarding", "lead_nurturing", "birthday", "replenishment"} <= entered
    assert journeys.get("welcome sent benefits", 0) > 0  # sent after a 2-day wait
    assert journeys.get("onboarding sent how_to", 0) > 0  # after a wait_until


def test_journeys_decide_the_same_on_redis_as_in_process(small_settings, redis_url, tmp_path):
    from touchline.runner import run as run_engine

    common = {"simulator.contacts": 300, "simulator.days": 20, "journeys.files": [EXAMPLES],
              "policy.actions": BUILT_INS_OFF}
    run_engine(small_settings("mem", **common), progress=None)
    run_engine(small_settings("redis", **common, **{"state.url": redis_url}), progress=None)
    memory = (tmp_path / "mem" / "decisions.jsonl").read_bytes()
    assert memory and memory == (tmp_path / "redis" / "decisions.jsonl").read_bytes()
    assert b'"journey":"welcome"' in memory
