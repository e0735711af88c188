"""Redis-only behaviour, against real redis-server processes (standalone and a 3-node cluster):
the engine on Redis decides exactly as on the in-process store, idempotency across
restarts, atomic reservation from two clients, NOSCRIPT recovery, TTL expiry, a Redis
restart mid-run, clear errors, and the privacy commands."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from touchline.cli import main
from touchline.decisions.events import Event
from touchline.decisions.profile import DAY_MS, Profile, Send
from touchline.decisions.batches import RawBatch
from touchline.runner import build_engine, run
from touchline.state import StoreError, StoreOptions, StoreUnavailable, open_store
from touchline.state.redis import RedisStore, alias_key, outbox_key, profile_keys

T0 = 1767614400000


def _run(small_settings, url: str, out: str):
    result = run(small_settings(out, **{"state.url": url}), progress=None, registry=CollectorRegistry())
    return result, (Path(result.summary["outputs"]["decisions"])).read_bytes()


@pytest.fixture(scope="module")
def memory_reference(tmp_path_factory):
    """Decisions and state of a small simulated run on the in-process store."""
    from touchline.settings import load_settings

    settings = load_settings(None, {"simulator.contacts": 200, "simulator.days": 14, "metrics.enabled": False,
                                    "output.dir": tmp_path_factory.mktemp("mem")})
    result = run(settings, progress=None, registry=CollectorRegistry())
    return result, Path(result.summary["outputs"]["decisions"]).read_bytes()


def _contacts_with_aliases(store, decisions: bytes, n: int = 5) -> list[str]:
    ids = sorted({orjson.loads(line)["contact_id"] for line in decisions.splitlines()})
    return [c for c in ids if (store.export(c) or {}).get("aliases")][:n]


@pytest.mark.parametrize("which", ["redis", "naive"])
def test_engine_on_redis_decides_exactly_as_in_memory(which, redis_url, small_settings, memory_reference):
    """Same events, same decisions, byte for byte, and the same exported profiles."""
    mem_result, mem_decisions = memory_reference
    url = redis_url if which == "redis" else redis_url.replace("redis://", "redis+naive://")
    result, decisions = _run(small_settings, url, which)
    assert decisions == mem_decisions and decisions
    assert result.summary["state"] == mem_result.summary["state"]
    redis_store = open_store(redis_url)
    contacts = _contacts_with_aliases(redis_store, decisions)
    assert contacts
    for contact in contacts:
        assert redis_store.export(contact) == mem_result.engine.store.export(contact)


def test_engine_on_cluster_decides_exactly_as_in_memory(redis_cluster_url, small_settings, memory_reference):
    """The same on a 3-node Redis Cluster (keys of a contact share one slot)."""
    _, mem_decisions = memory_reference
    _, decisions = _run(small_settings, redis_cluster_url, "cluster")
    assert decisions == mem_decisions


def test_replayed_events_change_nothing_across_restarts(redis_url, small_settings):
    """A second run over the same events (a new process would do the same) finds every event
    already applied: no new events, no decisions, the same stored state."""
    first, _ = _run(small_settings, redis_url, "first")
    state = first.summary["state"]
    second, decisions = _run(small_settings, redis_url, "second")
    assert second.summary["events_processed"] == 0
    assert second.summary["duplicates_ignored"] == first.summary["events_processed"]
    assert decisions == b""
    assert second.summary["state"] == state


def test_fresh_store_reads_what_another_wrote(redis_url):
    """State lives in Redis, not in the writer's memory (its cache is only a cache)."""
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    p = a.load(["c1"])["c1"]
    p.events_total, p.timezone = 4, "Europe/Paris"
    a.save({"c1": p})
    got = b.load(["c1"])["c1"]
    assert (got.events_total, got.timezone) == (4, "Europe/Paris")
    got.events_total = 5  # b writes: a's cached copy is now stale and must not be served
    b.save({"c1": got})
    assert a.load(["c1"])["c1"].events_total == 5


def test_commit_refuses_a_lost_update(redis_url):
    """Two writers of one profile: the one that loaded the older version is refused by name."""
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    pa, pb = a.load(["c1"])["c1"], b.load(["c1"])["c1"]
    pa.events_total = 1
    a.save({"c1": pa})
    pb.events_total = 2
    with pytest.raises(StoreError, match="CONFLICT"):
        b.save({"c1": pb})


