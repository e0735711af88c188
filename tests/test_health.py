"""Health endpoints, a live scrape checked by promtool, and the logs an SRE reads."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import waiting
from live_engine import LiveEngine
from touchline import cli
from touchline.metrics.server import Health
from touchline.runner import build_engine, health_checks
from touchline.settings import load_settings


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(predicate, what: str):
    return waiting.wait_for(predicate, what, timeout=20.0, interval=0.1)


def samples(url: str) -> dict[tuple[str, tuple], float]:
    _, body = get(url + "/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def total(scrape: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in scrape.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def test_health_endpoints_answer_while_the_engine_runs_and_close_after(tmp_path):
    with LiveEngine(tmp_path) as live:
        status, body = get(live.url + "/healthz")
        assert (status, orjson.loads(body)) == (200, {"status": "alive"})
        status, body = get(live.url + "/readyz")
        assert status == 200
        assert orjson.loads(body) == {"status": "ready", "checks": {"state_store": {"ok": True, "detail": "in-process"}}}
        assert get(live.url + "/livez")[0] == 200
        status, body = get(live.url + "/metrics")
        assert status == 200 and b"touchline_build_info{" in body
        assert get(live.url + "/nope")[0] == 404
        url = live.url
    with pytest.raises(urllib.error.URLError):  # released with the run
        urllib.request.urlopen(url + "/healthz", timeout=2)
    assert url.startswith("http://127.0.0.1:")


def test_readiness_follows_the_state_store_and_liveness_survives_a_short_outage(tmp_path, redis_url, redis_server):
    with LiveEngine(tmp_path, **{"state.url": redis_url, "state.retry_seconds": 60}) as live:
        status, body = get(live.url + "/readyz")
        assert status == 200, body
        assert "answered PING" in orjson.loads(body)["checks"]["state_store"]["detail"]
        redis_server.stop()
        status, body = wait_for(lambda: (r := get(live.url + "/readyz"))[0] == 503 and r, what="readyz 503")
        check = orjson.loads(body)["checks"]["state_store"]
        assert check["ok"] is False and "did not answer PING" in check["detail"] and "127.0.0.1" in check["detail"]
        assert get(live.url + "/healthz")[0] == 200  # retrying within its budget: do not restart it
        wait_for(lambda: total(samples(live.url), "touchline_state_store_up") == 0, what="store up 0 while down")
        redis_server.start()
        wait_for(lambda: get(live.url + "/readyz")[0] == 200, what="readyz 200 again")
        wait_for(lambda: total(samples(live.url), "touchline_state_store_up") == 1, what="store up again")
        # counted when the batch that retried through the outage ends, which may be a moment later
        wait_for(lambda: total(samples(live.url), "touchline_state_store_errors_total") > 0, what="errors counted")
    assert "error" not in live.result


def test_readiness_names_an_unreachable_broker(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(None, {"kafka.bootstrap": f"127.0.0.1:{port}", "output.dir": tmp_path,
                                    "models.store": "off"})
    engine = build_engine(settings, CollectorRegistry(), keep_models=False)
    status, body = health_checks(settings, engine).readiness()
    assert status == 503 and body["status"] == "not ready"
    assert body["checks"]["state_store"]["ok"] is True
    broker = body["checks"]["broker"]
    assert broker["ok"] is False and f"127.0.0.1:{port} unreachable" in broker["detail"]


def test_readiness_with_a_real_broker_and_redis(tmp_path, kafka_broker, redis_url):
    settings = load_settings(None, {"kafka.bootstrap": kafka_broker.bootstrap, "state.url": redis_url,
                                    "output.dir": tmp_path, "models.store": "off"})
    engine = build_engine(settings, CollectorRegistry(), keep_models=False)
    try:
        status, body = health_checks(settings, engine).readiness()
    finally:
        engine.store.close()
    assert status == 200, body
    assert body["checks"]["broker"]["detail"].startswith(f"{kafka_broker.bootstrap} answered")
    assert "answered PING" in body["checks"]["state_store"]["detail"]


def test_liveness_fails_on_a_stuck_batch_or_a_stopped_engine(tmp_path):
    settings = load_settings(None, {"output.dir": tmp_path, "models.store": "off", "metrics.stall_seconds": 120})
    engine = build_engine(settings, CollectorRegistry(), keep_models=False)
    health = health_checks(settings, engine)
    assert health.liveness() == (200, {"status": "alive"})
    engine.busy_since = time.monotonic() - 500
    status, body = health.liveness()
    assert status == 503 and "one batch has been running for 500 s" in body["reason"]
    assert "metrics.stall_seconds = 120" in body["reason"]
    engine.busy_since = None
    engine.fail(RuntimeError("Redis at redis://127.0.0.1:1/0 unreachable for 60 s"))
    status, body = health.liveness()
    assert status == 503 and body["reason"].startswith("the engine stopped: Redis")
    assert health.readiness()[1]["checks"]["engine"]["ok"] is False


def test_readiness_checks_are_cached_so_probes_cannot_hammer_a_dependency():
    calls = []

    def check() -> str:
        calls.append(1)
        raise ConnectionError("refused")

    health = Health({"state_store": check}, cache_seconds=60)
    first = health.readiness()
    assert first == health.readiness() and len(calls) == 1
    assert first == (503, {"status": "not ready", "checks": {"state_store": {"ok": False, "detail": "refused"}}})


def test_a_live_scrape_passes_promtool_check_metrics_and_has_every_stage(tmp_path):
    with LiveEngine(tmp_path, rate=400) as live:
        wait_for(lambda: total(samples(live.url), "touchline_decisions_total") >= 5, what="decisions")
        wait_for(lambda: total(samples(live.url), "touchline_stage_latency_seconds_count", stage="emit") > 0,
                 what="an emit stage observation")
        _, body = get(live.url + "/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    scrape = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    for stage in ("parse", "state", "score", "policy", "emit"):
        assert total(scrape, "touchline_stage_latency_seconds_count", stage=stage) > 0, stage
    assert total(scrape, "touchline_event_to_decision_seconds_count") > 0  # live: event time to decision emit
    assert total(scrape, "touchline_events_total", source="jsonl") > 0
    assert total(scrape, "touchline_received_bytes_total", source="jsonl") > 0
    assert total(scrape, "touchline_identity_events_total") == total(scrape, "touchline_events_total")
    assert total(scrape, "process_resident_memory_bytes") > 0
    for (name, labels), _ in scrape.items():
        assert "contact_id" not in dict(labels) and not any(v.startswith("c-") for _, v in labels), (name, labels)


def test_json_logs_at_info_level_carry_no_personal_data(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["run", "--contacts", "300", "--days", "5", "--out", str(out), "--log-format", "json",
                     "--log-level", "info", "--metrics-port", "0", "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    records = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records, err
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert any(m.startswith("run started") for m in messages) and any(m.startswith("run finished") for m in messages)
    finished = next(r for r in records if r["message"].startswith("run finished"))
    assert finished["events"] > 0 and finished["failed"] is False
    identities = set()
    for line in (out / "events.jsonl").read_bytes().splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            identities.update(str(doc[k]) for k in ("contact_id", "anonymous_id") if doc.get(k))
    assert len(identities) > 100
    leaked = sorted(i for i in identities if re.search(rf"(?<![\w-]){re.escape(i)}(?![\w-])", err))
    assert not leaked, leaked[:5]


def exposed_names() -> set[str]:
    """Every metric family the engine and its connectors register, as a scrape names them."""
    from shipped_metrics import engine_registry

    names = set()
    for family in engine_registry().collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_the_readme_documents_exactly_the_metrics_the_engine_exposes():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Observability"):readme.index("### State")]
    documented = set(re.findall(r"`((?:touchline|process|python)_[a-z_]+)(?:\{[^}`]*\})?`", section))
    exposed = exposed_names()
    assert exposed - documented == set(), "exposed but not documented"
    assert documented - exposed == set(), "documented but not exposed"


def test_a_scraper_that_hangs_up_leaves_no_traceback(capfd):
    """A client that closes its connection (RST) before reading the answer: no traceback on
    stderr, and the server keeps answering."""
    import socket
    import struct
    import urllib.request

    from prometheus_client import CollectorRegistry, Counter

    from touchline.metrics.server import serve_metrics

    registry = CollectorRegistry()
    wide = Counter("touchline_test_wide", "many series", ["n"], registry=registry)
    for n in range(3000):  # a body larger than the socket buffers: the write meets the reset
        wide.labels(str(n)).inc()
    host, port, server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        for _ in range(5):
            client = socket.create_connection((host, port))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            client.close()  # with linger 0: a reset, as a scraper's timeout does
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_silent_or_slow_client_delays_no_other_and_is_dropped(capfd):
    """A client that connects and sends nothing holds one thread, not the server: others are
    answered meanwhile, and after ``client_timeout`` it is dropped, without a traceback."""
    import socket
    import urllib.request

    from prometheus_client import CollectorRegistry

    from touchline.metrics.server import serve_metrics

    host, port, server = serve_metrics(CollectorRegistry(), "127.0.0.1", 0, client_timeout=0.5)
    try:
        silent = socket.create_connection((host, port))
        half = socket.create_connection((host, port))
        half.sendall(b"GET /metrics HTTP/1.1\r\n")  # a request line, then nothing
        for _ in range(3):
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as answer:
                assert answer.status == 200
        for client in (silent, half):
            client.settimeout(5)
            started = time.monotonic()
            while client.recv(1024):  # the server closes it (a 408 first, or just EOF)
                pass
            assert time.monotonic() - started < 5
            client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err
