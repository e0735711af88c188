"""``touchline report``: a run's decisions, experiments and events as one HTML page with plots.

A person judging a run wants the funnel, what was sent, what it caused and how credit
would be split, side by side, without a notebook. The page is self-contained (inline CSS
and SVG, no network) so it can be mailed or archived as a single file.

Every input is streamed and aggregated while it is read (a run's files can be 100 MB):
only counters, fixed-bin histograms and the funnel's per-stage sets of people are kept.
A line that cannot be read is skipped and counted, never fatal; a missing or empty input
leaves its sections with a message saying why and what to do.

Plots are drawn on a bare matplotlib ``Figure`` (no pyplot, no GUI backend, no global
state) and saved as SVG with text kept as text, so user-supplied names stay escaped,
searchable and cheap.

>>> _segment_label(("all", "all")), _segment_label(("lead_band", "high"))
('everyone', 'lead_band = high')
>>> _pp(0.0123), _ci(-0.001, 0.0456)
('+1.23', '[-0.10, +4.56]')
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

import orjson
from jinja2 import Environment

from touchline.logs import console
from touchline.decisions.errors import TouchlineError
from touchline.decisions.attribution import MODELS
from touchline.decisions.events import Rejected, parse_event, parse_ts
from touchline.decisions.sample_ratio import MISMATCH_MEANS, describe, sample_ratio
from touchline.decisions.lift import ALL, LiftEstimate, LiftTable
from touchline.report_run import RunSummary, journeys_section, quality_section, read_summary
from touchline.report_parts import (
    TABLE_ROWS, TOP_SERIES, _TOO_FEW_COLOUR, Plot, Section, Table, _ci, _conf, _counts, _draw, _iso, _n, _pp, _rate,
    _slug, _top, _tx, _w,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Funnel stages, in order; an event of one of these types puts its person in the stage.
FUNNEL = ("page_view", "product_view", "add_to_cart", "checkout_start", "purchase")
DAY_MS = 86_400_000
#: Histogram bins of a score's p over [0, 1]: fixed, so scores are binned while streaming.
SCORE_BINS = 40
#: Unreadable line numbers listed per file (all are counted).
LISTED_LINES = 10
#: Daily series are zero-filled across the whole range only up to this many days.
MAX_FILLED_DAYS = 1000
EXIT_USAGE, EXIT_RUNTIME = 2, 1

Truth = Mapping[tuple[str, str], float]
K = TypeVar("K")

#: Timestamps outside 1970..2199 are not dates a run can have (and would break date axes).
MAX_TS_MS = 7_258_118_399_999

_VERDICT_COLOURS = {"lift": "#1a7f37", "harm": "#cf222e", "no detectable difference": "#0969da"}
_TRUTH_COLOUR = "#bf8700"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class BadRecord(TouchlineError, ValueError):
    """A JSON line whose fields are missing or of the wrong type (the reason is the message)."""


# ----------------------------------------------------------------------------- inputs


@dataclass
class Input:
    """One input file and what reading it found: line counts and the unreadable lines."""

    role: str  # decisions | experiments | events
    path: Path | None
    note: str = "not given"  # why there is no path
    found: bool = False
    error: str = ""  # the OS error that stopped reading, if any
    lines: int = 0  # non-blank lines
    bad: int = 0
    bad_lines: list[int] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def skip(self, lineno: int, reason: str) -> None:
        """Count an unreadable line; the first few numbers are kept to point at them."""
        self.bad += 1
        self.reasons[reason] += 1
        if len(self.bad_lines) < LISTED_LINES:
            self.bad_lines.append(lineno)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else f"{self.role}.jsonl"

    def status(self) -> str:
        """One phrase for the header's inputs table."""
        return self.absent() or (f"{self.lines:,} lines" + (f", {self.bad:,} unreadable" if self.bad else ""))

    def absent(self) -> str:
        """Why nothing could be used from this input, or '' if something could.

        >>> Input("events", None, note="no events.jsonl in out").absent()
        'no events file (no events.jsonl in out)'
        """
        if self.path is None:
            return f"no {self.role} file ({self.note})"
        if self.error:
            return f"{self.path} could not be read: {self.error}"
        if not self.found:
            return f"{self.path} not found"
        if not self.lines:
            return f"{self.path} is empty"
        if self.bad == self.lines:
            return f"none of the {self.lines:,} lines of {self.path} could be read"
        return ""

    def unreadable(self) -> str:
        """'3 unreadable lines in decisions.jsonl (line 17, 20, 31): not JSON 2, ...', or ''.

        >>> i = Input("decisions", Path("d.jsonl"))
        >>> i.skip(17, "not JSON"); i.skip(20, "not JSON")
        >>> i.unreadable()
        '2 unreadable lines in d.jsonl (line 17, 20): not JSON 2'
        """
        if not self.bad:
            return ""
        more = ", …" if self.bad > len(self.bad_lines) else ""
        where = ", ".join(str(n) for n in self.bad_lines) + more
        why = ", ".join(f"{r} {n:,}" for r, n in self.reasons.most_common())
        noun = "line" if self.bad == 1 else "lines"
        return f"{self.bad:,} unreadable {noun} in {self.name} (line {where}): {why}"


