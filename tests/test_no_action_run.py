"""No-action records end to end: a simulated run writes one for each decision point where
every candidate was held back (and only those), the sampled share picks the same points on
every run, the decisions output is untouched by it, and ``touchline why`` reads both outputs."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from touchline.cli import main
from touchline.run_command import save_summary
from touchline.decisions.no_action import no_action_id, sampled
from touchline.runner import run
from touchline.settings import ConfigError, load_settings

#: Every reason a candidate can be held back for (the codes touchline_suppressions_total counts).
REASONS = {"holdout", "unreachable", "bounced", "no_consent", "quiet_hours", "cooldown", "channel_cap",
           "global_cap", "arbitration", "cap_reserved_elsewhere"}


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _run(out: Path, share: float | None = None) -> tuple[dict, CollectorRegistry]:
    overrides = {"simulator.contacts": 250, "simulator.days": 14, "output.dir": out, "metrics.enabled": False,
                 "policy.holdout_share": 0.1}
    if share is not None:
        overrides["audit.no_action_share"] = share
    registry = CollectorRegistry()
    settings = load_settings(None, overrides)
    summary = run(settings, progress=None, registry=registry).summary
    save_summary(settings, summary)  # as `touchline run` does: why reads the share from it
    return summary, registry


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same simulated run three times: every no-action point recorded (the default), a
    30% sample, none."""
    base = tmp_path_factory.mktemp("no-actions")
    return {share: (base / f"share-{share}", *_run(base / f"share-{share}", share)) for share in (None, 0.3, 0.0)}


def test_every_point_that_sent_nothing_is_recorded_with_each_candidate_and_reason(runs):
    out, summary, registry = runs[None]
    records = _read(out / "no_actions.jsonl")
    decisions = _read(out / "decisions.jsonl")
    assert summary["no_actions"] == {"points": len(records), "recorded": len(records), "share": 1.0}
    assert len(records) > 100
    assert registry.get_sample_value("touchline_no_action_points_total", {"recorded": "true"}) == len(records)
    assert registry.get_sample_value("touchline_no_action_points_total", {"recorded": "false"}) is None
    for r in records:
        assert r["kind"] == "no_action" and r["candidates"] and r["trigger"]["kind"] in ("event", "timer")
        assert all(c["reason"] in REASONS and c["action"] and c["channel"] and c["why"] for c in r["candidates"])
        assert r["no_action_id"] == no_action_id(r["contact_id"], _trigger_id(r))
    assert len({r["no_action_id"] for r in records}) == len(records)
    # a point that sent nothing has no decision: no record shares a contact and trigger with a decision
    decided = {(d["contact_id"], _trigger_id(d)) for d in decisions}
    assert not decided & {(r["contact_id"], _trigger_id(r)) for r in records}
    # the reasons are the ones counted; every reason that held back a whole point shows up
    held = Counter(c["reason"] for r in records for c in r["candidates"])
    assert set(held) >= {"unreachable", "no_consent", "holdout"}
    assert all(held[reason] <= summary["suppressed"][reason] for reason in held)
    holdout = [r for r in records if r["holdout"]]
    assert holdout and all(c["reason"] == "holdout" for r in holdout for c in r["candidates"])
    assert any("would_send" in r for r in holdout)
    anonymous = [r for r in records if "anonymous_id" in r]
    assert anonymous and all(r["contact_id"] == "anon:" + r["anonymous_id"] for r in anonymous)


def _trigger_id(record: dict) -> str:
    t = record["trigger"]
    return t["event_id"] if t["kind"] == "event" else f"timer:{t['timer']}:{record['event_time_ms']}"


