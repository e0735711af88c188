"""Best send time (issue 21 item 3): the pure estimate and schedule (shrinkage toward the
population, local hours across DST and time zones, the window with quiet hours), the state in
the profile and its blob, journey files that use it, a best-time send through the engine and
across a restart on Redis, and the fixed-versus-best-time split reported per arm."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import orjson
import pytest

from test_engine_step import T0, line, run
from test_journeys_runtime import advance, journey_engine, steps
from touchline.decisions.journeys import JourneyError, parse_journey
from touchline.decisions.policy import QuietHours
from touchline.decisions.profile import DAY_MS, HOUR_MS, Profile, merge_into, snapshot
from touchline.decisions.send_hours import SendHours, best_hour, hour_scores, population_share
from touchline.decisions.send_time import SendTime, best_send_time, send_slots
from touchline.state.codec import from_parts, to_blob


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def peaked(*hours: int, n: int = 1) -> list[int]:
    counts = [0] * 24
    for h in hours:
        counts[h] += n
    return counts


# ------------------------------------------------------------------------------- shrinkage
def test_no_history_follows_the_population_and_much_history_the_contact():
    population = population_share(peaked(8, n=500))  # everyone reads at 8
    assert best_hour(hour_scores([], population, 10)) == 8
    assert best_hour(hour_scores(peaked(20, n=1), population, 10)) == 8  # one open at 20 is not enough
    assert best_hour(hour_scores(peaked(20, n=30), population, 10)) == 20  # thirty are
    assert best_hour(hour_scores(peaked(20, n=1), population, 0)) == 20  # without a prior: the contact alone


def test_scores_are_shares_that_move_from_the_prior_toward_the_contact_with_its_history():
    population = population_share(peaked(8, n=100))
    for n in (0, 1, 5, 50):
        scores = hour_scores(peaked(20, n=n), population, 10)
        assert sum(scores) == pytest.approx(1.0)
    shares = [hour_scores(peaked(20, n=n), population, 10)[20] for n in (0, 1, 5, 50)]
    assert shares == sorted(shares) and shares[-1] > 0.8


def test_an_empty_population_and_no_history_have_no_best_hour_and_send_now():
    scores = hour_scores([], population_share([0] * 24), 10)
    assert best_hour(scores) is None
    assert best_send_time(T0, DAY_MS, scores, "Europe/Berlin", "UTC", None) == T0


def test_counters_stay_small_and_merge_on_stitching():
    learner = SendTime("UTC", QuietHours())
    visitor, contact = Profile("anon:a"), Profile("c1", known=True)
    for i in range(300):
        learner.observe(contact, T0 + i * DAY_MS)  # 12:00 UTC every day
    assert sum(contact.send_hours) <= 200 and contact.send_hours[12] == sum(contact.send_hours)
    learner.observe(visitor, T0 + 8 * HOUR_MS)
    merge_into(contact, visitor)
    assert contact.send_hours[20] == 1 and len(contact.send_hours) == 24


# ------------------------------------------------------------------------------- local hours
def test_engagement_counts_in_the_contacts_local_hour_across_dst():
    learner = SendTime("UTC", QuietHours())
    p = Profile("c1", known=True, timezone="America/New_York")
    learner.observe(p, utc("2026-03-07T13:00:00"))  # EST: 08:00
    learner.observe(p, utc("2026-03-09T13:00:00"))  # EDT since 8 March: 09:00
    assert (p.send_hours[8], p.send_hours[9]) == (1, 1)
    learner.observe(p, utc("2026-03-09T12:00:00"))  # 08:00 again, an hour earlier in UTC
    assert p.send_hours[8] == 2


def test_half_hour_zones_and_the_default_zone():
    learner = SendTime("Asia/Tokyo", QuietHours())
    india, unknown = Profile("c1", timezone="Asia/Kolkata"), Profile("c2", timezone="Not/AZone")
    learner.observe(india, utc("2026-01-05T03:30:00"))  # 09:00 IST
    learner.observe(unknown, utc("2026-01-05T03:30:00"))  # the default zone: 12:30 JST
    assert india.send_hours[9] == 1 and unknown.send_hours[12] == 1
    assert learner.population[9] == learner.population[12] == 1


def test_slots_step_an_hour_of_real_time_over_the_spring_forward():
    slots = send_slots(utc("2026-03-08T05:00:00"), 4 * HOUR_MS, "America/New_York", "UTC")  # 00:00 EST
    assert [hour for _, hour in slots] == [0, 1, 3, 4, 5]  # 02:00 does not exist that night
    assert all(b[0] - a[0] == HOUR_MS for a, b in zip(slots, slots[1:]))


def test_a_slot_in_the_fall_back_hour_is_not_counted_twice():
    slots = send_slots(utc("2026-11-01T04:00:00"), 3 * HOUR_MS, "America/New_York", "UTC")  # 00:00 EDT
    assert [hour for _, hour in slots] == [0, 1, 1, 2]  # 01:00 happens twice, an hour apart in real time
    assert len({at for at, _ in slots}) == 4


# ------------------------------------------------------------------------------- the window
def test_best_time_in_the_window_and_the_soonest_of_a_tie():
    scores = [0.0] * 24
    scores[20] = scores[22] = 1.0
    noon = utc("2026-01-05T12:00:00")
    assert best_send_time(noon, DAY_MS, scores, "UTC", "UTC", None) == utc("2026-01-05T20:00:00")
    assert best_send_time(noon, 6 * HOUR_MS, scores, "UTC", "UTC", None) == noon  # 20:00 is past the window
    tokyo = best_send_time(noon, DAY_MS, scores, "Asia/Tokyo", "UTC", None)  # now 21:00 JST
    assert tokyo == utc("2026-01-05T13:00:00")  # 22:00 JST


def test_quiet_hours_are_never_chosen_on_a_quiet_channel():
    quiet = QuietHours(start_hour=21, end_hour=8, channels=["sms"])
    learner = SendTime("UTC", quiet)
    p = Profile("c1", known=True, timezone="Europe/Berlin")
    for day in range(20):
        learner.observe(p, utc("2026-01-01T21:30:00") + day * DAY_MS)  # 22:30 Berlin, every night
    for day in range(5):
        learner.observe(p, utc("2026-01-01T17:10:00") + day * DAY_MS)  # and now and then 18:10
    noon = utc("2026-01-25T11:00:00")  # 12:00 Berlin
    assert learner.when(p, noon, DAY_MS, "email") == utc("2026-01-25T21:00:00")  # 22:00, email is not quiet
    assert learner.when(p, noon, DAY_MS, "sms") == utc("2026-01-25T17:00:00")  # 18:00, the best outside 21-8
    night = utc("2026-01-25T21:00:00")  # every slot in a 2-hour window from 22:00 is quiet
    assert learner.when(p, night, 2 * HOUR_MS, "sms") == night


# ------------------------------------------------------------------------------- state
def test_the_state_is_in_the_blob_and_an_old_blob_loads_without_it():
    p = Profile("c1", known=True)
    SendTime("UTC", QuietHours()).observe(p, T0)
    back = from_parts("c1", to_blob(p), [], [])
    assert back.send_hours == p.send_hours and isinstance(back.send_hours, SendHours)
    old = orjson.loads(to_blob(p))
    del old["send_hours"]
    assert from_parts("c1", orjson.dumps(old), [], []).send_hours == []
    assert snapshot(back)["send_time"]["best_local_hour"] == 12
    assert "send_time" not in snapshot(Profile("c2"))


# ------------------------------------------------------------------------------- journey files
BEST = """journey: digest
entry: {event: signup}
steps:
  - send: {channel: email, template: digest/1, send_at: %s, within: %s}