def _lines(inp: Input) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of an input with their numbers, streamed; nothing if absent."""
    if inp.path is None:
        return
    try:
        f = inp.path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        inp.error = exc.strerror or str(exc)
        return
    inp.found = True
    with f:
        try:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if line:
                    inp.lines += 1
                    yield lineno, line
        except OSError as exc:  # e.g. a directory, or a disk error mid-file
            inp.error = exc.strerror or str(exc)


def _consume(inp: Input, handle: Callable[[dict[str, Any]], None]) -> None:
    """Feed every JSON object line to ``handle``; lines it cannot use are counted, not fatal."""
    for lineno, line in _lines(inp):
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            inp.skip(lineno, "not JSON")
            continue
        if not isinstance(doc, dict):
            inp.skip(lineno, "not a JSON object")
            continue
        try:
            handle(doc)
        except BadRecord as exc:
            inp.skip(lineno, str(exc))


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{key} missing or not a string")
    return value


def _number(doc: Mapping[str, Any], key: str, default: float | None = None, low: float = -1e15,
            high: float = 1e15) -> float:
    """A number in [low, high]: a money value or a weight, not an overflow waiting to be plotted."""
    value = doc.get(key, default)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRecord(f"{key} missing or not a number")
    if not low <= value <= high:
        raise BadRecord(f"{key} out of range")
    return float(value)


def _time(doc: Mapping[str, Any], ms_key: str, iso_key: str) -> int | None:
    """Epoch ms from ``ms_key``, else parsed from the RFC 3339 ``iso_key``, else None."""
    ms = doc.get(ms_key)
    if not isinstance(ms, int) or isinstance(ms, bool):
        iso = doc.get(iso_key)
        if iso is None:
            return None
        try:
            ms = parse_ts(iso)
        except (ValueError, TypeError):
            raise BadRecord(f"{iso_key} is not a timestamp") from None
    if not 0 <= ms <= MAX_TS_MS:
        raise BadRecord(f"{ms_key} out of range")
    return ms


def _bump(totals: dict[K, float], key: K, value: float) -> None:
    totals[key] = totals.get(key, 0.0) + value


class _Span:
    """The earliest and latest timestamp seen."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None

    def see(self, ts: int | None) -> None:
        if ts is None:
            return
        self.first = ts if self.first is None else min(self.first, ts)
        self.last = ts if self.last is None else max(self.last, ts)


# ------------------------------------------------------------------------ aggregates


