"""The BG/NBD model (decisions/bgnbd.py) against the published CDNOW figures and data
simulated from known populations, and the ``bgnbd`` churn estimator built on it
(decisions/bgnbd_churn.py). The model conformance suite runs it too."""

from __future__ import annotations

import math
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest

from touchline.decisions import bgnbd
from touchline.decisions.bgnbd import Params
from touchline.decisions.bgnbd_churn import PRIOR, BGNBDChurn
from touchline.decisions.estimators import ModelConfig, ScoreModel
from touchline.decisions.features import features
from touchline.decisions.profile import DAY_MS, Profile, apply_event
from touchline.settings import load_settings

#: Fader, Hardie & Lee (2005), CDNOW cohort, time in weeks: the maximum-likelihood
#: estimates and log-likelihood they publish.
CDNOW = Params(r=0.243, alpha=4.414, a=0.793, b=2.426)
CDNOW_LOG_LIKELIHOOD = -9582.4
#: 2,357 customers' (x, t_x, T) in weeks: Fader and Hardie's CDNOW summary (as shipped by
#: the lifetimes package).
CDNOW_DATA = Path(__file__).parent / "data" / "cdnow_summary.csv"


def cdnow() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.loadtxt(CDNOW_DATA, delimiter=",", skiprows=1)
    return data[:, 0], data[:, 1], data[:, 2]


def test_the_cdnow_fit_reproduces_the_published_estimates():
    fit = bgnbd.fit(*cdnow())
    assert fit.customers == 2357
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fit.params, name) == pytest.approx(getattr(CDNOW, name), abs=0.001), name
    assert fit.log_likelihood == pytest.approx(CDNOW_LOG_LIKELIHOOD, abs=0.05)


def test_published_per_customer_figures():
    """FHL 2005's worked example (x=2, t_x=30.43, T=38.86 weeks): 1.226 expected purchases
    in the next 39 weeks; P(alive) 0.7266 as lifetimes computes it."""
    assert bgnbd.expected_purchases(CDNOW, 2, 30.43, 38.86, 39.0) == pytest.approx(1.226, abs=0.0005)
    assert bgnbd.p_alive(CDNOW, 2, 30.43, 38.86) == pytest.approx(0.72658, abs=1e-5)
    assert bgnbd.p_alive(CDNOW, 7, 29.43, 35.0) == pytest.approx(0.77898, abs=1e-5)


def test_the_time_unit_only_scales_alpha():
    """The same customers in days fit the same population with alpha seven times larger."""
    x, t_x, T = cdnow()
    in_days = bgnbd.fit(x, t_x * 7, T * 7).params
    assert in_days.alpha == pytest.approx(CDNOW.alpha * 7, rel=0.002)
    assert (in_days.r, in_days.a, in_days.b) == pytest.approx((CDNOW.r, CDNOW.a, CDNOW.b), rel=0.002)
    week, day = bgnbd.p_no_purchase(CDNOW, 2, 30.43, 38.86, 13.0), \
        bgnbd.p_no_purchase(CDNOW.in_unit(7), 2, 30.43 * 7, 38.86 * 7, 91.0)
    assert day == pytest.approx(week, rel=1e-9)


@pytest.mark.parametrize("truth", [Params(0.5, 20.0, 0.8, 2.5), Params(2.0, 60.0, 0.3, 1.5)])
def test_parameters_are_recovered_from_simulated_customers(truth):
    rng = np.random.default_rng(11)
    fitted = bgnbd.fit(*bgnbd.simulate(truth, rng.uniform(90, 540, 4000), rng)).params
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.2), (name, fitted)


def future_purchase(params: Params, T: float, horizon: float, rng: random.Random) -> tuple[float, float, bool]:
    """One simulated customer's summary at ``T`` and whether they buy in (T, T + horizon]."""
    rate, dropout = rng.gammavariate(params.r, 1 / params.alpha), rng.betavariate(params.a, params.b)
    times, now = [], 0.0
    while True:
        now += rng.expovariate(rate)
        if now > T + horizon:
            break
        times.append(now)
        if rng.random() < dropout:
            break
    before = [t for t in times if t <= T]
    return len(before), before[-1] if before else 0.0, len(times) > len(before)