"""


def test_a_typo_in_send_at_is_named_with_its_line_and_a_suggestion():
    with pytest.raises(JourneyError) as err:
        parse_journey(BEST % ("best_tme", "24h"), "digest.yaml")
    assert "digest.yaml:4: steps[0].send.send_at: unknown send_at 'best_tme' (did you mean 'best_time'?)" in str(err.value)
    with pytest.raises(JourneyError, match=r"within must be from 1h to 7d \(got '30m'\)"):
        parse_journey(BEST % ("best_time", "30m"), "digest.yaml")
    with pytest.raises(JourneyError, match="did you mean 'send_at'"):
        parse_journey(BEST.replace("send_at: %s, ", "sent_at: best_time, ") % "24h", "digest.yaml")
    assert parse_journey(BEST % ("best_time", "12h"), "d.yaml").steps[0].send.within_ms == 12 * HOUR_MS


# ------------------------------------------------------------------------------- in the engine
DIGEST = parse_journey(BEST % ("best_time", "24h"), "digest.yaml")


def _reader(e, contact: str = "c1", hour_utc: int = 19) -> None:
    """A contact who opened emails at ``hour_utc`` on five days before T0."""
    run(e, [line(f"o{contact}{d}", "email_open", T0 - d * DAY_MS + (hour_utc - 12) * HOUR_MS, contact, channel="email")
            for d in range(5, 0, -1)])


def test_a_best_time_send_waits_for_the_contacts_hour_then_goes():
    e = journey_engine(DIGEST)
    _reader(e)
    assert run(e, [line("s1", "signup", T0, "c1")]) == []  # noon: the best hour is 19:00
    state = e.store.load(["c1"])["c1"]
    assert state.journeys["digest"]["wait"] == {"kind": "send_at", "until": T0 + 7 * HOUR_MS}
    got = advance(e, T0 + DAY_MS)
    assert steps(got) == [("digest", "step-1", "email")]
    assert got[0]["event_time"] == "2026-01-05T19:00:00.000Z"


def test_a_contact_whose_hour_is_now_gets_it_at_once():
    e = journey_engine(DIGEST)
    _reader(e, hour_utc=12)
    assert steps(run(e, [line("s1", "signup", T0 + 60_000, "c1")])) == [("digest", "step-1", "email")]


def test_a_scheduled_best_time_send_survives_a_restart_on_redis(redis_url):
    from touchline.state import open_store
    from touchline.state.base import StoreOptions

    first = journey_engine(DIGEST, store=open_store(redis_url, StoreOptions()))
    _reader(first)
    assert run(first, [line("s1", "signup", T0, "c1")]) == []
    run(first, [], advance_to=T0 + 2 * HOUR_MS)
    first.store.close()
    second = journey_engine(DIGEST, store=open_store(redis_url, StoreOptions()))  # nothing in memory
    assert run(second, [], advance_to=T0 + 2 * HOUR_MS) == []  # the engine clock resumes where it was
    got = advance(second, T0 + DAY_MS)
    assert steps(got) == [("digest", "step-1", "email")]
    assert got[0]["event_time"] == "2026-01-05T19:00:00.000Z"
    assert advance(second, T0 + 3 * DAY_MS) == []  # sent once
    second.store.close()
    third = open_store(redis_url, StoreOptions())
    assert third.load(["c1"])["c1"].send_hours[19] == 5  # the learned hours were stored too
    third.close()


def _readers(e, hour_utc: int, count: int = 5) -> None:
    for n in range(count):
        _reader(e, f"r{n}", hour_utc)


def test_after_a_restart_a_new_contact_follows_the_populations_hour_on_redis(redis_url):
    """The population's pattern is in the store, not in the process: a contact with no history
    signing up after a restart waits for the hour everyone reads at (19:00), instead of being
    sent at once (an empty pattern: every hour ties, the soonest wins)."""
    from touchline.state import open_store
    from touchline.state.base import StoreOptions

    first = journey_engine(DIGEST, store=open_store(redis_url, StoreOptions()))
    _readers(first, hour_utc=19)
    first.shut_down()  # at shutdown: what was counted since the last share
    first.store.close()
    second = journey_engine(DIGEST, store=open_store(redis_url, StoreOptions()))
    assert run(second, [line("s1", "signup", T0, "new")]) == []  # noon: it waits
    state = second.store.load(["new"])["new"]
    assert state.send_hours == [] and state.journeys["digest"]["wait"]["until"] == T0 + 7 * HOUR_MS
    second.store.close()


def test_a_second_process_learns_the_pattern_the_first_one_counts(redis_url, monkeypatch):
    """Two engines on one Redis (the stream's and ``touchline serve``'s): what one counts
    reaches the other at its next share, while both run."""
    from touchline import batch_service
    from touchline.state import open_store
    from touchline.state.base import StoreOptions

    monkeypatch.setattr(batch_service, "SEND_HOURS_SHARE_SECONDS", 0.0)  # share at every batch
    stream = journey_engine(DIGEST, store=open_store(redis_url, StoreOptions()))
    api = journey_engine(DIGEST, store=open_store(redis_url, StoreOptions()))
    assert run(api, [line("x0", "page_view", T0 - 9 * DAY_MS, "x")]) == []  # started: the pattern is empty
    assert api.core.send_time.best_hour(Profile("new")) is None
    _readers(stream, hour_utc=19)
    run(stream, [], advance_to=T0 - HOUR_MS)  # the stream's next batch shares its counts
    assert run(api, [line("s1", "signup", T0, "new")]) == []
    assert api.core.send_time.best_hour(Profile("new")) == 19
    assert api.store.load(["new"])["new"].journeys["digest"]["wait"]["until"] == T0 + 7 * HOUR_MS
    stream.store.close()
    api.store.close()


def test_counts_a_store_could_not_take_are_passed_on_at_the_next_share(monkeypatch):
    """A share that fails (the store is away) loses nothing: the run stops as for any store
    error, and the counts go with the next share that succeeds."""
    from touchline import batch_service
    from touchline.state import MemoryStore
    from touchline.state.base import StoreUnavailable

    class FlakyStore(MemoryStore):
        failures = 0

        def add_send_hours(self, delta, cap):
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("redis went away")
            return super().add_send_hours(delta, cap)

    monkeypatch.setattr(batch_service, "SEND_HOURS_SHARE_SECONDS", 0.0)
    store = FlakyStore()
    e = journey_engine(DIGEST, store=store)
    _reader(e, hour_utc=19)  # five opens at 19:00
    store.failures = 1
    with pytest.raises(StoreUnavailable):
        run(e, [], advance_to=T0 - HOUR_MS)
    assert e.core.send_time.unshared()[19] == 5 and e.core.send_time.population[19] == 5
    run(e, [], advance_to=T0 - HOUR_MS)
    assert store.add_send_hours([0] * 24, cap=10**6)[19] == 5 and e.core.send_time.unshared() == [0] * 24


# ------------------------------------------------------------------------------- the experiment
def test_the_closed_loop_split_reports_both_arms(small_settings, tmp_path):
    """The shipped send-time example on a small closed loop: both arms are exposed, each
    arm's outcomes reported with the lift of best time over the fixed-time control."""
    from touchline.runner import run as run_engine

    settings = small_settings("send-time", **{
        "simulator.closed_loop": True, "simulator.preferred_hours": True, "simulator.contacts": 400,
        "simulator.days": 14, "journeys.files": ["examples/send-time/digest.yaml"],
        "experiments.conversion_types": ["email_open"], "experiments.window_days": 1, "experiments.min_per_arm": 1,
        "experiments.splits": {"send_time": {"journey": "digest", "step": "digest", "variants": [
            {"name": "fixed", "send_at": "now"}, {"name": "best_time", "send_at": "best_time", "within": "24h"}]}},
    })
    summary = run_engine(settings, progress=None).summary
    (est,) = [e for e in summary["experiments"]["lift"]["send_time"] if e["segment"]["dimension"] == "all"]
    print(est)
    assert est["arm"] == "best_time" and est["baseline"] == "fixed"
    assert est["treated"] > 0 and est["control"] > 0 and est["low"] <= est["lift"] <= est["high"]
    records = [json.loads(x) for x in (settings.output.dir / "experiments.jsonl").read_text().splitlines()]
    arms = {r["arm"] for r in records if r["kind"] == "exposure" and r["experiment"] == "send_time"}
    assert arms == {"fixed", "best_time"}
    # the simulator knows its effect on purchases, not on opens: no "true lift" to hold opens against
    assert all(e.get("true_lift") is None for ests in summary["experiments"]["lift"].values() for e in ests)
    assert "converts on email_open" in summary["experiments"]["truth"]["note"]


