"""One conformance suite every registered scoring model must pass (in the spirit of
``river.checks``): River's own estimator checks, then the contract the engine relies on
(probabilities in [0, 1], learning, missing features, pickling and checkpoints,
independence, stable versions, determinism), then the errors a bad configuration gets.
A plug-in registered in the ``touchline.models`` entry-point group is picked up too."""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import random
import re
import sys
import types
from dataclasses import dataclass
from typing import Callable

import pytest
from river import base, checks

from touchline.decisions.features import FEATURE_NAMES
from touchline.decisions.estimators import ModelConfig, ScoreModel, build_estimator, registered_models, resolve
from touchline.state.model_store import decode_checkpoint, encode_checkpoint

MODELS = sorted(registered_models())
SIGNAL = "cart_value"  # the one feature that separates the classes in the supervised stream
#: A contact's purchase summary (repeat purchases, first to last purchase, since the first).
PURCHASES = ("rfm_frequency", "rfm_recency_days", "rfm_age_days")
Example = tuple[dict[str, float], bool]


def stream(n: int = 300, seed: int = 7) -> list[Example]:
    """Synthetic labelled examples over every feature: ``SIGNAL`` is high for positives
    and low for negatives, everything else is noise."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2 == 0
        x = {name: rng.random() for name in FEATURE_NAMES}
        x[SIGNAL] = rng.gauss(3.0 if label else 0.0, 0.5)
        out.append((x, label))
    rng.shuffle(out)
    return out


def probe(signal: float) -> dict[str, float]:
    """An example with average noise and the given signal."""
    x = {name: 0.5 for name in FEATURE_NAMES}
    x[SIGNAL] = signal
    return x


def purchase_stream(n: int = 300, seed: int = 7) -> list[Example]:
    """Customers of a repeat-purchase business (Pareto/NBD-like: a purchase rate that
    differs between customers, a silent dropout), each seen at a moment ``age_days`` after
    the first purchase and labelled churned when no purchase follows within 90 days;
    every other feature is noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rate, lifetime, age = rng.gammavariate(0.8, 1 / 20), rng.expovariate(1 / 300), rng.uniform(30, 720)
        purchases = _purchase_times(rng, rate, min(lifetime, age + 90))
        before = [t for t in purchases if t <= age]
        x = {name: rng.random() for name in FEATURE_NAMES}
        x.update(rfm_frequency=float(len(before)), rfm_recency_days=before[-1] if before else 0.0, rfm_age_days=age)
        out.append((x, len(before) == len(purchases)))
    return out


def _purchase_times(rng: random.Random, rate: float, until: float) -> list[float]:
    """Repeat-purchase times of a Poisson process with ``rate`` per day up to ``until``."""
    times, now = [], rng.expovariate(rate)
    while now <= until:
        times.append(now)
        now += rng.expovariate(rate)
    return times


def purchase_probe(frequency: float, recency: float, age: float) -> dict[str, float]:
    """A contact with average noise and the given purchase summary."""
    x = {name: 0.5 for name in FEATURE_NAMES}
    x.update(rfm_frequency=frequency, rfm_recency_days=recency, rfm_age_days=age)
    return x


@dataclass(frozen=True)
class Scenario:
    """What a model is shown: a labelled stream in which the features it reads tell the
    classes apart, a clearly positive and a clearly negative contact, and probes."""

    stream: Callable[..., list[Example]]
    positive: dict[str, float]
    negative: dict[str, float]
    probes: tuple[dict[str, float], ...]


#: By the features a model declares it needs (``required_features``; none: it learns from
#: the labels over every feature). ``bgnbd`` reads the purchase summary and fits it
#: without the labels, so its stream is one where that summary predicts churn; a model
#: declaring features with no scenario here fails the suite rather than skipping it.
SCENARIOS = {
    (): Scenario(stream, probe(3.0), probe(0.0), tuple(probe(s) for s in (-1.0, 0.0, 1.5, 3.0, 4.0))),
    PURCHASES: Scenario(
        purchase_stream, purchase_probe(1, 10.0, 600.0), purchase_probe(20, 595.0, 600.0),
        (purchase_probe(1, 10.0, 600.0), purchase_probe(20, 595.0, 600.0), purchase_probe(0, 0.0, 40.0),
         purchase_probe(3, 100.0, 300.0), {}),
    ),
}


