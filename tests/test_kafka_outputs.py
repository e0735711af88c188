"""The Kafka outputs on a real broker (Tansu on loopback): nothing lost at the end of a
stream, backpressure and a bounded wait when the broker goes away, one clear error when
it does not come back, and the acknowledgement hook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import orjson
from prometheus_client import CollectorRegistry
from touchline.connectors.kafka import MAX_IN_FLIGHT, KafkaRecordSink
from touchline.connectors.loadgen import produce_events
from touchline.connectors.simulator import Simulator
from waiting import wait_for

from touchline.runner import run, simulator_spec


def _settings(small_settings, broker, topics, **extra):
    stem = topics["kafka.events_topic"].removesuffix(".events")
    return small_settings(**{"kafka.bootstrap": broker.bootstrap, "source.kind": "kafka", "kafka.tail": False,
                             "kafka.connect_timeout_seconds": 5, "kafka.experiments_topic": f"{stem}.experiments",
                             **topics, **extra})


def _produce(settings) -> int:
    lines = list(Simulator(simulator_spec(settings)).lines())
    stats = produce_events(lines, settings.kafka)  # creates the topic with kafka.partitions (3)
    assert stats.produced == len(lines) and stats.failed == 0
    return len(lines)


def _decisions_made(registry: CollectorRegistry) -> float:
    return sum(s.value for m in registry.collect() if m.name == "touchline_decisions"
               for s in m.samples if s.name == "touchline_decisions_total")


def _assert_every_decision_on_its_topics(broker, settings, summary) -> None:
    """The decisions topic holds exactly the decisions the summary counts, and each channel
    topic exactly those of its channel."""
    decisions = [orjson.loads(m.value()) for m in broker.consume_all(settings.kafka.decisions_topic)]
    ids = [d["decision_id"] for d in decisions]
    assert len(ids) == len(set(ids)) == summary["decisions_total"] > 0
    for channel, topic in settings.delivery.kafka_topics(settings.kafka.channel_topic_prefix).items():
        want = {d["decision_id"] for d in decisions if d["channel"] == channel}
        got = [dict(m.headers())["decision_id"].decode() for m in broker.consume_all(topic)] \
            if broker.topic_exists(topic) else []
        assert sorted(got) == sorted(want), channel
        assert summary["deliveries"].get(channel, {"delivered": 0, "failed": 0}) == {"delivered": len(want),
                                                                                      "failed": 0}


def test_end_of_stream_writes_every_decision_to_every_topic(kafka_broker, topics, small_settings):
    """Issue 17: a run to the end of a multi-partition topic must leave every decision it
    counts on the decisions topic and on its channel's topic, the last ones included."""
    settings = _settings(small_settings, kafka_broker, topics, **{"simulator.contacts": 600, "simulator.days": 14})
    lines = _produce(settings)
    result = run(settings, progress=None, registry=CollectorRegistry())
    s = result.summary
    assert s["events_processed"] + s["dead_letters_total"] == lines
    _assert_every_decision_on_its_topics(kafka_broker, settings, s)


def test_a_broker_back_within_retry_seconds_loses_nothing_and_holds_the_engine_back(tmp_path, small_settings,
                                                                                    topics):
    """SIGSTOP the broker mid-run for a few seconds: the sinks wait (bounded in flight), so
    the engine takes few new events meanwhile; after SIGCONT every decision arrives."""
    from kafka_broker import TansuBroker

    broker = TansuBroker(tmp_path / "tansu").start()
    try:
        settings = _settings(small_settings, broker, topics, **{
            "simulator.contacts": 2500, "simulator.days": 21, "kafka.retry_seconds": 8})
        _produce(settings)
        registry, box = CollectorRegistry(), {}
        thread = threading.Thread(target=lambda: box.update(result=run(settings, progress=None, registry=registry)))
        thread.start()
        wait_for(lambda: _decisions_made(registry) >= 50, "the first decisions", timeout=60, interval=0.05)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)  # what was in flight when the broker stopped settles into the bound
            held_at = _decisions_made(registry)
            time.sleep(3.0)
            during = _decisions_made(registry) - held_at
            assert thread.is_alive()  # held back, not finished
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        thread.join(120)
        assert not thread.is_alive() and "result" in box
        # each sink lets at most MAX_IN_FLIGHT records wait: the engine stalls instead of running on
        assert during <= MAX_IN_FLIGHT
        _assert_every_decision_on_its_topics(broker, settings, box["result"].summary)
    finally:
        broker.stop()


