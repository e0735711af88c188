"""Progressive evaluation of one scoring model on delayed labels.

Each resolved label grades the probability the model gave *when it scored* (never a
fresh prediction: the model has learned since), then the model trains. The figures:
ROC AUC, log loss, calibration per score bucket, label delay and an ADWIN drift
detector on the absolute error stream. All O(1) per label, all plain data so a
checkpoint carries them and a restart continues the same curves.

>>> ev = Evaluation()
>>> for y, p in [(True, 0.9), (True, 0.6), (False, 0.4), (False, 0.7)]:
...     _ = ev.update(y, p, delay_ms=3_600_000)
>>> ev.summary()["roc_auc"], ev.summary()["labels"], ev.summary()["label_delay_hours"]
(0.75, 4, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from river import drift

#: Calibration buckets: predicted probability in [i/10, (i+1)/10).
CALIBRATION_BUCKETS = 10
BUCKET_NAMES = tuple(f"{i / CALIBRATION_BUCKETS:.1f}-{(i + 1) / CALIBRATION_BUCKETS:.1f}"
                     for i in range(CALIBRATION_BUCKETS))
_EPS = 1e-6


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
        """P(score of a positive > score of a negative), ties counted half.

        Counted in whole numbers (twice the wins, so a tie is 1): exact, so the figure is
        the same in any summation order, and numpy sums the bins at once (metrics read
        this every batch).
        """
        pos, neg = np.array(self.pos, dtype=np.int64), np.array(self.neg, dtype=np.int64)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if not n_pos or not n_neg:
            return 0.5
        below = np.cumsum(neg) - neg  # negatives in lower bins
        twice_wins = int(pos @ (2 * below + neg))
        return twice_wins / 2 / (n_pos * n_neg)


class Calibration:
    """Predicted vs observed positive rate per score bucket, and the expected calibration
    error (the label-weighted mean gap between the two).

    >>> c = Calibration()
    >>> for y, p in [(True, 0.95), (False, 0.91), (False, 0.05), (False, 0.02)]:
    ...     c.update(y, p)
    >>> c.rows()[-1]
    {'bucket': '0.9-1.0', 'labels': 2, 'predicted': 0.93, 'observed': 0.5}
    >>> round(c.ece(), 3)
    0.232
    """

    def __init__(self) -> None:
        self.count = [0] * CALIBRATION_BUCKETS
        self.predicted = [0.0] * CALIBRATION_BUCKETS
        self.positives = [0] * CALIBRATION_BUCKETS

    def update(self, label: bool, p: float) -> None:
        b = min(CALIBRATION_BUCKETS - 1, max(0, int(p * CALIBRATION_BUCKETS)))
        self.count[b] += 1
        self.predicted[b] += p
        self.positives[b] += int(label)

    def rows(self) -> list[dict[str, Any]]:
        """Buckets that have labels: mean predicted and observed rate."""
        return [
            {"bucket": BUCKET_NAMES[b], "labels": n, "predicted": round(self.predicted[b] / n, 4),
             "observed": round(self.positives[b] / n, 4)}
            for b, n in enumerate(self.count) if n
        ]

    def ece(self) -> float:
        total = sum(self.count)
        if not total:
            return 0.0
        return sum(abs(self.predicted[b] - self.positives[b]) for b in range(CALIBRATION_BUCKETS)) / total


class Evaluation:
    """The progressive metrics of one model; ``update`` returns True when drift is detected."""

    def __init__(self, drift_delta: float = 0.002) -> None:
        self.labels = 0
        self.positives = 0
        self.roc_auc = BinnedROCAUC()
        self.log_loss_sum = 0.0
        self.calibration = Calibration()
        self.delay_ms_sum = 0
        self.delay_ms_max = 0
        #: ADWIN over |label - p|: a rise in the error's mean means the data (or what the
        #: label means) shifted away from what the model learned.
        self.drift = drift.ADWIN(delta=drift_delta)
        self.drifts = 0
        self.last_drift_label: int | None = None

    def update(self, label: bool, p: float, delay_ms: int = 0) -> bool:
        p = min(max(p, 0.0), 1.0) if math.isfinite(p) else 0.5
        self.labels += 1
        self.positives += int(label)
        self.roc_auc.update(label, p)
        clipped = min(max(p, _EPS), 1 - _EPS)
        self.log_loss_sum += -math.log(clipped if label else 1 - clipped)
        self.calibration.update(label, p)
        delay_ms = max(0, delay_ms)
        self.delay_ms_sum += delay_ms
        self.delay_ms_max = max(self.delay_ms_max, delay_ms)
        before = self.drift.estimation
        self.drift.update(abs(float(label) - p))
        # ADWIN flags any change in the mean error; a model that is still improving (error
        # falling) is not drift. Only a rise is reported.
        if self.drift.drift_detected and self.drift.estimation > before:
            self.drifts += 1
            self.last_drift_label = self.labels
            return True
        return False

    @property
    def both_classes(self) -> bool:
        return 0 < self.positives < self.labels

    def auc(self) -> float | None:
        return self.roc_auc.get() if self.both_classes else None

    def log_loss(self) -> float | None:
        return self.log_loss_sum / self.labels if self.labels else None

    def summary(self) -> dict[str, Any]:
        """Everything, rounded for people (None where it is not defined yet)."""
        return {**self.figures(), "calibration": self.calibration.rows()}

    def figures(self) -> dict[str, Any]:
        """The headline figures: :meth:`summary` without the per-bucket calibration table."""
        auc, ll = self.auc(), self.log_loss()
        return {
            "labels": self.labels,
            "positives": self.positives,
            "roc_auc": None if auc is None else round(auc, 4),
            "log_loss": None if ll is None else round(ll, 4),
            "calibration_error": round(self.calibration.ece(), 4) if self.labels else None,
            "label_delay_hours": round(self.delay_ms_sum / self.labels / 3_600_000, 2) if self.labels else None,
            "drifts": self.drifts,
        }

    def metric(self, name: str) -> float | None:
        """One figure by name, oriented so that higher is better (log loss negated)."""
        if name == "roc_auc":
            return self.auc()
        if name == "log_loss":
            ll = self.log_loss()
            return None if ll is None else -ll
        raise ValueError(f"unknown metric {name!r} (roc_auc, log_loss)")
