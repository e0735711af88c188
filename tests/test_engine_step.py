"""The engine step driven directly with small hand-built batches: triggers on event time,
timers inside batches, idempotency, dead letters, identity stitching, model-driven actions,
quiet hours, caps, metrics, and the live (wall-clock) idle tick."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from prometheus_client import CollectorRegistry

from touchline.decisions.estimators import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.decisions.profile import DAY_MS, HOUR_MS
from touchline.decisions.record import decision_id, iso_ms
from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.batch_service import Engine
from touchline.decisions.batches import RawBatch
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.state.memory import MemoryStore

T0 = 1767614400000  # 2026-01-05T12:00:00Z (a Monday, midday UTC)
MIN = 60_000
GOALS = frozenset({"purchase", "form_submit", "signup"})


class HighProbability:
    """A stand-in estimator that always says 0.9 and learns nothing."""

    def predict_proba_one(self, x):
        return {True: 0.9, False: 0.1}

    def learn_one(self, x, y):
        return None


HIGH = f"{__name__}:HighProbability"


class FakeWallClock:
    """A wall-clock-like clock: observing events changes nothing; now is set by the test."""

    def __init__(self, now_ms: int) -> None:
        self.t = now_ms

    def observe(self, event_ts_ms: int) -> None:
        return None

    def now(self) -> int:
        return self.t


def make_engine(policy: PolicyConfig | None = None, lead: str | None = None, churn: str | None = None,
                clock=None, registry: CollectorRegistry | None = None) -> Engine:
    models = {
        "lead": ModelConfig(name="lead", **({"estimator": lead} if lead else {})),
        "churn": ModelConfig(name="churn", **({"estimator": churn} if churn else {})),
    }
    core = DecisionCore(policy or PolicyConfig(holdout_share=0.0), models, LabelSettings(7.0, 7.0, GOALS), clock)
    return Engine(MemoryStore(), core, EngineMetrics(registry or CollectorRegistry()))


def line(eid: str, type_: str, ts: int, contact: str | None = None, anon: str | None = None, **kw) -> bytes:
    doc: dict = {"event_id": eid, "type": type_, "ts": ts}
    if contact:
        doc["contact_id"] = contact
    if anon:
        doc["anonymous_id"] = anon
    doc.update(kw)
    return orjson.dumps(doc)


def run(engine: Engine, lines: list[bytes], advance_to: int | None = None, source: str = "test") -> list[dict]:
    return engine.process(RawBatch(lines, source, advance_to_ms=advance_to)).decisions


def actions(decisions: list[dict]) -> list[tuple[str, str, str]]:
    return [(d["contact_id"], d["action"], d["channel"]) for d in decisions]


# ------------------------------------------------------------------ cart abandonment

def test_cart_reminder_after_idle_time_on_event_time():
    """An open cart untouched for 30 min of event time gives a cart_reminder email at the timer's time."""
    e = make_engine()
    assert run(e, [line("e1", "add_to_cart", T0, "c1", properties={"value": 50})]) == []
    assert run(e, [], advance_to=T0 + 30 * MIN - 1) == []
    got = run(e, [], advance_to=T0 + 30 * MIN)
    assert actions(got) == [("c1", "cart_reminder", "email")]
    d = got[0]
    assert d["template"] == "cart/reminder"
    assert d["trigger"] == {"kind": "timer", "timer": "cart"}
    assert d["event_time"] == d["decision_time"] == iso_ms(T0 + 30 * MIN)
    assert d["decision_id"] == decision_id("c1", "cart_reminder", "email", f"timer:cart:{T0 + 30 * MIN}")
    assert {(s["channel"], s["reason"]) for s in d["suppressed"]} == {("push", "no_consent"), ("sms", "no_consent")}
    assert "lead" in d["scores"] and 0.0 <= d["scores"]["lead"]["p"] <= 1.0
    assert e.store.load(["c1"])["c1"].sends[0].action == "cart_reminder"
    assert run(e, [], advance_to=T0 + 5 * HOUR_MS) == []  # once only


