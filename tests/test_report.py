"""``touchline report``: the sections say what the inputs hold, bad lines are counted not
fatal, user data is escaped, and the page really lays out its plots in a browser."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from touchline import report
from touchline.decisions.lift import LiftTable

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: funnel 1 + channels 1 + lift 2 (global_holdout, subject_test) + scores 1 + attribution 1
PLOTS = 6
HOSTILE_ACTION = "<script>alert('x')</script>"
HOSTILE_CHANNEL = "$5 off<b>"  # mathtext dollars and markup in a plot label


def _write(path: Path, lines: list[Any]) -> Path:
    """One JSON line per record; bytes are written as they are (the malformed lines)."""
    path.write_bytes(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines))
    return path


def _decision(i: int, channel: str, day: int, action: str = "cart_reminder") -> dict[str, Any]:
    return {"decision_id": f"d{i}", "contact_id": f"c-{i}", "action": action, "channel": channel,
            "scores": {"lead": {"p": 0.1 + 0.15 * i, "model": "lead"}, "churn": {"p": 0.9 - 0.1 * i}},
            "event_time_ms": T0 + day * DAY + i * 1000, "event_time": "ignored when event_time_ms is there"}


DECISIONS: list[Any] = [
    _decision(1, "email", 0),
    b"{not json",                                     # line 2
    _decision(2, "email", 0),
    _decision(3, "sms", 0),
    b"[1, 2]",                                        # line 5: not an object
    _decision(4, "email", 1),
    {"decision_id": "d-x", "action": "welcome", "event_time_ms": T0},  # line 7: no channel
    {**_decision(5, "push", 1), "event_time_ms": None, "event_time": "2026-01-02T08:00:00.000Z"},
    _decision(6, HOSTILE_CHANNEL, 1, HOSTILE_ACTION),
    {**_decision(7, "email", 0), "event_time_ms": 10**18},  # line 10: no date a run can have
]


def _touch(channel: str, action: str, weight: float) -> dict[str, Any]:
    return {"decision_id": f"d-{channel}", "channel": channel, "action": action, "weight": weight}


def _conversion(n: int, value: float, credits: dict[str, list[dict[str, Any]]] | None) -> dict[str, Any]:
    return {"kind": "conversion", "contact_id": f"c-{n}", "event_id": f"e-{n}", "ts_ms": T0 + DAY + n,
            "type": "purchase", "value": value,
            "credits": credits or {m: [] for m in ("last_touch", "first_touch", "linear", "time_decay")}}


def _experiments() -> list[Any]:
    out: list[Any] = []
    for experiment, baseline, arms in (("global_holdout", "holdout", {"treatment": (250, 5), "holdout": (120, 10)}),
                                       ("subject_test", "a", {"a": (20, 4), "b": (24, 3)})):
        for arm, (n, every) in arms.items():
            for i in range(n):
                seg = {"lead_band": "high" if i % 2 else "low", "lifecycle": "prospect"}
                common = {"experiment": experiment, "arm": arm, "baseline": baseline, "contact_id": f"c-{i}",
                          "exposed_at_ms": T0 + i, "window_ms": 7 * DAY, "segment": seg}
                out.append({"kind": "exposure", **common, "sent": arm != baseline})
                out.append({"kind": "outcome", **common, "converted": i % every == 0,
                            "converted_at_ms": None, "value": 0.0})
    out.append(b'{"kind": "outcome", "experiment": ')  # truncated line
    one = [_touch("email", "cart_reminder", 1.0)]
    out.append(_conversion(1, 10.0, {"last_touch": one, "first_touch": one, "linear": one, "time_decay": one}))
    out.append(_conversion(2, 20.0, {
        "last_touch": [_touch("sms", "winback_offer", 1.0)], "first_touch": [_touch("email", "welcome", 1.0)],
        "linear": [_touch("email", "welcome", 0.5), _touch("sms", "winback_offer", 0.5)],
        "time_decay": [_touch("email", "welcome", 0.25), _touch("sms", "winback_offer", 0.75)]}))
    push = [_touch("push", "cart_reminder", 1.0)]
    out.append(_conversion(3, 30.0, {"last_touch": push, "first_touch": push, "linear": push, "time_decay": push}))
    out.append(_conversion(4, 40.0, None))  # a holdout contact's purchase: recorded, no credit
    out.append(_conversion(5, 50.0, None))
    return out


def _event(i: int, type_: str, contact: str | None = None, anon: str | None = None, ts: Any = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_id": f"ev-{i}", "type": type_, "ts": T0 + i * 1000 if ts is None else ts}
    if contact:
        doc["contact_id"] = contact
    if anon:
        doc["anonymous_id"] = anon
    return doc


EVENTS: list[Any] = [
    _event(1, "page_view", anon="a1"),
    _event(2, "product_view", anon="a1"),
    _event(3, "page_view", contact="c1", anon="a1"),  # logged in: a1 is c1, one person
    _event(4, "add_to_cart", contact="c1"),
    _event(5, "checkout_start", contact="c1"),
    _event(6, "purchase", contact="c1"),
    _event(7, "page_view", anon="a2"),
    _event(8, "product_view", anon="a2"),
    _event(9, "add_to_cart", anon="a2"),
    b"this is not an event",                          # line 10
    _event(11, "page_view", contact="c3"),
    {"type": "page_view", "ts": T0, "anonymous_id": "a9"},  # line 12: no event_id
    _event(13, "page_view", anon="a4", ts="2026-01-01T09:30:00+01:00"),
    _event(14, "email_open", contact="c3"),
]
FUNNEL = [("page_view", 4), ("product_view", 2), ("add_to_cart", 2), ("checkout_start", 1), ("purchase", 1)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    _write(out / "decisions.jsonl", DECISIONS)
    _write(out / "experiments.jsonl", _experiments())
    _write(out / "events.jsonl", EVENTS)
    return out


@pytest.fixture(scope="module")
def page(run_dir: Path) -> str:
    return report.build_report(run_dir / "decisions.jsonl", run_dir / "experiments.jsonl", run_dir / "events.jsonl")


class _Tables(HTMLParser):
    """The page's tables by id, as rows of cell texts (header rows included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def _body_rows(rows: list[list[str]], first: str) -> list[list[str]]:
    """Rows after the header row whose first cell is ``first``."""
    start = next(i for i, r in enumerate(rows) if r and r[0] == first)
    return rows[start + 1:]


