"""Secrets never printed (issue 18, item 8): a webhook URL's password and query key and a
configured header's value reach the endpoint, and nothing else: not ``touchline config``,
not stdout or stderr of a run at debug level, not summary.json, not the dead letters of
failed deliveries, not any other file of the output directory.

The redaction itself is specified by the doctests of ``touchline/redact.py``.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from http_server import WebhookServer

from touchline.redact import forget, redact_secrets, redact_url, remember

PW, KEY, TOKEN = "PW-SECRET", "KEY-SECRET", "TOKEN-SECRET"
SECRETS = (PW, KEY, TOKEN, "SASL-SECRET", "STATE-SECRET", "STORE-SECRET", "CHECKPOINT-SECRET", "KEYSTORE-SECRET")
ROOT = Path(__file__).resolve().parent.parent


def _touchline(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "touchline", *args], cwd=ROOT, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _leaks(text: bytes | str, where: str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{secret} in {where}" for secret in SECRETS if secret.encode() in data]


def _webhook(url: str, **extra: object) -> str:
    """A [delivery.channels.X] body: two quick attempts, the Authorization header configured."""
    lines = ['kind = "webhook"', f'url = "{url}"', f'headers = {{ Authorization = "Bearer {TOKEN}" }}',
             "max_attempts = 2", "backoff_seconds = 0.01", "rate_per_second = 1000", "burst = 100",
             "timeout_seconds = 3"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_config_prints_no_secret(tmp_path):
    config = tmp_path / "touchline.toml"
    config.write_text(
        '[state]\nurl = "redis://app:STATE-SECRET@127.0.0.1:6399/0"\n'
        '[models]\nstore = "redis://app:STORE-SECRET@127.0.0.1:6399/1"\ncheckpoint_key = "CHECKPOINT-SECRET"\n'
        '[kafka]\nconfig = { "sasl.username" = "bob", "ssl.keystore.password" = "KEYSTORE-SECRET" }\n'
        "[delivery.channels.sales_task]\n" + _webhook(f"https://user:{PW}@127.0.0.1:9/hook?api_key={KEY}&v=2"))
    done = _touchline("config", "--config", str(config), env={"TOUCHLINE_KAFKA__SASL_PASSWORD": "SASL-SECRET"})
    assert done.returncode == 0, done.stderr.decode()
    assert not _leaks(done.stdout, "stdout") + _leaks(done.stderr, "stderr")
    shown = orjson.loads(done.stdout)
    hook = shown["delivery"]["channels"]["sales_task"]
    assert hook["url"] == "https://user:***@127.0.0.1:9/hook?api_key=***&v=***"
    assert hook["headers"] == {"Authorization": "**********"}
    assert shown["kafka"]["sasl_password"] == "**********" and shown["models"]["checkpoint_key"] == "**********"
    assert shown["kafka"]["config"] == {"sasl.username": "bob", "ssl.keystore.password": "**********"}
    assert shown["state"]["url"] == "redis://app:***@127.0.0.1:6399/0"
    assert shown["models"]["store"] == "redis://app:***@127.0.0.1:6399/1"


def test_config_errors_print_no_secret(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[delivery.channels.sales_task]\n" + _webhook(f"ftp://user:{PW}@127.0.0.1:9/x?api_key={KEY}")
                      + "[kafka]\nsasl_password = 12345678\n")
    done = _touchline("config", "--config", str(config))
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "delivery.channels.sales_task" in err and "ftp://user:***@127.0.0.1:9/x?api_key=***" in err
    assert "kafka.sasl_password" in err and "12345678" not in err
    assert not _leaks(err, "stderr")


def test_a_run_with_failing_webhooks_prints_and_writes_no_secret(tmp_path):
    """Three webhook channels fail every attempt: 500 from a server that got the request
    (with and without credentials in the URL) and a TLS handshake that cannot work. The
    decisions are attempted and dead-lettered, the URLs show up masked in the log, the
    summary and the dead letters, and no secret shows up anywhere."""
    with WebhookServer(lambda key, attempt: (500, {}, 0.0)) as hook:
        base = f"127.0.0.1:{hook.port}/hook?api_key={KEY}"
        config = tmp_path / "touchline.toml"
        config.write_text(
            "[delivery.channels.sales_task]\n" + _webhook(f"http://user:{PW}@{base}")
            + "[delivery.channels.email]\n" + _webhook(f"http://{base}")
            + "[delivery.channels.sms]\n" + _webhook(f"https://user:{PW}@{base}"))  # TLS to a plain HTTP server
        out = tmp_path / "out"
        done = _touchline("run", "--config", str(config), "--contacts", "200", "--days", "14", "--no-metrics",
                          "--log-level", "debug", "--out", str(out))
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]

    # not vacuous: every decision of the three channels was attempted and dead-lettered ...
    decisions = [orjson.loads(line) for line in (out / "decisions.jsonl").read_bytes().splitlines()]
    by_channel = {ch: sorted(d["decision_id"] for d in decisions if d["channel"] == ch)
                  for ch in ("sales_task", "email", "sms")}
    assert all(by_channel.values()), {ch: len(ids) for ch, ids in by_channel.items()}
    dead = [orjson.loads(line) for line in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    failed = [d for d in dead if d["kind"] == "delivery_failed"]
    for channel, ids in by_channel.items():
        assert sorted(d["decision_id"] for d in failed if d["channel"] == channel) == ids
    # ... the secrets did reach the endpoint (httpx sends URL credentials as Basic auth) ...
    assert set(hook.attempts) >= set(by_channel["sales_task"]) | set(by_channel["email"])
    assert {h.get("Authorization") for h in hook.headers} == {f"Bearer {TOKEN}", "Basic dXNlcjpQVy1TRUNSRVQ="}
    # ... and the URLs were shown, masked, in the dead letters, the log and the summary
    shown = f"127.0.0.1:{hook.port}/hook?api_key=***"
    assert all(shown in d["detail"] for d in failed), {d["detail"] for d in failed}
    assert all(f"user:***@{shown}" in d["detail"] for d in failed if d["channel"] != "email")
    assert {d["error"] for d in failed if d["channel"] == "sms"} == {"connection"}
    assert f"https://user:***@{shown}" in stderr and "attempt 1 of decision" in stderr  # warning and debug lines
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["outputs"]["channel sales_task"] == f"webhook http://user:***@{shown}"
    assert summary["deliveries"]["email"] == {"delivered": 0, "failed": len(by_channel["email"])}
    assert f"webhook http://user:***@{shown}" in stdout

    leaks = _leaks(stdout, "stdout") + _leaks(stderr, "stderr")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        leaks += _leaks(path.read_bytes(), str(path.relative_to(out)))
    assert not leaks


@pytest.fixture
def debug_log():
    """touchline.logs configured at debug level into a buffer; the root logger and httpx restored after."""
    from touchline import logs

    root, httpx_log = logging.getLogger(), logging.getLogger("httpx")
    saved = (root.level, httpx_log.level, list(root.handlers))
    buffer = io.StringIO()
    logs.configure("debug", "text", stream=buffer)
    yield buffer
    for handler in [h for h in root.handlers if h not in saved[2]]:
        root.removeHandler(handler)
    root.setLevel(saved[0])
    httpx_log.setLevel(saved[1])
    forget()


def test_log_records_at_any_level_and_from_any_library_are_masked(debug_log):
    """httpx's own request line (turned up to info here; touchline.logs keeps it at warning),
    an exception logged at debug, and ``extra=`` fields in JSON lines."""
    import touchline.connectors.channels.webhook  # noqa: F401 (puts the filter on the httpx logger)

    logging.getLogger("httpx").setLevel(logging.INFO)
    log = logging.getLogger("touchline.test_secrets")
    with WebhookServer() as hook:
        url = f"http://user:{PW}@127.0.0.1:{hook.port}/hook?api_key={KEY}"
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            assert client.post(url, content=b"{}", headers={"Idempotency-Key": "k"}).status_code == 200
        try:
            raise RuntimeError(f"cannot reach {url}")
        except RuntimeError:
            log.debug("delivery attempt failed", exc_info=True)
    remember([TOKEN])
    log.info("endpoint said: illegal header value %r", f"Bearer {TOKEN}\n", extra={"endpoint": url})
    text = debug_log.getvalue()
    masked = f"http://user:***@127.0.0.1:{hook.port}/hook?api_key=***"
    assert f"HTTP Request: POST {masked}" in text  # httpx's line, by the filter on its logger
    assert f"RuntimeError: cannot reach {masked}" in text
    assert "illegal header value 'Bearer ***\\n'" in text
    assert not _leaks(text, "log")


def test_json_log_extra_fields_are_masked(debug_log):
    from touchline import logs

    buffer = io.StringIO()
    logs.configure("info", "json", stream=buffer)
    logging.getLogger("touchline.test_secrets").warning("model store unreachable", extra={
        "store": f"redis://app:{PW}@127.0.0.1:1/0?password={KEY}"})
    line = orjson.loads(buffer.getvalue().splitlines()[-1])
    assert line["store"] == "redis://app:***@127.0.0.1:1/0?password=***"


def test_a_connector_error_quoting_a_configured_secret_is_masked_in_its_dead_letter():
    """Any connector (a plug-in too): DeliveryReport.failed redacts what it writes and logs."""
    from prometheus_client import CollectorRegistry

    from touchline.connectors.channels.base import DeliveryReport, PermanentError
    from touchline.metrics.connectors import ConnectorMetrics
    from touchline.redact import remember_settings
    from touchline.settings import load_settings

    dead: list[dict] = []
    report = DeliveryReport(ConnectorMetrics(CollectorRegistry()), dead.extend)
    remember_settings(load_settings(None, {"delivery.channels": {"sms": {
        "kind": "webhook", "url": f"https://gw.example/send?api_key={KEY}",
        "headers": {"Authorization": f"Bearer {TOKEN}"}}}}))
    try:
        report.failed({"decision_id": "d1", "contact_id": "c1"}, "sms", "plugin",
                      PermanentError("rejected", f"gateway refused token {TOKEN} for key {KEY} at "
                                     f"https://gw.example/send?api_key={KEY}"), 1, 0.1)
    finally:
        forget()
    assert dead[0]["detail"] == "gateway refused token *** for key *** at https://gw.example/send?api_key=***"


def test_redis_urls_have_one_redaction():
    from touchline.state import mask_url

    assert mask_url is redact_url
    assert redact_url(f"redis://app:{PW}@cache:6379/0") == "redis://app:***@cache:6379/0"
    assert redact_secrets(f"Redis at rediss://:{PW}@cache:6380/0 unreachable") == \
        "Redis at rediss://:***@cache:6380/0 unreachable"
