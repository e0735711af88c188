"""``touchline models ...``: list, status, deploy, promote and evaluate models.

Models on the command line are written ``NAME`` or ``NAME(param=value, ...)``, where NAME
is a registered name or an import path:

>>> parse_model_spec("hat(grace_period=50, delta=1e-4)")
('hat', {'grace_period': 50, 'delta': 0.0001})
>>> parse_model_spec("river.linear_model.LogisticRegression")
('river.linear_model.LogisticRegression', {})
>>> parse_model_spec("hat(grace_period=)")
Traceback (most recent call last):
...
ValueError: model 'hat(grace_period=)': parameters must be written name=value with literal values (invalid syntax)
"""

from __future__ import annotations

import ast
import inspect
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from touchline.decisions.champion import Paired, paired
from touchline.decisions.errors import TouchlineError
from touchline.decisions.estimators import (
    ModelConfig, ModelSpecError, ScoreSettings, config_from, registered_models, resolve, score_settings,
)
from touchline.settings import ConfigError, Settings, follow_churn_horizon

if TYPE_CHECKING:
    from touchline.batch_service import Engine
    from touchline.decisions.batch_run import DecisionCore
    from touchline.decisions.champion import ModelSlot
    from touchline.state.model_store import ModelStore

SCORES = ("lead", "churn")


def parse_model_spec(text: str) -> tuple[str, dict[str, Any]]:
    """(estimator, params) from ``NAME`` or ``NAME(k=v, ...)`` (values are Python literals)."""
    text = text.strip()
    if "(" not in text:
        return text, {}
    if not text.endswith(")"):
        raise ValueError(f"model {text!r}: expected NAME(param=value, ...)")
    name, _, args = text[:-1].partition("(")
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        assert isinstance(call, ast.Call)
        if call.args:
            raise ValueError("positional values are not allowed")
        params = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
    except (SyntaxError, ValueError) as exc:
        reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise ValueError(f"model {text!r}: parameters must be written name=value with literal values "
                         f"({reason})") from None
    return name.strip(), params


def model_config(score: str, text: str, features: list[str] | None = None, calibration: str = "none") -> ModelConfig:
    """A validated model configuration from a command-line spec (ConfigError naming it if not)."""
    try:
        estimator, params = parse_model_spec(text)
        extra: dict[str, Any] = {"features": features} if features else {}
        extra["calibration"] = calibration
        return ModelConfig(name=score, estimator=estimator, params=params, **extra)
    except ValueError as exc:
        raise ConfigError(_first_error(exc, text)) from None


def _first_error(exc: ValueError | TypeError, text: str) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = "".join(f"{p}: " for p in err["loc"][:1])
        return f"model {text!r}: {where}{err['msg'].removeprefix('Value error, ')}"
    return str(exc)


# ------------------------------------------------------------------ list
def list_models() -> str:
    """The registered models with their parameters and what they are for."""
    lines = []
    for name, path in sorted(registered_models().items()):
        try:
            _, factory = resolve(name)
            params = ", ".join(str(p) for p in inspect.signature(factory).parameters.values())
            doc = (inspect.getdoc(factory) or "").split("\n\n")[0].replace("\n", " ")
        except (ValueError, TypeError) as exc:
            params, doc = "?", f"(cannot be loaded: {exc})"
        lines.append(f"{name:<8} {path}({params})\n         {doc}")
    return "\n".join(lines)


# ------------------------------------------------------------------ store commands
def _store(settings: Settings) -> "ModelStore":
    from touchline.runner import open_models_store

    store = open_models_store(settings)
    if store is None:
        raise ConfigError("models.store is off: there is no model store to read or change")
    return store


def _configured_doc(settings: Settings, current: dict[str, Any] | None) -> dict[str, Any]:
    """The deployment to change: the stored one, or the configuration's if none is stored
    yet (seeded the way the engine seeds it, so the engine keeps the change)."""
    from touchline.model_keeper import seed_of
    from touchline.state.model_store import new_revision

    if current is not None:
        return current
    configured = settings.models.scores()
    scores = {k: v.model_dump(exclude={"name"}) for k, v in configured.items()}
    return new_revision(None, scores, "configured", seed=seed_of(configured))