def test_funnel_counts_people_through_their_aliases(page: str) -> None:
    rows = _body_rows(_tables(page)["funnel-table"], "stage")
    assert [(r[0], int(r[1])) for r in rows] == FUNNEL
    assert [r[2] for r in rows] == ["-", "50.0%", "100.0%", "50.0%", "100.0%"]
    assert [r[3] for r in rows] == ["100.0%", "50.0%", "50.0%", "25.0%", "25.0%"]


def test_lift_tables_match_lift_table(page: str) -> None:
    outcomes = [r for r in _experiments() if isinstance(r, dict) and r["kind"] == "outcome"]
    table = LiftTable()
    table.add_outcomes(outcomes)
    tables = _tables(page)
    for experiment in ("global_holdout", "subject_test"):
        rows = _body_rows(tables[f"lift-{experiment}"], "segment")
        expected = table.estimates(experiment, 0.95, 100)
        assert len(rows) == len(expected) == 4  # everyone, lead_band high/low, lifecycle prospect
        for row, e in zip(rows, expected):
            seg = "everyone" if e.segment == ("all", "all") else f"{e.segment[0]} = {e.segment[1]}"
            assert row[:7] == [seg, f"{e.treated_conversions} / {e.treated}", f"{e.rate * 100:.1f}%",
                               f"{e.control_conversions} / {e.control}", f"{e.control_rate * 100:.1f}%",
                               f"{e.lift * 100:+.2f}", f"[{e.low * 100:+.2f}, {e.high * 100:+.2f}]"]
            assert row[-1] == (e.verdict if e.enough else "too few to conclude")
    overall = table.estimates("global_holdout")[0]
    assert (overall.treated, overall.control, overall.enough) == (250, 120, True)
    assert all(not e.enough for e in table.estimates("subject_test"))  # drawn grey, labelled too few
    assert page.count(">too few</text>") == sum(not e.enough for x in ("global_holdout", "subject_test")
                                                for e in table.estimates(x))


