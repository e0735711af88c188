"""Channel connectors inside full engine runs: the embedded outbox, a webhook that fails,
an SMTP server, and configuration mistakes a user makes."""

from __future__ import annotations

import orjson
import pytest
from http_server import WebhookServer

from touchline.cli import main
from touchline.runner import run


def _decisions(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_embedded_default_writes_an_outbox_per_channel(small_settings, tmp_path):
    result = run(small_settings(), progress=None)
    decisions = _decisions(tmp_path / "out" / "decisions.jsonl")
    assert decisions
    for channel in {d["channel"] for d in decisions}:
        outbox = _decisions(tmp_path / "out" / "outbox" / f"{channel}.jsonl")
        assert outbox == [d for d in decisions if d["channel"] == channel]
        assert result.summary["deliveries"][channel] == {"delivered": len(outbox), "failed": 0}


def test_webhook_and_smtp_channels_in_a_run(small_settings, tmp_path, smtp_server):
    with WebhookServer() as hook:
        result = run(small_settings(**{
            "delivery.channels": {
                "email": {"kind": "smtp", "port": smtp_server.port, "sender": "news@example.com",
                          "recipient": "{contact_id}@example.com", "rate_per_second": 1000, "burst": 100},
                "sales_task": {"kind": "webhook", "url": hook.url, "rate_per_second": 1000, "burst": 100},
                "sms": {"kind": "none"},
            }}), progress=None)
    decisions = _decisions(tmp_path / "out" / "decisions.jsonl")
    email = sorted(d["decision_id"] for d in decisions if d["channel"] == "email")
    tasks = sorted(d["decision_id"] for d in decisions if d["channel"] == "sales_task")
    assert email and tasks
    assert sorted(m["X-Touchline-Decision-Id"] for _, m in smtp_server.messages) == email
    assert sorted(hook.delivered) == tasks and hook.replays == 0
    assert "sms" not in result.summary["deliveries"]
    assert result.summary["delivery_failures_total"] == 0


def test_failing_webhook_ends_in_dead_letters_and_the_summary(small_settings, tmp_path, capsys):
    with WebhookServer(lambda key, attempt: (500, {}, 0.0)) as hook:
        result = run(small_settings(**{"delivery.channels": {"sales_task": {
            "kind": "webhook", "url": hook.url, "max_attempts": 2, "backoff_seconds": 0.01,
            "rate_per_second": 1000, "burst": 100}}}), progress=None)
    tasks = [d for d in _decisions(tmp_path / "out" / "decisions.jsonl") if d["channel"] == "sales_task"]
    dead = [d for d in _decisions(tmp_path / "out" / "dead_letters.jsonl") if d["kind"] == "delivery_failed"]
    assert sorted(d["decision_id"] for d in dead) == sorted(d["decision_id"] for d in tasks)
    assert all(d["error"] == "http_5xx" and d["attempts"] == 2 and d["channel"] == "sales_task" for d in dead)
    assert result.summary["deliveries"]["sales_task"] == {"delivered": 0, "failed": len(tasks)}
    assert all(n == 2 for n in hook.attempts.values())


def test_connector_config_mistakes_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[delivery.channels.email]\nkind = "smtp"\nsender = "a@b.c"\n')
    assert main(["run", "--config", str(bad), "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "address_book" in capsys.readouterr().err
    bad.write_text('[delivery.channels.email]\nkind = "smtp"\nsender = "a@b.c"\nrecipient = "x"\n'
                   f'templates = "{tmp_path / "missing"}"\n')
    assert main(["run", "--config", str(bad), "--quiet", "--no-metrics", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "delivery.channels.email" in err and "does not exist" in err and "Traceback" not in err
    bad.write_text('[delivery.channels.email]\nkind = "kafka"\n')
    assert main(["run", "--config", str(bad), "--quiet", "--no-metrics", "--out", str(tmp_path / "o")]) == 1
    assert "kafka.bootstrap" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", ["{email}", "{contact_id"])
def test_bad_recipient_pattern_names_the_fields(tmp_path, capsys, pattern):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[delivery.channels.email]\nkind = "smtp"\nsender = "a@b.c"\nrecipient = "{pattern}"\n')
    assert main(["run", "--config", str(bad), "--quiet", "--no-metrics", "--out", str(tmp_path / "o")]) == 1
    assert "recipient pattern" in capsys.readouterr().err
