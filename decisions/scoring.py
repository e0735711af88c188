"""Scores of one batch: each prediction timed, remembered for the score histogram, and
described in the decision records (model version, labels seen, challengers' shadow scores)."""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any

from touchline.decisions.champion import ModelSlot
from touchline.decisions.outcome import BatchOutcome


class Scorer:
    """Predicts with the champion of each score and says what a record shows of it."""

    def __init__(self, models: dict[str, ModelSlot], outcome: BatchOutcome) -> None:
        self.models = models
        self.outcome = outcome
        for name in models:
            outcome.scores.setdefault(name, [])
        #: features each model last scored, for the challengers' shadow scores in a record
        self._last_features: dict[str, dict[str, float]] = {}

    def score(self, model: str, feats: dict[str, float]) -> float:
        started = perf_counter_ns()
        p = self.models[model].predict(feats)
        self.outcome.score_ns += perf_counter_ns() - started
        self.outcome.scores[model].append(p)
        self._last_features[model] = feats
        return p

    def entry(self, name: str, p: float) -> dict[str, Any]:
        """What a record says about a score: the value, which model version gave it after how
        many labels, and what each challenger would have said (shadow scoring)."""
        slot = self.models[name]
        entry: dict[str, Any] = {"p": round(p, 6), "model": name, "estimator": slot.champion.estimator_name,
                                 "version": slot.champion.version, "labels": slot.champion.labels}
        feats = self._last_features.get(name)
        if slot.challengers and feats is not None:
            entry["challengers"] = slot.shadow(feats)
        return entry
