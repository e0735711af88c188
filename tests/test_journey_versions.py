"""Journey versions (issue 22): a contact finishes the version of a journey it entered.

An edit of a journey file while contacts wait inside it (two steps inserted before their
step) neither skips nor repeats a step for them: they get exactly the old version's
remaining steps at the old version's times, while new entrants follow the file. Across a
restart on the in-process and on the Redis store; contacts of a journey removed from the
files, or of a version no definition is kept of, leave it with a counted reason.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from test_engine_step import T0, line, run
from test_journeys_runtime import advance, journey_engine
from touchline.decisions.journey_versions import (
    VERSION, JourneyVersions, StoredVersions, definition, from_definition, version_of,
)
from touchline.decisions.journeys import JourneyError, parse_journey
from touchline.decisions.profile import DAY_MS, HOUR_MS
from touchline.state import MemoryStore, open_store
from touchline.state.base import StoreOptions

V1 = """\
journey: welcome
entry: {event: signup}
steps:
  - id: hello
    send: {channel: email, template: welcome/1}
  - wait: 2d
  - id: benefits
    send: {channel: email, template: welcome/benefits}
  - wait: 3d
  - id: offer
    send: {channel: email, template: welcome/offer}
"""
#: two steps inserted before the wait a contact that got ``hello`` is in
V2 = V1.replace("""  - wait: 2d
""", """  - wait: 1d
    id: pause
  - id: tip
    send: {channel: email, template: welcome/tip}
  - wait: 2d
