"""Scoring models: which estimator, on which features, and its progressive evaluation.

An estimator is named in configuration by a registered name (``logreg``, ``hat``,
``arf``, ``bgnbd``, ``bgnbd_logreg``, or one a plug-in registers in the ``touchline.models`` entry-point group) or by
an import path (``package.module:factory`` or ``package.module.Class``). Whatever it
names must build an object with River's two verbs, ``learn_one`` and
``predict_proba_one``: a River estimator or pipeline, or anything shaped like one.

A model learns only when a label resolves, from the features captured when it scored
(see :mod:`touchline.decisions.labels`), and each label first grades the prediction
made back then (progressive validation, :mod:`touchline.decisions.evaluation`).

>>> m = ScoreModel.build(ModelConfig(name="lead"))
>>> m.version
'logreg-a6e0dcb5'
>>> 0.0 <= m.predict({"known": 1.0}) <= 1.0
True
>>> _ = m.learn({"known": 1.0}, True, 0.5); m.labels
1
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from river import compose, linear_model, optim, preprocessing

from touchline.decisions.errors import TouchlineError, close_match
from touchline.decisions.plugins import Registry
from touchline.decisions.delayed_labels import HeldLabels
from touchline.decisions.evaluation import Evaluation
from touchline.decisions.features import FEATURE_NAMES
from touchline.decisions.platt import PlattCalibrator
from touchline.decisions.scaled_logistic import ScaledLogistic


# ------------------------------------------------------------------ shipped models
def default_pipeline(learning_rate: float = 0.01, l2: float = 0.0) -> compose.Pipeline:
    """StandardScaler | LogisticRegression (plain SGD, River's default rate 0.01): fast,
    stable and well calibrated; the default for both scores."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2),
    )


def hoeffding_adaptive_tree(grace_period: int = 100, delta: float = 1e-5, max_depth: int = 12,
                            seed: int = 42) -> Any:
    """A Hoeffding adaptive tree: picks up interactions (cart value x recency) a linear
    model cannot, and replaces branches whose error drifts (ADWIN per node)."""
    from river import tree  # imported when used: river's trees and forests import scipy (about 1 s)

    return tree.HoeffdingAdaptiveTreeClassifier(
        grace_period=grace_period, delta=delta, max_depth=max_depth, leaf_prediction="nba", seed=seed
    )


def adaptive_random_forest(n_models: int = 5, max_features: str | int = "sqrt", lambda_value: int = 6,
                           seed: int = 42) -> Any:
    """An adaptive random forest: the strongest of the three on non-linear data and the
    slowest (each label trains ``n_models`` trees, each with a drift detector)."""
    from river import forest

    return forest.ARFClassifier(n_models=n_models, max_features=max_features, lambda_value=lambda_value,
                                seed=seed)


#: Shipped estimators by short name (plug-ins add theirs through entry points).
BUILTIN_MODELS: dict[str, str] = {
    "logreg": "touchline.decisions.estimators:default_pipeline",
    "hat": "touchline.decisions.estimators:hoeffding_adaptive_tree",
    "arf": "touchline.decisions.estimators:adaptive_random_forest",
    "bgnbd": "touchline.decisions.bgnbd_churn:BGNBDChurn",
    "bgnbd_logreg": "touchline.decisions.bgnbd_logistic:BGNBDLogistic",
}
ENTRY_POINT_GROUP = "touchline.models"
#: Estimators by short name: the shipped ones, then the ``touchline.models`` entry points.
MODELS = Registry("model", ENTRY_POINT_GROUP, BUILTIN_MODELS)


def registered_models() -> dict[str, str]:
    """Short name -> import path, shipped ones and those registered by installed plug-ins."""
    return MODELS.paths()


def resolve(spec: str) -> tuple[str, Callable[..., Any]]:
    """(short name, factory) for a registered name or an import path; clear errors otherwise.

    >>> resolve("hat")[0], resolve("river.linear_model.LogisticRegression")[0]
    ('hat', 'LogisticRegression')
    >>> resolve("nope")
    Traceback (most recent call last):
    ...
    ValueError: 'nope' is neither a registered model (arf, bgnbd, bgnbd_logreg, hat, logreg) nor an import path like 'package.module:factory'
    """
    registry = registered_models()
    if spec in registry:
        return spec, _import(registry[spec], spec)
    if ":" not in spec and "." not in spec:
        raise ValueError(f"{spec!r} is neither a registered model ({', '.join(sorted(registry))}) "
                         "nor an import path like 'package.module:factory'")
    target = _import(spec, spec)
    return spec.replace(":", ".").rpartition(".")[2], target