def test_a_sampled_share_records_the_same_points_on_every_run_and_leaves_decisions_alone(runs):
    full_dir, _, _ = runs[None]
    sample_dir, summary, registry = runs[0.3]
    none_dir, none_summary, _ = runs[0.0]
    full = _read(full_dir / "no_actions.jsonl")
    sample = _read(sample_dir / "no_actions.jsonl")
    assert sample == [r for r in full if sampled(r["no_action_id"], 0.3)]
    assert 0.2 < len(sample) / len(full) < 0.4
    assert summary["no_actions"] == {"points": len(full), "recorded": len(sample), "share": 0.3}
    assert registry.get_sample_value("touchline_no_action_points_total", {"recorded": "false"}) == len(full) - len(sample)
    assert (none_dir / "no_actions.jsonl").read_bytes() == b""
    assert none_summary["no_actions"] == {"points": len(full), "recorded": 0, "share": 0.0}
    decisions = {(d / "decisions.jsonl").read_bytes() for d in (full_dir, sample_dir, none_dir)}
    assert len(decisions) == 1  # the audit never changes a decision


def test_a_new_run_does_not_keep_an_older_runs_records(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "no_actions.jsonl").write_text('{"contact_id": "stale"}\n')
    _run(out, 0.0)
    assert (out / "no_actions.jsonl").read_bytes() == b""


def test_the_share_must_be_between_0_and_1():
    with pytest.raises(ConfigError, match=r"audit\.no_action_share"):
        load_settings(None, {"audit.no_action_share": 1.5})
    with pytest.raises(ConfigError, match=r"audit\.no_action_shar"):
        load_settings(None, {"audit.no_action_shar": 0.5})


# ------------------------------------------------------------------------------ touchline why
def _contact_with_both(out: Path) -> str:
    """A known contact with decisions and no-action records."""
    sent = {d["contact_id"] for d in _read(out / "decisions.jsonl")}
    counts = Counter(r["contact_id"] for r in _read(out / "no_actions.jsonl") if r["contact_id"] in sent)
    return counts.most_common(1)[0][0]


