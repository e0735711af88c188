"""One suite every channel connector passes (the contract in connectors/channels/base.py),
each against its real endpoint on loopback: a file, a Kafka-protocol broker, an HTTP
server, an SMTP server. Then the behaviour each connector adds: retries, Retry-After,
rate limits, backpressure, templates.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from http_server import WebhookServer
from touchline.connectors.channels.base import DeliveryReport
from touchline.connectors.channels.config import SmtpConnectorConfig, WebhookConnectorConfig
from touchline.connectors.channels.jsonl import JsonlConnector
from touchline.connectors.channels.kafka import KafkaChannelConnector
from touchline.connectors.channels.smtp import SmtpConnector
from touchline.connectors.channels.webhook import WebhookConnector
from touchline.metrics.connectors import ConnectorMetrics


def decision(i: int, channel: str = "email", **extra) -> dict:
    return {"decision_id": f"{i:032x}", "contact_id": f"c-{i}", "action": "welcome", "channel": channel,
            "template": "welcome/1", "offer": None, "journey": None, "step": None, **extra}


class Recorder:
    """A DeliveryReport on a fresh registry, with its dead letters kept in a list."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.dead: list[dict] = []
        self.lock = threading.Lock()
        self.report = DeliveryReport(ConnectorMetrics(self.registry), self._dead)

    def _dead(self, records: list[dict]) -> None:
        with self.lock:
            self.dead.extend(records)

    def sample(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------ the shared contract
class Harness:
    """How to build one kind of connector and read back what its endpoint received."""

    kind = ""

    def build(self, rec: Recorder):
        raise NotImplementedError

    def received(self) -> list[str]:
        """Decision ids the endpoint got, with repeats."""
        raise NotImplementedError


class JsonlHarness(Harness):
    kind = "jsonl"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "outbox" / "email.jsonl"

    def build(self, rec):
        return JsonlConnector("email", rec.report, self.path)

    def received(self):
        return [orjson.loads(line)["decision_id"] for line in self.path.read_bytes().splitlines()]


class KafkaHarness(Harness):
    kind = "kafka"

    def __init__(self, broker, topic: str) -> None:
        self.broker, self.topic = broker, topic
        broker.create_topics(topic)

    def build(self, rec):
        return KafkaChannelConnector("email", rec.report, {"bootstrap.servers": self.broker.bootstrap}, self.topic, 20)

    def received(self):
        return [orjson.loads(m.value())["decision_id"] for m in self.broker.consume_all(self.topic)]


class WebhookHarness(Harness):
    kind = "webhook"

    def __init__(self, server: WebhookServer) -> None:
        self.server = server

    def build(self, rec):
        return WebhookConnector("email", rec.report, WebhookConnectorConfig(url=self.server.url, rate_per_second=1000,
                                                                            burst=100), seed=1)

    def received(self):
        return [d["decision_id"] for d in self.server.delivered.values()] + ["replay"] * self.server.replays


class SmtpHarness(Harness):
    kind = "smtp"

    def __init__(self, server) -> None:
        self.server = server

    def build(self, rec):
        return SmtpConnector("email", rec.report, SmtpConnectorConfig(
            port=self.server.port, sender="news@example.com", recipient="{contact_id}@example.com",
            rate_per_second=1000, burst=100), seed=1)

    def received(self):
        return [m["X-Touchline-Decision-Id"] for _, m in self.server.messages]


@pytest.fixture(params=["jsonl", "kafka", "webhook", "smtp"])
def harness(request, tmp_path):
    if request.param == "jsonl":
        yield JsonlHarness(tmp_path)
    elif request.param == "kafka":
        yield KafkaHarness(request.getfixturevalue("kafka_broker"), f"contract-{time.monotonic_ns()}")
    elif request.param == "webhook":
        with WebhookServer() as server:
            yield WebhookHarness(server)
    else:
        yield SmtpHarness(request.getfixturevalue("smtp_server"))


def test_every_decision_delivered_exactly_once_with_one_outcome(harness):
    rec = Recorder()
    connector = harness.build(rec)
    connector.start()
    sent = [decision(i) for i in range(40)]
    for start in range(0, 40, 7):  # several batches, as the dataflow hands them over
        connector.submit(sent[start:start + 7])
    connector.close(timeout=30)
    assert sorted(harness.received()) == sorted(d["decision_id"] for d in sent)
    assert rec.dead == []
    labels = {"channel": "email", "connector": harness.kind}
    assert rec.sample("touchline_connector_deliveries_total", outcome="delivered", **labels) == 40
    assert rec.sample("touchline_connector_latency_seconds_count", **labels) == 40
    assert rec.report.outcomes[("email", "delivered")] == 40


def test_close_without_submissions_is_clean(harness):
    rec = Recorder()
    connector = harness.build(rec)
    connector.start()
    connector.close(timeout=5)
    assert rec.dead == [] and harness.received() == []


def test_with_a_send_ledger_a_reemitted_decision_is_sent_once_and_settled(harness):
    from touchline.connectors.channels.registry import Delivery
    from touchline.state.ledger import MemorySendLedger

    rec, ledger, done = Recorder(), MemorySendLedger(), []
    delivery = Delivery({"email": harness.build(rec)}, rec.report, ledger)
    delivery.on_done = done.extend
    delivery.start()
    sent = [decision(i) for i in range(20)]
    delivery.submit(sent[:12])
    delivery.submit(sent)  # a re-emission while the first 12 are in flight or delivered
    delivery.close(30)
    ids = {d["decision_id"] for d in sent}
    assert sorted(harness.received()) == sorted(ids)
    assert rec.report.outcomes[("email", "duplicate")] == 12
    assert {d["decision_id"] for d in done} == ids
    assert ledger.claim(ids).done == ids  # every outcome recorded, the kafka connector's included


# ------------------------------------------------------------------------ webhook behaviour
def _webhook(server: WebhookServer, rec: Recorder, **cfg):
    defaults = {"url": server.url, "backoff_seconds": 0.01, "backoff_max_seconds": 5.0, "rate_per_second": 1000,
                "burst": 100}
    connector = WebhookConnector("sms", rec.report, WebhookConnectorConfig(**{**defaults, **cfg}), seed=3)
    connector.start()
    return connector


def test_webhook_retries_5xx_and_connection_errors_then_delivers_once():
    def plan(key, attempt):
        return (503, {}, 0.0) if attempt <= 2 else (200, {}, 0.0)

    rec = Recorder()
    with WebhookServer(plan) as server:
        connector = _webhook(server, rec)
        connector.submit([decision(i, "sms") for i in range(10)])
        connector.close(30)
    assert len(server.delivered) == 10 and server.replays == 0
    assert all(n == 3 for n in server.attempts.values())
    assert all(h["Idempotency-Key"] for h in server.headers)
    assert rec.dead == []
    labels = {"channel": "sms", "connector": "webhook"}
    assert rec.sample("touchline_connector_retries_total", **labels) == 20
    assert rec.sample("touchline_connector_errors_total", error="http_5xx", **labels) == 20


def test_webhook_honours_retry_after_on_429():
    def plan(key, attempt):
        return (429, {"Retry-After": "1"}, 0.0) if attempt == 1 else (200, {}, 0.0)

    rec = Recorder()
    with WebhookServer(plan) as server:
        connector = _webhook(server, rec, concurrency=1)
        connector.submit([decision(1, "sms")])
        connector.close(30)
    assert len(server.delivered) == 1
    first, second = server.times
    assert second - first >= 0.95  # waited what the server asked, not the 10 ms backoff
    assert rec.sample("touchline_connector_errors_total", channel="sms", connector="webhook", error="http_429") == 1


def test_webhook_slow_endpoint_times_out_and_the_retry_is_deduplicated_by_key():
    def plan(key, attempt):
        return (200, {}, 0.6) if attempt == 1 else (200, {}, 0.0)  # first answer comes too late

    rec = Recorder()
    with WebhookServer(plan) as server:
        connector = _webhook(server, rec, timeout_seconds=0.2, backoff_seconds=0.5, concurrency=2)
        connector.submit([decision(i, "sms") for i in range(4)])
        connector.close(30)
        time.sleep(0.3)  # let the slow first answers finish on the server
    assert len(server.delivered) == 4  # each processed once, though each was sent twice
    assert rec.dead == []
    assert rec.sample("touchline_connector_errors_total", channel="sms", connector="webhook", error="timeout") == 4
    assert rec.report.outcomes[("sms", "delivered")] == 4


def test_webhook_exhausted_retries_and_4xx_go_to_dead_letters():
    def plan(key, attempt):
        return (400, {}, 0.0) if key.endswith("1") else (500, {}, 0.0)

    rec = Recorder()
    with WebhookServer(plan) as server:
        connector = _webhook(server, rec, max_attempts=3)
        connector.submit([decision(1, "sms"), decision(2, "sms")])
        connector.close(30)
    by_id = {d["decision_id"]: d for d in rec.dead}
    assert set(by_id) == {f"{1:032x}", f"{2:032x}"}
    assert by_id[f"{1:032x}"]["error"] == "http_400" and by_id[f"{1:032x}"]["attempts"] == 1  # not retried
    assert by_id[f"{2:032x}"]["error"] == "http_5xx" and by_id[f"{2:032x}"]["attempts"] == 3
    assert by_id[f"{2:032x}"]["decision"]["contact_id"] == "c-2" and "HTTP 500" in by_id[f"{2:032x}"]["detail"]
    assert rec.sample("touchline_connector_deliveries_total", channel="sms", connector="webhook", outcome="failed") == 2


def test_webhook_endpoint_down_fails_into_dead_letters_not_a_hang():
    rec = Recorder()
    with WebhookServer() as server:
        url = server.url
    connector = WebhookConnector("sms", rec.report, WebhookConnectorConfig(
        url=url, max_attempts=2, backoff_seconds=0.01, timeout_seconds=1), seed=1)
    connector.start()
    connector.submit([decision(1, "sms")])
    connector.close(30)
    assert [d["error"] for d in rec.dead] == ["connection"]


def test_webhook_token_bucket_limits_the_rate():
    rec = Recorder()
    with WebhookServer() as server:
        connector = _webhook(server, rec, rate_per_second=20, burst=1, concurrency=4)
        connector.submit([decision(i, "sms") for i in range(11)])
        connector.close(30)
    assert len(server.delivered) == 11
    assert server.times[-1] - server.times[0] >= 0.45  # 10 gaps of at least 1/20 s (a lower bound)


def test_webhook_bounded_queue_applies_backpressure():
    rec = Recorder()
    with WebhookServer(lambda k, a: (200, {}, 0.05)) as server:
        connector = _webhook(server, rec, queue_size=2, concurrency=1)
        connector.submit([decision(i, "sms") for i in range(12)])
        # submit returned only once at most queue_size (+1 in flight) were left waiting
        assert len(server.attempts) >= 12 - 2 - 1
        connector.close(30)
    assert len(server.delivered) == 12


def test_webhook_close_deadline_dead_letters_what_is_left():
    rec = Recorder()
    with WebhookServer(lambda k, a: (503, {}, 0.0)) as server:
        connector = _webhook(server, rec, backoff_seconds=5, backoff_max_seconds=5, max_attempts=10)
        connector.submit([decision(1, "sms")])
        connector.close(timeout=0.5)
    assert len(rec.dead) == 1 and rec.dead[0]["error"] == "http_5xx"


def test_webhook_sends_configured_headers_and_bearer_token():
    rec = Recorder()
    with WebhookServer() as server:
        connector = _webhook(server, rec, headers={"X-Tenant": "acme"}, bearer_token="s3cret")
        connector.submit([decision(1, "sms")])
        connector.close(10)
    headers = server.headers[0]
    assert headers["X-Tenant"] == "acme" and headers["Authorization"] == "Bearer s3cret"
    assert headers["Idempotency-Key"] == f"{1:032x}" and headers["Content-Type"] == "application/json"


# ------------------------------------------------------------------------ SMTP behaviour
def test_smtp_renders_templates_and_addresses_from_the_address_book(smtp_server, tmp_path):
    (tmp_path / "tpl" / "welcome").mkdir(parents=True)
    (tmp_path / "tpl" / "welcome" / "1.txt").write_text(
        "Subject: Welcome, {{ contact_id }}\n\nHello! Action {{ action }} via {{ channel }}.\n")
    book = tmp_path / "book.csv"
    book.write_text("contact_id,email\nc-1,ann@example.com\n")
    rec = Recorder()
    connector = SmtpConnector("email", rec.report, SmtpConnectorConfig(
        port=smtp_server.port, sender="news@example.com", templates=tmp_path / "tpl", address_book=book), seed=1)
    connector.start()
    connector.submit([decision(1), decision(2)])  # c-2 has no address
    connector.close(10)
    [(rcpts, msg)] = smtp_server.messages
    assert rcpts == ["ann@example.com"] and msg["Subject"] == "Welcome, c-1"
    assert "Action welcome via email." in msg.get_payload()
    assert msg["Message-ID"] == f"<{1:032x}@touchline>"
    assert [d["error"] for d in rec.dead] == ["no_address"]


def test_smtp_retries_4xx_and_dead_letters_5xx(smtp_server):
    smtp_server.reject = ["451 try again later", "554 rejected"]
    rec = Recorder()
    connector = SmtpConnector("email", rec.report, SmtpConnectorConfig(
        port=smtp_server.port, sender="news@example.com", recipient="{contact_id}@example.com",
        backoff_seconds=0.01, concurrency=1), seed=1)
    connector.start()
    connector.submit([decision(1)])  # 451, then 554: permanent
    connector.submit([decision(2)])
    connector.close(10)
    assert [d["error"] for d in rec.dead] == ["smtp_5xx"]
    assert [m["X-Touchline-Decision-Id"] for _, m in smtp_server.messages] == [f"{2:032x}"]


def test_smtp_template_errors_are_clear(tmp_path):
    from touchline.connectors.channels.smtp import TemplateError, Templates

    (tmp_path / "bad.txt").write_text("Subject: hi\n\n{% if %}\n")
    with pytest.raises(TemplateError, match=r"bad.txt, line 3"):
        Templates(tmp_path)
    with pytest.raises(TemplateError, match="does not exist"):
        Templates(tmp_path / "nope")


def test_smtp_server_down_retries_then_dead_letters():
    from redis_servers import free_port

    rec = Recorder()
    connector = SmtpConnector("email", rec.report, SmtpConnectorConfig(
        port=free_port(), sender="n@example.com", recipient="{contact_id}@example.com", max_attempts=2,
        backoff_seconds=0.01, timeout_seconds=1), seed=1)
    connector.start()
    connector.submit([decision(1)])
    connector.close(10)
    assert [(d["error"], d["attempts"]) for d in rec.dead] == [("connection", 2)]
