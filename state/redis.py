"""The Redis store: production state, shared by workers and kept across restarts.

Every hot-path call is one pipeline of EVALSHA calls to the scripts in
:mod:`touchline.state.redis_scripts` (reloaded on NOSCRIPT), so a micro-batch costs
three round trips whatever its size: ``begin`` (identity links + due timers),
``load`` (the feature read: each profile's blob, event log and sends) and ``commit``
(the state update: blobs, log entries added and evicted, sends, TTLs, timers,
merged-away profiles), after one HMGET of the batch's identities on the erasure tombstones
(``tombstones``). ``reserve`` costs no round trip: a decision's send is written by the
commit of its profile, under the profile's version check.

Keys of one profile share the hash tag ``{key}``, so each script touches one Redis
Cluster slot::

    tl:{c1}:p          hash   blob (orjson) and version (compare-and-set on commit)
    tl:{c1}:log        zset   type<US>event_id by event time: windows and seen ids
    tl:{c1}:sends      zset   channel<US>action<US>ts by send time: frequency caps
    tl:{c1}:links      set    anonymous ids ever linked to contact c1 (for erasure)
    tl:{c1}:outbox     hash   decisions committed with the profile until their outputs
                              confirm them: r:<id> record, d:<id> / c:<id> still owed to
                              the decisions output / the channel delivery
    tl:{anon:a1}:alias string the contact anonymous id a1 is linked to (its profile key)
    tl:{anon:a1}:merging string  the id of the event that linked a1, until the merge of its
                              batch commits (a replay of that batch merges again)
    tl:{id:<digest>}   string "<identity digest> <event time>": who claimed an event id (a
                              BLAKE2b digest of it), expiring after the idempotency window
    tl:{timers:p3}:due zset   profile key<US>timer kind by due time, per input partition
    tl:{timers:p3}:inflight   timers claimed by the partition's worker, until its batch commits
    tl:{meta}:epoch    string written at first start; every commit checks it is still there
    tl:{meta}:watermarks hash input partition -> its event clock after its last commit
    tl:{meta}:send-hours hash local hour 0..23 -> the population's engagements (best send time)
    tl:{meta}:counts   hash   api-workers@<timer partition> -> how many API workers started last
    tl:{meta}:timer-partitions set every partition a timer was set in (erasure cancels in each)
    tl:{hold:t[3]}     hash   events the reorder buffer of topic t, partition 3 holds: offset -> [where, line]
    tl:{rr}:<name>     counter round-robin turns shared by every worker
    tl:{erased}:tombstones hash HMAC of an erased identity -> its tombstone (no TTL)
    tl:{meta}:erasure-key   string the erasure key generated when none is configured
    tl:{journeys}:versions  hash   <journey>@<version> -> its definition (canonical JSON; no TTL)
    tl:{journeys}:baselines hash   journey -> the version of contacts whose state names none

URLs: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS; redis-py query
options such as ``ssl_ca_certs`` and ``ssl_cert_reqs`` pass through) and
``redis+cluster://host:port`` / ``rediss+cluster://`` for Redis Cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import random
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Sequence, TypeVar

import orjson
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from touchline.decisions.events import Event
from touchline.decisions.journey_versions import StoredVersions, VersionKey
from touchline.decisions.profile import DAY_MS, LONGEST_WINDOW_MS, Profile, snapshot
from touchline.redact import redact_url
from touchline.state.base import (
    ID_CLAIM_MS,
    PROBE_TIMEOUT,
    StateStore,
    StoreError,
    StoreHealth,
    StoreOptions,
    checked_send_hours,
    OutboxEntry,
    Pending,
    StoreDataLost,
    StoreUnavailable,
    anonymous_key,
    contact_key,
    id_digest,
    identity_digest,
    is_known_key,
)
from touchline.state.erasure import (
    ANONYMOUS,
    CONTACT,
    Identity,
    Tombstone,
    erasure_time,
    fresh_profile,
    tombstone_id,
    unsubscribed,
)
from touchline.state.codec import SEP, from_parts, journeys_of, log_diff, log_index, send_entries, to_blob
from touchline.state.redis_scripts import SCRIPTS
from touchline.state.redis_wire import pipelined

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "tl"
#: The single timer set of earlier versions; moved into the shards at start.
LEGACY_TIMERS_KEY = f"{PREFIX}:{{timers}}:due"
EPOCH_KEY = f"{PREFIX}:{{meta}}:epoch"
WATERMARKS_KEY = f"{PREFIX}:{{meta}}:watermarks"
#: Erased identities: tombstone id (keyed hash) -> tombstone (state/erasure.py); no TTL.
TOMBSTONES_KEY = f"{PREFIX}:{{erased}}:tombstones"
#: The erasure key generated at the first erasure when none is configured, and a check of
#: the key the tombstones were made with.
ERASURE_KEY_KEY = f"{PREFIX}:{{meta}}:erasure-key"
ERASURE_CHECK_KEY = f"{PREFIX}:{{meta}}:erasure-key-check"
#: The running count of known profiles (see :meth:`RedisStore.known_contacts`), and how
#: often a process reads it.
KNOWN_KEY = f"{PREFIX}:{{meta}}:known"
#: Journey versions (decisions/journey_versions.py): definitions by ``<journey>@<version>``,
#: and each journey's baseline.
JOURNEY_VERSIONS_KEY = f"{PREFIX}:{{journeys}}:versions"
JOURNEY_BASELINES_KEY = f"{PREFIX}:{{journeys}}:baselines"
#: The population's engagement by local hour (decisions/send_time.py), shared by every process.
SEND_HOURS_KEY = f"{PREFIX}:{{meta}}:send-hours"
#: Every timer partition a process scheduled in (the API's too, which keep no event clock): an
#: erasure cancels a contact's timers in each.
TIMER_PARTITIONS_KEY = f"{PREFIX}:{{meta}}:timer-partitions"
#: Counts recorded for every process and restart (how many API workers a range of timer partitions had).
COUNTS_KEY = f"{PREFIX}:{{meta}}:counts"
KNOWN_READ_SECONDS = 10.0
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def profile_keys(key: str) -> tuple[str, str, str]:
    """Blob hash, event log and sends of one profile (one hash tag)."""
    return f"{PREFIX}:{{{key}}}:p", f"{PREFIX}:{{{key}}}:log", f"{PREFIX}:{{{key}}}:sends"


def outbox_key(key: str) -> str:
    return f"{PREFIX}:{{{key}}}:outbox"


def timer_keys(partition: int) -> tuple[str, str]:
    """Due and in-flight timers of one input partition (one hash tag: one Cluster slot).

    Timers set while processing partition p are claimed by the worker reading p, on p's
    event clock: a contact's timers and events then interleave the same way whatever the
    number of workers and however partitions are interleaved.
    """
    return f"{PREFIX}:{{timers:p{partition}}}:due", f"{PREFIX}:{{timers:p{partition}}}:inflight"


def hold_key(source: str) -> str:
    """Events one input's reorder buffer holds (``topic[partition]``; see
    :mod:`touchline.decisions.reorder`)."""
    return f"{PREFIX}:{{hold:{source}}}"


TIMERS_KEY = timer_keys(0)[0]  # kept for callers that name one timer set


def links_key(contact: str) -> str:
    return f"{PREFIX}:{{{contact}}}:links"


def alias_key(anonymous_id: str) -> str:
    return f"{PREFIX}:{{{anonymous_key(anonymous_id)}}}:alias"


def pending_merge_key(anonymous_id: str) -> str:
    """The id of the event whose batch linked this anonymous id, until that batch's merge is
    committed (see the ``link`` script)."""
    return f"{PREFIX}:{{{anonymous_key(anonymous_id)}}}:merging"


def id_claim_key(event_id: str) -> str:
    """Where the claim of one event id lives (its own key: one Cluster slot each, its own TTL)."""
    return f"{PREFIX}:{{id:{id_digest(event_id)}}}"


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
Call = tuple[Any, ...]
#: What a commit changes in a profile's event log: entries added as (ts, member, event id),
#: members removed, and the log (event id -> member) they apply to.
LogDiff = tuple[list[tuple[int, str, str]], list[str], dict[str, str]]


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

    health: StoreHealth  # always set: a networked store

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
        self._commit_names = CommitNames()
        self._known: tuple[float, int] | None = None  # (when read, the running count of known profiles)
        #: the readiness probe's own client (see :meth:`ping`)
        self._probe: Any = None
        self._probe_lock = threading.Lock()
        #: partitions whose timers claimed by a crashed run were put back (once, at first use)
        self._restored: set[int] = set()
        #: timer partitions this process has recorded in TIMER_PARTITIONS_KEY (the API's have no watermark)
        self._timer_partitions: set[int] = set()
        #: input partitions with a timer set, as far as known (see _partitions)
        self._known_partitions: set[int] | None = None
        #: the epoch every commit checks (None until claim_epoch: tools that only read)
        self._epoch: str | None = None
        self.cluster = hasattr(self.client, "get_primaries")
        #: the key of the tombstones' hashes, once known (see _erasure_secret)
        self._erasure_key: bytes | None = None

    @property
    def masked_url(self) -> str:
        return redact_url(self.url)

    @staticmethod
    def _sha(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    # ---------------------------------------------------------------- transport
    def _run(self, op: str, calls: Sequence[Call], keep: Callable[[Exception], bool] | None = None) -> list[Any]:
        """Run ``calls`` in one pipeline; retry on a lost connection with backoff. Error
        replies for which ``keep`` is true are returned in place instead of raised."""
        if not calls:
            return []
        return self._with_retry(op, lambda: self._pipeline(calls, keep))

    def _with_retry(self, op: str, attempt: Callable[[], T]) -> T:
        """Retry ``attempt`` while Redis is unreachable, with exponential backoff and jitter,
        for up to ``options.retry_seconds``; every operation the store does is safe to repeat."""
        health = self.health
        deadline = None
        delay = 0.05
        while True:
            try:
                result = attempt()
            except _RETRYABLE as exc:
                health.count_error(op)
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

    def _pipeline(self, calls: Sequence[Call], keep: Callable[[Exception], bool] | None = None) -> list[Any]:
        results = self._send(calls)
        self._rerun_unloaded_scripts(calls, results)
        self._raise_errors(results, keep)
        return results

    def _rerun_unloaded_scripts(self, calls: Sequence[Call], results: list[Any]) -> None:
        """Scripts flushed (or a new node): load them and run, in place, the calls that did not run."""
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if not missing:
            return
        for text in SCRIPTS.values():
            self.client.script_load(text)
        for i, r in zip(missing, self._send([calls[i] for i in missing])):
            results[i] = r

    def _raise_errors(self, results: Sequence[Any], keep: Callable[[Exception], bool] | None) -> None:
        """Raise the first error reply: a lost connection as it is (retried), any other as a
        StoreError, unless ``keep`` keeps it in place."""
        for r in results:
            if isinstance(r, _RETRYABLE):
                raise r
            if isinstance(r, Exception) and not (keep is not None and keep(r)):
                raise StoreError(f"Redis at {self.masked_url}: {r}")

    def _send(self, calls: Sequence[Call]) -> list[Any]:
        commands = [("EVALSHA", self._shas[call[1]], len(call[2]), *call[2], *call[3]) if call[0] == "script"
                    else call[1:] for call in calls]
        if not self.cluster:
            return pipelined(self.client, commands)
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

    # ---------------------------------------------------------------- identity
    def resolve(self, events: Sequence[Event]) -> list[tuple[str, str | None]]:
        resolved, _ = self.begin(events, None)
        return resolved

    def begin(
        self, events: Sequence[Event], now_ms: int | None, limit: int = 10_000, partition: int = 0
    ) -> tuple[list[tuple[str, str | None]], list[tuple[int, str, str]]]:
        """Resolve identities and claim the partition's due timers in one round trip."""
        if partition not in self._restored:
            self.restore_claimed(partition)
        anons, first_link = _anonymous_links(events)
        calls = self._link_calls(anons, first_link)
        claims = self._claim_calls(now_ms, limit, partition) if now_ms is not None else []
        results = self._run("resolve", calls + claims)
        links = {a: (r[0] or None, bool(r[1]), bool(r[2])) for a, r in zip(anons, results)}
        due = self._claimed(results[len(calls):], limit, partition) if claims else []
        return _walk(events, links), due

    def _link_calls(self, anons: list[str], first_link: Mapping[str, tuple[str, str]]) -> list[Call]:
        """Link each anonymous id to the first contact it comes with in the batch (a link that
        exists stays), remember the link under the contact (for erasure) and read every link."""
        calls: list[Call] = []
        for a in anons:
            contact, event_id = first_link.get(a, ("", ""))
            keys = (alias_key(a), profile_keys(anonymous_key(a))[0], pending_merge_key(a))
            calls.append(("script", "link", keys, (contact, self.ttl_ms, event_id)))
        calls += [("cmd", "SADD", links_key(c), a) for a, (c, _) in first_link.items()]
        calls += [("cmd", "PEXPIRE", links_key(c), self.ttl_ms) for c in {c for c, _ in first_link.values()}]
        return calls

    def claim_ids(self, events: Sequence[Event]) -> list[bool]:
        """One round trip per batch: one script call for the whole batch (on Redis Cluster, one
        per event in a pipeline: each id is its own slot). A script is atomic, so of two
        processes claiming an id at once exactly one identity wins."""
        window = str(ID_CLAIM_MS)
        keys = [id_claim_key(ev.event_id) for ev in events]
        args = [(identity_digest(ev), str(ev.ts_ms)) for ev in events]
        if self.cluster:
            calls: list[Call] = [("script", "claim_ids", (k,), (window, window, *a)) for k, a in zip(keys, args)]
            return [bool(r[0]) for r in self._run("claim", calls)]
        (got,) = self._run("claim", [("script", "claim_ids", keys, (window, window, *(x for a in args for x in a)))])
        return [bool(r) for r in got]

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
        conflicts = self.commit(profiles, deleted, ())
        if conflicts:
            raise StoreError(f"Redis at {self.masked_url}: CONFLICT: {', '.join(sorted(conflicts))} changed by "
                             "another writer since loaded; nothing of theirs was written")

    def schedule(self, timers: Iterable[tuple[str, str, int]]) -> None:
        self.commit({}, (), timers)

    def commit(self, profiles: Mapping[str, Profile], deleted: Iterable[str],
               timers: Iterable[tuple[str, str, int]], *, outbox: Mapping[str, Sequence[OutboxEntry]] | None = None,
               fired: Iterable[tuple[int, str, str]] = (), merged_into: Mapping[str, str] | None = None,
               watermark: int | None = None, partition: int = 0) -> set[str]:
        """Save profiles (each with its outbox entries, atomically), schedule timers and check
        the epoch in one round trip; then end the claims of fired timers and drop merged-away
        and expired profiles in a second one, for what was written. Returns the profiles a
        concurrent writer changed since they were loaded (nothing of theirs was written)."""
        deleted = list(deleted)
        self._load_unknown(deleted)
        schedule = self._schedule_first(timers, partition)
        profile_calls, diffs = self._profile_calls(profiles, outbox or {})
        calls = [*schedule, *profile_calls, *self._after_profiles(watermark, partition)]
        lent, self._lent = self._lent, set()
        results = self._run_or_forget("save", calls, (*profiles, *lent))
        if schedule:
            self._registered(partition)
        self._check_epoch(results)
        results = results[len(schedule):]
        conflicts = {key for key, r in zip(profiles, results) if isinstance(r, Exception)}
        self._remember(profiles, results, diffs, lent, conflicts)
        created = sum(1 for key, r in zip(profiles, results) if key not in conflicts and int(r) == 1 and is_known_key(key))
        self._finish(deleted, fired, merged_into or {}, conflicts, partition, created)
        return conflicts

    def _load_unknown(self, deleted: list[str]) -> None:
        """Read the profiles to delete that this store never read: their timers are to be cancelled.
        Rare: the engine deletes only profiles it loaded."""
        unknown = [k for k in deleted if k not in self._base]
        if unknown:
            self.load(unknown)

    def _schedule_first(self, timers: Iterable[tuple[str, str, int]], partition: int) -> list[Call]:
        """The calls that schedule ``timers``, to go before the profiles that hold them: a process
        killed while its pipeline is being sent leaves a prefix of it applied, and a profile written
        without its timer would never set that timer again (a timer without its profile fires stale:
        nothing). On Redis Cluster, with no order across nodes within one pipeline, they are sent
        here, alone, and none are returned."""
        schedule = _schedule_calls(timers, partition)
        if schedule and partition not in self._timer_partitions:  # once per partition and process, before its timers
            schedule.insert(0, ("cmd", "SADD", TIMER_PARTITIONS_KEY, str(partition)))
        if schedule and self.cluster:
            self._run("save", schedule)
            self._registered(partition)
            return []
        return schedule

    def _registered(self, partition: int) -> None:
        """``partition`` is in TIMER_PARTITIONS_KEY now (the call that added it ran)."""
        self._timer_partitions.add(partition)
        if self._known_partitions is not None:
            self._known_partitions.add(partition)

    def _profile_calls(self, profiles: Mapping[str, Profile],
                       outbox: Mapping[str, Sequence[OutboxEntry]]) -> tuple[list[Call], dict[str, LogDiff]]:
        """One commit script call per profile (with its outbox entries), and the log diff each carries."""
        calls: list[Call] = []
        diffs = {}
        for key, profile in profiles.items():
            args, diffs[key] = self._commit_args(key, profile, outbox.get(key, ()))
            calls.append(("script", "commit", (*profile_keys(key), outbox_key(key)), args))
        return calls, diffs

    def _after_profiles(self, watermark: int | None, partition: int) -> list[Call]:
        """What goes after the profiles: the partition's event clock (never ahead of what they hold)
        and, last, the read of the epoch key the commit checks."""
        calls: list[Call] = []
        if watermark is not None:
            calls.append(("cmd", "HSET", WATERMARKS_KEY, f"p{partition}", watermark))
            if self._known_partitions is not None:
                self._known_partitions.add(partition)
        if self._epoch is not None:
            calls.append(("cmd", "GET", EPOCH_KEY))
        return calls

    def _run_or_forget(self, op: str, calls: Sequence[Call], keys: Iterable[str]) -> list[Any]:
        """Run a commit's calls (conflicts come back in place); if it fails, the outcome for
        ``keys`` is unknown, so the cache forgets them and the next load reads them afresh."""
        try:
            return self._run(op, calls, keep=_is_conflict)
        except BaseException:
            for key in keys:
                self._base.pop(key, None)
            raise

    def _remember(self, profiles: Mapping[str, Profile], results: Sequence[Any], diffs: dict[str, LogDiff],
                  lent: set[str], conflicts: set[str]) -> None:
        """Update the cache to what Redis now holds (conflicted profiles: unknown, so dropped)."""
        cache = self._base
        for key in lent - profiles.keys():  # handed out but not saved: may have been changed
            base = cache.get(key)
            if base is not None:
                base.profile = None
        for (key, profile), version in zip(profiles.items(), results):
            if key in conflicts:
                cache.pop(key, None)
                continue
            adds, removes, held = diffs[key]
            for _, member, event_id in adds:
                held[event_id] = member
            for member in removes:
                held.pop(member.split(SEP, 1)[1], None)
            cache[key] = _Base(int(version), held, tuple(profile.timers), profile)
            cache.move_to_end(key)
        while len(cache) > self.options.cache_profiles:
            cache.popitem(last=False)

    def _finish(self, deleted: list[str], fired: Iterable[tuple[int, str, str]], merged_into: Mapping[str, str],
                conflicts: set[str], partition: int, created: int = 0) -> None:
        """After the profiles are written: end the claims of the timers that fired on written
        profiles, end the pending merges that landed, drop merged-away profiles whose target
        was written, and expired ones."""
        calls: list[Call] = []
        done = [timer_member(key, kind) for _due, key, kind in fired if key not in conflicts]
        if done:
            calls.append(("cmd", "ZREM", timer_keys(partition)[1], *done))
        calls += [("cmd", "DEL", pending_merge_key(anon_key.partition(":")[2]))
                  for anon_key, target in merged_into.items() if target not in conflicts]
        for key in deleted:
            if key not in conflicts and merged_into.get(key) not in conflicts:
                calls += self._drop_calls(key, partition)
        if created:  # known contacts written for the first time (version 1)
            calls.append(("cmd", "INCRBY", KNOWN_KEY, created))
        self._run("save", calls)

    def _drop_calls(self, key: str, partition: int) -> list[Call]:
        """Delete a profile (merged away or expired) and cancel its timers."""
        base = self._base.pop(key, None)
        calls: list[Call] = [("cmd", "DEL", *profile_keys(key))]
        if base and base.timers:
            calls += _cancel_calls(key, base.timers, [partition])
        return calls

    def _check_epoch(self, results: Sequence[Any]) -> None:
        """The epoch key a commit read last (when the store checks one) is still this deployment's."""
        if self._epoch is None:
            return
        seen = results[-1]
        if seen != self._epoch:
            raise StoreDataLost(
                f"Redis at {self.masked_url} lost its data: the epoch key {EPOCH_KEY} is "
                f"{'gone' if seen is None else 'another deployment’s'} (restarted without persistence, flushed, or "
                "failed over to an empty replica); stopping before frequency caps and timers go wrong")

    def _commit_args(self, key: str, profile: Profile, outbox: Sequence[OutboxEntry] = ()) -> tuple[list[Any], LogDiff]:
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
        args.append(len(outbox) * 2 + sum(e.to_channel for e in outbox))
        for entry in outbox:
            args += [f"r:{entry.decision_id}", entry.record, f"d:{entry.decision_id}", 1]
            if entry.to_channel:
                args += [f"c:{entry.decision_id}", 1]
        args.append(self._commit_names.next())
        return args, (adds, removes, held)

    # ---------------------------------------------------------------- timers
    def pop_due(self, now_ms: int, limit: int = 10_000, partition: int = 0) -> list[tuple[int, str, str]]:
        if partition not in self._restored:
            self.restore_claimed(partition)
        return self._claimed(self._run("pop_due", self._claim_calls(now_ms, limit, partition)), limit, partition)

    @staticmethod
    def _claim_calls(now_ms: int, limit: int, partition: int) -> list[Call]:
        return [("script", "claim_due", timer_keys(partition), (str(now_ms), str(limit)))]

    def _claimed(self, replies: Sequence[Any], limit: int, partition: int) -> list[tuple[int, str, str]]:
        """Due timers claimed, soonest first; beyond ``limit`` they go back."""
        due = sorted((t for reply in replies for t in _parse_due(reply)), key=lambda t: (t[0], t[1], t[2]))
        if len(due) > limit:
            members = tuple(timer_member(key, kind) for _, key, kind in due[limit:])
            self._run("pop_due", [("script", "restore_claimed", timer_keys(partition), members)])
            due = due[:limit]
        return due

    def restore_claimed(self, partition: int) -> int:
        """Put back what a run that stopped before committing had claimed of this partition's
        timers (the worker reading a partition is its only claimant); move timers from the
        single timer set of earlier versions into the first partition asked for."""
        self._restored.add(partition)
        (restored,) = self._run("restore", [("script", "restore_claimed", timer_keys(partition), ("*",))])
        if restored:
            log.warning("%d timer(s) of input partition %d claimed by a run that stopped before committing them "
                        "are due again", restored, partition)
        self._migrate_legacy_timers(partition)
        return int(restored)

    def held(self, source: str) -> list[tuple[int, str, bytes]]:
        (entries,) = self._run("hold", [("cmd", "HGETALL", hold_key(source))])
        found = [(int(pos), *orjson.loads(value)) for pos, value in (entries or {}).items()]
        return sorted((pos, source, line.encode()) for pos, source, line in found)

    def hold(self, source: str, add: Mapping[int, tuple[str, bytes]], drop: Iterable[int]) -> None:
        calls: list[Call] = []
        if add:
            flat: list[Any] = []
            for pos, (where, line) in add.items():
                flat += [str(pos), orjson.dumps([where, line.decode("utf-8", "replace")]).decode()]
            calls.append(("cmd", "HSET", hold_key(source), *flat))
        fields = [str(pos) for pos in drop]
        if fields:
            calls.append(("cmd", "HDEL", hold_key(source), *fields))
        if calls:
            self._run("hold", calls)

    def watermark(self, partition: int) -> int | None:
        (value,) = self._run("watermark", [("cmd", "HGET", WATERMARKS_KEY, f"p{partition}")])
        return int(value) if value is not None else None

    def _partitions(self, fresh: bool = False) -> list[int]:
        """Input partitions that ever committed (each has a timer set): read once, then kept
        up to date by this store's own commits (a delete on the hot path costs no round trip
        for it; a timer another process adds later in a new partition only fires stale)."""
        if self._known_partitions is None or fresh:
            fields, members = self._run("stats", [("cmd", "HKEYS", WATERMARKS_KEY),
                                                  ("cmd", "SMEMBERS", TIMER_PARTITIONS_KEY)])
            self._known_partitions = {0, *(int(f[1:]) for f in fields if f[:1] == "p" and f[1:].isdigit()),
                                      *(int(m) for m in members if m.isdigit())}
        return sorted(self._known_partitions)

    def _migrate_legacy_timers(self, partition: int) -> None:
        moved = self._move_timer_set(LEGACY_TIMERS_KEY, partition)
        if moved:
            log.info("moved %d timers of an earlier version into input partition %d's", moved, partition)

    def _move_timer_set(self, source_key: str, target: int) -> int:
        """Move every timer of the set ``source_key`` into partition ``target``'s: ZADD NX (a
        timer the target already has for the profile keeps its time), then ZREM of exactly
        what moved (a timer added meanwhile is not lost); how many moved."""
        (flat,) = self._run("restore", [("cmd", "ZRANGE", source_key, 0, -1, "WITHSCORES")])
        moved = _pairs(flat or [])
        if moved:
            self._run("restore", [("cmd", "ZADD", timer_keys(target)[0], "NX", *[x for pair in moved for x in pair]),
                                  ("cmd", "ZREM", source_key, *[member for _, member in moved])])
        return len(moved)

    def swap_count(self, name: str, count: int) -> int | None:
        (before, _) = self._run("counts", [("cmd", "HGET", COUNTS_KEY, name), ("cmd", "HSET", COUNTS_KEY, name, count)])
        return None if before is None else int(before)

    def move_timers(self, source: int, target: int) -> int:
        """The claimed timers put back first (their claimant is gone), then the set moved."""
        self.restore_claimed(source)
        moved = self._move_timer_set(timer_keys(source)[0], target)
        if moved:
            log.warning("moved %d timer(s) of partition %d, which no process reads any more, into partition %d",
                        moved, source, target)
        return moved

    # ---------------------------------------------------------------- crash safety
    def ack(self, done: Iterable[tuple[str, str, str]]) -> None:
        """Outputs are done with these outbox entries; one round trip for all of them."""
        calls: list[Call] = []
        for key, decision_id, part in done:
            other = "c" if part == "d" else "d"
            calls.append(("script", "outbox_ack", (outbox_key(key),),
                          (f"{part}:{decision_id}", f"r:{decision_id}", f"{other}:{decision_id}")))
        self._run("ack", calls)

    def pending(self, limit: int = 100_000) -> list[Pending]:
        """Every outbox entry still owed to an output (SCAN over each primary: a start-up
        cost proportional to the keyspace, paid by one worker)."""
        keys = self._with_retry("pending", lambda: [k for node in self._nodes()
                                                    for k in node.scan_iter(match=f"{PREFIX}:{{*}}:outbox", count=2000)])
        out: list[Pending] = []
        for start in range(0, len(keys), 500):
            for fields in self._run("pending", [("cmd", "HGETALL", k) for k in keys[start:start + 500]]):
                out += _pending_of(_as_dict(fields))
                if len(out) >= limit:
                    return out[:limit]
        return out

    def claim_epoch(self, expected: str | None) -> str:
        """Write the epoch key if it is missing (a first start), check it on every commit."""
        token = hashlib.blake2b(f"{time.time_ns()}{random.random()}".encode(), digest_size=8).hexdigest()
        created, current = self._run("epoch", [("cmd", "SET", EPOCH_KEY, token, "NX"), ("cmd", "GET", EPOCH_KEY)])
        if expected is not None and current != expected:
            if created:
                self._run("epoch", [("cmd", "DEL", EPOCH_KEY)])
            raise StoreDataLost(
                f"Redis at {self.masked_url} {'holds no Touchline state' if created else 'holds another deployment’s state'}"
                f" ({EPOCH_KEY} is not the {expected} this engine's recovery snapshot was taken with): its data was "
                "lost (restarted without persistence, flushed, or another server). Restore Redis from a backup, or "
                "start over with a new runtime.recovery_dir")
        self._epoch = current
        return str(current)

    def durability(self) -> str:
        """How the server persists, from CONFIG GET (refused on some managed services)."""
        try:
            aof = self.client.config_get("appendonly").get("appendonly")
            save = self.client.config_get("save").get("save")
        except (redis.RedisError, AttributeError):
            return f"Redis at {self.masked_url}: persistence unknown (CONFIG GET refused)"
        if aof == "yes":
            return f"Redis at {self.masked_url}: append-only file on"
        if save:
            return (f"WARNING: Redis at {self.masked_url} persists by RDB snapshots only (save {save}): a restart "
                    "loses the writes since the last snapshot; production needs appendonly yes")
        return (f"WARNING: Redis at {self.masked_url} has no persistence (appendonly no, no save points): a restart "
                "loses all state; production needs appendonly yes")

    def next_turn(self, name: str) -> int:
        """One counter shared by every worker and process."""
        (turn,) = self._run("turn", [("cmd", "INCR", f"{PREFIX}:{{rr}}:{name}")])
        return int(turn) - 1

    def add_send_hours(self, delta: Sequence[int], cap: int) -> list[int]:
        """One script call: the counters added to and, past ``cap``, halved atomically, so
        processes adding at once lose nothing."""
        args = (str(cap), *map(str, checked_send_hours(delta)))
        (totals,) = self._run("send_hours", [("script", "add_send_hours", (SEND_HOURS_KEY,), args)])
        return [int(n) for n in totals]

    # ---------------------------------------------------------------- journey versions
    def keep_journey_versions(self, definitions: Mapping[VersionKey, str]) -> None:
        """HSETNX each definition and baseline: every process keeps the same content, so
        whoever writes first wins nothing that differs."""
        calls: list[Call] = []
        for (name, version), text in definitions.items():
            calls += [("cmd", "HSETNX", JOURNEY_VERSIONS_KEY, f"{name}@{version}", text),
                      ("cmd", "HSETNX", JOURNEY_BASELINES_KEY, name, version)]
        self._run("journeys", calls)

    def journey_versions(self, keys: Iterable[VersionKey] | None = None) -> StoredVersions:
        fields = None if keys is None else [f"{name}@{version}" for name, version in keys]
        calls: list[Call] = [("cmd", "HGETALL", JOURNEY_BASELINES_KEY)]
        if fields is None:
            calls.append(("cmd", "HGETALL", JOURNEY_VERSIONS_KEY))
        elif fields:
            calls.append(("cmd", "HMGET", JOURNEY_VERSIONS_KEY, *fields))
        baselines, *found = self._run("journeys", calls)
        pairs = _as_dict(found[0]).items() if fields is None else zip(fields, found[0] if found else [])
        definitions = {_version_key(f): text for f, text in pairs if text is not None}
        return StoredVersions(definitions, _as_dict(baselines))

    def forget_journey_versions(self, keys: Iterable[VersionKey]) -> None:
        fields = [f"{name}@{version}" for name, version in keys]
        if fields:
            self._run("journeys", [("cmd", "HDEL", JOURNEY_VERSIONS_KEY, *fields)])

    def profiles(self) -> Iterator[Profile]:
        """Every stored profile (SCAN on every primary), read 500 at a time."""
        for keys in self._profile_keys(500):
            yield from self.load(keys).values()

    def journey_states(self) -> Iterator[tuple[str, Mapping[str, dict[str, Any]]]]:
        """Only the blobs (one HGET each, 1,000 a round trip): no event log, no sends."""
        for keys in self._profile_keys(1000):
            blobs = self._run("scan", [("cmd", "HGET", profile_keys(k)[0], "blob") for k in keys])
            yield from ((key, journeys_of(blob)) for key, blob in zip(keys, blobs) if blob)

    def _profile_keys(self, chunk: int) -> Iterator[list[str]]:
        """The keys of every stored profile (SCAN on every primary), ``chunk`` at a time."""
        head, tail = f"{PREFIX}:{{", "}:p"
        names = self._with_retry("scan", lambda: [
            k for node in self._nodes() for k in node.scan_iter(match=f"{head}*{tail}", count=1000)])
        keys = sorted(_text(k)[len(head):-len(tail)] for k in names)
        for start in range(0, len(keys), chunk):
            yield keys[start:start + chunk]

    # ---------------------------------------------------------------- lifecycle and privacy
    def _linked(self, contact: str) -> list[str]:
        """Anonymous ids whose link points to ``contact`` (a profile key) now."""
        (members,) = self._run("export", [("cmd", "SMEMBERS", links_key(contact))])
        members = sorted(members)
        targets = self._run("export", [("cmd", "GET", alias_key(a)) for a in members])
        return [a for a, t in zip(members, targets) if t == contact]

    def delete(self, key: str) -> None:
        (_version, blob, _log, _sends), members = self._run(
            "delete", [("script", "load", profile_keys(key), ("-1",)), ("cmd", "SMEMBERS", links_key(key))])
        timers = list(from_parts(key, blob or None, [], []).timers) if blob else []
        blob_key, *others = profile_keys(key)
        calls: list[Call] = [("cmd", "DEL", blob_key), ("cmd", "DEL", *others, links_key(key), outbox_key(key))]
        if timers:
            calls += _cancel_calls(key, timers, self._partitions())
        calls += [("script", "unlink", (alias_key(a), *profile_keys(anonymous_key(a)), pending_merge_key(a)), (key,))
                  for a in members]
        removed = self._run("delete", calls)[0]
        if removed and is_known_key(key):  # this call removed it: no other deleter counts it too
            self._run("delete", [("cmd", "DECR", KNOWN_KEY)])
        self._base.pop(key, None)

    def known_contacts(self, max_age_seconds: float = KNOWN_READ_SECONDS) -> int:
        """The running count of known profiles (kept by commits and deletions), read again once
        the last read is ``max_age_seconds`` old; counted once with SCAN where no count exists
        yet (data written before it was kept)."""
        now = time.monotonic()
        if self._known is None or now - self._known[0] >= max_age_seconds:
            (value,) = self._run("stats", [("cmd", "GET", KNOWN_KEY)])
            if value is None:
                self._run("stats", [("cmd", "SET", KNOWN_KEY, self._count_known(), "NX")])
                (value,) = self._run("stats", [("cmd", "GET", KNOWN_KEY)])
            self._known = (now, max(0, int(value)))
        return self._known[1]

    def _count_known(self) -> int:
        """Known profiles by SCAN (every primary): once per store, where no running count exists."""
        profiles = self._count_keys(f"{PREFIX}:{{*}}:p")
        anonymous = self._count_keys(f"{PREFIX}:{{{anonymous_key('*')}}}:p")
        return profiles - anonymous

    # ---------------------------------------------------------------- erasure (state/erasure.py)
    def erase(self, contact_id: str, now_ms: int | None = None) -> bool:
        """Tombstone the contact and the anonymous ids linked to it (kept without a TTL), then
        delete it: profile, log, sends, timers, outbox, links and those anonymous ids' aliases
        and profiles. The tombstones go first: an erasure cut short already drops the events,
        and running it again finishes it."""
        fields, anons, held = self._tombstones_of(contact_id, now_ms)
        self._run("erase", [("cmd", "HSET", TOMBSTONES_KEY, *fields)])
        self.delete(contact_key(contact_id))
        for a in anons:
            self._base.pop(anonymous_key(a), None)
        return held

    def _tombstones_of(self, contact_id: str, now_ms: int | None) -> tuple[list[Any], list[str], bool]:
        """The tombstones to write for erasing the contact, as HSET field-value pairs (the contact's
        and each linked anonymous id's), those anonymous ids, and whether the store held anything
        about the contact."""
        key = self._erasure_secret()
        pkey = contact_key(contact_id)
        (version, blob, log_flat, sends_flat), marks = self._run(
            "erase", [("script", "load", profile_keys(pkey), ("-1",)), ("cmd", "HVALS", WATERMARKS_KEY)])
        anons = self._linked(pkey)
        anon_parts = self._run("erase", [("script", "load", profile_keys(anonymous_key(a)), ("-1",)) for a in anons])
        profiles = [_stored_profile(pkey, blob),
                    *(_stored_profile(anonymous_key(a), r[1]) for a, r in zip(anons, anon_parts))]
        at = erasure_time(now_ms, [int(m) for m in marks] + [p.last_ts for p in profiles if p])
        fields: list[Any] = [tombstone_id(key, (CONTACT, contact_id)),
                             Tombstone(at, unsubscribed(profiles), int(version)).dumps()]
        for a, reply in zip(anons, anon_parts):
            fields += [tombstone_id(key, (ANONYMOUS, a)), Tombstone(at, (), int(reply[0])).dumps()]
        return fields, anons, bool(blob or log_flat or sends_flat or anons)

    def tombstones(self, identities: Collection[Identity]) -> dict[Identity, Tombstone]:
        """One HMGET on the tombstone hash for the batch's distinct identities."""
        wanted = list(identities)
        if not wanted:
            return {}
        key = self._erasure_secret()
        names = [tombstone_id(key, i) for i in wanted]
        (values,) = self._run("resolve", [("cmd", "HMGET", TOMBSTONES_KEY, *names)])
        return {i: Tombstone.loads(v) for i, v in zip(wanted, values) if v is not None}

    def readmit(self, contact_id: str, hits: Mapping[Identity, Tombstone], ts_ms: int) -> None:
        """Seed the re-admitted profiles (a version above the erased one's, so no cache anywhere
        takes the new profile for the old), then mark the tombstones."""
        key = self._erasure_secret()
        self._run("resolve", self._seed_calls(contact_id, hits))
        marks = [x for i, t in hits.items() for x in (tombstone_id(key, i), t.dumps(), t.readmitted(ts_ms).dumps())]
        if marks:
            self._run("resolve", [("script", "readmit", (TOMBSTONES_KEY,), marks)])

    def _seed_calls(self, contact_id: str, hits: Mapping[Identity, Tombstone]) -> list[Call]:
        """The re-admitted profiles, seeded (the contact's counted as known again)."""
        seeds: list[Call] = []
        for (kind, value), t in hits.items():
            pkey = contact_key(contact_id) if kind == CONTACT else anonymous_key(value)
            if kind == CONTACT or t.version:
                blob = to_blob(fresh_profile(contact_id, t.unsubscribed)) if kind == CONTACT else b""
                seeds.append(("script", "seed", (profile_keys(pkey)[0],), (blob, t.version + 1, self.ttl_ms)))
            self._base.pop(pkey, None)
        if any(kind == CONTACT for kind, _ in hits):
            seeds.append(("cmd", "INCR", KNOWN_KEY))
        return seeds

    def _erasure_secret(self) -> bytes:
        """The key of the tombstones' hashes: ``state.erasure_key``, else one generated at the
        first erasure and kept in the store. A key that differs from the one the existing
        tombstones were made with is refused: they would no longer match."""
        if self._erasure_key is not None:
            return self._erasure_key
        configured = self.options.erasure_key
        if configured:
            secret = configured.encode()
        else:
            token = secrets.token_hex(32)
            _, stored = self._run("resolve", [("cmd", "SET", ERASURE_KEY_KEY, token, "NX"),
                                                  ("cmd", "GET", ERASURE_KEY_KEY)])
            secret = str(stored).encode()
        check = hmac.new(secret, b"touchline erasure key check", hashlib.sha256).hexdigest()[:16]
        _, seen, count = self._run("resolve", [("cmd", "SET", ERASURE_CHECK_KEY, check, "NX"),
                                                   ("cmd", "GET", ERASURE_CHECK_KEY), ("cmd", "HLEN", TOMBSTONES_KEY)])
        if seen != check:
            if count:
                where = "state.erasure_key" if configured else f"the key kept in {ERASURE_KEY_KEY}"
                raise StoreError(
                    f"Redis at {self.masked_url}: {where} is not the key its {count} erasure tombstone(s) were made "
                    f"with, so erased contacts would come back; set state.erasure_key to the key they were made with "
                    f"(the value of {ERASURE_KEY_KEY} if none was configured)")
            self._run("resolve", [("cmd", "SET", ERASURE_CHECK_KEY, check)])
        self._erasure_key = secret
        return secret

    def export(self, contact_id: str) -> dict[str, Any] | None:
        key = contact_key(contact_id)
        _version, blob, log_flat, sends_flat = self._run(
            "export", [("script", "load", profile_keys(key), ("-1",))])[0]
        aliases = self._linked(key)
        if not blob and not log_flat and not sends_flat and not aliases:
            return None
        profile = from_parts(key, blob or None, _pairs(log_flat), _pairs(sends_flat))
        return {"contact_id": contact_id, "aliases": aliases,
                "profile": snapshot(profile) if (blob or log_flat or sends_flat) else None}

    def _nodes(self) -> list[Any]:
        """One plain client per primary (just the client itself outside a cluster)."""
        if hasattr(self.client, "get_primaries"):
            return [node.redis_connection for node in self.client.get_primaries()]
        return [self.client]

    def stats(self) -> dict[str, int]:
        """Counts by key pattern (SCAN on every primary): for reports, not the hot path."""
        timers = sum(self._run("stats", [("cmd", "ZCARD", timer_keys(p)[0]) for p in self._partitions(fresh=True)]))
        return {
            "profiles": self._count_keys(f"{PREFIX}:{{*}}:p"),
            "aliases": self._count_keys(f"{PREFIX}:{{{anonymous_key('*')}}}:alias"),
            "timers": int(timers),
        }

    def _count_keys(self, pattern: str) -> int:
        return self._with_retry("stats", lambda: sum(
            1 for node in self._nodes() for _ in node.scan_iter(match=pattern, count=1000)))

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