@dataclass
class DecisionStats:
    """Decisions per channel and day, per action, and binned score distributions."""

    total: int = 0
    contacts: set[str] = field(default_factory=set)
    channels: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    journeys: Counter[str] = field(default_factory=Counter)  # decisions of a journey's steps, per journey
    daily: Counter[tuple[int, str]] = field(default_factory=Counter)  # (day, channel)
    score_bins: dict[str, list[int]] = field(default_factory=dict)
    score_sums: dict[str, float] = field(default_factory=dict)
    span: _Span = field(default_factory=_Span)

    def add(self, doc: Mapping[str, Any]) -> None:
        """Count one decision record (all fields checked before anything is counted)."""
        channel, action, contact = _str(doc, "channel"), _str(doc, "action"), doc.get("contact_id")
        ts = _time(doc, "event_time_ms", "event_time")
        if ts is None:
            raise BadRecord("event_time missing")
        scores = _score_ps(doc.get("scores"))
        self.total += 1
        if isinstance(contact, str):
            self.contacts.add(contact)
        self.channels[channel] += 1
        self.actions[action] += 1
        journey = doc.get("journey")
        if isinstance(journey, str) and journey:
            self.journeys[journey] += 1
        self.daily[(ts // DAY_MS, channel)] += 1
        self.span.see(ts)
        for name, p in scores:
            bins = self.score_bins.setdefault(name, [0] * SCORE_BINS)
            bins[min(int(p * SCORE_BINS), SCORE_BINS - 1)] += 1
            _bump(self.score_sums, name, p)


def _score_ps(scores: Any) -> list[tuple[str, float]]:
    """(name, p) of the decision's scores; entries without a numeric p are left out.

    >>> _score_ps({"lead": {"p": 0.4}, "churn": {"p": 1.7}, "x": {"p": "?"}, "y": 3})
    [('lead', 0.4), ('churn', 1.0)]
    """
    if not isinstance(scores, dict):
        return []
    out = []
    for name, score in scores.items():
        p = score.get("p") if isinstance(score, dict) else None
        if isinstance(p, (int, float)) and not isinstance(p, bool) and not math.isnan(p):
            out.append((name, min(1.0, max(0.0, float(p)))))
    return out


@dataclass
class Credit:
    """Credit a model gives to channels and actions: conversions (sum of weights) and value."""

    conversions: int = 0  # conversions with at least one touch
    channels: dict[str, float] = field(default_factory=dict)
    channel_value: dict[str, float] = field(default_factory=dict)
    actions: dict[str, float] = field(default_factory=dict)
    action_value: dict[str, float] = field(default_factory=dict)

    def add(self, touches: list[tuple[str, str, float]], value: float) -> None:
        if touches:
            self.conversions += 1
        for channel, action, weight in touches:
            _bump(self.channels, channel, weight)
            _bump(self.channel_value, channel, weight * value)
            _bump(self.actions, action, weight)
            _bump(self.action_value, action, weight * value)


@dataclass
class ExperimentStats:
    """Exposures, outcomes (into a LiftTable), and conversions with their credits per model."""

    lift: LiftTable = field(default_factory=LiftTable)
    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (experiment, arm)
    #: exposed when a journey reached the step a timing split changes (before any send)
    at_step: Counter[tuple[str, str]] = field(default_factory=Counter)
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    conversions: int = 0
    value: float = 0.0
    credit: dict[str, Credit] = field(default_factory=lambda: {m: Credit() for m in MODELS})
    daily: dict[tuple[int, str], float] = field(default_factory=dict)  # (day, channel), last-touch weight
    other_kinds: Counter[str] = field(default_factory=Counter)
    span: _Span = field(default_factory=_Span)

    def add(self, doc: Mapping[str, Any]) -> None:
        """Count one experiments.jsonl record by its kind."""
        kind = doc.get("kind")
        if kind == "exposure":
            self._exposure(doc)
        elif kind == "outcome":
            self._outcome(doc)
        elif kind == "conversion":
            self._conversion(doc)
        elif isinstance(kind, str):
            self.other_kinds[kind[:40]] += 1
        else:
            raise BadRecord("kind missing")

    def _exposure(self, doc: Mapping[str, Any]) -> None:
        key = (_str(doc, "experiment"), _str(doc, "arm"))
        ts = _time(doc, "exposed_at_ms", "exposed_at")
        self.exposures[key] += 1
        self.sent[key] += doc.get("sent") is True
        self.at_step[key] += doc.get("sent") is None and "step" in doc
        self.span.see(ts)

    def _outcome(self, doc: Mapping[str, Any]) -> None:
        experiment, arm, baseline = _str(doc, "experiment"), _str(doc, "arm"), _str(doc, "baseline")
        segment = doc.get("segment") or {}
        if not isinstance(segment, dict):
            raise BadRecord("segment is not an object")
        if not isinstance(doc.get("converted"), bool):
            raise BadRecord("converted missing or not true/false")
        self.lift.add(experiment, arm, baseline, {k: str(v) for k, v in segment.items()}, doc["converted"])
        self.outcomes[(experiment, arm)] += 1

    def _conversion(self, doc: Mapping[str, Any]) -> None:
        ts = _time(doc, "ts_ms", "ts")
        value = _number(doc, "value", 0.0)
        credits = doc.get("credits") or {}
        if not isinstance(credits, dict):
            raise BadRecord("credits is not an object")
        touches = {m: _touches(credits.get(m), m) for m in MODELS}
        self.conversions += 1
        self.value += value
        self.span.see(ts)
        for model, ts_touches in touches.items():
            self.credit[model].add(ts_touches, value)
        if ts is not None:
            for channel, _action, weight in touches["last_touch"]:
                _bump(self.daily, (ts // DAY_MS, channel), weight)


def _touches(items: Any, model: str) -> list[tuple[str, str, float]]:
    """(channel, action, weight) of one model's credit list."""
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise BadRecord(f"credits.{model} is not a list of objects")
    return [(_str(t, "channel"), _str(t, "action"), _number(t, "weight", low=0.0, high=1.0 + 1e-9)) for t in items]


@dataclass
class Funnel:
    """People per funnel stage; anonymous ids are merged into the contact they identified as."""

    reached: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in FUNNEL})
    alias: dict[str, str] = field(default_factory=dict)  # anonymous id -> contact id
    events: int = 0
    span: _Span = field(default_factory=_Span)

    def add(self, contact: str | None, anonymous: str | None, type_: str, ts_ms: int) -> None:
        self.events += 1
        self.span.see(ts_ms)
        if contact and anonymous:
            self.alias.setdefault(anonymous, contact)
        stage = self.reached.get(type_)
        if stage is not None:
            stage.add(f"c:{contact}" if contact else f"a:{anonymous}")

    def people(self) -> list[tuple[str, int]]:
        """Distinct people per stage, resolved through the aliases seen anywhere in the file.

        >>> f = Funnel()
        >>> f.add(None, "a1", "page_view", 0); f.add("c1", "a1", "purchase", 1); f.add(None, "a2", "page_view", 2)
        >>> f.people()
        [('page_view', 2), ('product_view', 0), ('add_to_cart', 0), ('checkout_start', 0), ('purchase', 1)]
        """
        def person(key: str) -> str:
            contact = self.alias.get(key[2:]) if key.startswith("a:") else None
            return f"c:{contact}" if contact else key

        return [(stage, len({person(k) for k in ids})) for stage, ids in self.reached.items()]


@dataclass
class ReportData:
    """Everything the report shows, aggregated from the inputs in one pass each."""

    decisions_input: Input
    experiments_input: Input
    events_input: Input
    decisions: DecisionStats
    experiments: ExperimentStats
    funnel: Funnel
    summary: RunSummary = field(default_factory=lambda: RunSummary(None))

    @property
    def inputs(self) -> list[Input]:
        return [self.decisions_input, self.experiments_input, self.events_input]

    def span(self) -> tuple[int | None, int | None]:
        spans = [self.decisions.span, self.experiments.span, self.funnel.span]
        firsts = [s.first for s in spans if s.first is not None]
        lasts = [s.last for s in spans if s.last is not None]
        return (min(firsts) if firsts else None), (max(lasts) if lasts else None)


def _read_events(inp: Input, funnel: Funnel) -> None:
    for lineno, line in _lines(inp):
        ev = parse_event(line)
        if isinstance(ev, Rejected):
            inp.skip(lineno, ev.reason)
        elif not 0 <= ev.ts_ms <= MAX_TS_MS:
            inp.skip(lineno, "ts out of range")
        else:
            funnel.add(ev.contact_id, ev.anonymous_id, ev.type, ev.ts_ms)


def collect(decisions: Path | None, experiments: Path | None, events: Path | None, *,
            notes: Mapping[str, str] | None = None, summary: Path | None = None) -> ReportData:
    """Read the inputs (each JSONL streamed once) and the run's summary. ``notes`` say why a role has no path."""
    notes = notes or {}
    ins = {role: Input(role, path, notes.get(role, "not given"))
           for role, path in (("decisions", decisions), ("experiments", experiments), ("events", events))}
    data = ReportData(ins["decisions"], ins["experiments"], ins["events"], DecisionStats(), ExperimentStats(),
                      Funnel(), read_summary(summary, notes.get("summary", "not given")))
    _consume(data.decisions_input, data.decisions.add)
    _consume(data.experiments_input, data.experiments.add)
    _read_events(data.events_input, data.funnel)
    return data


# -------------------------------------------------------------------------- formatting


def _day(day: int) -> datetime:
    """Midnight UTC of a day number (days since the epoch)."""
    return datetime.fromtimestamp(day * DAY_MS / 1000, tz=timezone.utc)


def _segment_label(seg: tuple[str, str]) -> str:
    return "everyone" if seg == ALL else f"{seg[0]} = {seg[1]}"


# ---------------------------------------------------------------------------- sections


def _absent_message(inp: Input, what: str) -> str:
    return f"{inp.absent()[:1].upper()}{inp.absent()[1:]}. {what}"


def funnel_section(data: ReportData) -> Section:
    sec = Section("funnel", "Funnel", "Distinct people who reached each stage at least once in the events "
                  "(anonymous visitors merged into the contact they later identified as); people can skip "
                  "stages, so a step's conversion is a ratio of counts, not a tracked path.")
    if data.events_input.absent():
        sec.empty = _absent_message(data.events_input, "Pass --events FILE with the events the run consumed "
                                    "(e.g. written by `touchline simulate --out FILE` and replayed with "
                                    "`touchline run --input FILE`); simulator runs write events.jsonl in the "
                                    "output directory, where the report finds it.")
        return sec
    people = data.funnel.people()
    first = people[0][1]
    table = Table("funnel-table", "People per stage", ["stage", "people", "step conversion", "of first stage"],
                  numeric=frozenset({1, 2, 3}))
    for i, (stage, n) in enumerate(people):
        prev = people[i - 1][1] if i else None
        step = "-" if prev is None else (_rate(n / prev) if prev else "n/a")
        table.rows.append([stage, _n(n), step, _rate(n / first) if first else "n/a"])
    sec.tables.append(table)
    sec.facts.append(f"{_n(data.funnel.events)} events read; {_n(len(data.funnel.alias))} anonymous id(s) "
                     "linked to a contact.")

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        bars = ax.bar([s for s, _ in people], [n for _, n in people], color="#0969da")
        ax.bar_label(bars, labels=[_n(n) for _, n in people], padding=2)
        ax.set_ylabel("distinct people")
        ax.margins(y=0.12)

    sec.plots.append(_draw("funnel", "Funnel: distinct people per stage", (8, 3.2), draw))
    return sec


def _daily_series(daily: Mapping[tuple[int, str], float], names: list[str], days: list[int]) -> dict[str, list[float]]:
    """Per name (plus 'other' for the rest), the value of each day in ``days`` (0 when absent)."""
    keep = set(names)
    out: dict[str, list[float]] = {}
    index = {d: i for i, d in enumerate(days)}
    for (day, name), v in daily.items():
        series = out.setdefault(name if name in keep else "other", [0.0] * len(days))
        series[index[day]] += v
    return {name: out[name] for name in [*names, "other"] if name in out}


def _days(*dailies: Mapping[tuple[int, str], float]) -> list[int]:
    seen = sorted({day for d in dailies for day, _ in d})
    if seen and seen[-1] - seen[0] < MAX_FILLED_DAYS:
        return list(range(seen[0], seen[-1] + 1))
    return seen


def channels_section(data: ReportData) -> Section:
    """Decisions and last-touch conversions per channel: totals, decisions per action, and per day."""
    dec, exp = data.decisions, data.experiments
    sec = Section("channels", "Decisions and conversions per channel over time",
                  "What the engine sent per channel and day (UTC, event time), and the conversions last-touch "
                  "attribution credits to each channel that day; a conversion after a message is not "
                  "necessarily caused by it (see Lift).")
    if not dec.total and not exp.credit["last_touch"].conversions:
        sec.empty = _no_channels_message(data)
        return sec
    credited = exp.credit["last_touch"].channels
    totals: dict[str, float] = dict(dec.channels)
    for name, weight in credited.items():
        _bump(totals, name, weight)
    sec.tables.append(_channels_table(dec.channels, credited, totals))
    if dec.actions:
        sec.tables.append(_actions_table(dec.actions))
    if data.decisions_input.absent():
        sec.facts.append(f"No decisions: {data.decisions_input.absent()}.")
    days = _days(dec.daily, exp.daily)
    if days:  # (conversions without a timestamp count in the tables, not on a time axis)
        sec.plots.append(_channels_plot(dec, exp, _top(totals), days))
    return sec


def _no_channels_message(data: ReportData) -> str:
    """Why the channels section is empty, naming the inputs that are missing."""
    parts = [m for m in (data.decisions_input.absent(), data.experiments_input.absent()) if m]
    return ("No decisions and no credited conversions to plot" + (f" ({'; '.join(parts)})" if parts else "")
            + ". Decisions come from decisions.jsonl, conversions from experiments.jsonl.")


def _channels_table(decided: Counter[str], credited: Mapping[str, float], totals: Mapping[str, float]) -> Table:
    """Decisions and last-touch conversions per channel, the busiest first; the rest summed up in one row."""
    table = Table("channels-table", "Totals per channel", ["channel", "decisions", "last-touch conversions"],
                  numeric=frozenset({1, 2}))
    names = _top(totals, TABLE_ROWS)
    conversions = _counts([credited.get(name, 0.0) for name in names])  # last touch: whole conversions
    table.rows = [[name, _n(decided[name]), conv] for name, conv in zip(names, conversions)]
    if len(totals) > TABLE_ROWS:
        table.rows.append([f"… {len(totals) - TABLE_ROWS} more channels", "", ""])
    return table


def _actions_table(actions: Counter[str]) -> Table:
    """Decisions per action, the most frequent first; the rest summed up in one row."""
    table = Table("actions-table", "Decisions per action", ["action", "decisions"], numeric=frozenset({1}))
    table.rows = [[name, _n(n)] for name, n in actions.most_common(TABLE_ROWS)]
    if len(actions) > TABLE_ROWS:
        table.rows.append([f"… {len(actions) - TABLE_ROWS} more actions", ""])
    return table


def _channels_plot(dec: DecisionStats, exp: ExperimentStats, names: list[str], days: list[int]) -> Plot:
    """Two daily line plots sharing the time axis and colours: decisions, and last-touch conversions, per channel."""
    decided = _daily_series(dec.daily, names, days)
    converted = _daily_series(exp.daily, names, days)

    def draw(fig: Figure) -> None:
        import matplotlib.dates as mdates

        top, bottom = fig.subplots(2, 1, sharex=True)
        x = [_day(d) for d in days]
        colours = {name: f"C{i % 10}" for i, name in enumerate([*names, "other"])}
        for ax, series, ylabel in ((top, decided, "decisions / day"), (bottom, converted, "conversions / day")):
            for name, ys in series.items():
                ax.plot(x, ys, marker="o", markersize=3, label=_tx(name), color=colours[name])
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            if not series:
                ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", color=_TOO_FEW_COLOUR)
        top.set_title("decisions per channel", loc="left")
        bottom.set_title("conversions credited by last touch, per channel", loc="left")
        handles = {h.get_label(): h for ax in (top, bottom) for h in ax.get_lines()}
        if handles:
            fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper")
        half = timedelta(hours=12)  # explicit limits: a single day would otherwise span years of ticks
        bottom.set_xlim(x[0] - half, x[-1] + half)
        locator = mdates.DayLocator() if days[-1] - days[0] <= 14 else mdates.AutoDateLocator(minticks=3, maxticks=10)
        bottom.xaxis.set_major_locator(locator)
        bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))

    return _draw("channels", "Decisions and last-touch conversions per channel and day", (9, 5), draw)