def test_reservations_hold_the_caps_across_two_clients(redis_url):
    """Two clients race to send 40 different messages each to one contact with a cap of 10
    emails a day, each reserving on the profile it loaded and committing it (a commit that
    lost the race to the other client is a CONFLICT: reloaded and decided again): exactly 10
    succeed in total, and Redis holds exactly those."""
    caps = {"email": {"24h": 10}}
    results: list[bool] = []
    conflicts: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def send_once(store: RedisStore, send: Send) -> bool:
        while True:
            profile = store.load(["c1"])["c1"]
            if not store.reserve(profile, send, caps, {}):
                return False
            lost = store.commit({"c1": profile}, (), [])
            if not lost:
                return True
            with lock:
                conflicts.extend(lost)

    def worker(name: str) -> None:
        store = RedisStore(redis_url)
        start.wait()
        for i in range(40):
            ok = send_once(store, Send(T0 + i, "email", f"{name}{i}"))
            with lock:
                results.append(ok)
        store.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10 and len(results) == 80
    assert redis.Redis.from_url(redis_url).zcard(profile_keys("c1")[2]) == 10


def test_a_reservation_costs_no_round_trip_and_is_stored_by_the_commit(redis_url):
    """reserve checks the caps on the loaded profile only; until the commit nothing is stored
    (a decision that is never committed leaves no send behind)."""
    s = RedisStore(redis_url)
    raw = redis.Redis.from_url(redis_url)
    p = s.load(["c1"])["c1"]
    assert s.reserve(p, Send(T0, "email", "welcome"), {"email": {"24h": 1}}, {})
    assert raw.zcard(profile_keys("c1")[2]) == 0
    assert s.commit({"c1": p}, (), []) == set()
    assert raw.zcard(profile_keys("c1")[2]) == 1
    assert not s.reserve(s.load(["c1"])["c1"], Send(T0 + 1, "email", "x"), {"email": {"24h": 1}}, {})


def test_reservation_replay_is_not_counted_twice(redis_url):
    """Reserving the same send again (a replayed decision) succeeds without using the cap."""
    s = RedisStore(redis_url)
    caps = {"email": {"24h": 2}}
    p = Profile("c1", known=True)
    assert s.reserve(p, Send(T0, "email", "welcome"), caps, {})
    assert s.reserve(p, Send(T0, "email", "welcome"), caps, {})
    assert s.reserve(p, Send(T0 + 1, "email", "cart"), caps, {})
    assert not s.reserve(p, Send(T0 + 2, "email", "x"), caps, {})
    assert len(p.sends) == 2


def test_scripts_reload_after_script_flush(redis_url):
    """SCRIPT FLUSH (or a failover to a node without the scripts): NOSCRIPT is answered by
    loading the scripts and running what did not run; nothing is lost or applied twice."""
    s = RedisStore(redis_url)
    raw = redis.Redis.from_url(redis_url)
    s.resolve([Event("e0", "identify", T0, contact_id="c1", anonymous_id="a1")])
    p = s.load(["c1"])["c1"]
    p.events_total = 1
    raw.script_flush()
    s.commit({"c1": p}, (), [("c1", "cart", T0 + 10)])
    raw.script_flush()
    assert s.pop_due(T0 + 10) == [(T0 + 10, "c1", "cart")]
    raw.script_flush()
    assert s.reserve(p, Send(T0, "email", "welcome"), {"email": {"24h": 1}}, {})
    raw.script_flush()
    assert RedisStore(redis_url).load(["c1"])["c1"].events_total == 1
    assert s.resolve([Event("e1", "page_view", T0, anonymous_id="a1")]) == [("c1", None)]


def test_ttl_forgets_abandoned_contacts(redis_url):
    """Every key of a profile, its sends and its alias carry a TTL refreshed on write."""
    s = RedisStore(redis_url, StoreOptions(ttl_days=1.5 / 86_400))  # 1.5 s
    s.resolve([Event("e0", "identify", T0, contact_id="c1", anonymous_id="a1")])
    p = s.load(["c1"])["c1"]
    from touchline.decisions.profile import apply_event

    apply_event(p, "e0", "identify", T0, {}, {})
    s.reserve(p, Send(T0, "email", "welcome"), {}, {})
    s.save({"c1": p})
    raw = redis.Redis.from_url(redis_url)
    for key in (*profile_keys("c1"), alias_key("a1")):
        assert 0 < raw.pttl(key) <= 1500, key
    time.sleep(1.7)
    fresh = RedisStore(redis_url)
    assert fresh.export("c1") is None
    assert fresh.stats()["profiles"] == 0 and fresh.stats()["aliases"] == 0


