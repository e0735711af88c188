"""``touchline sort``: an export sorted by customer rewritten in event-time order, so that a
replay with ``touchline run --input`` takes every event; the run's warning when it is not."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from exports import by_customer

from touchline.cli import main


@pytest.fixture(scope="module")
def orders(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sort") / "orders.jsonl"
    assert main(["simulate", "--repeat-purchase", "--contacts", "120", "--days", "120", "--seed", "4",
                 "--out", str(path)]) == 0
    return path


def _by_customer(orders: Path, out: Path) -> Path:
    """The orders sorted by customer, newest first, with a blank line and a junk line."""
    ordered = by_customer(orders.read_bytes().splitlines())
    out.write_bytes(b"\n".join([*ordered[:5], b"", b"{junk", *ordered[5:]]) + b"\n")
    return out


def test_sort_restores_the_time_order_and_keeps_junk_where_it_was(orders: Path, tmp_path: Path, capsys) -> None:
    shuffled = _by_customer(orders, tmp_path / "by_customer.jsonl")
    out = tmp_path / "sorted.jsonl"
    assert main(["sort", str(shuffled), "--out", str(out)]) == 0
    lines = out.read_bytes().splitlines()
    assert [line for line in lines if line != b"{junk"] == orders.read_bytes().splitlines()
    junk_after = orjson.loads(lines[lines.index(b"{junk") - 1])  # after the valid line before it
    assert junk_after == orjson.loads(shuffled.read_bytes().splitlines()[4])
    assert f"wrote {len(lines):,} lines of {shuffled} to {out} (reordered by event time)" in capsys.readouterr().err
    assert main(["sort", str(out), "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()
    assert "(already in event-time order, copied)" in capsys.readouterr().err


def test_a_run_on_an_export_sorted_by_customer_warns_and_a_sorted_one_takes_every_event(orders: Path, tmp_path: Path,
                                                                                       capsys) -> None:
    shuffled = _by_customer(orders, tmp_path / "by_customer.jsonl")
    assert main(["run", "--input", str(shuffled), "--out", str(tmp_path / "a"), "--no-metrics"]) == 0
    err = "".join(capsys.readouterr())  # the summary is on stdout
    assert "came late or far ahead of the event clock: is the input in event-time order?" in err
    assert "touchline sort FILE --out SORTED" in err
    out = tmp_path / "sorted.jsonl"
    assert main(["sort", str(shuffled), "--out", str(out)]) == 0
    assert main(["run", "--input", str(out), "--out", str(tmp_path / "b"), "--no-metrics"]) == 0
    assert "event-time order?" not in "".join(capsys.readouterr())
    dead = [orjson.loads(line) for line in (tmp_path / "b" / "dead_letters.jsonl").read_bytes().splitlines()]
    assert [d["reason"] for d in dead] == ["bad_json"]


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such file"), ("directory", "a directory, not a file of events"),
    ("itself", "is FILE itself"), ("no_dir", "no such directory"),
])
def test_bad_arguments_are_one_line_errors(orders: Path, tmp_path: Path, capsys, case: str, needle: str) -> None:
    source, out = {"missing": (tmp_path / "nope.jsonl", tmp_path / "o.jsonl"),
                   "directory": (tmp_path, tmp_path / "o.jsonl"),
                   "itself": (orders, orders),
                   "no_dir": (orders, tmp_path / "no" / "o.jsonl")}[case]
    before = orders.read_bytes()
    assert main(["sort", str(source), "--out", str(out)]) == 2
    assert needle in capsys.readouterr().err and orders.read_bytes() == before
