"""``touchline bench --kafka --processes``, ``--compare`` and the restart catch-up measurement,
with tiny numbers, on a real Tansu broker and a real redis-server (engine processes of their own)."""

from __future__ import annotations

import re

import orjson

from touchline.bench_compare import format_compare
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


def test_compare_runs_the_three_pipelines_over_every_event(kafka_broker, redis_url, capsys):
    code = main(["bench", "--kafka", kafka_broker.bootstrap, "--redis", redis_url, "--compare", "--events", "1500",
                 "--contacts", "200", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    figures = orjson.loads(out)
    assert figures["events"] == 1500 and set(figures["runs"]) == {"naive", "batched", "touchline"}
    for name, run in figures["runs"].items():
        assert run["consumed"] == 1500, (name, run)  # every event of the topic, by each of the three
        assert run["exit_code"] == 0 and run["decisions"] > 0 and run["events_per_second"] > 0, (name, run)
        assert run["processing_ms"]["p50"] <= run["processing_ms"]["p99"], (name, run)
        assert run["peak_rss_mb"] > 0 and run["cpu_seconds"] > 0 and run["redis_bytes"] > 0, (name, run)
        assert run["redis_cpu_seconds"] > 0 and run["events_per_cpu_second"] > 0, (name, run)
    naive, batched, engine = (figures["runs"][name] for name in ("naive", "batched", "touchline"))
    assert naive["invalid"] == batched["invalid"] > 0  # the simulator's malformed lines, skipped by both loops
    assert engine["invalid"] >= naive["invalid"]  # the engine dead-letters at least those
    ratios = figures["ratios"]
    for name, loop in (("naive", naive), ("batched", batched)):
        for key, suffix in (("events_per_second", ""), ("events_per_cpu_second", "_per_cpu_second")):
            assert ratios[f"touchline_over_{name}{suffix}"] == round(engine[key] / loop[key], 2), (name, key)
    text = format_compare(figures)
    assert "one process, batch size 100 (up to 1,000 while behind)" in text, text
    assert re.search(r"^\s+naive loop\s+hand-batched\s+touchline$", text, re.M), text
    assert [v.replace(",", "") for v in _columns(text, "events consumed")] == ["1500"] * 3, text
    for title in ("naive loop", "hand-batched"):
        assert re.search(rf"touchline / {title}\s+{NUMBER}x events/s, {NUMBER}x events per CPU second", text), text


def test_the_two_hand_written_loops_do_the_same_work(kafka_broker, redis_url, topics):
    """On one partition both loops see the events in the same order: the same decisions and
    the same Redis state, so the comparison measures only how they talk to Kafka and Redis."""
    import redis

    from touchline.bench import generate
    from touchline.bench_loops import LoopConfig, batched_loop, naive_loop

    lines = generate(load_settings(None, {"simulator.contacts": 100}), 1200)
    events = topics["kafka.events_topic"]
    kafka_broker.create_topics(events, f"{events}.naive", f"{events}.batched")
    kafka_broker.produce(events, lines)
    client = redis.Redis.from_url(redis_url)
    seen = {}
    for name, loop in (("naive", naive_loop), ("batched", batched_loop)):
        client.flushdb()
        figures = loop(LoopConfig(kafka_broker.bootstrap, redis_url, events, f"{events}.{name}"))
        assert figures["consumed"] == len(lines), figures
        decisions = [m.value() for m in kafka_broker.consume_all(f"{events}.{name}", expect=figures["decisions"])]
        assert len(decisions) == figures["decisions"] > 0
        state = {key: client.hgetall(key) if key.startswith(b"hand:p:") else client.zrange(key, 0, -1, withscores=True)
                 for key in client.scan_iter("hand:*")}
        seen[name] = (figures["invalid"], figures["duplicates"], decisions, state)
    assert seen["naive"] == seen["batched"]
    client.close()
