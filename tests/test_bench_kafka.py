"""``touchline bench --kafka --processes`` and the restart catch-up measurement, with tiny
numbers, on a real Tansu broker and a real redis-server (engine processes of their own)."""

from __future__ import annotations

import re

from touchline.catchup import format_catchup, run_catchup
from touchline.cli import main
from touchline.settings import load_settings

NUMBER = r"[\d,]+(?:\.\d+)?"


def _columns(output: str, label: str) -> list[str]:
    line = next((ln for ln in output.splitlines() if ln.strip().startswith(label)), None)
    assert line is not None, f"no {label!r} row in:\n{output}"
    return line.strip()[len(label):].split()


def test_bench_processes_1_and_2_side_by_side(kafka_broker, redis_url, capsys):
    code = main(["bench", "--kafka", kafka_broker.bootstrap, "--redis", redis_url, "--processes", "1,2",
                 "--rate", "300", "--seconds", "2", "--contacts", "200"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^\s+1 process\s+2 processes$", out, re.M), out  # one column per process count
    produced = [int(v.replace(",", "")) for v in _columns(out, "events produced")]
    assert produced == [600, 600]
    read = [int(v.replace(",", "")) for v in _columns(out, "lines read by the engine")]
    assert read == produced, out  # nothing lost, under 1 process and under 2
    rates = _columns(out, "events/s end to end")
    assert len(rates) == 2 and all(re.fullmatch(NUMBER, r) and float(r.replace(",", "")) > 0 for r in rates), out
    for label in ("event->decision p50 (ms)", "event->decision p99 (ms)"):
        assert all(re.fullmatch(NUMBER, v) for v in _columns(out, label)), out
    cpu0 = " ".join(_columns(out, "process 0 CPU s (% of a core)"))
    assert len(re.findall(rf"{NUMBER} \(\d+%\)", cpu0)) == 2, out  # process 0 in both rounds
    cpu1 = _columns(out, "process 1 CPU s (% of a core)")
    assert cpu1[0] == "-" and re.fullmatch(rf"{NUMBER} \(\d+%\)", " ".join(cpu1[1:])), out  # only with 2
    per_process = [int(v.replace(",", "")) for v in _columns(out, "process 1 lines read")[1:]]
    assert per_process and 0 < per_process[0] < 600  # the partitions are spread over both processes


def test_catchup_with_recovery_rereads_far_less_than_without(kafka_broker, redis_url):
    settings = load_settings(None, {"simulator.contacts": 200})
    figures = run_catchup(settings, kafka_broker.bootstrap, [1500], redis_url=redis_url, extra=200)
    (row,) = figures["rows"]
    with_rec, without = row["with_recovery"]["restart"], row["without_recovery"]["restart"]
    assert without["re_read"] == 1500  # from offset 0: every old event again
    assert with_rec["re_read"] * 10 <= without["re_read"], (with_rec, without)
    assert with_rec["resumed_partitions"] == 3 and without["resumed_partitions"] == 0
    # the old events were recognised by their ids; the new ones were processed, in both cases
    assert without["duplicates_ignored"] >= 1400
    assert with_rec["lines_read"] >= 200 and without["lines_read"] >= 1700
    text = format_catchup(figures)
    assert re.search(r"^\s+1,500 \|", text, re.M), text
