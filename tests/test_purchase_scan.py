"""``touchline scores --input FILE`` derives the churn set-up from a file of purchases
(touchline/purchase_scan.py): the scan, the keys the user set, the CLI's announcement."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from exports import by_customer

from touchline.cli import main
from touchline.decisions.purchase_setup import DAY_MS
from touchline.purchase_scan import derived_settings, explicit_keys, scan_file
from touchline.settings import load_settings

START = 1735689600000  # 2025-01-01T00:00:00Z


def _write(path: Path, events: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def _purchase(i: int, contact: str, day: float) -> dict:
    return {"event_id": f"e{i}", "type": "purchase", "ts": START + int(day * DAY_MS), "contact_id": contact}


@pytest.fixture(scope="module")
def orders(tmp_path_factory) -> Path:
    """A simulated repeat-purchase population: purchases only."""
    path = tmp_path_factory.mktemp("orders") / "orders.jsonl"
    assert main(["simulate", "--repeat-purchase", "--contacts", "300", "--days", "200", "--seed", "3",
                 "--out", str(path)]) == 0
    return path


def test_the_scan_skips_what_the_replay_skips(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.jsonl", [_purchase(1, "a", 0), _purchase(2, "a", 10), _purchase(3, "a", 40)])
    with path.open("ab") as fh:
        fh.write(b"not json\n\n" + orjson.dumps({"event_id": "x", "type": "purchase", "ts": 1, "contact_id": "a"})
                 + b"\n")  # 1970: before engine.min_event_time
    scan = scan_file(path, START + 20 * DAY_MS, START - DAY_MS)
    assert (scan.events, scan.purchases, dict(scan.gaps)) == (2, 2, {10: 1})  # day 40 is after TIME


def test_keys_set_in_a_file_or_the_environment_count_as_set(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[labels]\nchurn_horizon_days = 7\n[models.churn]\nestimator = \"logreg\"\n")
    assert explicit_keys(load_settings(None)) == frozenset()
    monkeypatch.setenv("TOUCHLINE_STATE__RETENTION_DAYS", "730")  # set, to the default value
    keys = explicit_keys(load_settings(config))
    assert {"labels.churn_horizon_days", "models.churn.estimator", "state.retention_days"} <= keys
    assert "labels.churn_returns" not in keys


def test_derived_settings_keep_the_file_and_the_flags(tmp_path: Path, orders: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[labels]\nchurn_horizon_days = 30\n[models.lead]\nestimator = \"hat\"\n")
    settings = load_settings(config, {"source.batch_size": 64})
    got, lines = derived_settings(settings, orders, START + 400 * DAY_MS, config, {"source.batch_size": 64})
    assert got.labels.churn_horizon_days == 30 and got.labels.churn_returns == ["purchase"]
    assert got.models.churn.estimator == "bgnbd_logreg" and got.models.churn.params["horizon_days"] == 30
    assert got.models.lead.estimator == "hat" and got.source.batch_size == 64
    assert "  kept as you set them: labels.churn_horizon_days" in lines


def test_an_empty_file_derives_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    settings = load_settings(None)
    got, lines = derived_settings(settings, empty, START, None, {})
    assert got is settings and "nothing to derive from" in lines[0]


def _rows(out: Path) -> list[dict[str, str]]:
    with out.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_scores_applies_and_announces_the_derived_set_up(orders: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.csv"
    assert main(["scores", "--at", "2026-07-01", "--input", str(orders), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "is purchase data (100% of the known contacts'" in err
    horizon = int(err.split("labels.churn_horizon_days = ")[1].split()[0])
    assert f"   (3 median gaps of {horizon // 3} days between purchase days" in err
    for line in ('labels.churn_returns = ["purchase"]', 'labels.churn_observations = "random_times"',
                 'models.churn.estimator = "bgnbd_logreg"', "models.churn.params = { dropout_at_first_purchase = true }",
                 "to keep the defaults pass --no-derive"):
        assert line in err
    assert "churn: BG/NBD population fitted on the purchase summaries of" in err
    expected = load_settings(None, {"labels.churn_horizon_days": horizon, "labels.churn_returns": ["purchase"],
                                    "labels.churn_observations": "random_times",
                                    "models.churn.estimator": "bgnbd_logreg",
                                    "models.churn.params": {"dropout_at_first_purchase": True}}).models.churn.version
    rows = _rows(out)
    assert rows and {r["churn_model_version"] for r in rows} == {expected}
    assert len({r["churn_score"] for r in rows}) > 10  # ranked, not one value


def test_no_derive_keeps_the_defaults(orders: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.csv"
    assert main(["scores", "--at", "2026-07-01", "--input", str(orders), "--out", str(out), "--no-derive"]) == 0
    err = capsys.readouterr().err
    assert "churn set-up" not in err and "derived" not in err
    assert {r["churn_model_version"].split("-")[0] for r in _rows(out)} == {"logreg"}


def test_scores_on_clickstream_keeps_the_defaults_and_says_why(tmp_path: Path, capsys) -> None:
    events = tmp_path / "clicks.jsonl"
    assert main(["simulate", "--out", str(events), "--contacts", "40", "--days", "3"]) == 0
    capsys.readouterr()
    out = tmp_path / "s.csv"
    assert main(["scores", "--at", "2027-01-01", "--input", str(events), "--out", str(out)]) == 0
    assert "is not purchase data (purchases are " in capsys.readouterr().err
    assert {r["churn_model_version"].split("-")[0] for r in _rows(out)} == {"logreg"}


def _by_customer(orders: Path, out: Path) -> Path:
    """The same orders as an export sorted by customer (a customer's newest first, as some systems
    list them), with blank lines, junk and one event from the year 9999 mixed in."""
    lines = [line for line in orders.read_bytes().splitlines() if line.strip()]
    far = orjson.dumps({"event_id": "far", "type": "purchase", "ts": "9999-12-31T23:59:59Z", "contact_id": "c-far"})
    out.write_bytes(b"\n".join([b"", b"{not json", far, *by_customer(lines), b"   ", b"[1, 2]"]) + b"\n")
    return out


def test_an_export_sorted_by_customer_scores_as_the_same_events_sorted_by_time(orders: Path, tmp_path: Path,
                                                                               capsys) -> None:
    """A stream would find each next customer's old purchases late; the replay reads the file
    first and goes in event-time order, so every customer is scored, exactly as from the file in
    time order, and the derived set-up is the same."""
    assert len({orjson.loads(line)["ts"] for line in orders.read_bytes().splitlines()}) == len(
        orders.read_bytes().splitlines())  # no two events at one time: the order is fully determined
    sorted_by_customer = _by_customer(orders, tmp_path / "by_customer.jsonl")
    by_time, by_customer = tmp_path / "t.csv", tmp_path / "c.csv"
    assert main(["scores", "--at", "2026-07-01", "--input", str(orders), "--out", str(by_time)]) == 0
    in_time_order = capsys.readouterr().err
    assert main(["scores", "--at", "2026-07-01", "--input", str(sorted_by_customer), "--out", str(by_customer)]) == 0
    err = capsys.readouterr().err
    assert by_customer.read_bytes() == by_time.read_bytes()
    assert "in event-time order (the file is not) (1 later ones left out, 2 invalid lines skipped: 1 bad_json, 1 not_object)" in err
    assert "not scored" not in err
    derived = [line for line in err.splitlines() if line.startswith("  labels.")]
    assert derived and derived == [line for line in in_time_order.splitlines() if line.startswith("  labels.")]
