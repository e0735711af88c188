"""The parts of ``touchline report`` its sections are built from: tables, plots, sections
and the formatting of figures (shared by :mod:`touchline.report` and :mod:`touchline.report_run`).

>>> _pp(0.0123), _ci(-0.001, 0.0456)
('+1.23', '[-0.10, +4.56]')
>>> _counts([595.0, 12.0]), _counts([0.5, 2.0])
(['595', '12'], ['0.50', '2.00'])
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from markupsafe import Markup

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Series drawn per plot; the rest are summed into "other" so user data cannot flood a legend.
TOP_SERIES = 10
#: Rows per table before the rest is summarised in one line.
TABLE_ROWS = 50
_TOO_FEW_COLOUR = "#8c959f"
#: An id inside a matplotlib SVG, or a reference to one.
_SVG_REF = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def _n(x: int) -> str:
    return f"{x:,}"


def _rate(x: float) -> str:
    return f"{x * 100:.1f}%"


def _pp(x: float) -> str:
    """A difference of rates in percentage points, signed."""
    return f"{x * 100:+.2f}"


def _ci(low: float, high: float) -> str:
    return f"[{_pp(low)}, {_pp(high)}]"


def _w(x: float) -> str:
    return f"{x:,.2f}"


def _conf(c: float) -> str:
    return f"{c * 100:g}%"


def _iso(ts: int | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _counts(values: Sequence[float]) -> list[str]:
    """A column of counts: whole numbers as integers (``595``, not ``595.00``) when every value
    in it is whole, else all with two decimals (a fractional attribution credit)."""
    if all(abs(v - round(v)) < 1e-9 for v in values):
        return [f"{round(v):,}" for v in values]
    return [_w(v) for v in values]


def _tx(text: str, limit: int = 40) -> str:
    """User data as a matplotlib label: '$' is not mathtext, '_x' is not hidden, long names cut."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _top(counts: Mapping[str, float], k: int = TOP_SERIES) -> list[str]:
    """The k largest keys; when there are more, the caller folds the rest into 'other'."""
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


@dataclass
class Table:
    """A table of preformatted cells; numeric columns are right-aligned, muted rows greyed."""

    id: str
    caption: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: frozenset[int] = frozenset()
    muted: frozenset[int] = frozenset()
    wrap: frozenset[int] = frozenset()  # columns of prose, allowed to wrap (the rest do not)
    groups: list[tuple[str, int]] = field(default_factory=list)  # optional header row above: (label, span)


@dataclass
class Plot:
    key: str
    svg: Markup | None  # None when drawing failed: ``error`` says why
    caption: str
    error: str = ""


@dataclass
class Section:
    """One part of the page: what it measures (``note``), or why it is empty (``empty``)."""

    id: str
    title: str
    note: str
    empty: str = ""
    facts: list[str] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def _draw(key: str, label: str, size: tuple[float, float], draw: Callable[[Figure], None], caption: str = "") -> Plot:
    """Draw on a fresh Figure and return it as an inline SVG plot with a title and aria-label.

    The plot's key salts matplotlib's hashed ids, so the same data gives the same bytes,
    and prefixes every id, so plots sharing the page's id namespace do not collide.
    """
    import matplotlib
    from matplotlib.figure import Figure

    buf = io.StringIO()
    try:
        with matplotlib.rc_context({"font.size": 9, "font.family": "sans-serif", "axes.spines.top": False,
                                    "axes.spines.right": False, "svg.fonttype": "none",
                                    "svg.hashsalt": f"touchline-{key}"}):
            fig = Figure(figsize=size, layout="constrained")
            draw(fig)
            fig.savefig(buf, format="svg", metadata={"Date": None})
    except Exception as exc:  # noqa: BLE001 - one odd input must not cost the whole report
        return Plot(key, None, caption or label, f"{type(exc).__name__}: {exc}")
    prefix = _slug(key)
    text = _SVG_REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", buf.getvalue())
    start = text.index("<svg")
    end = text.index(">", start)
    attrs = f' role="img" aria-label="{html.escape(label, quote=True)}" data-plot="{html.escape(key, quote=True)}"'
    svg = text[start:start + 4] + attrs + text[start + 4:end + 1] + f"<title>{html.escape(label)}</title>" \
        + text[end + 1:]
    return Plot(key, Markup(svg), caption or label)
