"""Champion and challenger for one score: the champion decides, the challenger scores in
shadow on the same moments and learns from the same labels, and promotion swaps them
without losing what either has learned.

The comparison is paired: a challenger is graded only on labels whose observation it
scored too, and the champion's grades on exactly those labels are kept beside it
(``versus``), so a challenger deployed last week is not compared with a champion's
whole history.

>>> from touchline.decisions.estimators import ModelConfig, PromotionRule, ScoreSettings
>>> slot = ModelSlot("lead", ScoreSettings(challenger=ModelConfig(estimator="hat"),
...                  promote=PromotionRule(metric="log_loss", margin=0.0, min_labels=2)))
>>> slot.champion.estimator_name, [c.estimator_name for c in slot.challengers]
('logreg', ['hat'])
>>> shadow = slot.shadow({"known": 1.0})
>>> for label in (True, False, True):
...     _ = slot.learn({"known": 1.0}, label, slot.champion.version, 0.99, shadow, delay_ms=0)
>>> slot.challengers[0].versus.labels, slot.challengers[0].labels
(3, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from touchline.decisions.evaluation import Evaluation
from touchline.decisions.estimators import ModelConfig, ScoreModel, ScoreSettings

#: Restore a model from its checkpoint (by its config's version), or None for a fresh one.
Restore = Callable[[ModelConfig], ScoreModel | None]


@dataclass(frozen=True, slots=True)
class Drift:
    """Drift the error stream of one model showed at one label."""

    score: str
    role: str
    version: str
    labels: int


class ModelSlot:
    """The models behind one score name."""

    def __init__(self, name: str, settings: ScoreSettings, restore: Restore | None = None) -> None:
        self.name = name
        self.settings = settings
        self.champion = _obtain(settings.champion(), restore)
        challenger = settings.challenger_config()
        self.challengers: list[ScoreModel] = []
        if challenger is not None:
            self.add_challenger(challenger, restore)

    def add_challenger(self, config: ModelConfig, restore: Restore | None = None) -> ScoreModel:
        """Shadow another model (``touchline models evaluate`` runs several at once)."""
        model = _obtain(config, restore)
        if model.versus is None:
            model.versus = Evaluation()
        self.challengers.append(model)
        return model

    @property
    def models(self) -> list[ScoreModel]:
        return [self.champion, *self.challengers]

    def role(self, model: ScoreModel) -> str:
        return "champion" if model is self.champion else "challenger"

    # ----------------------------------------------------------------- scoring
    def predict(self, features: dict[str, float]) -> float:
        return self.champion.predict(features)

    def shadow(self, features: dict[str, float]) -> dict[str, float]:
        """The challengers' probabilities at this moment, by version (empty without one)."""
        return {c.version: round(c.predict(features), 6) for c in self.challengers}

    def observe(self, features: dict[str, float]) -> None:
        """A moment observed for a label: models that learn without labels learn from it now."""
        for model in self.models:
            model.observe(features)

    def learn(self, features: dict[str, float], label: bool, scored_by: str, probability: float,
              shadow: dict[str, float], delay_ms: int, at_ms: int | None = None,
              learn_at_ms: int | None = None) -> list[Drift]:
        """One resolved label: every model is graded on what it predicted back then (if it
        had been deployed by then) and trains on the captured features (at ``learn_at_ms``
        when given: see :meth:`ScoreModel.learn`)."""
        predicted = {scored_by: probability, **shadow}
        drifts = []
        champion_p = predicted.get(self.champion.version)
        for model in self.models:
            p = predicted.get(model.version)
            if model is not self.champion:
                if p is None or champion_p is None:
                    p = None  # not comparable: train, do not grade
                elif model.versus is not None:
                    model.versus.update(label, champion_p, delay_ms)
            if model.learn(features, label, p, delay_ms, at_ms, learn_at_ms):
                drifts.append(Drift(self.name, self.role(model), model.version, model.labels))
        return drifts

    def release(self, now_ms: int) -> None:
        """Each model learns the labels it held whose time has come by ``now_ms``."""
        for model in self.models:
            if model.held.any_due(now_ms):
                model.release(now_ms)

    # ----------------------------------------------------------------- promotion
    def promotion_due(self) -> ScoreModel | None:
        """The challenger the promotion rule says should take over, if any."""
        rule = self.settings.promote
        if rule is None:
            return None
        best, best_gain = None, rule.margin
        for c in self.challengers:
            if c.versus is None or c.labels < rule.min_labels:
                continue
            mine, theirs = c.evaluation.metric(rule.metric), c.versus.metric(rule.metric)
            if mine is not None and theirs is not None and mine - theirs > best_gain:
                best, best_gain = c, mine - theirs
        return best

    def head_to_head(self) -> list[dict[str, object]]:
        """Each challenger beside the champion on the same labels (for status and reports)."""
        rows = []
        for c in self.challengers:
            if c.versus is None:
                continue
            rows.append({"challenger": c.version, "labels": c.labels,
                         "challenger_metrics": c.quality(),
                         "champion_metrics": c.versus.figures()})
        return rows

    # ----------------------------------------------------------------- swapping
    def reconfigure(self, settings: ScoreSettings, restore: Restore | None = None) -> list[str]:
        """Move to a new deployment between batches. Models whose version is unchanged keep
        their state; a challenger named as the new champion is promoted with everything it
        learned in shadow; anything else is restored from its checkpoint or starts fresh.
        Returns what changed, for the log."""
        live = {m.version: m for m in self.models}
        changes: list[str] = []
        champion = self._next_champion(settings, live, restore, changes)
        challengers = self._next_challengers(settings, champion, live, restore, changes)
        for old in self.challengers:
            if old not in challengers and old is not champion:
                changes.append(f"{self.name}: challenger {old.version} retired")
        self.champion, self.challengers, self.settings = champion, challengers, settings
        return changes

    def _next_champion(self, settings: ScoreSettings, live: dict[str, ScoreModel], restore: Restore | None,
                       changes: list[str]) -> ScoreModel:
        """The new deployment's champion: the live model of its version (promoted, when it
        was a challenger), else restored or fresh. A champion is graded against nobody."""
        config = settings.champion()
        champion = live.get(config.version)
        if champion is None:
            champion = _obtain(config, restore)
            changes.append(f"{self.name}: champion {self.champion.version} -> {champion.version} ({champion.origin})")
        elif champion is not self.champion:
            changes.append(f"{self.name}: challenger {champion.version} promoted to champion "
                           f"(was {self.champion.version}; {champion.labels} labels learned in shadow)")
        champion.versus = None
        return champion

    def _next_challengers(self, settings: ScoreSettings, champion: ScoreModel, live: dict[str, ScoreModel],
                          restore: Restore | None, changes: list[str]) -> list[ScoreModel]:
        """The new deployment's challenger (none when it is the champion's version): the live
        model of its version, else restored or fresh."""
        config = settings.challenger_config()
        if config is None or config.version == champion.version:
            return []
        model = live.get(config.version)
        if model is None or model is champion:
            model = _obtain(config, restore)
            changes.append(f"{self.name}: challenger {model.version} deployed ({model.origin})")
        if model.versus is None:
            model.versus = Evaluation()
        return [model]


