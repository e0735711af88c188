"""End-of-run summary: what a person wants to see after a run, as text and JSON."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Collection, Iterable, Mapping

from touchline.batch_service import Engine
from touchline.decisions import purchase_setup, sample_ratio
from touchline.redact import redact_tree, redact_url

if TYPE_CHECKING:
    from touchline.decisions.labelling import LabelSettings as LabelRules


def weighted_percentile(samples: Iterable[tuple[float, int]], q: float) -> float | None:
    """The q-quantile (0..1) of values given with integer weights.

    >>> weighted_percentile([(1.0, 98), (50.0, 2)], 0.5), weighted_percentile([(1.0, 98), (50.0, 2)], 0.99)
    (1.0, 50.0)
    """
    pairs = sorted((v, w) for v, w in samples if w > 0)
    total = sum(w for _, w in pairs)
    if not total:
        return None
    target, seen = q * total, 0
    for value, weight in pairs:
        seen += weight
        if seen >= target:
            return value
    return pairs[-1][0]


def build_summary(engine: Engine, wall_seconds: float, outputs: dict[str, str],
                  deliveries: dict[tuple[str, str], int] | None = None) -> dict[str, Any]:
    """Collect the run's figures from the engine's tallies (and the connectors' outcomes),
    secrets masked (:func:`touchline.redact.redact_tree`): this is what summary.json holds."""
    t = engine.totals
    delivered = _deliveries(deliveries or {})
    return redact_tree({
        "events_processed": t.events,
        "lines_read": t.lines,
        "duplicates_ignored": t.duplicates,
        "out_of_order_events": t.out_of_order,
        "erased_events_dropped": t.erased,
        "wall_seconds": round(wall_seconds, 3),
        "events_per_second": round(t.lines / wall_seconds, 1) if wall_seconds > 0 else None,
        "event_types": dict(t.by_type.most_common()),
        "decisions": {f"{a}/{c}": n for (a, c), n in sorted(t.decisions.items())},
        "decisions_total": sum(t.decisions.values()),
        "suppressed": dict(t.suppressions.most_common()),
        "no_actions": {"points": sum(t.no_action_points.values()), "recorded": t.no_action_points["true"],
                       "share": engine.core.no_action_share},
        "dead_letters": dict(t.dead_letters.most_common()),
        "dead_letters_total": sum(t.dead_letters.values()),
        "timers_fired": dict(sorted(t.timers.items())),
        "models": {name: _slot_summary(slot) for name, slot in engine.models.items()},
        #: per score, model version and event-time day (UTC): figures on the labels resolved that day
        "model_quality_by_day": engine.core.quality.rows(),
        "repeat_purchases": repeat_purchases(t.purchase_gap_days, engine.core.labels, _purchase_share(t.by_type),
                                             engine.models["churn"].champion.estimator_name),
        "model_store": _model_store(engine),
        "latency_ms": _latency(t.batch_latency_ms, t.decision_latency_ms),
        "feedback": _sum_feedback(t.feedback),
        "feedback_linked_share": _linked_share(t.feedback),
        "journeys": dict(sorted(t.journeys.items())),
        "deliveries": delivered,
        "delivery_failures_total": sum(d["failed"] for d in delivered.values()),
        "state": engine.store.stats(),
        "experiments": engine.core.experiments.summary(),
        "outputs": outputs,
    })  # outputs and stores are named by URL: never with a password or a query value


#: A churn horizon of this many median gaps between purchases: most who will buy again do
#: within it (the summary's suggestion; what ``touchline scores --input`` derives).
SUGGESTED_GAPS = purchase_setup.SUGGESTED_GAPS


def repeat_purchases(gaps: Mapping[int, int], labels: "LabelRules", purchase_share: float,
                     churn_model: str) -> dict[str, Any] | None:
    """:func:`_repeat_purchases` for a run's label rules."""
    returns = None if labels.churn_returns is None else sorted(labels.churn_returns)
    return _repeat_purchases(gaps, labels.churn_horizon_ms, purchase_share, labels.churn_at_random_times,
                             churn_model, returns)


def _repeat_purchases(gaps: Mapping[int, int], horizon_ms: int, purchase_share: float = 0.0,
                      random_times: bool = False, churn_model: str = "logreg",
                      churn_returns: list[str] | None = None) -> dict[str, Any] | None:
    """The population's time between consecutive purchases of a contact, against the churn
    horizon: what "will buy again within H" should take H from; the share of events that are
    purchases, how churn is observed, what counts as a return and which model scores it. None
    without repeat purchases.

    >>> _repeat_purchases({10: 3, 30: 2, 90: 1}, 7 * 86_400_000)["suggested_churn_horizon_days"]
    30
    """
    median, p90 = weighted_percentile(gaps.items(), 0.5), weighted_percentile(gaps.items(), 0.9)
    if median is None or p90 is None:
        return None
    return {"gaps": sum(gaps.values()), "median_gap_days": int(median), "p90_gap_days": int(p90),
            "churn_horizon_days": horizon_ms / 86_400_000,
            "suggested_churn_horizon_days": max(1, SUGGESTED_GAPS * int(median)),
            "purchase_share": round(purchase_share, 4),
            "churn_observations": "random_times" if random_times else "activity", "churn_model": churn_model,
            "churn_returns": churn_returns}


def _purchase_share(by_type: Mapping[str, int]) -> float:
    total = sum(by_type.values())
    return by_type.get("purchase", 0) / total if total else 0.0


def _deliveries(outcomes: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """Delivered and failed sends per channel, channels in name order.

    >>> _deliveries({("sms", "failed"): 1, ("email", "delivered"): 5, ("sms", "delivered"): 3})
    {'email': {'delivered': 5, 'failed': 0}, 'sms': {'delivered': 3, 'failed': 1}}
    """
    delivered: dict[str, dict[str, int]] = {}
    for (channel, outcome), n in sorted(outcomes.items()):
        delivered.setdefault(channel, {"delivered": 0, "failed": 0})[outcome] = n
    return delivered


def _latency(batch_ms: Collection[tuple[float, int]], decision_ms: Iterable[float]) -> dict[str, float | None]:
    """p50 and p99 of the batch processing time (weighted by the batch's events) and of event-to-decision."""
    decision_lat = [(v, 1) for v in decision_ms]
    return {
        "processing_p50": _round(weighted_percentile(batch_ms, 0.5)),
        "processing_p99": _round(weighted_percentile(batch_ms, 0.99)),
        "decision_p50": _round(weighted_percentile(decision_lat, 0.5)),
        "decision_p99": _round(weighted_percentile(decision_lat, 0.99)),
    }


def _linked_share(feedback: Counter) -> float | None:
    """The share of feedback linked to a decision of ours (keys end in "true"); None without feedback.

    >>> _linked_share(Counter({("sms", "click", "true"): 3, ("sms", "click", "false"): 1})), _linked_share(Counter())
    (0.75, None)
    """
    if not feedback:
        return None
    return round(sum(n for k, n in feedback.items() if k[2] == "true") / sum(feedback.values()), 4)


def _slot_summary(slot: Any) -> dict[str, Any]:
    champion = slot.champion
    out = {"version": champion.version, "estimator": champion.config.estimator, "origin": champion.origin,
           **champion.quality()}
    if slot.challengers:
        out["challengers"] = [
            {"version": c.version, "estimator": c.config.estimator, "origin": c.origin, **c.quality(),
             "champion_on_same_labels": c.versus.figures() if c.versus is not None else None}
            for c in slot.challengers]
    return out


def _model_store(engine: Engine) -> dict[str, Any] | None:
    keeper = engine.keeper
    if keeper is None:
        return None
    resumed = keeper.restore_enabled
    return {"url": redact_url(keeper.store.url), "revision": keeper.revision,
            "start": "resumed" if resumed else "fresh",
            "resumed_from": redact_url(keeper.store.url) if resumed else None,
            "restored": keeper.restored, "refused": keeper.refused, "changes": keeper.changes}


def _sum_feedback(feedback: Counter) -> dict[str, int]:
    """Feedback per channel/outcome, linked and unlinked together."""
    out: Counter = Counter()
    for (channel, outcome, _linked), n in feedback.items():
        out[f"{channel}/{outcome}"] += n
    return dict(sorted(out.items()))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable summary."""
    out = [
        "",
        "Touchline run summary",
        f"  events processed   {s['events_processed']:,} of {s['lines_read']:,} lines in {s['wall_seconds']:.1f} s"
        f" ({s['events_per_second'] or 0:,.0f} events/s); duplicates ignored {s['duplicates_ignored']:,}",
    ]
    out += _outcome_lines(s)
    out += _delivery_lines(s)
    out += _model_lines(s)
    out += _repeat_purchase_lines(s.get("repeat_purchases"))
    out += _experiment_lines(s.get("experiments") or {})
    out += _run_lines(s)
    return "\n".join(out)


def _counts(counts: dict[str, int], width: int = 30) -> list[str]:
    """One indented line per name and count, counts aligned.

    >>> _counts({"email": 1200, "sms": 7}, width=6)
    ['    email     1,200', '    sms           7']
    """
    return [f"    {k:<{width}} {v:>8,}" for k, v in counts.items()]


def _outcome_lines(s: dict[str, Any]) -> list[str]:
    """What became of the events: decisions, suppressed candidates, erased contacts' events, dead letters."""
    out = [f"  decisions          {s['decisions_total']:,}", *_counts(s["decisions"]),
           f"  suppressed         {sum(s['suppressed'].values()):,} candidates", *_counts(s["suppressed"])]
    if s.get("no_actions", {}).get("points"):
        out.append(_no_action_line(s["no_actions"]))
    if s.get("erased_events_dropped"):
        out.append(f"  erased             {s['erased_events_dropped']:,} events of erased contacts dropped")
    out += [f"  dead letters       {s['dead_letters_total']:,}", *_counts(s["dead_letters"])]
    return out + _out_of_order_lines(s["dead_letters"], s.get("lines_read") or 0)


#: A share of late and far-ahead events that says the input is not in time order (a simulated
#: stream's few late events do not).
OUT_OF_ORDER_SHARE = 0.05


def _out_of_order_lines(dead: dict[str, int], lines_read: int) -> list[str]:
    """A hint when many events came late or far ahead of the event clock: an input in another
    order than time (an export sorted by customer), which ``touchline sort`` fixes.

    >>> _out_of_order_lines({"late_event": 311, "future_event": 292}, 1289)[0]
    '      warning: 603 of 1,289 lines (47%) came late or far ahead of the event clock: is the input in event-time order?'
    >>> _out_of_order_lines({"late_event": 3}, 1289)
    []
    """
    n = dead.get("late_event", 0) + dead.get("future_event", 0)
    if not lines_read or n < OUT_OF_ORDER_SHARE * lines_read:
        return []
    return [f"      warning: {n:,} of {lines_read:,} lines ({n / lines_read:.0%}) came late or far ahead of the event "
            "clock: is the input in event-time order?",
            "      a stream takes events in the order given; sort a file by event time first (touchline sort FILE "
            "--out SORTED), or use touchline scores --input, which sorts by itself"]


def _no_action_line(n: dict[str, Any]) -> str:
    """The decision points that sent nothing, and how many of them have a no-action record.

    >>> _no_action_line({"points": 1200, "recorded": 118, "share": 0.1})
    '  no action          1,200 decision points held back every candidate; 118 recorded (audit.no_action_share 0.1)'
    """
    return (f"  no action          {n['points']:,} decision points held back every candidate; {n['recorded']:,} "
            f"recorded (audit.no_action_share {n['share']:g})")


def _delivery_lines(s: dict[str, Any]) -> list[str]:
    """Journey counters and channel deliveries, each only when the run had any."""
    out = []
    if s.get("journeys"):
        out.append("  journeys")
        out += _counts(s["journeys"], 42)
    if s.get("deliveries"):
        out.append("  deliveries         " + "; ".join(
            f"{ch} {d['delivered']:,} delivered" + (f", {d['failed']:,} FAILED (dead letters)" if d["failed"] else "")
            for ch, d in s["deliveries"].items()))
    return out


def _model_lines(s: dict[str, Any]) -> list[str]:
    """Each score's champion and challengers (with the champion graded on the challenger's labels), and the model store."""
    out = ["  models (progressive validation on delayed labels)"]
    for name, m in s["models"].items():
        out.append(f"    {name:<6} {_quality(m)}  [{m['version']}]")
        warning = _balance_warning(name, m["labels"], m["positives"])
        if warning:
            out.append(f"      warning: {warning}")
        for c in m.get("challengers", []):
            versus = c["champion_on_same_labels"]
            out.append(f"      challenger {_quality(c)}  [{c['version']}]")
            if versus is not None:
                out.append(f"      champion on the same labels: {_quality(versus)}")
    store = s.get("model_store")
    if store:
        out.append(_model_store_line(store))
    return out


#: Labels before the class balance is judged, and the share of one class that is too much.
BALANCE_MIN_LABELS, BALANCE_MAX_SHARE = 50, 0.9


def _balance_warning(name: str, labels: int, positives: int) -> str | None:
    """What to say when a score's labels cannot teach it to rank: none resolved, or one class
    nearly always.

    >>> _balance_warning("churn", 1000, 910)
    '91% of the churn labels are positive: the other class is rare, so the score has few examples to rank by (check labels.churn_horizon_days against how often contacts come back)'
    >>> _balance_warning("lead", 1000, 500) is None, _balance_warning("lead", 10, 10) is None
    (True, True)
    """
    if not labels:
        return (f"no {name} label resolved: its horizon (labels.{name}_horizon_days) may not have passed within "
                "the data seen")
    share = positives / labels
    if labels < BALANCE_MIN_LABELS or max(share, 1 - share) <= BALANCE_MAX_SHARE:
        return None
    side, pct = ("positive", share) if share > 0.5 else ("negative", 1 - share)
    return (f"{pct:.0%} of the {name} labels are {side}: the other class is rare, so the score has few examples to "
            f"rank by (check labels.{name}_horizon_days against how often contacts come back)")


def _repeat_purchase_lines(r: dict[str, Any] | None) -> list[str]:
    """The time between purchases against the churn horizon, with a warning when the horizon
    is far shorter than it (churn would mostly mean "not back yet").

    >>> _repeat_purchase_lines({"gaps": 6, "median_gap_days": 30, "p90_gap_days": 90, "churn_horizon_days": 7.0,
    ...                         "suggested_churn_horizon_days": 90})[1]
    '      warning: labels.churn_horizon_days (7) is shorter than the median gap between purchases: churn labels mostly mean "not back yet"; about 90 days (3 median gaps) fits this data'
    """
    if r is None:
        return []
    out = [f"  repeat purchases   {r['gaps']:,} gaps between a contact's purchases: median {r['median_gap_days']} days, "
           f"90% within {r['p90_gap_days']} days; churn horizon {r['churn_horizon_days']:g} days"]
    if r["churn_horizon_days"] < r["median_gap_days"]:
        out.append(f"      warning: labels.churn_horizon_days ({r['churn_horizon_days']:g}) is shorter than the median gap "
                   f"between purchases: churn labels mostly mean \"not back yet\"; about "
                   f"{r['suggested_churn_horizon_days']} days ({SUGGESTED_GAPS} median gaps) fits this data")
    return out + purchase_data_notes(r)


def purchase_data_notes(r: dict[str, Any] | None) -> list[str]:
    """On purchase data, the churn settings that differ from the purchase preset, and where it is.

    >>> purchase_data_notes({"purchase_share": 1.0, "churn_observations": "random_times", "churn_model": "logreg",
    ...                      "churn_returns": ["purchase"]})
    ['      note: 100% of the events are purchases; for the churn score on purchase data set models.churn.estimator = "bgnbd_logreg" (the BG/NBD customer-base model corrected by the labels), or run with --config examples/purchases.toml (touchline scores --input FILE derives them from the file, unless --no-derive; see README, Churn on purchase data)']
    """
    if r is None or r.get("purchase_share", 0) < PURCHASE_DATA_SHARE:
        return []
    off = [setting for setting, fits in (
        ('labels.churn_returns = ["purchase"] (only a purchase is a return)', r.get("churn_returns") == ["purchase"]),
        ('labels.churn_observations = "random_times" (churn observed in silent spells too, not only at purchases)',
         r.get("churn_observations") == "random_times"),
        ('models.churn.estimator = "bgnbd_logreg" (the BG/NBD customer-base model corrected by the labels)',
         r.get("churn_model", "logreg") in CUSTOMER_BASE_MODELS)) if not fits]
    if not off:
        return []
    return [f"      note: {r['purchase_share']:.0%} of the events are purchases; for the churn score on purchase data "
            f"set {'; '.join(off)}, or run with --config examples/purchases.toml (touchline scores --input FILE "
            "derives them from the file, unless --no-derive; see README, Churn on purchase data)"]


#: Churn models built on a customer-base model (the summary suggests one on purchase data).
CUSTOMER_BASE_MODELS = ("bgnbd", "bgnbd_logreg")


#: A share of purchases among the events from which the data is taken for purchase data (the scan
#: of touchline scores --input counts the known contacts' events only).
PURCHASE_DATA_SHARE = purchase_setup.PURCHASE_DATA_SHARE


def _model_store_line(store: dict[str, Any]) -> str:
    """Where the models are kept, the deployment revision, whether they started fresh or resumed
    (from where), what was restored and what was refused.

    >>> _model_store_line({"url": "file://out/models", "revision": 2, "start": "resumed",
    ...                    "resumed_from": "file://old/models", "restored": ["lead"], "refused": []})
    '  model store        file://out/models (revision 2; resumed from file://old/models: restored lead)'
    >>> _model_store_line({"url": "file://out/models", "revision": 1, "start": "fresh", "restored": [], "refused": []})
    '  model store        file://out/models (revision 1; fresh models: --resume-models continues from checkpoints)'
    """
    notes = [f"revision {store['revision']}"]
    if store.get("start") == "fresh":
        notes.append("fresh models: --resume-models continues from checkpoints")
    elif store.get("start") == "resumed":
        notes.append(f"resumed from {store['resumed_from']}: "
                     + ("restored " + ", ".join(store["restored"]) if store["restored"] else "no checkpoint found"))
    elif store["restored"]:
        notes.append("restored " + ", ".join(store["restored"]))
    if store["refused"]:
        notes.append(f"{len(store['refused'])} checkpoint(s) refused (see log), started fresh")
    return f"  model store        {store['url']} ({'; '.join(notes)})"


def _run_lines(s: dict[str, Any]) -> list[str]:
    """Latency, what the state store holds, and where the outputs are."""
    lat = s["latency_ms"]
    out = [
        f"  latency            processing p50 {_ms(lat['processing_p50'])}, p99 {_ms(lat['processing_p99'])};"
        f" event-to-decision p50 {_ms(lat['decision_p50'])}, p99 {_ms(lat['decision_p99'])} (wall time in the engine)"
    ]
    if s["state"]:
        out.append("  state              " + ", ".join(f"{k} {v:,}" for k, v in s["state"].items()))
    for name, path in s["outputs"].items():
        out.append(f"  {name:<18} {path}")
    return out


def _experiment_lines(e: dict[str, Any]) -> list[str]:
    """Lift per segment (with the truth, when a closed-loop simulation knows it) and attribution."""
    out = []
    ratios = e.get("sample_ratio") or {}
    for name, estimates in e.get("lift", {}).items():
        if estimates:
            out += _lift_lines(name, estimates, e.get("window_ms"))
            out += _sample_ratio_lines(ratios.get(name))
    out += _attribution_lines(e.get("attribution") or {})
    for name, segments in (e.get("bandits") or {}).items():
        out.append(f"  bandit {name:<11} " + "; ".join(
            f"{seg}: " + ", ".join(f"{arm} {v['rate']:.1%} of {v['rewards']:,}" for arm, v in arms.items())
            for seg, arms in segments.items()))
    return out


def _lift_lines(name: str, estimates: list[dict[str, Any]], window_ms: int | None) -> list[str]:
    """One experiment: what is compared, over which window, then one line per segment."""
    first = estimates[0]
    return [f"  lift               {name}: {first['arm']} vs {first['baseline']}, conversion in "
            f"{_days(window_ms)}, {first['confidence']:.0%} interval", *(_estimate_line(est) for est in estimates)]


def _sample_ratio_lines(ratio: dict[str, Any] | None) -> list[str]:
    """The arms' contacts against the shares assigned, and a warning on a mismatch.

    >>> _sample_ratio_lines({"observed": {"a": 600, "b": 400}, "expected_share": {"a": 0.5, "b": 0.5},
    ...                      "p_value": 0.0, "mismatch": True})[1]
    '    warning: sample ratio mismatch (p < 0.000001): the arms do not hold the shares they were assigned, so something besides the assignment decided who was counted where; do not trust this lift'
    """
    if not ratio:
        return []
    p = ratio["p_value"]
    line = f"    sample ratio   {sample_ratio.describe(ratio['observed'], ratio['expected_share'], p)}"
    if not ratio["mismatch"]:
        return [line]
    shown = f"p = {p:.2g}" if p >= 1e-6 else "p < 0.000001"
    return [line, f"    warning: sample ratio mismatch ({shown}): {sample_ratio.MISMATCH_MEANS}"]


def _estimate_line(est: dict[str, Any]) -> str:
    """A segment's lift in points with its interval, both arms' conversions, the verdict, and the
    true lift when known (inside the interval or OUTSIDE it)."""
    seg = est["segment"]
    label = "everyone" if seg["dimension"] == "all" else f"{seg['dimension']}={seg['value']}"
    truth = est.get("true_lift")
    true_text = ""
    if truth is not None:
        inside = est["low"] <= truth <= est["high"]
        true_text = f"  true {truth * 100:+.1f} pp ({'inside' if inside else 'OUTSIDE'})"
    return (f"    {label:<30} {est['lift'] * 100:+6.1f} pp [{est['low'] * 100:+.1f}, {est['high'] * 100:+.1f}]"
            f"  {est['treated_conversions']:,}/{est['treated']:,} vs {est['control_conversions']:,}/"
            f"{est['control']:,}  {est['verdict']}{true_text}")


def _attribution_lines(attribution: dict[str, dict[str, Any]]) -> list[str]:
    """Conversions credited per channel under each attribution model (nothing when none was)."""
    if not attribution:
        return []
    out = ["  attribution        conversions credited per channel, by model"]
    for model, channels in attribution.items():
        out.append(f"    {model:<12} " + ", ".join(f"{ch} {v['conversions']:,.1f}" for ch, v in channels.items()))
    return out


def _days(window_ms: int | None) -> str:
    return "the window" if not window_ms else f"{window_ms / 86_400_000:g} days"


def _quality(m: dict[str, Any]) -> str:
    if m["roc_auc"] is not None:
        auc = f"{m['roc_auc']:.3f}"
    else:
        auc = "n/a (no labels yet)" if not m["labels"] else "n/a (one class so far)"
    loss = "n/a" if m["log_loss"] is None else m["log_loss"]
    cal = "" if m.get("calibration_error") is None else f", calibration error {m['calibration_error']}"
    drift = f", drift x{m['drifts']}" if m.get("drifts") else ""
    held = f", {m['held_labels']:,} held to their horizon" if m.get("held_labels") else ""
    return f"ROC AUC {auc}, log loss {loss}{cal}, labels {m['labels']:,} ({m['positives']:,} positive){held}{drift}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"
