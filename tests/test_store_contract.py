"""The state-store contract: every implementation passes these (River's check_estimator idea).

Identity stitching, profiles, send reservation, timers, deletion, export/erase. Add a store
to STORES (a factory returning a fresh, empty store) and it runs the whole suite.
"""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from touchline.decisions.batch_run import DecisionCore, LabelSettings
from touchline.decisions.events import Event
from touchline.decisions.estimators import ModelConfig
from touchline.decisions.policy import PolicyConfig
from touchline.decisions.profile import DAY_MS, HOUR_MS, Profile, Send, apply_event
from touchline.decisions.record import decision_id
from touchline.batch_service import Engine
from touchline.decisions.batches import RawBatch
from touchline.metrics.engine_metrics import EngineMetrics
from touchline.state import MemoryStore, open_store
from touchline.state.base import ID_CLAIM_MS, StateStore, anonymous_key, contact_key, contact_of, is_known_key

#: implementation -> fixture giving its URL (each test gets an empty store)
STORES = {"memory": None, "redis": "redis_url", "redis-cluster": "redis_cluster_url"}


@pytest.fixture(params=list(STORES))
def new_store(request):
    """A factory of fresh stores of one implementation, all on the same (empty) state."""
    made = []
    fixture = STORES[request.param]
    url = request.getfixturevalue(fixture) if fixture else None

    def make():
        made.append(open_store(url) if url else MemoryStore())
        return made[-1]

    yield make
    for store in made:
        store.close()


T0 = 1767614400000
CAPS = {"email": {"24h": 1, "7d": 3}, "push": {"24h": 2}}
GLOBAL = {"24h": 2}


def ev(i: int, contact: str | None = None, anon: str | None = None) -> Event:
    return Event(f"e{i}", "page_view", T0 + i, contact_id=contact, anonymous_id=anon)


# ------------------------------------------------------------------ identity

def test_keys():
    """Anonymous keys are prefixed; only unprefixed keys are known contacts."""
    assert anonymous_key("a1") == "anon:a1"
    assert is_known_key("c1") and not is_known_key("anon:a1")


def test_resolve_stitches_anonymous_to_contact(new_store):
    """Anonymous events resolve to the anonymous key until linked; the link returns the merge key
    once; afterwards the anonymous id resolves to the contact."""
    s = new_store()
    got = s.resolve([ev(0, anon="a1"), ev(1, "c1", "a1"), ev(2, anon="a1"), ev(3, "c1", "a1"), ev(4, "c1")])
    assert got == [("anon:a1", None), ("c1", "anon:a1"), ("c1", None), ("c1", None), ("c1", None)]
    assert s.resolve([ev(5, anon="a1")]) == [("c1", None)]  # across batches too
    assert s.resolve([ev(6, anon="a2")]) == [("anon:a2", None)]


def test_first_link_wins(new_store):
    """An anonymous id already linked to one contact is never re-pointed to another."""
    s = new_store()
    assert s.resolve([ev(0, "c1", "a1")]) == [("c1", "anon:a1")]
    assert s.resolve([ev(1, "c2", "a1")]) == [("c2", None)]
    assert s.resolve([ev(2, anon="a1")]) == [("c1", None)]


def test_no_chains(new_store):
    """Only anonymous ids are aliases: an anonymous id spelled like a contact doesn't chain resolution."""
    s = new_store()
    s.resolve([ev(0, "c2", "c1")])  # anonymous id 'c1' -> contact c2
    s.resolve([ev(1, "c3", "c2")])  # anonymous id 'c2' -> contact c3
    assert s.resolve([ev(2, anon="c1")]) == [("c2", None)]  # one step, not c3
    assert s.resolve([ev(3, "c1")]) == [("c1", None)]  # contact c1 is its own key


def test_several_anonymous_ids_per_contact(new_store):
    """A contact can collect several anonymous ids, each merged once."""
    s = new_store()
    got = s.resolve([ev(0, "c1", "a1"), ev(1, "c1", "a2"), ev(2, anon="a1"), ev(3, anon="a2")])
    assert got == [("c1", "anon:a1"), ("c1", "anon:a2"), ("c1", None), ("c1", None)]


# ------------------------------------------------------------------ profiles

def test_load_unknown_keys_gives_new_unsaved_profiles(new_store):
    """load returns fresh profiles (known by key) without storing them."""
    s = new_store()
    got = s.load(["c1", "anon:a1"])
    assert got["c1"].known and got["c1"].key == "c1" and got["c1"].events_total == 0
    assert not got["anon:a1"].known
    assert s.stats()["profiles"] == 0
    assert s.export("c1") is None