def scenario(name: str) -> Scenario:
    return SCENARIOS[tuple(getattr(build_estimator(name)[1], "required_features", ()))]


def trained(name: str, n: int = 300) -> ScoreModel:
    model = ScoreModel.build(ModelConfig(name="lead", estimator=name))
    for x, y in scenario(name).stream(n):
        model.learn(x, y, model.predict(x))
    return model


def predictions(model: ScoreModel) -> list[float]:
    return [model.predict(x) for x in scenario(model.estimator_name).probes]


# ------------------------------------------------------------------ River's own checks
@pytest.fixture
def sklearn_importable(monkeypatch):
    """river.checks imports ``sklearn.datasets`` unconditionally but uses it only for
    multi-output regressors; scikit-learn is no dependency of ours, so an empty stand-in
    is enough for classifiers when it is not installed."""
    if importlib.util.find_spec("sklearn") is None:
        fake = types.ModuleType("sklearn")
        fake.datasets = types.ModuleType("sklearn.datasets")  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "sklearn", fake)
        monkeypatch.setitem(sys.modules, "sklearn.datasets", fake.datasets)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", MODELS)
def test_river_check_estimator(name, sklearn_importable):
    """A shipped model is a River estimator and must follow River's conventions (clone,
    pickling, pure predictions, new and vanishing features, seeding, bounded memory...)."""
    estimator = build_estimator(name)[1]
    if not isinstance(estimator, base.Estimator):
        pytest.skip(f"{name} builds a {type(estimator).__name__}, not a River estimator")
    checks.check_estimator(estimator)


# ------------------------------------------------------------------ our contract
@pytest.mark.parametrize("name", MODELS)
def test_predicts_a_probability_before_learning(name):
    """The engine scores contacts before any label has arrived."""
    model = ScoreModel.build(ModelConfig(name="lead", estimator=name))
    for x in scenario(name).probes:
        p = model.predict(x)
        assert isinstance(p, float) and 0.0 <= p <= 1.0


@pytest.mark.parametrize("name", MODELS)
def test_learns_a_separating_feature(name):
    """After a few hundred labels, a clearly positive contact outranks a clearly negative one
    (on the features the model reads: see ``SCENARIOS``)."""
    model, case = trained(name), scenario(name)
    positive, negative = model.predict(case.positive), model.predict(case.negative)
    assert 0.0 <= negative < positive <= 1.0, (name, positive, negative)


@pytest.mark.parametrize("name", MODELS)
def test_missing_features_do_not_crash(name):
    """Profiles do not always carry every feature (an old checkpoint, a plug-in feature
    set): partial and empty dicts must be scored and learned from, fresh and trained."""
    some = {n: 1.0 for n in FEATURE_NAMES[::3]}
    fresh, model = ScoreModel.build(ModelConfig(name="lead", estimator=name)), trained(name, 150)
    for m in (fresh, model):
        for x in (some, {}):
            assert 0.0 <= m.predict(x) <= 1.0
            m.learn(x, True, m.predict(x))
            assert 0.0 <= m.predict(x) <= 1.0
    needed = list(getattr(build_estimator(name)[1], "required_features", ()))
    subset = ScoreModel.build(ModelConfig(name="lead", estimator=name, features=[*needed, SIGNAL, "known"]))
    for x, y in scenario(name).stream(50):
        subset.learn(x, y)
    assert 0.0 <= subset.predict({}) <= 1.0