def test_no_purchase_probability_matches_simulated_futures():
    """Mean P(no purchase in H) matches the observed share, overall and among repeat
    buyers, on customers drawn from the model (the alive-and-silent term included)."""
    truth, rng = Params(0.8, 30.0, 0.7, 3.0), random.Random(5)
    rows = []
    for _ in range(6000):
        T = rng.uniform(60, 400)
        x, t_x, bought = future_purchase(truth, T, 90.0, rng)
        rows.append((x, bgnbd.p_no_purchase(truth, x, t_x, T, 90.0), not bought))
    for selected in (rows, [row for row in rows if row[0] > 0]):
        predicted, observed = np.mean([row[1] for row in selected]), np.mean([row[2] for row in selected])
        assert predicted == pytest.approx(observed, abs=0.015), (len(selected), predicted, observed)


def test_no_purchase_limits():
    """A horizon of 0: certain to buy nothing; an endless one: only the dead buy nothing."""
    assert bgnbd.p_no_purchase(CDNOW, 3, 20.0, 38.0, 0.0) == pytest.approx(1.0)
    assert bgnbd.p_no_purchase(CDNOW, 3, 20.0, 38.0, 1e12) == pytest.approx(1 - bgnbd.p_alive(CDNOW, 3, 20.0, 38.0))


def test_p_alive_does_not_overflow_for_long_silences():
    p = bgnbd.p_alive(CDNOW, 500, 1.0, 1e6)
    assert 0.0 <= p < 1e-12 and math.isfinite(p)


def test_parameters_must_be_positive():
    with pytest.raises(ValueError, match="parameter alpha must be a finite number > 0"):
        Params(1.0, 0.0, 1.0, 1.0)


# ------------------------------------------------------------------ the bgnbd estimator
def summaries(truth: Params, n: int, seed: int) -> list[dict[str, float]]:
    """Feature dicts (days) of customers simulated from ``truth``."""
    rng = np.random.default_rng(seed)
    x, t_x, T = bgnbd.simulate(truth, rng.uniform(90, 540, n), rng)
    return [{"rfm_frequency": float(a), "rfm_recency_days": float(b), "rfm_age_days": float(c)}
            for a, b, c in zip(x, t_x, T)]


DAYS = Params(0.5, 20.0, 0.8, 2.5)


def test_the_estimator_recovers_the_population_from_its_stream():
    model = BGNBDChurn()
    for x in summaries(DAYS, 3000, seed=2):
        model.learn_one(x, False)
    assert len(model.reservoir) == 2000 and model.learned == 3000
    assert model.fits == 1 + (3000 - 200) // 500
    for name in ("r", "alpha", "a", "b"):
        assert getattr(model.params, name) == pytest.approx(getattr(DAYS, name), rel=0.25), (name, model.params)


def test_the_population_fit_at_a_moment_is_the_fit_of_those_summaries(monkeypatch):
    """fit_population: one summary per contact as of a cut-off, the standard fit (what touchline
    scores rests on), whatever the reservoir held; unusable summaries left out; too few: kept."""
    import touchline.decisions.bgnbd_churn as bc
    from touchline.decisions.bgnbd_logistic import BGNBDLogistic

    now = summaries(DAYS, 1500, seed=4)
    model = BGNBDChurn()
    for x in summaries(Params(2.0, 5.0, 0.3, 9.0), 600, seed=5):  # a reservoir of another population
        model.learn_one(x, False)
    before = model.params
    assert model.fit_population([*now, {}, {"rfm_frequency": 1.0}]) == 1500  # two without a summary
    data = np.asarray([[x["rfm_frequency"], x["rfm_recency_days"], x["rfm_age_days"]] for x in now])
    direct = bgnbd.fit(data[:, 0], data[:, 1], data[:, 2], start=before,
                       prior=bgnbd.Prior(PRIOR, 2.0)).params
    for name in ("r", "alpha", "a", "b"):
        assert getattr(model.params, name) == pytest.approx(getattr(direct, name), rel=1e-6)
        assert getattr(model.params, name) == pytest.approx(getattr(DAYS, name), rel=0.3)
    assert BGNBDChurn().fit_population(now[:199]) == 0  # under min_customers: the parameters kept
    corrected = BGNBDLogistic(learning_rate=0.05)
    corrected.learn_one(now[0], True)
    weights = dict(corrected.weights)
    assert corrected.fit_population(now) == 1500 and corrected.weights == weights  # the correction kept
    monkeypatch.setattr(bc, "POPULATION_FIT_MAX", 300)
    assert model.fit_population(now) == 300  # a seeded sample beyond the cap


