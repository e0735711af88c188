"""``touchline bench --api``: the HTTP API's latency under load, beside an engine on a live stream.

A redis-server (``--redis URL``, flushed first, or one started here), an engine process
(``touchline run --input FILE --follow --redis``: the wall clock, tailing a file) and a
``touchline serve`` process on the same Redis and settings. The engine first reads simulated
events for ``contacts`` people (re-stamped to the last hour, so they are live contacts); then a
feeder appends more at ``rate`` events a second while rounds of ``clients`` concurrent clients
each ask in a loop, for ``seconds``: ``GET /v1/contacts/{id}`` of a random known contact, then
``POST /v1/decide`` for one. Latency is measured by the clients, to the last byte of the
answer, so it includes the clients' own event loop (one process here, on the same cores as the
servers).

How the clients ask (each on its own keep-alive connection, one request in flight at a time):

- ``offered`` requests/s (``--offered R``): an open load, what a site's visitors make. Each
  client asks at random times (a Poisson process of ``R / clients`` a second), whether or not
  the server keeps up, and a request's latency runs from the time it was due, so a request that
  waited for its connection's previous answer counts that wait (no coordinated omission). The
  figures say how many requests were due and how many were answered a second: a server that
  cannot keep up shows it in both.
- ``pause`` seconds (``--pause S``): each client waits that long after an answer before it asks
  again (a think time): at most ``clients / pause`` requests a second, fewer as answers slow.
- neither: a closed loop, each client asking again the moment it is answered. The server is then
  always saturated, so latency is its queue (Little's law: clients / throughput), not the time
  to answer one request; it measures throughput.

    python -m touchline.api_bench --clients 100,200 --seconds 10 --offered 300
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from touchline.bench_services import cell, child_pids, cpu_seconds, flush_redis, machine, percentile, start_redis
from touchline.settings import Settings

KEY = "bench-key-" + "0" * 16
ENDPOINTS = ("profile", "decide")


@dataclass(frozen=True)
class Load:
    """How the clients ask (see the module docstring): an open load of ``offered`` requests/s in
    all, a think time of ``pause`` s after each answer, or (neither) a closed loop.

    >>> Load(offered=300).describe(), Load(pause=0.5).describe(), Load().describe()
    ('open load of 300 requests/s (Poisson arrivals)', 'think time 0.5 s after each answer', 'closed loop (no pause)')
    >>> Load(offered=300).offered_rate(100), Load(pause=0.5).offered_rate(100), Load().offered_rate(100)
    (300, 200.0, None)
    """

    offered: float | None = None
    pause: float = 0.0

    def describe(self) -> str:
        if self.offered is not None:
            return f"open load of {self.offered:g} requests/s (Poisson arrivals)"
        if self.pause:
            return f"think time {self.pause:g} s after each answer"
        return "closed loop (no pause)"

    def offered_rate(self, clients: int) -> float | None:
        """Requests/s the clients would make if every answer were instant (None: without bound)."""
        if self.offered is not None:
            return self.offered
        return clients / self.pause if self.pause else None


def run_api_bench(settings: Settings, clients: list[int], seconds: float, rate: float, *, redis_url: str | None = None,
                  keep: bool = False, contacts: int = 2000, pause: float = 0.0,
                  offered: float | None = None, workers: int = 1) -> dict[str, Any]:
    """The figures of every round (see the module docstring)."""
    load = Load(offered, pause)
    work = Path(tempfile.mkdtemp(prefix="touchline-api-bench-"))
    try:
        with ExitStack() as stack:
            url = _redis(stack, work, redis_url)
            known, pending = _events(settings, work, contacts)
            config = _config(work)
            engine = stack.enter_context(_Child(work / "engine", _engine_cmd(work, url, config)))
            served = stack.enter_context(_Child(work / "serve", _serve_cmd(work, url, config, workers)))
            base = _wait_line(work / "serve" / "stderr.log", served, "serving the API on ")
            _wait_seeded(base, known[-1], engine)
            feeder = _Feeder(work / "live.jsonl", pending, rate)
            stack.callback(feeder.stop)
            feeder.start()
            rounds = [_round(base, known, n, endpoint, seconds, load, (served.pid, engine.pid))
                      for n in clients for endpoint in ENDPOINTS]
            fed = feeder.fed
        return {"machine": machine("redis-server, the engine, touchline serve and the clients"), "workers": workers,
                "load_average": [round(x, 2) for x in os.getloadavg()], "contacts": len(known),
                "stream_rate": rate, "stream_events_fed": fed, "seconds": seconds, "pause": pause, "offered": offered,
                "rounds": rounds,
                "work_dir": str(work) if keep else None}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _redis(stack: ExitStack, work: Path, url: str | None) -> str:
    if url is not None:
        flush_redis(url)
        return url
    proc, started = start_redis(work / "redis")
    stack.callback(_stop, proc)
    return started


def _config(work: Path) -> Path:
    """The settings both processes read: the bench's key, no rate limit in the way, models in Redis."""
    path = work / "settings.toml"
    path.write_text(f'[api]\nkeys = ["{KEY}"]\nrate_per_second = 1000000\nburst = 1000000\ntimeout_seconds = 30\n'
                    "[source]\ntick_seconds = 0.2\n")
    return path


