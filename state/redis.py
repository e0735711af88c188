"""The Redis store: production state, shared by workers and kept across restarts.

Every hot-path call is one pipeline of EVALSHA calls to the scripts in
:mod:`touchline.state.redis_scripts` (reloaded on NOSCRIPT), so a micro-batch costs
three round trips whatever its size: ``begin`` (identity links + due timers),
``load`` (the feature read: each profile's blob, event log and sends) and ``commit``
(the state update: blobs, log entries added and evicted, sends, TTLs, timers,
merged-away profiles). ``reserve`` is one atomic script per decision.

Keys of one profile share the hash tag ``{key}``, so each script touches one Redis
Cluster slot::

    tl:{c1}:p          hash   blob (orjson) and version (compare-and-set on commit)
    tl:{c1}:log        zset   type<US>event_id by event time: windows and seen ids
    tl:{c1}:sends      zset   channel<US>action<US>ts by send time: frequency caps
    tl:{c1}:links      set    anonymous ids ever linked to contact c1 (for erasure)
    tl:{anon:a1}:alias string the contact anonymous id a1 is linked to
    tl:{timers}:due    zset   profile key<US>timer kind by due time

URLs: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS; redis-py query
options such as ``ssl_ca_certs`` and ``ssl_cert_reqs`` pass through) and
``redis+cluster://host:port`` / ``rediss+cluster://`` for Redis Cluster.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from touchline.decisions.events import Event
from touchline.decisions.policy import MESSAGE_CHANNELS
from touchline.decisions.profile import DAY_MS, LONGEST_WINDOW_MS, WINDOWS, Profile, Send, snapshot
from touchline.state.base import (
    PROBE_TIMEOUT,
    StateStore,
    StoreError,
    StoreHealth,
    StoreOptions,
    StoreUnavailable,
    anonymous_key,
)
from touchline.state.codec import SEP, from_parts, log_diff, log_index, send_entries, send_member, to_blob
from touchline.state.redis_scripts import SCRIPTS

log = logging.getLogger(__name__)

PREFIX = "tl"
TIMERS_KEY = f"{PREFIX}:{{timers}}:due"
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def profile_keys(key: str) -> tuple[str, str, str]:
    """Blob hash, event log and sends of one profile (one hash tag)."""
    return f"{PREFIX}:{{{key}}}:p", f"{PREFIX}:{{{key}}}:log", f"{PREFIX}:{{{key}}}:sends"


def links_key(contact: str) -> str:
    return f"{PREFIX}:{{{contact}}}:links"


def alias_key(anonymous_id: str) -> str:
    return f"{PREFIX}:{{{anonymous_key(anonymous_id)}}}:alias"


def timer_member(key: str, kind: str) -> str:
    return f"{key}{SEP}{kind}"


@dataclass
class _Base:
    """What the store last read or wrote of a profile: the base its next commit diffs
    against and, while it is known to equal what Redis holds, the profile itself."""

    version: int
    log: dict[str, str]  # event id -> log member, as Redis holds them
    timers: tuple[str, ...]
    profile: Profile | None = None


#: One call in a pipeline: ("script", name, keys, args) or ("cmd", command, *args).
Call = tuple


def _client(url: str, options: StoreOptions, decode_responses: bool = True) -> Any:
    """A client for ``redis://``, ``rediss://`` or ``redis+cluster://`` URLs (the state store's,
    and with ``decode_responses=False`` the model store's, whose checkpoints are bytes)."""
    scheme, _, rest = url.partition("://")
    cluster = scheme.endswith("+cluster")
    plain_url = f"{scheme.removesuffix('+cluster')}://{rest}"
    kwargs: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.socket_timeout,
    }
    if options.username:
        kwargs["username"] = options.username
    if options.password:
        kwargs["password"] = options.password
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(plain_url, **kwargs)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(plain_url, retry=Retry(NoBackoff(), 0), **kwargs)


