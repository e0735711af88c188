"""A churn score from the BG/NBD customer-base model, shaped as a River classifier.

It reads a contact's purchase summary -- ``rfm_frequency`` (repeat purchases),
``rfm_recency_days`` (first to last purchase), ``rfm_age_days`` (since the first
purchase) -- and predicts ``True`` ("churned": no purchase within ``horizon_days``) with
the BG/NBD probability (:mod:`touchline.decisions.bgnbd`). The labels are not needed: the
population parameters are fitted by maximum likelihood on a bounded, seeded reservoir of
the summaries it learns from, refitted every ``refit_every`` of them once there are
``min_customers``. Until the first fit it predicts with a weak prior (the published CDNOW
population, in days). A contact without a usable summary (a feature missing, negative or
not a number) is scored as a customer who has just made a first purchase: the
population's prior, and is not learned from. Neither is a summary of age 0 (the engine's
all-zero summary of a contact who never bought, or a first purchase this instant): its
likelihood is 1 whatever the population, so it would only crowd the reservoir.

>>> model = BGNBDChurn(horizon_days=90)
>>> regular = {"rfm_frequency": 12, "rfm_recency_days": 360, "rfm_age_days": 365}
>>> lapsed = {"rfm_frequency": 12, "rfm_recency_days": 100, "rfm_age_days": 365}
>>> model.predict_proba_one(regular)[True] < model.predict_proba_one({})[True] < model.predict_proba_one(lapsed)[True]
True
"""

from __future__ import annotations

import math
import numbers
import random
from typing import Any, Iterable

import numpy as np
import numpy.typing as npt
from river import base
from river.base.typing import ClfTarget, FeatureName

from touchline.decisions import bgnbd

FREQUENCY, RECENCY, AGE = "rfm_frequency", "rfm_recency_days", "rfm_age_days"
#: Before the first fit: Fader, Hardie & Lee's CDNOW estimates (weeks), in days.
PRIOR = bgnbd.Params(r=0.243, alpha=4.414, a=0.793, b=2.426).in_unit(7.0)

Summary = tuple[float, float, float]
#: At most this many contacts' summaries in :meth:`BGNBDChurn.fit_population` (a seeded sample).
POPULATION_FIT_MAX = 100_000


def summary_of(x: dict[FeatureName, Any]) -> Summary | None:
    """``(x, t_x, T)`` in days from the features, or None when they do not make one.
    Inconsistent values are clamped, not refused: recency never exceeds age, and is 0
    without a repeat purchase.

    >>> summary_of({"rfm_frequency": 3, "rfm_recency_days": 50.0, "rfm_age_days": 40.0})
    (3.0, 40.0, 40.0)
    >>> summary_of({"rfm_frequency": 0, "rfm_recency_days": 5.0, "rfm_age_days": 40.0})
    (0.0, 0.0, 40.0)
    >>> summary_of({"rfm_frequency": -1, "rfm_recency_days": 5.0, "rfm_age_days": 40.0}) is None
    True
    """
    values = [_number(x.get(name)) for name in (FREQUENCY, RECENCY, AGE)]
    if any(v is None for v in values):
        return None
    frequency, recency, age = (float(v or 0.0) for v in values)
    frequency = float(math.floor(frequency))
    recency = min(recency, age) if frequency > 0 else 0.0
    return frequency, recency, age