def test_save_then_load_and_deleted(new_store):
    """Saved profiles load back; keys passed as deleted are dropped with their timers."""
    s = new_store()
    p = s.load(["c1"])["c1"]
    p.events_total = 3
    a = Profile("anon:a1")
    a.timers["cart"] = T0
    s.save({"c1": p, "anon:a1": a})
    s.schedule([("anon:a1", "cart", T0)])
    assert s.load(["c1"])["c1"].events_total == 3
    assert s.stats() == {"profiles": 2, "aliases": 0, "timers": 1}
    s.save({}, deleted=["anon:a1", "never-there"])
    assert s.stats()["profiles"] == 1 and s.stats()["timers"] == 0
    assert s.pop_due(T0 + DAY_MS) == []
    assert s.load(["anon:a1"])["anon:a1"].timers == {}


# ------------------------------------------------------------------ reserve

def test_reserve_records_send_until_cap(new_store):
    """reserve records sends on the profile while caps allow and refuses (recording nothing) after."""
    s = new_store()
    p = Profile("c1", known=True)
    assert s.reserve(p, Send(T0, "email", "welcome"), CAPS, GLOBAL)
    assert p.sends == [Send(T0, "email", "welcome")]
    assert not s.reserve(p, Send(T0 + HOUR_MS, "email", "cart_reminder"), CAPS, GLOBAL)  # email 1/24h
    assert s.reserve(p, Send(T0 + HOUR_MS, "push", "cart_reminder"), CAPS, GLOBAL)
    assert not s.reserve(p, Send(T0 + 2 * HOUR_MS, "push", "x"), CAPS, GLOBAL)  # global 2/24h
    assert len(p.sends) == 2
    assert s.reserve(p, Send(T0 + DAY_MS + 1, "email", "x"), CAPS, GLOBAL)  # a day later
    assert [x.ts_ms for x in p.sends] == [T0, T0 + HOUR_MS, T0 + DAY_MS + 1]


def test_reserve_sales_task_outside_global_cap(new_store):
    """Sales tasks only meet their own caps."""
    s = new_store()
    p = Profile("c1", known=True, sends=[Send(T0, "email", "a"), Send(T0, "push", "b")])
    assert s.reserve(p, Send(T0 + 1, "sales_task", "sales_handoff"), {"sales_task": {"30d": 1}}, GLOBAL)
    assert not s.reserve(p, Send(T0 + 2, "sales_task", "sales_handoff"), {"sales_task": {"30d": 1}}, GLOBAL)


# ------------------------------------------------------------------ timers

def test_pop_due_soonest_first_up_to_now(new_store):
    """pop_due returns timers due at or before now, soonest first, each once."""
    s = new_store()
    s.schedule([("c1", "cart", T0 + 30), ("c2", "cart", T0 + 10), ("c1", "inactivity", T0 + 20),
                ("c3", "cart", T0 + 31)])
    assert s.pop_due(T0 + 9) == []
    assert s.pop_due(T0 + 30) == [(T0 + 10, "c2", "cart"), (T0 + 20, "c1", "inactivity"), (T0 + 30, "c1", "cart")]
    assert s.pop_due(T0 + 30) == []
    assert s.pop_due(T0 + 100) == [(T0 + 31, "c3", "cart")]
    assert s.stats()["timers"] == 0


def test_schedule_replaces_and_stale_entries_are_skipped(new_store):
    """One timer per key and kind: rescheduling replaces (earlier or later), the old entry never fires."""
    s = new_store()
    s.schedule([("c1", "cart", T0 + 10)])
    s.schedule([("c1", "cart", T0 + 50)])
    assert s.pop_due(T0 + 20) == []
    assert s.pop_due(T0 + 60) == [(T0 + 50, "c1", "cart")]
    s.schedule([("c1", "cart", T0 + 500), ("c1", "cart", T0 + 100)])  # earlier one replaces in the same call
    assert s.pop_due(T0 + 1000) == [(T0 + 100, "c1", "cart")]
    s.schedule([("c1", "x", T0), ("c1", "x", T0)])  # duplicate entry fires once
    assert s.pop_due(T0) == [(T0, "c1", "x")]


def test_pop_due_limit(new_store):
    """pop_due claims at most `limit` timers; the rest stay for the next call, still in order."""
    s = new_store()
    s.schedule([(f"c{i}", "cart", T0 + i) for i in range(5)])
    assert [k for _, k, _ in s.pop_due(T0 + 10, limit=2)] == ["c0", "c1"]
    assert [k for _, k, _ in s.pop_due(T0 + 10, limit=2)] == ["c2", "c3"]
    assert [k for _, k, _ in s.pop_due(T0 + 10)] == ["c4"]


