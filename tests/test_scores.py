"""``touchline scores`` (every known contact's lead and churn scores as of a time, as CSV) and
the scores in ``contact export``: from a replayed file, from the state stored in Redis (a real
redis-server), and the errors a user can run into."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from touchline.cli import main
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.events import Event, parse_event
from touchline.runner import run
from touchline.scores import COLUMNS, iso

DAY_MS = 86_400_000
SIM_START = 1767571200000  # 2026-01-05T00:00:00Z, the simulator's first day
#: the default champions: churn's is logreg as it comes, lead's has its own rate and a calibration map
CONFIGURED = ModelConfig(name="churn").version
LEAD_CONFIGURED = ModelConfig(name="lead", params={"learning_rate": 0.003}, calibration="platt").version


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    """A small simulated events file (80 contacts over 8 days)."""
    path = tmp_path_factory.mktemp("scores") / "events.jsonl"
    assert main(["simulate", "--out", str(path), "--contacts", "80", "--days", "8", "--malformed-rate", "0.01"]) == 0
    return path


def _events(path: Path) -> list[Event]:
    return [e for e in map(parse_event, path.read_bytes().splitlines()) if isinstance(e, Event)]


def _scores(*args: str, out: Path) -> dict[str, dict[str, str]]:
    assert main(["scores", *args, "--out", str(out)]) == 0
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    assert [r["contact_id"] for r in rows] == sorted(r["contact_id"] for r in rows)
    return {r["contact_id"]: r for r in rows}


def _lines_until(path: Path, at_ms: int) -> bytes:
    """The file's lines up to ``at_ms`` in event time (invalid lines kept), as the replay reads them."""
    keep = [line for line in path.read_bytes().splitlines()
            if not (isinstance(ev := parse_event(line), Event) and ev.ts_ms > at_ms)]
    return b"\n".join(keep) + b"\n"


def test_one_row_per_known_contact_from_a_replayed_file(events, tmp_path, capsys):
    evs = _events(events)
    at = max(e.ts_ms for e in evs) + DAY_MS
    rows = _scores("--at", iso(at), "--input", str(events), out=tmp_path / "scores.csv")
    assert set(rows) == {e.contact_id for e in evs if e.contact_id}
    for r in rows.values():
        for score in ("lead_score", "churn_score"):
            assert 0.0 <= float(r[score]) <= 1.0 and len(r[score].partition(".")[2]) <= 6
        assert (r["lead_model_version"], r["churn_model_version"]) == (LEAD_CONFIGURED, CONFIGURED)
    assert len({r["lead_score"] for r in rows.values()}) > 1  # the models learned: not all the same
    err = capsys.readouterr().err
    assert f"replayed {len(evs):,} events" in err and "0 later ones left out" in err
    assert f"wrote the scores of {len(rows):,} contacts as of {iso(at)}" in err


def test_an_earlier_time_sees_only_the_events_up_to_it(events, tmp_path):
    """As of a mid-file time: exactly the scores of a file cut at that time (a later event
    changes nothing), no contact first known after it, and other scores than at the end."""
    evs = _events(events)
    start, end = min(e.ts_ms for e in evs), max(e.ts_ms for e in evs)
    mid = start + (end - start) // 2
    early = _scores("--at", iso(mid), "--input", str(events), out=tmp_path / "mid.csv")
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(_lines_until(events, mid))
    assert _scores("--at", iso(mid), "--input", str(cut), out=tmp_path / "cut.csv") == early
    assert set(early) == {e.contact_id for e in evs if e.contact_id and e.ts_ms <= mid}
    late = _scores("--at", iso(end), "--input", str(events), out=tmp_path / "end.csv")
    assert set(early) < set(late)
    assert all(early[c]["churn_score"] != late[c]["churn_score"] for c in early)


def test_time_formats(events, tmp_path):
    """A date is its midnight UTC; an offset is honoured; ``now`` is the wall clock."""
    day = _scores("--at", "2026-01-09", "--input", str(events), out=tmp_path / "a.csv")
    assert day == _scores("--at", "2026-01-09T01:00:00+01:00", "--input", str(events), out=tmp_path / "b.csv")
    known = {e.contact_id for e in _events(events) if e.contact_id}
    assert set(_scores("--at", "now", "--input", str(events), out=tmp_path / "c.csv")) <= known


def test_contacts_forgotten_by_the_time_are_counted(events, tmp_path, capsys):
    """Long after the file, the engine has forgotten every contact (state.retention_days after
    its last activity): no rows, and stderr says how many and why."""
    config = tmp_path / "short.toml"
    config.write_text("[state]\nretention_days = 30\n")
    evs = _events(events)
    at = max(e.ts_ms for e in evs) + 60 * DAY_MS
    capsys.readouterr()
    assert _scores("--at", iso(at), "--input", str(events), "--config", str(config), out=tmp_path / "x.csv") == {}
    err = capsys.readouterr().err
    known = {e.contact_id for e in evs if e.contact_id}
    assert f"{len(known):,} contact(s) of the events up to {iso(at)} had no state left by then" in err
    assert "state.retention_days = 30 after its last activity" in err


