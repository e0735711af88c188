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
from touchline.settings import ConfigError, Settings

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


def model_config(score: str, text: str, features: list[str] | None = None) -> ModelConfig:
    """A validated model configuration from a command-line spec (ConfigError naming it if not)."""
    try:
        estimator, params = parse_model_spec(text)
        extra = {"features": features} if features else {}
        return ModelConfig(name=score, estimator=estimator, params=params, **extra)
    except ValueError as exc:
        raise ConfigError(_first_error(exc, text)) from None


def _first_error(exc: ValueError, text: str) -> str:
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
    params = ", ".join(f"{k}={v!r}" for k, v in sorted((spec.get("params") or {}).items()))
    return f"{spec['estimator']}({params})" if params else spec["estimator"]


def _figures(m: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    return (f"labels {m['labels']:,}, ROC AUC {fmt(m['roc_auc'])}, log loss {fmt(m['log_loss'])}, "
            f"calibration error {fmt(m.get('calibration_error'))}, drifts {m.get('drifts', 0)}")


def deploy(settings: Settings, score: str, model: ModelConfig, role: str) -> dict[str, Any]:
    """A new deployment revision with ``model`` as the score's challenger (or champion)."""
    from touchline.state.model_store import new_revision

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
        return new_revision(doc, scores, f"{score}: {model.version} deployed as {role}")

    try:
        doc = store.update_deployment(change)
        assert doc is not None
        return doc
    finally:
        store.close()


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
             features: list[str] | None = None, batch_size: int = 1000) -> dict[str, Any]:
    """Replay ``input_path`` through the engine (event time, in-process state, no outputs)
    with ``models`` scoring each of ``scores`` side by side: the first decides, the others
    shadow it, all learn from the same delayed labels and are graded on the same ones."""
    from prometheus_client import CollectorRegistry

    from touchline.batch_service import Engine
    from touchline.metrics.engine_metrics import EngineMetrics
    from touchline.state.memory import MemoryStore

    configs = _candidates(models, scores, features)
    core = _evaluation_core(settings, configs)
    store = MemoryStore()
    engine = Engine(store, core, EngineMetrics(CollectorRegistry()))
    if not input_path.is_file():
        raise ConfigError(f"--input {input_path}: no such file")
    started = time.perf_counter()
    _replay(engine, input_path, batch_size)
    wall = time.perf_counter() - started
    t = engine.totals
    pending = {score: sum(score in p.pending for p in store.profiles()) for score in configs}
    return {
        "input": str(input_path),
        "events": t.events,
        "invalid_lines": sum(t.dead_letters.values()),
        "seconds": round(wall, 2),
        #: observations whose horizon had not passed when the input ended: no label yet
        "pending_at_end": pending,
        "scores": {score: _model_figures(core.models[score]) for score in configs},
    }


def _candidates(models: list[str], scores: list[str], features: list[str] | None) -> dict[str, list[ModelConfig]]:
    """Each score's candidate models, validated; the same model twice would only compare it with itself."""
    configs = {score: [model_config(score, text, features) for text in models] for score in scores}
    for cfgs in configs.values():
        versions = [c.version for c in cfgs]
        if len(set(versions)) != len(versions):
            raise ConfigError(f"--model: the same model is listed twice ({', '.join(versions)})")
    return configs


def _evaluation_core(settings: Settings, configs: dict[str, list[ModelConfig]]) -> "DecisionCore":
    """A decision core on event time whose evaluated scores have the first candidate as champion
    and the others as its challengers; a score not evaluated keeps its configured champion alone."""
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
        anonymous_retention_days=settings.state.anonymous_retention_days,
        attributes=settings.custom_attributes(),
        no_action_share=0.0)  # an evaluation keeps no records
    for score, cfgs in configs.items():
        for cfg in cfgs[1:]:
            core.models[score].add_challenger(cfg)
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
    """Each model of a score: its role, estimator, parameters and version, and its progressive figures."""
    return [{"role": slot.role(m), "model": m.config.estimator, "params": m.config.params,
             "version": m.version, **m.evaluation.summary()} for m in slot.models]


def format_evaluation(r: dict[str, Any]) -> str:
    out = [f"{r['events']:,} events from {r['input']} replayed in {r['seconds']} s"
           + (f" ({r['invalid_lines']:,} invalid lines skipped)" if r["invalid_lines"] else "")]
    for score, rows in r["scores"].items():
        out += _score_lines(score, rows, r["pending_at_end"].get(score, 0))
    return "\n".join(out)


def _score_lines(score: str, rows: list[dict[str, Any]], pending: int) -> list[str]:
    """One score's block: pending observations, a row of figures per model, then calibration."""
    out = ["",
           f"{score}: {pending:,} observations still pending at the end of the input",
           f"{score}: progressive validation on delayed labels (each label grades the "
           "prediction made when the model scored)",
           f"  {'model':<28} {'labels':>7} {'pos':>6} {'ROC AUC':>8} {'log loss':>9} {'cal.err':>8} "
           f"{'delay h':>8} {'drifts':>6}"]
    out += [_model_row(i, m) for i, m in enumerate(rows, 1)]
    out += _calibration_lines(rows)
    return out


def _figure(v: Any, spec: str = ".4f") -> str:
    """A figure in the table, "n/a" when there is none yet.

    >>> _figure(0.123456), _figure(None), _figure(3.25, ".1f")
    ('0.1235', 'n/a', '3.2')
    """
    return "n/a" if v is None else format(v, spec)


def _model_row(i: int, m: dict[str, Any]) -> str:
    """The model's row: its number and spec (cut to the column, ``~`` marks the cut) and its figures."""
    name = f"[{i}] " + _spec_text({"estimator": m["model"], "params": m["params"]})
    name = name if len(name) <= 28 else name[:27] + "~"
    return (f"  {name:<28} {m['labels']:>7,} {m['positives']:>6,} {_figure(m['roc_auc']):>8} "
            f"{_figure(m['log_loss']):>9} {_figure(m['calibration_error']):>8} "
            f"{_figure(m['label_delay_hours'], '.1f'):>8} {m['drifts']:>6}")


def _calibration_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per score bucket, each model's predicted / observed positive rate side by side, then which column is which."""
    out = ["  calibration, predicted / observed positive rate (labels) per score bucket:"]
    for bucket in sorted({row["bucket"] for m in rows for row in m["calibration"]}):
        cells = [_calibration_cell(m, bucket) for m in rows]
        out.append(f"    {bucket}  " + "  |  ".join(f"{c:<26}" for c in cells))
    out.append("    columns: " + ", ".join(f"[{i}] " + _spec_text({"estimator": m["model"], "params": m["params"]})
                                         for i, m in enumerate(rows, 1)))
    return out


def _calibration_cell(m: dict[str, Any], bucket: str) -> str:
    """A model's "predicted / observed (labels)" in the bucket; "-" when it has no label there."""
    row = next((x for x in m["calibration"] if x["bucket"] == bucket), None)
    return "-" if row is None else f"{row['predicted']:.3f} / {row['observed']:.3f} ({row['labels']})"


def dumps(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