def test_the_label_is_not_used():
    """Unsupervised: the same summaries with any labels give the same model."""
    a, b = BGNBDChurn(min_customers=50, refit_every=50), BGNBDChurn(min_customers=50, refit_every=50)
    for i, x in enumerate(summaries(DAYS, 300, seed=3)):
        a.learn_one(x, True)
        b.learn_one(x, i % 3 == 0)
    assert a.params == b.params and a.reservoir == b.reservoir


def test_same_stream_same_bits_and_a_pickle_resumes_exactly():
    stream = summaries(DAYS, 900, seed=4)
    a, b = BGNBDChurn(reservoir_size=300, refit_every=200), BGNBDChurn(reservoir_size=300, refit_every=200)
    for x in stream[:450]:
        a.learn_one(x, None)
        b.learn_one(x, None)
    c = pickle.loads(pickle.dumps(a))
    for x in stream[450:]:
        a.learn_one(x, None)
        b.learn_one(x, None)
        c.learn_one(x, None)
    assert a.params == b.params == c.params and a.reservoir == c.reservoir
    assert a.params != PRIOR and a.fits == 4


@pytest.mark.parametrize("features", [
    {},
    {"rfm_frequency": 2.0, "rfm_recency_days": 10.0},
    {"rfm_frequency": -1.0, "rfm_recency_days": 10.0, "rfm_age_days": 50.0},
    {"rfm_frequency": float("nan"), "rfm_recency_days": 10.0, "rfm_age_days": 50.0},
    {"rfm_frequency": "2", "rfm_recency_days": 10.0, "rfm_age_days": 50.0},
    {"rfm_frequency": None, "rfm_recency_days": 10.0, "rfm_age_days": 50.0},
    {"rfm_frequency": 0.0, "rfm_recency_days": 0.0, "rfm_age_days": 0.0},  # the engine's never-bought
])
def test_no_usable_summary_is_the_prior_and_is_not_learned(features):
    model = BGNBDChurn()
    prior = model.predict_proba_one({})
    assert prior[True] == pytest.approx(bgnbd.p_no_purchase(PRIOR, 0, 0.0, 0.0, 90.0))
    assert model.predict_proba_one(features) == prior
    model.learn_one(features, True)
    assert model.learned == 0 and model.reservoir == []


def test_probabilities_rank_lapsed_above_regular_customers():
    model = BGNBDChurn()
    for x in summaries(DAYS, 500, seed=6):
        model.learn_one(x, False)
    lapsed = model.predict_proba_one({"rfm_frequency": 8, "rfm_recency_days": 60.0, "rfm_age_days": 400.0})
    regular = model.predict_proba_one({"rfm_frequency": 8, "rfm_recency_days": 395.0, "rfm_age_days": 400.0})
    assert regular[True] < lapsed[True] and lapsed[True] + lapsed[False] == pytest.approx(1.0)
    assert model.p_alive({"rfm_frequency": 8, "rfm_recency_days": 60.0, "rfm_age_days": 400.0}) < 0.5


def test_a_longer_horizon_is_less_likely_silent():
    x = {"rfm_frequency": 3, "rfm_recency_days": 100.0, "rfm_age_days": 200.0}
    assert BGNBDChurn(horizon_days=30).predict_proba_one(x)[True] > BGNBDChurn(horizon_days=365).predict_proba_one(x)[True]


