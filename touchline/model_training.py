"""``touchline models train``: a model trained offline on recorded events, as a checkpoint that
``touchline models deploy SCORE --checkpoint FILE`` ships; and the offline ceiling that
``touchline models evaluate`` prints beside each online figure.

Both replay the file through the engine (event time, in-process state, no outputs) and
capture every resolved label of a score with the features captured when it was scored: the
training examples the online models learn from, no more. ``train`` then fits them at once: a
``logreg`` model by an L2-penalised logistic regression loaded into its pipeline (the engine goes
on learning from there: a warm start), any other model by one pass of ``learn_one`` in the order
the observations were taken. The ceiling is the same logistic regression, cross-validated (5
folds) on the same examples and graded as the engine grades its models.
"""

from __future__ import annotations

import hashlib
import os
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from touchline.decisions import offline_logistic
from touchline.decisions.estimators import ModelConfig, ScoreModel
from touchline.decisions.features import FEATURE_NAMES
from touchline.settings import ConfigError, Settings

if TYPE_CHECKING:
    from touchline.decisions.profile import Observation

FOLDS = 5
_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass
class Captured:
    """One score's resolved labels: features as scored (a row of every feature, flat), label, time scored."""

    features: array[float] = field(default_factory=lambda: array("d"))
    labels: list[bool] = field(default_factory=list)
    scored_at_ms: list[int] = field(default_factory=list)

    def add(self, obs: "Observation", label: bool) -> None:
        get = obs.features.get
        self.features.extend([float(get(name, 0.0)) for name in FEATURE_NAMES])
        self.labels.append(label)
        self.scored_at_ms.append(obs.scored_at_ms)

    def matrix(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """The captured rows, columns ``names`` (scoring order kept)."""
        rows = np.frombuffer(self.features, dtype=np.float64).reshape(len(self.labels), len(FEATURE_NAMES))
        return rows[:, [_COLUMN[name] for name in names]]

    def y(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.bool_)


class Capture:
    """A label sink (see :class:`touchline.decisions.labelling.Labeller`) keeping the scores asked for."""

    def __init__(self, scores: list[str]) -> None:
        self.scores = {score: Captured() for score in scores}

    def __call__(self, score: str, obs: "Observation", label: bool, at_ms: int) -> None:
        captured = self.scores.get(score)
        if captured is not None:
            captured.add(obs, label)


def ceiling_figures(captured: Captured, features: list[str] | tuple[str, ...]) -> dict[str, Any] | None:
    """The offline ceiling on ``captured`` (None without both classes): an L2 logistic regression,
    5-fold cross-validated on the same labels and features, graded like the online models."""
    y = captured.y()
    if not 0 < int(y.sum()) < len(y) or len(y) < FOLDS:
        return None
    evaluation = offline_logistic.ceiling(captured.matrix(features), y, FOLDS)
    return {"model": f"logistic regression (L2), {FOLDS}-fold cross-validated", "features": len(features),
            **evaluation.summary()}


# ------------------------------------------------------------------ train
def train(settings: Settings, input_path: Path, score: str, model: ModelConfig | None,
          out: Path | None, batch_size: int = 1000) -> dict[str, Any]:
    """Replay ``input_path``, fit ``model`` (default: the score's configured champion) on the
    score's resolved labels, and write it as a checkpoint (``out``, default
    ``<output.dir>/trained/<score>-<version>.ckpt``); returns what was done, with figures."""
    from touchline.model_commands import churn_asks_the_label_question, replay_file
    from touchline.state.model_store import encode_checkpoint

    config = model or settings.models.scores()[score].champion()
    if score == "churn":
        churn_asks_the_label_question("--model", config, settings.labels.churn_horizon_days)
    capture = Capture([score])
    replayed = replay_file(settings, input_path, {score: [config]}, batch_size, capture)
    captured = capture.scores[score]
    y = captured.y()
    if not 0 < int(y.sum()) < len(y):
        raise ConfigError(f"--input {input_path}: {len(y):,} {score} labels resolved ({int(y.sum()):,} positive): "
                          f"training needs both classes (is labels.{score}_horizon_days shorter than the data?)")
    started = time.perf_counter()
    trained, how = _fit(config, captured)
    source = {"input": input_path.name, "sha256": file_digest(input_path), "labels": len(y),
              "positives": int(y.sum()), "method": how, "events": replayed["events"]}
    trained = _warm_started(trained, source)
    key = settings.models.checkpoint_key
    blob = encode_checkpoint(trained, key.get_secret_value().encode() if key else None, training=source)
    path = out or settings.output.dir / "trained" / f"{score}-{trained.version}.ckpt"
    _write(path, blob)
    return {"score": score, "version": trained.version, "spec": trained.config.spec(), "checkpoint": str(path),
            "training": source, "fit_seconds": round(time.perf_counter() - started, 2),
            "replay_seconds": replayed["seconds"], "offline_ceiling": ceiling_figures(captured, config.features)}


def _fit(config: ModelConfig, captured: Captured) -> tuple[ScoreModel, str]:
    """The model fitted on the captured labels, and how."""
    from touchline.decisions.scaled_logistic import ScaledLogistic

    model = ScoreModel.build(config)
    y = captured.y()
    if ScaledLogistic.of(model.estimator) is not None:
        names = _learning_order(config)
        offline_logistic.load_into(model.estimator, offline_logistic.fit_logistic(captured.matrix(names), y, names))
        return model, f"L2 logistic regression (l2 {offline_logistic.L2:g}) fitted at once"
    X = captured.matrix(config.features)
    for i in np.argsort(np.asarray(captured.scored_at_ms), kind="stable"):
        model.train(dict(zip(config.features, X[i].tolist())), bool(y[i]))
    return model, "one pass of learn_one in the order the observations were taken"


def _learning_order(config: ModelConfig) -> list[str]:
    """The model's features in the order the engine hands them over: the pipeline keeps its
    weights in that order, and the one-pass reader of the default pipeline relies on it."""
    from touchline.decisions.features import features
    from touchline.decisions.profile import Profile

    if tuple(config.features) != FEATURE_NAMES:
        return list(config.features)  # a subset is selected in the configured order
    return list(features(Profile("order"), 0))


def _warm_started(model: ScoreModel, source: dict[str, Any]) -> ScoreModel:
    """The trained model under a version of its own: its configuration with ``warm_start`` set to
    a fingerprint of the training (so a deployment can tell it from a fresh model of the same kind)."""
    canonical = orjson.dumps([source["sha256"], source["labels"], model.config.spec()], option=orjson.OPT_SORT_KEYS)
    fingerprint = hashlib.blake2b(canonical, digest_size=8).hexdigest()
    config = model.config.model_copy(update={"warm_start": fingerprint})
    trained = ScoreModel.build(config)
    trained.estimator, trained.calibrator = model.estimator, model.calibrator
    trained.origin = f"trained offline on {source['labels']:,} labels of {source['input']}"
    return trained


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` through a temporary file (never half a checkpoint)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write the checkpoint: {exc.strerror or exc}") from None


def format_training(r: dict[str, Any]) -> str:
    t, c = r["training"], r["offline_ceiling"]
    lines = [
        f"{r['score']}: trained {r['version']} on {t['labels']:,} labels ({t['positives']:,} positive) "
        f"resolved in {t['events']:,} events of {t['input']}: {t['method']}",
        f"  checkpoint      {r['checkpoint']}",
    ]
    if c is not None:
        lines.append(f"  offline figure  {c['model']} on the same labels: ROC AUC {c['roc_auc']:.4f}, "
                     f"log loss {c['log_loss']:.4f}, calibration error {c['calibration_error']:.4f}")
    lines.append(f"  deploy it       touchline models deploy {r['score']} --checkpoint {r['checkpoint']} "
                 "--as champion   (or as challenger, the default, to shadow the live model first)")
    return "\n".join(lines)
