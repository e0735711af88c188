"""Experiments in the engine: assignment, variants, exposures and outcomes, attribution in
the stream, bandits with bounded exploration, timing variants, and lift with its guard.
Pure: the engine step on the in-process store, no servers."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from touchline.decisions.attribution import MODELS, Touch, attribute
from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.decisions.experiments import Bandit, ExperimentSettings, Split, Variant, assign, bucket
from touchline.decisions.lift import LiftTable, difference_interval, estimate
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.decisions.profile import DAY_MS, HOUR_MS, Profile
from touchline.batch_service import Engine
from touchline.decisions.batches import RawBatch
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.settings import ConfigError, load_settings
from touchline.state.codec import from_parts, to_blob
from touchline.state.memory import MemoryStore
from tests.test_engine_step import GOALS, MIN, T0, line

SPLIT = {"cart_copy": Split(action="cart_reminder", variants=[
    Variant(name="control"), Variant(name="urgent", template="cart/urgent", offer="free-shipping")])}


def make(holdout: float = 0.0, splits: dict | None = None, registry: CollectorRegistry | None = None,
         journeys=None, policy: dict | None = None, **exp) -> Engine:
    models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
    core = DecisionCore(PolicyConfig(holdout_share=holdout, **(policy or {})), models, LabelSettings(7.0, 7.0, GOALS),
                        journeys=journeys, experiments=ExperimentSettings(splits=splits or {}, **exp))
    return Engine(MemoryStore(), core, EngineMetrics(registry or CollectorRegistry()))


def cart(contact: str, at: int, n: int = 0) -> bytes:
    return line(f"{contact}-cart-{n}", "add_to_cart", at, contact, properties={"value": 40})


def records(result, kind: str) -> list[dict]:
    return [r for r in result.experiments if r["kind"] == kind]


# ------------------------------------------------------------------ assignment

def test_assignment_is_stable_weighted_and_independent_across_experiments():
    """Same contact, same arm; shares follow weights; arms in two experiments are uncorrelated."""
    split = Split(action="welcome", variants=[Variant(name="a", weight=3), Variant(name="b", weight=1)])
    contacts = [f"c-{i}" for i in range(20_000)]
    arms = [assign(c, "one", split).name for c in contacts]
    assert arms == [assign(c, "one", split).name for c in contacts]
    assert abs(arms.count("a") / len(arms) - 0.75) < 0.015
    other = [assign(c, "two", split).name for c in contacts]
    both = Counter(zip(arms, other))
    assert abs(both[("b", "b")] / len(contacts) - 0.25 * 0.25) < 0.01  # independent: P(b, b) = P(b)^2
    assert 0 <= bucket("c-1", "x") < 1


def test_split_validation_names_the_problem():
    with pytest.raises(ValueError, match="exactly one of action or journey"):
        Split(variants=[Variant(name="a"), Variant(name="b")])
    with pytest.raises(ValueError, match="unique"):
        Split(action="welcome", variants=[Variant(name="a"), Variant(name="a")])
    with pytest.raises(ValueError, match="journey splits"):
        Split(action="welcome", variants=[Variant(name="a", waits={"w": "1h"}), Variant(name="b")])
    with pytest.raises(ValueError, match="unknown channel"):
        Variant(name="a", channel="pigeon")
    with pytest.raises(ConfigError, match=r"experiments.splits.x.action: unknown action 'welcom'"):
        load_settings(None, {"experiments.splits.x": {"action": "welcom", "variants": [{"name": "a"}, {"name": "b"}]}})
    with pytest.raises(ConfigError, match=r"experiments.conversion_types"):
        load_settings(None, {"experiments.conversion_types": ["purchace"]})
    with pytest.raises(ConfigError, match=r"experiments.splits.x.variants.1.weight"):
        load_settings(None, {"experiments.splits.x": {"action": "welcome", "variants": [{"name": "a"},
                                                                                     {"name": "b", "weight": 0}]}})


# ------------------------------------------------------------------ variants and records

def test_variant_changes_the_message_and_every_decision_records_its_arms():
    """Each contact's cart reminder follows its variant; the record names every arm and the segment."""
    e = make(splits=SPLIT)
    lines = [cart(f"c{i}", T0 + i) for i in range(40)]
    e.process(RawBatch(lines, "t"))
    decisions = e.process(RawBatch([], "t", advance_to_ms=T0 + HOUR_MS)).decisions
    assert len(decisions) == 40
    for d in decisions:
        variant = assign(d["contact_id"], "cart_copy", SPLIT["cart_copy"]).name
        assert d["experiments"] == {"global_holdout": "treatment", "cart_copy": variant}
        assert d["template"] == ("cart/urgent" if variant == "urgent" else "cart/reminder")
        assert d["offer"] == ("free-shipping" if variant == "urgent" else None)
        assert set(d["segment"]) == {"lead_band", "lifecycle", "channel_preference"}
    assert {d["experiments"]["cart_copy"] for d in decisions} == {"control", "urgent"}