def test_why_shows_decisions_and_non_decisions_in_time_order(runs, capsys):
    out = runs[None][0]
    contact = _contact_with_both(out)
    assert main(["why", contact, "--out", str(out), "--limit", "1000"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"{contact}: ") and "decision point" in lines[0] and "oldest first" in lines[0]
    entries = [line for line in lines if line[:4] == "2026"]
    kinds = {line.split()[2] for line in entries}
    assert kinds == {"SENT", "NOTHING"}
    assert [line[:20] for line in entries] == sorted(line[:20] for line in entries)
    mine = [r for r in _read(out / "no_actions.jsonl") if r["contact_id"] == contact]
    folded = [re.search(r"\(x(\d+) since ", line) for line in entries if line.split()[2] == "NOTHING"]
    assert sum(int(m.group(1)) if m else 1 for m in folded) == len(mine)
    for c in mine[0]["candidates"]:
        assert f"held back  {c['action']}/{c['channel']}: {c['reason']}" in text


def test_why_limit_and_json(runs, capsys):
    out = runs[None][0]
    contact = _contact_with_both(out)
    assert main(["why", contact, "--out", str(out), "--json", "--limit", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["query"] == contact and contact in doc["contact_ids"] and doc["shown"] == 3 < doc["total"]
    assert len(doc["records"]) == 3 and {r["kind"] for r in doc["records"]} <= {"decision", "no_action"}
    times = [r["decision_time_ms"] for r in doc["records"]]
    assert times == sorted(times)
    everything = [r for r in _read(out / "decisions.jsonl") + _read(out / "no_actions.jsonl")
                  if r["contact_id"] in doc["contact_ids"] or r.get("anonymous_id") in doc["anonymous_ids"]]
    assert doc["total"] == len(everything)
    assert max(times) == max(r["decision_time_ms"] for r in everything)  # the most recent ones


def test_why_links_an_anonymous_id_to_its_contact_through_the_events(runs, capsys):
    """A visitor's records before its signup are under its anonymous id; after the link they
    are the contact's. Asked by either id, why shows both."""
    out = runs[None][0]
    records = _read(out / "no_actions.jsonl")
    links = {}
    for line in (out / "events.jsonl").read_bytes().splitlines():
        if b'"anonymous_id"' in line and b'"contact_id"' in line:
            try:
                e = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(e, dict) and isinstance(e.get("anonymous_id"), str):
                links.setdefault(e["anonymous_id"], e.get("contact_id"))
    anon = next(r["anonymous_id"] for r in records if r.get("anonymous_id") in links)
    contact = links[anon]
    assert main(["why", anon, "--out", str(out), "--json", "--limit", "1000"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["contact_ids"] == [contact] and anon in doc["anonymous_ids"]
    shown = {r["contact_id"] for r in doc["records"]}
    assert f"anon:{anon}" in shown
    assert main(["why", f"anon:{anon}", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"is an anonymous id linked to contact {contact}" in text
    assert main(["why", contact, "--out", str(out), "--json", "--limit", "1000"]) == 0
    assert f"anon:{anon}" in {r["contact_id"] for r in json.loads(capsys.readouterr().out)["records"]}


def test_why_without_the_events_file_says_anonymous_ids_are_not_linked(runs, capsys):
    out = runs[None][0]
    contact = _contact_with_both(out)
    assert main(["why", contact, "--decisions", str(out / "decisions.jsonl"),
                 "--no-actions", str(out / "no_actions.jsonl")]) == 0
    assert "anonymous ids are not linked to contacts: no events file (pass --events FILE" in capsys.readouterr().out


def test_why_of_a_sampled_run_says_it_is_a_sample(runs, capsys):
    out = runs[0.3][0]
    contact = _contact_with_both(out)
    assert main(["why", contact, "--out", str(out)]) == 0
    assert "no-action records are a sample: audit.no_action_share was 0.3" in capsys.readouterr().out


def test_why_of_an_unknown_contact_says_where_it_looked(runs, capsys):
    out = runs[None][0]
    assert main(["why", "nobody-here", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("touchline why: no records found for 'nobody-here' in ")
    assert str(out / "decisions.jsonl") in err and str(out / "no_actions.jsonl") in err
    assert str(out / "events.jsonl") in err


def test_why_errors_name_the_missing_input(tmp_path, capsys):
    assert main(["why", "c1", "--decisions", str(tmp_path / "nope.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"touchline why: --decisions {tmp_path / 'nope.jsonl'}: no such file"
    assert main(["why", "c1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no records to read: neither" in err and str(tmp_path / "decisions.jsonl") in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["why", "c1", "--limit", "0"])
    assert exc.value.code == 2 and "--limit: must be at least 1" in capsys.readouterr().err
    assert main(["why", "c1", "--no-actions", str(tmp_path)]) == 2  # a directory is not a file
    assert "no such file" in capsys.readouterr().err


def test_why_reads_an_older_run_without_no_action_records_and_skips_bad_lines(tmp_path, capsys):
    decision = {"decision_id": "d1", "contact_id": "c1", "action": "welcome", "channel": "email",
                "reasons": ["signed up"], "suppressed": [], "trigger": {"kind": "event", "type": "signup",
                                                                         "event_id": "e1"},
                "decision_time": "2026-01-05T10:00:00.000Z", "decision_time_ms": 1767607200000,
                "event_time_ms": 1767607200000}
    (tmp_path / "decisions.jsonl").write_bytes(orjson.dumps(decision) + b'\n{"contact_id": "c1", trunc\n')
    assert main(["why", "c1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "c1: 1 decision (oldest first)"
    assert "no no-action records: " in text and "no_actions.jsonl does not exist" in text
    assert "1 line(s) that are not JSON objects skipped (first at line 2)" in text
    assert "2026-01-05 10:00:00Z  SENT     welcome by email (signed up)  [event signup e1]" in text


def test_why_after_a_kafka_run_says_where_the_records_went(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"outputs": {
        "decisions": "kafka topic t.decisions", "no-action records": "kafka topic t.no-actions"}}))
    assert main(["why", "c1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no records to read" in err and "the run wrote its decisions to kafka topic t.decisions" in err
    (tmp_path / "decisions.jsonl").write_text("")
    (tmp_path / "summary.json").write_text(json.dumps({"outputs": {
        "decisions": str(tmp_path / "decisions.jsonl"), "no-action records": "kafka topic t.no-actions"}}))
    assert main(["why", "c1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "the run wrote its no-action records to kafka topic t.no-actions: pass its records as a JSONL file " \
           "(--no-actions FILE)" in err


def test_why_folds_a_run_of_alike_points_into_one_block(tmp_path, capsys):
    """A journey step deferred hour after hour is one block saying how often and since when,
    with the latest deferral; a decision between two runs keeps them apart."""
    def point(hour: int, until: int) -> dict:
        ms = 1767600000000 + hour * 3_600_000
        return {"kind": "no_action", "contact_id": "c1", "holdout": False, "decision_time_ms": ms,
                "decision_time": f"2026-01-05T{hour:02d}:00:00.000Z", "trigger": {"kind": "timer", "timer": "journey:w"},
                "candidates": [{"action": "w.2", "channel": "email", "reason": "channel_cap", "journey": "w", "step": "2",
                                "why": "journey w, step 2", "journey_step": f"deferred to {until}"}]}
    sent = {"contact_id": "c1", "action": "w.2", "channel": "email", "reasons": ["journey w, step 2"],
            "journey": "w", "step": "2", "trigger": {"kind": "timer", "timer": "journey:w"},
            "decision_time": "2026-01-05T04:00:00.000Z", "decision_time_ms": 1767600000000 + 4 * 3_600_000}
    (tmp_path / "no_actions.jsonl").write_bytes(b"".join(orjson.dumps(point(h, h + 1)) + b"\n" for h in (1, 2, 3, 5)))
    (tmp_path / "decisions.jsonl").write_bytes(orjson.dumps(sent) + b"\n")
    assert main(["why", "c1", "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("2026")]
    assert lines == [
        "2026-01-05 03:00:00Z  NOTHING  every candidate held back  [timer journey:w]  (x3 since 2026-01-05 01:00:00Z)",
        "2026-01-05 04:00:00Z  SENT     w.2 by email (journey w, step 2)  [timer journey:w]",
        "2026-01-05 05:00:00Z  NOTHING  every candidate held back  [timer journey:w]"]


def test_erasing_outputs_removes_no_action_records_by_contact_and_by_anonymous_id(runs, tmp_path):
    """``contact erase ID --outputs DIR`` passes the contact id and its anonymous ids: a visitor's
    records name it only as ``anon:<id>`` in contact_id, so they carry ``anonymous_id`` as well."""
    from touchline.erasure_outputs import rewrite_without

    records = _read(runs[None][0] / "no_actions.jsonl")
    anon = next(r for r in records if "anonymous_id" in r)
    known = next(r for r in records if "anonymous_id" not in r)
    (tmp_path / "no_actions.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    removed = rewrite_without(tmp_path, [known["contact_id"], anon["anonymous_id"]])
    left = _read(tmp_path / "no_actions.jsonl")
    assert removed == {tmp_path / "no_actions.jsonl": len(records) - len(left)}
    assert not [r for r in left if r["contact_id"] in (known["contact_id"], anon["contact_id"])]


def test_why_survives_records_of_the_wrong_shape(tmp_path, capsys):
    """A hand-edited or foreign file: odd values print as they are, never a traceback."""
    odd = [{"contact_id": ["c1"]}, {"contact_id": "c1", "kind": "no_action", "candidates": ["junk", 3],
                                    "scores": [1], "trigger": "x", "would_send": "y", "holdout": True},
           {"contact_id": "c1", "kind": "no_action", "candidates": {"a": 1}, "decision_time": 5},
           {"contact_id": "c1", "suppressed": [None], "reasons": "signed up", "decision_time_ms": "soon"}]
    (tmp_path / "no_actions.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in odd[:3]))
    (tmp_path / "decisions.jsonl").write_bytes(orjson.dumps(odd[3]) + b"\n")
    assert main(["why", "c1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "c1: 1 decision and 2 decision points that sent nothing (oldest first)"
    assert "NOTHING  in the holdout  [trigger unknown]" in out
    assert main(["why", "c1", "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 3