def test_attribution_hands_out_one_conversion_per_credited_conversion(run_dir: Path, page: str) -> None:
    data = report.collect(run_dir / "decisions.jsonl", run_dir / "experiments.jsonl", None)
    assert data.experiments.conversions == 5
    for model, credit in data.experiments.credit.items():
        assert credit.conversions == 3, model
        assert sum(credit.channels.values()) == pytest.approx(3.0)
        assert sum(credit.actions.values()) == pytest.approx(3.0)
        assert sum(credit.channel_value.values()) == pytest.approx(60.0)  # 10 + 20 + 30, uncredited left out
    assert data.experiments.credit["time_decay"].channels == pytest.approx({"email": 1.25, "sms": 0.75, "push": 1.0})
    assert data.experiments.credit["first_touch"].actions == pytest.approx({"cart_reminder": 2.0, "welcome": 1.0})
    rows = _body_rows(_tables(page)["attribution-channel"], "channel")
    conv_sums = [sum(float(r[1 + 2 * m]) for r in rows) for m in range(4)]
    value_sums = [sum(float(r[2 + 2 * m].replace(",", "")) for r in rows) for m in range(4)]
    assert conv_sums == pytest.approx([3.0] * 4) and value_sums == pytest.approx([60.0] * 4)
    by_channel = {r[0]: r for r in rows}
    # whole conversions (last and first touch) as integers, fractional credit (linear, time decay) with decimals
    assert by_channel["sms"][1:9] == ["1", "20.00", "0", "0.00", "0.50", "10.00", "0.75", "15.00"]


def test_channels_scores_and_header(run_dir: Path, page: str) -> None:
    data = report.collect(run_dir / "decisions.jsonl", run_dir / "experiments.jsonl", run_dir / "events.jsonl")
    dec = data.decisions
    assert dec.total == 6
    day0, day1 = T0 // DAY, T0 // DAY + 1
    assert dec.daily == Counter({(day0, "email"): 2, (day0, "sms"): 1, (day1, "email"): 1, (day1, "push"): 1,
                                 (day1, HOSTILE_CHANNEL): 1})
    assert data.experiments.daily == {(day1, "email"): 1.0, (day1, "sms"): 1.0, (day1, "push"): 1.0}
    assert {name: sum(bins) for name, bins in dec.score_bins.items()} == {"lead": 6, "churn": 6}
    scores = {r[0]: r for r in _body_rows(_tables(page)["scores-table"], "score")}
    assert scores["lead"][1:3] == ["6", f"{sum(0.1 + 0.15 * i for i in range(1, 7)) / 6:.3f}"]
    # unreadable lines are counted and pointed at, per file
    assert ("4 unreadable lines in decisions.jsonl (line 2, 5, 7, 10): not JSON 1, not a JSON object 1, "
            "channel missing or not a string 1, event_time_ms out of range 1") in page
    assert "1 unreadable line in experiments.jsonl (line " in page
    assert "2 unreadable lines in events.jsonl (line 10, 12): bad_json 1, missing_field 1" in page
    assert "2026-01-01 00:00 UTC to 2026-01-02" in page
    assert page.count("<svg") == page.count('<figure class="plot"') == PLOTS
    assert "Plot not drawn" not in page


def test_page_is_self_contained_escaped_and_has_unique_ids(page: str) -> None:
    assert HOSTILE_ACTION not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;" in page  # in the tables and in the SVG text
    assert not re.search(r"<script|<link|<img|@import|\bsrc=|url\((?!#)", page)
    assert not re.search(r'href="(?!#)', page)  # only in-page anchors and SVG references
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    assert set(re.findall(r'(?:url\(#|href="#)([^")]+)', page)) <= set(ids)
    for svg in re.findall(r"<svg[^>]*>\s*<title>[^<]+</title>", page):
        assert 'role="img" aria-label="' in svg


def test_truth_is_drawn_and_tabled(run_dir: Path) -> None:
    truth = {("all", "all"): 0.05, ("lead_band", "high"): 0.07}
    html = report.build_report(run_dir / "decisions.jsonl", run_dir / "experiments.jsonl", None, truth=truth,
                               truth_for="global_holdout")
    tables = _tables(html)
    rows = _body_rows(tables["lift-global_holdout"], "segment")
    assert tables["lift-global_holdout"][0][-2] == "true lift pp"
    assert [r[-2] for r in rows] == ["+5.00", "+7.00", "-", "-"]
    assert "true lift pp" not in tables["lift-subject_test"][0]
    assert html.count(">true lift</text>") == 1  # one legend: the global holdout's forest plot
    assert "No events file (not given)" in html


