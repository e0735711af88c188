"""The report's sections read from the run's ``summary.json``: journeys and model quality.

The JSONL outputs hold what was decided; how many contacts entered and left each journey,
and how well the models predicted day by day, are tallied by the engine and written to the
summary at the end of the run. A summary that is missing, not JSON, or from an older run
without some figure leaves the section with a message saying so; a malformed entry is
skipped and counted, never fatal.

>>> s = RunSummary(None)
>>> s.take_journeys({"welcome entered": 10, "welcome sent step-1": 9, "welcome exited goal": 3, "x y": "?"})
>>> j = s.journeys["welcome"]
>>> j.entered, j.sends, j.conversions, s.bad_entries
(10, 9, 3, 1)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import orjson

from touchline.report_parts import (
    TABLE_ROWS, TOP_SERIES, _TOO_FEW_COLOUR, Section, Table, _counts, _draw, _n, _rate, _tx,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: A day graded on fewer labels than this is drawn hollow and greyed in the table: its figures are noise.
MIN_DAY_LABELS = 30
#: Largest summary read (a run's summary is kilobytes; anything this big is not one).
MAX_SUMMARY_BYTES = 50_000_000
_VERBS = ("entered", "exited", "sent", "deferred", "skipped")
_FIGURES = ("labels", "positives", "roc_auc", "log_loss", "calibration_error")


@dataclass
class JourneyStats:
    """One journey's tallies from the summary."""

    entered: int = 0
    exits: Counter[str] = field(default_factory=Counter)  # reason -> contacts
    sent: Counter[str] = field(default_factory=Counter)  # step -> messages
    deferred: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def sends(self) -> int:
        return sum(self.sent.values())

    @property
    def conversions(self) -> int:
        """Exits on the journey's goal: the journey's conversions."""
        return self.exits["goal"]


@dataclass
class RunSummary:
    """What the report uses of ``summary.json``: journeys, the models' final and daily figures."""

    path: Path | None
    note: str = "not given"
    error: str = ""
    found: bool = False
    journeys: dict[str, JourneyStats] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    quality: list[dict[str, Any]] | None = None  # None: the summary does not record figures per day
    #: experiment -> arm -> the share of contacts assigned to it (the sample ratio check's expectation)
    assigned: dict[str, dict[str, float]] = field(default_factory=dict)
    bad_entries: int = 0

    def status(self) -> str:
        """One phrase for the header's inputs table."""
        return self.absent() or "read" + (f", {self.bad_entries:,} unusable entries skipped" if self.bad_entries else "")

    def absent(self) -> str:
        if self.path is None:
            return f"no summary ({self.note})"
        if self.error:
            return f"{self.path} could not be used: {self.error}"
        return "" if self.found else f"{self.path} not found"

    def take_assigned(self, ratios: Any) -> None:
        """Each experiment's assigned shares per arm from the summary's ``sample_ratio`` (what is
        not a mapping of arm to a share between 0 and 1 is skipped and counted)."""
        for name, ratio in (ratios.items() if isinstance(ratios, dict) else []):
            shares = ratio.get("expected_share") if isinstance(ratio, dict) else None
            if (not isinstance(shares, dict) or not shares
                    or not all(_share(v) for v in shares.values())):
                self.bad_entries += 1
                continue
            self.assigned[str(name)] = {str(arm): float(v) for arm, v in shares.items()}

    def take_journeys(self, tallies: Any) -> None:
        """The summary's ``journeys`` tallies, ``"<journey> <what> [<reason or step>]": count``."""
        for key, count in (tallies.items() if isinstance(tallies, dict) else []):
            parts = str(key).split(" ", 2)
            if len(parts) < 2 or parts[1] not in _VERBS or not _count(count):
                self.bad_entries += 1
                continue
            j = self.journeys.setdefault(parts[0], JourneyStats())
            if parts[1] == "entered":
                j.entered += count
            else:
                getattr(j, "exits" if parts[1] == "exited" else parts[1])[parts[2] if len(parts) > 2 else "?"] += count

    def take_models(self, models: Any, quality: Any) -> None:
        """The final figures per score, and the rows of figures per day (when recorded)."""
        if isinstance(models, dict):
            self.models = {str(k): v for k, v in models.items() if isinstance(v, dict)}
        if isinstance(quality, list):
            self.quality = [r for r in quality if _quality_row(r)]
            self.bad_entries += len(quality) - len(self.quality)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _share(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _quality_row(row: Any) -> bool:
    """A day's row with its keys and figures of the right types."""
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("score", "version", "day")):
        return False
    if not (_count(row.get("labels")) and _count(row.get("positives")) and _is_day(row["day"])):
        return False
    return all(row.get(k) is None or isinstance(row.get(k), (int, float)) for k in _FIGURES[2:] + ("progressive_roc_auc",))


