"""End-of-run summary: what a person wants to see after a run, as text and JSON."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from touchline.batch_service import Engine
from touchline.redact import redact_tree, redact_url


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
    delivered: dict[str, dict[str, int]] = {}
    for (channel, outcome), n in sorted((deliveries or {}).items()):
        delivered.setdefault(channel, {"delivered": 0, "failed": 0})[outcome] = n
    decision_lat = [(v, 1) for v in t.decision_latency_ms]
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
        "dead_letters": dict(t.dead_letters.most_common()),
        "dead_letters_total": sum(t.dead_letters.values()),
        "timers_fired": dict(sorted(t.timers.items())),
        "models": {name: _slot_summary(slot) for name, slot in engine.models.items()},
        "model_store": _model_store(engine),
        "latency_ms": {
            "processing_p50": _round(weighted_percentile(t.batch_latency_ms, 0.5)),
            "processing_p99": _round(weighted_percentile(t.batch_latency_ms, 0.99)),
            "decision_p50": _round(weighted_percentile(decision_lat, 0.5)),
            "decision_p99": _round(weighted_percentile(decision_lat, 0.99)),
        },
        "feedback": _sum_feedback(t.feedback),
        "feedback_linked_share": (round(sum(n for k, n in t.feedback.items() if k[2] == "true")
                                        / sum(t.feedback.values()), 4) if t.feedback else None),
        "journeys": dict(sorted(t.journeys.items())),
        "deliveries": delivered,
        "delivery_failures_total": sum(d["failed"] for d in delivered.values()),
        "state": engine.store.stats(),
        "experiments": engine.core.experiments.summary(),
        "outputs": outputs,
    })  # outputs and stores are named by URL: never with a password or a query value


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
    return {"url": redact_url(keeper.store.url), "revision": keeper.revision, "restored": keeper.restored,
            "refused": keeper.refused, "changes": keeper.changes}


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
    lat = s["latency_ms"]
    out = [
        "",
        "Touchline run summary",
        f"  events processed   {s['events_processed']:,} of {s['lines_read']:,} lines in {s['wall_seconds']:.1f} s"
        f" ({s['events_per_second'] or 0:,.0f} events/s); duplicates ignored {s['duplicates_ignored']:,}",
        f"  decisions          {s['decisions_total']:,}",
    ]
    out += [f"    {k:<30} {v:>8,}" for k, v in s["decisions"].items()]
    out.append(f"  suppressed         {sum(s['suppressed'].values()):,} candidates")
    out += [f"    {k:<30} {v:>8,}" for k, v in s["suppressed"].items()]
    if s.get("erased_events_dropped"):
        out.append(f"  erased             {s['erased_events_dropped']:,} events of erased contacts dropped")
    out.append(f"  dead letters       {s['dead_letters_total']:,}")
    out += [f"    {k:<30} {v:>8,}" for k, v in s["dead_letters"].items()]
    if s.get("journeys"):
        out.append("  journeys")
        out += [f"    {k:<42} {v:>8,}" for k, v in s["journeys"].items()]
    if s.get("deliveries"):
        out.append("  deliveries         " + "; ".join(
            f"{ch} {d['delivered']:,} delivered" + (f", {d['failed']:,} FAILED (dead letters)" if d["failed"] else "")
            for ch, d in s["deliveries"].items()))
    out.append("  models (progressive validation on delayed labels)")
    for name, m in s["models"].items():
        out.append(f"    {name:<6} {_quality(m)}  [{m['version']}]")
        for c in m.get("challengers", []):
            versus = c["champion_on_same_labels"]
            out.append(f"      challenger {_quality(c)}  [{c['version']}]")
            if versus is not None:
                out.append(f"      champion on the same labels: {_quality(versus)}")
    store = s.get("model_store")
    if store:
        notes = [f"revision {store['revision']}"]
        if store["restored"]:
            notes.append("restored " + ", ".join(store["restored"]))
        if store["refused"]:
            notes.append(f"{len(store['refused'])} checkpoint(s) refused (see log), started fresh")
        out.append(f"  model store        {store['url']} ({'; '.join(notes)})")
    out += _experiment_lines(s.get("experiments") or {})
    out.append(
        f"  latency            processing p50 {_ms(lat['processing_p50'])}, p99 {_ms(lat['processing_p99'])};"
        f" event-to-decision p50 {_ms(lat['decision_p50'])}, p99 {_ms(lat['decision_p99'])} (wall time in the engine)"
    )
    if s["state"]:
        out.append("  state              " + ", ".join(f"{k} {v:,}" for k, v in s["state"].items()))
    for name, path in s["outputs"].items():
        out.append(f"  {name:<18} {path}")
    return "\n".join(out)


def _experiment_lines(e: dict[str, Any]) -> list[str]:
    """Lift per segment (with the truth, when a closed-loop simulation knows it) and attribution."""
    out = []
    for name, estimates in e.get("lift", {}).items():
        if not estimates:
            continue
        first = estimates[0]
        out.append(f"  lift               {name}: {first['arm']} vs {first['baseline']}, conversion in "
                   f"{_days(e.get('window_ms'))}, {first['confidence']:.0%} interval")
        for est in estimates:
            seg = est["segment"]
            label = "everyone" if seg["dimension"] == "all" else f"{seg['dimension']}={seg['value']}"
            truth = est.get("true_lift")
            true_text = ""
            if truth is not None:
                inside = est["low"] <= truth <= est["high"]
                true_text = f"  true {truth * 100:+.1f} pp ({'inside' if inside else 'OUTSIDE'})"
            out.append(f"    {label:<30} {est['lift'] * 100:+6.1f} pp [{est['low'] * 100:+.1f}, {est['high'] * 100:+.1f}]"
                       f"  {est['treated_conversions']:,}/{est['treated']:,} vs {est['control_conversions']:,}/"
                       f"{est['control']:,}  {est['verdict']}{true_text}")
    attribution = e.get("attribution") or {}
    if attribution:
        out.append("  attribution        conversions credited per channel, by model")
        for model, channels in attribution.items():
            out.append(f"    {model:<12} " + ", ".join(f"{ch} {v['conversions']:,.1f}" for ch, v in channels.items()))
    for name, segments in (e.get("bandits") or {}).items():
        out.append(f"  bandit {name:<11} " + "; ".join(
            f"{seg}: " + ", ".join(f"{arm} {v['rate']:.1%} of {v['rewards']:,}" for arm, v in arms.items())
            for seg, arms in segments.items()))
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
    return f"ROC AUC {auc}, log loss {loss}{cal}, labels {m['labels']:,} ({m['positives']:,} positive){drift}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"
