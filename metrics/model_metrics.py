"""Prometheus series of the scoring models, per score (``model``: lead, churn) and ``role``
(champion, challenger): progressive ROC AUC, log loss, calibration per score bucket,
labels, label delay, drift, which version is deployed, and checkpoints.

Bounded labels: two scores, two roles, ten calibration buckets; the version appears
only in ``touchline_model_info``, whose old series are removed on a swap.

>>> from prometheus_client import CollectorRegistry
>>> from touchline.decisions.champion import ModelSlot
>>> from touchline.decisions.estimators import ScoreSettings
>>> reg = CollectorRegistry()
>>> m = ModelMetrics(reg)
>>> slot = ModelSlot("lead", ScoreSettings())
>>> _ = slot.learn({}, True, slot.champion.version, 0.8, {}, delay_ms=7_200_000)
>>> m.export({"lead": slot}, {"lead": [7200.0]})
>>> reg.get_sample_value("touchline_model_graded_labels", {"model": "lead", "role": "champion"})
1.0
>>> reg.get_sample_value("touchline_model_calibration_observed_ratio",
...                      {"model": "lead", "role": "champion", "bucket": "0.8-0.9"})
1.0
"""

from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from touchline.decisions.champion import Drift, ModelSlot
from touchline.decisions.evaluation import BUCKET_NAMES, Calibration, Evaluation

#: The quality figures of a model that keeps learning are written at most this often (seconds):
#: grading (AUC, log loss, calibration per bucket) costs about as much as a whole batch's
#: scoring, and Prometheus reads them every 15 s or so.
GRADE_EVERY_SECONDS = 1.0
#: Label delay buckets (seconds): a minute to a month.
DELAY_BUCKETS = (60.0, 600.0, 3600.0, 6 * 3600.0, 86_400.0, 3 * 86_400.0, 7 * 86_400.0, 14 * 86_400.0,
                 30 * 86_400.0)
#: One deployed model, as ``touchline_model_info`` labels it: (score, role, version, estimator).
_Deployed = tuple[str, str, str, str]