def test_stdout(events, capsys):
    assert main(["scores", "--at", "2026-01-09", "--input", str(events), "--out", "-"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ",".join(COLUMNS) and len(out) > 1


# ------------------------------------------------------------------ Redis
@pytest.fixture
def stored(redis_url, small_settings) -> tuple[str, Path]:
    """A simulated run whose state and models are in Redis; the events it was given."""
    settings = small_settings("redis-run", **{"state.url": redis_url, "simulator.contacts": 80,
                                              "simulator.days": 8})
    result = run(settings, progress=None, registry=CollectorRegistry())
    return redis_url, Path(result.summary["outputs"]["events"])


def _stored_last_ts(url: str) -> dict[str, int]:
    """Each known contact's stored as-of time."""
    from touchline.scores import _stored_profiles
    from touchline.state import open_store

    store = open_store(url)
    try:
        return {p.key: p.last_ts for p in _stored_profiles(store)}  # type: ignore[arg-type]
    finally:
        store.close()


def test_stored_profiles_score_with_the_engine_models(stored, tmp_path, capsys):
    """From Redis, with the run's checkpointed champions: the same scores as replaying the
    events the run was given (the same models learned the same labels)."""
    url, recorded = stored
    last = _stored_last_ts(url)
    at = SIM_START + 8 * DAY_MS  # where the run's clock ended: the same timers fired
    assert max(last.values()) <= at
    rows = _scores("--at", iso(at), "--redis", url, out=tmp_path / "redis.csv")
    assert set(rows) == set(last)
    err = capsys.readouterr().err
    assert "deployment revision 1" in err and "labels from its checkpoint" in err and "untrained" not in err
    replayed = _scores("--at", iso(at), "--input", str(recorded), out=tmp_path / "file.csv")
    assert rows == replayed


def test_stored_profiles_newer_than_the_time_are_skipped_and_counted(stored, tmp_path, capsys):
    url, _ = stored
    last = sorted(_stored_last_ts(url).values())
    at = last[len(last) // 2]
    rows = _scores("--at", iso(at), "--redis", url, out=tmp_path / "half.csv")
    newer = sum(ts > at for ts in last)
    assert len(rows) == len(last) - newer and newer > 0
    assert f"skipped {newer:,} stored contact(s) have state newer than {iso(at)}" in capsys.readouterr().err
    out = tmp_path / "none.csv"
    assert main(["scores", "--at", iso(last[0] - 1), "--redis", url, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"touchline: {len(last):,} stored contact(s) have state newer than" in err and "nothing to write" in err
    assert not out.exists()


def test_contact_export_shows_the_current_scores(stored, tmp_path, capsys):
    """The export's scores are the contact's as of its state, by the models ``scores`` uses."""
    url, _ = stored
    contact, ts = sorted(_stored_last_ts(url).items())[0]
    capsys.readouterr()
    assert main(["contact", "export", contact, "--redis", url]) == 0
    exported = orjson.loads(capsys.readouterr().out)
    row = _scores("--at", iso(ts), "--redis", url, out=tmp_path / "one.csv")[contact]
    assert exported["scores"] == {
        "as_of": iso(ts),
        "lead": {"score": float(row["lead_score"]), "model_version": row["lead_model_version"]},
        "churn": {"score": float(row["churn_score"]), "model_version": row["churn_model_version"]}}
    assert exported["profile"]["events_total"] > 0


# ------------------------------------------------------------------ errors
def _error(capsys, *args: str) -> tuple[int, str]:
    """Exit code and stderr of a failing command: one line, never a traceback."""
    code = main(["scores", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


@pytest.mark.parametrize("at", ["March 1st", "2026-13-01", ""])
def test_a_bad_time_is_refused(events, tmp_path, capsys, at):
    code, err = _error(capsys, "--at", at, "--input", str(events), "--out", str(tmp_path / "x.csv"))
    assert code == 2 and f"--at {at!r}: not a time; use ISO-8601" in err


def test_missing_input_and_no_source(tmp_path, capsys):
    code, err = _error(capsys, "--at", "now", "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x.csv"))
    assert code == 2 and "nope.jsonl: no such file" in err
    code, err = _error(capsys, "--at", "now", "--out", str(tmp_path / "x.csv"))
    assert code == 2 and "pass --input FILE (replay it) or --redis URL" in err


def test_redis_down(tmp_path, capsys):
    from redis_servers import free_port

    code, err = _error(capsys, "--at", "now", "--redis", f"redis://127.0.0.1:{free_port()}/0",
                       "--out", str(tmp_path / "x.csv"))
    assert code == 1 and "cannot reach Redis at redis://127.0.0.1:" in err


def test_an_unwritable_out_fails_before_the_replay(events, tmp_path, capsys):
    for out in (tmp_path, events / "x.csv"):  # a directory; a path under a file
        code, err = _error(capsys, "--at", "now", "--input", str(events), "--out", str(out))
        assert code == 1 and f"touchline: error: --out {out}: cannot write there" in err


def test_input_and_redis_together_are_a_usage_error(events, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["scores", "--at", "now", "--input", str(events), "--redis", "redis://x", "--out", "-"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_the_csv_is_replaced_whole(events, tmp_path):
    """An existing file is replaced by the new one (through a temporary file: none left behind)."""
    out = tmp_path / "scores.csv"
    out.write_text("old\n")
    _scores("--at", "2026-01-09", "--input", str(events), out=out)
    assert out.read_text().startswith("contact_id,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "scores.dead_letters.jsonl"]  # no temporary


def test_every_primary_of_a_cluster_is_read(redis_cluster_url, tmp_path, capsys):
    """Profiles spread over a 3-primary Cluster are all scored (anonymous visitors are not
    contacts); with no deployment stored yet, the configured models score, untrained, and say so."""
    from touchline.decisions.profile import Profile, anonymous_key
    from touchline.state import open_store

    store = open_store(redis_cluster_url)
    at = SIM_START + DAY_MS
    store.save({**{f"c{i}": Profile(f"c{i}", known=True, last_ts=at - i, events_total=1) for i in range(30)},
                anonymous_key("a1"): Profile(anonymous_key("a1"), last_ts=at, events_total=1)})
    store.close()
    rows = _scores("--at", iso(at), "--redis", redis_cluster_url, out=tmp_path / "cluster.csv")
    assert set(rows) == {f"c{i}" for i in range(30)}
    err = capsys.readouterr().err
    assert "no deployment stored yet, the configured models" in err and "untrained: no checkpoint" in err


def test_contacts_whose_every_event_was_refused_are_told_apart_from_forgotten_ones(tmp_path, capsys):
    """A contact whose only event is before engine.min_event_time was never taken, not forgotten."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"event_id":"x1","type":"page_view","ts":1000,"contact_id":"old"}\n'
                     b'{"event_id":"x2","type":"page_view","ts":"2026-01-01T00:00:00Z","contact_id":"new"}\n')
    assert set(_scores("--at", "2026-02-01", "--input", str(path), "--no-derive", out=tmp_path / "s.csv")) == {"new"}
    err = capsys.readouterr().err
    assert "1 invalid lines skipped: 1 before_floor" in err and "had no state left" not in err
    assert "1 contact(s) of the events up to 2026-02-01T00:00:00Z had none of their events taken" in err


def test_a_directory_is_not_an_input(tmp_path, capsys):
    assert main(["scores", "--at", "2026-02-01", "--input", str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "a directory, not a file of events" in capsys.readouterr().err


def test_refused_lines_are_written_with_their_reason_and_the_files_line(tmp_path, capsys):
    """A file out of time order is replayed in time order, yet each refused line is named by
    its line in the file, beside the CSV (or where --dead-letters says); on stdout, only the count."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"event_id":"x1","type":"page_view","ts":"2026-01-05T00:00:00Z","contact_id":"c1"}\n'
                     b'not json\n'
                     b'{"event_id":"x2","type":"page_view","ts":"2026-01-01T00:00:00Z","contact_id":"c2"}\n'
                     b'\n'
                     b'{"event_id":"x3","type":"page_view","ts":"2026-01-02T00:00:00Z"}\n')
    _scores("--at", "2026-02-01", "--input", str(path), "--no-derive", out=tmp_path / "s.csv")
    dead = [orjson.loads(line) for line in (tmp_path / "s.dead_letters.jsonl").read_bytes().splitlines()]
    assert sorted((d["source"], d["reason"], d["raw"][:8]) for d in dead) == [
        ("e.jsonl:2", "bad_json", "not json"), ("e.jsonl:5", "missing_identity", '{"event_')]
    assert "wrote the 2 refused line(s), each with its reason and line" in capsys.readouterr().err
    _scores("--at", "2026-02-01", "--input", str(path), "--no-derive", "--dead-letters", str(tmp_path / "d" / "x.jsonl"),
            out=tmp_path / "t.csv")
    assert len((tmp_path / "d" / "x.jsonl").read_bytes().splitlines()) == 2
    assert main(["scores", "--at", "2026-02-01", "--input", str(path), "--no-derive", "--out", "-"]) == 0
    assert "2 refused line(s) not kept: add --dead-letters FILE" in capsys.readouterr().err
    code, err = _error(capsys, "--at", "now", "--redis", "redis://127.0.0.1:1/0", "--dead-letters", "x.jsonl",
                       "--out", str(tmp_path / "u.csv"))
    assert code == 2 and "--dead-letters goes with --input" in err