@pytest.mark.parametrize("params, says", [
    ({"horizon_days": 0}, "horizon_days must be a number of days > 0"),
    ({"refit_every": 0}, "refit_every must be an integer >= 1"),
    ({"min_customers": 2.5}, "min_customers must be an integer >= 1"),
    ({"reservoir_size": 100}, "reservoir_size (100) must be an integer >= min_customers (200)"),
    ({"dropout_at_first_purchase": "yes"}, "dropout_at_first_purchase must be true or false, got 'yes'"),
])
def test_bad_settings_are_refused_at_start_naming_the_parameter(params, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        ModelConfig(name="churn", estimator="bgnbd", params=params)


def test_configured_as_a_churn_champion_or_challenger():
    settings = ModelConfig(name="churn", estimator="bgnbd", params={"horizon_days": 60})
    model = ScoreModel.build(settings)
    assert model.version.startswith("bgnbd-") and model.estimator.horizon_days == 60
    x = {"rfm_frequency": 1.0, "rfm_recency_days": 5.0, "rfm_age_days": 300.0}
    assert model.predict(x) == model.estimator.predict_proba_one(x)[True]


@pytest.mark.parametrize("summary", [(0.0, 0.0, 0.5), (0.0, 0.0, 120.0), (5.0, 50.0, 50.0), (1e9, 1e9, 1e9)])
def test_a_degenerate_reservoir_fits_within_bounds(summary):
    """Nobody back yet, everyone alike, absurd counts: the fit stays finite and inside its
    search box, and scores stay probabilities."""
    model = BGNBDChurn()
    frequency, recency, age = summary
    for _ in range(200):
        model.learn_one({"rfm_frequency": frequency, "rfm_recency_days": recency, "rfm_age_days": age}, True)
    assert model.fits == 1
    bound = math.exp(bgnbd.LOG_BOUND) * 1.001
    assert all(1 / bound <= v <= bound for v in (model.params.r, model.params.alpha, model.params.a, model.params.b))
    for x in ({}, {"rfm_frequency": 3, "rfm_recency_days": 10.0, "rfm_age_days": 100.0}):
        assert 0.0 <= model.predict_proba_one(x)[True] <= 1.0


# ------------------------------------------------------------------ in the engine
def customer(key: str, *days: float) -> Profile:
    profile = Profile(key, known=True)
    for i, day in enumerate(days):
        apply_event(profile, f"{key}-p{i}", "purchase", int(day * DAY_MS), {"value": 10.0}, {})
    return profile


def test_scores_the_engine_feature_vector():
    """The engine's own features (decisions/features.py) are what bgnbd reads: a regular
    buyer is less likely to stay silent than one who stopped, a contact who never bought
    gets the prior."""
    model = ScoreModel.build(ModelConfig(name="churn", estimator="bgnbd"))
    now = 400 * DAY_MS
    regular = features(customer("regular", *range(0, 400, 20)), now)
    lapsed = features(customer("lapsed", *range(0, 100, 20)), now)
    never = features(Profile("never", known=True), now)
    assert (regular["rfm_frequency"], regular["rfm_recency_days"], regular["rfm_age_days"]) == (19.0, 380.0, 400.0)
    assert model.predict(regular) < model.predict(never) < model.predict(lapsed)
    assert model.predict(never) == pytest.approx(bgnbd.p_no_purchase(PRIOR, 0, 0.0, 0.0, 90.0))
    model.learn(never, True)
    assert model.estimator.learned == 0  # nothing to learn from a contact who never bought


def test_the_readme_configuration_loads(tmp_path):
    config = tmp_path / "touchline.toml"
    config.write_text('[labels]\nchurn_horizon_days = 90\n[models.churn.challenger]\nestimator = "bgnbd"\n'
                      'params = { refit_every = 500, min_customers = 200 }\n')  # horizon_days: the label's
    challenger = load_settings(config).models.churn.challenger_config()
    assert challenger is not None and challenger.version.startswith("bgnbd-")
    assert ScoreModel.build(challenger).estimator.horizon_days == 90


# ------------------------------------------------------------------ the fit itself
def test_a_fit_started_on_the_edge_of_the_search_box_still_finds_the_maximum():
    """A refit starts where the last fit ended; one that ended on the bounds (a young base
    fitted before) must not hold the next there: the CDNOW estimates come out all the same."""
    stuck = Params(0.6, 26.0, math.exp(-bgnbd.LOG_BOUND), 0.0015)
    fit = bgnbd.fit(*cdnow(), start=stuck)
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fit.params, name) == pytest.approx(getattr(CDNOW, name), abs=0.001), name


def test_the_gradient_is_the_likelihoods():
    x, t_x, T = cdnow()
    at, step = np.log([0.3, 5.0, 0.6, 2.0]), 1e-6
    exact = bgnbd.mean_gradient(Params(*np.exp(at)), x, t_x, T)
    for i in range(4):
        moved = at.copy()
        moved[i] += step
        up, down = (float(np.mean(bgnbd.log_likelihood(Params(*np.exp(v)), x, t_x, T))) for v in (moved, at))
        assert exact[i] == pytest.approx((up - down) / step, abs=1e-5), i


def test_a_young_base_fits_inside_the_search_box():
    """Customers seen for a few weeks hold next to no sign of dropout: maximum likelihood alone
    runs to the edge of the search box; the estimator's weak prior keeps its fit inside."""
    rng = np.random.default_rng(3)
    x, t_x, T = bgnbd.simulate(DAYS, rng.uniform(1, 30, 300), rng)
    bare = bgnbd.fit(x, t_x, T).params
    held = bgnbd.fit(x, t_x, T, prior=bgnbd.Prior(PRIOR)).params
    edge = bgnbd.LOG_BOUND - 1.0
    assert max(abs(math.log(v)) for v in (bare.a, bare.b)) > edge
    assert max(abs(math.log(v)) for v in (held.r, held.alpha, held.a, held.b)) < 6.0