def test_holdout_contact_is_exposed_not_messaged_and_outcomes_close_on_event_time():
    """Intent to treat: a holdout contact at its first chance of a message gets an exposure
    (sent false) and no decision; both arms' outcomes come when the window closes."""
    e = make(holdout=0.5, window_days=2)
    contacts = [f"c{i}" for i in range(30)]
    first = e.process(RawBatch([cart(c, T0) for c in contacts], "t"))
    assert records(first, "exposure") == []  # nothing would be sent yet: no exposure
    second = e.process(RawBatch([line(f"{c}-buy", "purchase", T0 + DAY_MS, c, properties={"value": 10})
                                 for c in contacts[:10]], "t", advance_to_ms=T0 + HOUR_MS))
    exposures = {r["contact_id"]: r for r in records(second, "exposure")}
    assert set(exposures) == set(contacts)
    held = {c for c, r in exposures.items() if r["arm"] == "holdout"}
    assert held and len(held) < len(contacts)
    assert all(not exposures[c]["sent"] for c in held)
    assert {d["contact_id"] for d in second.decisions} == set(contacts) - held
    conversions = records(second, "conversion")
    assert len(conversions) == 10
    for conv in conversions:  # a treated contact's purchase is credited to its reminder
        credited = conv["credits"]["last_touch"]
        assert (len(credited) == 1) == (conv["contact_id"] not in held)
    first_close = min(r["exposed_at_ms"] + r["window_ms"] for r in exposures.values())
    assert records(e.process(RawBatch([], "t", advance_to_ms=first_close - 1)), "outcome") == []
    outcomes = records(e.process(RawBatch([], "t", advance_to_ms=T0 + 3 * DAY_MS)), "outcome")
    assert {o["contact_id"]: o["converted"] for o in outcomes} == {c: c in contacts[:10] for c in contacts}
    assert all(o["arm"] == ("holdout" if o["contact_id"] in held else "treatment") for o in outcomes)
    # once exposed, never again: a second cart later gives no new exposure
    again = e.process(RawBatch([cart(c, T0 + 4 * DAY_MS, 1) for c in contacts], "t",
                               advance_to_ms=T0 + 4 * DAY_MS + HOUR_MS))
    assert records(again, "exposure") == []
    table = e.core.experiments.lift
    assert table.tally("global_holdout", "holdout", "all", "all")[0] == len(held)


def test_experiment_state_survives_the_redis_codec():
    """Touches and exposures are in the profile blob, so a restart keeps the windows open."""
    p = Profile("c1", known=True)
    p.touches.append([5, "d1", "email", "welcome", [["x", "all", "a"]], False])
    p.exposures["global_holdout"] = {"arm": "holdout", "baseline": "holdout", "at": 5, "segment": {},
                                     "converted_at": None, "value": 0.0}
    back = from_parts("c1", to_blob(p), [], [])
    assert back.touches == p.touches and back.exposures == p.exposures


def test_metrics_count_exposures_outcomes_and_credit_on_a_fresh_registry():
    reg = CollectorRegistry()
    e = make(registry=reg, window_days=1)
    e.process(RawBatch([cart("c1", T0)], "t"))
    e.process(RawBatch([line("b", "purchase", T0 + 2 * HOUR_MS, "c1", properties={"value": 30})], "t",
                       advance_to_ms=T0 + HOUR_MS))
    e.process(RawBatch([], "t", advance_to_ms=T0 + 2 * DAY_MS))
    get = reg.get_sample_value
    assert get("touchline_experiment_exposures_total", {"experiment": "global_holdout", "arm": "treatment"}) == 1
    assert get("touchline_experiment_outcomes_total",
               {"experiment": "global_holdout", "arm": "treatment", "converted": "true"}) == 1
    for model in MODELS:
        assert get("touchline_attributed_conversions_total", {"model": model, "channel": "email"}) == 1
        assert get("touchline_attributed_value_total", {"model": model, "channel": "email"}) == 30
    assert get("touchline_conversions_total", {"attributed": "true"}) == 1