# ------------------------------------------------------------------ delete / privacy

def _linked_store(new_store) -> StateStore:
    """A store where contact c1 has anonymous id a1, as the engine leaves it after a merge."""
    s = new_store()
    s.resolve([ev(0, "c1", "a1")])
    p = s.load(["c1"])["c1"]
    p.aliases.append("a1")
    p.events_total = 1
    p.timers["inactivity"] = T0 + 7 * DAY_MS
    s.save({"c1": p})
    s.schedule([("c1", "inactivity", T0 + 7 * DAY_MS)])
    return s


def test_delete_removes_profile_aliases_and_timers(new_store):
    """delete forgets the profile, its timers and its anonymous ids (which then resolve anonymously)."""
    s = _linked_store(new_store)
    s.delete("c1")
    assert s.stats() == {"profiles": 0, "aliases": 0, "timers": 0}
    assert s.pop_due(T0 + 30 * DAY_MS) == []
    assert s.resolve([ev(1, anon="a1")]) == [("anon:a1", None)]


def test_delete_without_profile_still_drops_aliases(new_store):
    """Aliases of a contact with no stored profile are found and removed."""
    s = new_store()
    s.resolve([ev(0, "c9", "a9")])
    s.delete("c9")
    assert s.resolve([ev(1, anon="a9")]) == [("anon:a9", None)]


def test_export_and_erase(new_store):
    """export returns profile and aliases JSON-ready; erase deletes and reports whether anything existed."""
    s = _linked_store(new_store)
    out = s.export("c1")
    assert out["contact_id"] == "c1" and out["aliases"] == ["a1"]
    assert out["profile"]["events_total"] == 1 and out["profile"]["aliases"] == ["a1"]
    assert s.erase("c1") is True
    assert s.export("c1") is None
    assert s.erase("c1") is False
    assert s.erase("nobody") is False


def test_export_alias_only(new_store):
    """A contact known only by a link (no profile saved yet) exports its aliases."""
    s = new_store()
    s.resolve([ev(0, "c1", "a1")])
    assert s.export("c1") == {"contact_id": "c1", "aliases": ["a1"], "profile": None}


def test_erase_removes_links_not_listed_on_the_profile(new_store):
    """Erasure removes every anonymous id linked to the contact, whatever the profile lists."""
    s = new_store()
    s.resolve([ev(0, "c1", "a1"), ev(1, "c1", "a2")])
    p = s.load(["c1"])["c1"]
    p.aliases.append("a1")  # a2 not listed on the profile
    s.save({"c1": p})
    assert s.erase("c1")
    assert s.export("c1") is None
    assert s.resolve([ev(2, anon="a2")]) == [("anon:a2", None)]


# ------------------------------------------------------------------ open_store

def test_open_store_memory():
    """memory:// opens a fresh in-process store that keeps its URL."""
    a, b = open_store("memory://"), open_store("memory://")
    assert isinstance(a, MemoryStore) and a.url == "memory://"
    assert a is not b


@pytest.mark.parametrize(
    "url,needle",
    [("mongo://x", "no store for scheme 'mongo'"), ("localhost:6379", "has no scheme"), ("", "has no scheme")],
)
def test_open_store_errors(url, needle):
    """Unknown or missing schemes raise ValueError naming the URL and the problem."""
    with pytest.raises(ValueError) as err:
        open_store(url)
    assert needle in str(err.value)
    assert repr(url) in str(err.value)
    if "scheme '" in needle:
        assert "memory" in str(err.value)  # lists the known schemes


# ------------------------------------------------------------------ erasure that sticks

#: the erasure tests also run on the naive Redis path (it shares the tombstones with the batched one)
ERASING = {**STORES, "redis-naive": "redis_url"}


def _store_url(request, table: dict[str, str | None]) -> str | None:
    """The URL of the store a parametrised fixture stands for (None: the memory store)."""
    fixture = table[request.param]
    url = request.getfixturevalue(fixture) if fixture else None
    if url is not None and request.param == "redis-naive":
        url = url.replace("redis://", "redis+naive://", 1)
    return url


@pytest.fixture(params=list(ERASING))
def erasing_store(request):
    """Like ``new_store``, over every store that implements erasure (the naive one included)."""
    made: list[StateStore] = []
    url = _store_url(request, ERASING)

    def make():
        made.append(open_store(url) if url else MemoryStore())
        return made[-1]

    make.shared = url is not None  # type: ignore[attr-defined]
    yield make
    for store in made:
        store.close()