def test_the_lift_section_checks_the_sample_ratio_against_the_summarys_shares(run_dir: Path, tmp_path: Path) -> None:
    """With the run's summary, each experiment's closed windows per arm are tested against the
    shares assigned: 250 treated to 120 held out cannot come from a 5% holdout; 20 to 24 from
    a 50/50 split can. A share that is not a number is skipped and counted, never a crash."""
    summary = tmp_path / "summary.json"
    summary.write_bytes(orjson.dumps({"experiments": {"sample_ratio": {
        "global_holdout": {"expected_share": {"treatment": 0.95, "holdout": 0.05}},
        "subject_test": {"expected_share": {"a": 0.5, "b": 0.5}},
        "broken": {"expected_share": {"a": "half"}}}}}))
    html = report.build_report(run_dir / "decisions.jsonl", run_dir / "experiments.jsonl", None, summary=summary)
    assert "global_holdout: sample ratio 250 : 120 windows closed (treatment : holdout) against 95% : 5%" in html
    assert html.count("SAMPLE RATIO MISMATCH") == 1
    assert "subject_test: sample ratio 20 : 24 windows closed (a : b) against 50% : 50% assigned, p = 0.546" in html
    assert "1 unusable entries skipped" in html
    assert "sample ratio" not in report.build_report(run_dir / "decisions.jsonl", run_dir / "experiments.jsonl", None)


def test_missing_and_empty_inputs_explain_themselves(tmp_path: Path) -> None:
    (tmp_path / "decisions.jsonl").write_bytes(b"")
    html = report.build_report(tmp_path / "decisions.jsonl", tmp_path / "nope.jsonl", None)
    assert "<svg" not in html
    assert f"{tmp_path / 'decisions.jsonl'} is empty" in html
    assert f"{tmp_path / 'nope.jsonl'} not found" in html
    assert "Pass --events FILE" in html
    _write(tmp_path / "junk.jsonl", [b"{", b"nope"])
    html = report.build_report(tmp_path / "junk.jsonl", None, None)
    assert f"none of the 2 lines of {tmp_path / 'junk.jsonl'} could be read" in html


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="touchline")
    report.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_writes_the_report_and_a_digest(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "sub" / "r.html"
    assert report.main(_cli(["report", "--out", str(run_dir), "--html", str(target), "--min-per-arm", "50"])) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"report: {target}\n")
    assert "decisions: 6 (email 3, sms 1, push 1, $5 off<b> 1)" in out
    assert "conversions: 5 (3 after a touch), value 150.00" in out
    assert re.search(r"lift global_holdout treatment vs holdout: \+\d+\.\d\d pp \[.*\] at 95%, 250 vs 120 contacts",
                     out)
    assert "4 unreadable lines in decisions.jsonl" in out
    html = target.read_text(encoding="utf-8")
    assert "below 50 contacts per arm" in html and html.count("<svg") == PLOTS  # events found in --out


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    assert report.main(_cli(["report", "--out", str(tmp_path), "--decisions", str(missing)])) == 2
    assert f"--decisions {missing}: no such file" in capsys.readouterr().err
    assert report.main(_cli(["report", "--out", str(tmp_path / "empty")])) == 2
    assert "nothing to report" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(["report", "--confidence", "95"])
    assert "between 0 and 1" in capsys.readouterr().err


# ------------------------------------------------------------------ in a real browser


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.fail("chromium is not installed; the report test renders the page in a real browser: "
                    "apt-get update && apt-get install -y chromium")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


_PROBE = """<script>
const laid = [...document.querySelectorAll("figure.plot svg")].filter(s => {
  const r = s.getBoundingClientRect(); return r.width > 100 && r.height > 50; });
document.body.setAttribute("data-svgs-laid-out", String(laid.length));
</script>"""


