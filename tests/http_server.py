"""A real HTTP server on loopback that fails, throttles and is slow on purpose.

Behaviour per request is decided by ``plan(key, attempt)`` -> (status, headers, delay
seconds), where ``attempt`` counts requests seen with that Idempotency-Key. Like a
well-behaved receiver it processes a key once: a repeated key after a 2xx is answered
from memory and counted as a replay, not a second delivery.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import orjson

Plan = Callable[[str, int], tuple[int, dict[str, str], float]]


def always_ok(_key: str, _attempt: int) -> tuple[int, dict[str, str], float]:
    return 200, {}, 0.0


class WebhookServer:
    def __init__(self, plan: Plan = always_ok) -> None:
        self.plan = plan
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.delivered: dict[str, dict] = {}  # key -> body, first 2xx only
        self.in_flight: set[str] = set()
        self.conflicts = 0  # requests for a key still in flight, answered 409
        self.replays = 0  # requests for a key already delivered (a duplicate the key made harmless)
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                key = self.headers.get("Idempotency-Key", "")
                with server.lock:
                    server.attempts[key] += 1
                    attempt = server.attempts[key]
                    server.headers.append(dict(self.headers))
                    server.times.append(time.monotonic())
                    already = key in server.delivered
                    busy = key in server.in_flight
                    if not already and not busy:
                        server.in_flight.add(key)
                if busy:  # the same key still being processed: try again later (as Stripe answers)
                    status, headers, delay = 409, {}, 0.0
                else:
                    status, headers, delay = (200, {}, 0.0) if already else server.plan(key, attempt)
                if delay:
                    time.sleep(delay)
                with server.lock:
                    if busy:
                        server.conflicts += 1
                    elif already:
                        server.replays += 1
                    else:
                        server.in_flight.discard(key)
                        if 200 <= status < 300 and len(body) == length and body:
                            server.delivered[key] = orjson.loads(body)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

            def log_message(self, *_args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
