"""The whole flow over a small simulated stream: what comes out, and that it is repeatable."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from touchline.cli import main
from touchline.decisions.policy import in_holdout, in_quiet_hours, local_hour
from touchline.metrics.server import MetricsServerError, serve_metrics
from touchline.runner import run

REQUIRED = {
    "decision_id", "contact_id", "action", "channel", "template", "journey", "step", "scores",
    "reasons", "suppressed", "experiment", "trigger", "event_time", "decision_time",
}


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def default_like_run(tmp_path_factory):
    """One run shared by the assertions below (200 contacts, 14 days)."""
    from touchline.settings import load_settings

    out = tmp_path_factory.mktemp("run")
    settings = load_settings(None, {"simulator.contacts": 300, "simulator.days": 21, "output.dir": out,
                                    "metrics.enabled": False})
    registry = CollectorRegistry()
    result = run(settings, progress=None, registry=registry)
    return settings, result, registry, out


def test_run_emits_decisions_dead_letters_and_learns(default_like_run):
    settings, result, _, out = default_like_run
    s = result.summary
    assert s["events_processed"] > 5_000
    assert s["decisions_total"] > 0
    assert {"welcome/email", "cart_reminder/email"} <= set(s["decisions"])
    assert s["dead_letters_total"] > 0 and "bad_json" in s["dead_letters"]
    assert s["models"]["lead"]["labels"] > 100 and s["models"]["churn"]["labels"] > 100
    assert s["models"]["lead"]["roc_auc"] is not None and s["models"]["churn"]["roc_auc"] is not None
    assert s["latency_ms"]["processing_p99"] is not None
    decisions = _read(out / "decisions.jsonl")
    assert len(decisions) == s["decisions_total"]
    dead = _read(out / "dead_letters.jsonl")
    assert len(dead) == s["dead_letters_total"]
    assert all(d["reason"] and d["detail"] and "raw" in d and d["source"].startswith("simulator:") for d in dead)


def test_decision_records_are_complete_and_unique(default_like_run):
    _, _, _, out = default_like_run
    decisions = _read(out / "decisions.jsonl")
    assert all(REQUIRED <= set(d) for d in decisions)
    assert len({d["decision_id"] for d in decisions}) == len(decisions)
    for d in decisions:
        assert d["reasons"] and d["scores"]
        assert _ms(d["decision_time"]) >= _ms(d["event_time"])


def test_policy_holds_on_the_output(default_like_run):
    """Caps, holdout and quiet hours are respected by everything that was emitted."""
    settings, _, _, out = default_like_run
    policy = settings.policy
    decisions = _read(out / "decisions.jsonl")
    per_contact = defaultdict(list)
    for d in decisions:
        assert not in_holdout(d["contact_id"], policy.holdout_name, policy.holdout_share)
        per_contact[d["contact_id"]].append((_ms(d["decision_time"]), d["channel"]))
    from touchline.connectors.simulator import Simulator
    from touchline.runner import simulator_spec

    zones = {t.contact_id: t.timezone for t in Simulator(simulator_spec(settings)).traits()}
    quiet = policy.quiet_hours
    checked = 0
    for d in decisions:
        if d["channel"] in quiet.channels:
            hour = local_hour(_ms(d["decision_time"]), zones[d["contact_id"]], quiet.default_timezone)
            assert not in_quiet_hours(hour, quiet), d
            checked += 1
    assert checked > 0
    for sends in per_contact.values():
        for t, channel in sends:
            for window, limit in policy.caps.get(channel, {}).items():
                span = {"24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}[window]
                assert sum(1 for u, c in sends if c == channel and t - span < u <= t) <= limit


def test_metrics_registry_matches_the_summary(default_like_run):
    _, result, registry, _ = default_like_run
    s = result.summary
    total = sum(
        registry.get_sample_value("touchline_decisions_total", {"action": a, "channel": c}) or 0
        for a, c in (k.split("/") for k in s["decisions"])
    )
    assert total == s["decisions_total"]
    assert registry.get_sample_value("touchline_dead_letters_total", {"reason": "bad_json"}) == s["dead_letters"]["bad_json"]
    assert registry.get_sample_value("touchline_processing_latency_seconds_count") == s["events_processed"]


def test_same_input_gives_byte_identical_decisions(small_settings):
    first = run(small_settings("a"), progress=None)
    second = run(small_settings("b"), progress=None)
    a = (Path(first.summary["outputs"]["decisions"])).read_bytes()
    b = (Path(second.summary["outputs"]["decisions"])).read_bytes()
    assert a and a == b
    other = run(small_settings("c", **{"simulator.seed": 99}), progress=None)
    assert Path(other.summary["outputs"]["decisions"]).read_bytes() != a


def test_batch_size_does_not_change_decisions(small_settings):
    big = run(small_settings("big", **{"source.batch_size": 5000}), progress=None)
    small = run(small_settings("small", **{"source.batch_size": 37}), progress=None)
    assert Path(big.summary["outputs"]["decisions"]).read_bytes() == Path(small.summary["outputs"]["decisions"]).read_bytes()


def test_cli_simulate_then_replay_file(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    assert main(["simulate", "--out", str(events), "--contacts", "100", "--days", "7"]) == 0
    lines = events.read_bytes().splitlines()
    assert len(lines) > 500
    out = tmp_path / "replay"
    assert main(["run", "--input", str(events), "--out", str(out), "--no-metrics", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Touchline run summary" in text and "events processed" in text
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["lines_read"] == len(lines)
    dead = _read(out / "dead_letters.jsonl")
    assert dead and all(d["source"].startswith("events.jsonl:") for d in dead)
    line_no = int(dead[0]["source"].rsplit(":", 1)[1])
    assert lines[line_no - 1].decode("utf-8", "backslashreplace")[:100] == dead[0]["raw"][:100]


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "touchline.toml"
    bad.write_text("[policy]\nholdout_shar = 0.1\n")
    assert main(["run", "--config", str(bad), "--no-metrics"]) == 2
    err = capsys.readouterr().err
    assert "policy.holdout_shar" in err and "unknown key (did you mean 'holdout_share'?)" in err and str(bad) in err
    out = tmp_path / "earlier-run"
    out.mkdir()
    (out / "decisions.jsonl").write_text("kept\n")
    assert main(["run", "--input", str(tmp_path / "missing.jsonl"), "--no-metrics", "--quiet", "--out", str(out)]) == 1
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["decisions.jsonl"]  # a failed start touches nothing
    assert (out / "decisions.jsonl").read_text() == "kept\n"
    broken = tmp_path / "broken.toml"
    broken.write_text("[policy\n")
    assert main(["run", "--config", str(broken)]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_hostile_input_file_ends_in_a_result(tmp_path):
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_bytes(
        b"\xff\xfe\x00garbage\n"
        + b'{"event_id": "x", "type": "page_view", "ts": 1, "contact_id": "c"}' + b" " * 70_000 + b"\n"
        + b"[1,2,3]\n\n\n"
        + b'{"event_id": "ok", "type": "page_view", "ts": "2026-01-05T10:00:00Z", "contact_id": "c1"}\n'
        + b'{"event_id": 5}'
    )
    out = tmp_path / "o"
    assert main(["run", "--input", str(hostile), "--out", str(out), "--no-metrics", "--quiet"]) == 0
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["events_processed"] == 1
    assert summary["dead_letters"] == {"bad_json": 1, "oversized": 1, "not_object": 1, "wrong_type": 1} or (
        sum(summary["dead_letters"].values()) == 4
    )


def test_metrics_server_serves_and_reports_busy_port():
    registry = CollectorRegistry()
    from touchline.metrics.engine_metrics import EngineMetrics

    EngineMetrics(registry).count_events({"purchase": 2}, "jsonl")
    host, port, server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
        assert 'touchline_events_total{source="jsonl",type="purchase"} 2.0' in body
        with pytest.raises(MetricsServerError, match="already in use"):
            serve_metrics(registry, "127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()


def test_default_run_learns_lead_and_churn(tmp_path):
    """On the embedded default (3,000 contacts, 30 days) both models beat chance clearly.

    Seeded, so the figures are exact regression guards (measured: lead 0.651 with calibration
    error 0.029, churn 0.670; python -m touchline.lead_bench sets the lead figure beside its
    offline ceiling).
    """
    from touchline.settings import load_settings

    result = run(load_settings(None, {"output.dir": tmp_path, "metrics.enabled": False}), progress=None)
    models = result.summary["models"]
    assert models["lead"]["labels"] > 2_000 and models["churn"]["labels"] > 10_000
    assert models["lead"]["roc_auc"] > 0.64
    assert models["lead"]["log_loss"] < 0.61  # better calibrated than always saying 0.5 (0.69)
    assert models["lead"]["calibration_error"] < 0.05  # issue 20: it said 0.96 where 0.52 was observed
    assert models["churn"]["roc_auc"] > 0.65


def test_decisions_agree_across_processes_with_different_hash_seeds(tmp_path):
    """No salted hash() anywhere in the decision path: two processes, two seeds, same bytes."""
    import os
    import subprocess
    import sys

    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"p{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "touchline", "run", "--contacts", "150", "--days", "10", "--no-metrics",
             "--quiet", "--out", str(out)],
            check=True, env=env, capture_output=True, timeout=120,
        )
        outputs.append((out / "decisions.jsonl").read_bytes())
    assert outputs[0] and outputs[0] == outputs[1]


def test_metrics_are_served_on_loopback_while_running_and_released_after(tmp_path):
    from touchline.settings import load_settings

    seen = {}

    def scrape(host, port):
        seen["addr"] = (host, port)
        seen["body"] = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()

    settings = load_settings(None, {"simulator.contacts": 30, "simulator.days": 2, "output.dir": tmp_path,
                                    "metrics.port": 0})
    run(settings, progress=None, on_metrics=scrape)
    host, port = seen["addr"]
    assert host == "127.0.0.1" and port > 0
    assert "touchline_build_info{" in seen["body"] and 'version="' in seen["body"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_cli_config_prints_effective_settings_without_secrets(capsys, monkeypatch):
    monkeypatch.setenv("TOUCHLINE_POLICY__HOLDOUT_SHARE", "0.2")
    monkeypatch.setenv("TOUCHLINE_STATE__URL", "redis://app:s3cret@cache:6379/0")
    assert main(["config"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["policy"]["holdout_share"] == 0.2
    assert shown["state"]["url"] == "redis://app:***@cache:6379/0"


@pytest.mark.parametrize("variable, expected", [
    ("TOUCHLINE_METRIC__PORT", "TOUCHLINE_METRIC__PORT: no settings section 'metric' (did you mean 'metrics'?)"),
    ("TOUCHLINE_POLICY_HOLDOUT_SHARE", "TOUCHLINE_POLICY_HOLDOUT_SHARE: levels are separated by two underscores: "
                                       "TOUCHLINE_POLICY__HOLDOUT_SHARE"),
])
def test_a_misnamed_environment_variable_is_refused_not_ignored(variable, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(variable, "0")
    monkeypatch.setenv("TOUCHLINE_REDIS_PASSWORD", "not a setting: the compose file's .env")
    assert main(["run", "--out", str(tmp_path / "out")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