def test_a_broker_gone_for_good_ends_the_run_with_one_clear_error(tmp_path, small_settings, topics):
    """Kill the broker mid-run: exit code 1 after about kafka.retry_seconds, one error naming
    the broker, no backtrace, no Rust panic, no per-message purge lines."""
    from kafka_broker import TansuBroker

    broker = TansuBroker(tmp_path / "tansu").start()
    try:
        settings = _settings(small_settings, broker, topics, **{"simulator.contacts": 2500, "simulator.days": 21})
        _produce(settings)
        config = tmp_path / "touchline.toml"
        config.write_text("[kafka]\ntail = false\nretry_seconds = 5\nconnect_timeout_seconds = 5\n" + "".join(
            f'{key.split(".", 1)[1]} = "{value}"\n' for key, value in topics.items()))
        proc = subprocess.Popen([sys.executable, "-m", "touchline.cli", "run", "--kafka", broker.bootstrap,
                                 "--config", str(config), "--out", str(tmp_path / "out"), "--no-metrics", "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: broker.topic_exists(settings.kafka.decisions_topic) and broker.consume_all(
                settings.kafka.decisions_topic, timeout=1), "the first decisions on the topic", timeout=60)
            assert proc.poll() is None, "the run ended before the broker went away; give it more events"
            broker.proc.kill()
            killed = time.monotonic()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = err.decode()
        assert proc.returncode == 1, stderr[-3000:]
        assert time.monotonic() - killed < 60
        assert "Traceback" not in stderr and "panicked" not in stderr and "Purged" not in stderr, stderr[-3000:]
        naming = [line for line in stderr.splitlines() if broker.bootstrap in line]
        assert len(naming) == 1 and naming[0].startswith("touchline: error: Kafka at " + broker.bootstrap), naming
        assert len(stderr.splitlines()) <= 12, stderr[-3000:]
    finally:
        broker.stop()


# ------------------------------------------------------------------------------- on_acked
def _records(n: int) -> list[dict]:
    return [{"decision_id": f"d{i}", "contact_id": f"c{i % 7}", "n": i} for i in range(n)]


def _sink_flow(sink: KafkaRecordSink, records: list[dict], batch_size: int):
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource

    flow = Dataflow("acks-" + uuid.uuid4().hex[:6])
    op.output("out", op.input("in", flow, TestingSource(records, batch_size=batch_size)), sink)
    return flow


def test_on_acked_hands_over_acknowledged_records_on_the_dataflow_thread(kafka_broker):
    from bytewax.testing import run_main

    topic = "acks-" + uuid.uuid4().hex[:8]
    kafka_broker.create_topics(topic, partitions=3)
    records = _records(2000)
    calls: list[tuple[int, list[dict]]] = []
    failures: list[Exception] = []
    sink = KafkaRecordSink({"bootstrap.servers": kafka_broker.bootstrap}, topic, failures.append, timeout_seconds=10,
                           on_acked=lambda acked: calls.append((threading.get_ident(), acked)))
    run_main(_sink_flow(sink, records, batch_size=100))

    assert failures == []
    assert {ident for ident, _ in calls} == {threading.get_ident()}  # run_main's worker is this thread
    assert len(calls) <= 2000 // 100 + 1 and all(acked for _, acked in calls)  # batched: one call per write/close
    handed = [r for _, acked in calls for r in acked]
    assert len(handed) == len(records) and {id(r) for r in handed} == {id(r) for r in records}  # the same objects
    on_topic = [orjson.loads(m.value())["decision_id"] for m in kafka_broker.consume_all(topic)]
    assert sorted(on_topic) == sorted(r["decision_id"] for r in records)


def test_on_acked_never_passes_failed_records_and_a_failure_is_reported_not_raised(tmp_path):
    """A broker that is not there: every delivery fails, so nothing is acknowledged; the
    sink reports one error through on_fatal, and the dataflow ends without a panic."""
    from bytewax.testing import run_main
    from redis_servers import free_port

    bootstrap = f"127.0.0.1:{free_port()}"
    acked: list[dict] = []
    failures: list[Exception] = []
    sink = KafkaRecordSink({"bootstrap.servers": bootstrap}, "decisions", failures.append, timeout_seconds=2,
                           on_acked=acked.extend)
    started = time.monotonic()
    run_main(_sink_flow(sink, _records(50), batch_size=10))
    assert acked == []
    assert len(failures) == 1 and "decisions" in str(failures[0]) and bootstrap in str(failures[0])
    assert time.monotonic() - started < 30


def test_close_hands_over_what_its_final_flush_acknowledged(kafka_broker):
    topic = "acks-close-" + uuid.uuid4().hex[:8]
    kafka_broker.create_topics(topic)
    calls: list[list[dict]] = []
    sink = KafkaRecordSink({"bootstrap.servers": kafka_broker.bootstrap}, topic, lambda exc: None,
                           timeout_seconds=10, on_acked=calls.append, acknowledged_writes=False)
    part = sink.build("out", 0, 1)
    records = _records(5)
    part.write_batch(records)  # returns before the broker answers: no flush per batch
    before_close = len(calls)
    part.close()
    assert len(calls) == before_close + 1 and calls[-1]  # one call for what the final flush acknowledged
    assert sorted(r["n"] for c in calls for r in c) == list(range(5))
    part.close()  # idempotent: nothing more
    assert len(calls) == before_close + 1


def test_acknowledged_writes_return_only_once_the_broker_has_every_record(kafka_broker):
    """Records nothing else keeps (experiments, dead letters): when a batch write returns, the
    broker has all of it, so a snapshot of the input taken after the write never covers a
    record that a kill -9 of the process could still lose."""
    topic = "acks-each-" + uuid.uuid4().hex[:8]
    kafka_broker.create_topics(topic)
    calls: list[list[dict]] = []
    sink = KafkaRecordSink({"bootstrap.servers": kafka_broker.bootstrap}, topic, lambda exc: None,
                           timeout_seconds=10, on_acked=calls.append)
    part = sink.build("out", 0, 1)
    part.write_batch(_records(5))
    assert sorted(r["n"] for c in calls for r in c) == list(range(5))  # acknowledged before returning
    assert len(kafka_broker.consume_all(topic)) == 5
    part.close()