def _stored_profile(key: str, blob: str | None) -> Profile | None:
    """The profile a stored blob holds (without its log and sends), or None without a blob."""
    return from_parts(key, blob, [], []) if blob else None


def _version_key(field: str) -> VersionKey:
    """``welcome@3f9a1c0b7e21`` -> ("welcome", "3f9a1c0b7e21") (names never hold an ``@``)."""
    name, _, version = field.rpartition("@")
    return name, version


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _as_dict(fields: Any) -> dict[str, str]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[0::2], fields[1::2]))


def _pending_of(fields: Mapping[str, str]) -> list[Pending]:
    """The entries of one outbox hash that some output still needs."""
    out = []
    for field, value in fields.items():
        if field.startswith("r:"):
            decision_id = field[2:]
            to_decisions, to_channel = f"d:{decision_id}" in fields, f"c:{decision_id}" in fields
            if to_decisions or to_channel:
                out.append(Pending(orjson.loads(value), to_decisions, to_channel))
    return out


class CommitNames:
    """Names for commits, one per call and the same across its retries: a retried commit
    that already landed is recognised by it (the profile is one version ahead and holds this
    name), and another writer's commit from the same version never is, even when it left the
    same blob. A random prefix per store and a counter: unique across processes without
    hashing the commit (hashing its 1 to 2 KB cost about 4 µs per profile).

    >>> names = CommitNames()
    >>> first, second = names.next(), names.next()
    >>> first != second and first[:16] == second[:16] != CommitNames().next()[:16]
    True
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


def _is_conflict(reply: Exception) -> bool:
    return str(reply).startswith("CONFLICT")


def _schedule_calls(timers: Iterable[tuple[str, str, int]], partition: int) -> list[Call]:
    """One ZADD into the partition's timers; the last time given for a (key, kind) wins."""
    latest = {timer_member(key, kind): due for key, kind, due in timers}
    if not latest:
        return []
    return [("cmd", "ZADD", timer_keys(partition)[0], *(x for member, due in latest.items() for x in (due, member)))]