def _truth_for(truth: Truth | None, seg: tuple[str, str]) -> float | None:
    return None if truth is None else truth.get(seg)


def _verdict(e: LiftEstimate) -> str:
    """The estimate's verdict, without repeating the counts the table already shows."""
    return e.verdict if e.enough else e.verdict.split(" (")[0]


def _lift_table(exp: str, ests: list[LiftEstimate], truth: Truth | None, arms: bool) -> Table:
    """One experiment's estimates, a row per segment (and arm); rows with too few contacts greyed."""
    cols = ["segment", *(["arm"] if arms else []), "treated conv / n", "rate", "control conv / n", "rate",
            "lift pp", "interval pp", *(["true lift pp"] if truth is not None else []), "verdict"]
    first_num = 2 if arms else 1
    table = Table(f"lift-{_slug(exp)}", f"{exp}: each arm against {ests[0].baseline}, per segment", cols,
                  numeric=frozenset(range(first_num, len(cols) - 1)), wrap=frozenset({len(cols) - 1}))
    table.rows = [_lift_row(e, truth, arms) for e in ests]
    table.muted = frozenset(i for i, e in enumerate(ests) if not e.enough)  # too few to conclude: greyed
    return table


def _lift_row(e: LiftEstimate, truth: Truth | None, arms: bool) -> list[str]:
    """One estimate's cells: segment (and arm), both arms' counts and rates, the lift, the truth if known, the verdict."""
    row = [_segment_label(e.segment), *([e.arm] if arms else []),
           *_arm_cells(e.treated_conversions, e.treated, e.rate),
           *_arm_cells(e.control_conversions, e.control, e.control_rate), *_lift_cells(e)]
    if truth is not None:
        t = _truth_for(truth, e.segment)
        row.append("-" if t is None else _pp(t))
    row.append(_verdict(e))
    return row