def _engine_cmd(work: Path, url: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "touchline", "run", "--input", str(work / "live.jsonl"), "--follow", "--redis", url,
            "--config", str(config), "--out", str(work / "engine" / "out"), "--no-metrics", "--quiet",
            "--log-level", "info"]


def _serve_cmd(work: Path, url: str, config: Path, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "touchline", "serve", "--redis", url, "--config", str(config), "--port", "0",
            "--out", str(work / "serve" / "out"), *(["--workers", str(workers)] if workers > 1 else [])]


def _events(settings: Settings, work: Path, contacts: int) -> tuple[list[str], list[bytes]]:
    """Simulated events re-stamped into the last hour, in time order: the first half seeds the
    file the engine reads at start, the rest is what the feeder appends during the rounds.
    Returns the known contacts of the seed and the lines still to feed."""
    from touchline.connectors.simulator import Simulator
    from touchline.decisions.events import parse_ts
    from touchline.runner import simulator_spec

    spec = simulator_spec(settings.model_copy(update={"simulator": settings.simulator.model_copy(
        update={"contacts": contacts, "days": 7, "malformed_rate": 0.0})}))
    lines = list(Simulator(spec).lines())
    first, last = spec.start_ms, spec.start_ms + 7 * 86_400_000
    now = time.time_ns() // 1_000_000
    docs = [orjson.loads(line) for line in lines]
    for doc in docs:  # the week squeezed into the hour before now: every contact is a recent one
        doc["ts"] = now - 3_600_000 + (parse_ts(doc["ts"]) - first) * 3_600_000 // max(1, last - first)
    half = len(docs) // 2
    (work / "live.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs[:half]))
    known = list(dict.fromkeys(d["contact_id"] for d in docs[:half] if d.get("contact_id")))
    return known, [orjson.dumps({**d, "event_id": d["event_id"] + "-live"}) for d in docs[half:]]


class _Child:
    """A child process (its stderr in ``directory/stderr.log``), stopped with SIGINT at exit."""

    def __init__(self, directory: Path, cmd: list[str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(directory / "stderr.log", "wb"),
                                     env=env, cwd=directory)

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_line(path: Path, proc: subprocess.Popen[bytes], marker: str, timeout: float = 120.0) -> str:
    """The first word after ``marker`` in a process's stderr, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            return text.split(marker, 1)[1].split()[0]
        if proc.poll() is not None:
            raise RuntimeError(f"{path.parent.name} ended ({proc.returncode}): {text[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"no {marker!r} within {timeout:g} s in {path}")


def _wait_seeded(base: str, contact: str, engine: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    """Until the engine has applied the seed file (its last contact has a profile)."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}) as client:
        while time.monotonic() < deadline:
            if client.get(f"/v1/contacts/{contact}").status_code == 200:
                return
            if engine.poll() is not None:
                raise RuntimeError(f"the engine ended ({engine.returncode}) before it read the seed events")
            time.sleep(0.5)
    raise RuntimeError(f"the engine did not apply the seed events within {timeout:g} s")


class _Feeder(threading.Thread):
    """Appends the live events to the file the engine tails, ``rate`` a second, ten times a second."""

    def __init__(self, path: Path, lines: list[bytes], rate: float) -> None:
        super().__init__(name="api-bench-feeder", daemon=True)
        self.path, self.lines, self.rate = path, lines, rate
        self.fed = 0
        self._halt = threading.Event()

    def run(self) -> None:
        chunk = max(1, int(self.rate / 10))
        with self.path.open("ab") as out:
            while not self._halt.wait(0.1) and self.rate > 0 and self.fed < len(self.lines):
                batch = self.lines[self.fed:self.fed + chunk]
                out.write(b"".join(line + b"\n" for line in batch))
                out.flush()
                self.fed += len(batch)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _round(base: str, known: list[str], clients: int, endpoint: str, seconds: float, load: Load,
           pids: tuple[int, int]) -> dict[str, Any]:
    """``clients`` clients asking ``endpoint`` for ``seconds``: latency, offered rate and throughput."""
    serve_pid, engine_pid = pids
    label = "contact" if endpoint == "profile" else "decide"
    buckets_before, redone_before = _served_buckets(base, label), _redone(base)
    cpu_before = (_tree_cpu(serve_pid), cpu_seconds(engine_pid) or 0.0, time.process_time())
    tally = _loop_run(_clients(base, known, clients, endpoint, seconds, load))
    cpu_after = (_tree_cpu(serve_pid), cpu_seconds(engine_pid) or 0.0, time.process_time())
    served = _bucket_delta(_served_buckets(base, label), buckets_before)
    redone = _redone(base) - redone_before
    latencies, codes = tally.latencies, tally.codes()
    ok = latencies.get(200, [])
    offered = load.offered_rate(clients)
    return {"clients": clients, "endpoint": endpoint, "requests": sum(codes.values()), "codes": codes,
            "reconnects": tally.reconnects,
            "offered_per_second": None if offered is None else round(offered, 1),
            "due_per_second": round(tally.due / seconds, 1) if load.offered is not None else None,
            "per_second": round(tally.answered_in(seconds) / seconds, 1),
            "p50_ms": _ms(percentile(ok, 0.5)), "p90_ms": _ms(percentile(ok, 0.9)), "p99_ms": _ms(percentile(ok, 0.99)),
            "max_ms": _ms(max(ok) if ok else None),
            "server_p50_ms_at_most": _ms(_bucket_quantile(served, 0.5)),
            "server_p99_ms_at_most": _ms(_bucket_quantile(served, 0.99)),
            "profiles_redone": int(redone),
            "serve_cpu_share": round((cpu_after[0] - cpu_before[0]) / seconds, 2),
            "engine_cpu_share": round((cpu_after[1] - cpu_before[1]) / seconds, 2),
            "clients_cpu_share": round((cpu_after[2] - cpu_before[2]) / seconds, 2)}


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (``serve --workers``: the workers do the work)."""
    return sum(cpu_seconds(p) or 0.0 for p in (pid, *child_pids(pid)))


def _redone(base: str) -> float:
    """Profiles the server reloaded and redone because another writer changed them meanwhile
    (the stream, another worker), so far: ``touchline_state_conflicts_total``, every worker's."""
    return sum(s.value for s in _samples(base) if s.name == "touchline_state_conflicts_total")


def _samples(base: str) -> list[Any]:
    """Every sample the server's ``/metrics`` answers."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=30).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _served_buckets(base: str, endpoint: str) -> dict[float, float]:
    """The server's own request-time histogram of ``endpoint`` (arrival at the handler to the
    answer), from its ``/metrics``: cumulative counts by upper bound in seconds, summed over
    the workers of ``serve --workers``."""
    out: dict[float, float] = {}
    for sample in _samples(base):
        if sample.name == "touchline_api_request_seconds_bucket" and sample.labels.get("endpoint") == endpoint:
            bound = float(sample.labels["le"])
            out[bound] = out.get(bound, 0.0) + sample.value
    return out


def _bucket_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def _bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket the ``q`` quantile falls in (None: no requests).

    >>> _bucket_quantile({0.005: 60.0, 0.01: 98.0, 0.02: 100.0, float("inf"): 100.0}, 0.99)
    0.02
    """
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    return next(bound for bound, count in sorted(buckets.items()) if count >= q * total)


def _loop_run(work: Any) -> Any:
    """Run a coroutine on uvloop when installed (a faster client), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass
class Tally:
    """What the clients of a round saw: latencies by status code, requests due (open load) and
    when each answer came (to count those within the round)."""

    start: float
    latencies: dict[int, list[float]]
    done_at: list[float]
    due: int = 0
    reconnects: int = 0

    def codes(self) -> dict[str, int]:
        return {str(code): len(found) for code, found in sorted(self.latencies.items())}

    def answered_in(self, seconds: float) -> int:
        """Answers that came within the round (not those finished after it ended)."""
        return sum(1 for t in self.done_at if t - self.start <= seconds)


async def _clients(base: str, known: list[str], clients: int, endpoint: str, seconds: float, load: Load) -> Tally:
    """``clients`` keep-alive connections, each a client asking until the round ends."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conns = [await _Conn(host, int(port)).open() for _ in range(clients)]
    start = time.perf_counter()
    tally = Tally(start, {}, [])
    end = start + seconds
    await asyncio.gather(*(_client(conn, (known, endpoint, load, clients), end, tally, random.Random(i))
                           for i, conn in enumerate(conns)))
    tally.reconnects = sum(conn.reconnects for conn in conns)
    return tally


class _Conn:
    """One client's keep-alive connection; opened again when the server closed it while idle
    (uvicorn closes a connection idle for 5 s), as a browser does, the request sent again."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reconnects = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> "_Conn":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def ask(self, request: bytes) -> int:
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(request)
            return await _answer(self.reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise  # cut off in the middle of an answer: not an idle close
            self.writer.close()
            self.reconnects += 1
            await self.open()
            assert self.reader is not None and self.writer is not None
            self.writer.write(request)
            return await _answer(self.reader)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _client(conn: _Conn, what: tuple[list[str], str, Load, int], end: float, tally: Tally,
                  rng: random.Random) -> None:
    """One client on its own connection until ``end``: at random due times (open load), or a
    request, its answer, a pause (a random share of it first, so the clients do not ask in
    step), the next. A minimal HTTP/1.1 client, so the clients' own cost stays small beside
    the server's."""
    known, endpoint, load, clients = what
    rate = load.offered / clients if load.offered else 0.0
    due = time.perf_counter() + (rng.expovariate(rate) if rate else rng.uniform(0, load.pause))
    try:
        while due < end:
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            started = due if rate else time.perf_counter()  # open load: from when it was due
            code = await conn.ask(_request(endpoint, rng.choice(known)))
            now = time.perf_counter()
            tally.latencies.setdefault(code, []).append(now - started)
            tally.done_at.append(now)
            tally.due += 1
            due = due + rng.expovariate(rate) if rate else now + load.pause
    finally:
        conn.close()


def _request(endpoint: str, contact: str) -> bytes:
    """The bytes of one request (ids from the simulator need no escaping)."""
    head = f"Host: bench\r\nX-API-Key: {KEY}\r\n"
    if endpoint == "profile":
        return f"GET /v1/contacts/{contact} HTTP/1.1\r\n{head}\r\n".encode()
    body = orjson.dumps({"contact_id": contact, "context": {"placement": "home_banner", "channel": "web"}})
    return (f"POST /v1/decide HTTP/1.1\r\n{head}Content-Type: application/json\r\nContent-Length: {len(body)}"
            "\r\n\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one answer whole; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    code = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return code


def format_api_bench(f: dict[str, Any]) -> str:
    """The rounds as a table, with what the machine was doing."""
    load = Load(f.get("offered"), f["pause"])
    lines = [f"HTTP API under load: {f['contacts']:,} known contacts, the engine fed {f['stream_rate']:g} events/s "
             f"({f['stream_events_fed']:,} in all), {f['seconds']:g} s per round, {load.describe()}, "
             f"touchline serve with {f.get('workers', 1)} worker(s); "
             f"{f['machine']}; load average at the end {', '.join(map(str, f['load_average']))}",
             f"  {'endpoint':<22} {'clients':>7} {'offered/s':>9} {'due/s':>7} {'answered/s':>10} {'p50 ms':>7} "
             f"{'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'server p50/p99 ≤':>17} {'serve CPU':>9} {'engine CPU':>10} "
             f"{'clients CPU':>11} {'redone':>7}  codes"]
    for r in f["rounds"]:
        name = "GET /v1/contacts/{id}" if r["endpoint"] == "profile" else "POST /v1/decide"
        offered = "closed" if r.get("offered_per_second") is None else cell(r["offered_per_second"])
        lines.append(f"  {name:<22} {r['clients']:>7} {offered:>9} {cell(r.get('due_per_second')):>7} "
                     f"{cell(r['per_second']):>10} {cell(r['p50_ms'], '.1f'):>7} "
                     f"{cell(r['p90_ms'], '.1f'):>7} {cell(r['p99_ms'], '.1f'):>7} {cell(r['max_ms'], '.1f'):>7} "
                     f"{_server_cell(r):>17} "
                     f"{cell(r['serve_cpu_share'], '.2f'):>9} {cell(r['engine_cpu_share'], '.2f'):>10} "
                     f"{cell(r['clients_cpu_share'], '.2f'):>11} {cell(r.get('profiles_redone')):>7}  "
                     f"{_codes_cell(r)}")
    lines.append("  targets: p99 under 20 ms for the profile, under 50 ms for decide; offered/s: what the clients "
                 "would ask if answers were instant (think time: at most), due/s: what came due (open load), "
                 "answered/s: answers within the round; server p50/p99: the server's own histogram (handler to answer, "
                 "bucket bounds), without the clients' and the network's share; CPU: share of one core; redone: "
                 "profiles another writer (the stream, another worker) changed during a batch, reloaded and redone")
    if f.get("work_dir"):
        lines.append(f"  logs and outputs kept in {f['work_dir']}")
    return "\n".join(lines)


def _codes_cell(r: dict[str, Any]) -> str:
    """Answers by status code, and how often a client found its idle connection closed."""
    codes = ", ".join(f"{c}: {n:,}" for c, n in r["codes"].items())
    return f"{codes}; reconnected {r['reconnects']:,}" if r.get("reconnects") else codes


def _server_cell(r: dict[str, Any]) -> str:
    p50, p99 = r.get("server_p50_ms_at_most"), r.get("server_p99_ms_at_most")
    return "-" if p50 is None or p99 is None else f"{p50:g} / {p99:g}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from touchline.catchup import parse_counts
    from touchline.settings import load_settings

    p = argparse.ArgumentParser(prog="python -m touchline.api_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="100,200", help="concurrent clients per round (default 100,200)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each round (default 10)")
    p.add_argument("--rate", type=float, default=200.0, help="the stream's events/s meanwhile (default 200)")
    p.add_argument("--contacts", type=int, default=2000, help="simulated people (default 2000)")
    p.add_argument("--pause", type=float, default=0.0, help="seconds each client waits between answers (default 0)")
    p.add_argument("--offered", type=float, help="an open load: requests/s in all, at random times (default: none)")
    p.add_argument("--workers", type=int, default=1, help="touchline serve --workers N (default 1: one process)")
    p.add_argument("--redis", metavar="URL", help="a Redis to use (flushed first); default: one started here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, outputs)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.offered is not None and (args.offered <= 0 or args.pause):
        p.error("--offered must be positive, and goes without --pause (an open load has no think time)")
    if not 1 <= args.workers <= 64:
        p.error("--workers must be 1 to 64")
    figures = run_api_bench(load_settings(None), parse_counts(args.clients, "--clients"), args.seconds, args.rate,
                            redis_url=args.redis, keep=args.keep, contacts=args.contacts, pause=args.pause,
                            offered=args.offered, workers=args.workers)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else format_api_bench(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
