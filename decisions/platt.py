"""Online Platt scaling: a calibration map fitted on resolved labels, applied to every score.

A model trained by SGD on a few thousand delayed labels ranks well before its probabilities
are right: noisy weights make it over-confident, and the class balance it learned from moves
as labels resolve. The map ``p -> sigmoid(slope * logit(p) + intercept)`` is refitted every
``refit_every`` labels on the latest ``window`` pairs of (the model's prediction just before it
learned the label, the label), each a prediction on an example the model had not seen, so the
map calibrates the model as it is now. A ridge of ``prior`` pseudo-labels pulls it towards the
identity, so a few labels cannot bend it far and the ranking it adds to the model's is small.

>>> c = PlattCalibrator(refit_every=500)
>>> for i in range(2000):  # says 0.9 and 0.1, right 70% of the time
...     c.update(0.9 if i % 2 else 0.1, (i % 2 == 1) == (i % 20 < 14))
>>> round(c.map(0.9), 2), round(c.map(0.1), 2), c.figures()["fitted_on"]
(0.71, 0.29, 2000)
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

_EPS = 1e-6


def logit(p: float) -> float:
    """log(p / (1 - p)) with ``p`` kept inside (0, 1).

    >>> logit(0.5), round(logit(1.0), 1)
    (0.0, 13.8)
    """
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


class PlattCalibrator:
    """The calibration map of one model (see the module docstring); the identity until its first fit."""

    def __init__(self, window: int = 3000, refit_every: int = 100, prior: float = 100.0) -> None:
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self.refit_every = refit_every
        self.prior = prior
        self.slope = 1.0
        self.intercept = 0.0
        self.seen = 0
        self.fitted_on = 0

    def map(self, p: float) -> float:
        """The calibrated probability of a raw prediction ``p``."""
        if self.fitted_on == 0:
            return p
        z = self.slope * logit(p) + self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def update(self, p: float, label: bool) -> None:
        """One resolved label and the prediction the model gave for it just before learning it."""
        self.pairs.append((logit(p), 1.0 if label else 0.0))
        self.seen += 1
        if self.seen % self.refit_every == 0:
            self.refit()

    def refit(self) -> None:
        """Newton steps on the ridge-penalised log loss of the pairs kept, from the current map."""
        data = np.asarray(self.pairs, dtype=np.float64)
        z, y = data[:, 0], data[:, 1]
        w = np.array([self.slope, self.intercept])
        anchor = np.array([1.0, 0.0])
        for _ in range(25):
            q = 1.0 / (1.0 + np.exp(-np.clip(w[0] * z + w[1], -30, 30)))
            r, v = q - y, q * (1 - q)
            grad = np.array([r @ z, r.sum()]) + self.prior * (w - anchor)
            hess = np.array([[v @ (z * z), v @ z], [v @ z, v.sum()]]) + self.prior * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w = w - step
            if float(np.abs(step).max()) < 1e-9:
                break
        self.slope, self.intercept = float(w[0]), float(w[1])
        self.fitted_on = len(z)

    def figures(self) -> dict[str, Any]:
        """The map now, for status and reports."""
        return {"slope": round(self.slope, 4), "intercept": round(self.intercept, 4) + 0.0, "fitted_on": self.fitted_on}