def _batches(settings, size: int = 100) -> list[list[bytes]]:
    from touchline.bench import generate

    lines = generate(settings, 4_000)
    return [lines[i:i + size] for i in range(0, len(lines), size)]


def _decide_all(engine, batches) -> list[dict]:
    out: list[dict] = []
    offset = 0
    for lines in batches:
        out += engine.process(RawBatch(lines, "sim", offset)).decisions
        offset += len(lines)
    return out


def test_redis_restart_mid_run_loses_nothing(redis_server, redis_url, small_settings, caplog):
    """Redis goes away for a second in the middle of a run: the engine retries with backoff,
    logs it, counts it in metrics, and ends with exactly the decisions of an undisturbed run."""
    settings = small_settings("x")
    batches = _batches(settings)
    reference = _decide_all(build_engine(settings, CollectorRegistry()), batches)
    registry = CollectorRegistry()
    engine = build_engine(small_settings("y", **{"state.url": redis_url}), registry)
    half = len(batches) // 2
    got = _decide_all(engine, batches[:half])
    restarter = threading.Thread(target=redis_server.restart, kwargs={"down_seconds": 1.0})
    with caplog.at_level(logging.WARNING, logger="touchline.state.redis"):
        restarter.start()
        time.sleep(0.3)  # the server is down now
        got += _decide_all(engine, batches[half:])
        restarter.join()
    assert got == reference and got
    assert registry.get_sample_value("touchline_state_store_reconnects_total") >= 1
    errors = [s for m in registry.collect() if m.name == "touchline_state_store_errors"
              for s in m.samples if s.name.endswith("_total")]
    assert sum(s.value for s in errors) >= 1, errors  # on whichever round trip the outage met first
    assert registry.get_sample_value("touchline_state_store_up") == 1
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_redis_down_for_good_stops_the_run_with_a_clear_error(tmp_path, small_settings):
    """Past the retry budget the run stops (uncommitted batches replay on restart) with an
    error that names the server and the operation, not a dataflow backtrace."""
    from redis_servers import RedisServer

    server = RedisServer(tmp_path / "doomed").start()
    settings = small_settings("z", **{"state.url": server.url, "state.retry_seconds": 0.5})
    stop = threading.Event()
    killer = threading.Timer(0.5, server.stop)
    killer.start()
    try:
        with pytest.raises(StoreUnavailable, match=r"unreachable for 0.5 s during|cannot reach"):
            run(settings.model_copy(update={"simulator": settings.simulator.model_copy(update={"days": 60})}),
                progress=None, registry=CollectorRegistry(), stop=stop)
    finally:
        killer.cancel()
        server.stop()


