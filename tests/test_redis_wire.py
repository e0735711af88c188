"""The state store's one-round-trip sender (state/redis_wire.py) against a real redis-server:
the replies redis-py's pipeline gives, error replies in place, and a connection that failed
part-way never handed on with another call's replies still unread."""

from __future__ import annotations

import pytest
import redis

from touchline.state.redis_wire import pipelined

COMMANDS = [
    ("SET", "k", "v"),
    ("GET", "k"),
    ("PEXPIRE", "k", 60_000),
    ("HSET", "h", "a", 1, "b", "é".encode(), "c", 1.5),
    ("HGETALL", "h"),
    ("ZADD", "z", 2, "two", 1, "one"),
    ("ZRANGE", "z", 0, -1, "WITHSCORES"),
    ("INCRBY", "k", 1),  # WRONGTYPE-like refusal: "value is not an integer"
    ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
    ("EXISTS", "k", "h", "missing"),
    ("DEL", "missing"),
    ("SET", "bytes-like", bytearray(b"ab")),  # hiredis refuses bytearray: packed as bytes
    ("GET", "bytes-like"),
]


def _pipeline_replies(client: redis.Redis) -> list[object]:
    pipe = client.pipeline(transaction=False)
    for command in COMMANDS:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


def _comparable(replies: list[object]) -> list[object]:
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in replies]


@pytest.mark.parametrize("decode", [True, False])
def test_replies_are_those_of_redis_py_pipeline(redis_url, decode):
    client = redis.Redis.from_url(redis_url, decode_responses=decode)
    try:
        expected = _pipeline_replies(client)
        client.flushdb()
        got = pipelined(client, COMMANDS)
    finally:
        client.close()
    assert _comparable(got) == _comparable(expected)
    assert isinstance(got[8], redis.exceptions.NoScriptError)  # the store reloads its scripts on it
    assert isinstance(got[7], redis.ResponseError)


def test_a_connection_that_timed_out_mid_reply_is_not_reused_with_its_replies_unread(redis_url):
    """The second command's reply comes after the socket timeout: the call fails, and the next
    call on the same pool reads its own replies, not the late ones."""
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.2)
    try:
        with pytest.raises(redis.TimeoutError):
            pipelined(client, [("SET", "a", "first"), ("BLPOP", "nothing", 1), ("GET", "a")])
        assert pipelined(client, [("SET", "b", "second"), ("GET", "b")]) == [True, "second"]
        assert len(client.connection_pool._in_use_connections) == 0  # handed back, not leaked
    finally:
        client.close()


def test_an_unreachable_server_raises_a_connection_error(redis_server):
    from redis_servers import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        pipelined(client, [("PING",)])
    assert len(client.connection_pool._in_use_connections) == 0



def test_a_call_that_fails_between_two_replies_leaves_none_unread(redis_url):
    """Anything raised after one reply is read and before the next (here a response callback;
    in production a signal's exception): the connection is dropped, so the next call reads
    its own replies, not the rest of this one's."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def refuse(reply: object) -> object:
        if reply == "boom":
            raise ValueError("refused in between")
        return reply

    client.response_callbacks["GET"] = refuse
    try:
        with pytest.raises(ValueError, match="refused in between"):
            pipelined(client, [("SET", "x", "boom"), ("GET", "x"), ("SET", "c", "late"), ("GET", "c")])
        assert pipelined(client, [("SET", "d", "own"), ("GET", "d")]) == [True, "own"]
    finally:
        client.close()