def _number(value: Any) -> float | None:
    """A finite, non-negative number (numpy's included), or None.

    >>> _number(np.int64(3)), _number(True), _number(-0.5), _number(float("inf"))
    (3.0, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


class BGNBDChurn(base.Classifier):
    """P(no purchase within ``horizon_days``) under a BG/NBD population fitted online.

    Parameters
    ----------
    horizon_days
        The churn horizon: ``True`` means no purchase within this many days.
    refit_every
        Refit the population parameters after this many learned summaries.
    min_customers
        Summaries needed before the first fit (the prior is used until then).
    reservoir_size
        At most this many summaries are kept (reservoir sampling: a uniform sample of all
        learned so far, bounded memory).
    seed
        Seed of the reservoir's sampling: the same stream gives the same model.
    prior_sd
        Spread, in e-folds, of the weak log-normal prior around :data:`PRIOR` that keeps a fit
        on summaries saying little about dropout (a young base) off the edge of its search.
    dropout_at_first_purchase
        The MBG/NBD variant: a customer may also drop out right after the first purchase, so a
        one-time buyer's silence counts (BG/NBD holds one alive for sure); see
        :mod:`touchline.decisions.bgnbd`.

    Examples
    --------
    >>> model = BGNBDChurn(min_customers=20, refit_every=20)
    >>> for i in range(40):
    ...     model.learn_one({"rfm_frequency": i % 5, "rfm_recency_days": 10.0 * (i % 5), "rfm_age_days": 100.0}, True)
    >>> model.fits, len(model.reservoir)
    (2, 40)
    >>> round(model.predict_proba_one({})[True], 3) != round(BGNBDChurn().predict_proba_one({})[True], 3)
    True
    """

    #: The features this model reads (the conformance suite feeds a purchase stream).
    required_features = (FREQUENCY, RECENCY, AGE)

    def __init__(self, horizon_days: float = 90.0, refit_every: int = 500, min_customers: int = 200,
                 reservoir_size: int = 2000, seed: int = 42, prior_sd: float = 2.0,
                 dropout_at_first_purchase: bool = False) -> None:
        _check_settings(horizon_days, refit_every, min_customers, reservoir_size)
        if not isinstance(dropout_at_first_purchase, bool):
            raise ValueError(f"dropout_at_first_purchase must be true or false, got {dropout_at_first_purchase!r}")
        if not (isinstance(prior_sd, (int, float)) and math.isfinite(prior_sd) and prior_sd > 0):
            raise ValueError(f"prior_sd must be a number > 0, got {prior_sd!r}")
        self.horizon_days = horizon_days
        self.refit_every = refit_every
        self.min_customers = min_customers
        self.reservoir_size = reservoir_size
        self.seed = seed
        self.prior_sd = prior_sd
        self.dropout_at_first_purchase = dropout_at_first_purchase
        self.params = PRIOR
        self.reservoir: list[Summary] = []
        self.learned = 0
        self.fits = 0
        #: True once the summaries come from observe_one (the engine's observations)
        self.observing = False
        self._since_fit = 0
        self._rng = random.Random(seed)

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {}
        yield {"min_customers": 10, "refit_every": 25, "reservoir_size": 50}
        yield {"min_customers": 10, "refit_every": 25, "reservoir_size": 50, "dropout_at_first_purchase": True}

    def observe_one(self, x: dict[FeatureName, Any]) -> None:
        """A contact's summary at a moment observed for a label (the engine shows every one
        when it is taken): from then on the population is fitted on these alone, and
        :meth:`learn_one` keeps nothing. Which labels have resolved by a given time depends on
        the outcome (a return resolves a churn label early), so the moments of resolved labels
        over-represent customers who came back; the moments observed are a sample of the base."""
        self.observing = True
        self._learn_summary(x)

    def learn_one(self, x: dict[FeatureName, Any], y: ClfTarget) -> None:
        """Keep the contact's summary (the label is not needed) and refit when due, unless the
        summaries come from :meth:`observe_one`."""
        if not getattr(self, "observing", False):
            self._learn_summary(x)

    def _learn_summary(self, x: dict[FeatureName, Any]) -> None:
        summary = summary_of(x)
        if summary is None or summary[2] <= 0:  # no history: nothing to learn about the population
            return
        self._keep(summary)
        self._since_fit += 1
        if len(self.reservoir) >= self.min_customers and (self.fits == 0 or self._since_fit >= self.refit_every):
            self.refit()

    def predict_proba_one(self, x: dict[FeatureName, Any], **kwargs: Any) -> dict[ClfTarget, float]:
        """{False: P(buys within the horizon), True: P(no purchase within it)}."""
        frequency, recency, age = summary_of(x) or (0.0, 0.0, 0.0)
        p = bgnbd.p_no_purchase(self.params, frequency, recency, age, float(self.horizon_days), self._at_first())
        p = min(1.0, max(0.0, p))
        return {False: 1.0 - p, True: p}

    def p_alive(self, x: dict[FeatureName, Any]) -> float:
        """P(the contact is still a customer), for explanations and exports."""
        frequency, recency, age = summary_of(x) or (0.0, 0.0, 0.0)
        return bgnbd.p_alive(self.params, frequency, recency, age, self._at_first())

    def refit(self) -> None:
        """Fit the population on the reservoir (from the current parameters and from the
        prior's centre, the better kept); a fit whose likelihood is not finite keeps them."""
        self._fit(np.asarray(self.reservoir, dtype=np.float64))

    def _fit(self, data: npt.NDArray[np.float64]) -> None:
        prior = bgnbd.Prior(PRIOR, self._prior_sd())
        result = bgnbd.fit(data[:, 0], data[:, 1], data[:, 2], start=self.params, prior=prior, at_first=self._at_first())
        if math.isfinite(result.log_likelihood):
            self.params = result.params
        self.fits += 1
        self._since_fit = 0

    def fit_population(self, features: Iterable[dict[FeatureName, Any]]) -> int:
        """Fit the population on one summary per contact, all as of one moment (a cut-off): the
        standard BG/NBD fit, which a score as of that moment should rest on. The reservoir holds
        summaries of every moment observed (younger, several per contact), a fit of another
        sample. At most :data:`POPULATION_FIT_MAX` of them (a seeded sample); contacts without a
        purchase history are left out. The number of summaries used (0: the parameters are kept)."""
        data = [s for s in map(summary_of, features) if s is not None and s[2] > 0]
        if len(data) < self.min_customers:
            return 0
        if len(data) > POPULATION_FIT_MAX:
            data = random.Random(self.seed).sample(data, POPULATION_FIT_MAX)
        self._fit(np.asarray(data, dtype=np.float64))
        return len(data)

    def _at_first(self) -> bool:
        """``dropout_at_first_purchase``, or False for a model checkpointed before it existed."""
        return bool(getattr(self, "dropout_at_first_purchase", False))

    def _prior_sd(self) -> float:
        """``prior_sd``, or its default for a model checkpointed before it existed."""
        return float(getattr(self, "prior_sd", 2.0))

    def _keep(self, summary: Summary) -> None:
        """Reservoir sampling (algorithm R): every summary learned so far is equally likely kept."""
        self.learned += 1
        if len(self.reservoir) < self.reservoir_size:
            self.reservoir.append(summary)
            return
        slot = self._rng.randrange(self.learned)
        if slot < self.reservoir_size:
            self.reservoir[slot] = summary


def _check_settings(horizon_days: float, refit_every: int, min_customers: int, reservoir_size: int) -> None:
    """Settings that cannot work are told when the model is built."""
    if not (isinstance(horizon_days, (int, float)) and math.isfinite(horizon_days) and horizon_days > 0):
        raise ValueError(f"horizon_days must be a number of days > 0, got {horizon_days!r}")
    for name, value in (("refit_every", refit_every), ("min_customers", min_customers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(reservoir_size, int) or reservoir_size < min_customers:
        raise ValueError(f"reservoir_size ({reservoir_size!r}) must be an integer >= min_customers ({min_customers})")