def test_no_cart_reminder_after_purchase():
    """A purchase before the idle time passes clears the cart: no reminder."""
    e = make_engine()
    got = run(e, [line("e1", "add_to_cart", T0, "c1", properties={"value": 50}),
                  line("e2", "purchase", T0 + 10 * MIN, "c1", properties={"value": 50})], advance_to=T0 + 2 * HOUR_MS)
    assert got == []
    assert e.totals.timers["cart"] == 1  # the timer did fire, and found nothing to do


def test_cart_touched_again_restarts_idle_clock():
    """Changing the cart moves the reminder to 30 min after the last change."""
    e = make_engine()
    run(e, [line("e1", "add_to_cart", T0, "c1", properties={"value": 50}),
            line("e2", "add_to_cart", T0 + 20 * MIN, "c1", properties={"value": 5})])
    assert run(e, [], advance_to=T0 + 49 * MIN) == []
    got = run(e, [], advance_to=T0 + 50 * MIN)
    assert actions(got) == [("c1", "cart_reminder", "email")]
    assert got[0]["event_time"] == iso_ms(T0 + 50 * MIN)
    assert "55.00" in got[0]["reasons"][0]


def test_timer_fires_between_events_of_one_batch():
    """A timer due between two events of the same batch fires before the later event is applied."""
    e = make_engine()
    got = run(e, [line("e1", "add_to_cart", T0, "c1", properties={"value": 50}),
                  line("e2", "purchase", T0 + 40 * MIN, "c1", properties={"value": 50})])
    assert actions(got) == [("c1", "cart_reminder", "email")]
    assert got[0]["event_time"] == iso_ms(T0 + 30 * MIN)


def _scenario() -> list[bytes]:
    """Several contacts: signups, carts, stitching, a purchase, duplicates and a bad line, in time order."""
    return [
        line("s1", "signup", T0, "c1"),
        line("g1", "consent_update", T0 + 30_000, "c1", properties={"channel": "push", "granted": True}),
        line("a1", "add_to_cart", T0 + 1 * MIN, "c1", properties={"value": 40}),
        line("p1", "page_view", T0 + 2 * MIN, anon="v2"),
        line("i2", "identify", T0 + 3 * MIN, "c2", "v2"),
        line("a2", "add_to_cart", T0 + 5 * MIN, anon="v2", properties={"value": 25}),
        line("a3", "add_to_cart", T0 + 10 * MIN, "c3", properties={"value": 80}),
        b"{broken",
        line("pv1", "page_view", T0 + 20 * MIN, "c1"),
        line("b2", "purchase", T0 + 21 * MIN, anon="v2", properties={"value": 25}),
        line("r3", "remove_from_cart", T0 + 30 * MIN, "c3", properties={"value": 30}),
        line("a1", "add_to_cart", T0 + 31 * MIN, "c1", properties={"value": 40}),  # duplicate id
        line("pv4", "page_view", T0 + 45 * MIN, "c4"),
        line("s5", "signup", T0 + 61 * MIN, "c5", "v5"),
        line("pv5", "product_view", T0 + 2 * HOUR_MS, anon="v5"),
    ]


