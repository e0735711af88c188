"""Churn benchmark on a repeat-purchase population: who will not buy again within H days?

    python -m touchline.churn_bench                      # 5,000 customers, 540 days, seed 7
    python -m touchline.churn_bench --customers 300 --json

The population (:mod:`touchline.connectors.repeat_purchase`: purchases only, rates that differ
between customers, silent dropout) is cut at a share of its history. At the cut-off each
customer known by then is a churner when they make no purchase in the next H days (the truth,
from the events after the cut-off); H is three median gaps between a customer's consecutive
purchases before the cut-off, unless ``--horizon-days`` says. Every method ranks the same
customers with what it knew at the cut-off, and is graded by ROC AUC (churner = positive)
and expected calibration error (ten equal-width buckets):

- the engine's churn score with no configuration at all (what a user who sets nothing gets: the
  set-up ``touchline scores --input`` derives from the data);
- the engine's churn score (``touchline scores --input``: the file replayed up to the cut-off,
  models learning on the way) with the default ``logreg``, with ``bgnbd`` and with
  ``bgnbd_logreg`` (BG/NBD corrected by the labels) as champion, churn observed at activity
  (the default) and at random times;
- the recency rule: days since the last purchase;
- a BG/NBD model fitted offline on the customers' summaries at the cut-off, and its MBG/NBD
  variant (a customer may drop out after the first purchase too);
- an offline logistic regression on recency, frequency, tenure and spend: trained at the
  cut-off minus H on the outcome by the cut-off (what a marketer could do), and with 5-fold
  cross-validation on the truth itself (a ceiling: it learns from the outcome it predicts).

Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import orjson
from scipy.stats import rankdata

from touchline.connectors.repeat_purchase import DAY_MS, RepeatPurchase, RepeatPurchaseSpec
from touchline.decisions import bgnbd
from touchline.decisions.evaluation import Calibration
from touchline.decisions.reorder import DEFAULT_FLOOR_MS

Array = npt.NDArray[np.float64]
#: The engine's churn models built on BG/NBD (their horizon_days is set to H).
CUSTOMER_BASE = ("bgnbd", "bgnbd_logreg")
#: The engine's default ``engine.min_event_time``, in ms.
MIN_EVENT_MS = DEFAULT_FLOOR_MS
#: Purchases per customer: contact id -> (event times ms, values), in time order.
History = dict[str, tuple[list[int], list[float]]]


@dataclass(frozen=True)
class BenchSpec:
    """What to measure."""

    customers: int = 5000
    days: float = 540.0
    seed: int = 7
    cutoff_share: float = 2 / 3
    #: None: three median inter-purchase gaps before the cut-off
    horizon_days: float | None = None
    folds: int = 5
    #: a JSONL file of events (purchases and any others) instead of the simulated population
    input: Path | None = None
    #: the cut-off for --input (ISO-8601); None: at cutoff_share of the file's span
    cutoff: str | None = None


@dataclass(frozen=True)
class Population:
    """The events to replay and what the benchmark knows of them."""

    events: Path
    history: History
    events_total: int
    start_ms: int
    end_ms: int
    cutoff_ms: int


# ------------------------------------------------------------------ the data
def write_population(spec: BenchSpec, path: Path) -> tuple[History, int]:
    """Write the population's events to ``path``; (each customer's purchases, events)."""
    sim = RepeatPurchase(RepeatPurchaseSpec(seed=spec.seed, customers=spec.customers, days=spec.days))
    history: History = {}
    n = 0
    with open(path, "wb") as fh:
        for line in sim.lines():
            fh.write(line + b"\n")
            doc = orjson.loads(line)
            times, values = history.setdefault(doc["contact_id"], ([], []))
            times.append(doc["ts"])
            values.append(float(doc["properties"]["value"]))
            n += 1
    return history, n


def read_history(path: Path) -> tuple[History, int, int, int]:
    """Each contact's purchases in a JSONL file of events (other types and lines without a
    contact or a time are left to the engine); (history, lines, first and last event time ms)."""
    history: History = {}
    lines, first, last = 0, math.inf, -math.inf
    with open(path, "rb") as fh:
        for line in fh:
            lines += 1
            doc, ts = _event(line)
            if ts is not None:
                first, last = min(first, ts), max(last, ts)
                _add_purchase(history, doc, ts)
    if not history:
        raise ValueError(f"--input {path}: no purchase event with a contact_id and a time")
    for times, values in history.values():  # in time order (a file need not be)
        order = sorted(range(len(times)), key=times.__getitem__)
        times[:], values[:] = [times[i] for i in order], [values[i] for i in order]
    return history, lines, int(first), int(last)


def _event(line: bytes) -> tuple[dict[str, Any], int | None]:
    """A line's JSON object and event time (ms), as far as they can be read.

    >>> _event(b'{"ts": "2026-01-01T00:00:00Z"}')[1], _event(b'[1]'), _event(b'{"ts": "soon"}')[1]
    (1767225600000, ({}, None), None)
    """
    from touchline.decisions.events import parse_ts

    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}, None
    if not isinstance(doc, dict):
        return {}, None
    ts = doc.get("ts")
    if not isinstance(ts, (str, int, float)) or isinstance(ts, bool):
        return doc, None
    try:
        return doc, parse_ts(ts)
    except ValueError:
        return doc, None


def _add_purchase(history: History, doc: dict[str, Any], ts: int) -> None:
    if doc.get("type") == "purchase" and isinstance(doc.get("contact_id"), str):
        times, values = history.setdefault(doc["contact_id"], ([], []))
        times.append(ts)
        values.append(_value(doc))


def _value(doc: dict[str, Any]) -> float:
    """A purchase's ``properties.value`` (0 when there is none or it is not a number)."""
    props = doc.get("properties")
    value = props.get("value") if isinstance(props, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def median_gap_days(history: History, before_ms: int) -> float:
    """Median days between a customer's consecutive purchases, both before ``before_ms``.

    >>> median_gap_days({"a": ([0, DAY_MS, 4 * DAY_MS], [1.0] * 3), "b": ([0, 2 * DAY_MS], [1.0] * 2)}, 3 * DAY_MS)
    1.5
    """
    gaps = [(b - a) / DAY_MS for times, _ in history.values() for a, b in zip(times, times[1:]) if b <= before_ms]
    if not gaps:
        raise ValueError("no repeat purchase before the cut-off: no purchase rhythm to set the horizon from")
    return float(statistics.median(gaps))


@dataclass(frozen=True)
class Summaries:
    """Each customer known at a time ``at_ms``: id, RFM summary in days, and the truth after it."""

    ids: list[str]
    frequency: Array  # repeat purchases (purchase days after the first: one day's orders are one)
    recency: Array  # first to last purchase
    age: Array  # first purchase to at_ms
    since_last: Array  # last purchase to at_ms
    spend: Array  # mean value per purchase
    churned: npt.NDArray[np.bool_]  # no purchase in (at_ms, at_ms + H]


def summaries(history: History, at_ms: int, horizon_ms: int) -> Summaries:
    """The customers whose first purchase is not after ``at_ms``, as of ``at_ms`` (purchases on
    one UTC day counted as one, as the engine and the literature count them).

    >>> s = summaries({"a": ([0, DAY_MS // 2, 3 * DAY_MS, 9 * DAY_MS], [1.0] * 4)}, 5 * DAY_MS, 7 * DAY_MS)
    >>> float(s.frequency[0]), float(s.recency[0]), bool(s.churned[0])
    (1.0, 3.0, False)
    """
    rows = []
    for cid, (times, values) in sorted(history.items()):
        n = sum(1 for t in times if t <= at_ms)
        if n == 0:
            continue
        last = times[n - 1]
        future = any(at_ms < t <= at_ms + horizon_ms for t in times[n:])
        days = len({t // DAY_MS for t in times[:n]})
        rows.append((cid, days - 1, (last - times[0]) / DAY_MS, (at_ms - times[0]) / DAY_MS, (at_ms - last) / DAY_MS,
                     sum(values[:n]) / n, not future))
    def column(i: int) -> Array:
        return np.asarray([row[i] for row in rows], dtype=np.float64)

    return Summaries([row[0] for row in rows], column(1), column(2), column(3), column(4), column(5),
                     np.asarray([row[6] for row in rows], dtype=np.bool_))


# ------------------------------------------------------------------ grading
def roc_auc(truth: npt.NDArray[np.bool_], score: Array) -> float | None:
    """ROC AUC (ties count half; None without both classes).

    >>> roc_auc(np.array([True, False, True]), np.array([0.9, 0.1, 0.1]))
    0.75
    """
    pos = int(truth.sum())
    neg = len(truth) - pos
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def ece(truth: npt.NDArray[np.bool_], p: Array) -> float:
    """Expected calibration error, as the engine grades its own models
    (:class:`touchline.decisions.evaluation.Calibration`: ten equal-width buckets).

    >>> round(ece(np.array([True, False]), np.array([0.9, 0.1])), 3)
    0.1
    """
    calibration = Calibration()
    for label, prob in zip(truth.tolist(), p.tolist()):
        calibration.update(bool(label), float(prob))
    return calibration.ece()


# ------------------------------------------------------------------ offline peers
def bgnbd_scores(s: Summaries, horizon_days: float, at_first: bool = False) -> tuple[Array, bgnbd.Params]:
    """P(no purchase within H) from a BG/NBD (``at_first``: MBG/NBD) fitted on the summaries themselves."""
    fitted = bgnbd.fit(s.frequency, s.recency, s.age, at_first=at_first).params
    p = [bgnbd.p_no_purchase(fitted, x, t, a, horizon_days, at_first) for x, t, a in zip(s.frequency, s.recency, s.age)]
    return np.asarray(p, dtype=np.float64), fitted


def rfm_matrix(s: Summaries) -> Array:
    """log1p of frequency, recency, tenure, days since the last purchase and spend, with an intercept."""
    cols = [s.frequency, s.recency, s.age, s.since_last, s.spend]
    return np.column_stack([np.ones(len(s.ids)), *(np.log1p(c) for c in cols)])


def fit_logistic(X: Array, y: npt.NDArray[np.bool_], l2: float = 1e-3, steps: int = 50) -> Array:
    """Weights of an L2-regularised logistic regression (Newton steps on standardised columns).

    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> w = fit_logistic(X, np.array([False, False, True, True]))
    >>> bool(predict_logistic(w, X)[3] > 0.5 > predict_logistic(w, X)[0])
    True
    """
    w = np.zeros(X.shape[1])
    target = y.astype(np.float64)
    for _ in range(steps):
        p = predict_logistic(w, X)
        grad = X.T @ (p - target) + l2 * len(y) * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * len(y) * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        w = w - step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def predict_logistic(w: Array, X: Array) -> Array:
    out: Array = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
    return out


def _standardise(X: Array, like: Array) -> Array:
    """Columns of ``X`` standardised with ``like``'s means and deviations (the intercept kept)."""
    mean, std = like.mean(axis=0), like.std(axis=0)
    mean[0], std[0] = 0.0, 1.0
    out: Array = (X - mean) / np.where(std > 0, std, 1.0)
    return out


def rfm_cross_validated(s: Summaries, folds: int, seed: int) -> Array:
    """Out-of-fold predictions of the truth from RFM (the outcome itself is learned: a ceiling)."""
    X = rfm_matrix(s)
    order = np.random.default_rng(seed).permutation(len(s.ids))
    p = np.zeros(len(s.ids))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        w = fit_logistic(_standardise(X[train], X[train]), s.churned[train])
        p[test] = predict_logistic(w, _standardise(X[test], X[train]))
    return p


def rfm_trained_earlier(earlier: Summaries, now: Summaries) -> Array:
    """Trained on the summaries at the cut-off minus H and the outcome by the cut-off; applied now."""
    X_then, X_now = rfm_matrix(earlier), rfm_matrix(now)
    w = fit_logistic(_standardise(X_then, X_then), earlier.churned)
    return predict_logistic(w, _standardise(X_now, X_then))


# ------------------------------------------------------------------ the engine
def engine_scores(events: Path, cutoff_ms: int, horizon_days: float, estimator: str, retention_days: float,
                  observations: str = "activity", first_ms: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """The engine's churn score per contact as of the cut-off (``touchline scores --input``)
    with ``estimator`` as churn champion, churn observations taken as ``observations``
    says (``labels.churn_observations``) and a purchase as the only return (will this customer
    buy again within H), and its own figures for that model. Events from ``first_ms`` on are
    replayed (``engine.min_event_time`` moved back for older data)."""
    from touchline.scores import scores_from_file
    from touchline.settings import load_settings

    overrides: dict[str, Any] = {"labels.churn_horizon_days": horizon_days, "state.retention_days": retention_days,
                                 "models.store": "off", "models.churn.estimator": estimator,
                                 "labels.churn_observations": observations, "labels.churn_returns": ["purchase"]}
    if first_ms is not None and first_ms < MIN_EVENT_MS:
        overrides["engine.min_event_time"] = _iso(first_ms)
    if estimator in CUSTOMER_BASE:
        overrides["models.churn.params"] = {"horizon_days": horizon_days}
    run = scores_from_file(load_settings(None, overrides), events, cutoff_ms)
    model = run.models["churn"].champion
    figures = {"version": model.version, **model.evaluation.figures()}
    population = getattr(model.estimator, "bgnbd", model.estimator)  # bgnbd_logreg's own BG/NBD
    fitted = getattr(population, "params", None)
    if isinstance(fitted, bgnbd.Params):
        figures["bgnbd_params"] = _rounded(fitted)
        figures["fitted_on_at_purchase_share"] = _at_purchase_share(getattr(population, "reservoir", []))
    return {r.contact_id: r.churn_score for r in run.rows}, figures


def default_scores(events: Path, cutoff_ms: int, first_ms: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """The engine's churn score per contact as of the cut-off with no configuration at all (what
    ``touchline scores --input`` gives a user who sets nothing: the set-up derived from the
    file), and its own figures."""
    from touchline.purchase_scan import derived_settings
    from touchline.scores import scores_from_file
    from touchline.settings import load_settings

    overrides: dict[str, Any] = {"models.store": "off"}
    if first_ms is not None and first_ms < MIN_EVENT_MS:
        overrides["engine.min_event_time"] = _iso(first_ms)
    settings, _ = derived_settings(load_settings(None, overrides), events, cutoff_ms, None, overrides)
    run = scores_from_file(settings, events, cutoff_ms)
    model = run.models["churn"].champion
    return {r.contact_id: r.churn_score for r in run.rows}, {"version": model.version, **model.evaluation.figures()}


def _at_purchase_share(reservoir: Sequence[tuple[float, float, float]]) -> float | None:
    """Share of the summaries a BG/NBD was fitted on that were taken at a purchase (age = the
    last purchase's time): such a summary shows no silent spell, so no sign of dropout.

    >>> _at_purchase_share([(1.0, 5.0, 5.0), (1.0, 5.0, 9.0)])
    0.5
    """
    if not reservoir:
        return None
    return round(sum(1 for _x, t_x, age in reservoir if age - t_x < 1e-6) / len(reservoir), 4)


def _rounded(params: bgnbd.Params) -> dict[str, float]:
    """BG/NBD parameters (days) to four significant digits, for printing.

    >>> _rounded(bgnbd.Params(0.24312, 30.9, 0.000123409, 8103.0839))
    {'r': 0.2431, 'alpha': 30.9, 'a': 0.0001234, 'b': 8103.0}
    """
    return {k: float(f"{float(v):.4g}") for k, v in asdict(params).items()}


# ------------------------------------------------------------------ the run
def run(spec: BenchSpec) -> dict[str, Any]:
    """Generate (or read), cut, score with every method, grade; the figures as a dict."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="churn-bench-") as tmp:
        pop = _population(spec, Path(tmp) / "events.jsonl")
        gap = median_gap_days(pop.history, pop.cutoff_ms)
        horizon = round(spec.horizon_days or 3 * gap, 1)
        _check_horizon(horizon, (pop.end_ms - pop.cutoff_ms) / DAY_MS)
        now = summaries(pop.history, pop.cutoff_ms, int(horizon * DAY_MS))
        methods, engine = _engine_methods(pop, horizon, now)
    fitted: dict[str, Any] = {}
    methods.update(_offline_methods(pop.history, now, pop.cutoff_ms, horizon, spec, fitted))
    fitted.update({name: m["bgnbd_params"] for name, m in engine.items() if "bgnbd_params" in m})
    parameters = {**asdict(spec), "input": None if spec.input is None else str(spec.input),
                  "horizon_days": horizon, "cutoff": _day(pop.cutoff_ms, pop.start_ms)}
    figures: dict[str, Any] = {
        "parameters": parameters,
        "data": {"events": pop.events_total, "customers": len(pop.history),
                 "events_to_cutoff": _events_until(pop.history, pop.cutoff_ms), "known_at_cutoff": len(now.ids),
                 "median_gap_days": round(gap, 2),
                 "horizon_from": "--horizon-days" if spec.horizon_days else "3 x median gap"},
        "truth": {"churners": int(now.churned.sum()), "share": round(float(now.churned.mean()), 4)},
        "methods": {name: _grade(now.churned, p) for name, p in methods.items()},
        "engine_models": engine,
        "bgnbd_params_days": fitted,
    }
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return figures


def _population(spec: BenchSpec, scratch: Path) -> Population:
    """The simulated population written to ``scratch``, or the ``--input`` file as it is."""
    if spec.input is None:
        sim = RepeatPurchaseSpec(seed=spec.seed, customers=spec.customers, days=spec.days)
        history, n_events = write_population(spec, scratch)
        cutoff_ms = sim.start_ms + int(spec.cutoff_share * spec.days * DAY_MS)
        return Population(scratch, history, n_events, sim.start_ms, sim.end_ms, cutoff_ms)
    if not spec.input.is_file():
        raise ValueError(f"--input {spec.input}: no such file")
    history, lines, first, last = read_history(spec.input)
    cutoff_ms = first + int(spec.cutoff_share * (last - first)) if spec.cutoff is None else _cutoff(spec.cutoff)
    if not first < cutoff_ms < last:
        raise ValueError(f"--cutoff {spec.cutoff}: not inside the data ({_iso(first)} to {_iso(last)})")
    return Population(spec.input, history, lines, first, last, cutoff_ms)


def _cutoff(text: str) -> int:
    from touchline.scores import parse_at
    from touchline.settings import ConfigError

    try:
        return parse_at(text)
    except ConfigError as exc:
        raise ValueError(str(exc).replace("--at", "--cutoff")) from None


def _iso(ms: int) -> str:
    from touchline.scores import iso

    return iso(ms)


def _check_horizon(horizon: float, after_cutoff_days: float) -> None:
    if horizon > after_cutoff_days:
        raise ValueError(f"horizon {horizon} days does not fit in the {after_cutoff_days:.0f} days after the cut-off: "
                         "pass a shorter --horizon-days, or more --days (with --input: an earlier --cutoff)")


def _engine_methods(pop: Population, horizon: float, now: Summaries) -> tuple[dict[str, Array], dict[str, Any]]:
    """The engine's churn scores (with no configuration; logreg, bgnbd, bgnbd_logreg) on the customers
    known at the cut-off."""
    methods: dict[str, Array] = {}
    models: dict[str, Any] = {}
    days = (pop.end_ms - pop.start_ms) / DAY_MS
    retention = max(730.0, days + horizon + 60.0)  # nobody forgotten: the question is about everyone
    name = "engine, no configuration (set-up derived from the data)"
    scores, models[name] = default_scores(pop.events, pop.cutoff_ms, pop.start_ms)
    methods[name] = np.asarray([scores.get(cid, 0.5) for cid in now.ids], dtype=np.float64)
    for observations in ("activity", "random_times"):
        for estimator in ("logreg", *CUSTOMER_BASE):
            name = f"engine {estimator}, observed at {observations.replace('_', ' ')}"
            scores, models[name] = engine_scores(pop.events, pop.cutoff_ms, horizon, estimator, retention,
                                                 observations, pop.start_ms)
            methods[name] = np.asarray([scores.get(cid, 0.5) for cid in now.ids], dtype=np.float64)
    return methods, models


def _offline_methods(history: History, now: Summaries, cutoff_ms: int, horizon: float, spec: BenchSpec,
                     params: dict[str, Any]) -> dict[str, Array]:
    """The peers: recency rule, offline BG/NBD (its fitted parameters into ``params``), RFM
    logistic regressions."""
    earlier = summaries(history, cutoff_ms - int(horizon * DAY_MS), int(horizon * DAY_MS))
    p_bgnbd, fitted = bgnbd_scores(now, horizon)
    p_mbgnbd, fitted_m = bgnbd_scores(now, horizon, at_first=True)
    params["offline BG/NBD"], params["offline MBG/NBD"] = _rounded(fitted), _rounded(fitted_m)
    methods = {"recency rule": now.since_last, "offline BG/NBD": p_bgnbd, "offline MBG/NBD": p_mbgnbd}
    if len(earlier.ids) >= MIN_EARLIER and 0 < int(earlier.churned.sum()) < len(earlier.ids):  # else nothing to learn
        methods["offline RFM logreg, trained at cut-off - H"] = rfm_trained_earlier(earlier, now)
    methods[f"offline RFM logreg, {spec.folds}-fold CV on the truth (ceiling)"] = rfm_cross_validated(
        now, spec.folds, spec.seed)
    return methods


#: Customers known at the cut-off minus H for a regression trained then to be shown (a short
#: history cut late has almost none).
MIN_EARLIER = 50


def _grade(truth: npt.NDArray[np.bool_], score: Array) -> dict[str, float | None]:
    """ROC AUC, and for a probability the calibration error and the mean prediction."""
    auc = roc_auc(truth, score)
    out: dict[str, float | None] = {"roc_auc": None if auc is None else round(auc, 4)}
    if len(score) and 0.0 <= float(score.min()) and float(score.max()) <= 1.0:
        out["ece"] = round(ece(truth, score), 4)
        out["mean_p"] = round(float(score.mean()), 4)
    return out


def _events_until(history: History, at_ms: int) -> int:
    return sum(1 for times, _ in history.values() for t in times if t <= at_ms)


def _day(ms: int, start_ms: int) -> str:
    from touchline.scores import iso

    return f"{iso(ms)} (day {(ms - start_ms) / DAY_MS:.0f})"


# ------------------------------------------------------------------ output
def format_figures(f: dict[str, Any]) -> str:
    """The figures for people."""
    p, d, t = f["parameters"], f["data"], f["truth"]
    lines = [
        f"churn benchmark: {_source(p)}",
        f"  events          {d['events']:,} purchases of {d['customers']:,} customers; {d['events_to_cutoff']:,} "
        f"up to the cut-off",
        f"  cut-off         {p['cutoff']}",
        f"  horizon H       {p['horizon_days']:g} days ({d['horizon_from']}; median gap {d['median_gap_days']:g} days)",
        f"  truth           {t['churners']:,} of {d['known_at_cutoff']:,} customers known at the cut-off buy nothing "
        f"within H ({t['share']:.1%} churners)",
        f"  {'method':<52} {'ROC AUC':>8} {'ECE':>7} {'mean p':>7}",
    ]
    for name, g in f["methods"].items():
        lines.append(f"  {name:<52} {_num(g['roc_auc']):>8} {_num(g.get('ece')):>7} {_num(g.get('mean_p')):>7}")
    for name, m in f["engine_models"].items():
        share = m["positives"] / m["labels"] if m["labels"] else 0.0
        lines.append(f"  {name} online: {m['labels']:,} churn labels, {share:.1%} positive; progressive AUC "
                     f"{_num(m['roc_auc'])}, ECE {_num(m['calibration_error'])} ({m['version']})")
        if m.get("fitted_on_at_purchase_share") is not None:
            lines.append(f"  {name} fitted on summaries taken at a purchase: {m['fitted_on_at_purchase_share']:.1%}")
    for name, fp in f["bgnbd_params_days"].items():
        lines.append(f"  {name} parameters (days): " + ", ".join(f"{k} {v:g}" for k, v in fp.items()))
    lines.append(f"  time            {f['seconds']:.1f} s")
    return "\n".join(lines)


def _source(p: dict[str, Any]) -> str:
    """What the figures are about: the simulated population or the file.

    >>> _source({"input": "cdnow.jsonl", "seed": 7, "customers": 5000, "days": 540.0})
    'cdnow.jsonl'
    """
    if p.get("input"):
        return str(p["input"])
    return f"repeat-purchase population, seed {p['seed']}, {p['customers']:,} customers, {p['days']:g} days"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    base = BenchSpec()
    ap = argparse.ArgumentParser(prog="python -m touchline.churn_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=base.customers, help=f"population (default {base.customers})")
    ap.add_argument("--days", type=float, default=base.days, help=f"history in days (default {base.days:g})")
    ap.add_argument("--seed", type=int, default=base.seed, help=f"population seed (default {base.seed})")
    ap.add_argument("--cutoff-share", type=float, default=base.cutoff_share,
                    help="the cut-off as a share of the history (default 2/3)")
    ap.add_argument("--horizon-days", type=float, help="H (default: three median inter-purchase gaps)")
    ap.add_argument("--input", type=Path, metavar="FILE",
                    help="a JSONL file of events (your purchases) instead of the simulated population")
    ap.add_argument("--cutoff", metavar="TIME", help="with --input: the cut-off, ISO-8601 (default: at --cutoff-share "
                    "of the file's span)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.cutoff is not None and args.input is None:
        ap.error("--cutoff goes with --input (the simulated population is cut at --cutoff-share)")
    spec = BenchSpec(args.customers, args.days, args.seed, args.cutoff_share, args.horizon_days,
                     input=args.input, cutoff=args.cutoff)
    try:
        figures = run(spec)
    except ValueError as exc:
        print(f"churn_bench: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else format_figures(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
