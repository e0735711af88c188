"""The channel connector interface, and the retrying, rate-limited, bounded-queue base.

Every connector delivers the decisions of one channel. The contract each one passes
(``tests/test_channel_contract.py``):

* ``submit`` hands decisions over and returns; when the connector's bounded queue is
  full it blocks, so a slow endpoint slows the engine down instead of eating memory;
* every submitted decision ends in exactly one outcome reported to the
  :class:`DeliveryReport`: delivered, or failed (then it is a dead letter, with the error);
* the connector never delivers a decision twice by its own doing: it retries only
  attempts that failed, and every attempt carries the decision id as its idempotency
  key, so a retry after a lost answer is safe for an endpoint that honours it;
* ``close`` waits for deliveries in flight, up to a deadline; what is still undelivered
  then is reported failed (``shutdown``), never dropped silently.

Delivery guarantee: at least once towards the endpoint, deduplicated by decision id.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from typing import Any

from touchline.decisions.errors import TouchlineError
from touchline.metrics.connectors import ConnectorMetrics
from touchline.redact import redact_secrets

log = logging.getLogger(__name__)

DeadLetterWrite = Callable[[list[dict[str, Any]]], None]


class DeliveryError(TouchlineError):
    """One failed delivery attempt. ``code`` is a short fixed label (metrics, dead letters)."""

    retryable = False

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class RetryableError(DeliveryError):
    """A failure worth another attempt: a 5xx, a 429, a timeout, a refused connection."""

    retryable = True


class PermanentError(DeliveryError):
    """A failure no retry will fix: a 4xx, a rejected address, a template error."""


#: Told of each outcome: (channel, decision or None, outcome). Outcomes: "delivered", "failed"
#: (final: dead-lettered) and "shutdown" (the engine stopped before delivering it).
OutcomeListener = Callable[[str, dict[str, Any] | None, str], None]


class DeliveryReport:
    """Where connectors report outcomes: metrics, dead letters and the run's tallies.

    Thread-safe: connectors call it from their worker threads. ``listener`` (set by
    :class:`~touchline.connectors.channels.registry.Delivery`) hears each outcome, so the
    send ledger and the engine's outbox learn which decisions are done.
    """

    def __init__(self, metrics: ConnectorMetrics, dead_letters: DeadLetterWrite) -> None:
        self.metrics = metrics
        self._dead_letters = dead_letters
        self._lock = threading.Lock()
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (channel, delivered|failed|duplicate)
        self.listener: OutcomeListener | None = None

    def delivered(self, channel: str, connector: str, seconds: float, attempts: int = 1,
                  decision: dict[str, Any] | None = None) -> None:
        """One decision delivered; connectors pass ``decision`` so the send ledger can record it
        at once (without it, it is recorded when the channel has nothing in flight)."""
        self.metrics.delivered(channel, connector, seconds, attempts)
        with self._lock:
            self.outcomes[(channel, "delivered")] += 1
        if self.listener is not None:
            self.listener(channel, decision, "delivered")

    def duplicate(self, channel: str, connector: str, count: int) -> None:
        """Decisions not handed to the connector: the send ledger has them delivered or in flight."""
        self.metrics.deliveries.labels(channel, connector, "duplicate").inc(count)
        with self._lock:
            self.outcomes[(channel, "duplicate")] += count

    def error(self, channel: str, connector: str, code: str) -> None:
        self.metrics.error(channel, connector, code)

    def failed(self, decision: dict[str, Any], channel: str, connector: str, error: DeliveryError,
               attempts: int, seconds: float, *, shutdown: bool = False) -> None:
        """A decision that will not be delivered: counted, logged and dead-lettered with the error.

        ``shutdown`` (or the code ``shutdown``): the engine stopped before it was delivered, so
        it is not final; a later run may deliver it. The error's text is redacted here, for
        every connector (plug-ins too): an endpoint URL's password and query values, and the
        configured secrets, never reach the log or the dead letter.
        """
        self.metrics.failed(channel, connector, seconds, attempts)
        with self._lock:
            self.outcomes[(channel, "failed")] += 1
        detail = redact_secrets(str(error))
        log.warning("delivery of decision %s on %s (%s) failed after %d attempt(s): %s: %s",
                    decision.get("decision_id"), channel, connector, attempts, error.code, detail)
        self._dead_letters([{
            "kind": "delivery_failed",
            "reason": "delivery_failed",
            "channel": channel,
            "connector": connector,
            "error": error.code,
            "detail": detail,
            "attempts": attempts,
            "decision_id": decision.get("decision_id"),
            "contact_id": decision.get("contact_id"),
            "decision": decision,
        }])
        if self.listener is not None:
            self.listener(channel, decision, "shutdown" if shutdown or error.code == "shutdown" else "failed")


class ChannelConnector(ABC):
    """Delivers the decisions of one channel; see the module docstring for the contract."""

    #: Connector kind, as named in configuration (``delivery.channels.<channel>.kind``).
    kind: str = ""

    def __init__(self, channel: str, report: DeliveryReport) -> None:
        self.channel = channel
        self.report = report

    @property
    def target(self) -> str:
        """Where this connector delivers, for people (startup line, summary)."""
        return ""

    def start(self) -> None:
        """Open connections or files; raise with a clear message if that cannot work at all."""

    @abstractmethod
    def submit(self, decisions: list[dict[str, Any]]) -> None:
        """Hand decisions over for delivery; blocks while the connector is full (backpressure)."""

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted decision has an outcome; False if ``timeout`` passed first."""
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush (up to ``timeout``), report anything undelivered as failed, release resources."""
        self.flush(timeout)


class TokenBucket:
    """A rate limit shared by a connector's threads: ``rate`` per second, bursts of ``burst``.

    >>> bucket = TokenBucket(rate=1000.0, burst=2)
    >>> bucket.try_take(), bucket.try_take(), bucket.try_take() > 0
    (0.0, 0.0, True)
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def try_take(self) -> float:
        """Take a token and return 0.0, or return how long to wait for the next one."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def take(self, stop: threading.Event) -> bool:
        """Block until a token is available (True) or ``stop`` is set (False)."""
        while True:
            wait = self.try_take()
            if wait == 0.0:
                return True
            if stop.wait(wait):
                return False


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: half the doubled delay fixed, half random.

    >>> rng = random.Random(1)
    >>> [round(backoff_delay(n, 0.2, 30.0, rng), 3) for n in (1, 2, 3)]
    [0.113, 0.369, 0.706]
    """
    step = min(cap, base * (2 ** (attempt - 1)))
    return step / 2 + rng.uniform(0, step / 2)