def test_batch_boundaries_do_not_change_decisions():
    """The same lines in one batch, in batches of 1 and in batches of 3 give identical decision records."""
    lines = _scenario()
    end = T0 + 8 * DAY_MS

    one = make_engine()
    whole = run(one, lines) + run(one, [], advance_to=end)

    singles = make_engine()
    split1 = []
    for i, raw in enumerate(lines):
        split1 += singles.process(RawBatch([raw], "test", first_offset=i)).decisions
    split1 += run(singles, [], advance_to=end)

    threes = make_engine()
    split3 = []
    for i in range(0, len(lines), 3):
        split3 += threes.process(RawBatch(lines[i:i + 3], "test", first_offset=i)).decisions
    split3 += run(threes, [], advance_to=end)

    assert split1 == whole
    assert split3 == whole
    got = actions(whole)
    # c1's reminder goes by push (its email was used by the welcome); c3's waits for its last change;
    # c2 purchased before the idle time passed
    assert got == [("c1", "welcome", "email"), ("c1", "cart_reminder", "push"),
                   ("c3", "cart_reminder", "email"), ("c5", "welcome", "email")]
    assert [d["event_time"] for d in whole] == [iso_ms(T0), iso_ms(T0 + 31 * MIN), iso_ms(T0 + 60 * MIN),
                                                iso_ms(T0 + 61 * MIN)]
    for engine in (one, singles, threes):
        assert engine.totals.duplicates == 1
        assert engine.totals.dead_letters == Counter({"bad_json": 1})


# ------------------------------------------------------------------ idempotency, dead letters

def test_duplicate_event_counted_once_and_decides_once():
    """A replayed event (same batch or a later one) changes nothing and sends nothing twice."""
    e = make_engine()
    signup = line("s1", "signup", T0, "c1")
    got = run(e, [signup, signup])
    assert actions(got) == [("c1", "welcome", "email")]
    assert run(e, [signup]) == []
    assert e.totals.duplicates == 2
    assert e.totals.by_type == Counter({"signup": 1})
    assert e.store.load(["c1"])["c1"].events_total == 1


def test_invalid_lines_dead_lettered_with_source_and_line():
    """Invalid lines go to dead letters with reason, detail and 'source:offset'; valid ones still run."""
    e = make_engine()
    res = e.process(RawBatch([line("ok", "page_view", T0, "c1"), b"nope", b"[1]",
                              orjson.dumps({"type": "x", "ts": 1, "contact_id": "c"})],
                             "events.jsonl", first_offset=100))
    assert [(d["reason"], d["source"]) for d in res.dead_letters] == [
        ("bad_json", "events.jsonl:101"), ("not_object", "events.jsonl:102"), ("missing_field", "events.jsonl:103")]
    assert res.dead_letters[0]["raw"] == "nope"
    assert "event_id" in res.dead_letters[2]["detail"]
    assert e.totals.lines == 4 and e.totals.events == 1
    assert e.totals.dead_letters == Counter({"bad_json": 1, "not_object": 1, "missing_field": 1})


def test_late_event_beyond_idempotency_window_is_dead_lettered():
    """An event older than its contact's 30-day memory is dead-lettered as late_event, not applied."""
    e = make_engine()
    run(e, [line("e1", "page_view", T0, "c1")])
    run(e, [line("e2", "page_view", T0 + 31 * DAY_MS, "c1")])
    res = e.process(RawBatch([line("e0", "purchase", T0 + DAY_MS, "c1", properties={"value": 9})], "s"))
    assert [d["reason"] for d in res.dead_letters] == ["late_event"]
    assert orjson.loads(res.dead_letters[0]["raw"])["event_id"] == "e0"
    assert e.store.load(["c1"])["c1"].purchases_total == 0


# ------------------------------------------------------------------ identity

def test_identity_stitching_in_stream():
    """Anonymous browsing, then signup with both ids, then more anonymous events: all on one profile."""
    e = make_engine()
    got = run(e, [line("v1", "page_view", T0, anon="a1", context={"device": "phone"}),
                  line("v2", "add_to_cart", T0 + MIN, anon="a1", properties={"value": 30}),
                  line("s", "signup", T0 + 2 * MIN, "c1", "a1"),
                  line("v3", "page_view", T0 + 3 * MIN, anon="a1")])
    assert actions(got) == [("c1", "welcome", "email")]
    store = e.store
    assert store.stats()["profiles"] == 1 and store.stats()["aliases"] == 1
    p = store.load(["c1"])["c1"]
    assert p.events_total == 4 and p.known
    assert p.cart_value == 30 and p.devices == ["phone"] and p.aliases == ["a1"]
    assert p.window_count("1h", "page_view") == 2
    # the anonymous cart timer moved to the contact; its email was just used by the welcome
    assert run(e, [], advance_to=T0 + HOUR_MS) == []
    assert e.totals.timers["cart"] == 1 and e.totals.suppressions["channel_cap"] == 1


