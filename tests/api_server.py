"""``touchline serve`` and ``touchline run --follow`` as an operator starts them: real processes,
talked to over HTTP (and through the file the engine tails), stopped at the end of a test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

KEY = "test-key-0123456789abcdef"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}


class Served:
    """One ``touchline serve`` process; ``url`` once it answers, ``client`` with the test key."""

    def __init__(self, workdir: Path, *args: str, key: str | None = KEY) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.args, self.key = workdir, list(args), key
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.stderr_path = workdir / "serve.stderr"

    def __enter__(self) -> "Served":
        env = _env()
        if self.key is not None:
            env["TOUCHLINE_API__KEYS"] = orjson.dumps([self.key]).decode()
        cmd = [sys.executable, "-m", "touchline", "serve", "--port", "0", "--out", str(self.workdir / "out"), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "wb"), env=env,
                                     cwd=self.workdir)
        self.url = _wait_for(self.stderr_path, self.proc, r"serving the API on (http://\S+)")
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def out(self, name: str) -> list[dict[str, Any]]:
        """The records of one of its JSONL outputs (decisions.jsonl, dead_letters.jsonl, ...)."""
        path = self.workdir / "out" / name
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []


def _wait_for(path: Path, proc: subprocess.Popen[bytes], pattern: str, timeout: float = 90.0) -> str:
    """The first group of ``pattern`` once the process writes it to ``path`` (its stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"the process ended ({proc.returncode}):\n{path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise RuntimeError(f"no {pattern!r} within {timeout} s:\n{path.read_text(errors='replace')}")


class FollowingEngine:
    """``touchline run --input FILE --follow`` on Redis: the stream engine on the wall clock,
    fed by appending lines to the file it tails."""

    def __init__(self, workdir: Path, redis_url: str, config: Path, *extra: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.events = workdir, workdir / "live.jsonl"
        self.events.write_bytes(b"")
        self.cmd = [sys.executable, "-m", "touchline", "run", "--input", str(self.events), "--follow", "--redis",
                    redis_url, "--config", str(config), "--out", str(workdir / "out"), "--no-metrics", "--quiet",
                    "--log-level", "info", "--batch-size", "10", *extra]
        self.stderr_path = workdir / "run.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "FollowingEngine":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "wb"),
                                     env=_env(), cwd=self.workdir)
        _wait_for(self.stderr_path, self.proc, r"(run started)")
        return self

    def api_url(self) -> str:
        """Where ``run --api`` serves the API (it says so on stderr)."""
        assert self.proc is not None
        return _wait_for(self.stderr_path, self.proc, r"serving the API on (http://\S+)")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def feed(self, *events: dict[str, Any]) -> None:
        with self.events.open("ab") as out:
            out.write(b"".join(orjson.dumps(e) + b"\n" for e in events))

    def decisions(self) -> list[dict[str, Any]]:
        path = self.workdir / "out" / "decisions.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(event_id: str, type_: str, contact: str | None = None, anonymous: str | None = None,
          ts: int | None = None, **properties: Any) -> dict[str, Any]:
    """An event in the contract, at ``ts`` (default now)."""
    out: dict[str, Any] = {"event_id": event_id, "type": type_, "ts": ts if ts is not None else now_ms()}
    if contact is not None:
        out["contact_id"] = contact
    if anonymous is not None:
        out["anonymous_id"] = anonymous
    if properties:
        out["properties"] = properties
    return out


def until(check: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
    """``check()`` once it is truthy; an AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {check}")
        time.sleep(every)


def handoff_settings(path: Path, **sections: dict[str, Any]) -> Path:
    """A settings file where the sales hand-off is what caps hold back: sent whenever the lead
    score is over 0 (no cooldown, no holdout), models frozen and not stored; plus ``sections``."""
    from settings_file import write_toml

    return write_toml(path, {
        "policy": {"holdout_share": 0.0, "sales_lead_threshold": 0.0},
        "policy.actions.sales_handoff": {"cooldown_hours": 0},
        "models": {"store": "off", "learn": False},
        **sections,
    })