class ModelMetrics:
    """All model series on one injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ml = ["model", "role"]
        self.auc = Gauge("touchline_model_roc_auc", "Progressive ROC AUC on resolved delayed labels.", ml,
                         registry=registry)
        self.log_loss = Gauge("touchline_model_log_loss", "Progressive mean log loss on resolved labels.", ml,
                              registry=registry)
        self.labels = Gauge("touchline_model_graded_labels", "Labels the model was graded on (progressive validation).",
                            ml, registry=registry)
        self.calibration_error = Gauge(
            "touchline_model_calibration_error_ratio",
            "Expected calibration error: label-weighted mean |predicted - observed| over the score buckets.", ml,
            registry=registry)
        self.cal_predicted = Gauge("touchline_model_calibration_predicted_ratio",
                                   "Mean predicted probability of the labels in each score bucket.",
                                   [*ml, "bucket"], registry=registry)
        self.cal_observed = Gauge("touchline_model_calibration_observed_ratio",
                                  "Observed positive rate of the labels in each score bucket.",
                                  [*ml, "bucket"], registry=registry)
        self.cal_labels = Gauge("touchline_model_calibration_labels", "Labels in each score bucket.",
                                [*ml, "bucket"], registry=registry)
        self.label_delay = Histogram("touchline_model_label_delay_seconds",
                                     "Event time from scoring to the label resolving.", ["model"],
                                     buckets=DELAY_BUCKETS, registry=registry)
        self.drifts = Counter("touchline_model_drift", "Drift detected by ADWIN on the model's error stream.",
                              ml, registry=registry)
        self.info = Gauge("touchline_model_info", "1 for each deployed model version.",
                          [*ml, "version", "estimator"], registry=registry)
        self.swaps = Counter("touchline_model_swaps", "Model changes applied while running (deploy, promote, "
                             "retire).", registry=registry)
        self.checkpoints = Counter("touchline_model_checkpoints", "Model checkpoints saved, by outcome.",
                                   ["outcome"], registry=registry)
        self.checkpoint_seconds = Histogram("touchline_model_checkpoint_seconds",
                                            "Time to save all model checkpoints.", registry=registry)
        self.last_checkpoint = Gauge("touchline_model_last_checkpoint_timestamp_seconds",
                                     "When the models were last checkpointed.", registry=registry)
        self._info_labels: set[_Deployed] = set()
        #: scores whose models learned since their figures were last written, and when that was
        self._ungraded: set[str] = set()
        self._graded_at = -math.inf

    def export(self, slots: Mapping[str, ModelSlot], delays_s: Mapping[str, list[float]],
               drifts: Sequence[Drift] = (), now: float | None = None) -> None:
        """Observe the batch's label delays and drifts, keep the deployed versions current,
        and refresh the quality figures of the models that learned, at most once every
        :data:`GRADE_EVERY_SECONDS` (``now``: ``time.monotonic()``); :meth:`grade` at shutdown
        writes what is left."""
        self._observe(delays_s, drifts)
        deployed = {(name, slot.role(model), model.version, model.estimator_name)
                    for name, slot in slots.items() for model in slot.models}
        self._ungraded.update(delays_s)  # only a model that learned has new figures
        self._forget_retired(deployed)
        self._set_info(deployed)
        now = time.monotonic() if now is None else now
        if self._ungraded and now - self._graded_at >= GRADE_EVERY_SECONDS:
            self.grade(slots, now)

    def _observe(self, delays_s: Mapping[str, list[float]], drifts: Sequence[Drift]) -> None:
        """Every label delay and drift of the batch (counted every batch, graded or not)."""
        for name, values in delays_s.items():
            hist = self.label_delay.labels(name)
            for v in values:
                hist.observe(v)
        for d in drifts:
            self.drifts.labels(d.score, d.role).inc()

    def grade(self, slots: Mapping[str, ModelSlot], now: float | None = None) -> None:
        """Write the progressive figures of every model that learned since they were last written."""
        for name in sorted(self._ungraded & slots.keys()):
            slot = slots[name]
            for model in slot.models:
                self._grade(name, slot.role(model), model.evaluation)
        self._ungraded.clear()
        self._graded_at = time.monotonic() if now is None else now

    def _grade(self, name: str, role: str, ev: Evaluation) -> None:
        """One model's progressive figures; AUC and log loss once they are defined."""
        self.labels.labels(name, role).set(ev.labels)
        auc, ll = ev.auc(), ev.log_loss()
        if auc is not None:
            self.auc.labels(name, role).set(auc)
        if ll is not None:
            self.log_loss.labels(name, role).set(ll)
        self.calibration_error.labels(name, role).set(ev.calibration.ece())
        self._calibrate(name, role, ev.calibration)

    def _calibrate(self, name: str, role: str, cal: Calibration) -> None:
        """Predicted and observed rates per score bucket, for buckets with labels (an empty
        bucket has no rate to show)."""
        for b, bucket in enumerate(BUCKET_NAMES):
            n = cal.count[b]
            if n:
                self.cal_labels.labels(name, role, bucket).set(n)
                self.cal_predicted.labels(name, role, bucket).set(cal.predicted[b] / n)
                self.cal_observed.labels(name, role, bucket).set(cal.positives[b] / n)

    def _forget_retired(self, deployed: set[_Deployed]) -> None:
        """Remove the figures of a (score, role) no longer deployed, e.g. a retired
        challenger: no stale figures (a new version in the same role keeps them)."""
        live = {(name, role) for name, role, _, _ in deployed}
        for name, role, _version, _est in self._info_labels - deployed:
            if (name, role) not in live:
                self._forget(name, role)

    def _set_info(self, deployed: set[_Deployed]) -> None:
        """``touchline_model_info`` is 1 for each deployed version; the series of versions
        no longer deployed are removed (the version label is unbounded over time)."""
        if deployed == self._info_labels:
            return
        for gone in self._info_labels - deployed:
            self.info.remove(*gone)
        for new in deployed - self._info_labels:
            self.info.labels(*new).set(1)
        self._info_labels = deployed

    def _forget(self, name: str, role: str) -> None:
        for gauge in (self.labels, self.auc, self.log_loss, self.calibration_error):
            try:
                gauge.remove(name, role)
            except KeyError:
                pass
        for gauge in (self.cal_labels, self.cal_predicted, self.cal_observed):
            for bucket in BUCKET_NAMES:
                try:
                    gauge.remove(name, role, bucket)
                except KeyError:
                    pass