def test_anonymous_cart_reminded_on_contact_after_identify():
    """A cart filled anonymously is reminded to the contact the visitor identified as."""
    e = make_engine()
    assert run(e, [line("v1", "page_view", T0, anon="a1"),
                   line("v2", "add_to_cart", T0 + MIN, anon="a1", properties={"value": 30}),
                   line("i", "identify", T0 + 2 * MIN, "c1", "a1")]) == []
    got = run(e, [], advance_to=T0 + HOUR_MS)
    assert actions(got) == [("c1", "cart_reminder", "email")]
    assert got[0]["event_time"] == iso_ms(T0 + 31 * MIN)
    assert "30.00" in got[0]["reasons"][0]


def test_identity_stitching_across_batches():
    """Stitching also works when the anonymous history arrived in earlier batches."""
    e = make_engine()
    run(e, [line("v1", "page_view", T0, anon="a1")])
    run(e, [line("v2", "product_view", T0 + MIN, anon="a1")])
    run(e, [line("s", "signup", T0 + 2 * MIN, "c1", "a1")])
    run(e, [line("v3", "page_view", T0 + 3 * MIN, anon="a1")])
    p = e.store.load(["c1"])["c1"]
    assert p.events_total == 4
    assert e.store.export("c1")["aliases"] == ["a1"]
    assert e.store.stats()["profiles"] == 1


def test_no_ghost_profile_after_cross_batch_stitching():
    """After a cross-batch merge and the anonymous timers' due times, only the contact is stored."""
    e = make_engine()
    run(e, [line("v1", "page_view", T0, anon="a1")])
    run(e, [line("s", "signup", T0 + 2 * MIN, "c1", "a1")])
    run(e, [], advance_to=T0 + 8 * DAY_MS)
    assert e.store.stats()["profiles"] == 1
    assert e.store.export("c1") is not None
    assert all(not key.startswith("anon:") for _, key, _ in e.store.pop_due(T0 + 365 * DAY_MS))


def test_erase_after_many_anonymous_ids_forgets_every_link():
    """Right to erasure removes every anonymous id ever linked to the contact."""
    e = make_engine()
    run(e, [line(f"i{i}", "identify", T0 + i, "c1", f"a{i}") for i in range(70)])
    assert e.store.erase("c1")
    assert e.store.export("c1") is None


# ------------------------------------------------------------------ model-driven actions

def test_sales_handoff_when_lead_score_high():
    """With the lead model saying 0.9, a known contact's intent event hands off to sales once: the
    hand-off fires on crossing the threshold, not again while the score stays above it;
    anonymous visitors and non-intent events do not."""
    e = make_engine(lead=HIGH)
    got = run(e, [line("v", "page_view", T0, anon="x1"), line("o", "email_open", T0 + 1, "c1"),
                  line("p1", "product_view", T0 + MIN, "c1")])
    assert actions(got) == [("c1", "sales_handoff", "sales_task")]
    d = got[0]
    assert d["template"] == "sales/mql"
    assert d["scores"]["lead"]["p"] == pytest.approx(0.9)
    assert d["scores"]["lead"]["version"].startswith("HighProbability-")
    assert d["trigger"] == {"kind": "event", "event_id": "p1", "type": "product_view"}
    assert d["decision_id"] == decision_id("c1", "sales_handoff", "sales_task", "p1")
    assert run(e, [line("p2", "page_view", T0 + 2 * MIN, "c1")]) == []
    assert e.totals.suppressions["cooldown"] == 0  # not even proposed: no new crossing