def _erasable(make) -> StateStore:
    """c1 with anonymous id a1 linked, email refused, events up to T0 + 5; c2 untouched."""
    s = _linked_store(make)
    p = s.load(["c1"])["c1"]
    p.consent.update({"email": False, "push": True})
    p.last_ts = T0 + 5
    s.save({"c1": p})
    s.resolve([ev(9, "c2", "a2")])
    return s


def test_erase_tombstones_the_contact_and_its_anonymous_ids(erasing_store):
    """erase leaves a tombstone for the contact (with its refused channels) and for each linked
    anonymous id, at the later of the given time and the contact's newest event; others have none."""
    from touchline.state.erasure import ANONYMOUS, CONTACT

    s = _erasable(erasing_store)
    assert s.erase("c1", now_ms=T0) is True
    assert s.export("c1") is None
    found = s.tombstones({(CONTACT, "c1"), (ANONYMOUS, "a1"), (CONTACT, "c2"), (ANONYMOUS, "a2"), (CONTACT, "a1")})
    assert set(found) == {(CONTACT, "c1"), (ANONYMOUS, "a1")}
    assert found[(CONTACT, "c1")].erased_ms == T0 + 5 == found[(ANONYMOUS, "a1")].erased_ms
    assert found[(CONTACT, "c1")].unsubscribed == ("email",)
    assert found[(ANONYMOUS, "a1")].unsubscribed == ()
    assert found[(CONTACT, "c1")].readmitted_ms is None
    assert s.resolve([ev(20, anon="a1")]) == [("anon:a1", None)]  # the alias went with the contact
    assert s.stats()["timers"] == 0
    assert s.tombstones(set()) == {}


def test_erase_of_an_unknown_contact_still_tombstones_it(erasing_store):
    """A contact the store never saw is tombstoned anyway: its events are dropped from now on."""
    from touchline.state.erasure import CONTACT

    s = erasing_store()
    assert s.erase("nobody", now_ms=T0) is False
    assert s.tombstones([(CONTACT, "nobody")])[(CONTACT, "nobody")].erased_ms == T0


def test_erase_uses_the_wall_clock_when_no_time_is_given(erasing_store):
    """Without now_ms the erasure is at least the wall clock's now."""
    import time

    from touchline.state.erasure import CONTACT

    s = erasing_store()
    before = time.time_ns() // 1_000_000
    s.erase("c9")
    assert s.tombstones([(CONTACT, "c9")])[(CONTACT, "c9")].erased_ms >= before


def test_readmit_starts_afresh_with_refused_channels_still_refused(erasing_store):
    """readmit seeds an empty profile that keeps the refused channels, and marks the tombstones
    re-admitted: newer events pass, events not newer than the erasure still do not."""
    from touchline.state.erasure import ANONYMOUS, CONTACT

    s = _erasable(erasing_store)
    s.erase("c1", now_ms=T0)
    hits = s.tombstones([(CONTACT, "c1"), (ANONYMOUS, "a1")])
    s.readmit("c1", hits, T0 + DAY_MS)
    p = s.load(["c1"])["c1"]
    assert p.consent == {"email": False} and p.events_total == 0 and p.known
    after = s.tombstones([(CONTACT, "c1"), (ANONYMOUS, "a1")])
    for t in after.values():
        assert t.readmitted_ms == T0 + DAY_MS and t.unsubscribed == ()
        assert t.admits(T0 + DAY_MS) and not t.admits(T0 + 5)
    p.events_total = 1
    s.save({"c1": p})  # the seeded profile is written on like any other
    assert s.load(["c1"])["c1"].events_total == 1


def test_erase_is_seen_by_another_store_on_the_same_state(erasing_store):
    """A shared store: an erasure made through one client is seen by another at once, and the
    other's cached profile neither survives the erasure nor hides the re-admitted profile
    (which is written at a version above the erased one, never at one a cache may hold)."""
    from touchline.state.erasure import CONTACT

    if not erasing_store.shared:
        pytest.skip("the in-process store has one client")
    engine, tool = erasing_store(), erasing_store()
    p = engine.load(["c1"])["c1"]
    p.events_total = 3
    engine.save({"c1": p})  # the engine's cache holds c1 at version 1
    assert tool.erase("c1", now_ms=T0)
    hits = engine.tombstones([(CONTACT, "c1")])
    assert hits[(CONTACT, "c1")].version == 1
    erasing_store().readmit("c1", hits, T0 + DAY_MS)
    assert engine.load(["c1"])["c1"].events_total == 0
    assert tool.erase("c1", now_ms=T0 + 2 * DAY_MS)
    assert engine.load(["c1"])["c1"].events_total == 0  # erased again: nothing comes back from a cache