def _is_day(text: str) -> bool:
    """``YYYY-MM-DD``, a real date.

    >>> _is_day("2026-01-31"), _is_day("2026-02-31"), _is_day("<b>")
    (True, False, False)
    """
    try:
        return len(text) == 10 and datetime.strptime(text, "%Y-%m-%d") is not None
    except ValueError:
        return False


def read_summary(path: Path | None, note: str = "not given") -> RunSummary:
    """The run's summary, as far as it can be used (see the module docstring)."""
    summary = RunSummary(path, note)
    if path is None:
        return summary
    try:
        raw = path.read_bytes() if path.stat().st_size <= MAX_SUMMARY_BYTES else None
    except FileNotFoundError:
        return summary
    except OSError as exc:
        summary.error = exc.strerror or str(exc)
        return summary
    try:
        doc = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        summary.error = "not a JSON object (a run's summary.json)" if raw is not None else "too large to be a summary"
        return summary
    summary.found = True
    _take(summary, doc)
    return summary


def _take(summary: RunSummary, doc: dict[str, Any]) -> None:
    """What the report uses of a summary document: journeys, models, the experiments' shares."""
    summary.take_journeys(doc.get("journeys"))
    summary.take_models(doc.get("models"), doc.get("model_quality_by_day"))
    experiments = doc.get("experiments")
    summary.take_assigned(experiments.get("sample_ratio") if isinstance(experiments, dict) else None)


# ------------------------------------------------------------------------------ journeys
def journeys_section(summary: RunSummary, decided: Mapping[str, int]) -> Section:
    """Entries, sends, exits and conversions per journey, with sends and held-back steps per step."""
    sec = Section("journeys", "Journeys", "Per journey: contacts who entered, messages its send steps sent, "
                  "contacts who left (by reason), conversions (exits on the journey's goal) with the share of "
                  "entries that converted, and contacts still in it when the run ended. From the run's summary.json; a conversion is counted when the contact "
                  "reached the goal inside the journey, which is not proof the journey caused it (see Lift).")
    if not summary.journeys:
        sec.empty = _no_journeys(summary, decided)
        return sec
    names = sorted(summary.journeys, key=lambda n: (-summary.journeys[n].entered, n))
    sec.tables.append(_journeys_table(summary.journeys, names))
    sec.tables.append(_steps_table(summary.journeys, names))
    missing = sorted(set(decided) - set(summary.journeys))
    if missing:
        sec.facts.append(f"decisions.jsonl has decisions of journeys the summary does not list: {', '.join(missing[:10])} "
                         "(a decisions file from another run?)")
    sec.plots.append(_journeys_plot(summary.journeys, names[:TOP_SERIES]))
    return sec


def _no_journeys(summary: RunSummary, decided: Mapping[str, int]) -> str:
    """Why there is nothing to show, and what the decisions alone say."""
    sends = f" decisions.jsonl has {sum(decided.values()):,} journey decisions (" + ", ".join(
        f"{name} {n:,}" for name, n in Counter(decided).most_common(TOP_SERIES)) + ")." if decided else ""
    why = summary.absent() or "the run's summary lists no journey entries (no journeys configured, or none entered)"
    return (f"{why[:1].upper()}{why[1:]}.{sends} Entries, exits and conversions per journey come from the summary.json "
            "a run writes at its end (`touchline run --journeys DIR` or journeys.files).")


def _journeys_table(journeys: Mapping[str, JourneyStats], names: list[str]) -> Table:
    table = Table("journeys-table", "Per journey", ["journey", "entered", "sends", "exits", "conversions",
                                                    "converted", "in at the end", "other exits", "held back"],
                  numeric=frozenset({1, 2, 3, 4, 5, 6}), wrap=frozenset({7, 8}))
    for name in names[:TABLE_ROWS]:
        j = journeys[name]
        exits = sum(j.exits.values())
        others = " · ".join(f"{r} {n:,}" for r, n in j.exits.most_common() if r != "goal") or "-"
        held = ", ".join(f"{what} {sum(c.values()):,}" for what, c in (("deferred", j.deferred), ("skipped", j.skipped))
                         if c) or "-"
        table.rows.append([name, _n(j.entered), _n(j.sends), _n(exits), _n(j.conversions),
                           _rate(j.conversions / j.entered) if j.entered else "-", _n(max(0, j.entered - exits)),
                           others, held])
    if len(names) > TABLE_ROWS:
        table.rows.append([f"… {len(names) - TABLE_ROWS} more journeys", *[""] * 8])
    return table


