"""The production runtime's pieces on their own: recovery directory, its lock, the epoch
mark that ties it to a Redis, and the settings that guard several processes."""

from __future__ import annotations

import pytest
import redis

from touchline.cli import main
from touchline.runtime import RecoveryDirInUse, adopt_epoch, hold, prepare_recovery, recovery_dir
from touchline.settings import ConfigError, load_settings
from touchline.state.base import StoreDataLost
from touchline.state.redis import EPOCH_KEY, RedisStore


def _settings(tmp_path, **extra):
    return load_settings(None, {"kafka.bootstrap": "127.0.0.1:9", "source.kind": "kafka",
                                "state.url": "redis://127.0.0.1:6379/0", "output.dir": tmp_path, **extra})


def test_recovery_partitions_are_created_on_first_start_and_found_after(tmp_path):
    settings = _settings(tmp_path)
    assert prepare_recovery(settings) is False
    assert sorted(p.name for p in recovery_dir(settings).glob("part-*.sqlite3")) == ["part-0.sqlite3"]
    assert prepare_recovery(settings) is True


def test_a_second_engine_on_the_same_recovery_directory_is_refused(tmp_path):
    settings = _settings(tmp_path)
    with hold(settings):
        with pytest.raises(RecoveryDirInUse, match="in use by another engine process"):
            with hold(settings):
                pass
    with hold(settings):  # released when the first one ends
        pass
    with hold(settings), hold(_settings(tmp_path, **{"runtime.process_id": 1,
                                                     "runtime.addresses": ["a:1", "b:2"]})):
        pass  # another process id of the same cluster has a lock of its own


def test_the_recovery_directory_remembers_which_redis_it_belongs_to(tmp_path, redis_url):
    marker = tmp_path / "touchline.epoch"
    epoch = adopt_epoch(RedisStore(redis_url), marker)
    assert marker.read_text().strip() == epoch
    assert adopt_epoch(RedisStore(redis_url), marker) == epoch  # a resume on the same Redis
    client = redis.Redis.from_url(redis_url)
    client.flushall()  # as a restart without persistence leaves it
    with pytest.raises(StoreDataLost, match="holds no Touchline state.*lost"):
        adopt_epoch(RedisStore(redis_url), marker)
    assert client.get(EPOCH_KEY) is None  # refusing leaves nothing behind
    client.set(EPOCH_KEY, "someone-else")
    with pytest.raises(StoreDataLost, match="another deployment"):
        adopt_epoch(RedisStore(redis_url), marker)


def test_a_commit_after_the_store_lost_its_data_is_refused(redis_url):
    from touchline.decisions.profile import Profile

    store = RedisStore(redis_url)
    store.claim_epoch(None)
    assert store.commit({"c1": Profile("c1")}, (), ()) == set()
    redis.Redis.from_url(redis_url).flushall()
    with pytest.raises(StoreDataLost, match="lost its data"):
        store.commit({"c1": Profile("c1")}, (), ())


def test_several_processes_need_kafka_and_a_shared_store(tmp_path, capsys):
    with pytest.raises(ConfigError, match="several processes need Kafka in"):
        load_settings(None, {"runtime.processes": 2, "output.dir": tmp_path})
    with pytest.raises(ConfigError, match="process_id needs addresses"):
        load_settings(None, {"runtime.process_id": 0})
    with pytest.raises(ConfigError, match="'hosta' is not host:port"):
        load_settings(None, {"runtime.process_id": 0, "runtime.addresses": ["hosta", "hostb:2101"]})
    assert main(["run", "--processes", "2", "--out", str(tmp_path), "--quiet"]) == 2
    assert "several processes need Kafka in (--kafka) and a shared state store (--redis)" in capsys.readouterr().err
