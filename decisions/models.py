"""Online lead and churn scorers: a River estimator plus its feature list, version and
progressive metrics.

A model learns only when a label resolves, from the features captured when it
scored (see :mod:`touchline.decisions.labels`), and its quality is measured the
progressive way: each label first grades the prediction made back then, then trains.

>>> m = ScoreModel.build(ModelConfig(name="lead"))
>>> 0.0 <= m.predict({"known": 1.0}) <= 1.0
True
>>> m.learn({"known": 1.0}, True, 0.5); m.labels
1
"""

from __future__ import annotations

import hashlib
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator
from river import compose, linear_model, metrics, optim, preprocessing

from touchline.decisions.features import FEATURE_NAMES


def default_pipeline() -> Any:
    """StandardScaler | LogisticRegression (SGD at River's default rate 0.01): fast and stable."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.01)),
    )


class ModelConfig(BaseModel):
    """How one score is produced: which estimator, on which features."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", description="filled in from the settings key (lead, churn)")
    estimator: str = Field(
        default="touchline.decisions.models:default_pipeline",
        description="'module:callable' returning an object with learn_one/predict_proba_one",
    )
    features: list[str] = Field(default_factory=lambda: list(FEATURE_NAMES))

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; known: {', '.join(FEATURE_NAMES)}")
        if not value:
            raise ValueError("at least one feature is required")
        return value

    @field_validator("estimator")
    @classmethod
    def _importable(cls, value: str) -> str:
        load_factory(value)
        return value


def load_factory(path: str) -> Callable[[], Any]:
    """Resolve 'package.module:callable' and say clearly what is wrong if it can't be."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not of the form 'package.module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None
    if not callable(factory):
        raise ValueError(f"{path!r} is not callable")
    return factory


class BinnedROCAUC:
    """Progressive ROC AUC from score histograms: O(1) per label, exact to the bin width.

    River's ROCAUC updates a confusion matrix per threshold on every label (~80 µs at 100
    thresholds); counting positives and negatives per score bin and reading the AUC
    on demand costs nothing per label and is within 1/bins of the exact value.

    >>> auc = BinnedROCAUC()
    >>> for y, p in [(True, 0.9), (True, 0.6), (False, 0.4), (False, 0.7)]:
    ...     auc.update(y, p)
    >>> auc.get()
    0.75
    """

    def __init__(self, bins: int = 1000) -> None:
        self.bins = bins
        self.pos = [0] * bins
        self.neg = [0] * bins

    def update(self, label: bool, score: float) -> None:
        b = min(self.bins - 1, max(0, int(score * self.bins)))
        (self.pos if label else self.neg)[b] += 1

    def get(self) -> float:
        """P(score of a positive > score of a negative), ties counted half."""
        n_pos, n_neg = sum(self.pos), sum(self.neg)
        if not n_pos or not n_neg:
            return 0.5
        below = 0  # negatives in lower bins
        wins = 0.0
        for p, n in zip(self.pos, self.neg):
            wins += p * (below + 0.5 * n)
            below += n
        return wins / (n_pos * n_neg)


@dataclass
class ScoreModel:
    """A named online binary classifier with its progressive evaluation."""

    name: str
    version: str
    feature_names: tuple[str, ...]
    estimator: Any
    roc_auc: "BinnedROCAUC" = field(default_factory=lambda: BinnedROCAUC())
    log_loss: metrics.LogLoss = field(default_factory=metrics.LogLoss)
    labels: int = 0
    positives: int = 0

    @classmethod
    def build(cls, config: ModelConfig) -> "ScoreModel":
        digest = hashlib.blake2b(
            f"{config.estimator}|{','.join(config.features)}".encode(), digest_size=4
        ).hexdigest()
        return cls(
            name=config.name,
            version=f"{config.estimator.rpartition(':')[2]}-{digest}",
            feature_names=tuple(config.features),
            estimator=load_factory(config.estimator)(),
        )

    def select(self, features: dict[str, float]) -> dict[str, float]:
        """The subset of ``features`` this model reads (all of them: no copy)."""
        if self.feature_names == FEATURE_NAMES:
            return features
        return {name: features.get(name, 0.0) for name in self.feature_names}

    def predict(self, features: dict[str, float]) -> float:
        """Probability of the positive class."""
        proba = self.estimator.predict_proba_one(self.select(features))
        p = float(proba.get(True, 0.0))
        return p if math.isfinite(p) else 0.5

    def learn(self, features: dict[str, float], label: bool, predicted: float) -> None:
        """Grade the prediction made at scoring time, then train on the captured features."""
        self.roc_auc.update(label, predicted)
        self.log_loss.update(label, min(max(predicted, 1e-6), 1 - 1e-6))
        self.estimator.learn_one(self.select(features), label)
        self.labels += 1
        self.positives += int(label)

    def quality(self) -> dict[str, float | int | None]:
        """Progressive ROC AUC and log loss so far (None until both classes were seen)."""
        both = 0 < self.positives < self.labels
        return {
            "labels": self.labels,
            "positives": self.positives,
            "roc_auc": round(self.roc_auc.get(), 4) if both else None,
            "log_loss": round(self.log_loss.get(), 4) if self.labels else None,
        }
