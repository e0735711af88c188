"""The naive Redis path: the same keys and results as :class:`RedisStore`, one network
call per Redis command, no Lua and no pipelines.

It exists to be measured against (``touchline bench --redis URL``): it is what the
straightforward port of the in-process store to redis-py looks like. Its cap
reservation is a read followed by a write, so it is not atomic across workers;
never run production on it (``redis+naive://`` selects it on purpose only).
"""

from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping, Sequence

from touchline.decisions.events import Event
from touchline.decisions.policy import cap_violation
from touchline.decisions.profile import LONGEST_WINDOW_MS, Profile, Send
from touchline.state.erasure import Identity, Tombstone, tombstone_id
from touchline.state.base import ID_CLAIM_MS, StoreOptions, anonymous_key, contact_key, identity_digest
from touchline.state.codec import (
    SEP,
    from_parts,
    log_diff,
    log_entries,
    log_index,
    parse_send,
    send_entries,
    send_member,
    to_blob,
)
from touchline.state.redis import (
    TIMERS_KEY,
    TOMBSTONES_KEY,
    RedisStore,
    _Base,
    _pairs,
    alias_key,
    id_claim_key,
    links_key,
    profile_keys,
    timer_member,
)


class NaiveRedisStore(RedisStore):
    """:class:`RedisStore` semantics, one round trip per command (the benchmark's baseline)."""

    def __init__(self, url: str, options: StoreOptions | None = None) -> None:
        super().__init__(url.replace("+naive://", "://", 1), options)
        self.url = url

    def _call(self, op: str, *command: Any) -> Any:
        reply = self._with_retry(op, lambda: self.client.execute_command(*command))
        if command[-1] == "WITHSCORES" or "WITHSCORES" in command:  # RESP3 gives [member, score] pairs
            return [x for pair in reply for x in (pair if isinstance(pair, (list, tuple)) else (pair,))]
        return reply

    def begin(
        self, events: Sequence[Event], now_ms: int | None, limit: int = 10_000, partition: int = 0
    ) -> tuple[list[tuple[str, str | None]], list[tuple[int, str, str]]]:
        resolved = self.resolve(events) if events else []
        return resolved, (self.pop_due(now_ms, limit) if now_ms is not None else [])

    def resolve(self, events: Sequence[Event]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for ev in events:
            anon = ev.anonymous_id
            if ev.contact_id is not None:
                merged = None
                key = contact_key(ev.contact_id)
                if anon is not None and self._call("resolve", "SET", alias_key(anon), key, "NX"):
                    self._call("resolve", "PEXPIRE", alias_key(anon), self.ttl_ms)
                    self._call("resolve", "SADD", links_key(key), anon)
                    self._call("resolve", "PEXPIRE", links_key(key), self.ttl_ms)
                    merged = anonymous_key(anon)
                out.append((key, merged))
            else:
                target = self._call("resolve", "GET", alias_key(anon or ""))
                if target:
                    self._call("resolve", "PEXPIRE", alias_key(anon or ""), self.ttl_ms)
                out.append((target or anonymous_key(anon or ""), None))
        return out

    def tombstones(self, identities: Collection[Identity]) -> dict[Identity, Tombstone]:
        """One HMGET, as the batched store does (erasing and re-admitting are inherited: rare)."""
        wanted = list(identities)
        if not wanted:
            return {}
        key = self._erasure_secret()
        values = self._call("resolve", "HMGET", TOMBSTONES_KEY, *(tombstone_id(key, i) for i in wanted))
        return {i: Tombstone.loads(v) for i, v in zip(wanted, values) if v is not None}

    def claim_ids(self, events: Sequence[Event]) -> list[bool]:
        """The claims of :class:`RedisStore` as a read and a write per event (not atomic across
        processes: a baseline, like its reservations)."""
        out = []
        for ev in events:
            key, who = id_claim_key(ev.event_id), identity_digest(ev)
            held = self._call("claim", "GET", key)
            if held is not None:
                holder, _, ts = held.partition(" ")
                if holder == who:
                    out.append(True)
                    continue
                if abs(ev.ts_ms - int(ts)) < ID_CLAIM_MS:
                    out.append(False)
                    continue
            self._call("claim", "SET", key, f"{who} {ev.ts_ms}", "PX", ID_CLAIM_MS)
            out.append(True)
        return out

    def pop_due(self, now_ms: int, limit: int = 10_000, partition: int = 0) -> list[tuple[int, str, str]]:
        flat = self._call("pop_due", "ZRANGEBYSCORE", TIMERS_KEY, "-inf", now_ms, "WITHSCORES", "LIMIT", 0, limit)
        out = []
        for due, member in _pairs(flat):
            if self._call("pop_due", "ZREM", TIMERS_KEY, member):
                key, _, kind = member.rpartition(SEP)
                out.append((due, key, kind))
        return out

    def load(self, keys: Iterable[str]) -> dict[str, Profile]:
        self._base.clear()
        out = {}
        for key in keys:
            p, log, sends = profile_keys(key)
            blob = self._call("load", "HGET", p, "blob")
            version = self._call("load", "HGET", p, "ver") or 0
            log_flat = self._call("load", "ZRANGE", log, 0, -1, "WITHSCORES")
            sends_flat = self._call("load", "ZRANGE", sends, 0, -1, "WITHSCORES")
            profile = from_parts(key, blob, _pairs(log_flat), _pairs(sends_flat))
            self._base[key] = _Base(int(version), log_index(log_flat[0::2]), tuple(profile.timers))
            out[key] = profile
        return out

    def commit(self, profiles: Mapping[str, Profile], deleted: Iterable[str],
               timers: Iterable[tuple[str, str, int]], **_crash_safety: Any) -> set[str]:
        """The baseline writes no outbox and checks no versions: a benchmark, not a production store."""
        for key, profile in profiles.items():
            self._save_profile(key, profile)
        for key in deleted:
            self._delete_profile(key)
        for key, kind, due in timers:
            self._call("save", "ZADD", TIMERS_KEY, due, timer_member(key, kind))
        return set()

    def _save_profile(self, key: str, profile: Profile) -> None:
        """Blob, version, log changes, sends, expiry and TTLs: one command each, as a hand-written loop does."""
        p, log, sends = profile_keys(key)
        base = self._base.get(key)
        adds, removes = log_diff(profile, base.log if base else {})
        if base is None:
            self._call("save", "DEL", log)
        version = int(self._call("save", "HGET", p, "ver") or 0) + 1
        self._call("save", "HSET", p, "blob", to_blob(profile))
        self._call("save", "HSET", p, "ver", version)
        for ts, m, _ in adds:
            self._call("save", "ZADD", log, ts, m)
        for m in removes:
            self._call("save", "ZREM", log, m)
        for ts, m in send_entries(profile):
            self._call("save", "ZADD", sends, ts, m)
        horizon = profile.last_ts - LONGEST_WINDOW_MS
        self._call("save", "ZREMRANGEBYSCORE", log, "-inf", horizon)
        self._call("save", "ZREMRANGEBYSCORE", sends, "-inf", horizon)
        for k in (p, log, sends):
            self._call("save", "PEXPIRE", k, self.ttl_ms)
        self._base[key] = _Base(version, log_index(m for _, m in log_entries(profile)), tuple(profile.timers))

    def _delete_profile(self, key: str) -> None:
        """The profile's keys and its timers (read from the stored blob when never loaded)."""
        base = self._base.pop(key, None)
        if base is None:
            blob = self._call("save", "HGET", profile_keys(key)[0], "blob")
            kinds: Sequence[str] = tuple(from_parts(key, blob, [], []).timers) if blob else ()
        else:
            kinds = base.timers
        self._call("save", "DEL", *profile_keys(key))
        for kind in kinds:
            self._call("save", "ZREM", TIMERS_KEY, timer_member(key, kind))

    def reserve(
        self, profile: Profile, send: Send, caps: Mapping[str, Mapping[str, int]], global_caps: Mapping[str, int]
    ) -> bool:
        sends_key = profile_keys(profile.key)[2]
        member = send_member(send)
        if self._call("reserve", "ZSCORE", sends_key, member) is None:
            rows = _pairs(self._call("reserve", "ZRANGEBYSCORE", sends_key, "-inf", "+inf", "WITHSCORES"))
            recorded = [parse_send(m, ts) for ts, m in rows]
            if cap_violation(recorded, send.channel, send.ts_ms, dict(caps), dict(global_caps)):
                return False
            self._call("reserve", "ZADD", sends_key, send.ts_ms, member)
            self._call("reserve", "PEXPIRE", sends_key, self.ttl_ms)
        if send not in profile.sends:
            profile.sends.append(send)
        return True