def test_the_page_lays_out_its_plots_in_a_browser(page: str, tmp_path: Path) -> None:
    import matplotlib.image

    html = tmp_path / "report.html"
    html.write_text(page, encoding="utf-8")
    png = tmp_path / "shot.png"
    done = _chromium(tmp_path / "profile", f"--screenshot={png}", "--window-size=1200,3000", html.as_uri())
    assert png.exists() and png.stat().st_size > 20_000, done.stderr[-2000:]
    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (3000, 1200)
    colours = {tuple(p) for p in pixels[::7, ::7].reshape(-1, pixels.shape[2]).tolist()}
    assert len(colours) > 20  # text, bars, lines: not a blank or single-colour page

    probe = tmp_path / "probe.html"  # the probe script only in the test copy: the report has none
    probe.write_text(page.replace("</body>", _PROBE + "\n</body>"), encoding="utf-8")
    done = _chromium(tmp_path / "profile2", "--dump-dom", "--window-size=1200,3000", probe.as_uri())
    found = re.search(r'data-svgs-laid-out="(\d+)"', done.stdout)
    assert found, done.stderr[-2000:]
    assert int(found.group(1)) == PLOTS


# ------------------------------------------------------------------ issue 22: lift axis, counts, journeys, model quality
def _tiny_segment_experiment() -> list[dict[str, Any]]:
    """A holdout with 600 against 300 contacts, and one segment of 2 against 1 (an interval of about ±100 points)."""
    out: list[dict[str, Any]] = []
    for arm, n, every in (("treatment", 600, 8), ("holdout", 300, 10)):
        for i in range(n):
            tiny = i < (2 if arm == "treatment" else 1)
            seg = {"lifecycle": "customer" if tiny else "prospect"}
            common = {"experiment": "global_holdout", "arm": arm, "baseline": "holdout", "contact_id": f"{arm}-{i}",
                      "exposed_at_ms": T0 + i, "window_ms": 7 * DAY, "segment": seg}
            out.append({"kind": "exposure", **common, "sent": arm == "treatment"})
            converted = (arm == "treatment" and i == 0) if tiny else i % every == 0
            out.append({"kind": "outcome", **common, "converted": converted, "converted_at_ms": None, "value": 0.0})
    return out


def _quality_rows() -> list[dict[str, Any]]:
    rows = []
    for d in range(5):
        rows.append({"score": "lead", "version": "logreg-abc", "day": f"2026-01-0{d + 1}", "labels": 20 + 40 * d,
                     "positives": 5 + 10 * d, "roc_auc": 0.6 + 0.05 * d, "log_loss": 0.6 - 0.02 * d,
                     "calibration_error": 0.2 - 0.03 * d, "progressive_roc_auc": 0.6 + 0.03 * d})
    rows.append({"score": "churn", "version": "logreg-abc", "day": "2026-01-02", "labels": 300, "positives": 0,
                 "roc_auc": None, "log_loss": 0.1, "calibration_error": 0.05, "progressive_roc_auc": None})
    rows.append({"score": "churn", "version": "logreg-abc", "day": "2026-01-03", "labels": 320, "positives": 12,
                 "roc_auc": 0.81, "log_loss": 0.12, "calibration_error": 0.02, "progressive_roc_auc": 0.81})
    rows.append({"score": "lead", "version": "<b>bad</b>", "labels": "many"})  # malformed: skipped, counted
    return rows


SUMMARY = {
    "journeys": {"welcome entered": 120, "welcome sent welcome": 110, "welcome sent benefits": 80,
                 "welcome deferred benefits": 30, "welcome skipped benefits": 4, "welcome exited goal": 30,
                 "welcome exited completed": 70, "welcome exited unsubscribed": 5,
                 "abandoned_cart entered": 40, "abandoned_cart sent reminder": 38, "abandoned_cart exited goal": 10,
                 "abandoned_cart exited completed": 29, "nonsense": 3, "welcome sent odd": -1},
    "models": {"lead": {"version": "logreg-abc", "labels": 500, "positives": 125, "roc_auc": 0.66, "log_loss": 0.55,
                        "calibration_error": 0.08,
                        "challengers": [{"version": "hat-def", "labels": 300, "positives": 70, "roc_auc": 0.61,
                                         "log_loss": 0.6, "calibration_error": 0.1}]},
               "churn": {"version": "logreg-abc", "labels": 620, "positives": 12, "roc_auc": 0.81, "log_loss": 0.11,
                         "calibration_error": 0.03}},
    "model_quality_by_day": _quality_rows(),
}
#: funnel, channels, journeys, lift (one experiment), scores, model quality, attribution
FULL_PLOTS = 7


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    decisions = [{**_decision(i, "email", 0, "welcome.welcome"), "journey": "welcome"} for i in range(1, 4)]
    decisions.append({**_decision(4, "sms", 0, "abandoned_cart.reminder"), "journey": "abandoned_cart"})
    _write(out / "decisions.jsonl", decisions)
    one = [_touch("email", "welcome.welcome", 1.0)]
    _write(out / "experiments.jsonl", [*_tiny_segment_experiment(), *[
        _conversion(n, 10.0, {"last_touch": one, "first_touch": one, "linear": one, "time_decay": one})
        for n in range(595)]])
    _write(out / "events.jsonl", EVENTS)
    (out / "summary.json").write_bytes(orjson.dumps(SUMMARY))
    return out