@pytest.mark.parametrize("name", MODELS)
def test_pickle_round_trip_keeps_predictions_and_future_learning(name):
    """A pickled model predicts the same and, fed the same labels, keeps learning the
    same (random state included)."""
    model = trained(name, 200)
    copy = pickle.loads(pickle.dumps(model))
    assert predictions(copy) == predictions(model)
    for x, y in scenario(name).stream(100, seed=8):
        model.learn(x, y)
        copy.learn(x, y)
    assert predictions(copy) == predictions(model)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip_keeps_predictions(name):
    """A restart restores the model from its checkpoint: same predictions, same labels."""
    model = trained(name, 200)
    restored = decode_checkpoint(encode_checkpoint(model), model.config)
    assert restored.version == model.version
    assert restored.labels == model.labels == 200
    assert predictions(restored) == predictions(model)


@pytest.mark.parametrize("name", MODELS)
def test_two_builds_share_no_state(name):
    """Champion and challenger (or two scores) built from one configuration are separate
    models: one learning leaves the other untouched."""
    config = ModelConfig(name="lead", estimator=name)
    a, b = ScoreModel.build(config), ScoreModel.build(config)
    assert a.estimator is not b.estimator
    before = predictions(b)
    for x, y in scenario(name).stream(200):
        a.learn(x, y)
    assert predictions(a) != before  # a learned something...
    assert predictions(b) == before  # ...and b did not


@pytest.mark.parametrize("name", MODELS)
def test_a_calibrated_model_keeps_the_contract(name):
    """``calibration = "platt"`` (the default lead model's) puts any model's scores through a map
    fitted on its resolved labels: still probabilities, the same ranking, its own version, and
    restored from its checkpoint to the same predictions."""
    config = ModelConfig(name="lead", estimator=name, calibration="platt")
    model, case = ScoreModel.build(config), scenario(name)
    assert all(0.0 <= model.predict(x) <= 1.0 for x in case.probes)
    for x, y in case.stream(300):
        model.learn(x, y, model.predict(x))
    assert model.calibrator is not None and model.calibrator.fitted_on == 300
    assert 0.0 <= model.predict(case.negative) < model.predict(case.positive) <= 1.0
    assert all(0.0 <= model.predict(x) <= 1.0 for x in case.probes)
    restored = decode_checkpoint(encode_checkpoint(model), config)
    assert predictions(restored) == predictions(model)
    assert config.version != ModelConfig(name="lead", estimator=name).version


def changed_params(name: str) -> dict:
    """A valid change of the first numeric parameter of the model's factory."""
    for p in inspect.signature(resolve(name)[1]).parameters.values():
        if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
            return {p.name: p.default * 2 if p.default else 1}
    pytest.skip(f"{name}'s factory has no numeric parameter to change")


@pytest.mark.parametrize("name", MODELS)
def test_version_is_stable_and_changes_with_the_definition(name):
    """Checkpoints are keyed by version: the same definition is the same version (whatever
    the slot), a changed parameter or feature list is a new one."""
    version = ModelConfig(name="lead", estimator=name).version
    assert version.startswith(f"{name}-")
    assert ModelConfig(name="churn", estimator=name).version == version
    assert ModelConfig(name="lead", estimator=name, params=changed_params(name)).version != version
    assert ModelConfig(name="lead", estimator=name, features=list(FEATURE_NAMES[:-1])).version != version
    assert ModelConfig(name="lead", estimator=name, features=list(reversed(FEATURE_NAMES))).version != version


@pytest.mark.parametrize("name", MODELS)
def test_building_is_deterministic(name):
    """Seeds are fixed: two fresh models fed the same stream predict exactly the same
    at every step, so runs and replays are reproducible."""
    config = ModelConfig(name="lead", estimator=name)
    a, b = ScoreModel.build(config), ScoreModel.build(config)
    for x, y in scenario(name).stream(200):
        assert a.predict(x) == b.predict(x)
        a.learn(x, y)
        b.learn(x, y)
    assert predictions(a) == predictions(b)


