"""Model quality figures follow learning at most once a second (they cost as much as a
batch's scoring), and nothing learned is left unwritten at shutdown."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from touchline.decisions.champion import ModelSlot
from touchline.decisions.estimators import ScoreSettings
from touchline.metrics.model_metrics import GRADE_EVERY_SECONDS, ModelMetrics


def _labels(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("touchline_model_graded_labels", {"model": "lead", "role": "champion"})


def _learn(slot: ModelSlot, label: bool) -> dict[str, list[float]]:
    slot.learn({"x": 1.0}, label, slot.champion.version, 0.7, {}, delay_ms=3_600_000)
    return {"lead": [3600.0]}


def test_figures_are_written_at_most_once_a_second_and_at_shutdown():
    registry = CollectorRegistry()
    metrics, slot = ModelMetrics(registry), ModelSlot("lead", ScoreSettings())
    slots = {"lead": slot}
    metrics.export(slots, _learn(slot, True), now=100.0)
    assert _labels(registry) == 1  # the first learning is shown at once
    metrics.export(slots, _learn(slot, False), now=100.0 + GRADE_EVERY_SECONDS / 2)
    assert _labels(registry) == 1  # within the second: not graded again
    metrics.export(slots, _learn(slot, True), now=100.0 + GRADE_EVERY_SECONDS)
    assert _labels(registry) == 3  # a second later: everything so far
    metrics.export(slots, _learn(slot, False), now=100.5 + GRADE_EVERY_SECONDS)
    metrics.grade(slots)  # shutdown
    assert _labels(registry) == 4
    # every label delay is observed, graded or not
    assert registry.get_sample_value("touchline_model_label_delay_seconds_count", {"model": "lead"}) == 4


def test_a_batch_without_labels_grades_nothing_it_has_not_learned():
    registry = CollectorRegistry()
    metrics, slot = ModelMetrics(registry), ModelSlot("lead", ScoreSettings())
    metrics.export({"lead": slot}, {}, now=0.0)
    assert _labels(registry) is None
    metrics.grade({"lead": slot})
    assert _labels(registry) is None