def test_send_time_splits_are_checked_with_the_key_named(tmp_path):
    from touchline.runner import check_splits
    from touchline.settings import ConfigError, load_settings

    def settings(**split):
        return load_settings(None, {"output.dir": tmp_path, "journeys.files": ["examples/send-time/digest.yaml"],
                                    "experiments.splits": {"st": {"variants": [
                                        {"name": "fixed", "send_at": "now"}, {"name": "best", "send_at": "best_time"}],
                                        **split}}})

    with pytest.raises(ConfigError, match="send_at .send time. apply to journey splits"):
        settings(action="welcome")
    with pytest.raises(ConfigError, match="need assignment = 'hash'"):
        settings(journey="digest", assignment="thompson")
    with pytest.raises(ConfigError, match="within needs send_at = 'best_time'"):
        load_settings(None, {"experiments.splits": {"st": {"journey": "digest", "variants": [
            {"name": "a"}, {"name": "b", "within": "12h"}]}}})
    from touchline.runner import _journey_runner

    bad = settings(journey="digest", step="morning")
    with pytest.raises(ConfigError, match=r"experiments.splits.st.step: 'morning' is not a send step: .*send steps: digest"):
        check_splits(bad, _journey_runner(bad))
    good = settings(journey="digest")
    check_splits(good, _journey_runner(good))


def test_a_variant_without_a_window_takes_the_send_steps_own():
    from touchline.decisions.experiment_runtime import ExperimentRuntime
    from touchline.decisions.experiments import ExperimentSettings

    runtime = ExperimentRuntime(ExperimentSettings(splits={"st": {"journey": "digest", "variants": [
        {"name": "fixed", "send_at": "now"}, {"name": "best", "send_at": "best_time"}]}}))
    e = journey_engine(DIGEST)
    runner = e.core.journeys
    runner.send_at_override = runtime.send_at_override
    arms = {c: runtime.send_at_override(c, "digest", "step-1") for c in (f"c-{i}" for i in range(40))}
    assert {a for a in arms.values()} == {("now", None), ("best_time", None)}
    step = DIGEST.steps[0]
    best = next(c for c, a in arms.items() if a[0] == "best_time")
    assert runner._send_timing(best, "digest", step) == ("best_time", DAY_MS)
    assert runtime.send_at_override("c-1", "other", "step-1") is None
