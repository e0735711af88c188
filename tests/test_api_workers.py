"""``touchline serve --workers N`` as an operator runs it: N processes on one port and one Redis.

Requests reach both workers; decisions from both at once never break a cap (the versioned
commits); ``/metrics`` on the port counts every worker's requests; a worker killed stops the
others and the parent exits 1; SIGTERM stops them all cleanly; timers of workers a smaller
run no longer has are taken over; settings that cannot work are refused with the key named.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api_server import KEY, Served, _wait_for, event, handoff_settings
from engine_process import cap_violations
from touchline.api.workers import regroup_timer_partitions
from touchline.state import open_store
from touchline.state.redis import timer_keys

TIMER = "timer"


@pytest.fixture
def workers(tmp_path, redis_url):
    config = handoff_settings(tmp_path / "settings.toml")
    with Served(tmp_path / "api", "--redis", redis_url, "--config", str(config), "--workers", "2") as api:
        for n in (0, 1):
            _wait_for(api.stderr_path, api.proc, rf"(worker {n} of 2): serving the API")
        yield api


def _pids(api: Served) -> list[int]:
    return [int(p) for p in re.search(r"with 2 workers \(pids (\d+), (\d+);", api.stderr()).groups()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _requests_by_worker(api: Served, endpoint: str) -> dict[str, float]:
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "touchline_api_requests_total" and s.labels.get("endpoint") == endpoint:
                counts[s.labels["worker"]] = counts.get(s.labels["worker"], 0.0) + s.value
    return counts


def _decide_on_a_new_connection(api: Served, contact: str) -> dict:
    """One request on a connection of its own: the kernel may hand it to either worker."""
    return httpx.post(f"{api.url}/v1/decide", headers={"Authorization": f"Bearer {KEY}"}, timeout=30, json={
        "contact_id": contact, "context": {"placement": "agent_script", "channel": "sales_task"}}).json()


def test_both_workers_answer_on_one_port_and_never_break_a_cap_together(workers):
    api = workers
    contacts = [f"w{i}" for i in range(10)]
    posted = api.client.post("/v1/events", json=[event(f"{c}-0", "login", c) for c in contacts])
    assert posted.status_code == 200 and posted.json()["accepted"] == len(contacts)
    answers: list[dict] = []

    def ask_repeatedly() -> None:
        for _ in range(3):
            answers.extend(_decide_on_a_new_connection(api, c) for c in contacts)

    askers = [threading.Thread(target=ask_repeatedly) for _ in range(4)]
    for t in askers:
        t.start()
    for t in askers:
        t.join(120)
    assert len(answers) == 4 * 3 * len(contacts)
    decided = api.out("worker-0-decisions.jsonl") + api.out("worker-1-decisions.jsonl")
    assert cap_violations(decided, {"sales_task": {"30d": 1}}) == []
    assert sorted(d["contact_id"] for d in decided) == contacts  # exactly one hand-off each, from either worker
    assert sum(a["action"] == "sales_handoff" for a in answers) == len(contacts)
    time.sleep(1.5)  # every worker has published its metrics since
    by_worker = _requests_by_worker(api, "decide")
    assert set(by_worker) == {"0", "1"} and all(n > 0 for n in by_worker.values()), by_worker
    assert sum(by_worker.values()) == len(answers)


def test_a_killed_worker_stops_the_others_and_sigterm_stops_them_all_cleanly(tmp_path, redis_url, workers):
    api = workers
    first, second = _pids(api)
    os.kill(second, signal.SIGKILL)
    assert api.proc.wait(60) == 1
    assert not _alive(first) and not _alive(second)
    assert f"process {second} exited with -9; stopping the others" in api.stderr()
    assert "worker 0 of 2: stopped by SIGTERM" in api.stderr()
    with Served(tmp_path / "again", "--redis", redis_url, "--workers", "2") as again:
        for n in (0, 1):
            _wait_for(again.stderr_path, again.proc, rf"(worker {n} of 2): serving the API")
        assert again.client.get("/v1/contacts/nobody").status_code == 404
        assert again.stop(signal.SIGTERM) == 0
        log = again.stderr()
        assert "worker 0 of 2: stopped by SIGTERM" in log and "worker 1 of 2: stopped by SIGTERM" in log
        assert "stopped: every worker answered its requests in flight" in log
        assert not any(_alive(pid) for pid in _pids(again))


def test_a_smaller_run_takes_over_the_timers_of_workers_it_no_longer_has(redis_url):
    store = open_store(redis_url)
    assert regroup_timer_partitions(store, 1000, 3) == 0  # the first run: nothing left behind
    for partition, due in ((1000, 10), (1001, 20), (1002, 30)):
        store.commit({}, [], [(f"c{partition}", TIMER, due)], partition=partition)
    assert [t[1] for t in store.pop_due(25, partition=1001)] == ["c1001"]  # claimed, never committed: a kill -9
    assert regroup_timer_partitions(store, 1000, 1) == 2
    client = redis.Redis.from_url(redis_url)
    assert client.zcard(timer_keys(1001)[0]) == client.zcard(timer_keys(1001)[1]) == 0
    assert client.zcard(timer_keys(1002)[0]) == 0
    assert sorted(t[1] for t in store.pop_due(100, partition=1000)) == ["c1000", "c1001", "c1002"]
    assert regroup_timer_partitions(store, 1000, 1) == 0  # once
    client.close()
    store.close()


def test_settings_that_cannot_work_are_refused_naming_them(tmp_path, redis_url):
    def touchline(*args: str, command: str = "serve") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
        return subprocess.run([sys.executable, "-m", "touchline", command, "--out", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60, env=env)

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return touchline("--port", "0", *args)

    memory = serve("--workers", "2")
    assert memory.returncode == 2 and "api.workers = 2 (--workers) needs state in Redis" in memory.stderr
    replay = serve("--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--input", str(tmp_path / "x.jsonl"))
    assert replay.returncode == 2 and "each worker would apply it" in replay.stderr
    down = serve("--workers", "2", "--redis", "redis://127.0.0.1:1/0")
    assert down.returncode == 1 and down.stderr.count("cannot reach Redis") == 1 and "serving" not in down.stderr
    by_hand = serve("--worker-index", "1")
    assert by_hand.returncode == 2 and "use --workers" in by_hand.stderr
    (tmp_path / "w.toml").write_text("[api]\nworkers = 3\nport = 0\n")
    (tmp_path / "none.jsonl").write_text("")
    embedded = touchline("--api", "--redis", redis_url, "--config", str(tmp_path / "w.toml"), "--input",
                         str(tmp_path / "none.jsonl"), command="run")
    assert embedded.returncode == 2 and "api.workers = 3 is for touchline serve" in embedded.stderr


@pytest.mark.parametrize("args", [(), ("--workers", "2")], ids=["one process", "two workers"])
def test_sigterm_the_moment_serving_is_printed_stops_every_process_cleanly(tmp_path, redis_url, args):
    """The last steps of start-up (the heap freeze) come after the "serving" line: a SIGTERM
    then was once raised inside a garbage-collector callback, swallowed, and the server went
    on serving (a worker that never stopped, its parent waiting for it)."""
    for attempt in range(3):
        served = Served(tmp_path / f"{attempt}", "--redis", redis_url, *args)
        with served:
            for n in range(2 if args else 0):  # the moment the last of them says so
                _wait_for(served.stderr_path, served.proc, rf"(worker {n} of 2): serving the API")
            started = time.monotonic()
            assert served.stop(signal.SIGTERM) == 0, served.stderr()
            assert time.monotonic() - started < 20
            assert "stopped by SIGTERM" in served.stderr()


def test_timers_of_the_single_set_of_earlier_versions_move_into_the_first_partition(redis_url):
    """The move an upgrade makes (ZRANGE ... WITHSCORES, which this client answers in pairs)."""
    from touchline.state.redis import LEGACY_TIMERS_KEY, timer_member

    client = redis.Redis.from_url(redis_url)
    client.zadd(LEGACY_TIMERS_KEY, {timer_member("c1", TIMER): 10, timer_member("c2", TIMER): 20})
    store = open_store(redis_url)
    assert sorted(t[1] for t in store.pop_due(100, partition=0)) == ["c1", "c2"]
    assert client.exists(LEGACY_TIMERS_KEY) == 0
    client.close()
    store.close()
