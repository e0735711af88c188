"""``touchline journeys preview``: what a contact with these events would get from a journey, and when.

A dry run: the events are replayed on event time through the real engine (policy,
caps, quiet hours, models) with only this journey, in memory, then time runs on for
``days`` so every wait plays out. Nothing is sent anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from touchline.decisions.batch_run import DecisionCore
from touchline.decisions.journey_runtime import JourneyRunner
from touchline.decisions.journeys import Journey
from touchline.decisions.profile import DAY_MS, HOUR_MS
from touchline.batch_service import Engine
from touchline.decisions.batches import RawBatch
from touchline.journey_files import load_journeys
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.settings import ConfigError, Settings
from touchline.state.memory import MemoryStore


def preview(settings: Settings, journey_path: Path, events_path: Path, days: float) -> dict[str, Any]:
    """The timeline (journey steps and sends, in time order) and what could not be read."""
    journey = _one_journey(journey_path, settings)
    if not events_path.is_file():
        raise ConfigError(f"--contact-events {events_path}: not a readable file")
    lines = [ln for ln in events_path.read_bytes().splitlines() if ln.strip()]
    trace: list[dict[str, Any]] = []
    engine = _preview_engine(settings, journey, trace)
    result = engine.process(RawBatch(lines, events_path.name, 1, final=True))
    decisions = list(result.decisions) + _play_out(engine, days)
    timeline = [{"time": entry["time"], "contact": entry["contact"], "step": entry["step"], "what": entry["what"]}
                for entry in trace]
    timeline += [_send_entry(d, journey.journey) for d in decisions]
    timeline.sort(key=lambda e: (e["time"], 0 if "SEND" in e["what"] else 1))
    return {"journey": journey.journey, "events": len(lines), "dead_letters": result.dead_letters,
            "timeline": timeline, "days_after_last_event": days}


def _one_journey(journey_path: Path, settings: Settings) -> Journey:
    """The journey in the file; its problems, or a file with several journeys, are a ConfigError."""
    loaded, problems = load_journeys([journey_path], settings.vocabulary())
    if problems:
        raise ConfigError("\n".join(problems))
    if len(loaded) != 1:
        raise ConfigError(f"{journey_path}: preview takes one journey file")
    return loaded[0][1]


def _preview_engine(settings: Settings, journey: Journey, trace: list[dict[str, Any]]) -> Engine:
    """The real engine with only this journey, fresh in-memory state, and the journey's steps traced into ``trace``."""
    runner = JourneyRunner([journey], settings.policy.quiet_hours.default_timezone, settings.policy.consent_default,
                           trace.append, settings.custom_attributes())
    core = DecisionCore(
        policy=settings.policy, models={"lead": settings.models.lead, "churn": settings.models.churn},
        labels=settings.labels.rules(),
        retention_days=settings.state.retention_days,
        anonymous_retention_days=settings.state.anonymous_retention_days, journeys=runner, experiments=settings.experiments,
        attributes=settings.custom_attributes(), send_time=settings.send_time_learner(),
        no_action_share=0.0)  # the journey's own trace says what became of each held-back step
    return Engine(MemoryStore(), core, EngineMetrics(CollectorRegistry()))


def _play_out(engine: Engine, days: float) -> list[dict[str, Any]]:
    """Advance event time hour by hour for ``days`` after the last event, so every wait fires; the
    decisions made meanwhile. Nothing to play out when no event was valid."""
    decisions: list[dict[str, Any]] = []
    if engine.totals.last_event_ms is None:
        return decisions
    end = engine.totals.last_event_ms + int(days * DAY_MS)
    t = engine.clock.now()
    while t < end:
        t = min(end, t + HOUR_MS)
        decisions += engine.process(RawBatch([], "preview", 0, advance_to_ms=t)).decisions
    return decisions


def _send_entry(d: dict[str, Any], journey: str) -> dict[str, Any]:
    """A decision as a timeline entry: the journey's own sends under their step, other sends that
    share its caps marked as other."""
    what = f"SEND {d['channel']} {d['template']}" + (f" offer {d['offer']}" if d.get("offer") else "") + (
        f" to rep {d['assignee']}" if d.get("assignee") else "")
    ours = d.get("journey") == journey
    return {"time": d["decision_time"][:19] + "Z", "contact": d["contact_id"],
            "step": d["step"] if ours else f"({d['action']})",
            "what": what if ours else f"other: {what}", "decision_id": d["decision_id"]}


def format_preview(p: dict[str, Any]) -> str:
    out = [f"journey {p['journey']}: {p['events']} event(s) replayed, then {p['days_after_last_event']:g} days "
           "of waiting played out (dry run: nothing sent)"]
    for bad in p["dead_letters"]:
        out.append(f"  skipped invalid event at {bad['source']}: {bad['reason']} ({bad.get('detail', '')})")
    if not p["timeline"]:
        out.append("  no contact entered the journey")
    timeline = p["timeline"]
    i = 0
    while i < len(timeline):  # hourly deferrals of one step fold into one line
        e, j = timeline[i], i + 1
        while j < len(timeline) and (timeline[j]["contact"], timeline[j]["step"], timeline[j]["what"]) == (
                e["contact"], e["step"], e["what"]) and "deferred" in e["what"]:
            j += 1
        repeat = f" (x{j - i}, last at {timeline[j - 1]['time']})" if j - i > 1 else ""
        out.append(f"  {e['time']}  {e['contact']:<12} {e['step']:<22} {e['what']}{repeat}")
        i = j
    return "\n".join(out)


def dumps(p: dict[str, Any]) -> str:
    return orjson.dumps(p, option=orjson.OPT_INDENT_2).decode()