""")
OTHER = "journey: other\nentry: {event: chat_message}\nsteps:\n  - send: {channel: email, template: other}\n"


def journey(text: str):
    return parse_journey(text, "welcome.yaml")


def sent(decisions: list[dict]) -> list[tuple[str, str, str]]:
    """(contact, step, event time) of each decision."""
    return [(d["contact_id"], d["step"], d["event_time"]) for d in decisions]


def at(ms: int) -> str:
    from touchline.decisions.record import iso_ms

    return iso_ms(ms)


# ------------------------------------------------------------------ versions, pure
def test_version_is_the_content_not_the_description_nor_the_process():
    v1 = journey(V1)
    assert version_of(v1) == version_of(journey("description: reworded\n" + V1))
    assert version_of(v1) != version_of(journey(V2))
    assert len(version_of(v1)) == 12 and int(version_of(v1), 16) >= 0
    again = from_definition("welcome", version_of(v1), definition(v1))
    assert again.steps == v1.steps and version_of(again) == version_of(v1)


def test_a_definition_that_no_longer_reads_names_the_journey_and_version():
    with pytest.raises(JourneyError, match="journey 'welcome' version abc: stored definition does not read"):
        from_definition("welcome", "abc", '{"journey": "welcome", "steps": []}')
    with pytest.raises(JourneyError, match="version abc"):
        from_definition("welcome", "abc", "not json")


def test_a_stored_definition_keeps_the_seconds_a_bare_number_meant_when_it_was_stored():
    """A file may no longer say ``wait: 5`` (a duration needs a unit, issue 22); a version stored
    by a release that read it as 5 seconds still runs with 5 seconds for the contacts inside."""
    stored = '{"journey": "w", "entry": {"event": "signup"}, "steps": [{"wait": 5}, {"wait_for": ' \
             '{"event": "email_open", "timeout": 90}}], "defer_for": 1.5}'
    journey = from_definition("w", "old", stored)
    assert journey.steps[0].wait_ms == 5_000 and journey.steps[1].wait_for.timeout == "90s"
    assert journey.defer_for == "1.5s"
    with pytest.raises(JourneyError, match="bad duration 5: a number needs a unit"):
        parse_journey("journey: w\nentry: {event: signup}\nsteps:\n  - wait: 5\n", "w.yaml")


def test_a_contact_is_in_the_version_its_state_names_and_an_unversioned_one_in_the_baseline():
    v1, v2 = journey(V1), journey(V2)
    versions = JourneyVersions([v2])
    stored = StoredVersions()
    stored.keep({("welcome", version_of(v1)): definition(v1)})  # the first version kept: the baseline
    stored.keep({("welcome", version_of(v2)): definition(v2)})
    stored.keep({("gone", "0123456789ab"): definition(journey(OTHER))})
    versions.adopt(stored)
    assert versions.known("welcome") == [version_of(v2), version_of(v1)]
    assert versions.known("gone") == []  # a removed journey's versions are not taken
    assert versions.own("welcome", {VERSION: version_of(v2)}) is v2
    assert versions.own("welcome", {VERSION: version_of(v1)}).steps == v1.steps
    legacy = {"active": True, "step": 1}  # written before versions: entered what ran at the upgrade
    assert versions.own("welcome", legacy).steps == v1.steps and legacy[VERSION] == version_of(v1)


def test_an_unknown_version_is_looked_up_once_and_then_remembered_as_missing():
    v1, v2 = journey(V1), journey(V2)
    versions = JourneyVersions([v2])
    asked: list[tuple[str, str]] = []

    def find(name: str, version: str) -> str | None:
        asked.append((name, version))
        return definition(v1) if version == version_of(v1) else None

    versions.find = find
    assert versions.own("welcome", {VERSION: version_of(v1)}).steps == v1.steps
    assert versions.own("welcome", {VERSION: version_of(v1)}) is not None
    assert versions.own("welcome", {VERSION: "feedfeedfeed"}) is None
    assert versions.own("welcome", {VERSION: "feedfeedfeed"}) is None
    assert asked == [("welcome", version_of(v1)), ("welcome", "feedfeedfeed")]


# ------------------------------------------------------------------ an edit while contacts wait
def _edited(store, registry: CollectorRegistry | None = None):
    """c1 enters v1 and gets ``hello``; the engine restarts (same store) with the file edited to v2."""
    first = journey_engine(journey(V1), store=store)
    assert sent(run(first, [line("s1", "signup", T0, "c1")])) == [("c1", "hello", at(T0))]
    run(first, [], advance_to=T0 + HOUR_MS)
    second = journey_engine(journey(V2), store=store, registry=registry)
    run(second, [], advance_to=T0 + HOUR_MS)
    return second


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_a_waiting_contact_finishes_its_version_and_new_entrants_follow_the_edit(store_kind, request):
    store = MemoryStore() if store_kind == "memory" else open_store(request.getfixturevalue("redis_url"),
                                                                    StoreOptions())
    try:
        e = _edited(store)
        run(e, [line("s2", "signup", T0 + 2 * HOUR_MS, "c2")])
        got = sent(advance(e, T0 + 8 * DAY_MS))
    finally:
        store.close()
    mine = [g for g in got if g[0] == "c1"]
    # v1's remaining steps at v1's times: benefits two days after hello, the offer three later
    assert mine == [("c1", "benefits", at(T0 + 2 * DAY_MS + 1)), ("c1", "offer", at(T0 + 5 * DAY_MS + 2))]
    t2, theirs = T0 + 2 * HOUR_MS, [g for g in got if g[0] == "c2"]
    assert [g[1] for g in theirs] == ["tip", "benefits", "offer"]  # the offer waits for the 3-a-week email cap
    assert theirs[:2] == [("c2", "tip", at(t2 + DAY_MS + 1)), ("c2", "benefits", at(t2 + 3 * DAY_MS + 2))]


def test_the_states_name_their_versions_and_the_store_keeps_both_definitions():
    store = MemoryStore()
    e = _edited(store)
    run(e, [line("s2", "signup", T0 + 2 * HOUR_MS, "c2")])
    v1, v2 = version_of(journey(V1)), version_of(journey(V2))
    profiles = store.load(["c1", "c2"])
    assert profiles["c1"].journeys["welcome"][VERSION] == v1
    assert profiles["c2"].journeys["welcome"][VERSION] == v2
    kept = store.journey_versions()
    assert set(kept.definitions) == {("welcome", v1), ("welcome", v2)} and kept.baselines == {"welcome": v1}


def test_a_contact_entered_before_versions_finishes_the_version_of_the_upgrade():
    """A profile written by a release without versions: its state names none. The first engine
    that keeps versions makes its file the baseline; a later edit does not move the contact."""
    store = MemoryStore()
    first = journey_engine(journey(V1), store=store)
    run(first, [line("s1", "signup", T0, "c1")])
    run(first, [], advance_to=T0 + HOUR_MS)
    store.load(["c1"])["c1"].journeys["welcome"].pop(VERSION)  # as an older release stored it
    second = journey_engine(journey(V2), store=store)
    run(second, [], advance_to=T0 + HOUR_MS)
    got = sent(advance(second, T0 + 6 * DAY_MS))
    assert got == [("c1", "benefits", at(T0 + 2 * DAY_MS + 1)), ("c1", "offer", at(T0 + 5 * DAY_MS + 2))]
    assert store.load(["c1"])["c1"].journeys["welcome"]["exit_reason"] == "completed"


def test_a_contact_in_a_version_kept_nowhere_leaves_instead_of_being_guessed_onto_the_file():
    store, reg = MemoryStore(), CollectorRegistry()
    first = journey_engine(journey(V1), store=store)
    run(first, [line("s1", "signup", T0, "c1")])
    store.forget_journey_versions([("welcome", version_of(journey(V1)))])
    second = journey_engine(journey(V2), store=store, registry=reg)
    run(second, [], advance_to=T0 + HOUR_MS)
    assert advance(second, T0 + 8 * DAY_MS) == []
    state = store.load(["c1"])["c1"].journeys["welcome"]
    assert not state["active"] and state["exit_reason"] == "unknown_version"
    assert reg.get_sample_value("touchline_journey_exits_total",
                                {"journey": "welcome", "reason": "unknown_version"}) == 1


def test_a_contact_inside_a_removed_journey_leaves_it_when_its_next_step_comes_due():
    store, reg = MemoryStore(), CollectorRegistry()
    first = journey_engine(journey(V1), store=store)
    run(first, [line("s1", "signup", T0, "c1")])
    run(first, [], advance_to=T0 + HOUR_MS)  # in the two-day wait
    second = journey_engine(journey(OTHER), store=store, registry=reg)  # welcome is gone from the files
    run(second, [], advance_to=T0 + HOUR_MS)
    assert store.load(["c1"])["c1"].journeys["welcome"]["active"]  # still waiting: nothing is due yet
    assert advance(second, T0 + 8 * DAY_MS) == []
    state = store.load(["c1"])["c1"].journeys["welcome"]
    assert not state["active"] and state["exit_reason"] == "removed" and state["exited"] == T0 + 2 * DAY_MS + 1
    assert reg.get_sample_value("touchline_journey_exits_total", {"journey": "welcome", "reason": "removed"}) == 1


def test_an_unchanged_file_keeps_everyone_on_one_version():
    store = MemoryStore()
    first = journey_engine(journey(V1), store=store)
    run(first, [line("s1", "signup", T0, "c1")])
    second = journey_engine(journey("description: same steps\n" + V1), store=store)
    run(second, [line("s2", "signup", T0 + HOUR_MS, "c2")])
    profiles = store.load(["c1", "c2"])
    assert profiles["c1"].journeys["welcome"][VERSION] == profiles["c2"].journeys["welcome"][VERSION]
    assert len(store.journey_versions().definitions) == 1


# ------------------------------------------------------------------ the stored state
def test_the_codec_keeps_the_version_and_reads_a_state_written_without_one():
    from touchline.decisions.profile import Profile
    from touchline.state.codec import from_parts, to_blob

    p = Profile("c1", known=True)
    p.journeys["welcome"] = {"active": True, VERSION: "3f9a1c0b7e21", "step": 1, "entered": T0, "wait": None}
    assert from_parts("c1", to_blob(p), [], []).journeys["welcome"][VERSION] == "3f9a1c0b7e21"
    old = b'{"last_ts":1,"journeys":{"welcome":{"active":true,"step":1,"entered":1,"wait":null,"entries":1}}}'
    back = from_parts("c1", old, [], [])  # as the release before versions wrote it
    assert back.journeys["welcome"] == {"active": True, "step": 1, "entered": 1, "wait": None, "entries": 1}
    assert to_blob(p).count(b'"version"') == 1  # one short field per journey a contact is in


def test_an_upgrade_on_redis_takes_unversioned_contacts_as_in_the_files_it_starts_with(redis_url):
    """Redis data of the release before versions (no version in the states, nothing kept):
    the upgraded engine, started with the unchanged file, makes it the baseline; the file is
    then edited and the engine restarted: the contact still finishes what it entered."""
    import orjson
    import redis

    from touchline.state.redis import JOURNEY_BASELINES_KEY, JOURNEY_VERSIONS_KEY, profile_keys

    def engine(text: str):
        return journey_engine(journey(text), store=open_store(redis_url, StoreOptions()))

    old = engine(V1)
    run(old, [line("s1", "signup", T0, "c1")])
    run(old, [], advance_to=T0 + HOUR_MS)
    old.store.close()
    client = redis.Redis.from_url(redis_url)
    blob = orjson.loads(client.hget(profile_keys("c1")[0], "blob"))
    del blob["journeys"]["welcome"][VERSION]
    client.hset(profile_keys("c1")[0], "blob", orjson.dumps(blob))
    client.delete(JOURNEY_VERSIONS_KEY, JOURNEY_BASELINES_KEY)
    upgraded = engine(V1)  # the upgrade: same file
    upgraded.store.close()
    edited = engine(V2)
    run(edited, [], advance_to=T0 + HOUR_MS)
    got = sent(advance(edited, T0 + 6 * DAY_MS))
    edited.store.close()
    assert got == [("c1", "benefits", at(T0 + 2 * DAY_MS + 1)), ("c1", "offer", at(T0 + 5 * DAY_MS + 2))]


# ------------------------------------------------------------------ journeys check against a deployment
def _deployment(redis_url: str):
    """On Redis: three contacts got ``hello`` of v1 and wait two days; a version of welcome no
    one is in is kept beside."""
    e = journey_engine(journey(V1), store=open_store(redis_url, StoreOptions()))
    run(e, [line("s1", "signup", T0, "c1"), line("s2", "signup", T0, "c2"), line("s3", "signup", T0, "c3")])
    advance(e, T0 + HOUR_MS)
    e.store.keep_journey_versions({("welcome", "000000000000"): definition(journey(OTHER.replace("other", "welcome")))})
    e.store.close()


def test_journeys_check_says_what_an_edit_means_for_the_contacts_inside(redis_url, tmp_path, capsys):
    from touchline.cli import main

    _deployment(redis_url)
    edited = tmp_path / "welcome.yaml"
    edited.write_text(V2)
    assert main(["journeys", "check", str(edited), "--redis", redis_url]) == 0
    out = capsys.readouterr().out.splitlines()
    v1, v2 = version_of(journey(V1)), version_of(journey(V2))
    assert out[0] == f"ok  {edited}: journey 'welcome', priority 50, event entry, 7 steps, version {v2}"
    assert out[1] == f"deployment {redis_url}: 3 profiles read"
    assert out[2] == f"  welcome: 3 contacts inside; this file is version {v2} (new: the engine keeps it when it " \
                     "starts with this file)"
    assert out[3].startswith(f"    version {v1} (not this file): 3 contacts: finish this version as they entered it")
    assert out[4] == "      at: step-2 (wait 2d) 3"
    assert out[5] == ("      this file against it: inserted pause (wait 1d), tip (send email welcome/tip) "
                      "before step-2 (wait 2d)")
    assert out[6] == "  kept versions no contact is in: welcome 000000000000 (--forget-unused drops them)"


def test_journeys_check_json_and_forget_unused(redis_url, tmp_path, capsys):
    import orjson

    from touchline.cli import main

    _deployment(redis_url)
    (tmp_path / "welcome.yaml").write_text(V1)
    assert main(["journeys", "check", str(tmp_path), "--redis", redis_url, "--json", "--forget-unused"]) == 0
    found = orjson.loads(capsys.readouterr().out)
    (welcome,) = found["journeys"]
    assert welcome["kept"] and welcome["inside"] == 3 and welcome["version"] == version_of(journey(V1))
    assert welcome["versions"] == [{"version": welcome["version"], "this_file": True, "contacts": 3,
                                    "steps": [{"index": 1, "step": "step-2 (wait 2d)", "contacts": 3}],
                                    "fate": "on this file's steps"}]
    assert found["forgotten"] == [["welcome", "000000000000"]] and found["profiles"] == 3
    store = open_store(redis_url, StoreOptions())
    assert set(store.journey_versions().definitions) == {("welcome", welcome["version"])}
    store.close()


def test_journeys_check_reports_contacts_of_other_journeys_and_unknown_versions():
    from pathlib import Path

    from touchline.journey_check import census, format_report, report

    store = MemoryStore()
    e = journey_engine(journey(V1), journey(OTHER), store=store)
    run(e, [line("s1", "signup", T0, "c1"), line("m1", "chat_message", T0, "c2")])
    store.load(["c1"])["c1"].journeys["welcome"][VERSION] = "feedfeedfeed"  # a version kept nowhere
    stored = store.journey_versions()
    inside, read = census(store.journey_states(), stored.baselines)
    found = {"deployment": "memory://", "profiles": read, "forgotten": [],
             **report([(Path("welcome.yaml"), journey(V1))], inside, stored)}
    text = format_report(found)
    assert "    version feedfeedfeed (not this file): 1 contact: leave the journey at their next step (exit reason " \
           "unknown_version): no definition of it is kept" in text
    assert "      at: step #2 1" in text  # its step by number: no definition names it
    assert "  contacts inside journeys not in these files: other 1 (a journey gone from the engine's files" in text


def test_journeys_check_needs_a_deployment_for_its_deployment_flags(capsys, tmp_path):
    from touchline.cli import main

    (tmp_path / "w.yaml").write_text(V1)
    assert main(["journeys", "check", str(tmp_path / "w.yaml"), "--forget-unused"]) == 2
    assert "give --redis URL or --config FILE" in capsys.readouterr().err
    assert main(["journeys", "check"]) == 2
    assert "give journey files" in capsys.readouterr().err
    assert main(["journeys", "check", str(tmp_path / "w.yaml"), "--redis", "memory://"]) == 2
    assert "keeps nothing after a run: pass --redis URL" in capsys.readouterr().err


def test_journeys_check_counts_odd_stored_states_without_failing():
    from touchline.journey_check import census, step_label

    odd = [("c1", {"welcome": {"active": True, "step": "s2", VERSION: 5}}), ("c2", {"welcome": "not a state"}),
           ("c3", {"welcome": {"active": True}}), ("c4", {})]
    inside, read = census(odd, {"welcome": "aaaaaaaaaaaa"})
    assert read == 4 and inside == {"welcome": {"5": {-1: 1}, "aaaaaaaaaaaa": {-1: 1}}}
    assert step_label(journey(V1), -1) == "an unreadable step"