def _arm_cells(conversions: int, contacts: int, rate: float) -> list[str]:
    """An arm's "conversions / contacts" and its rate ("-" for an arm with nobody in it).

    >>> _arm_cells(3, 40, 0.075), _arm_cells(0, 0, 0.0)
    (['3 / 40', '7.5%'], ['0 / 0', '-'])
    """
    return [f"{_n(conversions)} / {_n(contacts)}", _rate(rate) if contacts else "-"]


def _lift_cells(e: LiftEstimate) -> list[str]:
    """The lift and its interval, in points; "-" when an arm has nobody, so there is no estimate."""
    if not (e.treated and e.control):
        return ["-", "-"]
    return [_pp(e.lift), _ci(e.low, e.high)]


#: A forest plot's axis reaches this share of its span past the outermost interval shown in
#: full (and more on the right, where the "too few" notes go).
_AXIS_PAD, _NOTE_ROOM = 0.08, 0.22


def _lift_axis(ests: list[LiftEstimate], truths: list[float]) -> tuple[float, float] | None:
    """The forest plot's x range in points: the intervals of the segments with enough contacts,
    the true lifts and zero. A segment below the minimum (2 against 1 contacts has an interval
    of nearly ±100 points) does not set it: its interval is clipped at the edge. None when no
    segment has enough contacts (then every interval is shown in full).

    >>> from touchline.decisions.lift import estimate
    >>> big = estimate("x", "t", "c", ("all", "all"), (1000, 120), (1000, 100))
    >>> tiny = estimate("x", "t", "c", ("lead_band", "high"), (2, 1), (1, 0))
    >>> low, high = _lift_axis([big, tiny], [])
    >>> -2 < low < 0 < high < 7, tiny.high * 100 > 50
    (True, True)
    >>> _lift_axis([tiny], []) is None
    True
    """
    ends = _concluded_ends(ests)
    if not ends:
        return None
    points = [0.0, *[t * 100 for t in truths], *ends]
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    room = _AXIS_PAD if all(e.enough for e in ests) else _NOTE_ROOM
    return low - _AXIS_PAD * span, high + room * span


def _concluded_ends(ests: list[LiftEstimate]) -> list[float]:
    """Both ends, in points, of the intervals of the segments with enough contacts in each arm."""
    return [x * 100 for e in ests if e.enough and e.treated and e.control for x in (e.low, e.high)]


def _clip(value: float, axis: tuple[float, float] | None) -> float:
    return value if axis is None else min(max(value, axis[0]), axis[1])


def _draw_estimate(ax: Axes, y: int, e: LiftEstimate, axis: tuple[float, float] | None) -> bool:
    """One segment's point and interval, clipped to ``axis`` with an arrow where it reaches past
    it; returns whether anything was clipped."""
    if not (e.treated and e.control):  # an arm with nobody: no estimate, do not stretch the axis
        ax.annotate("no contacts in an arm", (0, y), xytext=(6, 0), textcoords="offset points",
                    va="center", color=_TOO_FEW_COLOUR, fontsize=8)
        return False
    colour = _VERDICT_COLOURS.get(e.verdict, _TOO_FEW_COLOUR) if e.enough else _TOO_FEW_COLOUR
    low, mid, high = (_clip(x * 100, axis) for x in (e.low, e.lift, e.high))
    ax.errorbar([mid], [y], xerr=[[mid - low], [high - mid]], fmt="o", color=colour, capsize=3, markersize=5)
    cut = [(x, marker) for x, marker, past in ((low, "<", e.low * 100 < low), (high, ">", e.high * 100 > high)) if past]
    for x, marker in cut:
        ax.plot([x], [y], marker=marker, color=colour, markersize=7, linestyle="none", clip_on=False)
    if not e.enough:
        ax.annotate("too few", (high, y), xytext=(8 if cut else 6, 0), textcoords="offset points",
                    va="center", color=_TOO_FEW_COLOUR, fontsize=8, annotation_clip=False)
    return bool(cut)