class QueuedConnector(ChannelConnector):
    """Base of connectors that call a remote endpoint: a bounded queue feeding worker
    threads, each attempt rate-limited by a token bucket, failed attempts retried with
    backoff and jitter (or after the server's Retry-After), up to ``max_attempts``.

    Subclasses implement :meth:`send` (one attempt) and optionally the per-thread
    :meth:`open_session` / :meth:`close_session`.
    """

    def __init__(self, channel: str, report: DeliveryReport, config: Any, seed: int | None = None) -> None:
        super().__init__(channel, report)
        self.config = config
        self._queue: queue.Queue[tuple[dict[str, Any], float] | None] = queue.Queue(maxsize=config.queue_size)
        self._bucket = TokenBucket(config.rate_per_second, config.burst)
        self._abort = threading.Event()  # shutdown deadline passed: stop retrying
        self._rng = random.Random(seed)
        self._threads: list[threading.Thread] = []
        self._gauge = report.metrics.queue_depth.labels(channel, self.kind)

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def send(self, decision: dict[str, Any], session: Any) -> None:
        """One delivery attempt; raise :class:`RetryableError` or :class:`PermanentError`."""

    def open_session(self) -> Any:
        """Per-thread resources (an HTTP client, an SMTP connection)."""
        return None

    def close_session(self, session: Any) -> None:
        """Release what :meth:`open_session` opened."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for i in range(self.config.concurrency):
            thread = threading.Thread(target=self._work, name=f"touchline-{self.kind}-{self.channel}-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, decisions: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for decision in decisions:
            self._queue.put((decision, now))  # blocks while full: backpressure on the dataflow
        self._gauge.set(self._queue.qsize())

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        if not self.flush(timeout):
            log.warning("%s connector for %s: deliveries still pending after %.0f s; dead-lettering them",
                        self.kind, self.channel, timeout)
            self._abort.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=max(5.0, self.config.timeout_seconds + 1))
        self._threads.clear()
        self._gauge.set(0)

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        session = None
        try:
            while True:
                item = self._queue.get()
                try:
                    if item is None:
                        return
                    if session is None:
                        session = self.open_session()
                    session = self._deliver(item[0], item[1], session)
                finally:
                    self._queue.task_done()
                    self._gauge.set(self._queue.qsize())
        finally:
            if session is not None:
                self.close_session(session)

    def _deliver(self, decision: dict[str, Any], queued_at: float, session: Any) -> Any:
        """Attempt until delivered, a permanent error, the attempt budget or shutdown; returns
        the session to use next."""
        cfg, attempt = self.config, 0
        while True:
            if self._abort.is_set() or not self._bucket.take(self._abort):
                self._fail(decision, DeliveryError("shutdown", "engine stopped before delivery"), attempt, queued_at)
                return session
            attempt += 1
            try:
                self.send(decision, session)
            except DeliveryError as exc:
                self.report.error(self.channel, self.kind, exc.code)
                if not exc.retryable or attempt >= cfg.max_attempts:
                    self._fail(decision, exc, attempt, queued_at)
                    return session
                delay = backoff_delay(attempt, cfg.backoff_seconds, cfg.backoff_max_seconds, self._rng)
                if exc.retry_after is not None:
                    delay = min(max(exc.retry_after, 0.0), max(cfg.backoff_max_seconds, 0.0))
                log.debug("%s connector for %s: attempt %d of decision %s failed: %s: %s; next in %.2f s",
                          self.kind, self.channel, attempt, decision.get("decision_id"), exc.code, exc, delay)
                if self._abort.wait(delay):  # stopped while waiting to retry: not final
                    self._fail(decision, exc, attempt, queued_at, shutdown=True)
                    return session
                continue
            except Exception as exc:  # a bug or an unexpected library error: never lose the decision
                log.exception("%s connector for %s: unexpected error", self.kind, self.channel)
                self._fail(decision, PermanentError("internal", f"{type(exc).__name__}: {exc}"), attempt, queued_at)
                return session
            self.report.delivered(self.channel, self.kind, time.monotonic() - queued_at, attempt, decision)
            return session

    def _fail(self, decision: dict[str, Any], error: DeliveryError, attempts: int, queued_at: float,
              shutdown: bool = False) -> None:
        self.report.failed(decision, self.channel, self.kind, error, attempts, time.monotonic() - queued_at,
                           shutdown=shutdown)
