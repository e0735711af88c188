"""HTTP webhook connector: POST the decision JSON, retried safely under its idempotency key."""

from __future__ import annotations

import email.utils
import logging
import time
from datetime import timezone
from typing import Any

import httpx
import orjson

import touchline
from touchline.connectors.channels.base import DeliveryReport, PermanentError, QueuedConnector, RetryableError
from touchline.connectors.channels.config import WebhookConnectorConfig
from touchline.logs import RedactSecrets
from touchline.redact import redact_secrets, redact_url

# httpx logs each request's full URL at info (password and query string included): masked
# at the source, whatever handlers the application installed (touchline.logs keeps httpx
# at warning besides).
if not any(isinstance(f, RedactSecrets) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(RedactSecrets())


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header as seconds to wait: delta-seconds or an HTTP date.

    >>> retry_after_seconds("3"), retry_after_seconds(None), retry_after_seconds("soon")
    (3.0, None, None)
    >>> retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT", now=1792567670.0)
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class WebhookConnector(QueuedConnector):
    """POSTs each decision as JSON with ``Idempotency-Key: <decision_id>``.

    Delivery: at least once, deduplicated by the key. Retried with exponential backoff
    and jitter: connection errors, timeouts and 5xx; 429 waits as long as Retry-After
    says (capped by ``backoff_max_seconds``); 409 (the key still in flight at the endpoint)
    is asked again later. Other 4xx answers are permanent: the
    decision goes to dead letters at once. A 2xx is never retried.
    """

    kind = "webhook"

    def __init__(self, channel: str, report: DeliveryReport, config: WebhookConnectorConfig,
                 seed: int | None = None) -> None:
        super().__init__(channel, report, config, seed)
        self.headers = {"Content-Type": "application/json", "User-Agent": f"touchline/{touchline.__version__}",
                        **{name: value.get_secret_value() for name, value in config.headers.items()}}
        if config.bearer_token is not None:
            self.headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        #: the URL as printed: password and query values masked (the request uses the real one)
        self.shown_url = redact_url(config.url)

    @property
    def target(self) -> str:
        return self.shown_url

    def open_session(self) -> httpx.Client:
        return httpx.Client(timeout=self.config.timeout_seconds, headers=self.headers, follow_redirects=False)

    def close_session(self, session: httpx.Client) -> None:
        session.close()

    def send(self, decision: dict[str, Any], session: httpx.Client) -> None:
        body = orjson.dumps(decision)
        try:
            response = session.post(self.config.url, content=body,
                                    headers={"Idempotency-Key": str(decision.get("decision_id", ""))})
        except httpx.TimeoutException as exc:
            raise RetryableError("timeout", f"no answer within {self.config.timeout_seconds:g} s from "
                                 f"{self.shown_url} ({redact_secrets(repr(exc))})") from None
        except httpx.TransportError as exc:  # may quote the URL or a header value (an illegal one)
            raise RetryableError("connection", f"{type(exc).__name__} from {self.shown_url}: "
                                 f"{redact_secrets(str(exc))}") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"HTTP {status} from {self.shown_url}: {redact_secrets(response.text[:200])}"
        if status == 429:
            raise RetryableError("http_429", detail, retry_after_seconds(response.headers.get("Retry-After")))
        if status == 409:  # the same key still in flight at the endpoint: ask again later
            raise RetryableError("http_409", detail, retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 500 or status == 408:
            raise RetryableError(f"http_{status // 100}xx", detail,
                                 retry_after_seconds(response.headers.get("Retry-After")))
        raise PermanentError(f"http_{status}" if status in (400, 401, 403, 404, 410, 413, 422) else "http_4xx",
                             detail)