# ------------------------------------------------------------------ identity namespaces (issue 18, item 6)

#: Ids a store must keep apart and intact: reserved prefixes, the escape itself, the unit
#: separator the Redis codec joins members with, Redis Cluster hash-tag braces (a key that
#: starts with '}' would leave the tag empty), unicode, and a 10 KB id.
ODD_IDS = ["anon:x", "~", "~anon:x", "~~x", "x\x1fcart", "\x1f", "{x}", "}x", "x}", "{", "}", "über-☃-客户",
           "🙂" * 3, "k" * 10_240]


def test_key_scheme_keeps_ordinary_ids_and_escapes_reserved_ones():
    """Ordinary contact ids are their own keys (existing data stays valid); reserved prefixes
    are escaped; anonymous keys are their own space; contact_of undoes the escape."""
    assert [contact_key(c) for c in ("c1", "c-1", "x~", "anonx", "an:on")] == ["c1", "c-1", "x~", "anonx", "an:on"]
    assert contact_key("anon:x") == "~anon:x" and contact_key("~x") == "~~x" and contact_key("}x") == "~}x"
    keys = {contact_key(i) for i in ODD_IDS} | {anonymous_key(i) for i in ODD_IDS}
    assert len(keys) == 2 * len(ODD_IDS)  # no contact key is another contact's or any anonymous key
    for i in ODD_IDS:
        assert is_known_key(contact_key(i)) and not is_known_key(anonymous_key(i))
        assert contact_of(contact_key(i)) == i
        assert not contact_key(i).startswith("}")  # a Redis hash tag is never empty


def test_contact_spelled_like_an_anonymous_key_is_its_own_profile(new_store):
    """Contact 'anon:x' and anonymous visitor 'x' resolve, save, load, export and erase apart."""
    s = new_store()
    got = s.resolve([ev(0, "anon:x"), ev(1, anon="x"), ev(2, "anon:x")])
    assert got == [("~anon:x", None), ("anon:x", None), ("~anon:x", None)]
    profiles = s.load(["~anon:x", "anon:x"])
    assert profiles["~anon:x"].known and profiles["~anon:x"].contact_id == "anon:x"
    assert not profiles["anon:x"].known
    profiles["~anon:x"].events_total, profiles["anon:x"].events_total = 2, 1
    s.save(profiles)
    assert s.load(["~anon:x"])["~anon:x"].events_total == 2 and s.load(["anon:x"])["anon:x"].events_total == 1
    out = s.export("anon:x")
    assert out["contact_id"] == "anon:x" and out["profile"]["known"] and out["profile"]["events_total"] == 2
    assert s.erase("anon:x")
    assert s.load(["anon:x"])["anon:x"].events_total == 1  # the anonymous visitor is untouched


def test_reserved_contact_links_anonymous_ids_like_any_other(new_store):
    """Contact 'anon:x' identifying with anonymous id 'x' merges that visitor in once; 'x' then
    resolves to the contact, and erasing the contact drops the link."""
    s = new_store()
    assert s.resolve([ev(0, anon="x"), ev(1, "anon:x", "x"), ev(2, anon="x")]) == [
        ("anon:x", None), ("~anon:x", "anon:x"), ("~anon:x", None)]
    assert s.export("anon:x")["aliases"] == ["x"]
    assert s.erase("anon:x")
    assert s.resolve([ev(3, anon="x")]) == [("anon:x", None)]


@pytest.mark.parametrize("odd", ODD_IDS, ids=lambda i: repr(i)[:16])
def test_odd_ids_round_trip(new_store, odd):
    """An id with separators, braces, the escape, unicode or 10 KB is stored and read back
    intact, as a contact and as an anonymous visitor: its event log (event ids with the same
    characters), its timers (a member joined by the unit separator) and its links."""
    s = new_store()
    contact, anon = contact_key(odd), anonymous_key(odd)
    assert s.resolve([ev(0, anon=odd), ev(1, odd), ev(2, anon=odd)]) == [(anon, None), (contact, None), (anon, None)]
    profiles = s.load([contact, anon])
    for n, (key, p) in enumerate(profiles.items()):
        assert apply_event(p, f"{odd}-e{n}", "x\x1ftype", T0 + n, {}, {})
        p.timers["cart"] = T0 + 10 + n
    s.save(profiles)
    s.schedule([(contact, "cart", T0 + 10), (anon, "cart", T0 + 11)])
    assert s.pop_due(T0 + 20) == [(T0 + 10, contact, "cart"), (T0 + 11, anon, "cart")]
    again = new_store().load([contact, anon]) if not isinstance(s, MemoryStore) else s.load([contact, anon])
    assert again[contact].seen == {f"{odd}-e0"} and again[contact].known and again[contact].contact_id == odd
    assert again[anon].seen == {f"{odd}-e1"} and not again[anon].known
    assert again[contact].window_count("1h", "other") == 1
    assert s.export(odd)["profile"]["events_total"] == 1
    assert s.resolve([ev(3, odd, odd)]) == [(contact, anon)]  # the link works for such ids too
    assert s.export(odd)["aliases"] == [odd]