def test_winback_via_inactivity_timer_when_churn_high():
    """With churn at 0.9, seven days of inactivity fire the inactivity timer and a winback email."""
    e = make_engine(churn=HIGH)
    run(e, [line("p", "page_view", T0, "c1")])
    assert run(e, [], advance_to=T0 + 7 * DAY_MS - 1) == []
    got = run(e, [], advance_to=T0 + 7 * DAY_MS)
    assert actions(got) == [("c1", "winback_offer", "email")]
    d = got[0]
    assert d["trigger"] == {"kind": "timer", "timer": "inactivity"}
    assert d["scores"]["churn"]["p"] == pytest.approx(0.9)
    assert d["suppressed"] == [{"action": "winback_offer", "channel": "push", "reason": "no_consent"}]


def test_no_winback_when_active_again():
    """Activity before the inactivity deadline postpones the timer: no winback at the old deadline."""
    e = make_engine(churn=HIGH)
    run(e, [line("p", "page_view", T0, "c1")])
    run(e, [line("q", "page_view", T0 + 3 * DAY_MS, "c1")])
    assert run(e, [], advance_to=T0 + 7 * DAY_MS) == []
    assert actions(run(e, [], advance_to=T0 + 10 * DAY_MS)) == [("c1", "winback_offer", "email")]


# ------------------------------------------------------------------ policy in the flow

def _consented_cart(ts: int) -> list[bytes]:
    return [
        line("u", "unsubscribe", ts - 3 * MIN, "c1", properties={"channel": "email"}),
        line("g1", "consent_update", ts - 2 * MIN, "c1", properties={"channel": "sms", "granted": True}),
        line("g2", "consent_update", ts - MIN, "c1", properties={"channel": "push", "granted": True}),
        line("a", "add_to_cart", ts, "c1", properties={"value": 20}),
    ]


def test_quiet_hours_suppress_sms_and_push():
    """At 22:30 in the contact's zone a cart reminder by push/sms is held back for quiet hours."""
    e = make_engine()
    late = T0 + 10 * HOUR_MS  # 22:00 UTC
    got = run(e, _consented_cart(late), advance_to=late + HOUR_MS)
    assert got == []
    assert e.totals.suppressions == Counter({"quiet_hours": 2, "no_consent": 1})


def test_same_cart_at_midday_goes_by_push():
    """The same contact and cart at midday gets the reminder on push (email unsubscribed)."""
    e = make_engine()
    got = run(e, _consented_cart(T0), advance_to=T0 + HOUR_MS)
    assert actions(got) == [("c1", "cart_reminder", "push")]
    assert {(s["channel"], s["reason"]) for s in got[0]["suppressed"]} == {
        ("email", "no_consent"), ("sms", "arbitration")}


def test_quiet_hours_use_contact_time_zone():
    """12:30 UTC is 21:30 in Tokyo: a Tokyo contact's push reminder is held back."""
    e = make_engine()
    lines = _consented_cart(T0)
    lines[-1] = line("a", "add_to_cart", T0, "c1", properties={"value": 20}, context={"timezone": "Asia/Tokyo"})
    assert run(e, lines, advance_to=T0 + HOUR_MS) == []
    assert e.totals.suppressions["quiet_hours"] == 2