def _forest(exp: str, ests: list[LiftEstimate], truth: Truth | None, arms: bool, confidence: float) -> Plot:
    """Lift per segment with intervals; the axis fits the segments with enough contacts (see :func:`_lift_axis`)."""
    labels = [_tx(_segment_label(e.segment) + (f" · {e.arm}" if arms else ""), 48) for e in ests]
    marked = [(y, t) for y, e in enumerate(ests) if (t := _truth_for(truth, e.segment)) is not None]
    axis = _lift_axis(ests, [t for _, t in marked])
    clipped: list[int] = []

    def draw(fig: Figure) -> None:
        ax: Axes = fig.subplots()
        ax.axvline(0, color="#57606a", linewidth=1)
        clipped.extend(y for y, e in enumerate(ests) if _draw_estimate(ax, y, e, axis))
        if marked:
            ax.scatter([t * 100 for _, t in marked], [y for y, _ in marked], marker="D", s=30,
                       facecolors="none", edgecolors=_TRUTH_COLOUR, linewidths=1.5, zorder=3, label="true lift")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(range(len(ests)), labels)
        ax.set_ylim(len(ests) - 0.5, -0.5)
        ax.set_xlabel(f"lift, percentage points (treated − control), {_conf(confidence)} interval")
        if axis is None:
            ax.margins(x=0.15)
        else:
            ax.set_xlim(*axis)

    label = f"Lift per segment with {_conf(confidence)} intervals: {exp}"
    plot = _draw(f"lift-{_slug(exp)}", label, (8.5, 0.9 + 0.32 * len(ests)), draw)
    if clipped:
        plot.caption = (f"{label}. The axis fits the segments with enough contacts; the intervals of {len(clipped)} "
                        "segment(s) with too few reach past it and are clipped at its edge (arrow); the table "
                        "below gives them in full.")
    return plot


def lift_section(data: ReportData, confidence: float, min_per_arm: int, truth: Truth | None,
                 truth_for: str | None) -> Section:
    """Per experiment: its arms' counts, then a forest plot and a table of the lift per segment."""
    exp = data.experiments
    sec = Section("lift", "Lift per segment", f"The causal number: conversion rate of the exposed contacts "
                  f"of an arm minus the control arm's within each exposure's window (intent-to-treat, segments "
                  f"fixed at exposure), with a {_conf(confidence)} Newcombe interval; below {min_per_arm:,} "
                  "contacts per arm a segment is flagged too few to conclude.")
    names = sorted({e for e, _ in exp.exposures} | set(exp.lift.experiments()))
    if not names:
        why = data.experiments_input.absent() or f"{data.experiments_input.path} has no exposure or outcome records"
        sec.empty = (f"{why[:1].upper()}{why[1:]}. The engine writes experiments.jsonl beside decisions.jsonl: "
                     "exposures when contacts enter an experiment, outcomes when their windows close.")
        return sec
    for name in names:
        sec.facts.append(_arm_counts(exp, name))
        sec.facts += _sample_ratio_facts(exp, name, data.summary.assigned.get(name))
        ests = exp.lift.estimates(name, confidence, min_per_arm)
        if not ests:
            sec.facts.append(f"{name}: no closed windows in both arms yet, so no lift to estimate.")
            continue
        t = truth if truth_for is None or truth_for == name else None
        multi = len({e.arm for e in ests}) > 1
        sec.plots.append(_forest(name, ests, t, multi, confidence))
        sec.tables.append(_lift_table(name, ests, t, multi))
    return sec


def _sample_ratio_facts(exp: ExperimentStats, name: str, assigned: Mapping[str, float] | None) -> list[str]:
    """The windows closed per arm against the shares assigned (from the run's summary), with a
    warning on a mismatch; nothing without the shares or with too few contacts to test."""
    found = sample_ratio(name, {arm: exp.outcomes[(name, arm)] for arm in assigned}, assigned) if assigned else None
    if found is None:
        return []
    text = f"{name}: sample ratio {describe(found.observed, found.expected_share, found.p_value, 'windows closed')}"
    if found.mismatch:
        text += f" - SAMPLE RATIO MISMATCH: {MISMATCH_MEANS}"
    return [text]


def _arm_counts(exp: ExperimentStats, name: str) -> str:
    """One experiment's arms: contacts exposed (and sent to, or reached the step a timing split
    changes), and windows closed."""
    arms = sorted({a for e, a in exp.exposures if e == name} | {a for e, a in exp.outcomes if e == name})
    return f"{name}: " + "; ".join(
        f"{arm} {_n(exp.exposures[(name, arm)])} exposed ({_how_exposed(exp, (name, arm))}), "
        f"{_n(exp.outcomes[(name, arm)])} windows closed" for arm in arms)


def _how_exposed(exp: ExperimentStats, key: tuple[str, str]) -> str:
    """How many of an arm's exposures were sends, and how many came at a timed step."""
    sent = f"{_n(exp.sent[key])} sent"
    if not exp.at_step[key]:
        return sent
    return f"{_n(exp.at_step[key])} at the timed step" + (f", {sent}" if exp.sent[key] else "")