def _engine(store: StateStore) -> Engine:
    core = DecisionCore(PolicyConfig(holdout_share=0.0),
                        {"lead": ModelConfig(name="lead"), "churn": ModelConfig(name="churn")},
                        LabelSettings(7.0, 7.0, frozenset({"purchase", "signup"})))
    return Engine(store, core, EngineMetrics(CollectorRegistry()))


def _line(eid: str, type_: str, ts: int, contact: str | None = None, anon: str | None = None) -> bytes:
    doc = {"event_id": eid, "type": type_, "ts": ts, "contact_id": contact, "anonymous_id": anon}
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def test_engine_messages_a_contact_spelled_like_an_anonymous_key(new_store):
    """In one stream, contact 'anon:x' signs up and anonymous visitor 'x' browses: two profiles,
    and the contact gets its welcome, in a record naming its real id, committed in its outbox."""
    store = new_store()
    engine = _engine(store)
    res = engine.process(RawBatch([_line("v1", "page_view", T0, anon="x"), _line("s1", "signup", T0 + 1, "anon:x"),
                                   _line("v2", "page_view", T0 + 2, anon="x")], "mixed.jsonl", 1))
    assert res.dead_letters == []
    assert [(d["contact_id"], d["action"]) for d in res.decisions] == [("anon:x", "welcome")]
    assert res.decisions[0]["decision_id"] == decision_id("anon:x", "welcome", "email", "s1")
    contact = store.export("anon:x")["profile"]
    assert contact["known"] and contact["events_total"] == 1 and contact["sends"]
    assert store.load(["anon:x"])["anon:x"].events_total == 2  # the visitor's own profile
    engine.output_done(res.decisions, "d")  # the outbox entry is found by the record's contact id
    engine.shut_down()
    assert store.pending() == []


# ------------------------------------------------------------------ event ids store-wide (issue 18, item 5)

CLAIMERS = {**STORES, "redis-naive": "redis_url"}


@pytest.fixture(params=list(CLAIMERS))
def claim_store(request):
    """A factory of stores sharing one (empty) state, the naive Redis baseline included."""
    made: list[StateStore] = []
    url = _store_url(request, CLAIMERS)

    def make():
        made.append(open_store(url) if url else (made[0] if made else MemoryStore()))
        return made[-1]

    yield make
    for store in made:
        store.close()


def test_event_id_is_claimed_by_the_first_identity(claim_store):
    """An id used by a second identity is refused (in the same call and later ones), the first
    identity may use it again (a replay), and contact 'x' is not anonymous visitor 'x'."""
    s = claim_store()
    got = s.claim_ids([Event("e1", "t", T0, contact_id="c1"), Event("e1", "t", T0, contact_id="c2"),
                       Event("e1", "t", T0 + 5, contact_id="c1", anonymous_id="a1"), Event("e2", "t", T0, contact_id="x")])
    assert got == [True, False, True, True]
    assert s.claim_ids([Event("e2", "t", T0, anonymous_id="x"), Event("e2", "t", T0, contact_id="x"),
                        Event("e1", "t", T0, anonymous_id="a1"), Event("e3", "t", T0, anonymous_id="a1"),
                        Event("e3", "t", T0, anonymous_id="a1")]) == [False, True, False, True, True]
    assert claim_store().claim_ids([Event("e1", "t", T0 + DAY_MS, contact_id="c2"),  # another store, same state
                                    Event("e1", "t", T0 + DAY_MS, contact_id="c1")]) == [False, True]


def test_claim_lapses_after_the_idempotency_window(claim_store):
    """An id is another identity's only within the window (event time) of its claim."""
    s = claim_store()
    assert s.claim_ids([Event("e1", "t", T0, contact_id="c1")]) == [True]
    assert s.claim_ids([Event("e1", "t", T0 + ID_CLAIM_MS - 1, contact_id="c2")]) == [False]
    assert s.claim_ids([Event("e1", "t", T0 + ID_CLAIM_MS, contact_id="c2")]) == [True]
    assert s.claim_ids([Event("e1", "t", T0 + ID_CLAIM_MS + 1, contact_id="c1")]) == [False]  # c2's now