# ------------------------------------------------------------------ attribution

def test_attribution_models_share_one_conversion_and_respect_the_window():
    day = DAY_MS
    touches = [Touch(0, "old", "sms", "x"), Touch(5 * day, "a", "email", "x"), Touch(6 * day, "b", "push", "y"),
               Touch(9 * day, "later", "email", "z")]
    credits = attribute(touches, 8 * day, window_ms=7 * day, half_life_ms=day)
    for model in MODELS:
        assert sum(w for _, w in credits[model]) == pytest.approx(1.0)
        assert {t.decision_id for t, _ in credits[model]} <= {"a", "b"}  # "old" is outside, "later" after
    decay = dict((t.decision_id, w) for t, w in credits["time_decay"])
    assert decay["b"] == pytest.approx(2 * decay["a"])  # one half-life newer: twice the credit
    assert attribute(touches[:1], 8 * day, 7 * day, day) == {m: [] for m in MODELS}


# ------------------------------------------------------------------ bandits

def test_bandit_finds_the_better_arm_and_exploration_stays_bounded():
    """Thompson sampling per segment: most choices go to the arm that converts more, and the
    share of exploratory choices never passes max_explore."""
    split = Split(action="cart_reminder", assignment="thompson", max_explore=0.1,
                  variants=[Variant(name="a"), Variant(name="b")])
    b = Bandit("s", split, seed=1)
    rng = random.Random(3)
    rate = {"a": 0.05, "b": 0.25}
    chosen = Counter()
    for i in range(3000):
        arm, _ = b.choose("high", ["a", "b"])
        chosen[arm] += 1
        b.reward("high", arm, rng.random() < rate[arm])
        assert b.explored["high"] <= 0.1 * b.choices["high"] + 1
    assert chosen["b"] > 0.85 * sum(chosen.values())
    assert b.status()["high"]["b"]["rate"] == pytest.approx(0.25, abs=0.03)


def test_bandit_split_in_the_engine_learns_from_conversions_and_leaves_the_holdout_alone():
    """Channel variants chosen by UCB; a conversion rewards the arm sent; holdout contacts
    never reach the bandit."""
    splits = {"cart_channel": Split(action="cart_reminder", assignment="ucb", segment_by="none",
                                    variants=[Variant(name="email", channel="email"),
                                              Variant(name="push", channel="push")])}
    e = make(holdout=0.3, splits=splits, window_days=1)
    contacts = [f"c{i}" for i in range(60)]
    consent = [line(f"{c}-push", "consent_update", T0 - MIN, c, channel="push", properties={"granted": True})
               for c in contacts]
    e.process(RawBatch(consent + [cart(c, T0) for c in contacts], "t"))
    result = e.process(RawBatch([], "t", advance_to_ms=T0 + HOUR_MS))
    sent = {d["contact_id"]: d for d in result.decisions}
    held = {r["contact_id"] for r in records(result, "exposure") if r["arm"] == "holdout"}
    assert held and not held & set(sent)
    bandit = e.core.experiments.bandits["cart_channel"]
    assert bandit.choices["all"] == len(sent)  # holdout contacts never pulled an arm
    assert all(d["channel"] == d["experiments"]["cart_channel"] for d in sent.values())
    buyers = [c for c, d in sent.items() if d["channel"] == "push"]
    e.process(RawBatch([line(f"{c}-buy", "purchase", T0 + 2 * HOUR_MS, c, properties={"value": 5}) for c in buyers],
                       "t", advance_to_ms=T0 + 2 * HOUR_MS))
    e.process(RawBatch([], "t", advance_to_ms=T0 + 3 * DAY_MS))  # the rest time out: reward 0
    status = bandit.status()["all"]
    assert status["push"]["rate"] == 1.0 and status.get("email", {"rate": 0.0})["rate"] == 0.0
    assert sum(v["rewards"] for v in status.values()) == len(sent)


