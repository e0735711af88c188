"""Event times that lie, and events out of order: bounds, a robust clock, and reordering.

End to end through ``touchline.runner.run`` on JSONL files made from a simulated stream,
plus the reorder buffer on its own (pure).
"""

from __future__ import annotations

import random

import orjson
import pytest

from touchline.connectors.simulator import Simulator
from touchline.decisions.events import Event, parse_ts
from touchline.decisions.reorder import EventOrder
from touchline.runner import run, simulator_spec

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> list[bytes]:
    """A simulated stream (sorted by event time), 300 contacts over 14 days."""
    from touchline.settings import load_settings

    settings = load_settings(None, {"simulator.contacts": 300, "simulator.days": 14, "simulator.malformed_rate": 0,
                                    "output.dir": tmp_path_factory.mktemp("sim")})
    return list(Simulator(simulator_spec(settings)).lines())


def _run(small_settings, tmp_path, lines: list[bytes], name: str, **overrides) -> tuple[list[bytes], list[dict]]:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    settings = small_settings(out=name, **{"source.kind": "jsonl", "source.path": path, **overrides})
    run(settings, progress=None)
    out = settings.output.dir
    decisions = (out / "decisions.jsonl").read_bytes().splitlines()
    dead = [orjson.loads(x) for x in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    return decisions, dead


def _ts(line: bytes) -> int:
    return parse_ts(orjson.loads(line)["ts"])


def _with(line: bytes, **fields) -> bytes:
    return orjson.dumps({**orjson.loads(line), **fields})


# ------------------------------------------------------------------ bounds


def test_far_future_and_far_past_times_are_dead_letters_and_change_nothing(small_settings, tmp_path, stream):
    """Year 9999 and year 1 are dead-lettered with their line, and the decisions are those
    of the stream without them (no clock dragged, no timers fired, no profile expired)."""
    clean, dead = _run(small_settings, tmp_path, stream, "clean")
    assert clean and not dead
    hostile = list(stream)
    victim = orjson.loads(stream[len(stream) // 3])
    hostile.insert(len(stream) // 3, orjson.dumps({**victim, "event_id": "x-future", "ts": "9999-12-31T23:59:59Z"}))
    hostile.insert(len(stream) // 2, orjson.dumps({**victim, "event_id": "x-past", "ts": "0001-01-01T00:00:00Z"}))
    decided, dead = _run(small_settings, tmp_path, hostile, "hostile")
    assert decided == clean
    assert {(d["reason"], d["source"]) for d in dead} == {
        ("future_event", f"hostile.jsonl:{len(stream) // 3 + 1}"),
        ("before_floor", f"hostile.jsonl:{len(stream) // 2 + 1}")}
    assert "engine.max_future_seconds" in next(d["detail"] for d in dead if d["reason"] == "future_event")


def test_an_outlier_within_the_wall_clock_does_not_move_the_clock(small_settings, tmp_path, stream):
    """An event months ahead of the stream, but not of today, is still taken for a wrong
    clock: it waits for others to agree on a jump, none do, so it is a dead letter."""
    clean, _ = _run(small_settings, tmp_path, stream, "clean")
    hostile = list(stream)
    at = len(stream) // 4
    hostile.insert(at, _with(stream[at], event_id="x-ahead", ts=_ts(stream[at]) + 120 * DAY_MS))
    decided, dead = _run(small_settings, tmp_path, hostile, "hostile")
    assert decided == clean
    assert [(d["reason"], d["source"]) for d in dead] == [("future_event", f"hostile.jsonl:{at + 1}")]


def test_a_gap_in_the_data_is_not_taken_for_outliers(small_settings, tmp_path, stream):
    """A stream that resumes after three weeks of nothing: the clock jumps once enough events
    agree, and every event is applied."""
    half = len(stream) // 2
    gapped = stream[:half] + [_with(x, ts=_ts(x) + 21 * DAY_MS) for x in stream[half:]]
    decided, dead = _run(small_settings, tmp_path, gapped, "gap")
    assert not dead
    assert decided


def test_events_after_a_gap_at_the_very_end_are_applied_without_moving_the_clock(small_settings, tmp_path,
                                                                                   stream):
    tail = [_with(stream[-1], event_id=f"late-{i}", ts=_ts(stream[-1]) + 30 * DAY_MS + i) for i in range(3)]
    clean, _ = _run(small_settings, tmp_path, stream, "clean")
    decided, dead = _run(small_settings, tmp_path, stream + tail, "tail")
    assert not dead
    assert decided[:len(clean)] == clean  # no timer of anybody fired at the tail's time


# ------------------------------------------------------------------ disorder


def _disorder(lines: list[bytes], within_ms: int, seed: int) -> list[bytes]:
    """Each event delayed by up to ``within_ms`` of event time (arrival order shuffled)."""
    rng = random.Random(seed)
    return [x for _, x in sorted(((_ts(x) + rng.randrange(within_ms), x) for x in lines), key=lambda p: p[0])]


def test_disorder_within_the_lateness_gives_the_sorted_result_at_any_batch_size(small_settings, tmp_path, stream):
    """Shuffled within 4 minutes, lateness 5 minutes: byte-identical decisions to the sorted
    stream, for batch sizes 1, 37 and 1000."""
    lateness = {"engine.allowed_lateness_seconds": 300}
    sorted_decisions, _ = _run(small_settings, tmp_path, stream, "sorted", **lateness)
    shuffled = _disorder(stream, 240_000, seed=7)
    assert shuffled != stream
    for size in (1, 37, 1000):
        got, dead = _run(small_settings, tmp_path, shuffled, f"shuffled-{size}", **lateness,
                         **{"source.batch_size": size})
        assert not dead
        assert got == sorted_decisions, f"batch size {size}"


def test_disorder_beyond_the_lateness_is_still_independent_of_batch_size(small_settings, tmp_path, stream):
    shuffled = _disorder(stream, 600_000, seed=3)
    results = {size: _run(small_settings, tmp_path, shuffled, f"b{size}", **{"engine.allowed_lateness_seconds": 60,
                                                                            "source.batch_size": size})[0]
               for size in (7, 100)}
    assert results[7] == results[100]


# ------------------------------------------------------------------ the buffer alone


def _ev(i: int, ts: int) -> Event:
    return Event(f"e{i}", "page_view", ts, f"c{i % 5}")


@pytest.mark.parametrize("seed", range(20))
def test_release_order_is_the_sorted_order_whatever_the_cuts(seed):
    rng = random.Random(seed)
    lateness = rng.choice([0, 10, 100])
    times = sorted(rng.randrange(10_000) for _ in range(300))
    arrivals = sorted(((t + (rng.randrange(lateness) if lateness else 0), i, t) for i, t in enumerate(times)))
    out = []
    order = EventOrder(lateness, max_ahead_ms=100_000, quorum=5)
    for pos, (_, i, t) in enumerate(arrivals):
        order.add(_ev(i, t), pos)
        if rng.random() < 0.3:
            out += order.take()
    out += order.flush()
    assert [r.event.ts_ms for r in out] == sorted(times)
    assert not any(r.late for r in out)


def test_waiting_ahead_outliers_are_rejected_after_patience():
    order = EventOrder(0, max_ahead_ms=1_000, quorum=3, patience=10)
    for pos in range(5):
        order.add(_ev(pos, 100 + pos), pos)
    order.add(_ev(5, 10_000_000), 5)
    for pos in range(6, 15):
        order.add(_ev(pos, 100 + pos), pos)
    assert not order.rejected
    order.add(_ev(15, 115), 15)
    assert [ev.ts_ms for ev, _ in order.rejected] == [10_000_000]
    assert order.clock == 113  # the median of the last five


def test_scattered_outliers_never_add_up_to_a_jump():
    order = EventOrder(0, max_ahead_ms=1_000, quorum=3)
    for pos in range(400):
        order.add(_ev(pos, 10_000_000 if pos % 3 == 2 else 100 + pos), pos)
    assert order.clock is not None and order.clock < 1_000
    assert len(order.rejected) > 50  # the rest wait out their patience


def test_one_outlier_within_reach_does_not_move_the_clock_and_is_applied_in_time_order():
    order = EventOrder(0, max_ahead_ms=100_000, quorum=3)
    times = [100, 101, 102, 90_000, 103, 104, 105]
    for pos, ts in enumerate(times):
        order.add(_ev(pos, ts), pos)
    assert order.clock == 104  # the third newest of 105, 104 and the outlier
    assert [r.event.ts_ms for r in order.take()] == [100, 101, 102, 103, 104]
    assert [r.event.ts_ms for r in order.flush()] == [105, 90_000]


def test_a_quorum_ahead_moves_the_clock_to_their_median_and_leaves_far_outliers_waiting():
    order = EventOrder(0, max_ahead_ms=1_000, quorum=3)
    for pos, ts in enumerate([100, 101, 102, 103, 104, 50_000, 99_999_999, 50_010]):
        order.add(_ev(pos, ts), pos)
    assert order.clock == 50_010
    assert [r.event.ts_ms for r in order.take()] == [100, 101, 102, 103, 104, 50_000, 50_010]
    assert [ev.ts_ms for _, ev in order.held()] == [99_999_999]


def test_a_restored_buffer_ignores_the_same_position_read_again():
    order = EventOrder(100, max_ahead_ms=10_000, quorum=3, clock=1_000)
    order.restore(_ev(0, 950), 5)
    order.add(_ev(0, 950), 5)  # the replay reads it again
    for pos, ts in [(6, 1_200), (7, 1_300), (8, 1_400), (9, 1_500)]:
        order.add(_ev(pos, ts), pos)
    assert order.clock == 1_300
    assert [(r.event.ts_ms, r.late) for r in order.take()] == [(950, False), (1_200, False)]


# ------------------------------------------------------------------ held events survive a stop


def _engine_on(url: str, lateness_ms: int):
    from prometheus_client import CollectorRegistry

    from touchline.decisions.batch_run import DecisionCore, LabelSettings
    from touchline.decisions.estimators import ModelConfig
    from touchline.decisions.policy import PolicyConfig
    from touchline.decisions.reorder import TimeRules
    from touchline.batch_service import Engine
    from touchline.metrics.engine_metrics import EngineMetrics
    from touchline.state import open_store

    core = DecisionCore(PolicyConfig(holdout_share=0.0),
                        {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")},
                        LabelSettings(7.0, 7.0, frozenset({"purchase"})))
    engine = Engine(open_store(url), core, EngineMetrics(CollectorRegistry()))
    engine.time = TimeRules(lateness_ms=lateness_ms, check_wall=False)
    core.learn = False  # models are not what this is about: they are not kept across the stop here
    engine.keep_held = True  # as on Kafka: the input resumes where it was committed
    return engine


def test_events_held_for_ordering_survive_a_stop_between_batches(redis_url, stream):
    """A process stopped while its buffer holds events (the input committed past them) and a
    new one reading on from there: every event applied once, the same decisions as one run."""
    from touchline.decisions.batches import RawBatch

    lines = _disorder(stream[:3000], 240_000, seed=11)
    cut = 1500

    def decisions_of(engine, batches):
        out = []
        for batch in batches:
            out += engine.process(batch).decisions
        return out

    whole = _engine_on(redis_url, 300_000)
    expected = decisions_of(whole, [RawBatch(lines[:cut], "in", 1), RawBatch(lines[cut:], "in", cut + 1, final=True)])
    whole.store.close()
    import redis

    redis.Redis.from_url(redis_url).flushall()
    first = _engine_on(redis_url, 300_000)
    got = decisions_of(first, [RawBatch(lines[:cut], "in", 1)])
    assert first._orders[0].held(), "the cut leaves events held"
    assert redis.Redis.from_url(redis_url).hlen("tl:{hold:in}") == len(first._orders[0].held())
    first.store.close()  # stopped: nothing more of it runs
    second = _engine_on(redis_url, 300_000)
    got += decisions_of(second, [RawBatch(lines[cut - 200:], "in", cut - 199, final=True)])  # re-reads a little
    assert got == expected
    assert second.totals.events + first.totals.events == len(lines)
    assert second.totals.duplicates == 200 - sum(pos > cut - 200 for pos, _ in first._orders[0].held())
    assert redis.Redis.from_url(redis_url).hlen("tl:{hold:in}") == 0  # the end of the input left nothing held


def test_a_buffer_that_empties_mid_run_is_not_resumed_from_the_store_again(redis_url, stream):
    """A batch that releases everything held (an idle input) leaves an empty buffer, and its
    released events stay stored as held until the next batch drops them. The next batch
    starts a fresh buffer at the committed clock without restoring them: restoring applied
    the released events a second time (seen in the crash suite's logs as a buffer resumed
    twice in one run)."""
    from touchline.decisions.batches import RawBatch

    lines = _disorder(stream[:2000], 240_000, seed=5)
    engine = _engine_on(redis_url, 300_000)
    engine.process(RawBatch(lines[:1000], "in", 1))
    assert engine._orders[0].held(), "the first batch leaves events held"
    engine.process(RawBatch([], "in", 1001, idle=True))  # the input goes quiet: everything is released
    assert not engine._orders[0].held()
    engine.process(RawBatch(lines[1000:], "in", 1001, final=True))
    assert engine.totals.duplicates == 0
    assert engine.totals.events == len(lines) - sum(engine.totals.dead_letters.values())
    import redis

    assert redis.Redis.from_url(redis_url).hlen("tl:{hold:in}") == 0


def test_a_quiet_tailed_input_releases_what_is_held():
    """A trickle on a tailed topic: when the input goes quiet the held events are processed
    (and the clock moves to them) instead of waiting for newer ones that may not come."""
    order = EventOrder(0, max_ahead_ms=100_000, quorum=20)
    for pos, ts in enumerate([100, 300, 200]):
        order.add(_ev(pos, ts), pos)
    assert order.take() == [] and order.clock is None
    assert [r.event.ts_ms for r in order.catch_up()] == [100, 200, 300]
    assert order.clock == 300
    order.add(_ev(3, 250), 3)  # later than the clock now: processed at once, out of order
    assert [(r.event.ts_ms, r.late) for r in order.take()] == [(250, True)]


def test_a_restart_before_the_clock_exists_starts_without_one(redis_url):
    """Fewer events than the quorum needs, then a stop: the next run must not resume from a
    clock of 0 (every event would wait aside as 'ahead' of it)."""
    from touchline.decisions.batches import RawBatch

    first = _engine_on(redis_url, 0)
    first.time = type(first.time)(quorum=20, check_wall=False)
    lines = [orjson.dumps({"event_id": f"e{i}", "type": "page_view", "ts": 1_767_571_200_000 + i, "contact_id": "c1"})
             for i in range(5)]
    first.process(RawBatch(lines, "in", 1))
    first.store.close()
    second = _engine_on(redis_url, 0)
    second.time = type(second.time)(quorum=20, check_wall=False)
    assert second.store.watermark(0) is None
    second.process(RawBatch(lines + [orjson.dumps({"event_id": "e9", "type": "page_view", "ts": 1_767_571_300_000,
                                                   "contact_id": "c1"})], "in", 1, final=True))
    assert second._orders[0].clock == 1_767_571_300_000 and not second._orders[0].rejected
    assert second.totals.events == 6