def test_claims_of_odd_and_long_ids(claim_store):
    """Event ids and identities with separators, braces, unicode or 10 KB claim like any other."""
    s = claim_store()
    events = [Event(odd, "t", T0, contact_id=odd) for odd in ODD_IDS]
    assert s.claim_ids(events) == [True] * len(ODD_IDS)
    assert s.claim_ids([Event(odd, "t", T0, anonymous_id=odd) for odd in ODD_IDS]) == [False] * len(ODD_IDS)
    assert s.claim_ids(events) == [True] * len(ODD_IDS)


def test_memory_claims_stay_bounded():
    """The in-process store forgets claims once the newest event is a window past them."""
    s = MemoryStore()
    for day in range(90):
        assert s.claim_ids([Event(f"d{day}-{i}", "t", T0 + day * DAY_MS, contact_id="c1") for i in range(100)])
    assert len(s._claims) <= 31 * 100
    assert s.claim_ids([Event("d89-0", "t", T0 + 89 * DAY_MS, contact_id="c2")]) == [False]


def test_engine_dead_letters_an_event_id_used_by_another_contact(new_store):
    """The same event_id under two contacts: the first is applied, the second is a duplicate_id
    dead letter naming its own line and not the other contact; so in a later batch, and after
    the store is opened again. Replaying the same lines gives duplicates, not duplicate_id."""
    store = new_store()
    engine = _engine(store)
    first = [_line("s1", "signup", T0, "c1"), _line("s1", "signup", T0 + 1, "c2"), _line("p1", "page_view", T0, "c3")]
    res = engine.process(RawBatch(first, "in.jsonl", 1))
    assert [d["contact_id"] for d in res.decisions] == ["c1"]
    assert [(d["reason"], d["source"]) for d in res.dead_letters] == [("duplicate_id", "in.jsonl:2")]
    assert "another identity" in res.dead_letters[0]["detail"] and "c1" not in res.dead_letters[0]["detail"]
    assert orjson.loads(res.dead_letters[0]["raw"])["contact_id"] == "c2"
    later = engine.process(RawBatch([_line("p1", "purchase", T0 + 5, anon="a9")], "in.jsonl", 4))
    assert [(d["reason"], d["source"]) for d in later.dead_letters] == [("duplicate_id", "in.jsonl:4")]
    again = _engine(store if isinstance(store, MemoryStore) else new_store())
    replay = again.process(RawBatch(first, "in.jsonl", 1))
    assert [d["reason"] for d in replay.dead_letters] == ["duplicate_id"]  # c2's line, as the first time
    assert again.totals.duplicates == 2 and replay.decisions == []  # c1 and c3 again: plain duplicates
    assert engine.totals.dead_letters["duplicate_id"] == 2
    assert store.load(["c2"])["c2"].events_total == 0 and store.load(["c1"])["c1"].events_total == 1


def test_claimed_batch_that_never_committed_still_applies_on_replay(new_store):
    """A batch claims its ids and dies before its commit: its replay (same identities) applies."""
    store = new_store()
    lines = [_line("s1", "signup", T0, "c1"), _line("v1", "page_view", T0 + 1, anon="a1")]
    store.claim_ids([Event("s1", "signup", T0, contact_id="c1"), Event("v1", "page_view", T0 + 1, anonymous_id="a1")])
    res = _engine(store).process(RawBatch(lines, "in.jsonl", 1))
    assert res.dead_letters == [] and [d["contact_id"] for d in res.decisions] == ["c1"]


def test_known_contacts_are_counted_as_they_come_and_go(new_store):
    """The running count of known contacts (what an action's daily reach is measured against):
    anonymous profiles are not counted, a rewrite is not a new contact, deletion and erasure
    take one off, re-admission puts one back."""
    s = new_store()
    s.commit(s.load(["c1", "c2", "c3", "anon:a1"]), [], [])
    assert s.known_contacts(max_age_seconds=0) == 3
    s.commit(s.load(["c1", "c2"]), [], [])
    assert s.known_contacts(max_age_seconds=0) == 3
    s.delete("c1")
    s.delete("c1")  # already gone: not counted twice
    s.erase("c2")
    assert s.known_contacts(max_age_seconds=0) == 1
    hits = s.tombstones([("contact", "c2")])
    s.readmit("c2", hits, T0)
    assert s.known_contacts(max_age_seconds=0) == 2