def scores_section(data: ReportData) -> Section:
    dec = data.decisions
    sec = Section("scores", "Score distributions", "How the model scores (p) attached to the decisions are "
                  "spread; it describes what the models output for the contacts that got a message, not how "
                  "accurate they are.")
    if not dec.score_bins:
        sec.empty = (_absent_message(data.decisions_input, "The scores come from decisions.jsonl.")
                     if data.decisions_input.absent() else "No decision carries a score with a numeric p.")
        return sec
    names = sorted(dec.score_bins)
    table = Table("scores-table", "Scores per decision", ["score", "decisions scored", "mean p", "p ≥ 0.5"],
                  numeric=frozenset({1, 2, 3}))
    for name in names:
        bins = dec.score_bins[name]
        n = sum(bins)
        table.rows.append([name, _n(n), f"{dec.score_sums[name] / n:.3f}", _rate(sum(bins[SCORE_BINS // 2:]) / n)])
    sec.tables.append(table)
    shown = names[:TOP_SERIES]

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, len(shown), squeeze=False)[0]
        width = 1 / SCORE_BINS
        for ax, name in zip(axes, shown):
            ax.bar([i * width for i in range(SCORE_BINS)], dec.score_bins[name], width=width, align="edge",
                   color="#8250df")
            ax.set_title(_tx(name), loc="left")
            ax.set_xlim(0, 1)
            ax.set_xlabel("p")
        axes[0].set_ylabel("decisions")

    sec.plots.append(_draw("scores", "Distribution of scores of the decisions: " + ", ".join(shown),
                           (max(4.0, 3.6 * len(shown)), 2.8), draw))
    return sec


def attribution_section(data: ReportData) -> Section:
    """The four attribution models side by side: credit per channel and per action, and a bar plot per channel."""
    exp = data.experiments
    sec = Section("attribution", "Attribution comparison", "How four attribution rules split the same "
                  "conversions among the sent decisions before them (credit is a sum of weights, value is weight "
                  "× conversion value); this is correlational bookkeeping, not what the messages caused. Lift is "
                  "the causal number.")
    credited = {m: exp.credit[m] for m in MODELS}
    if not any(c.conversions for c in credited.values()):
        sec.empty = _nothing_attributed(data)
        return sec
    sec.facts.append(f"{_n(exp.conversions)} conversions worth {_w(exp.value)}; credited (at least one touch): "
                     + ", ".join(f"{m} {_n(c.conversions)}" for m, c in credited.items())
                     + ". Each model hands out one conversion's worth of credit per credited conversion.")
    for what, by, by_value in (("channel", "channels", "channel_value"), ("action", "actions", "action_value")):
        sec.tables.append(_credit_table(credited, what, by, by_value))
    sec.plots.append(_attribution_plot(credited))
    return sec


def _nothing_attributed(data: ReportData) -> str:
    """Why no model credited any conversion: no input, no conversions, or none with a touch in its window."""
    exp = data.experiments
    why = data.experiments_input.absent() or (
        f"none of the {exp.conversions:,} conversion records has a touch in its attribution window"
        if exp.conversions else f"{data.experiments_input.path} has no conversion records")
    return f"{why[:1].upper()}{why[1:]}. Nothing to attribute."


def _credit_totals(credited: Mapping[str, Credit], by: str) -> dict[str, float]:
    """Credit per name (``by``: "channels" or "actions") summed over the models: what orders rows and bars."""
    totals: dict[str, float] = {}
    for c in credited.values():
        for name, weight in getattr(c, by).items():
            _bump(totals, name, weight)
    return totals


def _credit_table(credited: Mapping[str, Credit], what: str, by: str, by_value: str) -> Table:
    """Conversions and value credited per channel or action (``what``), one column pair per model."""
    totals = _credit_totals(credited, by)
    table = Table(f"attribution-{what}", f"Credit per {what} (conversions / value)",
                  [what, *[k for _m in MODELS for k in ("conv", "value")]],
                  numeric=frozenset(range(1, 1 + 2 * len(MODELS))), groups=[("", 1), *[(m, 2) for m in MODELS]])
    names = _top(totals, TABLE_ROWS)
    columns: list[list[str]] = []
    for c in credited.values():  # conversions as whole numbers where a model hands out whole ones; value in money
        columns.append(_counts([getattr(c, by).get(name, 0.0) for name in names]))
        columns.append([_w(getattr(c, by_value).get(name, 0.0)) for name in names])
    table.rows = [[name, *[col[i] for col in columns]] for i, name in enumerate(names)]
    if len(totals) > TABLE_ROWS:
        table.rows.append([f"… {len(totals) - TABLE_ROWS} more", *[""] * (2 * len(MODELS))])
    return table


def _attribution_plot(credited: Mapping[str, Credit]) -> Plot:
    """Grouped bars per channel, one bar per model: conversions credited (left) and value credited (right)."""
    channel_totals = _credit_totals(credited, "channels")
    names = _top(channel_totals)

    def folded(counts: Mapping[str, float]) -> list[float]:
        rest = sum(v for k, v in counts.items() if k not in names)
        return [counts.get(n, 0.0) for n in names] + ([rest] if len(channel_totals) > len(names) else [])

    labels = [_tx(n) for n in names] + (["other"] if len(channel_totals) > len(names) else [])

    def draw(fig: Figure) -> None:
        left, right = fig.subplots(1, 2)
        width = 0.8 / len(MODELS)
        for i, (model, c) in enumerate(credited.items()):
            xs = [j + (i - (len(MODELS) - 1) / 2) * width for j in range(len(labels))]
            left.bar(xs, folded(c.channels), width, label=model, color=f"C{i}")
            right.bar(xs, folded(c.channel_value), width, label=model, color=f"C{i}")
        for ax, ylabel in ((left, "conversions credited"), (right, "value credited")):
            ax.set_xticks(range(len(labels)), labels)
            ax.set_ylabel(ylabel)
        fig.legend(*left.get_legend_handles_labels(), loc="outside upper center", ncols=len(MODELS))

    return _draw("attribution", "Attributed conversions and value per channel under four models", (9, 3.4), draw)


# ---------------------------------------------------------------------------- the page


def _header(data: ReportData) -> dict[str, Any]:
    first, last = data.span()
    dec, exp = data.decisions, data.experiments
    counts = [("decisions", f"{_n(dec.total)} to {_n(len(dec.contacts))} contacts"),
              ("events", _n(data.funnel.events)),
              ("exposures", _n(sum(exp.exposures.values()))),
              ("outcomes (closed windows)", _n(sum(exp.outcomes.values()))),
              ("conversions", f"{_n(exp.conversions)} ({_n(exp.credit['last_touch'].conversions)} after a touch)")]
    if exp.other_kinds:
        counts.append(("other experiment records", ", ".join(f"{k} {n:,}" for k, n in exp.other_kinds.items())))
    summary = data.summary
    return {"inputs": [*[(i.role, str(i.path) if i.path else "-", i.status()) for i in data.inputs],
                       ("summary", str(summary.path) if summary.path else "-", summary.status())],
            "unreadable": [u for i in data.inputs if (u := i.unreadable())],
            "range": f"{_iso(first)} to {_iso(last)}" if first is not None else "no timestamps read",
            "counts": counts}


def _template() -> Any:
    text = resources.files("touchline").joinpath("report.html.j2").read_text(encoding="utf-8")
    return Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(text)


def render(data: ReportData, confidence: float = 0.95, min_per_arm: int = 100, truth: Truth | None = None,
           truth_for: str | None = None) -> str:
    """The HTML page for aggregated data (see :func:`build_report`)."""
    sections = [funnel_section(data), channels_section(data), journeys_section(data.summary, data.decisions.journeys),
                lift_section(data, confidence, min_per_arm, truth, truth_for), scores_section(data),
                quality_section(data.summary), attribution_section(data)]
    return _template().render(header=_header(data), sections=sections)


def build_report(decisions: Path, experiments: Path | None, events: Path | None, confidence: float = 0.95,
                 min_per_arm: int = 100, truth: Truth | None = None, truth_for: str | None = None,
                 summary: Path | None = None) -> str:
    """A run's report as one self-contained HTML page.

    ``truth`` maps (dimension, value) segments (("all", "all") for everyone) to the true
    absolute lift, known in simulations: it is drawn as a marker and tabled beside the
    estimate, for ``truth_for`` only when given (else for every experiment).
    """
    return render(collect(decisions, experiments, events, summary=summary), confidence, min_per_arm, truth, truth_for)


def digest(data: ReportData, confidence: float = 0.95, min_per_arm: int = 100) -> str:
    """A few lines for the terminal: decisions, conversions, the overall lift per experiment."""
    dec, exp = data.decisions, data.experiments
    channels = ", ".join(f"{c} {n:,}" for c, n in dec.channels.most_common(TOP_SERIES))
    lines = [f"decisions: {_n(dec.total)}" + (f" ({channels})" if channels else ""),
             f"conversions: {_n(exp.conversions)} ({_n(exp.credit['last_touch'].conversions)} after a touch), "
             f"value {_w(exp.value)}"]
    overall = [e for name in exp.lift.experiments()
               for e in exp.lift.estimates(name, confidence, min_per_arm) if e.segment == ALL]
    for e in overall:
        lines.append(f"lift {e.experiment} {e.arm} vs {e.baseline}: {_pp(e.lift)} pp {_ci(e.low, e.high)} at "
                     f"{_conf(confidence)}, {_n(e.treated)} vs {_n(e.control)} contacts: {e.verdict}")
    if not overall:
        lines.append("lift: no experiment with closed windows in both arms")
    lines.extend(u for i in data.inputs if (u := i.unreadable()))
    return _CONTROL.sub("?", "\n".join(lines))  # names are user data: no terminal escapes


# ------------------------------------------------------------------------------- CLI


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_parser(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Add the ``report`` subcommand to the ``touchline`` parser."""
    p = subparsers.add_parser(
        "report", help="a run's decisions, experiments and events as one self-contained HTML report with plots",
        description="Funnel, decisions and conversions per channel over time, journeys, lift per segment with "
        "intervals, score distributions, model quality over time and attribution models compared, in one HTML file "
        "(no network needed to view it).")
    p.add_argument("--out", type=Path, default=Path("touchline-out"),
                   help="the run's output directory, where the inputs are found (default touchline-out: the run "
                        "touchline-out/latest names)")
    p.add_argument("--decisions", type=Path, metavar="FILE", help="decisions JSONL (default DIR/decisions.jsonl)")
    p.add_argument("--experiments", type=Path, metavar="FILE",
                   help="exposure/outcome/conversion records (default DIR/experiments.jsonl)")
    p.add_argument("--events", type=Path, metavar="FILE",
                   help="the events the run consumed, for the funnel (default DIR/events.jsonl if it exists)")
    p.add_argument("--summary", type=Path, metavar="FILE",
                   help="the run's summary, for journeys and model quality (default DIR/summary.json if it exists)")
    p.add_argument("--html", type=Path, metavar="FILE", help="where to write the report (default DIR/report.html)")
    p.add_argument("--confidence", type=_confidence, default=0.95, help="interval confidence (default 0.95)")
    p.add_argument("--min-per-arm", type=_positive, default=100,
                   help="contacts needed in each arm before a segment's lift is concluded (default 100)")


def simulation_truth(summary_path: Path) -> tuple[Truth | None, str | None]:
    """The true lift per segment a closed-loop simulation wrote into its summary, if any."""
    try:
        summary = orjson.loads(summary_path.read_bytes())
        experiments = summary["experiments"]
        experiment = experiments["truth"]["experiment"]
        truth = {(e["segment"]["dimension"], e["segment"]["value"]): float(e["true_lift"])
                 for e in experiments["lift"][experiment] if e.get("true_lift") is not None}
    except (OSError, ValueError, KeyError, TypeError):
        return None, None  # not a closed-loop run (or no summary): nothing to compare with
    return (truth or None), experiment


def main(args: argparse.Namespace) -> int:
    """Run ``touchline report``: write the page, print its path and a digest; 2 for a bad input path.
    A directory of run directories stands for the run its ``latest`` names."""
    from touchline.run_dirs import resolve

    args.out = out = resolve(args.out)
    missing = _missing_given_file(args)
    if missing is not None:
        console(missing, level="error")
        return EXIT_USAGE
    default_events = out / "events.jsonl"
    decisions, experiments, events = _report_inputs(args, default_events)
    if not any(p is not None and p.is_file() for p in (decisions, experiments, events)):
        console(f"touchline report: nothing to report: neither {decisions} nor {experiments} exists "
              "(run `touchline run` first, or pass --out DIR / --decisions FILE)", level="error")
        return EXIT_USAGE
    summary = args.summary or (out / "summary.json" if (out / "summary.json").is_file() else None)
    data = collect(decisions, experiments, events, summary=summary,
                   notes={"events": f"--events not given and {default_events} does not exist",
                          "summary": f"--summary not given and {out / 'summary.json'} does not exist"})
    truth, truth_for = simulation_truth(summary or out / "summary.json")
    page = render(data, args.confidence, args.min_per_arm, truth, truth_for)
    target: Path = args.html or out / "report.html"
    if not _write_page(target, page):
        return EXIT_RUNTIME
    print(f"report: {target}")
    print(digest(data, args.confidence, args.min_per_arm))
    return 0


def _missing_given_file(args: argparse.Namespace) -> str | None:
    """The error for the first input named on the command line that is not a file (None if all are)."""
    for role in ("decisions", "experiments", "events", "summary"):
        path = getattr(args, role)
        if path is not None and not path.is_file():
            return f"touchline report: --{role} {path}: no such file"
    return None


def _report_inputs(args: argparse.Namespace, default_events: Path) -> tuple[Path, Path, Path | None]:
    """Decisions, experiments and events files: as given, else in the run's --out directory (the
    events only if the run recorded them)."""
    decisions = args.decisions or args.out / "decisions.jsonl"
    experiments = args.experiments or args.out / "experiments.jsonl"
    events = args.events or (default_events if default_events.is_file() else None)
    return decisions, experiments, events


def _write_page(target: Path, page: str) -> bool:
    """Write the page (creating its directory); on failure say why and return False."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        console(f"touchline report: cannot write {target}: {exc.strerror or exc}", level="error")
        return False
    return True