def _steps_table(journeys: Mapping[str, JourneyStats], names: list[str]) -> Table:
    """Per send step: messages sent, and the times the policy held it back (deferred, then skipped)."""
    table = Table("journey-steps-table", "Send steps: sent and held back", ["journey", "step", "sent", "deferred",
                                                                            "skipped"], numeric=frozenset({2, 3, 4}))
    rows = [[name, step, _n(j.sent[step]), _n(j.deferred[step]), _n(j.skipped[step])]
            for name in names for j in [journeys[name]] for step in sorted({*j.sent, *j.deferred, *j.skipped})]
    table.rows = rows[:TABLE_ROWS]
    if len(rows) > TABLE_ROWS:
        table.rows.append([f"… {len(rows) - TABLE_ROWS} more steps", "", "", "", ""])
    return table


def _journeys_plot(journeys: Mapping[str, JourneyStats], names: list[str]) -> Any:
    """Horizontal bars per journey: entered, sends and conversions side by side."""
    series = [("entered", "#0969da", [journeys[n].entered for n in names]),
              ("sends", "#8250df", [journeys[n].sends for n in names]),
              ("conversions (goal)", "#1a7f37", [journeys[n].conversions for n in names])]

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        height = 0.8 / len(series)
        for i, (label, colour, values) in enumerate(series):
            ys = [y + (i - 1) * height for y in range(len(names))]
            bars = ax.barh(ys, values, height, label=label, color=colour)
            ax.bar_label(bars, labels=_counts([float(v) for v in values]), padding=2, fontsize=7)
        ax.set_yticks(range(len(names)), [_tx(n) for n in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlabel("contacts (entered, conversions) or messages (sends)")
        ax.margins(x=0.12)
        fig.legend(loc="outside upper center", ncols=3)

    return _draw("journeys", "Journeys: entered, sends and conversions per journey", (8.5, 1.2 + 0.55 * len(names)),
                 draw)


# ------------------------------------------------------------------------------ model quality
def quality_section(summary: RunSummary) -> Section:
    """The models' final figures, and ROC AUC and calibration error per day."""
    sec = Section("models", "Model quality", "How well the lead and churn scores predicted, graded on delayed "
                  "labels: each label grades the probability the model gave when it scored. Per day (UTC, event "
                  "time), on the labels resolved that day, beside the progressive ROC AUC (every label so far); "
                  "calibration error is the label-weighted gap between predicted and observed rates in ten score "
                  f"buckets (0 is perfect). Days with fewer than {MIN_DAY_LABELS} labels are drawn hollow: noise.")
    if not summary.models and not summary.quality:
        why = summary.absent() or "the run's summary has no model figures"
        sec.empty = f"{why[:1].upper()}{why[1:]}. The engine writes them to summary.json at the end of a run."
        return sec
    if summary.models:
        sec.tables.append(_final_table(summary.models))
    if summary.quality is None:
        sec.facts.append("This run's summary has no figures per day (model_quality_by_day, written by runs of this "
                         "version on): only the final figures are shown.")
    elif not summary.quality:
        sec.facts.append("No label resolved during the run, so there are no figures per day.")
    else:
        scores = sorted({r["score"] for r in summary.quality})
        sec.plots.append(_quality_plot(summary.quality, scores[:TOP_SERIES]))
        sec.tables.extend(_days_table(summary.quality, score) for score in scores)
    return sec


def _final_table(models: Mapping[str, dict[str, Any]]) -> Table:
    """Each score's champion (and challengers) with the figures at the end of the run."""
    table = Table("models-table", "At the end of the run (progressive: every label of the model's life)",
                  ["score", "role", "version", "labels", "positives", "ROC AUC", "log loss", "calibration error"],
                  numeric=frozenset({3, 4, 5, 6, 7}))
    for score, m in sorted(models.items()):
        table.rows.append([score, "champion", *_model_cells(m)])
        for c in m.get("challengers") or []:
            if isinstance(c, dict):
                table.rows.append([score, "challenger", *_model_cells(c)])
    return table


def _model_cells(m: Mapping[str, Any]) -> list[str]:
    return [str(m.get("version", "?")), _int(m.get("labels")), _int(m.get("positives")),
            *[_fig(m.get(k)) for k in ("roc_auc", "log_loss", "calibration_error")]]


def _int(value: Any) -> str:
    return _n(value) if _count(value) else "-"


def _fig(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _days_table(rows: list[dict[str, Any]], score: str) -> Table:
    """One score's figures per day (the latest days when there are many); thin days greyed."""
    mine = [r for r in rows if r["score"] == score]
    shown = mine[-TABLE_ROWS:]
    table = Table(f"models-{score}-days", f"{score}: per day, on the labels resolved that day",
                  ["day", "version", "labels", "positives", "ROC AUC", "progressive ROC AUC", "log loss",
                   "calibration error"], numeric=frozenset({2, 3, 4, 5, 6, 7}))
    table.rows = [[r["day"], r["version"], _n(r["labels"]), _n(r["positives"]), _fig(r.get("roc_auc")),
                   _fig(r.get("progressive_roc_auc")), _fig(r.get("log_loss")), _fig(r.get("calibration_error"))]
                  for r in shown]
    table.muted = frozenset(i for i, r in enumerate(shown) if r["labels"] < MIN_DAY_LABELS)
    if len(mine) > len(shown):
        table.caption += f" (the last {len(shown)} of {len(mine)} days)"
    return table


def _quality_plot(rows: list[dict[str, Any]], scores: list[str]) -> Any:
    """Per score, ROC AUC per day with the progressive line (top) and calibration error per day (bottom)."""

    def day(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)

    def draw(fig: Figure) -> None:
        axes = fig.subplots(2, len(scores), squeeze=False, sharex="col")
        for col, score in enumerate(scores):
            top, bottom = axes[0][col], axes[1][col]
            versions = sorted({r["version"] for r in rows if r["score"] == score})
            for i, version in enumerate(versions[:TOP_SERIES]):
                mine = [r for r in rows if r["score"] == score and r["version"] == version]
                _quality_series(top, bottom, mine, day, f"C{i}", _tx(version) if len(versions) > 1 else None)
            top.axhline(0.5, color=_TOO_FEW_COLOUR, linewidth=0.8, linestyle=":")
            top.set_title(_tx(score), loc="left")
            top.set_ylim(0, 1)
            top.set_ylabel("ROC AUC")
            bottom.set_ylabel("calibration error")
            bottom.set_ylim(bottom=0)
            bottom.tick_params(axis="x", labelrotation=30)
        handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines() if not h.get_label().startswith("_")}
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside upper center", ncols=min(4, len(handles)))

    return _draw("models", "Model quality per day: ROC AUC and calibration error", (max(5.0, 4.6 * len(scores)), 5.2),
                 draw)


def _quality_series(top: Any, bottom: Any, rows: list[dict[str, Any]], day: Any, colour: str,
                    version: str | None) -> None:
    """One model's days: daily ROC AUC points (hollow when thin), its progressive line, and calibration error."""
    suffix = f" · {version}" if version else ""
    for ax, key in ((top, "roc_auc"), (bottom, "calibration_error")):
        for thin in (False, True):
            label = f"ROC AUC that day{suffix}" if key == "roc_auc" and not thin else "_"  # "_": not in the legend
            _dots(ax, [r for r in rows if (r["labels"] < MIN_DAY_LABELS) == thin], key, day, colour, thin, label)
    line = _points(rows, "progressive_roc_auc", day)
    if line:
        top.plot(*zip(*line), color=colour, linewidth=1.5, label=f"progressive ROC AUC{suffix}")


def _dots(ax: Any, rows: list[dict[str, Any]], key: str, day: Any, colour: str, hollow: bool, label: str) -> None:
    pts = _points(rows, key, day)
    if pts:
        ax.plot(*zip(*pts), linestyle="none", marker="o", markersize=4, color=colour,
                markerfacecolor="none" if hollow else colour, label=label)


def _points(rows: list[dict[str, Any]], key: str, day: Any) -> list[tuple[datetime, float]]:
    """(day, figure) of the rows that have the figure."""
    return [(day(r["day"]), r[key]) for r in rows if r.get(key) is not None]