# ------------------------------------------------------------------ journey versions

def test_journey_versions_are_kept_once_and_the_first_is_the_baseline(new_store):
    """Definitions by (journey, version): keeping one again changes nothing, the first version
    kept of a journey is its baseline, a selection returns only what is kept, forgetting drops
    definitions (never the baseline's name), and a second store on the same state sees them."""
    s = new_store()
    assert s.journey_versions().definitions == {} and s.journey_versions().baselines == {}
    s.keep_journey_versions({("welcome", "aaaaaaaaaaaa"): '{"v": 1}', ("cart", "cccccccccccc"): '{"c": 1}'})
    s.keep_journey_versions({("welcome", "bbbbbbbbbbbb"): '{"v": 2}', ("welcome", "aaaaaaaaaaaa"): '{"other": 1}'})
    kept = s.journey_versions()
    assert kept.definitions == {("welcome", "aaaaaaaaaaaa"): '{"v": 1}', ("welcome", "bbbbbbbbbbbb"): '{"v": 2}',
                                ("cart", "cccccccccccc"): '{"c": 1}'}
    assert kept.baselines == {"welcome": "aaaaaaaaaaaa", "cart": "cccccccccccc"}
    some = s.journey_versions([("welcome", "bbbbbbbbbbbb"), ("welcome", "dddddddddddd")])
    assert some.definitions == {("welcome", "bbbbbbbbbbbb"): '{"v": 2}'} and some.baselines == kept.baselines
    assert s.journey_versions([]).definitions == {}
    s.forget_journey_versions([("welcome", "aaaaaaaaaaaa"), ("nope", "x")])
    assert set(s.journey_versions().definitions) == {("welcome", "bbbbbbbbbbbb"), ("cart", "cccccccccccc")}
    assert s.journey_versions().baselines["welcome"] == "aaaaaaaaaaaa"
    if not isinstance(s, MemoryStore):
        assert new_store().journey_versions().definitions == s.journey_versions().definitions


def test_profiles_and_journey_states_list_every_stored_profile(new_store):
    """What tools such as ``journeys check`` read: every stored profile, anonymous ones too."""
    s = new_store()
    assert list(s.profiles()) == []
    got = s.load(["c1", "c2", "anon:a1"])
    got["c1"].journeys["welcome"] = {"active": True, "step": 1, "version": "aaaaaaaaaaaa"}
    s.commit(got, [], [])
    listed = {p.key: p for p in s.profiles()}
    assert set(listed) == {"c1", "c2", "anon:a1"}
    assert listed["c1"].journeys["welcome"]["version"] == "aaaaaaaaaaaa"
    states = dict(s.journey_states())  # what journeys check counts: the journey states alone
    assert states == {"c1": {"welcome": {"active": True, "step": 1, "version": "aaaaaaaaaaaa"}}, "c2": {},
                      "anon:a1": {}}


# ------------------------------------------------------------------ the population's send hours

def _hours(**at: int) -> list[int]:
    counts = [0] * 24
    for hour, n in at.items():
        counts[int(hour[1:])] = n
    return counts


def test_send_hours_add_up_halve_past_the_cap_and_are_shared(new_store):
    """The population's engagement by local hour (best send time): added to and read back,
    all zeros only reads, halved (rounding down) once the sum passes the cap, a malformed
    delta refused with what is wrong; a second store on the same state (another process, a
    restart) sees them."""
    s = new_store()
    assert s.add_send_hours([0] * 24, cap=1000) == [0] * 24
    assert s.add_send_hours(_hours(h8=5, h19=2), cap=1000) == _hours(h8=5, h19=2)
    assert s.add_send_hours(_hours(h19=1), cap=1000) == _hours(h8=5, h19=3)
    assert s.add_send_hours([0] * 24, cap=1000) == _hours(h8=5, h19=3)
    assert s.add_send_hours(_hours(h8=995), cap=1000) == _hours(h8=500, h19=1)  # 1,003 > 1,000: 1,000 // 2, 3 // 2
    for bad in ([1] * 23, [0] * 23 + [-1]):
        with pytest.raises(ValueError, match="24 counters, none negative"):
            s.add_send_hours(bad, cap=1000)
    assert s.add_send_hours([0] * 24, cap=1000) == _hours(h8=500, h19=1)  # nothing half-added
    if not isinstance(s, MemoryStore):
        other = new_store()
        assert other.add_send_hours(_hours(h3=1), cap=1000) == _hours(h3=1, h8=500, h19=1)
        assert s.add_send_hours([0] * 24, cap=1000)[3] == 1