# ------------------------------------------------------------------ timing variants

def test_timing_variant_changes_a_journey_wait(tmp_path):
    """A journey split whose variant sets a wait step's length: that contact's next step comes later."""
    from touchline.decisions.journey_runtime import JourneyRunner
    from touchline.decisions.journeys import parse_journey

    journey = parse_journey(
        "journey: onboarding\nentry: {event: signup}\nsteps:\n"
        "  - id: hello\n    send: {channel: email, template: onb/1}\n"
        "  - id: pause\n    wait: 1d\n"
        "  - id: tips\n    send: {channel: email, template: onb/2}\n", "onboarding.yaml")
    split = Split(journey="onboarding", variants=[Variant(name="fast"), Variant(name="slow", waits={"pause": "3d"})])
    runner = JourneyRunner([journey], "UTC", {"email": True})
    e = make(splits={"onb_timing": split}, journeys=runner)
    contacts = [f"c{i}" for i in range(20)]
    e.process(RawBatch([line(f"{c}-s", "signup", T0, c) for c in contacts], "t"))
    sent_at: dict[str, int] = {}
    for day in range(1, 6):
        for d in e.process(RawBatch([], "t", advance_to_ms=T0 + day * DAY_MS + HOUR_MS)).decisions:
            if d["template"] == "onb/2":
                sent_at[d["contact_id"]] = d["decision_time_ms"]
                assert d["experiments"]["onb_timing"] == assign(d["contact_id"], "onb_timing", split).name
    assert set(sent_at) == set(contacts)
    for c, at in sent_at.items():
        days = 3 if assign(c, "onb_timing", split).name == "slow" else 1
        assert T0 + days * DAY_MS <= at < T0 + days * DAY_MS + HOUR_MS


def test_a_timing_split_exposes_at_the_step_it_changes_so_converting_while_waiting_counts():
    """Intent to treat: a contact is exposed to a timing split when its journey reaches the wait
    step the arms change, not at the later send. A contact who buys during its arm's longer
    wait (the journey ends at its goal, nothing is sent) is counted, converted, in that arm;
    both arms are followed for the conversion window plus the longest wait from that moment."""
    from touchline.decisions.journey_runtime import JourneyRunner
    from touchline.decisions.journeys import parse_journey
    from tests.test_journeys_runtime import BUILT_INS_OFF

    journey = parse_journey(
        "journey: cart\nentry: {event: add_to_cart}\nexit: {goal: [purchase]}\nsteps:\n"
        "  - id: idle\n    wait: 30m\n"
        "  - id: remind\n    send: {channel: email, template: cart/1}\n", "cart.yaml")
    split = Split(journey="cart", variants=[Variant(name="30m"), Variant(name="2h", waits={"idle": "2h"})])
    e = make(splits={"cart_timing": split}, journeys=JourneyRunner([journey], "UTC", {"email": True}),
             policy={"actions": BUILT_INS_OFF}, conversion_types=["purchase"], window_days=1)
    contacts = [f"c{i}" for i in range(40)]
    arm = {c: assign(c, "cart_timing", split).name for c in contacts}
    first = e.process(RawBatch([cart(c, T0) for c in contacts], "t"))
    exposed = {r["contact_id"]: r for r in records(first, "exposure") if r["experiment"] == "cart_timing"}
    assert set(exposed) == set(contacts)  # at the wait step, before anything is sent
    for c, r in exposed.items():
        assert (r["arm"], r["step"], r["sent"], r["exposed_at_ms"]) == (arm[c], "idle", None, T0)
        assert r["window_ms"] == DAY_MS + 2 * HOUR_MS  # the window plus the longest wait of any arm
    buyers = [c for c in contacts if arm[c] == "2h"][:5]  # they buy an hour in: before their reminder
    later = e.process(RawBatch([line(f"{c}-buy", "purchase", T0 + HOUR_MS, c, properties={"value": 10})
                                for c in buyers], "t", advance_to_ms=T0 + 3 * HOUR_MS))
    assert not [r for r in records(later, "exposure") if r["experiment"] == "cart_timing"]  # not again at the sends
    reminded = {d["contact_id"] for d in later.decisions if d.get("journey") == "cart"}
    assert reminded == {c for c in contacts if c not in buyers}
    closed = e.process(RawBatch([], "t", advance_to_ms=T0 + DAY_MS + 3 * HOUR_MS))
    outcomes = {r["contact_id"]: r for r in records(closed, "outcome") if r["experiment"] == "cart_timing"}
    assert set(outcomes) == set(contacts)
    assert {c for c, r in outcomes.items() if r["converted"]} == set(buyers)
    assert all(outcomes[c]["arm"] == "2h" for c in buyers)