def test_the_estimator_recovers_the_cdnow_population_in_days():
    """Fed CDNOW's summaries (in days), the estimator's fit -- warm start, prior and all -- is
    the published population."""
    model = BGNBDChurn(min_customers=2357, reservoir_size=2357)
    for x, t_x, T in zip(*cdnow()):
        model.learn_one({"rfm_frequency": x, "rfm_recency_days": t_x * 7, "rfm_age_days": T * 7}, True)
    assert model.fits == 1
    for name in ("r", "alpha", "a", "b"):
        assert getattr(model.params, name) == pytest.approx(getattr(CDNOW.in_unit(7), name), rel=0.01), name


def test_observed_moments_replace_learned_ones():
    """Once the engine shows it the moments observed (``observe_one``), the estimator learns
    the population from those alone: labels resolve in an order that depends on the outcome."""
    model = BGNBDChurn()
    first, second = summaries(DAYS, 2, seed=8)
    model.learn_one(first, True)
    model.observe_one(second)
    model.learn_one(first, True)
    assert model.learned == 2 and model.observing
    assert pickle.loads(pickle.dumps(model)).observing


def test_prior_sd_is_checked():
    with pytest.raises(ValueError, match=re.escape("prior_sd must be a number > 0, got 0")):
        ModelConfig(name="churn", estimator="bgnbd", params={"prior_sd": 0})


# ------------------------------------------------------------------ bgnbd_logreg
def test_the_corrected_model_is_the_bgnbd_until_labels_say_otherwise():
    from touchline.decisions.bgnbd_logistic import BGNBDLogistic

    model = BGNBDLogistic(horizon_days=60)
    for x in summaries(DAYS, 5, seed=9) + [{}]:
        assert model.predict_proba_one(x)[True] == pytest.approx(model.bgnbd.predict_proba_one(x)[True], abs=1e-12)


def test_the_correction_learns_what_the_purchase_summary_does_not_say():
    """Customers drawn from a BG/NBD population, and a second signal the summary does not
    carry (``email_open_rate_30d``: an opener is far less likely to go silent): the corrected
    model ranks the labels better than the BG/NBD alone, which it started as."""
    from touchline.decisions.bgnbd_logistic import BGNBDLogistic, sigmoid

    rng = random.Random(4)
    model = BGNBDLogistic(horizon_days=90, learning_rate=0.01)
    rows = []
    for x in summaries(DAYS, 6000, seed=10):
        opens = rng.random()
        p = model.bgnbd.predict_proba_one(x)[True]
        x = {**x, "email_open_rate_30d": opens}
        rows.append((x, rng.random() < sigmoid(math.log(p / (1 - p)) - 3.0 * (opens - 0.5))))
    for x, y in rows[:5000]:
        model.learn_one(x, y)
    test = rows[5000:]

    def auc(score):
        from touchline.churn_bench import roc_auc
        return roc_auc(np.array([y for _, y in test]), np.array([score(x) for x, _ in test]))

    corrected, alone = auc(lambda x: model.predict_proba_one(x)[True]), auc(lambda x: model.bgnbd.predict_proba_one(x)[True])
    assert corrected > alone + 0.03, (corrected, alone)
    assert model.weights["email_open_rate_30d"] < 0


def test_the_corrected_model_feeds_observed_moments_to_its_population():
    from touchline.decisions.bgnbd_logistic import BGNBDLogistic

    model = BGNBDLogistic()
    first, second = summaries(DAYS, 2, seed=8)
    model.observe_one(second)
    model.learn_one(first, True)
    assert model.bgnbd.learned == 1 and model.bgnbd.reservoir == [(second["rfm_frequency"],
                                                                    second["rfm_recency_days"], second["rfm_age_days"])]