def _import(path: str, spec: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form 'package.module:factory' or 'package.module.Class'")
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except ImportError as exc:
        raise ValueError(f"cannot import {spec!r}: {exc}") from None
    except AttributeError as exc:
        raise ValueError(f"cannot import {spec!r}: {exc}") from None
    return target


def build_estimator(spec: str, params: dict[str, Any] | None = None) -> tuple[str, Any]:
    """(short name, a new estimator) for ``spec`` built with ``params``.

    A class or factory is called with the params; an estimator *instance* (e.g. a
    pipeline defined at module level) is cloned, River-style, so two slots never share
    one mutable model.
    """
    short, target = resolve(spec)
    params = dict(params or {})
    if inspect.isclass(target) or (callable(target) and not hasattr(target, "learn_one")):
        estimator = _call_factory(target, spec, params)
    elif hasattr(target, "learn_one"):
        estimator = _copy_instance(target, spec, params)
    else:
        raise ValueError(f"{spec!r} is neither a class, a factory nor an estimator")
    _check_verbs(estimator, spec)
    return short, estimator


def _call_factory(target: Callable[..., Any], spec: str, params: dict[str, Any]) -> Any:
    """A class or factory called with ``params``: wrong names are told before the call."""
    try:
        inspect.signature(target).bind(**params)
    except TypeError as exc:
        raise ValueError(f"{spec!r} does not take these params: {exc}") from None
    except ValueError:  # no signature (a builtin): let the call say it
        pass
    try:
        return target(**params)
    except Exception as exc:  # the factory's own complaint, e.g. a bad value
        raise ValueError(f"building {spec!r} failed: {type(exc).__name__}: {exc}") from None


def _copy_instance(target: Any, spec: str, params: dict[str, Any]) -> Any:
    """An estimator instance cloned (with ``params`` when it can take them), else deep-copied."""
    if hasattr(target, "clone"):
        try:
            return target.clone(params) if params else target.clone()
        except Exception as exc:
            raise ValueError(f"cloning {spec!r} with {params} failed: {exc}") from None
    if params:
        raise ValueError(f"{spec!r} is an instance without clone(); it takes no params")
    return copy.deepcopy(target)


def _check_verbs(estimator: Any, spec: str) -> None:
    """River's two verbs are what the engine calls: their absence is told at start."""
    missing = [verb for verb in ("learn_one", "predict_proba_one") if not callable(getattr(estimator, verb, None))]
    if missing:
        raise ValueError(f"{spec!r} builds a {type(estimator).__name__}, which has no {' or '.join(missing)} "
                         "(a binary classifier with River's API is needed)")


def check_inputs(estimator: Any, features: list[str], spec: str) -> None:
    """An estimator that declares the features it reads (``required_features``, e.g.
    ``bgnbd``'s purchase summary) is refused a feature list without them: it could only
    ever predict its prior.

    >>> check_inputs(build_estimator("bgnbd")[1], ["cart_value", "rfm_frequency"], "bgnbd")
    Traceback (most recent call last):
    ...
    ValueError: 'bgnbd' reads rfm_frequency, rfm_recency_days, rfm_age_days: add rfm_recency_days, rfm_age_days to its features
    """
    needed = [str(name) for name in getattr(estimator, "required_features", ())]
    missing = [name for name in needed if name not in features]
    if missing:
        raise ValueError(f"{spec!r} reads {', '.join(needed)}: add {', '.join(missing)} to its features")


def trial(estimator: Any, features: list[str], spec: str, params: dict[str, Any]) -> None:
    """Learn one example of each class on a throwaway estimator and predict: a parameter of
    the right name but a wrong type or value fails here, at start, not at the first label."""
    x = {name: 0.0 for name in features}
    try:
        estimator.learn_one(x, True)
        estimator.learn_one(dict(x, **{features[0]: 1.0}), False)
        proba = estimator.predict_proba_one(x)
    except Exception as exc:
        shown = f" with {params}" if params else ""
        raise ValueError(f"{spec!r}{shown} does not work: {type(exc).__name__}: {exc}") from None
    if not isinstance(proba, dict) or not proba:
        raise ValueError(f"{spec!r} predicts nothing after learning both classes (got {proba!r}); "
                         "check its params")


# ------------------------------------------------------------------ configuration
Scalar = str | int | float | bool
#: The features the custom attributes of the settings in force in this process give (set as the
#: settings load, see touchline/settings.py; process-wide, as the engine's worker threads read
#: stored model specs too): every attribute and trait name, and those of them whose values are
#: text, which a model reads as ``NAME=VALUE`` indicators.
_DECLARED: dict[str, frozenset[str]] = {"names": frozenset(), "text": frozenset()}


def declare_features(names: frozenset[str], text: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Set the custom attribute features models may name; returns the ones declared before."""
    before = (_DECLARED["names"], _DECLARED["text"])
    _DECLARED.update(names=names, text=text)
    return before


def unknown_features(names: list[str]) -> list[str]:
    """Those of ``names`` that neither a built-in feature nor a declared custom attribute gives,
    each with a did-you-mean.

    >>> before = declare_features(frozenset({"tier"}), frozenset({"tier"}))
    >>> unknown_features(["cart_value", "tier", "tier=gold", "teir=gold", "cart_valeu"])
    ["'teir=gold' (did you mean 'tier=...'?)", "'cart_valeu' (did you mean 'cart_value'?)"]
    >>> _ = declare_features(*before)
    """
    custom, text = _DECLARED["names"], _DECLARED["text"]
    known = {*FEATURE_NAMES, *custom}
    out = []
    for feature in names:
        name, eq, _ = feature.partition("=")
        if (feature in known and not eq) or (eq and name in text):
            continue
        close = close_match(name, text if eq else known)
        hint = f" (did you mean {(close + '=...') if eq else close!r}?)" if close else ""
        out.append(f"{feature!r}{hint}")
    return out


class ModelConfig(BaseModel):
    """How one model is built: which estimator, with which parameters, on which features."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", description="filled in from the settings key (lead, churn)")
    estimator: str = Field(
        default="logreg",
        description="a registered name (logreg, hat, arf, bgnbd, bgnbd_logreg, or a plug-in's) or 'package.module:factory'",
    )
    params: dict[str, Scalar | list[Scalar] | None] = Field(
        default_factory=dict, description="keyword arguments for the estimator's factory or class")
    features: list[str] = Field(default_factory=lambda: list(FEATURE_NAMES))
    calibration: Literal["none", "platt"] = Field(
        default="none", description="platt: a calibration map refitted on resolved labels, applied to every "
        "score (see touchline.decisions.platt)")
    warm_start: str | None = Field(
        default=None, description="the offline training this model starts from ('touchline models train' "
        "sets it): its checkpoint must be in the model store")

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: list[str]) -> list[str]:
        unknown = unknown_features(value)
        if unknown:
            custom = sorted(_DECLARED["names"])
            raise ValueError(f"unknown feature(s) [{', '.join(unknown)}]; known: {', '.join(FEATURE_NAMES)}"
                             f"{', and the custom attributes ' + ', '.join(custom) if custom else ''}")
        if not value:
            raise ValueError("at least one feature is required")
        if len(set(value)) != len(value):
            raise ValueError("a feature is listed twice")
        return value

    @model_validator(mode="after")
    def _buildable(self) -> "ModelConfig":
        _, estimator = build_estimator(self.estimator, self.params)  # every mistake surfaces at start, by key
        check_inputs(estimator, self.features, self.estimator)
        trial(estimator, self.features, self.estimator, self.params)
        return self

    @property
    def version(self) -> str:
        """Short name + a stable hash of what defines the model: the same configuration
        is the same version in every process, a changed parameter or feature list is a new one."""
        extra = {k: v for k, v in (("calibration", self.calibration), ("warm_start", self.warm_start))
                 if v not in ("none", None)}  # absent when unset: the versions from before they existed stand
        canonical = orjson.dumps([self.estimator, self.params, self.features, *([extra] if extra else [])],
                                 option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(canonical, digest_size=4).hexdigest()
        return f"{resolve(self.estimator)[0]}-{digest}"

    def spec(self) -> dict[str, Any]:
        """The definition without the slot name, as stored in deployments and checkpoints."""
        return {"estimator": self.estimator, "params": self.params, "features": self.features,
                "calibration": self.calibration, "warm_start": self.warm_start}


SPEC_KEYS = ("estimator", "params", "features", "calibration", "warm_start")


class ModelSpecError(TouchlineError, ValueError):
    """A stored model that cannot be built here (e.g. a plug-in this machine cannot import),
    in one line naming the score, the role and the estimator's import path; ``reason`` is
    the problem alone."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def config_from(name: str, spec: dict[str, Any], role: str = "champion") -> ModelConfig:
    """A model configuration from a stored spec (a deployment's champion or challenger).

    >>> try:
    ...     config_from("lead", {"estimator": "nowhere.module:make"}, "challenger")
    ... except ModelSpecError as exc:
    ...     print(exc)
    lead challenger 'nowhere.module:make' cannot be built here: cannot import 'nowhere.module:make': No module named 'nowhere'
    """
    try:
        return ModelConfig(name=name, **{k: spec[k] for k in SPEC_KEYS if k in spec})
    except ValidationError as exc:
        raise _spec_error(name, role, spec, exc) from None


def score_settings(name: str, raw: dict[str, Any]) -> ScoreSettings:
    """A stored score (champion, challenger, promotion rule) as settings; ModelSpecError, one
    line naming the model that cannot be built, if it cannot."""
    try:
        return ScoreSettings(**{**raw, "name": name})
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        role = {"challenger": "challenger", "promote": "promotion rule"}.get(str(loc[0]) if loc else "", "champion")
        spec = raw.get("challenger") if role == "challenger" else raw
        raise _spec_error(name, role, spec, exc) from None


def _spec_error(name: str, role: str, spec: Any, exc: ValidationError) -> ModelSpecError:
    """``lead challenger 'pkg.mod:make' cannot be built here: <the first problem>`` (+ how many more)."""
    errors = exc.errors()
    err = errors[0]
    inner = [str(p) for p in err["loc"] if p not in ("challenger", "promote")]
    field_ = f"{'.'.join(inner)}: " if inner else ""
    estimator = spec.get("estimator", "logreg") if isinstance(spec, dict) else spec
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    reason = f"{field_}{str(err['msg']).removeprefix('Value error, ')}{more}"
    return ModelSpecError(f"{name} {role} {estimator!r} cannot be built here: {reason}", reason)


class PromotionRule(BaseModel):
    """Promote the challenger when it beats the champion by ``margin`` on ``metric``,
    measured on the same ``min_labels`` (or more) labels."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["roc_auc", "log_loss"] = "log_loss"
    margin: float = Field(default=0.01, ge=0, le=1, description="roc_auc points, or log loss lower by this")
    min_labels: int = Field(default=500, ge=1)


class ScoreSettings(ModelConfig):
    """One score (lead or churn): the champion that decides, an optional challenger that
    scores in shadow and learns from the same labels, and an optional promotion rule."""

    challenger: ModelConfig | None = None
    promote: PromotionRule | None = Field(default=None, description="automatic promotion (off when absent)")

    def champion(self) -> ModelConfig:
        """The champion's configuration (already validated with these settings: not built again)."""
        return ModelConfig.model_construct(name=self.name, **self.spec())

    def challenger_config(self) -> ModelConfig | None:
        if self.challenger is None:
            return None
        return self.challenger.model_copy(update={"name": self.name})


# ------------------------------------------------------------------ the model
@dataclass
class ScoreModel:
    """A named online binary classifier with its progressive evaluation."""

    name: str
    version: str
    estimator_name: str
    feature_names: tuple[str, ...]
    estimator: Any
    config: ModelConfig
    evaluation: Evaluation = field(default_factory=Evaluation)
    #: For a challenger: the champion's evaluation on exactly the labels this model was
    #: graded on, so the two are compared like for like.
    versus: Evaluation | None = None
    #: Where this model's state came from (fresh, or the checkpoint it was restored from).
    origin: str = "fresh"
    #: Resolved labels waiting for their observation's horizon (``labels.learn_at_horizon``).
    held: HeldLabels = field(default_factory=HeldLabels)
    #: The calibration map applied to its scores (``calibration = "platt"``), else None.
    calibrator: PlattCalibrator | None = None
    #: The one-pass reader of the default pipeline (see :mod:`touchline.decisions.scaled_logistic`)
    #: and the estimator it was made for (a restore replaces the estimator).
    _shortcut: ScaledLogistic | None = field(default=None, init=False, repr=False, compare=False)
    _shortcut_for: Any = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, config: ModelConfig) -> "ScoreModel":
        short, estimator = build_estimator(config.estimator, config.params)
        return cls(name=config.name, version=config.version, estimator_name=short,
                   feature_names=tuple(config.features), estimator=estimator, config=config,
                   calibrator=PlattCalibrator() if config.calibration == "platt" else None)

    @property
    def labels(self) -> int:
        return self.evaluation.labels

    def select(self, features: dict[str, float]) -> dict[str, float]:
        """The subset of ``features`` this model reads (all of them: no copy)."""
        if self.feature_names == FEATURE_NAMES:
            return features
        return {name: features.get(name, 0.0) for name in self.feature_names}

    def predict(self, features: dict[str, float]) -> float:
        """Probability of the positive class (0.5 when the estimator has nothing to say),
        through the calibration map when there is one."""
        p = self._raw(self.select(features))
        return p if self.calibrator is None else self.calibrator.map(p)

    def _raw(self, x: dict[str, float]) -> float:
        """The estimator's own probability for the selected features ``x``."""
        shortcut = self._one_pass()
        p = shortcut.predict(x) if shortcut is not None else None
        if p is None:
            proba = self.estimator.predict_proba_one(x)
            p = float(proba.get(True, 0.0)) if proba else 0.5
        return min(1.0, max(0.0, p)) if math.isfinite(p) else 0.5

    def learn(self, features: dict[str, float], label: bool, predicted: float | None = None,
              delay_ms: int = 0, at_ms: int | None = None, learn_at_ms: int | None = None) -> bool:
        """Grade the prediction made at scoring time (when there is one), then train on the
        captured features: now, or, given ``learn_at_ms`` after the event time ``at_ms``, once
        the labels reach it (see :mod:`touchline.decisions.delayed_labels`). Returns True when
        the grading detected drift.

        >>> m = ScoreModel.build(ModelConfig(name="lead"))
        >>> _ = m.learn({"known": 1.0}, True, 0.5, at_ms=0, learn_at_ms=100)
        >>> m.labels, len(m.held)  # graded now, learned at 100
        (1, 1)
        >>> _ = m.learn({"known": 0.0}, False, 0.5, at_ms=100); len(m.held)
        0
        """
        drifted = self.evaluation.update(label, predicted, delay_ms) if predicted is not None else False
        if at_ms is not None:
            self.release(at_ms)
            if learn_at_ms is not None and learn_at_ms > at_ms:
                self.held.add(learn_at_ms, features, label)
                return drifted
        self.train(features, label)
        return drifted

    def release(self, now_ms: int) -> None:
        """Train on the held labels whose time has come by ``now_ms``, oldest first."""
        for features, label in self.held.due(now_ms):
            self.train(features, label)

    def train(self, features: dict[str, float], label: bool) -> None:
        """Learn one label (the calibration map first sees what the model says before learning it)."""
        x = self.select(features)
        if self.calibrator is not None:
            self.calibrator.update(self._raw(x), label)
        shortcut = self._one_pass()
        if shortcut is None or not shortcut.learn(x, label):
            self.estimator.learn_one(x, label)
            if shortcut is not None:
                shortcut.stale()

    def observe(self, features: dict[str, float]) -> None:
        """Show the estimator a moment when it is observed, before its label: one that learns
        without labels (``observe_one``, e.g. ``bgnbd``'s population) learns from every
        moment alike, not only from those whose label has resolved by now (a return resolves
        a churn label early, so those over-represent customers who came back)."""
        observe_one = getattr(self.estimator, "observe_one", None)
        if observe_one is not None:
            observe_one(self.select(features))

    def _one_pass(self) -> ScaledLogistic | None:
        """The one-pass reader of this estimator, made once per estimator (a restore replaces it)."""
        if self._shortcut_for is not self.estimator:
            self._shortcut, self._shortcut_for = ScaledLogistic.of(self.estimator), self.estimator
        return self._shortcut

    def quality(self) -> dict[str, Any]:
        """Progressive figures so far (None where not defined yet), the labels held for their
        horizon and the calibration map."""
        extra: dict[str, Any] = {"held_labels": len(self.held)}
        if self.calibrator is not None:
            extra["calibration_map"] = self.calibrator.figures()
        return {**self.evaluation.figures(), **extra}
