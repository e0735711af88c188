"""The load generator of ``touchline bench --api``, against a small HTTP server on loopback that
takes a fixed time per answer, one answer at a time per connection: an open load counts the
wait behind a slow answer (no coordinated omission), a closed loop does not."""

from __future__ import annotations

import asyncio

from touchline.api_bench import Load, _clients

SERVICE_SECONDS = 0.02  # the server answers each request after 20 ms: at most 50 answers/s per connection


async def _serve(idle_close: float | None = None) -> tuple[asyncio.AbstractServer, str]:
    """The server; ``idle_close``: it closes a connection idle that long (as uvicorn does after 5 s)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle_close)
                await asyncio.sleep(SERVICE_SECONDS)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _measure(load: Load, clients: int, seconds: float, idle_close: float | None = None):  # type: ignore[no-untyped-def]
    server, base = await _serve(idle_close)
    async with server:
        return await _clients(base, ["c-1", "c-2"], clients, "profile", seconds, load)


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


def test_an_open_load_over_capacity_shows_the_queue_in_latency_and_throughput() -> None:
    # 1 connection, 150 requests/s due, 50/s possible: requests queue behind each other
    tally = asyncio.run(_measure(Load(offered=150), clients=1, seconds=1.5))
    latencies = tally.latencies[200]
    assert tally.due == len(latencies)
    assert tally.answered_in(1.5) <= 1.5 * 55  # at most what the server can answer
    assert _p(latencies, 0.5) > 0.25  # counted from when each was due (a backlog of ~0.5 s), not when sent


def test_an_open_load_within_capacity_is_answered_in_the_service_time() -> None:
    tally = asyncio.run(_measure(Load(offered=40), clients=8, seconds=1.5))  # 5/s per connection, 50/s possible
    latencies = tally.latencies[200]
    assert 20 <= len(latencies) <= 120  # about 60 due in 1.5 s (Poisson)
    assert _p(latencies, 0.5) < 0.1  # the 20 ms of service, some waits on a busy machine


def test_a_closed_loop_hides_the_queue_it_makes() -> None:
    tally = asyncio.run(_measure(Load(), clients=1, seconds=1.0))
    latencies = tally.latencies[200]
    assert 25 <= tally.answered_in(1.0) <= 55  # as fast as answered
    assert _p(latencies, 0.99) < 5 * SERVICE_SECONDS  # each request only waits for its own answer


def test_a_think_time_bounds_the_rate() -> None:
    tally = asyncio.run(_measure(Load(pause=0.2), clients=4, seconds=1.0))
    assert tally.answered_in(1.0) <= 4 * 1.0 / 0.2 + 4


def test_a_connection_the_server_closed_while_idle_is_opened_again() -> None:
    tally = asyncio.run(_measure(Load(pause=0.3), clients=2, seconds=1.0, idle_close=0.1))
    assert tally.reconnects >= 2
    assert list(tally.latencies) == [200] and len(tally.latencies[200]) >= 4
