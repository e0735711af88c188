"""Issue 20: repeat-purchase data. The customer-base features, retention that remembers
customers for years and visitors briefly, and settings a model could never learn under."""

from __future__ import annotations

from math import log1p
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from touchline.batch_service import Engine
from touchline.cli import main
from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.decisions.batches import RawBatch
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.features import features
from touchline.decisions.policy import PolicyConfig
from touchline.decisions.profile import DAY_MS, Profile, apply_event, merge_into
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.settings import ConfigError, load_settings
from touchline.state.memory import MemoryStore

T0 = 1767614400000


def _bought(profile: Profile, *days: float) -> Profile:
    for i, day in enumerate(days):
        apply_event(profile, f"{profile.key}-p{i}", "purchase", T0 + int(day * DAY_MS), {"value": 10.0}, {})
    return profile


def test_repeat_purchase_summary_as_of_a_moment():
    """Frequency, recency and age as BG/NBD counts them (repeat purchases, first to last, since the
    first), the contact's own gap and how overdue it is; the same whatever order purchases came in."""
    p = _bought(Profile("c1", known=True), 40, 0, 10)  # out of order: first is day 0, last day 40
    f = features(p, T0 + 60 * DAY_MS)
    assert (f["rfm_frequency"], f["rfm_recency_days"], f["rfm_age_days"]) == (2.0, 40.0, 60.0)
    assert (f["purchase_gap_days"], f["days_overdue"], f["gaps_since_purchase"]) == (20.0, 0.0, log1p(1.0))
    later = features(p, T0 + 100 * DAY_MS)
    assert later["days_overdue"] == 40.0 and later["rfm_age_days"] == 100.0


def test_a_single_purchase_and_no_purchase():
    once = features(_bought(Profile("c1", known=True), 5), T0 + 35 * DAY_MS)
    assert (once["rfm_frequency"], once["rfm_recency_days"], once["rfm_age_days"]) == (0.0, 0.0, 30.0)
    assert once["days_overdue"] == 0.0  # no gap of its own to be overdue against
    never = features(Profile("c2", known=True), T0)
    assert all(never[k] == 0.0 for k in ("rfm_frequency", "rfm_recency_days", "rfm_age_days",
                                          "purchase_gap_days", "days_overdue", "gaps_since_purchase"))


def test_an_anonymous_visitors_purchases_merge_into_the_customer_summary():
    contact = _bought(Profile("c1", known=True), 30)
    visitor = _bought(Profile("anon:a1"), 2)
    merge_into(contact, visitor)
    f = features(contact, T0 + 40 * DAY_MS)
    assert (f["rfm_frequency"], f["rfm_recency_days"], f["rfm_age_days"]) == (1.0, 28.0, 38.0)


def _engine(**store: float) -> Engine:
    models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
    core = DecisionCore(PolicyConfig(holdout_share=0.0), models, LabelSettings(3.0, 7.0, frozenset({"purchase"})),
                        **store)
    return Engine(MemoryStore(), core, EngineMetrics(CollectorRegistry()))


def _line(eid: str, type_: str, day: float, **ids: str) -> bytes:
    return orjson.dumps({"event_id": eid, "type": type_, "ts": T0 + int(day * DAY_MS), **ids})


def test_customers_are_remembered_for_years_and_visitors_briefly():
    """With the defaults a customer who bought once and went quiet is still known 200 days
    later; an anonymous visitor quiet for 31 days is forgotten."""
    engine = _engine(retention_days=730, anonymous_retention_days=30)
    engine.process(RawBatch([_line("e1", "purchase", 0, contact_id="c1", properties={"value": 5}),
                             _line("e2", "page_view", 0, anonymous_id="a1")], "t"))
    engine.process(RawBatch([_line("e3", "page_view", 200, contact_id="c2")], "t", advance_to_ms=T0 + 200 * DAY_MS))
    stored = engine.store.export("c1")
    assert stored is not None and stored["profile"]["purchases_total"] == 1
    assert engine.store.stats()["profiles"] == 2  # c1 and c2; anon:a1 forgotten after 30 days