def test_unreachable_or_refusing_redis_is_a_clear_cli_error(redis_url, tmp_path, capsys):
    from redis_servers import free_port

    rc = main(["run", "--redis", f"redis://127.0.0.1:{free_port()}/0", "--no-metrics", "--quiet",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot reach Redis at redis://127.0.0.1:" in err and "Traceback" not in err
    with pytest.raises(StoreError, match="redis://u:\\*\\*\\*@127.0.0.1"):
        open_store(redis_url.replace("redis://", "redis://u:wrongpass@"))
    with pytest.raises(StoreError, match="DB index is out of range"):
        open_store(redis_url.rsplit("/", 1)[0] + "/99")


def test_database_index_is_honoured(redis_url):
    url1 = redis_url.rsplit("/", 1)[0] + "/1"
    s = RedisStore(url1)
    s.save({"c1": Profile("c1", known=True, events_total=1)})
    raw = redis.Redis.from_url(redis_url)
    assert raw.exists(profile_keys("c1")[0]) == 0
    assert redis.Redis.from_url(url1).exists(profile_keys("c1")[0]) == 1
    redis.Redis.from_url(url1).flushdb()


def test_contact_export_and_erase_commands(redis_url, small_settings, capsys):
    """export prints everything stored; erase removes profile, sends, timers and aliases, and an
    old anonymous id no longer leads back to the erased contact."""
    _, decisions = _run(small_settings, redis_url, "cli")
    store = open_store(redis_url)
    contact = _contacts_with_aliases(store, decisions, 1)[0]
    alias = store.export(contact)["aliases"][0]
    capsys.readouterr()
    assert main(["contact", "export", contact, "--redis", redis_url]) == 0
    exported = orjson.loads(capsys.readouterr().out)
    assert exported["contact_id"] == contact and alias in exported["aliases"]
    assert exported["profile"]["events_total"] > 0 and exported["profile"]["sends"]
    assert main(["contact", "erase", contact, "--redis", redis_url]) == 0
    assert "erased contact" in capsys.readouterr().err
    assert main(["contact", "export", contact, "--redis", redis_url]) == 1
    assert "nothing stored" in capsys.readouterr().err
    fresh = open_store(redis_url)
    assert fresh.resolve([Event("z1", "page_view", T0 + 90 * DAY_MS, anonymous_id=alias)]) == [
        (f"anon:{alias}", None)]
    assert all(contact not in key for key, _kind in
               ((m.rpartition("\x1f")[0], 0) for m in redis.Redis.from_url(redis_url, decode_responses=True)
                .zrange("tl:{timers}:due", 0, -1)))
    assert main(["contact", "erase", contact, "--redis", redis_url]) == 0  # idempotent
    assert main(["contact", "export", contact]) == 2  # the in-process store keeps nothing
    assert "memory://" in capsys.readouterr().err


def test_tls_and_acl_user(tmp_path):
    """rediss:// with a CA file, and an ACL user with a password, from the URL or the settings;
    a wrong certificate chain or password is a clear error, with the password masked."""
    import shutil
    import subprocess

    from redis_servers import free_port

    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificates"

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=tmp_path, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
       "-subj", "/CN=touchline-test-ca")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "server.crt", "-days", "2", "-extfile", "ext")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--user", "default", "off", "--user", "app", "on", ">s3cret", "~*", "&*",
         "+@all"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ca = tmp_path / "ca.crt"
        url = f"rediss://app:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        deadline = time.monotonic() + 10
        while True:
            try:
                store = open_store(url)
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        store.save({"c1": Profile("c1", known=True, events_total=2)})
        options = StoreOptions(username="app", password="s3cret")
        assert open_store(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", options).load(["c1"])["c1"].events_total == 2
        with pytest.raises(StoreUnavailable, match="certificate verify failed"):
            open_store(f"rediss://app:s3cret@127.0.0.1:{port}/0")
        with pytest.raises(StoreError) as err:
            open_store(f"rediss://app:wrong@127.0.0.1:{port}/0?ssl_ca_certs={ca}")
        assert "wrong" not in str(err.value) and "app:***@" in str(err.value)
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------ event ids store-wide (issue 18, item 5)

def test_event_id_claims_are_atomic_across_two_processes(redis_url):
    """Two engines (own connections, as two processes have) claim the same 500 ids at once,
    each for its own contact, in batches of 50: every id is won by exactly one of them."""
    won: dict[str, list[str]] = {"c1": [], "c2": []}
    start = threading.Barrier(2)

    def worker(contact: str) -> None:
        store = RedisStore(redis_url)
        start.wait()
        for b in range(10):
            events = [Event(f"e{i}", "page_view", T0 + i, contact_id=contact) for i in range(b * 50, b * 50 + 50)]
            won[contact] += [ev.event_id for ev, ok in zip(events, store.claim_ids(events)) if ok]
        store.close()

    threads = [threading.Thread(target=worker, args=(c,)) for c in won]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won["c1"] + won["c2"], key=lambda e: int(e[1:])) == [f"e{i}" for i in range(500)]
    assert not set(won["c1"]) & set(won["c2"])