def status(settings: Settings) -> dict[str, Any]:
    """The stored deployment and the figures of the last checkpoint."""
    from touchline.redact import redact_url

    store = _store(settings)
    try:
        deployment = store.read_deployment()
        status_doc = store.read_status()
        checkpoints = {score: store.checkpoints(score) for score in SCORES}
        return {"store": redact_url(store.url), "deployment": deployment, "status": status_doc,
                "checkpoints": checkpoints}
    finally:
        store.close()


def format_status(s: dict[str, Any]) -> str:
    dep, st = s["deployment"], s["status"]
    if dep is None:
        return f"model store {s['store']}: no deployment yet (the engine writes one when it starts)"
    out = [f"model store {s['store']}, deployment revision {dep['revision']}"]
    for name, score in sorted(dep.get("scores", {}).items()):
        line = f"  {name}: champion {_model_label(name, score, 'champion')}"
        if score.get("challenger"):
            line += f"; challenger {_model_label(name, score['challenger'], 'challenger')}"
        if score.get("promote"):
            rule = score["promote"]
            line += (f"; auto-promote on {rule['metric']} by > {rule['margin']} over >= {rule['min_labels']} "
                     "labels")
        out.append(line)
    if st is not None:
        age = time.time() - float(st.get("saved_at", 0))
        out.append(f"  figures from the last checkpoint ({age:,.0f} s ago, revision {st.get('revision')}):")
        for name, score in sorted(st.get("scores", {}).items()):
            for m in score.get("models", []):
                out.append(f"    {name:<6} {m['role']:<10} {m['version']:<22} {_figures(m)}")
            for h in score.get("head_to_head", []):
                out.append(f"    {name:<6} champion on the challenger's {h['labels']:,} labels: "
                           f"{_figures(h['champion_metrics'])}")
    out.append("  history: " + "; ".join(f"r{h['revision']} {h['change']}" for h in dep.get("history", [])[-5:]))
    return "\n".join(out)


def _model_label(name: str, spec: dict[str, Any], role: str) -> str:
    """``version (estimator(params))``, or the import path and why this command cannot build it
    (a plug-in the engine has and this Python does not): one line, never a validation dump."""
    try:
        return f"{config_from(name, spec, role).version} ({_spec_text(spec)})"
    except ModelSpecError as exc:
        return f"{_spec_text(spec)} (cannot be built by this command: {exc.reason})"


def _spec_text(spec: dict[str, Any]) -> str:
    """A stored model definition as one would write it, with its calibration and warm start.

    >>> _spec_text({"estimator": "logreg", "params": {"learning_rate": 0.003}, "calibration": "platt"})
    'logreg(learning_rate=0.003) calibration=platt'
    """
    params = ", ".join(f"{k}={v!r}" for k, v in sorted((spec.get("params") or {}).items()))
    text = f"{spec['estimator']}({params})" if params else spec["estimator"]
    if spec.get("calibration", "none") != "none":
        text += f" calibration={spec['calibration']}"
    if spec.get("warm_start"):
        text += f" warm_start={spec['warm_start']}"
    return text