def _cancel_calls(key: str, kinds: Iterable[str], partitions: Iterable[int]) -> list[Call]:
    """Remove a profile's timers, pending or claimed, from these partitions' sets (a timer
    left behind elsewhere fires stale: the profile no longer holds it, so nothing happens)."""
    members = [timer_member(key, kind) for kind in kinds]
    return [("cmd", "ZREM", k, *members) for p in partitions for k in timer_keys(p)]


def _pairs(flat: Sequence[Any]) -> list[tuple[int, str]]:
    """[member, score, member, score, ...] -> [(score, member), ...]; also from [[member, score], ...],
    how the client answers a ZRANGE ... WITHSCORES of its own (the scripts answer flat).

    >>> _pairs(["a", "20", "b", "30"]), _pairs([["a", 20.0], ["b", 30.0]])
    ([(20, 'a'), (30, 'b')], [(20, 'a'), (30, 'b')])
    """
    if flat and isinstance(flat[0], (list, tuple)):
        return [(int(float(score)), member) for member, score in flat]
    return [(int(float(flat[i + 1])), flat[i]) for i in range(0, len(flat), 2)]


def _parse_due(flat: Sequence[str]) -> list[tuple[int, str, str]]:
    out = []
    for due, member in _pairs(flat):
        key, _, kind = member.rpartition(SEP)
        out.append((due, key, kind))
    return out


