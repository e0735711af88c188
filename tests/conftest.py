"""Shared fixtures: small, fast settings for end-to-end runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from touchline.settings import Settings, load_settings


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
