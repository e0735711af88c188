"""The engine as an operator runs it: ``touchline run`` in its own process, on Kafka and
Redis, started, killed and restarted by the crash and runtime tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from settings_file import toml_lines

from touchline.decisions.profile import WINDOWS


def write_config(path: Path, topics: dict[str, str], hook_url: str | None = None, **sections: dict[str, Any]) -> Path:
    """A TOML settings file: these topics, replay to the end of the topic, frozen models
    (so two runs decide exactly alike), a snapshot every 0.3 s (a kill a second after a
    start finds one), email on a webhook."""
    kafka = {"events_topic": topics["kafka.events_topic"], "decisions_topic": topics["kafka.decisions_topic"],
             "dead_letter_topic": topics["kafka.dead_letter_topic"],
             "channel_topic_prefix": topics["kafka.channel_topic_prefix"],
             "experiments_topic": topics["kafka.decisions_topic"] + ".experiments", "tail": False,
             "retry_seconds": 10, "connect_timeout_seconds": 5, **sections.pop("kafka", {})}
    data: dict[str, dict[str, Any]] = {
        "kafka": kafka, "models": {"learn": False, "store": "off"},
        "runtime": {"snapshot_seconds": 0.3, "backup_seconds": 0}, "metrics": {"enabled": False},
        "delivery": {"lease_seconds": 3}, **sections}
    lines = toml_lines(data)
    if hook_url is not None:
        lines += ["[delivery.channels.email]", 'kind = "webhook"', f'url = "{hook_url}"',
                  "rate_per_second = 5000", "burst = 500", "max_attempts = 20", "backoff_seconds = 0.05"]
    path.write_text("\n".join(lines) + "\n")
    return path


class EngineProcess:
    """One ``touchline run`` process; stderr kept in a file of its own per start."""

    def __init__(self, workdir: Path, config: Path, bootstrap: str, redis_url: str, *extra: str) -> None:
        self.workdir, self.config, self.bootstrap, self.redis_url = workdir, config, bootstrap, redis_url
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"stderr-{self.starts}.log"

    def start(self, *extra: str) -> EngineProcess:
        self.starts += 1
        cmd = [sys.executable, "-m", "touchline", "run", "--kafka", self.bootstrap, "--redis", self.redis_url,
               "--config", str(self.config), "--out", str(self.workdir / "out"), "--quiet", "--json",
               "--log-level", "info", *self.extra, *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
        self.proc = subprocess.Popen(cmd, stdout=open(self.workdir / f"stdout-{self.starts}.json", "wb"),
                                     stderr=open(self.stderr_path, "wb"), env=env, cwd=self.workdir)
        return self

    def wait(self, timeout: float = 180.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def wait_reading(self, timeout: float = 60.0) -> None:
        """Until the engine has opened its input (start-up done), or it ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            text = self.stderr_path.read_text(errors="replace")
            if " reading " in text or " resuming " in text:
                return
            time.sleep(0.02)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stderr(self, start: int | None = None) -> str:
        path = self.workdir / f"stderr-{start or self.starts}.log"
        return path.read_text(errors="replace")

    def summary(self, start: int | None = None) -> dict[str, Any]:
        return orjson.loads((self.workdir / f"stdout-{start or self.starts}.json").read_bytes())


def crash_repeatedly(engine: EngineProcess, kills: int, rng: Any, low: float, high: float,
                     timeout: float = 300.0) -> list[float]:
    """Start the engine and SIGKILL it ``kills`` times at random moments (seconds after it
    began reading its input), restarting it each time; then let it run to its end.
    Returns the moments."""
    moments: list[float] = []
    deadline = time.monotonic() + timeout
    while len(moments) < kills:
        engine.start()
        engine.wait_reading()
        moment = rng.uniform(low, high)
        time.sleep(moment)
        assert engine.running(), (f"the run reached the end of the topic after {len(moments)} kills: "
                                  f"give it more events\n{engine.stderr()}")
        engine.kill()
        engine.wait()
        moments.append(moment)
        assert time.monotonic() < deadline, "the crash loop took too long"
    engine.start()
    code = engine.wait(timeout)
    assert code == 0, engine.stderr()
    return moments


def cap_violations(decisions: list[dict[str, Any]], caps: dict[str, dict[str, int]]) -> list[str]:
    """Every (contact, channel, window) whose sends in any window of that length exceed its cap."""
    sends: dict[tuple[str, str], list[int]] = defaultdict(list)
    for d in {d["decision_id"]: d for d in decisions}.values():
        sends[(d["contact_id"], d["channel"])].append(d["decision_time_ms"])
    out = []
    for (contact, channel), times in sends.items():
        times.sort()
        for window, limit in caps.get(channel, {}).items():
            span = WINDOWS[window]
            for i, t in enumerate(times):
                inside = sum(1 for u in times[: i + 1] if u > t - span)
                if inside > limit:
                    out.append(f"{contact} {channel} {window}: {inside} > {limit}")
                    break
    return out


def ids_of(messages: list[Any]) -> Counter[str]:
    return Counter(orjson.loads(m.value())["decision_id"] for m in messages)