def test_default_retention_in_settings():
    s = load_settings(None, {})
    assert (s.state.retention_days, s.state.anonymous_retention_days) == (730, 30)
    assert s.state.options().ttl_days == 760


@pytest.mark.parametrize(("overrides", "named"), [
    ({"labels.churn_horizon_days": 273, "state.retention_days": 90},
     ["labels.churn_horizon_days (273)", "policy.inactivity_days (7)", "state.retention_days (90)"]),
    ({"labels.lead_horizon_days": 45}, ["labels.lead_horizon_days (45)", "state.anonymous_retention_days (30)"]),
    ({"state.anonymous_retention_days": 800}, ["state.anonymous_retention_days (800)", "state.retention_days (730)"]),
    ({"labels.churn_horizon_days": 60, "models.churn.challenger": {"estimator": "bgnbd", "params": {"horizon_days": 30}}},
     ["models.churn.challenger.params.horizon_days (30)", "labels.churn_horizon_days (60)"]),
    ({"models.churn": {"estimator": "bgnbd_logreg", "params": {"horizon_days": 90}}},
     ["models.churn.params.horizon_days (90)", "labels.churn_horizon_days (7)"]),
])
def test_settings_a_model_cannot_learn_under_are_refused_naming_both_keys(overrides, named):
    with pytest.raises(ConfigError) as err:
        load_settings(None, overrides)
    assert all(part in str(err.value) for part in named), str(err.value)
    assert "Value error" not in str(err.value)


def test_a_customer_base_models_horizon_left_out_follows_the_label():
    s = load_settings(None, {"labels.churn_horizon_days": 273, "models.churn": {"estimator": "bgnbd_logreg"},
                             "models.churn.challenger": {"estimator": "bgnbd"}})
    assert s.models.churn.params["horizon_days"] == 273 and s.models.churn.challenger is not None
    assert s.models.churn.challenger.params["horizon_days"] == 273
    assert "horizon_days" not in load_settings(None, {}).models.churn.params  # logreg has no horizon of its own


def test_purchases_on_one_day_are_one_repeat_purchase_to_the_summary():
    """As the literature counts CDNOW: a second order the same (UTC) day is not a repeat purchase;
    the purchase count and the money still add up; a merge adds the days of both sides."""
    p = _bought(Profile("c1", known=True), 0, 0.2, 0.4, 10, 10.3, 30)  # T0 is noon UTC
    f = features(p, T0 + 40 * DAY_MS)
    assert (f["rfm_frequency"], f["rfm_recency_days"], f["purchase_gap_days"]) == (2.0, 30.0, 15.0)
    assert (p.purchases_total, p.monetary_total) == (6, 60.0)
    other = _bought(Profile("anon:a1"), 50)
    merge_into(p, other)
    assert features(p, T0 + 60 * DAY_MS)["rfm_frequency"] == 3.0


def test_a_profile_stored_before_purchase_days_counts_its_purchases_then_goes_on_by_day():
    from touchline.state.codec import from_parts, to_blob

    p = _bought(Profile("c1", known=True), 0, 0.4, 10)
    old = orjson.loads(to_blob(p))
    del old["purchase_days"]  # a blob written before the field was kept
    back = from_parts("c1", orjson.dumps(old), [], [])
    assert back.purchase_days is None and features(back, T0 + 20 * DAY_MS)["rfm_frequency"] == 2.0  # 3 purchases
    _bought(back, 10.2)  # same day as the last: no new day
    assert back.purchase_days == 3 and features(back, T0 + 20 * DAY_MS)["rfm_frequency"] == 2.0
    assert from_parts("c1", to_blob(p), [], []).purchase_days == 2


def test_a_refused_horizon_is_a_clear_cli_error(tmp_path, capsys):
    config = tmp_path / "t.toml"
    config.write_text("[labels]\nchurn_horizon_days = 273\n[state]\nretention_days = 90\n")
    code = main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--no-metrics", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "labels.churn_horizon_days" in err and "state.retention_days" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "decisions.jsonl").exists()


