"""Serve /metrics over HTTP on loopback by default.

Binding a public interface is an explicit choice in configuration, never a default.
"""

from __future__ import annotations

import errno

from prometheus_client import CollectorRegistry, start_http_server


class MetricsServerError(RuntimeError):
    """The metrics endpoint could not be started (port in use, bad address)."""


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9464) -> tuple[str, int, object]:
    """Start the exporter thread; returns (host, bound port, server). Port 0 picks a free one."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MetricsServerError(
                f"metrics port {port} on {host} is already in use; set metrics.port (or --metrics-port) "
                "to a free port, or 0 to pick one"
            ) from None
        raise MetricsServerError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return host, server.server_port, server