def _figures(m: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    cmap = m.get("calibration_map") or {}
    extra = f", held to their horizon {m['held_labels']:,}" if m.get("held_labels") else ""
    if cmap.get("fitted_on"):
        extra += f", calibration map slope {cmap['slope']:.3f} intercept {cmap['intercept']:+.3f}"
    return (f"labels {m['labels']:,}, ROC AUC {fmt(m['roc_auc'])}, log loss {fmt(m['log_loss'])}, "
            f"calibration error {fmt(m.get('calibration_error'))}, drifts {m.get('drifts', 0)}{extra}")


def deploy(settings: Settings, score: str, model: ModelConfig, role: str,
           checkpoint: bytes | None = None) -> dict[str, Any]:
    """A new deployment revision with ``model`` as the score's challenger (or champion); with
    ``checkpoint`` (its learned state, see :func:`read_checkpoint`), saved in the store first,
    so the engine starts the model from it."""
    from touchline.state.model_store import new_revision

    if score == "churn":
        _asks_the_label_question(settings, model, role, checkpoint is not None)
    store = _store(settings)

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        doc = _configured_doc(settings, current)
        scores = {k: dict(v) for k, v in doc["scores"].items()}
        entry = scores.setdefault(score, ScoreSettings().model_dump(exclude={"name"}))
        if role == "champion":
            entry.update(model.spec())
            if entry.get("challenger") and config_from(score, entry["challenger"], "challenger").version == model.version:
                entry["challenger"] = None
        else:
            entry["challenger"] = model.spec()
        score_settings(score, entry)  # still a valid score
        shipped = " from its checkpoint" if checkpoint is not None else ""
        return new_revision(doc, scores, f"{score}: {model.version} deployed as {role}{shipped}")

    try:
        if checkpoint is not None:
            store.save_checkpoint(score, model.version, checkpoint)
        doc = store.update_deployment(change)
        assert doc is not None
        return doc
    finally:
        store.close()


def churn_asks_the_label_question(key: str, config: ModelConfig, horizon_days: float) -> None:
    """:func:`touchline.settings.follow_churn_horizon` for a model named on the command line
    (``key``), a ConfigError when it asks another question."""
    try:
        follow_churn_horizon(key, config, horizon_days)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _asks_the_label_question(settings: Settings, model: ModelConfig, role: str, trained: bool) -> None:
    """A churn model with a horizon of its own predicts over the labels' horizon (as the settings
    require of a configured one): left out, it takes it; another one is a ConfigError. A trained
    checkpoint's horizon is part of what it learned: it must match as it is."""
    key = "models.churn" if role == "champion" else "models.churn.challenger"
    target = model.model_copy(deep=True) if trained else model
    churn_asks_the_label_question(key, target, settings.labels.churn_horizon_days)
    if trained and target.params != model.params:
        raise ConfigError(f"{key}: the checkpoint's model has no horizon_days; it cannot answer "
                          f"labels.churn_horizon_days ({settings.labels.churn_horizon_days:g})")


def read_checkpoint(settings: Settings, path: Path, score: str | None = None) -> tuple[ModelConfig, bytes]:
    """The model a checkpoint file holds (``touchline models train`` writes them) and its bytes,
    checked as the engine checks it (integrity, signature, River version); a ConfigError naming
    the file otherwise, or when it is another score's."""
    from touchline.state.model_store import CheckpointError, decode_checkpoint, read_header, spec_of

    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--checkpoint {path}: {exc.strerror or exc}") from None
    try:
        header, _ = read_header(blob)
        config = config_from(str(header.get("score")), spec_of(header))
        key = settings.models.checkpoint_key
        decode_checkpoint(blob, config, key.get_secret_value().encode() if key else None)
    except (CheckpointError, ModelSpecError) as exc:  # not a usable checkpoint; a model this Python cannot build
        raise ConfigError(f"--checkpoint {path}: {exc}") from None
    except (ValueError, TypeError) as exc:  # a header whose definition is not one
        raise ConfigError(f"--checkpoint {path}: its model cannot be built here: {_first_error(exc, path.name)}") from None
    if score is not None and config.name != score:
        raise ConfigError(f"--checkpoint {path}: holds a {config.name} model, not a {score} one")
    return config, blob


class PromotionRefused(TouchlineError, ValueError):
    """A manual promotion the figures do not support (worse, or none yet): needs ``--force``."""


def promote(settings: Settings, score: str, version: str | None, force: bool = False) -> tuple[dict[str, Any], str]:
    """A new deployment revision with the score's challenger as its champion, and what the
    figures said. Refused (:class:`PromotionRefused`) without ``force`` when the challenger did
    worse than the champion on the labels both scored, or when there are no such figures yet."""
    from touchline.model_keeper import promoted_deployment

    store = _store(settings)
    verdict = ""

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        nonlocal verdict
        doc = _configured_doc(settings, current)
        verdict = _promotion_evidence(doc, figures, score, version, force)
        return promoted_deployment(doc, score, version, verdict)

    try:
        figures = store.read_status()
        doc = store.update_deployment(change)
        assert doc is not None
        return doc, verdict
    finally:
        store.close()


def _promotion_evidence(doc: dict[str, Any], status_doc: dict[str, Any] | None, score: str, version: str | None,
                        force: bool) -> str:
    """Why the promotion may go ahead ("manual: <figures>"), or PromotionRefused saying why not."""
    entry = dict((doc.get("scores") or {}).get(score) or {})
    if not entry.get("challenger"):
        return "manual"  # nothing to promote: promoted_deployment says so
    challenger = config_from(score, entry["challenger"], "challenger").version
    if version is not None and version != challenger:
        return "manual"  # a stale --version: promoted_deployment says so
    champion = config_from(score, entry).version
    found = paired(_head_to_head(status_doc, score), challenger, (entry.get("promote") or {}).get("metric", "roc_auc"))
    refusal = _refusal(found, score, challenger, champion, _checkpoint_age(status_doc))
    if refusal and not force:
        raise PromotionRefused(refusal)
    return _verdict(found)


def _head_to_head(status_doc: dict[str, Any] | None, score: str) -> list[dict[str, Any]]:
    """The score's challenger rows of the last checkpoint's status (none without one)."""
    scores = (status_doc or {}).get("scores") or {}
    rows = (scores.get(score) or {}).get("head_to_head") if isinstance(scores, dict) else None
    return rows if isinstance(rows, list) else []


def _verdict(found: Paired) -> str:
    """What the deployment history says of a promotion that goes ahead."""
    if not found.known:
        return "manual, forced without paired figures"
    return f"manual, forced although worse: {found.describe()}" if found.worse else f"manual: {found.describe()}"


def _refusal(found: Paired, score: str, challenger: str, champion: str, age: str) -> str | None:
    """Why the figures do not support the promotion (None: they do)."""
    if not found.known:
        return (f"{score}: no paired figures for challenger {challenger} yet ({age}: it has not been graded "
                f"beside champion {champion} on labels both scored); promote anyway with --force")
    if found.worse:
        return (f"{score}: challenger {challenger} did worse than champion {champion}: {found.describe()} "
                f"({age}); not promoted. Promote anyway with --force")
    return None


def _checkpoint_age(status_doc: dict[str, Any] | None) -> str:
    """Where the figures come from, for messages.

    >>> _checkpoint_age(None)
    'no checkpoint with figures yet'
    """
    if not status_doc:
        return "no checkpoint with figures yet"
    age = max(0.0, time.time() - float(status_doc.get("saved_at") or 0))
    return f"figures of the last checkpoint, {_ago(age)} ago"


def _ago(seconds: float) -> str:
    """``_ago(90)`` -> ``'2 min'``; hours and days beyond.

    >>> _ago(12), _ago(90), _ago(7200), _ago(3 * 86400)
    ('12 s', '2 min', '2.0 h', '3.0 d')
    """
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 86400 else f"{seconds / 86400:.1f} d"


# ------------------------------------------------------------------ evaluate
def evaluate(settings: Settings, input_path: Path, models: list[str], scores: list[str],
             features: list[str] | None = None, batch_size: int = 1000,
             checkpoints: list[Path] | None = None, calibration: str = "none") -> dict[str, Any]:
    """Replay ``input_path`` through the engine (event time, in-process state, no outputs)
    with candidate models scoring each of ``scores`` side by side: those ``models`` name (none:
    the configured champion), then those ``checkpoints`` hold (a model trained offline, or a
    live one's saved state). The first decides, the others shadow it, all learn from the same
    delayed labels and are graded on the same ones; beside each, the offline ceiling: a
    logistic regression cross-validated on the same captured features."""
    from touchline.model_training import Capture, ceiling_figures

    configs = _candidates(models, scores, features, calibration, settings.labels.churn_horizon_days)
    for score in scores:
        configs[score] = configs[score] or [settings.models.scores()[score].champion()]
    loaded, trained_on = _checkpoint_candidates(settings, checkpoints or [], configs)
    capture = Capture(list(configs))
    replayed = replay_file(settings, input_path, configs, batch_size, capture, lambda c: loaded.get(c.version))
    core = replayed.pop("core")
    ceilings: dict[tuple[str, ...], dict[str, Any] | None] = {}
    out: dict[str, Any] = {}
    for score in configs:
        rows = _model_figures(core.models[score])
        for row, model in zip(rows, core.models[score].models):
            names = tuple(model.feature_names)
            if names not in ceilings:
                ceilings[names] = ceiling_figures(capture.scores[score], names)
            row["offline_ceiling"] = ceilings[names]
        out[score] = rows
        ceilings.clear()
    _mark_in_sample(out, trained_on, input_path)
    return {"input": str(input_path), **replayed, "scores": out}


def _mark_in_sample(scores: dict[str, list[dict[str, Any]]], trained_on: dict[str, str], input_path: Path) -> None:
    """``in_sample`` on the rows of checkpoints trained on this very input (their figures test nothing)."""
    from touchline.model_training import file_digest

    digest = file_digest(input_path) if trained_on else None
    for rows in scores.values():
        for row in rows:
            row["in_sample"] = digest is not None and trained_on.get(row["version"]) == digest


def _checkpoint_candidates(settings: Settings, paths: list[Path],
                           configs: dict[str, list[ModelConfig]]) -> tuple[dict[str, Any], dict[str, str]]:
    """The models of checkpoint files, by version, each added to its score's candidates (a
    checkpoint of a score not evaluated is an error naming it), and the SHA-256 of the input
    each trained one was trained on."""
    from touchline.state.model_store import decode_checkpoint, read_header

    loaded: dict[str, Any] = {}
    trained_on: dict[str, str] = {}
    key = settings.models.checkpoint_key
    for path in paths:
        config, blob = read_checkpoint(settings, path)
        if config.name not in configs:
            raise ConfigError(f"--checkpoint {path}: holds a {config.name} model; --score "
                              f"{'/'.join(configs)} does not evaluate it")
        if config.version in loaded or any(c.version == config.version for c in configs[config.name]):
            raise ConfigError(f"--checkpoint {path}: {config.version} is already a candidate")
        loaded[config.version] = decode_checkpoint(blob, config, key.get_secret_value().encode() if key else None)
        configs[config.name].append(config)
        training = read_header(blob)[0].get("training")
        if isinstance(training, dict) and isinstance(training.get("sha256"), str):
            trained_on[config.version] = training["sha256"]
    return loaded, trained_on


def replay_file(settings: Settings, input_path: Path, configs: dict[str, list[ModelConfig]], batch_size: int,
                sink: Any = None, restore: Any = None) -> dict[str, Any]:
    """Replay ``input_path`` with ``configs`` scoring (see :func:`evaluate`), resolved labels
    going to ``sink``; the figures of the replay and the decision core it ran (``core``)."""
    from prometheus_client import CollectorRegistry

    from touchline.batch_service import Engine
    from touchline.metrics.engine_metrics import EngineMetrics
    from touchline.state.memory import MemoryStore

    if not input_path.is_file():
        raise ConfigError(f"--input {input_path}: no such file")
    core = _evaluation_core(settings, configs, restore)
    core.label_sink = sink
    store = MemoryStore()
    engine = Engine(store, core, EngineMetrics(CollectorRegistry()))
    started = time.perf_counter()
    _replay(engine, input_path, batch_size)
    wall = time.perf_counter() - started
    t = engine.totals
    pending = {score: sum(score in p.pending for p in store.profiles()) for score in configs}
    return {
        "events": t.events,
        "invalid_lines": sum(t.dead_letters.values()),
        "seconds": round(wall, 2),
        #: observations whose horizon had not passed when the input ended: no label yet
        "pending_at_end": pending,
        "core": core,
    }


def _candidates(models: list[str], scores: list[str], features: list[str] | None,
                calibration: str = "none", churn_horizon_days: float | None = None) -> dict[str, list[ModelConfig]]:
    """Each score's candidate models, validated (a churn model with a horizon of its own asks
    the labels' question, see :func:`follow_churn_horizon`); the same model twice would only
    compare it with itself."""
    configs = {score: [model_config(score, text, features, calibration) for text in models] for score in scores}
    if churn_horizon_days is not None:
        for config in configs.get("churn", []):
            churn_asks_the_label_question("--model", config, churn_horizon_days)
    for cfgs in configs.values():
        versions = [c.version for c in cfgs]
        if len(set(versions)) != len(versions):
            raise ConfigError(f"--model: the same model is listed twice ({', '.join(versions)})")
    return configs


def _evaluation_core(settings: Settings, configs: dict[str, list[ModelConfig]], restore: Any = None) -> "DecisionCore":
    """A decision core on event time whose evaluated scores have the first candidate as champion
    and the others as its challengers (``restore`` gives those that come from a checkpoint); a
    score not evaluated keeps its configured champion alone."""
    from touchline.decisions.batch_run import DecisionCore
    from touchline.decisions.clock import EventTimeClock

    base = settings.models.scores()
    slots_cfg: dict[str, Any] = {}
    for score in SCORES:
        if score in configs:
            slots_cfg[score] = ScoreSettings(name=score, **configs[score][0].spec())
        else:
            slots_cfg[score] = base[score].model_copy(update={"challenger": None, "promote": None})
    core = DecisionCore(
        policy=settings.policy, models=slots_cfg,
        labels=settings.labels.rules(),
        clock=EventTimeClock(), retention_days=settings.state.retention_days,
        anonymous_retention_days=settings.state.anonymous_retention_days, restore=restore,
        attributes=settings.custom_attributes(),
        no_action_share=0.0)  # an evaluation keeps no records
    for score, cfgs in configs.items():
        for cfg in cfgs[1:]:
            core.models[score].add_challenger(cfg, restore)
    return core


def _replay(engine: "Engine", input_path: Path, batch_size: int) -> None:
    """Feed the file's non-blank lines to the engine in batches of ``batch_size``; the last batch
    is final, so events held for reordering are released."""
    from touchline.decisions.batches import RawBatch

    batch: list[bytes] = []
    offset = 1
    with open(input_path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            batch.append(line.rstrip(b"\r\n"))
            if len(batch) >= batch_size:
                engine.process(RawBatch(batch, input_path.name, offset))
                offset += len(batch)
                batch = []
    engine.process(RawBatch(batch, input_path.name, offset, final=True))


def _model_figures(slot: "ModelSlot") -> list[dict[str, Any]]:
    """Each model of a score: its role, definition and version, its progressive figures, the
    labels it still holds for their horizon and its calibration map."""
    return [{"role": slot.role(m), "model": m.config.estimator, "params": m.config.params,
             "calibration_method": m.config.calibration, "warm_start": m.config.warm_start, "version": m.version,
             "origin": m.origin, **m.evaluation.summary(), **m.quality()} for m in slot.models]


def format_evaluation(r: dict[str, Any]) -> str:
    out = [f"{r['events']:,} events from {r['input']} replayed in {r['seconds']} s"
           + (f" ({r['invalid_lines']:,} invalid lines skipped)" if r["invalid_lines"] else "")]
    for score, rows in r["scores"].items():
        out += _score_lines(score, rows, r["pending_at_end"].get(score, 0))
    return "\n".join(out)


def _score_lines(score: str, rows: list[dict[str, Any]], pending: int) -> list[str]:
    """One score's block: pending observations, a row of figures per model beside the offline
    ceiling, the ceilings and calibration maps, then calibration per bucket."""
    out = ["",
           f"{score}: {pending:,} observations still pending at the end of the input",
           f"{score}: progressive validation on delayed labels (each label grades the "
           "prediction made when the model scored), beside the offline ceiling on the same features",
           f"  {'model':<50} {'labels':>7} {'pos':>6} {'ROC AUC':>8} {'ceiling':>8} {'gap':>7} {'log loss':>9} "
           f"{'cal.err':>8} {'delay h':>8} {'held':>5} {'drifts':>6}"]
    out += [_model_row(i, m) for i, m in enumerate(rows, 1)]
    out += _ceiling_lines(rows)
    out += [f"  [{i}] was trained offline on this very input: its figures are in-sample, not a test of it"
            for i, m in enumerate(rows, 1) if m.get("in_sample")]
    out += [f"  [{i}] calibration map: p -> sigmoid({c['slope']:.3f} logit(p) {c['intercept']:+.3f}), "
            f"fitted on the latest {c['fitted_on']:,} labels" for i, m in enumerate(rows, 1)
            if (c := m.get("calibration_map")) is not None and c["fitted_on"]]
    out += _calibration_lines(rows)
    return out


def _ceiling_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each distinct offline ceiling once, with the models it is the ceiling of."""
    out, seen = [], []
    for i, m in enumerate(rows, 1):
        c = m.get("offline_ceiling")
        if c is None or c in seen:
            continue
        seen.append(c)
        of = ", ".join(f"[{j}]" for j, n in enumerate(rows, 1) if n.get("offline_ceiling") == c)
        out.append(f"  ceiling of {of}: {c['model']} on the same {c['labels']:,} labels and {c['features']} "
                   f"features: ROC AUC {c['roc_auc']:.4f}, log loss {c['log_loss']:.4f}, calibration error "
                   f"{c['calibration_error']:.4f}")
    return out


def _figure(v: Any, spec: str = ".4f") -> str:
    """A figure in the table, "n/a" when there is none yet.

    >>> _figure(0.123456), _figure(None), _figure(3.25, ".1f")
    ('0.1235', 'n/a', '3.2')
    """
    return "n/a" if v is None else format(v, spec)


def _model_name(m: dict[str, Any]) -> str:
    """A model as the table shows it: its spec, then ``platt`` and ``warm:<fingerprint>`` when it has them.

    >>> _model_name({"model": "logreg", "params": {}, "calibration_method": "platt", "warm_start": "3f2a9c1d0b4e5a66"})
    'logreg platt warm:3f2a9c'
    """
    name = _spec_text({"estimator": m["model"], "params": m["params"]})  # the table's shorter marks follow
    if m.get("calibration_method", "none") != "none":
        name += f" {m['calibration_method']}"
    if m.get("warm_start"):
        name += f" warm:{m['warm_start'][:6]}"
    return name


def _model_row(i: int, m: dict[str, Any]) -> str:
    """The model's row: its number and spec (cut to the column, ``~`` marks the cut) and its
    figures, its ROC AUC beside the ceiling's."""
    name = f"[{i}] " + _model_name(m)
    name = name if len(name) <= 50 else name[:49] + "~"
    c = m.get("offline_ceiling") or {}
    top = c.get("roc_auc")
    gap = None if top is None or m["roc_auc"] is None else m["roc_auc"] - top
    return (f"  {name:<50} {m['labels']:>7,} {m['positives']:>6,} {_figure(m['roc_auc']):>8} {_figure(top):>8} "
            f"{_figure(gap, '+.4f'):>7} {_figure(m['log_loss']):>9} {_figure(m['calibration_error']):>8} "
            f"{_figure(m['label_delay_hours'], '.1f'):>8} {m.get('held_labels', 0):>5,} {m['drifts']:>6}")


def _calibration_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per score bucket, each model's predicted / observed positive rate side by side, then which column is which."""
    out = ["  calibration, predicted / observed positive rate (labels) per score bucket:"]
    for bucket in sorted({row["bucket"] for m in rows for row in m["calibration"]}):
        cells = [_calibration_cell(m, bucket) for m in rows]
        out.append(f"    {bucket}  " + "  |  ".join(f"{c:<26}" for c in cells))
    out.append("    columns: " + ", ".join(f"[{i}] " + _model_name(m) for i, m in enumerate(rows, 1)))
    return out


def _calibration_cell(m: dict[str, Any], bucket: str) -> str:
    """A model's "predicted / observed (labels)" in the bucket; "-" when it has no label there."""
    row = next((x for x in m["calibration"] if x["bucket"] == bucket), None)
    return "-" if row is None else f"{row['predicted']:.3f} / {row['observed']:.3f} ({row['labels']})"


def dumps(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