# ------------------------------------------------------------------ bad configurations
@pytest.mark.parametrize("kwargs, says", [
    ({"estimator": "nope"}, "'nope' is neither a registered model (arf, bgnbd, bgnbd_logreg, hat, logreg"),
    ({"estimator": "no_such_package.models:factory"}, "cannot import 'no_such_package.models:factory'"),
    ({"estimator": "river.linear_model:NoSuchModel"}, "has no attribute 'NoSuchModel'"),
    ({"estimator": "river.linear_model.LinearRegression"}, "builds a LinearRegression, which has no predict_proba_one"),
    ({"estimator": "hat", "params": {"no_such": 1}}, "'hat' does not take these params"),
    ({"estimator": "logreg", "features": ["no_such_feature"]}, "unknown feature(s) ['no_such_feature']"),
    ({"estimator": "bgnbd", "features": ["cart_value", "rfm_age_days"]},
     "'bgnbd' reads rfm_frequency, rfm_recency_days, rfm_age_days: add rfm_frequency, rfm_recency_days to its features"),
])
def test_a_bad_configuration_is_a_value_error_naming_the_problem(kwargs, says):
    """Mistakes surface when the settings load, with a message that says what is wrong."""
    with pytest.raises(ValueError, match=re.escape(says)):
        ModelConfig(name="lead", **kwargs)


def test_a_regressor_really_lacks_predict_proba_one():
    """Guards the case above: it tests a missing verb only while LinearRegression lacks it."""
    from river import linear_model

    assert not hasattr(linear_model.LinearRegression(), "predict_proba_one")


# ------------------------------------------------------------------ duck-typed estimators
class RunningRate:
    """Not a River estimator, only shaped like one: the smoothed share of positive labels."""

    def __init__(self, prior: float = 0.5, weight: float = 2.0) -> None:
        self.prior, self.weight, self.n, self.positives = prior, weight, 0, 0

    def learn_one(self, x, y) -> None:
        self.n += 1
        self.positives += bool(y)

    def predict_proba_one(self, x) -> dict[bool, float]:
        p = (self.positives + self.prior * self.weight) / (self.n + self.weight)
        return {True: p, False: 1.0 - p}


# Referenced by this module's own name, like the stand-ins of tests/test_engine_step.py
# (tests/ is no package: pytest imports this file as a top-level module).
RUNNING_RATE = f"{__name__}:RunningRate"
#: An instance without clone(): each build must get its own deep copy.
SHARED_INSTANCE = RunningRate()


def test_a_duck_typed_estimator_by_import_path():
    """Anything with learn_one / predict_proba_one works, with params, versions and checkpoints."""
    config = ModelConfig(name="lead", estimator=RUNNING_RATE, params={"prior": 0.2})
    model = ScoreModel.build(config)
    assert model.estimator_name == "RunningRate" and model.version.startswith("RunningRate-")
    assert model.predict({}) == pytest.approx(0.2)
    for _ in range(3):
        model.learn({}, True, model.predict({}))
    assert model.predict({}) == pytest.approx((3 + 0.4) / 5)
    restored = decode_checkpoint(encode_checkpoint(model), config)
    assert restored.predict({}) == model.predict({}) and restored.labels == 3
    with pytest.raises(ValueError, match=re.escape("does not take these params")):
        ModelConfig(name="lead", estimator=RUNNING_RATE, params={"no_such": 1})


def test_a_duck_typed_instance_is_copied_per_build():
    """A module-level instance is deep-copied, so two slots never share one mutable model."""
    config = ModelConfig(name="lead", estimator=f"{__name__}:SHARED_INSTANCE")
    a, b = ScoreModel.build(config), ScoreModel.build(config)
    assert a.estimator is not b.estimator and a.estimator is not SHARED_INSTANCE
    a.learn({}, True)
    assert b.predict({}) == SHARED_INSTANCE.predict_proba_one({})[True] == 0.5
