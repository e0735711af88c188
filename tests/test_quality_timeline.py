"""Model quality per day (issue 22): each day graded on its own labels, nothing kept per label,
a restored model's earlier life not counted again. Pure logic, no I/O."""

from __future__ import annotations

import random

import pytest

from touchline.decisions.estimators import ModelConfig, ScoreModel
from touchline.decisions.evaluation import Evaluation
from touchline.decisions.quality_timeline import QualityTimeline

DAY = 86_400_000


def _model(version: str = "") -> ScoreModel:
    model = ScoreModel.build(ModelConfig(name="lead"))
    if version:
        model.version = version
    return model


def _grade(timeline: QualityTimeline, model: ScoreModel, day: int, labels: list[tuple[bool, float]]) -> None:
    for label, p in labels:
        timeline.before_label("lead", [model], day * DAY + 3_600_000)
        model.evaluation.update(label, p)


def test_each_day_is_graded_on_its_own_labels_like_a_fresh_evaluation():
    rng = random.Random(3)
    model, timeline = _model(), QualityTimeline()
    days = {d: [(rng.random() < 0.3, rng.random()) for _ in range(200)] for d in (0, 1, 4)}  # days 2, 3: none
    for d, labels in days.items():
        _grade(timeline, model, d, labels)
    rows = timeline.rows()
    assert [r["day"] for r in rows] == ["1970-01-01", "1970-01-02", "1970-01-05"]  # no row for a day without labels
    for row, labels in zip(rows, days.values()):
        alone = Evaluation()
        for label, p in labels:
            alone.update(label, p)
        assert row["labels"] == 200 and row["positives"] == alone.positives
        assert row["roc_auc"] == pytest.approx(alone.auc(), abs=1e-4)
        assert row["log_loss"] == pytest.approx(alone.log_loss(), abs=1e-4)
        assert row["calibration_error"] == pytest.approx(alone.calibration.ece(), abs=1e-4)
    assert rows[-1]["progressive_roc_auc"] == pytest.approx(model.evaluation.auc(), abs=1e-4)
    assert timeline.rows() == rows  # reading does not close or change anything


def test_a_restored_models_earlier_labels_are_not_counted_again():
    model = _model()
    for i in range(500):  # what it learned before this run (a checkpoint)
        model.evaluation.update(i % 2 == 0, 0.9 if i % 2 == 0 else 0.1)
    timeline = QualityTimeline()
    _grade(timeline, model, 10, [(True, 0.2), (False, 0.8), (True, 0.3), (False, 0.6)])  # a bad day
    row = timeline.rows()[0]
    assert row["labels"] == 4 and row["roc_auc"] == 0.0
    assert row["progressive_roc_auc"] > 0.98  # its whole life still looks good: why the daily figure matters


def test_models_are_kept_apart_by_version_and_a_day_with_one_class_has_no_roc_auc():
    champion, challenger, timeline = _model("a-1"), _model("b-2"), QualityTimeline()
    for label, p in [(False, 0.2), (False, 0.4)]:
        timeline.before_label("lead", [champion, challenger], 0)
        champion.evaluation.update(label, p)  # the challenger was not graded (it did not score then)
    rows = timeline.rows()
    assert [(r["version"], r["labels"], r["roc_auc"]) for r in rows] == [("a-1", 2, None)]
