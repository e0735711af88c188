"""/metrics, liveness and readiness over HTTP, on loopback by default.

Binding a public interface is an explicit choice in configuration, never a default.

- ``GET /metrics``: the Prometheus exposition of the injected registry.
- ``GET /healthz`` (also ``/livez``): 200 while the engine is alive; 503 when it stopped
  on a failure or one batch has been running longer than the stall limit (restart it).
- ``GET /readyz``: 200 only when every dependency answers (the state store; the Kafka
  brokers when Kafka is used); 503 with the failing check otherwise (stop sending work).

Both health answers are JSON naming each check, e.g.
``{"status": "ready", "checks": {"state_store": {"ok": true, "detail": "in-process"}}}``.
Checks run on request, at most once per ``cache_seconds``, with short timeouts, so a
probe never waits behind the engine or hammers a struggling dependency.

>>> from prometheus_client import CollectorRegistry
>>> health = Health(ready_checks={"state_store": lambda: "in-process"})
>>> health.readiness()
(200, {'status': 'ready', 'checks': {'state_store': {'ok': True, 'detail': 'in-process'}}})
>>> health.liveness()[0]
200
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from touchline.decisions.errors import TouchlineError
from touchline.redact import redact_tree

log = logging.getLogger(__name__)

#: A readiness check: returns a line saying what answered, raises with the reason if not.
Check = Callable[[], str]


class MetricsServerError(TouchlineError, RuntimeError):
    """The metrics endpoint could not be started (port in use, bad address)."""


class Health:
    """Liveness and readiness, each a status code and a JSON body."""

    def __init__(self, ready_checks: dict[str, Check] | None = None,
                 alive: Callable[[], str | None] | None = None, cache_seconds: float = 1.0) -> None:
        #: name -> check (``state_store``, ``broker``)
        self.ready_checks = dict(ready_checks or {})
        #: returns why the engine is not alive, or None
        self.alive = alive or (lambda: None)
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[int, dict[str, Any]]] | None = None

    def liveness(self) -> tuple[int, dict[str, Any]]:
        problem = self.alive()
        if problem is None:
            return 200, {"status": "alive"}
        return 503, {"status": "not alive", "reason": redact_tree(problem)}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        with self._lock:  # concurrent probes share one round of checks
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            checks: dict[str, Any] = {}
            for name, check in self.ready_checks.items():
                try:
                    checks[name] = {"ok": True, "detail": check()}
                except Exception as exc:  # any failure of a dependency means not ready, with its reason
                    checks[name] = {"ok": False, "detail": str(exc) or type(exc).__name__}
            problem = self.alive()
            if problem is not None:
                checks["engine"] = {"ok": False, "detail": problem}
            ok = all(c["ok"] for c in checks.values())
            # a dependency's error may quote its URL: answered with password and query values masked
            answer = (200 if ok else 503), {"status": "ready" if ok else "not ready", "checks": redact_tree(checks)}
            self._cached = (now, answer)
            return answer


def _handler(registry: CollectorRegistry, health: Health, client_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "touchline"
        #: seconds a client may stall on one read or write before it is dropped: each connection
        #: has a thread of its own, so a slow client never delays another, and one that opens a
        #: connection and goes quiet does not keep its thread forever
        timeout = client_timeout

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(registry))
            elif path in ("/healthz", "/livez"):
                self._json(*health.liveness())
            elif path == "/readyz":
                self._json(*health.readiness())
            elif path == "/":
                self._send(200, "text/plain; charset=utf-8",
                           b"touchline: /metrics (Prometheus), /healthz (liveness), /readyz (readiness)\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n")

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, "application/json", orjson.dumps(body) + b"\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not log lines
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that gave up and closed its connection is not an error worth a
        traceback on stderr (the default), nor anything else here: the log has it."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        log.warning("metrics server: %s from %s: %s", type(error).__name__, client_address[0], error)


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9464,
                  health: Health | None = None, client_timeout: float = 10.0) -> tuple[str, int, ThreadingHTTPServer]:
    """Serve /metrics, /healthz and /readyz from a daemon thread; returns (host, bound port,
    server), which the caller shuts down. Port 0 picks a free one.

    Each connection is served on a thread of its own (a slow or silent client delays no
    other, and is dropped after ``client_timeout`` seconds of silence). A scrape needs the
    GIL for some 10 ms of rendering and a few hand-overs from the engine thread; Bytewax
    releases the GIL while it runs (``allow_threads``) and takes it per operator call, so
    Python's switch interval applies. What it cannot interrupt is a full cyclic garbage
    collection of the engine's heap (0.1-0.7 s with the in-process store at a few thousand
    contacts): the longest scrapes under load are those that land on one."""
    try:
        server_class = _Server6 if ":" in host else _Server  # "::1" is IPv6 loopback
        server = server_class((host, port), _handler(registry, health or Health(), client_timeout))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetricsServerError(
                f"metrics port {port} on {host} is already in use; set metrics.port (or --metrics-port) "
                "to a free port, or 0 to pick one"
            ) from None
        raise MetricsServerError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    threading.Thread(target=server.serve_forever, name="touchline-metrics", daemon=True).start()
    return host, server.server_port, server
