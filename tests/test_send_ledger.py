"""The send ledger: a decision is delivered once across restarts and processes.

The ledgers against a real redis-server (standalone and Cluster) and in memory; then two
``Delivery`` objects (two engine processes) with the webhook connector against a real
HTTP server, sharing a Redis ledger.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from http_server import WebhookServer
from prometheus_client import CollectorRegistry
from touchline.connectors.channels.base import DeliveryReport
from touchline.connectors.channels.config import (
    DeliverySettings,
    WebhookConnectorConfig,
)
from touchline.connectors.channels.registry import BuildContext, Delivery
from touchline.connectors.channels.webhook import WebhookConnector
from touchline.metrics.connectors import ConnectorMetrics
from touchline.state.base import StoreUnavailable
from touchline.state.ledger import DELIVERED, MemorySendLedger, RedisSendLedger
from waiting import wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def ledgers(request):
    """A factory of ledgers that share their entries, as two engine processes would:
    Redis ledgers on one server, or (memory) one in-process ledger table under two owners."""
    made: list = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")

        def make(**kw):
            made.append(RedisSendLedger(url, **kw))
            return made[-1]
    else:
        shared: dict = {}

        def make(**kw):
            ledger = MemorySendLedger(**kw)
            if shared:  # the same table, another owner token
                ledger._entries = shared["entries"]
                ledger._lock = shared["lock"]
            else:
                shared.update(entries=ledger._entries, lock=ledger._lock)
            made.append(ledger)
            return ledger
    yield make
    for ledger in made:
        ledger.close()


def test_a_second_claim_gets_nothing(ledgers):
    one, two = ledgers(), ledgers()
    assert one.claim(["a", "b"]) == {"a", "b"}
    claim = two.claim(["a", "b", "c"])
    assert claim == {"c"} and claim.done == set()  # a, b in flight elsewhere, not final
    assert one.claim(["a"]) == set()  # not even its owner claims twice


def test_delivered_is_final_for_everyone_and_survives_a_restart(ledgers):
    one = ledgers()
    assert one.claim(["a", "b"]) == {"a", "b"}
    one.delivered(["a"])
    one.release(["a"])  # no claim left to release: a stays delivered
    later = ledgers()  # a restarted process
    claim = later.claim(["a", "b"])
    assert claim == set() and claim.done == {"a"}


def test_release_only_by_its_owner(ledgers):
    one, two = ledgers(), ledgers()
    one.claim(["a"])
    two.release(["a"])
    assert two.claim(["a"]) == set()
    one.release("a")  # a lone id is one id
    assert two.claim(["a"]) == {"a"}


def test_a_crashed_owners_claim_lapses_after_the_lease(redis_url):
    crashed = RedisSendLedger(redis_url, lease_seconds=0.2)
    assert crashed.claim(["a"]) == {"a"}  # ... and the process dies
    other = RedisSendLedger(redis_url, lease_seconds=0.2)
    assert other.claim(["a"]) == set()
    time.sleep(0.3)
    assert other.claim(["a"]) == {"a"}


def test_renew_keeps_a_slow_delivery_claimed(redis_url):
    owner = RedisSendLedger(redis_url, lease_seconds=0.3)
    other = RedisSendLedger(redis_url, lease_seconds=0.3)
    owner.claim(["a"])
    time.sleep(0.2)
    owner.renew(["a"])
    other.renew(["a"])  # not its claim: no effect
    time.sleep(0.2)
    assert other.claim(["a"]) == set()  # 0.4 s after the claim, still held
    time.sleep(0.3)
    assert other.claim(["a"]) == {"a"}


def test_memory_ledger_expires_and_stays_bounded():
    clock = FakeClock()
    one = MemorySendLedger(lease_seconds=60, delivered_ttl_days=1, max_entries=3, clock=clock)
    assert one.claim(["a"]) == {"a"}
    clock.now += 61
    assert one.claim(["a"]) == {"a"}  # the lease lapsed
    one.delivered(["a"])
    clock.now += 86_401
    assert one.claim(["a"]) == {"a"}  # delivered marks expire too
    one.claim(["b", "c", "d"])
    assert len(one._entries) == 3 and one.claim(["a"]) == {"a"}  # least recently used evicted


def test_redis_layout_and_ttls(redis_url):
    ledger = RedisSendLedger(redis_url, lease_seconds=5, delivered_ttl_days=2)
    ledger.claim(["d1", "d2"])
    ledger.delivered(["d1"])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert sorted(client.keys("*")) == ["tl:{sent:d1}", "tl:{sent:d2}"]
    assert client.get("tl:{sent:d1}") == DELIVERED and client.get("tl:{sent:d2}") == ledger.token
    assert 2 * 86_400_000 - 5000 < client.pttl("tl:{sent:d1}") <= 2 * 86_400_000
    assert 0 < client.pttl("tl:{sent:d2}") <= 5000
    client.close()


def test_redis_cluster_spreads_a_batch_over_slots(redis_cluster_url):
    one = RedisSendLedger(redis_cluster_url)
    two = RedisSendLedger(redis_cluster_url)
    ids = [f"d{i}" for i in range(50)]
    assert one.claim(ids) == set(ids)
    one.delivered(ids[:10])
    one.renew(ids[10:])
    two.release(ids[10:20])  # not its claims
    one.release(ids[20:30])
    claim = two.claim(ids)
    assert claim == set(ids[20:30]) and claim.done == set(ids[:10])
    one.close()
    two.close()


def test_unreachable_redis_is_one_clear_error_with_the_password_masked():
    from redis_servers import free_port

    ledger = RedisSendLedger(f"redis://app:s3cret@127.0.0.1:{free_port()}/0", retry_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"send ledger: Redis at redis://app:\*\*\*@127\.0\.0\.1:\d+/0 "
                                               r"unreachable for 0\.3 s during claim") as err:
        ledger.claim(["a"])
    assert "s3cret" not in str(err.value) and time.monotonic() - started < 3
    # each failed attempt is counted for touchline_state_store_errors_total, and the ledger reads down
    assert ledger.health.up is False and ledger.health.take_errors()["ledger_claim"] >= 2


# ------------------------------------------------------------------------ Delivery with a ledger
def decision(i: int, channel: str = "sms") -> dict:
    return {"decision_id": f"{i:032x}", "contact_id": f"c-{i}", "action": "nudge", "channel": channel}


class Process:
    """One engine process's delivery: its own report, ledger and webhook connector."""

    def __init__(self, url: str, ledger, **cfg) -> None:
        self.registry = CollectorRegistry()
        self.dead: list[dict] = []
        self.done: list[str] = []
        self.report = DeliveryReport(ConnectorMetrics(self.registry), self.dead.extend)
        settings = {"url": url, "rate_per_second": 1000, "burst": 100, "backoff_seconds": 0.01, **cfg}
        connector = WebhookConnector("sms", self.report, WebhookConnectorConfig(**settings), seed=1)
        self.delivery = Delivery({"sms": connector}, self.report, ledger)
        self.delivery.on_done = lambda decisions: self.done.extend(d["decision_id"] for d in decisions)
        self.delivery.start()

    def sample(self, outcome: str) -> float:
        return self.registry.get_sample_value("touchline_connector_deliveries_total",
                                              {"channel": "sms", "connector": "webhook", "outcome": outcome}) or 0.0


