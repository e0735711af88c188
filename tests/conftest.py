"""Shared fixtures: small, fast settings for end-to-end runs; and a guard that the tests leave
the working directory's outputs (README command 1's ``touchline-out/``) as they found them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from touchline.settings import Settings, load_settings


def _outputs_in(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: (size, modification time)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def working_directory_outputs_untouched():
    """Tests write only to temporary folders: a test that runs the engine without ``--out``
    would empty the outputs of the run README command 1 just made."""
    folder = Path(os.getcwd()) / "touchline-out"
    before = _outputs_in(folder)
    yield
    after = _outputs_in(folder)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"tests changed {folder}: {changed[:10]}"


@pytest.fixture
def small_settings(tmp_path: Path):
    """A factory for settings of a small simulated run writing under tmp_path."""

    def make(out: str = "out", **overrides) -> Settings:
        base = {
            "simulator.contacts": 200,
            "simulator.days": 14,
            "output.dir": tmp_path / out,
            "metrics.enabled": False,
        }
        base.update(overrides)
        return load_settings(None, base)

    return make


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the whole session."""
    from redis_servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of the session's Redis, emptied for this test (and started again if a test stopped it)."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster on loopback for the whole session."""
    from redis_servers import RedisCluster

    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster) -> str:
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real Kafka-protocol broker (Tansu, memory storage) on a free loopback port."""
    from kafka_broker import TansuBroker

    broker = TansuBroker(tmp_path_factory.mktemp("tansu")).start()
    yield broker
    broker.stop()


@pytest.fixture
def topics(request) -> dict[str, str]:
    """Topic names of this test's own, so tests on the shared broker never see each other's messages."""
    import re
    import uuid

    stem = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name)[:60] + "-" + uuid.uuid4().hex[:6]
    return {
        "kafka.events_topic": f"{stem}.events",
        "kafka.decisions_topic": f"{stem}.decisions",
        "kafka.dead_letter_topic": f"{stem}.dead",
        "kafka.channel_topic_prefix": f"{stem}.channel.",
    }


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd) on loopback; ``.messages`` collects what it accepted and
    ``.reject`` (a list of reply lines) makes it answer the next DATA commands with errors."""
    import threading
    from email import message_from_bytes

    from aiosmtpd.controller import Controller

    from redis_servers import free_port

    class Handler:
        def __init__(self) -> None:
            self.messages: list = []
            self.reject: list[str] = []
            self.lock = threading.Lock()

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's naming)
            with self.lock:
                if self.reject:
                    return self.reject.pop(0)
                msg = message_from_bytes(envelope.content)
                self.messages.append((envelope.rcpt_tos, msg))
            return "250 OK"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port  # type: ignore[attr-defined]
    yield handler
    controller.stop()