def test_the_run_tallies_the_time_between_purchases_for_the_summary():
    """Whole days between a contact's consecutive purchases (a replayed purchase is not a gap),
    and the summary's warning when the churn horizon is shorter than the median gap."""
    from touchline.summary import _repeat_purchase_lines, _repeat_purchases

    engine = _engine()
    buys = [_line(f"b{i}", "purchase", day, contact_id="c1", properties={"value": 5}) for i, day in enumerate((0, 10, 30))]
    engine.process(RawBatch(buys, "t"))
    engine.process(RawBatch(buys[-1:], "t"))  # the last one again
    assert engine.totals.purchase_gap_days == {10: 1, 20: 1}
    r = _repeat_purchases(engine.totals.purchase_gap_days, engine.core.labels.churn_horizon_ms)
    assert r is not None and (r["median_gap_days"], r["suggested_churn_horizon_days"]) == (10, 30)
    assert "warning: labels.churn_horizon_days (7)" in _repeat_purchase_lines(r)[1]


@pytest.mark.parametrize(("model", "share", "suggested"), [("logreg", 0.9, True), ("bgnbd_logreg", 0.9, False),
                                                           ("bgnbd", 0.9, False), ("logreg", 0.1, False)])
def test_the_summary_suggests_a_customer_base_churn_model_on_purchase_data(model, share, suggested):
    from touchline.summary import _repeat_purchase_lines, _repeat_purchases

    r = _repeat_purchases({10: 3, 30: 2}, 60 * DAY_MS, share, random_times=True, churn_model=model)
    lines = _repeat_purchase_lines(r)
    assert any('models.churn.estimator = "bgnbd_logreg"' in line for line in lines) == suggested
    assert not any("random_times" in line for line in lines)  # already observed at random times


@pytest.mark.parametrize(("returns", "churned"), [(None, False), (frozenset({"purchase"}), True)])
def test_what_counts_as_coming_back_ends_a_churn_observation(returns, churned):
    """Any activity ends a churn observation by default; with ``labels.churn_returns =
    ["purchase"]`` a visit without a purchase does not: the label asks "will this customer buy
    again within the horizon"."""
    models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
    labels = LabelSettings(3.0, 7.0, frozenset({"purchase"}), churn_returns=returns)
    engine = Engine(MemoryStore(), DecisionCore(PolicyConfig(holdout_share=0.0), models, labels),
                    EngineMetrics(CollectorRegistry()))
    engine.process(RawBatch([_line("b0", "purchase", 0, contact_id="c1", properties={"value": 5}),
                             _line("v1", "page_view", 2, contact_id="c1")], "t", advance_to_ms=T0 + 8 * DAY_MS))
    quality = engine.models["churn"].champion.quality()
    assert (quality["labels"], quality["positives"]) == (1, int(churned))


def _inactive_buyers(top_share: float | None, contacts: int = 60) -> list[dict]:
    """Win-back decisions for ``contacts`` customers who each bought once and went quiet, scored
    by an untrained churn model (the same p for everyone, over the threshold)."""
    from touchline.decisions.score_rank import ScoreRank

    models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
    policy = PolicyConfig(holdout_share=0.0, winback_churn_threshold=0.5, winback_top_share=top_share)
    core = DecisionCore(policy, models, LabelSettings(3.0, 7.0, frozenset({"purchase"})))
    core.churn_rank = ScoreRank(window=100, min_scores=10)
    core.learn = False
    engine = Engine(MemoryStore(), core, EngineMetrics(CollectorRegistry()))
    buys = [_line(f"b{i}", "purchase", i / contacts, contact_id=f"c{i}", properties={"value": 5})
            for i in range(contacts)]
    out = engine.process(RawBatch(buys, "t", advance_to_ms=T0 + 20 * DAY_MS)).decisions
    return [d for d in out if d["action"] == "winback_offer"]


def test_winback_to_a_top_share_reaches_no_one_when_the_score_ranks_no_one():
    """Over the threshold alone every quiet customer gets a win-back; with a top share, a churn
    score that is the same for everyone (it ranks no one) reaches only those checked before
    ranking could start."""
    assert len(_inactive_buyers(None)) == 60
    assert len(_inactive_buyers(0.2)) == 9