def _anonymous_links(events: Sequence[Event]) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The batch's anonymous ids in order of first appearance, and, for those that come with a
    contact, the profile key of the first such contact and the id of the event it came with."""
    anons: dict[str, None] = {}
    first_link: dict[str, tuple[str, str]] = {}
    for ev in events:
        anon = ev.anonymous_id
        if anon is None:
            continue
        anons[anon] = None
        if ev.contact_id is not None and anon not in first_link:
            first_link[anon] = (contact_key(ev.contact_id), ev.event_id)
    return list(anons), first_link


def _walk(events: Sequence[Event], links: Mapping[str, tuple[str | None, bool, bool]]) -> list[tuple[str, str | None]]:
    """Resolve each event given every anonymous id's link as Redis answered it, with the
    same rules (and results) as the in-process store; see :meth:`StateStore.resolve`."""
    current, pending_merge = _starting_links(links)
    out: list[tuple[str, str | None]] = []
    for ev in events:
        anon = ev.anonymous_id
        if ev.contact_id is None:
            out.append((current.get(anon or "", anonymous_key(anon or "")), None))
            continue
        merged = None
        key = contact_key(ev.contact_id)
        if anon is not None and anon in pending_merge and links[anon][0] == key:  # the first linking event merges
            pending_merge.discard(anon)
            current[anon] = key
            merged = anonymous_key(anon)
        out.append((key, merged))
    return out


def _starting_links(links: Mapping[str, tuple[str | None, bool, bool]]) -> tuple[dict[str, str], set[str]]:
    """Where each anonymous id's events resolve at the start of the batch, and the anonymous ids
    whose merge into their contact is still to be handed out.

    An id linked by this batch, or linked before but whose merge never landed (a crash in
    between, so its profile still exists), has a merge due: until it happens its events stay
    where they were applied, under the anonymous key.

    >>> current, due = _starting_links({"a": (None, False, False), "b": ("c1", False, False),
    ...                                 "c": ("c1", True, True), "d": ("c2", False, True)})
    >>> current, sorted(due)
    ({'a': 'anon:a', 'b': 'c1', 'c': 'anon:c', 'd': 'anon:d'}, ['c', 'd'])
    """
    current: dict[str, str] = {}
    pending_merge: set[str] = set()
    for linked, (target, linked_now, anon_exists) in links.items():
        merge_due = linked_now or (target is not None and anon_exists)
        if merge_due:
            pending_merge.add(linked)
        current[linked] = target if target is not None and not merge_due else anonymous_key(linked)
    return current, pending_merge


__all__ = ["RedisStore", "StoreHealth", "profile_keys", "alias_key", "links_key", "outbox_key", "timer_keys", "TIMERS_KEY",
           "id_claim_key"]