def test_event_id_claims_expire_after_the_window_and_survive_a_restart(redis_server, redis_url):
    """Each claim is one small key whose TTL is the idempotency window; it survives a Redis
    restart (append-only file), so the other identity is still refused afterwards."""
    from touchline.state.base import ID_CLAIM_MS
    from touchline.state.redis import id_claim_key

    s = RedisStore(redis_url)
    assert s.claim_ids([Event("e1", "t", T0, contact_id="c1"), Event("x" * 10_240, "t", T0, contact_id="c1")]) == [
        True, True]
    raw = redis.Redis.from_url(redis_url)
    for eid in ("e1", "x" * 10_240):
        key = id_claim_key(eid)
        assert len(key) < 40 and ID_CLAIM_MS - 60_000 < raw.pttl(key) <= ID_CLAIM_MS
        assert raw.memory_usage(key) < 120  # bytes per claimed id, whatever the id's length
    s.close()
    redis_server.restart()
    after = RedisStore(redis_url)
    assert after.claim_ids([Event("e1", "t", T0 + 1, contact_id="c2"), Event("e1", "t", T0 + 2, contact_id="c1")]) == [
        False, True]


def test_engine_refuses_a_reused_event_id_after_a_restart(redis_server, redis_url, small_settings):
    """An engine applies c1's signup; Redis restarts and a new engine gets the same id under c2:
    a duplicate_id dead letter, and c2's profile never sees it."""
    line = orjson.dumps({"event_id": "s1", "type": "signup", "ts": T0, "contact_id": "c1"})
    other = orjson.dumps({"event_id": "s1", "type": "signup", "ts": T0, "contact_id": "c2"})
    first = build_engine(small_settings("a", **{"state.url": redis_url}), CollectorRegistry())
    assert [d["contact_id"] for d in first.process(RawBatch([line], "in.jsonl", 1, final=True)).decisions] == ["c1"]
    first.store.close()
    redis_server.restart()
    second = build_engine(small_settings("b", **{"state.url": redis_url}), CollectorRegistry())
    res = second.process(RawBatch([other, line], "in.jsonl", 7, final=True))
    assert [(d["reason"], d["source"]) for d in res.dead_letters] == [("duplicate_id", "in.jsonl:7")]
    assert res.decisions == [] and second.totals.duplicates == 1
    assert second.store.export("c2") is None


def test_a_retried_commit_is_a_no_op_and_another_writers_same_blob_is_a_conflict(redis_url):
    """A commit whose reply was lost and that is sent again (version one ahead, the same change)
    changes nothing; another writer's commit from the same version is a CONFLICT even when it
    leaves the same blob (here: another send at the same moment, which the blob does not show)."""
    a, b = RedisStore(redis_url), RedisStore(redis_url)
    pa, pb = a.load(["c1"])["c1"], b.load(["c1"])["c1"]
    assert a.reserve(pa, Send(T0, "email", "welcome"), {}, {})
    assert b.reserve(pb, Send(T0, "sms", "welcome"), {}, {})
    keys = (*profile_keys("c1"), outbox_key("c1"))
    args_a, _ = a._commit_args("c1", pa)
    args_b, _ = b._commit_args("c1", pb)
    assert args_a[1] == args_b[1]  # the same blob
    first = a._run("save", [("script", "commit", keys, args_a)], keep=lambda exc: True)
    again = a._run("save", [("script", "commit", keys, args_a)], keep=lambda exc: True)
    assert first == again == [1]
    (other,) = b._run("save", [("script", "commit", keys, args_b)], keep=lambda exc: True)
    assert isinstance(other, Exception) and "CONFLICT" in str(other)
    assert [s.channel for s in RedisStore(redis_url).load(["c1"])["c1"].sends] == ["email"]


class _Killed(BaseException):
    """The process dies here (kill -9): nothing after this point runs."""


def _killed_after_begin(engine) -> None:
    """The next commit of ``engine`` never happens: the batch began (ids claimed, identities
    linked, timers claimed) and the process died before writing anything of it."""
    def die(*args: object, **kwargs: object) -> set[str]:
        raise _Killed()

    engine.store.commit = die


def _restarted(settings):
    """A new engine process on the same state, as ``touchline run`` sets it up on Kafka (events
    held for ordering are stored: the input commits past them)."""
    engine = build_engine(settings, CollectorRegistry())
    engine.keep_held = True
    return engine