def test_a_top_share_of_spread_scores_reaches_about_that_share():
    """Scores that do rank (however badly calibrated: all near 1 here) reach about the share asked."""
    import random

    from touchline.decisions.score_rank import ScoreRank

    rng = random.Random(3)
    rank = ScoreRank(window=2000, min_scores=200)
    picked = [rank.in_top(1 - rng.random() * 1e-3, 0.1) for _ in range(5000)]
    assert 0.08 < sum(picked[200:]) / 4800 < 0.12


def test_each_actions_reach_today_and_the_known_base_are_on_metrics():
    """What TouchlineActionReachTooWide reads: decisions per action on the engine clock's day,
    the store's known contacts and the alert share from the settings."""
    registry = CollectorRegistry()
    models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
    core = DecisionCore(PolicyConfig(holdout_share=0.0), models, LabelSettings(3.0, 7.0, frozenset({"purchase"})))
    engine = Engine(MemoryStore(), core, EngineMetrics(registry, reach_alert_share=0.3))
    signups = [_line(f"s{i}", "signup", 1 + i / 100, contact_id=f"c{i}") for i in range(20)]
    engine.process(RawBatch(signups + [_line("v", "page_view", 1, anonymous_id="a1")], "t"))
    welcomes = registry.get_sample_value("touchline_action_daily_reach", {"action": "welcome"})
    assert welcomes is not None and 0 < welcomes <= 20
    assert registry.get_sample_value("touchline_known_contacts") == 20
    assert registry.get_sample_value("touchline_reach_alert_share") == 0.3
    engine.process(RawBatch([_line("n", "page_view", 3, contact_id="c0")], "t"))  # the next day: counts start again
    assert registry.get_sample_value("touchline_action_daily_reach", {"action": "welcome"}) == 0


def test_churn_observed_at_random_times_sees_a_silent_customer():
    """With ``labels.churn_observations = "random_times"`` a known contact is observed at
    random times, silent spells included, one observation at a time, each drawn after the
    last one's horizon; at activity nothing is observed then. A customer who bought once and
    went quiet for 60 days gives several churn labels, all positive; observed at activity it
    gives at most the one of its purchase and the one of its inactivity check."""
    def labels(at_random: bool) -> tuple[int, int]:
        models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
        rules = LabelSettings(3.0, 7.0, frozenset({"purchase"}), churn_at_random_times=at_random)
        engine = Engine(MemoryStore(), DecisionCore(PolicyConfig(holdout_share=0.0), models, rules),
                        EngineMetrics(CollectorRegistry()))
        engine.process(RawBatch([_line("b0", "purchase", 0, contact_id="c1", properties={"value": 5})], "t",
                                advance_to_ms=T0 + 60 * DAY_MS))
        quality = engine.models["churn"].champion.quality()
        assert ("observe_churn" in engine.store.export("c1")["profile"]["timers"]) == at_random  # one, always
        return quality["labels"], quality["positives"]

    n, positives = labels(True)
    assert 3 <= n <= 8 and positives == n
    assert labels(False) == (2, 2)


