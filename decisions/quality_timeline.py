"""Model quality over time: each model's figures per event-time day, on the labels resolved
that day.

The progressive figures of :class:`~touchline.decisions.evaluation.Evaluation` cover a
model's whole life, so a model that got worse last week barely moves them. Here each day
is graded on its own: at the first label of a new day the model's histograms are copied,
and the day's figures are the difference between that copy and the histograms at the end
of the day (so nothing is kept per label, and a restored model's earlier life is not
counted again). The progressive ROC AUC at the end of the day stands beside it.

>>> from touchline.decisions.estimators import ModelConfig, ScoreModel
>>> model = ScoreModel.build(ModelConfig(name="lead"))
>>> timeline = QualityTimeline()
>>> DAY = 86_400_000
>>> for day, labels in ((0, [(True, 0.9), (False, 0.2)]), (1, [(True, 0.3), (False, 0.8)])):
...     for label, p in labels:
...         timeline.before_label("lead", [model], day * DAY)
...         _ = model.evaluation.update(label, p)
>>> [(r["day"], r["labels"], r["roc_auc"], r["progressive_roc_auc"]) for r in timeline.rows()]
[('1970-01-01', 2, 1.0, 1.0), ('1970-01-02', 2, 0.0, 0.75)]
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from touchline.decisions.evaluation import BinnedROCAUC, Calibration, Evaluation

DAY_MS = 86_400_000


class _Graded(Protocol):
    """What the timeline reads of a model: its version and its progressive evaluation."""

    version: str
    evaluation: Evaluation


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """An evaluation's counts at one moment (the start of a day)."""

    labels: int
    positives: int
    log_loss_sum: float
    pos: tuple[int, ...]
    neg: tuple[int, ...]
    cal_count: tuple[int, ...]
    cal_predicted: tuple[float, ...]
    cal_positives: tuple[int, ...]

    @classmethod
    def of(cls, ev: Evaluation) -> "_Snapshot":
        c = ev.calibration
        return cls(ev.labels, ev.positives, ev.log_loss_sum, tuple(ev.roc_auc.pos), tuple(ev.roc_auc.neg),
                   tuple(c.count), tuple(c.predicted), tuple(c.positives))


@dataclass(slots=True)
class _Day:
    """The open day of one model: which day, its evaluation, and the counts when the day began."""

    period: int
    evaluation: Evaluation
    start: _Snapshot


class QualityTimeline:
    """Per score and model version, one row per day that resolved labels for it (see the module docstring)."""

    def __init__(self, period_ms: int = DAY_MS) -> None:
        self.period_ms = period_ms
        self._open: dict[tuple[str, str], _Day] = {}
        self._closed: list[dict[str, Any]] = []

    def before_label(self, score: str, models: Sequence[_Graded], at_ms: int) -> None:
        """Call before a label of ``score`` resolved at event time ``at_ms`` grades ``models``."""
        period = at_ms // self.period_ms
        for model in models:
            key = (score, model.version)
            day = self._open.get(key)
            if day is not None and day.period == period and day.evaluation is model.evaluation:
                continue
            if day is not None:
                self._closed += self._row(key, day)
            self._open[key] = _Day(period, model.evaluation, _Snapshot.of(model.evaluation))

    def rows(self) -> list[dict[str, Any]]:
        """Every day with labels so far (the open days up to now), by score, day and version."""
        rows = self._closed + [r for key, day in self._open.items() for r in self._row(key, day)]
        return sorted(rows, key=lambda r: (r["score"], r["day"], r["version"]))

    def _row(self, key: tuple[str, str], day: _Day) -> list[dict[str, Any]]:
        """The day's figures (no row when no label of the model was graded that day)."""
        ev, start = day.evaluation, day.start
        labels = ev.labels - start.labels
        if labels <= 0:
            return []
        window = _window(ev, start)
        return [{
            "score": key[0], "version": key[1],
            "day": datetime.fromtimestamp(day.period * self.period_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d"),
            "labels": labels, "positives": window.positives,
            "roc_auc": _round(window.auc()), "log_loss": _round(window.log_loss()),
            "calibration_error": _round(window.calibration.ece()), "progressive_roc_auc": _round(ev.auc()),
        }]


def _window(ev: Evaluation, start: _Snapshot) -> Evaluation:
    """An evaluation holding only what ``ev`` counted since ``start``."""
    out = Evaluation()
    out.labels, out.positives = ev.labels - start.labels, ev.positives - start.positives
    out.log_loss_sum = ev.log_loss_sum - start.log_loss_sum
    out.roc_auc = BinnedROCAUC(ev.roc_auc.bins)
    out.roc_auc.pos = [a - b for a, b in zip(ev.roc_auc.pos, start.pos)]
    out.roc_auc.neg = [a - b for a, b in zip(ev.roc_auc.neg, start.neg)]
    cal, now = Calibration(), ev.calibration
    cal.count = [a - b for a, b in zip(now.count, start.cal_count)]
    cal.predicted = [a - b for a, b in zip(now.predicted, start.cal_predicted)]
    cal.positives = [a - b for a, b in zip(now.positives, start.cal_positives)]
    out.calibration = cal
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