@pytest.mark.parametrize("params, says", [
    ({"learning_rate": -0.1}, "learning_rate must be a number >= 0"),
    ({"l2": float("nan")}, "l2 must be a number >= 0"),
    ({"reservoir_size": 100}, "reservoir_size (100) must be an integer >= min_customers (200)"),
])
def test_bad_corrected_model_settings_are_refused_naming_the_parameter(params, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        ModelConfig(name="churn", estimator="bgnbd_logreg", params=params)


def test_a_model_checkpointed_before_the_prior_and_observations_existed_still_learns():
    model = BGNBDChurn(min_customers=20, refit_every=20)
    del model.__dict__["prior_sd"], model.__dict__["observing"]  # as an older checkpoint unpickles
    old = pickle.loads(pickle.dumps(model))
    for x in summaries(DAYS, 40, seed=12):
        old.learn_one(x, True)
    assert old.fits == 2 and old.params != PRIOR


# ------------------------------------------------------------------ MBG/NBD (dropout after the first purchase too)
def _mbg_likelihood(p: Params, x: float, t_x: float, T: float) -> float:
    """Batislam, Denizel & Filiztekin (2007), equation 3, term by term (no log space)."""
    rate = math.gamma(p.r + x) * p.alpha ** p.r / math.gamma(p.r)
    beta = math.gamma(p.a + p.b) / (math.gamma(p.a) * math.gamma(p.b))
    alive = beta * math.gamma(p.a) * math.gamma(p.b + x + 1) / math.gamma(p.a + p.b + x + 1) / (p.alpha + T) ** (p.r + x)
    gone = beta * math.gamma(p.a + 1) * math.gamma(p.b + x) / math.gamma(p.a + p.b + x + 1) / (p.alpha + t_x) ** (p.r + x)
    return rate * (alive + gone)


@pytest.mark.parametrize("x, t_x, T", [(0, 0.0, 0.0), (0, 0.0, 30.0), (1, 4.0, 9.0), (5, 20.0, 38.0)])
def test_the_mbg_likelihood_is_the_published_one(x, t_x, T):
    p = Params(0.7, 3.0, 0.6, 2.2)
    got = bgnbd.log_likelihood(p, np.array([float(x)]), np.array([t_x]), np.array([T]), at_first=True)[0]
    assert got == pytest.approx(math.log(_mbg_likelihood(p, x, t_x, T)), abs=1e-9)


def test_the_mbg_gradient_is_its_likelihoods():
    x, t_x, T = cdnow()
    at, step = np.log([0.3, 5.0, 0.6, 2.0]), 1e-6
    exact = bgnbd.mean_gradient(Params(*np.exp(at)), x, t_x, T, at_first=True)
    for i in range(4):
        moved = at.copy()
        moved[i] += step
        up, down = (float(np.mean(bgnbd.log_likelihood(Params(*np.exp(v)), x, t_x, T, at_first=True)))
                    for v in (moved, at))
        assert exact[i] == pytest.approx((up - down) / step, abs=1e-5), i


def test_under_mbg_a_one_time_buyers_silence_counts():
    """BG/NBD holds a one-time buyer alive whatever the silence; MBG/NBD does not, and its
    P(no purchase) then grows with the silence faster than BG/NBD's."""
    assert bgnbd.p_alive(CDNOW, 0, 0.0, 52.0) == 1.0
    alive = [bgnbd.p_alive(CDNOW, 0, 0.0, T, at_first=True) for T in (0.0, 10.0, 52.0)]
    assert 1.0 > alive[0] > alive[1] > alive[2] > 0.0
    assert bgnbd.p_no_purchase(CDNOW, 0, 0.0, 52.0, 39.0, at_first=True) > bgnbd.p_no_purchase(CDNOW, 0, 0.0, 52.0, 39.0)
    for x, t_x, T in ((2, 30.43, 38.86), (7, 29.43, 35.0)):  # a repeat buyer: odds of gone a/(b+x), not a/(b+x-1)
        assert bgnbd.p_alive(CDNOW, x, t_x, T, at_first=True) > bgnbd.p_alive(CDNOW, x, t_x, T)


def test_the_estimators_take_the_mbg_variant():
    settings = ModelConfig(name="churn", estimator="bgnbd_logreg",
                           params={"dropout_at_first_purchase": True, "min_customers": 20, "refit_every": 20})
    model = ScoreModel.build(settings)
    once = {"rfm_frequency": 0.0, "rfm_recency_days": 0.0, "rfm_age_days": 300.0}
    assert model.estimator.bgnbd.p_alive(once) < 1.0 == BGNBDChurn().p_alive(once)
    for x in summaries(DAYS, 60, seed=4):
        model.estimator.observe_one(x)
    assert model.estimator.bgnbd.fits >= 1 and model.estimator.bgnbd.params != PRIOR
    old = BGNBDChurn()
    del old.__dict__["dropout_at_first_purchase"]  # as a checkpoint from before the variant unpickles
    assert pickle.loads(pickle.dumps(old)).p_alive(once) == 1.0
