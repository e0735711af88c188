"""Many commands in one round trip on one connection, without redis-py's pipeline object.

redis-py's ``Pipeline`` is general: a command stack, per-command option handling, retry and
observability hooks, a reset after each use. The state store sends hundreds of commands
per micro-batch on a single (non-cluster) server, and that bookkeeping cost about as much
client CPU as packing the commands and reading the replies. This sends the same bytes and
reads the same replies: each command packed by hiredis (as redis-py's hiredis serializer
does), one write, one read per command, and the client's own response callback applied to
each reply (as the pipeline does), error replies returned in place.

A connection that failed part-way (a timeout, a reset, an interrupt) may hold unread
replies: it is disconnected before it goes back to the pool, so the next user reconnects
instead of reading another caller's replies. Redis Cluster clients keep redis-py's cluster
pipeline, which routes by slot.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hiredis
import redis


def pipelined(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The replies to ``commands`` (each ``(NAME, *args)``), in order; an error reply is
    returned in place as redis-py's exception for it, as ``pipeline.execute(raise_on_error=False)``
    does. Connection errors are raised (the store retries them).
    """
    pool = client.connection_pool
    conn = _checkout(pool)
    try:
        conn.send_packed_command([b"".join([_pack(c) for c in commands])])
        callbacks: Mapping[str, Callable[[Any], Any]] = client.response_callbacks
        replies: list[Any] = []
        for command in commands:
            try:
                reply = conn.read_response()
            except redis.ResponseError as exc:
                replies.append(exc)
                continue
            callback = callbacks.get(command[0])
            replies.append(callback(reply) if callback is not None else reply)
        return replies
    except BaseException:
        conn.disconnect()  # replies may be left unread on it: never hand it on like that
        raise
    finally:
        pool.release(conn)


def _pack(command: tuple[Any, ...]) -> bytes:
    """One command in the protocol, as redis-py's hiredis serializer packs it (bytes-like
    arguments other than bytes, which hiredis refuses, as bytes)."""
    args: Any = command  # hiredis's stub types a 1-tuple; any length is packed
    try:
        packed: bytes = hiredis.pack_command(args)
    except TypeError:
        args = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in command)
        packed = hiredis.pack_command(args)
    return packed


def _checkout(pool: Any) -> Any:
    """A connection from ``pool``: redis-py 5.3 and later take no arguments (and warn at
    any), earlier versions need a command name."""
    return pool.get_connection() if _NO_ARGS else pool.get_connection("_")


_COMMAND_NAME = inspect.signature(redis.ConnectionPool.get_connection).parameters.get("command_name")
_NO_ARGS = _COMMAND_NAME is None or _COMMAND_NAME.default is not inspect.Parameter.empty