def _obtain(config: ModelConfig, restore: Restore | None) -> ScoreModel:
    model = restore(config) if restore is not None else None
    return model if model is not None else ScoreModel.build(config)


# ----------------------------------------------------------------- a manual promotion's evidence
@dataclass(frozen=True, slots=True)
class Paired:
    """A challenger beside the champion on the labels both scored (a :meth:`ModelSlot.head_to_head` row).

    >>> row = {"challenger": "hat-1", "labels": 1200, "challenger_metrics": {"roc_auc": 0.52, "log_loss": 0.71},
    ...        "champion_metrics": {"roc_auc": 0.68, "log_loss": 0.55}}
    >>> p = paired([row], "hat-1", "roc_auc")
    >>> p.known, p.worse
    (True, True)
    >>> p.describe()
    'ROC AUC 0.5200 vs 0.6800 (log loss 0.7100 vs 0.5500) on the same 1,200 labels'
    >>> paired([row], "arf-2", "roc_auc").known
    False
    """

    metric: str
    labels: int
    challenger: dict[str, float | None]
    champion: dict[str, float | None]

    @property
    def known(self) -> bool:
        """Both figures of the metric exist (a ROC AUC needs both classes among the labels)."""
        return self.labels > 0 and self.challenger.get(self.metric) is not None \
            and self.champion.get(self.metric) is not None

    @property
    def worse(self) -> bool:
        """The challenger did worse on the metric (lower ROC AUC, higher log loss)."""
        if not self.known:
            return False
        mine, theirs = float(self.challenger[self.metric] or 0), float(self.champion[self.metric] or 0)
        return mine > theirs if self.metric == "log_loss" else mine < theirs

    def describe(self) -> str:
        """The metric first, the other beside it: challenger vs champion."""
        names = {"roc_auc": "ROC AUC", "log_loss": "log loss"}
        first, other = self.metric, "log_loss" if self.metric == "roc_auc" else "roc_auc"

        def pair(m: str) -> str:
            return f"{names[m]} {_fig(self.challenger.get(m))} vs {_fig(self.champion.get(m))}"

        return f"{pair(first)} ({pair(other)}) on the same {self.labels:,} labels"


def paired(rows: list[dict[str, Any]], version: str, metric: str) -> Paired:
    """The head-to-head figures of challenger ``version`` (none known when no row has it)."""
    row = next((r for r in rows if isinstance(r, dict) and r.get("challenger") == version), None)
    if row is None:
        return Paired(metric, 0, {}, {})
    return Paired(metric, int(row.get("labels") or 0), dict(row.get("challenger_metrics") or {}),
                  dict(row.get("champion_metrics") or {}))


def _fig(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
