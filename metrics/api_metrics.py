"""Prometheus metrics of the HTTP API, on an injected registry. Labels are bounded: the
endpoint is one of a fixed few, the code an HTTP status.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = ApiMetrics(reg)
>>> m.observe("decide", 200, 0.004)
>>> reg.get_sample_value("touchline_api_requests_total", {"endpoint": "decide", "code": "200"})
1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: The API's endpoints, as they are labelled.
ENDPOINTS = ("contact", "decide", "events")
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Requests by endpoint and status code, and how long they took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("touchline_api_requests", "HTTP API requests by endpoint and status code",
                                ["endpoint", "code"], registry=registry)
        self.seconds = Histogram("touchline_api_request_seconds", "HTTP API request time, arrival to answer",
                                 ["endpoint"], buckets=API_BUCKETS, registry=registry)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.seconds.labels(endpoint).observe(seconds)