@pytest.mark.parametrize("gaps", [None, 2.0])
def test_a_regular_buyer_is_not_inactive_between_its_usual_purchases(gaps):
    """A customer who buys every 10 days: with ``policy.inactivity_gaps = 2`` (the default) it
    is inactive only after 20 silent days, so it gets no win-back between its purchases once
    its rhythm is known; with the fixed 7 days alone it does."""
    models = {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")}
    policy = PolicyConfig(holdout_share=0.0, inactivity_gaps=gaps)
    core = DecisionCore(policy, models, LabelSettings(3.0, 7.0, frozenset({"purchase"})))
    core.learn = False  # an untrained churn score (0.5) passes the threshold at every check
    engine = Engine(MemoryStore(), core, EngineMetrics(CollectorRegistry()))
    buys = [_line(f"b{d}", "purchase", d, contact_id="c1", properties={"value": 5}) for d in (0, 10, 20, 30)]
    out = engine.process(RawBatch(buys, "t", advance_to_ms=T0 + 40 * DAY_MS)).decisions
    later = [d for d in out if d["action"] == "winback_offer" and d["decision_time_ms"] > T0 + 10 * DAY_MS]
    assert bool(later) == (gaps is None)


def _regular_buyer(churn: ModelConfig, at_random: bool, days: int = 60) -> Engine:
    """A customer who buys every 2 days for ``days`` days, replayed with a 7-day churn horizon."""
    models = {"lead": ModelConfig(name="lead"), "churn": churn}
    rules = LabelSettings(3.0, 7.0, frozenset({"purchase"}), churn_returns=frozenset({"purchase"}),
                          churn_at_random_times=at_random)
    engine = Engine(MemoryStore(), DecisionCore(PolicyConfig(holdout_share=0.0), models, rules),
                    EngineMetrics(CollectorRegistry()))
    buys = [_line(f"b{d}", "purchase", d, contact_id="c1", properties={"value": 5}) for d in range(0, days, 2)]
    engine.process(RawBatch(buys, "t", advance_to_ms=T0 + days * DAY_MS))
    return engine


@pytest.mark.parametrize("at_random", [True, False])
def test_churn_labels_at_random_times_wait_for_their_deadline(at_random):
    """Observed at random times, a churn label whose customer came back is learnt at its
    deadline, like a silent one, not at the return: every label then reaches the models a
    horizon after its moment. Observed at activity a return resolves the label at once."""
    quality = _regular_buyer(ModelConfig(name="churn"), at_random).models["churn"].champion.quality()
    assert quality["labels"] >= 4 and quality["positives"] == 0
    assert (quality["label_delay_hours"] == 7 * 24) == at_random
    assert quality["label_delay_hours"] <= (7 * 24 if at_random else 2 * 24)


def test_a_customer_base_model_learns_its_population_from_every_moment_observed():
    """``bgnbd`` learns the population from the moments observed for churn labels when they are
    taken (``observe_one``), pending ones included, and nothing more when their labels resolve."""
    engine = _regular_buyer(ModelConfig(name="churn", estimator="bgnbd", params={"horizon_days": 7.0}), True)
    model = engine.models["churn"].champion
    profile = engine.store.export("c1")["profile"]
    observed = model.labels + len(profile["pending_labels"])
    assert model.estimator.observing and model.estimator.learned == observed >= 6


def _purchases(tmp_path) -> str:
    from touchline.connectors.repeat_purchase import RepeatPurchase, RepeatPurchaseSpec

    path = tmp_path / "purchases.jsonl"
    path.write_bytes(b"\n".join(RepeatPurchase(RepeatPurchaseSpec(seed=3, customers=120, days=240)).lines()) + b"\n")
    return str(path)


def test_scores_on_purchase_data_name_the_preset_and_a_churn_model_no_label_reached(tmp_path, capsys):
    """With the defaults kept (--no-derive), touchline scores says which churn settings do not fit purchase data and
    where the preset is; with the preset and a horizon no label resolves within, it says the
    scores are the BG/NBD's alone. The preset itself loads as the README shows it."""
    events = _purchases(tmp_path)
    assert main(["scores", "--at", "2025-07-01", "--input", events, "--out", str(tmp_path / "a.csv"),
                 "--no-derive"]) == 0
    err = capsys.readouterr().err
    assert 'labels.churn_observations = "random_times"' in err and "--config examples/purchases.toml" in err
    assert "warning: labels.churn_horizon_days (7) is shorter than the median gap" in err
    preset = Path(__file__).resolve().parent.parent / "examples" / "purchases.toml"
    settings = load_settings(preset)
    assert (settings.models.churn.estimator, settings.models.churn.params) == \
        ("bgnbd_logreg", {"dropout_at_first_purchase": True, "horizon_days": 90.0})
    long = tmp_path / "long.toml"
    long.write_text(preset.read_text().replace("churn_horizon_days = 90", "churn_horizon_days = 200"))
    assert main(["scores", "--at", "2025-07-01", "--input", events, "--config", str(long),
                 "--out", str(tmp_path / "b.csv")]) == 0
    err = capsys.readouterr().err
    assert "no churn label resolved" in err and "BG/NBD model's alone" in err and "purchases.toml" not in err