@pytest.mark.parametrize("size", [100, 400])
def test_a_batch_killed_between_begin_and_commit_is_replayed_exactly(redis_url, small_settings, size):
    """Every third batch the process dies after the batch's identities were linked and before its
    commit; a fresh process replays that batch (Kafka hands it out again). The decisions and the
    stored profiles, merged anonymous ids included, are those of an undisturbed run: a link made
    by a batch that never committed still merges the anonymous history when the batch is replayed,
    even when that history was never stored. (Frozen models: a restart resumes a model from its
    last checkpoint, not from the last batch.)"""
    frozen = {"models.learn": False, "models.store": "off"}
    settings = small_settings("x", **frozen)
    batches = _batches(settings, size)
    reference_engine = build_engine(settings, CollectorRegistry())
    reference = _decide_all(reference_engine, batches)
    on_redis = small_settings("y", **{"state.url": redis_url, **frozen})
    engine = _restarted(on_redis)
    got: list[dict] = []
    for i, lines in enumerate(batches):
        if i % 3 == 1:
            _killed_after_begin(engine)
            with pytest.raises(_Killed):
                engine.process(RawBatch(lines, "sim", i * size))
            engine = _restarted(on_redis)
        got += engine.process(RawBatch(lines, "sim", i * size)).decisions  # every batch but the last is full
    assert [d["decision_id"] for d in got] == [d["decision_id"] for d in reference] and got
    assert got == reference
    store = open_store(redis_url)
    contacts = sorted({d["contact_id"] for d in reference})
    assert any(reference_engine.store.export(c)["profile"]["aliases"] for c in contacts)
    for contact in contacts:
        assert store.export(contact)["profile"] == reference_engine.store.export(contact)["profile"], contact


def test_known_contacts_are_counted_once_where_data_predates_the_count(redis_url):
    """State written before the running count existed: the first read counts the known profiles
    with SCAN (anonymous ones left out) and keeps that count for every process."""
    from touchline.state.redis import KNOWN_KEY

    store = RedisStore(redis_url)
    store.commit(store.load(["c1", "c2", "anon:a1"]), [], [])
    redis.Redis.from_url(redis_url).delete(KNOWN_KEY)
    assert RedisStore(redis_url).known_contacts() == 2
    assert redis.Redis.from_url(redis_url).get(KNOWN_KEY) == b"2"


def test_a_profile_another_writer_changed_is_redone_on_its_state_and_counted(redis_url):
    """Between this engine's load and its commit another engine writes the same contact: the
    commit refuses the stale profile, the engine reloads it and applies its event again on the
    other's state (both events kept), and touchline_state_conflicts_total counts it."""
    from test_engine_step import line, run as run_batch
    from test_journeys_runtime import journey_engine

    class Interleaved(RedisStore):
        other = None

        def commit(self, *args, **kwargs):
            other, self.other = self.other, None
            if other is not None:  # the other writer commits first, once
                run_batch(other, [line("b1", "page_view", T0, "c1")])
            return super().commit(*args, **kwargs)

    registry = CollectorRegistry()
    store = Interleaved(redis_url)
    mine = journey_engine(store=store, registry=registry)
    theirs = journey_engine(store=RedisStore(redis_url))
    store.other = theirs
    run_batch(mine, [line("a1", "page_view", T0 + 1, "c1")])
    profile = RedisStore(redis_url).load(["c1"])["c1"]
    assert profile.events_total == 2
    assert registry.get_sample_value("touchline_state_conflicts_total") == 1
    assert mine.totals.conflicts == 1
    theirs.store.close()
    store.close()


def test_erasure_cancels_timers_in_the_apis_partitions_too(redis_url):
    """The API's engine keeps its timers in partitions of its own (api.timer_partition), which
    keep no event clock: an erasure from another process cancels the contact's timers there
    too, not only in the stream's partitions (the contact id stays in no timer set)."""
    from touchline.state.redis import timer_keys

    api = RedisStore(redis_url)
    profile = api.load(["c1"])["c1"]
    profile.known, profile.events_total = True, 1
    profile.timers["journey:welcome"] = 10**13  # the profile holds the timers it set
    api.commit({"c1": profile}, [], [("c1", "journey:welcome", 10**13)], partition=1003)
    api.commit({}, [], [("c2", "journey:welcome", 10**13)], partition=1003)
    raw = redis.Redis.from_url(redis_url)
    assert raw.zcard(timer_keys(1003)[0]) == 2
    other = RedisStore(redis_url)  # the erase command's process
    assert other.erase("c1")
    assert raw.zrange(timer_keys(1003)[0], 0, -1) == [b"c2\x1fjourney:welcome"]
    api.close()
    other.close()
    raw.close()