class RedisStore(StateStore):
    """Profiles, aliases and timers in Redis; see the module docstring for the layout."""

    def __init__(self, url: str, options: StoreOptions | None = None) -> None:
        self.url = url
        self.options = options or StoreOptions()
        self.health = StoreHealth()
        self.ttl_ms = str(int(self.options.ttl_days * DAY_MS))
        try:
            self.client = _client(url, self.options)
            self.client.ping()
        except _RETRYABLE as exc:
            raise StoreUnavailable(f"cannot reach Redis at {self.masked_url}: {exc}") from exc
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"cannot use Redis at {self.masked_url}: {exc}") from exc
        self._shas = {name: self._sha(text) for name, text in SCRIPTS.items()}
        #: Profiles as last read or written, least recently used first. A load sends the
        #: cached version and Redis answers "unchanged" in a few bytes, so a worker that
        #: owns its contacts (Bytewax routes by key) rarely re-reads a profile, while one
        #: whose profile another writer changed gets the new one: never a stale read.
        self._base: OrderedDict[str, _Base] = OrderedDict()
        self._lent: set[str] = set()
        #: the readiness probe's own client (see :meth:`ping`)
        self._probe: Any = None
        self._probe_lock = threading.Lock()

    @property
    def masked_url(self) -> str:
        from touchline.state import mask_url

        return mask_url(self.url)

    @staticmethod
    def _sha(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    # ---------------------------------------------------------------- transport
    def _run(self, op: str, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` in one pipeline; retry on a lost connection with backoff."""
        if not calls:
            return []
        return self._with_retry(op, lambda: self._pipeline(calls))

    def _with_retry(self, op: str, attempt: Callable[[], Any]) -> Any:
        """Retry ``attempt`` while Redis is unreachable, with exponential backoff and jitter,
        for up to ``options.retry_seconds``; every operation the store does is safe to repeat."""
        health = self.health
        deadline = None
        delay = 0.05
        while True:
            try:
                result = attempt()
            except _RETRYABLE as exc:
                health.errors[op] += 1
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.options.retry_seconds
                    log.warning("state store %s unreachable during %s (%s); retrying for up to %g s",
                                self.masked_url, op, exc, self.options.retry_seconds)
                    health.up = False
                if now >= deadline:
                    raise StoreUnavailable(
                        f"Redis at {self.masked_url} unreachable for {self.options.retry_seconds:g} s "
                        f"during {op}: {exc}") from exc
                time.sleep(min(delay, max(0.0, deadline - now)) * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)
                continue
            except StoreError:
                raise
            except redis.RedisError as exc:  # a refusal (auth, ACL, OOM, ...): retrying won't help
                raise StoreError(f"Redis at {self.masked_url} refused {op}: {exc}") from exc
            if deadline is not None:
                health.up = True
                health.reconnects += 1
                log.warning("state store %s reachable again; %s succeeded after retrying", self.masked_url, op)
            return result

    def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        results = self._send(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # scripts flushed (or a new node): load them and run what did not run
            for text in SCRIPTS.values():
                self.client.script_load(text)
            for i, r in zip(missing, self._send([calls[i] for i in missing])):
                results[i] = r
        for r in results:
            if isinstance(r, _RETRYABLE):
                raise r
            if isinstance(r, Exception):
                raise StoreError(f"Redis at {self.masked_url}: {r}")
        return results

    def _send(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            if call[0] == "script":
                _, name, keys, args = call
                pipe.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
            else:
                pipe.execute_command(*call[1:])
        return list(pipe.execute(raise_on_error=False))

    # ---------------------------------------------------------------- identity
    def resolve(self, events: Sequence[Event]) -> list[tuple[str, str | None]]:
        resolved, _ = self.begin(events, None)
        return resolved

    def begin(self, events: Sequence[Event], now_ms: int | None, limit: int = 10_000):
        """Resolve identities and claim due timers in one round trip."""
        first_link: dict[str, str] = {}
        anons: list[str] = []
        for ev in events:
            anon = ev.anonymous_id
            if anon is None:
                continue
            if anon not in first_link and ev.contact_id is not None:
                first_link[anon] = ev.contact_id
            if anon not in anons:
                anons.append(anon)
        calls: list[Call] = [
            ("script", "link", (alias_key(a), profile_keys(anonymous_key(a))[0]), (first_link.get(a, ""), self.ttl_ms))
            for a in anons
        ]
        calls += [("cmd", "SADD", links_key(c), a) for a, c in first_link.items()]
        calls += [("cmd", "PEXPIRE", links_key(c), self.ttl_ms) for c in set(first_link.values())]
        if now_ms is not None:
            calls.append(("script", "pop_due", (TIMERS_KEY,), (str(now_ms), str(limit))))
        results = self._run("resolve", calls)
        links = {a: (r[0] or None, bool(r[1]), bool(r[2])) for a, r in zip(anons, results)}
        due = _parse_due(results[-1]) if now_ms is not None else []
        return _walk(events, links), due

    # ---------------------------------------------------------------- profiles
    def load(self, keys: Iterable[str]) -> dict[str, Profile]:
        keys = list(keys)
        cache = self._base
        calls: list[Call] = []
        for k in keys:
            held = cache.get(k)
            calls.append(("script", "load", profile_keys(k),
                          (str(held.version) if held and held.profile is not None else "-1",)))
        results = self._run("load", calls)
        out = {}
        for key, reply in zip(keys, results):
            if len(reply) == 1:  # the cached profile is current
                base = cache[key]
                cache.move_to_end(key)
                assert base.profile is not None
                out[key] = base.profile
                continue
            version, blob, log_flat, sends_flat = reply
            profile = from_parts(key, blob or None, _pairs(log_flat), _pairs(sends_flat))
            cache[key] = _Base(int(version), log_index(log_flat[0::2]), tuple(profile.timers))
            cache.move_to_end(key)
            out[key] = profile
        self._lent.update(keys)
        return out

    def save(self, profiles: Mapping[str, Profile], deleted: Iterable[str] = ()) -> None:
        self.commit(profiles, deleted, ())

    def schedule(self, timers: Iterable[tuple[str, str, int]]) -> None:
        self.commit({}, (), timers)

    def commit(self, profiles: Mapping[str, Profile], deleted: Iterable[str],
               timers: Iterable[tuple[str, str, int]]) -> None:
        """Save, drop and schedule in one round trip."""
        deleted = list(deleted)
        cache = self._base
        unknown = [k for k in deleted if k not in cache]
        if unknown:  # need their timers to cancel them: rare (not the engine's path)
            self.load(unknown)
        calls: list[Call] = []
        diffs = {}
        for key, profile in profiles.items():
            args, diffs[key] = self._commit_args(key, profile)
            calls.append(("script", "commit", profile_keys(key), args))
        for key in deleted:
            base = cache.pop(key, None)
            calls.append(("cmd", "DEL", *profile_keys(key)))
            if base and base.timers:
                calls.append(("cmd", "ZREM", TIMERS_KEY, *(timer_member(key, kind) for kind in base.timers)))
        latest: dict[str, int] = {}
        for key, kind, due in timers:
            latest[timer_member(key, kind)] = due
        if latest:
            flat: list[Any] = []
            for member, due in latest.items():
                flat += [due, member]
            calls.append(("cmd", "ZADD", TIMERS_KEY, *flat))
        lent, self._lent = self._lent, set()
        try:
            results = self._run("save", calls)
        except BaseException:
            for key in (*profiles, *lent):  # unknown outcome: read them afresh next time
                cache.pop(key, None)
            raise
        for key in lent - profiles.keys():  # handed out but not saved: may have been changed
            base = cache.get(key)
            if base is not None:
                base.profile = None
        for (key, profile), version in zip(profiles.items(), results):
            adds, removes, held = diffs[key]
            for _, member, event_id in adds:
                held[event_id] = member
            for member in removes:
                held.pop(member.split(SEP, 1)[1], None)
            cache[key] = _Base(int(version), held, tuple(profile.timers), profile)
            cache.move_to_end(key)
        while len(cache) > self.options.cache_profiles:
            cache.popitem(last=False)

    def _commit_args(self, key: str, profile: Profile) -> tuple[list[Any], tuple]:
        """Arguments of the commit script, and the log diff they carry."""
        base = self._base.get(key)
        if base is None:  # never read: replace whatever is stored
            version = -1
            adds, removes = log_diff(profile, {})
            held: dict[str, str] = {}
        else:
            version = base.version
            adds, removes = log_diff(profile, base.log)
            held = base.log
        args: list[Any] = [version, to_blob(profile), profile.last_ts - LONGEST_WINDOW_MS, self.ttl_ms, len(adds)]
        for ts, m, _ in adds:
            args += [ts, m]
        args.append(len(removes))
        args += removes
        sends = send_entries(profile)
        args.append(len(sends))
        for ts, m in sends:
            args += [ts, m]
        return args, (adds, removes, held)

    def reserve(
        self, profile: Profile, send: Send, caps: Mapping[str, Mapping[str, int]], global_caps: Mapping[str, int]
    ) -> bool:
        ts = send.ts_ms
        channel_caps = [(ts - WINDOWS[w], limit) for w, limit in caps.get(send.channel, {}).items()]
        global_list = [(ts - WINDOWS[w], limit) for w, limit in global_caps.items()]
        lowest = min((since for since, _ in channel_caps + global_list), default=ts)
        args: list[Any] = [send_member(send), ts, send.channel, int(send.channel in MESSAGE_CHANNELS),
                           self.ttl_ms, lowest, len(channel_caps)]
        for since, limit in channel_caps:
            args += [since, limit]
        args.append(len(global_list))
        for since, limit in global_list:
            args += [since, limit]
        args += [len(MESSAGE_CHANNELS), *sorted(MESSAGE_CHANNELS)]
        (ok,) = self._run("reserve", [("script", "reserve", (profile_keys(profile.key)[2],), args)])
        if ok and send not in profile.sends:
            profile.sends.append(send)
        return bool(ok)

    # ---------------------------------------------------------------- timers
    def pop_due(self, now_ms: int, limit: int = 10_000) -> list[tuple[int, str, str]]:
        (due,) = self._run("pop_due", [("script", "pop_due", (TIMERS_KEY,), (str(now_ms), str(limit)))])
        return _parse_due(due)

    # ---------------------------------------------------------------- lifecycle and privacy
    def _linked(self, contact: str) -> list[str]:
        """Anonymous ids whose link points to ``contact`` now."""
        (members,) = self._run("export", [("cmd", "SMEMBERS", links_key(contact))])
        members = sorted(members)
        targets = self._run("export", [("cmd", "GET", alias_key(a)) for a in members])
        return [a for a, t in zip(members, targets) if t == contact]

    def delete(self, key: str) -> None:
        (_version, blob, _log, _sends), members = self._run(
            "delete", [("script", "load", profile_keys(key), ("-1",)), ("cmd", "SMEMBERS", links_key(key))])
        timers = list(from_parts(key, blob or None, [], []).timers) if blob else []
        calls: list[Call] = [("cmd", "DEL", *profile_keys(key), links_key(key))]
        if timers:
            calls.append(("cmd", "ZREM", TIMERS_KEY, *(timer_member(key, k) for k in timers)))
        calls += [("script", "unlink", (alias_key(a), *profile_keys(anonymous_key(a))), (key,)) for a in members]
        self._run("delete", calls)
        self._base.pop(key, None)

    def export(self, contact_id: str) -> dict[str, Any] | None:
        _version, blob, log_flat, sends_flat = self._run(
            "export", [("script", "load", profile_keys(contact_id), ("-1",))])[0]
        aliases = self._linked(contact_id)
        if not blob and not log_flat and not sends_flat and not aliases:
            return None
        profile = from_parts(contact_id, blob or None, _pairs(log_flat), _pairs(sends_flat))
        return {"contact_id": contact_id, "aliases": aliases,
                "profile": snapshot(profile) if (blob or log_flat or sends_flat) else None}

    def _nodes(self) -> list[Any]:
        """One plain client per primary (just the client itself outside a cluster)."""
        if hasattr(self.client, "get_primaries"):
            return [node.redis_connection for node in self.client.get_primaries()]
        return [self.client]

    def stats(self) -> dict[str, int]:
        """Counts by key pattern (SCAN on every primary): for reports, not the hot path."""
        def count(pattern: str) -> int:
            return sum(1 for node in self._nodes() for _ in node.scan_iter(match=pattern, count=1000))

        (timers,) = self._run("stats", [("cmd", "ZCARD", TIMERS_KEY)])
        return {
            "profiles": self._with_retry("stats", lambda: count(f"{PREFIX}:{{*}}:p")),
            "aliases": self._with_retry("stats", lambda: count(f"{PREFIX}:{{{anonymous_key('*')}}}:alias")),
            "timers": int(timers),
        }

    def ping(self) -> str:
        """PING on a client of its own with short timeouts: a probe must answer quickly and
        must not wait behind (or disturb) the engine's pipelines and their retries."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = _client(self.url, replace(self.options, socket_timeout=PROBE_TIMEOUT))
            started = time.perf_counter()
            try:
                self._probe.ping()
            except (redis.RedisError, OSError) as exc:
                raise StoreUnavailable(f"Redis at {self.masked_url} did not answer PING within {PROBE_TIMEOUT:g} s: "
                                       f"{exc}") from None
        return f"{self.masked_url} answered PING in {(time.perf_counter() - started) * 1000:.1f} ms"

    def close(self) -> None:
        if self._probe is not None:
            try:
                self._probe.close()
            except Exception:
                pass
        try:
            self.client.close()
        except Exception:  # closing a dead connection is not worth a traceback
            pass


def _pairs(flat: Sequence[str]) -> list[tuple[int, str]]:
    """[member, score, member, score, ...] -> [(score, member), ...]"""
    return [(int(float(flat[i + 1])), flat[i]) for i in range(0, len(flat), 2)]


def _parse_due(flat: Sequence[str]) -> list[tuple[int, str, str]]:
    out = []
    for due, member in _pairs(flat):
        key, _, kind = member.rpartition(SEP)
        out.append((due, key, kind))
    return out


def _walk(events: Sequence[Event], links: Mapping[str, tuple[str | None, bool, bool]]):
    """Resolve each event given every anonymous id's link as Redis answered it, with the
    same rules (and results) as the in-process store; see :meth:`StateStore.resolve`."""
    current: dict[str, str] = {}  # anonymous id -> key its events resolve to, so far in this batch
    pending_merge: set[str] = set()  # merges still to hand out (the first linking event gets it)
    for anon, (target, linked_now, anon_exists) in links.items():
        if linked_now:
            current[anon] = anonymous_key(anon)
            pending_merge.add(anon)
        elif target is not None:
            current[anon] = target
            if anon_exists:  # linked before, but the merge never landed (a crash in between)
                pending_merge.add(anon)
        else:
            current[anon] = anonymous_key(anon)
    out: list[tuple[str, str | None]] = []
    for ev in events:
        anon = ev.anonymous_id
        if ev.contact_id is not None:
            merged = None
            if anon is not None and anon in pending_merge and links[anon][0] == ev.contact_id:
                pending_merge.discard(anon)
                current[anon] = ev.contact_id
                merged = anonymous_key(anon)
            out.append((ev.contact_id, merged))
        else:
            out.append((current.get(anon or "", anonymous_key(anon or "")), None))
    return out


__all__ = ["RedisStore", "StoreHealth", "profile_keys", "alias_key", "links_key", "TIMERS_KEY"]