@pytest.fixture(scope="module")
def full_page(full_run: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    target = tmp_path_factory.mktemp("html") / "report.html"
    assert report.main(_cli(["report", "--out", str(full_run), "--html", str(target)])) == 0
    return target.read_text(encoding="utf-8")


def _xticks(page: str, plot: str) -> list[float]:
    """The x tick labels of a plot's SVG, as numbers."""
    start = page.index(f'data-plot="{plot}"')
    svg = page[start:page.index("</svg>", start)]
    return [float(t.replace("−", "-")) for t in re.findall(r'xtick_\d+">.*?<text[^>]*>([^<]+)</text>', svg, re.S)]


def test_a_tiny_segment_does_not_stretch_the_lift_axis(full_run: Path, full_page: str) -> None:
    table = LiftTable()
    table.add_outcomes([r for r in _tiny_segment_experiment() if r["kind"] == "outcome"])
    tiny = next(e for e in table.estimates("global_holdout") if e.segment == ("lifecycle", "customer"))
    assert (tiny.treated, tiny.control, tiny.enough) == (2, 1, False) and tiny.high - tiny.low > 1.0  # > 100 points
    ticks = _xticks(full_page, "lift-global_holdout")
    concluded = [e for e in table.estimates("global_holdout") if e.enough]
    assert max(abs(t) for t in ticks) < 25  # the axis fits the concluded segments, not ±100
    assert min(ticks) <= min(e.low * 100 for e in concluded) and max(ticks) >= max(e.high * 100 for e in concluded)
    assert "the intervals of 1 segment(s) with too few reach past it and are clipped at its edge" in full_page
    rows = {r[0]: r for r in _body_rows(_tables(full_page)["lift-global_holdout"], "segment")}
    assert rows["lifecycle = customer"][6] == f"[{tiny.low * 100:+.2f}, {tiny.high * 100:+.2f}]"  # in full in the table


def test_counts_are_integers(full_page: str) -> None:
    channels = {r[0]: r for r in _body_rows(_tables(full_page)["channels-table"], "channel")}
    assert channels["email"][2] == "595"  # last-touch conversions: not "595.00"
    credit = {r[0]: r for r in _body_rows(_tables(full_page)["attribution-channel"], "channel")}
    assert credit["email"][1:3] == ["595", "5,950.00"]  # conversions whole, value in money


def test_journeys_section_from_the_summary(full_page: str) -> None:
    tables = _tables(full_page)
    rows = {r[0]: r for r in _body_rows(tables["journeys-table"], "journey")}
    assert rows["welcome"][:7] == ["welcome", "120", "190", "105", "30", "25.0%", "15"]
    assert rows["welcome"][7] == "completed 70 · unsubscribed 5" and rows["welcome"][8] == "deferred 30, skipped 4"
    assert rows["abandoned_cart"][:7] == ["abandoned_cart", "40", "38", "39", "10", "25.0%", "1"]
    steps = [r[:5] for r in _body_rows(tables["journey-steps-table"], "journey")]
    assert ["welcome", "benefits", "80", "30", "4"] in steps and ["abandoned_cart", "reminder", "38", "0", "0"] in steps
    assert "3 unusable entries skipped" in full_page  # "nonsense", a negative count, a malformed day row


def test_model_quality_section_from_the_summary(full_page: str) -> None:
    tables = _tables(full_page)
    final = _body_rows(tables["models-table"], "score")
    assert final[0][:6] == ["churn", "champion", "logreg-abc", "620", "12", "0.810"]
    assert ["lead", "challenger", "hat-def", "300", "70", "0.610", "0.600", "0.100"] in final
    lead = _body_rows(tables["models-lead-days"], "day")
    assert [r[0] for r in lead] == [f"2026-01-0{d}" for d in range(1, 6)]
    assert lead[0][2:6] == ["20", "5", "0.600", "0.600"] and lead[4][4] == "0.800"
    churn = _body_rows(tables["models-churn-days"], "day")
    assert churn[0][4] == "n/a" and churn[1][4] == "0.810"  # one class that day: no ROC AUC
    assert re.search(r'<tr class="muted"><td[^>]*>2026-01-01</td>', full_page)  # 20 labels: thin, greyed
    assert "<b>bad</b>" not in full_page


def test_sections_explain_a_missing_or_older_summary(tmp_path: Path, run_dir: Path) -> None:
    html = report.build_report(run_dir / "decisions.jsonl", run_dir / "experiments.jsonl", None)
    assert "No summary (not given). Entries, exits and conversions per journey come from the summary.json" in html
    old = tmp_path / "summary.json"
    old.write_bytes(orjson.dumps({"models": SUMMARY["models"], "journeys": {}}))
    html = report.build_report(run_dir / "decisions.jsonl", None, None, summary=old)
    assert "This run&#39;s summary has no figures per day (model_quality_by_day" in html
    assert "The run&#39;s summary lists no journey entries" in html
    old.write_text("{not json")
    html = report.build_report(run_dir / "decisions.jsonl", None, None, summary=old)
    assert f"{old} could not be used: not a JSON object" in html


def test_the_summary_records_model_quality_per_day_from_a_real_run(small_settings) -> None:
    from touchline.runner import run

    summary = run(small_settings(), progress=None).summary
    rows = summary["model_quality_by_day"]
    assert rows and {r["score"] for r in rows} == {"lead", "churn"}
    for score in ("lead", "churn"):
        mine = [r for r in rows if r["score"] == score]
        assert sum(r["labels"] for r in mine) == summary["models"][score]["labels"]  # every label, on its day
        assert mine[-1]["progressive_roc_auc"] == pytest.approx(summary["models"][score]["roc_auc"], abs=1e-4)
        assert [r["day"] for r in mine] == sorted({r["day"] for r in mine})


_SECTIONS_PROBE = """<script>
const laid = [...document.querySelectorAll("figure.plot svg")].filter(s => {
  const r = s.getBoundingClientRect(); return r.width > 100 && r.height > 50; });
const shown = ["journeys-table", "journey-steps-table", "models-table", "models-lead-days"].filter(id => {
  const t = document.getElementById(id); return t && t.getBoundingClientRect().height > 40; });
const plots = ["journeys", "models", "lift-global_holdout"].filter(k => {
  const s = document.querySelector(`svg[data-plot="${k}"]`); return s && s.getBoundingClientRect().height > 100; });
document.body.setAttribute("data-svgs-laid-out", String(laid.length));
document.body.setAttribute("data-tables-shown", shown.join(","));
document.body.setAttribute("data-plots-shown", plots.join(","));
</script>"""


def test_the_new_sections_lay_out_in_a_browser(full_page: str, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(full_page.replace("</body>", _SECTIONS_PROBE + "\n</body>"), encoding="utf-8")
    done = _chromium(tmp_path / "profile", "--dump-dom", "--window-size=1200,3000", probe.as_uri())
    laid = re.search(r'data-svgs-laid-out="(\d+)"', done.stdout)
    assert laid, done.stderr[-2000:]
    assert int(laid.group(1)) == FULL_PLOTS == full_page.count("<svg")
    assert re.search(r'data-tables-shown="([^"]*)"', done.stdout).group(1).split(",") == [
        "journeys-table", "journey-steps-table", "models-table", "models-lead-days"]
    assert re.search(r'data-plots-shown="([^"]*)"', done.stdout).group(1).split(",") == [
        "journeys", "models", "lift-global_holdout"]
    nav = re.search(r"<nav>(.*?)</nav>", full_page, re.S).group(1)
    assert '<a href="#journeys">Journeys</a>' in nav and '<a href="#models">Model quality</a>' in nav