def test_two_processes_deliver_each_decision_once(redis_url):
    sent = [decision(i) for i in range(60)]
    with WebhookServer(lambda key, attempt: (200, {}, 0.01)) as server:
        procs = [Process(server.url, RedisSendLedger(redis_url)) for _ in range(2)]
        threads = [threading.Thread(target=lambda p=p: [p.delivery.submit(sent[i:i + 10]) for i in range(0, 60, 10)])
                   for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            p.delivery.close(30)
        assert sorted(server.attempts) == sorted(d["decision_id"] for d in sent)
        assert set(server.attempts.values()) == {1} and server.replays == 0
    outcomes = [p.report.outcomes for p in procs]
    assert sum(o[("sms", "delivered")] for o in outcomes) == 60
    assert sum(o[("sms", "duplicate")] for o in outcomes) == 60
    assert sum(p.sample("duplicate") for p in procs) == 60
    # done for both outboxes: delivered by one, or found delivered when the other claimed it
    assert set(procs[0].done) | set(procs[1].done) == {d["decision_id"] for d in sent}

    # a restarted process re-emits them all: every one is skipped, and done for its outbox
    again = Process(server.url, RedisSendLedger(redis_url))
    again.delivery.submit(sent)
    again.delivery.close(5)
    assert again.report.outcomes[("sms", "duplicate")] == 60 and sorted(again.done) == sorted(server.attempts)


def test_a_decision_stopped_by_shutdown_is_delivered_by_a_later_process(redis_url):
    down = threading.Event()
    down.set()

    def plan(key, attempt):
        return (503, {}, 0.0) if down.is_set() else (200, {}, 0.0)

    with WebhookServer(plan) as server:
        first = Process(server.url, RedisSendLedger(redis_url), backoff_seconds=5, concurrency=1)
        first.delivery.submit([decision(1), decision(2)])  # 1 waits to retry, 2 waits in the queue
        wait_for(lambda: server.attempts, "the first attempt", 10, 0.02)
        first.delivery.close(0.3)
        assert sorted(d["error"] for d in first.dead) == ["http_5xx", "shutdown"]
        assert first.done == [] and server.delivered == {}
        down.clear()
        later = Process(server.url, RedisSendLedger(redis_url))
        later.delivery.submit([decision(1), decision(2)])
        later.delivery.close(10)
    assert sorted(server.delivered) == [f"{1:032x}", f"{2:032x}"]
    assert sorted(later.done) == sorted(server.delivered) and later.report.outcomes[("sms", "duplicate")] == 0


def test_on_done_hears_delivered_dead_lettered_and_duplicates_not_shutdowns():
    def plan(key, attempt):
        return {"1": (200, {}, 0.0), "2": (400, {}, 0.0)}.get(key[-1], (503, {}, 0.0))

    ledger = MemorySendLedger()
    with WebhookServer(plan) as server:
        proc = Process(server.url, ledger, backoff_seconds=5)
        proc.delivery.submit([decision(1), decision(2), decision(3), decision(4, "push")])
        wait_for(lambda: f"{2:032x}" in proc.done and f"{1:032x}" in proc.done, "1 and 2 settled", 10, 0.02)
        proc.delivery.submit([decision(1)])  # delivered already: a duplicate, done
        proc.delivery.close(0.3)  # 3 is still waiting to retry: released
    ids = {i: f"{i:032x}" for i in range(5)}
    # 4 has no connector (push): nothing will deliver it, so it is done too
    assert sorted(proc.done) == sorted([ids[1], ids[2], ids[4], ids[1]])
    assert proc.report.outcomes[("sms", "duplicate")] == 1
    claim = ledger.claim([ids[1], ids[2], ids[3]])
    assert claim == {ids[3]} and claim.done == {ids[1], ids[2]}  # failed for good is final too


def test_build_context_passes_the_ledger(tmp_path):
    ledger = MemorySendLedger()
    report = DeliveryReport(ConnectorMetrics(CollectorRegistry()), lambda records: None)
    delivery = Delivery.build(DeliverySettings(), BuildContext(report, tmp_path / "outbox", ledger=ledger))
    delivery.start()
    delivery.submit([decision(1, "email"), decision(1, "email")])  # the same decision twice in a batch
    delivery.close(5)
    assert len((tmp_path / "outbox" / "email.jsonl").read_bytes().splitlines()) == 1
    assert report.outcomes == {("email", "delivered"): 1, ("email", "duplicate"): 1}


class CountingLedger(MemorySendLedger):
    """A memory ledger that counts its ``delivered`` calls and can refuse the first ones."""

    def __init__(self, refuse: int = 0) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.refuse = refuse

    def delivered(self, ids):
        ids = list(ids)
        self.calls.append(ids)
        if len(self.calls) <= self.refuse:
            raise ConnectionError("ledger down for a moment")
        super().delivered(ids)


def _jsonl_delivery(tmp_path, ledger):
    from touchline.connectors.channels.jsonl import JsonlConnector

    done: list[str] = []
    report = DeliveryReport(ConnectorMetrics(CollectorRegistry()), lambda _dead: None)
    delivery = Delivery({"sms": JsonlConnector("sms", report, tmp_path / "sms.jsonl")}, report, ledger)
    delivery.on_done = lambda decisions: done.extend(d["decision_id"] for d in decisions)
    delivery.start()
    return delivery, done


def test_outcomes_reported_during_a_submit_are_marked_in_one_ledger_call(tmp_path):
    """A connector that reports on the submitting thread (JSONL here, Kafka's delivery reports)
    has the submit's final outcomes marked together, before submit returns: one ledger round
    trip per submit, not one per decision."""
    ledger = CountingLedger()
    delivery, done = _jsonl_delivery(tmp_path, ledger)
    sent = [decision(i) for i in range(10)]
    delivery.submit(sent)
    assert ledger.calls == [[d["decision_id"] for d in sent]]
    assert ledger.claim([d["decision_id"] for d in sent]).done == {d["decision_id"] for d in sent}
    delivery.close(5)
    assert sorted(done) == sorted(d["decision_id"] for d in sent) and len(ledger.calls) == 1


def test_a_refused_mark_is_recorded_by_the_settle_loop(tmp_path):
    """The one call for the submit fails: the decisions are settled as final, and the settle
    loop marks them (nothing is lost, nothing counted as marked that is not)."""
    ledger = CountingLedger(refuse=1)
    delivery, done = _jsonl_delivery(tmp_path, ledger)
    sent = [decision(i) for i in range(3)]
    delivery.submit(sent)
    delivery.close(5)
    assert len(ledger.calls) == 2 and sorted(ledger.calls[1]) == sorted(d["decision_id"] for d in sent)
    assert ledger.claim([d["decision_id"] for d in sent]).done == {d["decision_id"] for d in sent}
    assert sorted(done) == sorted(d["decision_id"] for d in sent)