def test_the_summary_checks_each_hashed_experiments_sample_ratio_and_flags_a_mismatch():
    """Arms assigned by hash must hold their shares up to chance (chi-square); a split whose
    variant loses contacts before they are counted is a sample ratio mismatch. Bandits have no
    fixed shares and are not checked."""
    from touchline.decisions.experiment_runtime import ExperimentRuntime
    from touchline.summary import _sample_ratio_lines

    settings = ExperimentSettings(splits={
        "copy": Split(action="welcome", variants=[Variant(name="a", weight=3), Variant(name="b")]),
        "lossy": Split(action="cart_reminder", variants=[Variant(name="a"), Variant(name="b", channel="sms")]),
        "bandit": Split(action="winback_offer", assignment="thompson", variants=[Variant(name="a"), Variant(name="b")])})
    runtime = ExperimentRuntime(settings, policy=PolicyConfig(holdout_share=0.1))
    for experiment, arms in (("global_holdout", {"treatment": 905, "holdout": 95}), ("copy", {"a": 760, "b": 240}),
                             ("lossy", {"a": 500, "b": 400}), ("bandit", {"a": 900, "b": 100})):
        for arm, n in arms.items():
            for _ in range(n):
                runtime.lift.add(experiment, arm, next(iter(arms)), {}, False)
    ratios = runtime.summary()["sample_ratio"]
    assert set(ratios) == {"global_holdout", "copy", "lossy"}
    assert ratios["copy"]["expected_share"] == {"a": 0.75, "b": 0.25} and not ratios["copy"]["mismatch"]
    assert ratios["global_holdout"]["expected_share"] == {"treatment": 0.9, "holdout": 0.1}
    assert not ratios["global_holdout"]["mismatch"]
    assert ratios["lossy"]["mismatch"] and ratios["lossy"]["p_value"] < 0.001
    assert "sample ratio mismatch" in _sample_ratio_lines(ratios["lossy"])[1]
    assert len(_sample_ratio_lines(ratios["copy"])) == 1


# ------------------------------------------------------------------ lift

def test_lift_interval_matches_newcombe_and_the_guard_refuses_small_samples():
    """Newcombe (1998) table II: 56/70 vs 48/80 gives 0.0524 to 0.3339."""
    low, high = difference_interval(56, 70, 48, 80, 1.959964)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    small = estimate("x", "treatment", "holdout", ("all", "all"), (50, 10), (40, 2), min_per_arm=100)
    assert not small.enough and small.verdict.startswith("too few to conclude")
    big = estimate("x", "treatment", "holdout", ("all", "all"), (2000, 300), (2000, 200))
    assert big.enough and big.verdict == "lift" and big.low > 0


def test_lift_interval_covers_the_true_difference_at_its_nominal_rate():
    """Coverage, checked by simulation: about 95% of intervals hold the true difference."""
    rng = random.Random(11)
    hits = 0
    for _ in range(400):
        t = LiftTable()
        for arm, p in (("treatment", 0.12), ("holdout", 0.08)):
            for _ in range(300):
                t.add("e", arm, "holdout", {}, rng.random() < p)
        est = t.estimates("e")[0]
        hits += est.low <= 0.04 <= est.high
    assert 0.92 <= hits / 400 <= 0.98


def test_a_timing_variant_needs_a_unit_on_its_wait():
    """A bare number is not a duration here either (issue 22): 2 could be 2s or 2d."""
    with pytest.raises(ConfigError, match=r"experiments.splits.x.variants.1.waits.idle: .*bad duration 2: a number "
                       r"needs a unit \(2s, 2m, 2h, 2d or 2w\?\)"):
        load_settings(None, {"experiments.splits.x": {"journey": "abandoned_cart", "variants": [
            {"name": "a"}, {"name": "b", "waits": {"idle": 2}}]}})