def test_frequency_caps_limit_sends_over_many_triggers():
    """Cart triggers every 3 h for 8 days (no cooldown) yield only what the email caps allow:
    at most 1 per 24 h and 3 per 7 days."""
    policy = PolicyConfig(holdout_share=0.0, actions={"cart_reminder": {"cooldown_hours": 0}})
    e = make_engine(policy=policy)
    lines = [line(f"a{i}", "add_to_cart", T0 + i * 3 * HOUR_MS, "c1", properties={"value": 10}) for i in range(64)]
    got = run(e, lines, advance_to=T0 + 8 * DAY_MS)
    times = [T0 + 30 * MIN + k * DAY_MS for k in (0, 1, 2, 7)]
    assert [d["decision_time"] for d in got] == [iso_ms(t) for t in times]
    assert all(d["action"] == "cart_reminder" and d["channel"] == "email" for d in got)
    assert e.totals.suppressions["channel_cap"] == 64 - 4
    sends = e.store.load(["c1"])["c1"].sends
    assert [s.ts_ms for s in sends] == times


# ------------------------------------------------------------------ metrics

def test_metrics_match_totals():
    """Counters on the registry equal the engine's Totals after a mixed run."""
    reg = CollectorRegistry()
    e = make_engine(registry=reg)
    lines = _scenario() + [line("w", "wishlist_add", T0 + 3 * HOUR_MS, "c1"), b"[]"]
    run(e, lines)
    run(e, [], advance_to=T0 + 8 * DAY_MS)
    t = e.totals

    def value(name, labels=None):
        return reg.get_sample_value(name, labels or {}) or 0.0

    assert sum(t.by_type.values()) == len(_scenario()) - 2 + 1  # minus bad line and duplicate, plus wishlist
    for type_, n in t.by_type.items():
        label = "other" if type_ == "wishlist_add" else type_
        assert value("touchline_events_total", {"type": label, "source": "unknown"}) == n
    assert value("touchline_duplicate_events_total") == t.duplicates == 1
    assert t.dead_letters == Counter({"bad_json": 1, "not_object": 1})
    for reason, n in t.dead_letters.items():
        assert value("touchline_dead_letters_total", {"reason": reason}) == n
    assert sum(t.decisions.values()) > 0
    for (action, channel), n in t.decisions.items():
        assert value("touchline_decisions_total", {"action": action, "channel": channel}) == n
    assert sum(t.suppressions.values()) > 0
    for reason, n in t.suppressions.items():
        assert value("touchline_suppressions_total", {"reason": reason}) == n
    assert t.timers["cart"] >= 2
    for kind, n in t.timers.items():
        assert value("touchline_timers_fired_total", {"kind": kind}) == n
    assert value("touchline_batch_events_count") == 1  # the empty clock tick is not a batch
    assert value("touchline_batch_events_sum") == t.events + t.duplicates
    assert value("touchline_clock_seconds") == (T0 + 8 * DAY_MS) / 1000


# ------------------------------------------------------------------ live clock

def test_live_idle_tick_fires_timers():
    """With a wall clock, an empty batch (advance_to_ms=None) is an idle tick that fires due timers."""
    clock = FakeWallClock(T0)
    e = make_engine(clock=clock)
    assert e.core.live
    assert run(e, [line("a", "add_to_cart", T0, "c1", properties={"value": 50})]) == []
    clock.t = T0 + 29 * MIN
    assert run(e, []) == []
    clock.t = T0 + 31 * MIN
    got = run(e, [])
    assert actions(got) == [("c1", "cart_reminder", "email")]
    assert got[0]["event_time"] == iso_ms(T0 + 30 * MIN)
    assert got[0]["decision_time"] == iso_ms(T0 + 31 * MIN)
    clock.t = T0 + 2 * HOUR_MS
    assert run(e, []) == []


def test_live_clock_ignores_event_time_for_timers():
    """Live mode: an event stamped in the future does not make timers fire before the wall clock reaches them."""
    clock = FakeWallClock(T0)
    e = make_engine(clock=clock)
    got = run(e, [line("a", "add_to_cart", T0, "c1", properties={"value": 50}),
                  line("b", "page_view", T0 + 2 * HOUR_MS, "c2")])
    assert got == []
    clock.t = T0 + 30 * MIN
    assert actions(run(e, [])) == [("c1", "cart_reminder", "email")]
