"""The measurement tested against the truth: a closed-loop simulation (people react to the
engine's messages with an effect only the simulator knows) must give lift intervals that
hold the true lift, and the report of that run must carry both."""

from __future__ import annotations


import orjson
import pytest

from touchline.cli import main
from touchline.runner import run


@pytest.fixture(scope="module")
def closed_loop_run(tmp_path_factory):
    from touchline.settings import load_settings

    out = tmp_path_factory.mktemp("sim") / "out"
    settings = load_settings(None, {"simulator.contacts": 3000, "simulator.days": 30, "simulator.closed_loop": True,
                                    "policy.holdout_share": 0.5, "output.dir": out, "metrics.enabled": False})
    return run(settings, progress=None).summary, out


def test_true_lift_falls_inside_the_reported_interval(closed_loop_run):
    """For every segment with enough contacts in both arms the simulator's true lift is inside
    the 95% interval, and the run finds the (real, positive) effect overall."""
    summary, _ = closed_loop_run
    estimates = summary["experiments"]["lift"]["global_holdout"]
    judged = [e for e in estimates if e["enough"]]
    assert len(judged) >= 4, [e["segment"] for e in estimates]
    for e in judged:
        assert e["true_lift"] is not None, e["segment"]
        assert e["low"] <= e["true_lift"] <= e["high"], e
    everyone = next(e for e in estimates if e["segment"]["dimension"] == "all")
    assert everyone["verdict"] == "lift" and everyone["true_lift"] > 0
    small = [e for e in estimates if not e["enough"]]
    assert all(e["verdict"].startswith("too few to conclude") for e in small)


def test_outputs_of_a_closed_loop_run_agree(closed_loop_run):
    """Decisions record their arms; exposures cover both arms; reaction events are in the
    recorded events; holdout contacts are never messaged."""
    summary, out = closed_loop_run
    decisions = [orjson.loads(x) for x in (out / "decisions.jsonl").read_bytes().splitlines()]
    records = [orjson.loads(x) for x in (out / "experiments.jsonl").read_bytes().splitlines()]
    held = {r["contact_id"] for r in records if r["kind"] == "exposure" and r["arm"] == "holdout"}
    assert held and not held & {d["contact_id"] for d in decisions}
    assert all(d["experiments"]["global_holdout"] == "treatment" for d in decisions)
    assert b'"event_id":"react-' in (out / "events.jsonl").read_bytes()
    outcomes = [r for r in records if r["kind"] == "outcome"]
    everyone = next(e for e in summary["experiments"]["lift"]["global_holdout"] if e["segment"]["dimension"] == "all")
    assert everyone["treated"] + everyone["control"] == len(outcomes)


def test_report_of_the_run_shows_measured_against_true_lift(closed_loop_run, capsys):
    summary, out = closed_loop_run
    (out / "summary.json").write_bytes(orjson.dumps(summary))
    assert main(["report", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "true lift" in page and page.count("<svg") >= 5
    assert "report: " in capsys.readouterr().out
