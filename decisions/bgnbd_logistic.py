"""A churn score: the BG/NBD customer-base model, corrected by a logistic regression on the labels.

BG/NBD (:mod:`touchline.decisions.bgnbd_churn`) reads only the purchase summary and is
fitted without labels: it knows how frequency, recency and age combine into a chance of
being gone (a long silence means gone for a frequent buyer, little for a rare one, an
interaction no linear model on the features finds), but nothing the labels could teach.
This model starts from the BG/NBD's answer and lets the labels correct it:

    logit P(churn) = logit P_BGNBD(no purchase within H) + b + sum_i w_i z_i

where ``z`` are the features, standardised online, and the BG/NBD's own logit among them
(so the labels can also sharpen or soften it). ``b`` and ``w`` start at 0 -- before any
label the score *is* the BG/NBD's -- and learn by plain SGD on the log loss from every
resolved label, at a small rate: a correction the labels agree on over many contacts, not
the last few. Where the labels carry nothing more, the score stays the BG/NBD's; where
they do (a signal outside the purchase summary, a population BG/NBD fits badly), it moves.

>>> model = BGNBDLogistic(horizon_days=90)
>>> regular = {"rfm_frequency": 12, "rfm_recency_days": 360, "rfm_age_days": 365}
>>> round(model.predict_proba_one(regular)[True], 12) == round(model.bgnbd.predict_proba_one(regular)[True], 12)
True
>>> for _ in range(200):
...     model.learn_one(regular, True)
>>> model.predict_proba_one(regular)[True] > model.bgnbd.predict_proba_one(regular)[True]
True
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from river import base, preprocessing
from river.base.typing import ClfTarget, FeatureName

from touchline.decisions.bgnbd_churn import BGNBDChurn

#: The BG/NBD's logit, as a feature of the correction.
BGNBD_LOGIT = "bgnbd_logit"
#: Probabilities are kept this far from 0 and 1 before their logit is taken.
EDGE = 1e-6


def logit(p: float) -> float:
    """log(p / (1 - p)), with ``p`` kept inside [EDGE, 1 - EDGE].

    >>> logit(0.5), round(logit(1.0), 2)
    (0.0, 13.82)
    """
    p = min(1.0 - EDGE, max(EDGE, p))
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    """1 / (1 + e^-z), without overflow.

    >>> sigmoid(0.0), sigmoid(-1000.0)
    (0.5, 0.0)
    """
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class BGNBDLogistic(base.Classifier):
    """BG/NBD's P(no purchase within ``horizon_days``), corrected by the labels (see the module).

    Parameters
    ----------
    horizon_days
        The churn horizon: ``True`` means no purchase within this many days.
    learning_rate
        SGD step of the correction (small: the BG/NBD is a good start, the labels refine it).
    l2
        L2 penalty on the correction's weights.
    refit_every, min_customers, reservoir_size, seed, prior_sd, dropout_at_first_purchase
        The BG/NBD's (see :class:`~touchline.decisions.bgnbd_churn.BGNBDChurn`).
    """

    #: The BG/NBD reads the purchase summary: a feature list without it is refused.
    required_features = BGNBDChurn.required_features

    def __init__(self, horizon_days: float = 90.0, learning_rate: float = 0.001, l2: float = 0.0,
                 refit_every: int = 500, min_customers: int = 200, reservoir_size: int = 2000, seed: int = 42,
                 prior_sd: float = 2.0, dropout_at_first_purchase: bool = False) -> None:
        for name, value in (("learning_rate", learning_rate), ("l2", l2)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.horizon_days = horizon_days
        self.learning_rate = learning_rate
        self.l2 = l2
        self.refit_every = refit_every
        self.min_customers = min_customers
        self.reservoir_size = reservoir_size
        self.seed = seed
        self.prior_sd = prior_sd
        self.dropout_at_first_purchase = dropout_at_first_purchase
        self.bgnbd = BGNBDChurn(horizon_days, refit_every, min_customers, reservoir_size, seed, prior_sd,
                                dropout_at_first_purchase)
        self.scaler: Any = preprocessing.StandardScaler()  # River is untyped
        self.weights: dict[FeatureName, float] = {}
        self.intercept = 0.0

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {}
        yield {"min_customers": 10, "refit_every": 25, "reservoir_size": 50, "learning_rate": 0.05, "l2": 0.01}

    def _inputs(self, x: dict[FeatureName, Any]) -> tuple[float, dict[FeatureName, Any]]:
        """The BG/NBD's logit, and the features the correction reads (numbers only, with it)."""
        base_logit = logit(self.bgnbd.predict_proba_one(x)[True])
        inputs = {k: float(v) for k, v in x.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        inputs[BGNBD_LOGIT] = base_logit
        return base_logit, inputs

    def _margin(self, base_logit: float, z: dict[FeatureName, float]) -> float:
        weights = self.weights
        return base_logit + self.intercept + sum(weights.get(k, 0.0) * v for k, v in z.items())

    def learn_one(self, x: dict[FeatureName, Any], y: ClfTarget) -> None:
        """One SGD step of the correction on the log loss (the BG/NBD as it scored); then the
        BG/NBD learns the summary, unless it learns from observed moments (``observe_one``)."""
        base_logit, inputs = self._inputs(x)
        self.scaler.learn_one(inputs)
        z = self.scaler.transform_one(inputs)
        error = sigmoid(self._margin(base_logit, z)) - (1.0 if y else 0.0)
        rate, l2, weights = self.learning_rate, self.l2, self.weights
        for k, v in z.items():
            w = weights.get(k, 0.0)
            weights[k] = w - rate * (error * v + l2 * w)
        self.intercept -= rate * error
        self.bgnbd.learn_one(x, y)

    def observe_one(self, x: dict[FeatureName, Any]) -> None:
        """A moment observed for a label: the BG/NBD's population learns from it (see
        :meth:`BGNBDChurn.observe_one`)."""
        self.bgnbd.observe_one(x)

    def fit_population(self, features: Iterable[dict[FeatureName, Any]]) -> int:
        """The BG/NBD's population fitted on one summary per contact as of one moment (see
        :meth:`BGNBDChurn.fit_population`); the correction is kept."""
        return self.bgnbd.fit_population(features)

    def predict_proba_one(self, x: dict[FeatureName, Any], **kwargs: Any) -> dict[ClfTarget, float]:
        """{False: P(buys within the horizon), True: P(no purchase within it)}."""
        base_logit, inputs = self._inputs(x)
        p = sigmoid(self._margin(base_logit, self.scaler.transform_one(inputs)))
        return {False: 1.0 - p, True: p}
