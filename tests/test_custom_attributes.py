"""Custom attributes (issue 21): windowed aggregates and traits defined in the settings, kept
per contact in bounded buckets, merged on identity stitching, stored in Redis, read by a
configured model as features and by journeys (entry and branch conditions), and shown as of
a time by the function the HTTP API uses. Custom event types declared in the settings are
usable in journey files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from test_engine_step import T0, line
from touchline.decisions.batches import RawBatch
from touchline.decisions.custom_attributes import (
    AttributeSpec, CustomAttributes, TraitSpec, attribute_values,
)
from touchline.decisions.journeys import JourneyError, Vocabulary, parse_journey
from touchline.decisions.profile import DAY_MS, HOUR_MS, Profile, apply_event, contact_key, merge_into
from touchline.runner import build_engine
from touchline.settings import ConfigError, load_settings
from touchline.state.codec import from_parts, log_entries, to_blob


def run(engine, lines: list[bytes]) -> list[dict]:
    """A batch through the engine as a source with nothing more to come (nothing held back for ordering)."""
    return engine.process(RawBatch(lines, "test", idle=True)).decisions

SHOES = AttributeSpec(event="product_view", where={"category": "shoes"}, window="7d")
SPEND = AttributeSpec(event="purchase", aggregate="sum", property="value", window="90d")
BRANDS = AttributeSpec(event="product_view", aggregate="distinct", property="brand", window="30d")
LAST_CATEGORY = AttributeSpec(event="product_view", aggregate="last", property="category", window="24h")
ATTRS = CustomAttributes({"shoe_views_7d": SHOES, "spend_90d": SPEND, "brands_30d": BRANDS,
                          "last_category": LAST_CATEGORY}, {"tier": TraitSpec.parse("identify.tier")})


def feed(profile: Profile, events: list[tuple[str, str, int, dict]], attrs: CustomAttributes = ATTRS) -> None:
    """Apply events as the engine does: the profile first, then the custom attributes."""
    for event_id, type_, ts, props in events:
        if apply_event(profile, event_id, type_, ts, props, {}):
            attrs.apply(profile, type_, ts, props)


# ------------------------------------------------------------------ aggregates, pure
def test_each_aggregate_over_its_window():
    p = Profile("c1", known=True)
    feed(p, [("v1", "product_view", T0, {"category": "shoes", "brand": "A"}),
             ("v2", "product_view", T0 + HOUR_MS, {"category": "hats", "brand": "B"}),
             ("v3", "product_view", T0 + 2 * DAY_MS, {"category": "shoes", "brand": "A"}),
             ("b1", "purchase", T0 + 2 * DAY_MS, {"value": 30.5}),
             ("b2", "purchase", T0 + 3 * DAY_MS, {"value": 12}),
             ("b3", "purchase", T0 + 3 * DAY_MS + 1, {"value": "12"}),  # not a number: not summed
             ("i1", "identify", T0 + 3 * DAY_MS, {"tier": "gold"})])
    assert attribute_values(p, T0 + 3 * DAY_MS + 1, ATTRS) == {
        "shoe_views_7d": 2, "spend_90d": 42.5, "brands_30d": 2, "last_category": None, "tier": "gold"}
    assert attribute_values(p, T0 + 2 * DAY_MS + HOUR_MS, ATTRS)["last_category"] == "shoes"
    # a week on, the first day has left the 7-day window (today and the 6 days before)
    later = attribute_values(p, T0 + 7 * DAY_MS, ATTRS)
    assert later["shoe_views_7d"] == 1 and later["spend_90d"] == 42.5 and later["tier"] == "gold"
    gone = attribute_values(p, T0 + 100 * DAY_MS, ATTRS)
    assert gone == {"shoe_views_7d": 0, "spend_90d": 0, "brands_30d": 0, "last_category": None, "tier": "gold"}


def test_a_long_sum_keeps_one_number_per_day_not_every_event():
    p, midnight = Profile("c1", known=True), T0 // DAY_MS * DAY_MS
    feed(p, [(f"b{i}", "purchase", midnight + i * 6 * HOUR_MS, {"value": 1.0}) for i in range(4 * 200)])  # 200 days
    tally = p.tallies["spend_90d"]
    assert len(tally.entries) == 90  # the window's days, however many events
    assert attribute_values(p, p.last_ts, ATTRS)["spend_90d"] == 4 * 90
    assert len(to_blob(p)) < 4_000


def test_hostile_values_cannot_bloat_the_state_or_the_sums():
    p = Profile("c1", known=True)
    feed(p, [(f"v{i}", "product_view", T0 + i, {"brand": f"{i:05d}" + "x" * 5000}) for i in range(3000)]
         + [("b1", "purchase", T0, {"value": 1e300}), ("b2", "purchase", T0, {"value": 5}),
            ("b3", "purchase", T0, {"value": True})])
    values = attribute_values(p, T0 + 3000, ATTRS)
    assert values["brands_30d"] == 100 and values["spend_90d"] == 5  # distinct saturates; absurd sums skipped
    assert sum(len(e[1]) for e in p.tallies["brands_30d"].entries) == 100
    assert len(orjson.dumps(p.tallies.to_json())) < 3_000


def test_a_distinct_value_seen_again_stays_in_the_window():
    p = Profile("c1")
    feed(p, [("v1", "product_view", T0, {"brand": "A"}), ("v2", "product_view", T0 + 20 * DAY_MS, {"brand": "A"}),
             ("v3", "product_view", T0 + 21 * DAY_MS, {"brand": "B"})])
    assert attribute_values(p, T0 + 21 * DAY_MS, ATTRS)["brands_30d"] == 2
    assert attribute_values(p, T0 + 45 * DAY_MS, ATTRS)["brands_30d"] == 2  # A seen again on day 20
    assert attribute_values(p, T0 + 51 * DAY_MS, ATTRS)["brands_30d"] == 0


def test_late_events_count_in_their_own_bucket_and_too_old_ones_not_at_all():
    p = Profile("c1", known=True)
    feed(p, [("v1", "product_view", T0 + 5 * DAY_MS, {"category": "shoes"}),
             ("v0", "product_view", T0 + 3 * DAY_MS, {"category": "shoes"}),  # late, in the window
             ("vx", "product_view", T0 - 3 * DAY_MS, {"category": "shoes"})])  # late, outside it
    assert [e[0] for e in p.tallies["shoe_views_7d"].entries] == [(T0 + 3 * DAY_MS) // DAY_MS,
                                                                   (T0 + 5 * DAY_MS) // DAY_MS]
    assert attribute_values(p, T0 + 5 * DAY_MS, ATTRS)["shoe_views_7d"] == 2


def test_the_same_events_in_another_order_give_the_same_values():
    events = [(f"e{i}", "product_view", T0 + i * 7 * HOUR_MS, {"category": "shoes", "brand": f"b{i % 3}"})
              for i in range(30)] + [("i1", "identify", T0 + 5, {"tier": "gold"}),
                                     ("i2", "identify", T0 + 5, {"tier": "silver"})]
    a, b = Profile("c1"), Profile("c1")
    feed(a, events)
    feed(b, sorted(events, key=lambda e: e[0]))
    now = T0 + 30 * 7 * HOUR_MS
    assert attribute_values(a, now, ATTRS) == attribute_values(b, now, ATTRS)


def test_text_values_are_cut_and_objects_ignored():
    p = Profile("c1")
    feed(p, [("i1", "identify", T0, {"tier": {"nested": 1}}), ("i2", "identify", T0 + 1, {"tier": "x" * 500})])
    assert attribute_values(p, T0 + 1, ATTRS)["tier"] == "x" * 200


def test_a_changed_definition_starts_afresh_and_a_removed_one_is_dropped():
    p = Profile("c1")
    feed(p, [("v1", "product_view", T0, {"category": "shoes"})])
    boots = AttributeSpec(event="product_view", where={"category": "boots"}, window="7d")
    redefined = CustomAttributes({"shoe_views_7d": boots}, {})
    assert attribute_values(p, T0, redefined) == {"shoe_views_7d": 0}  # not the shoes counted before
    feed(p, [("v2", "product_view", T0 + 1, {"category": "boots"})], redefined)
    assert attribute_values(p, T0 + 1, redefined) == {"shoe_views_7d": 1}
    assert set(p.tallies) == {"shoe_views_7d"}  # spend, brands, last_category, tier are no longer configured


# ------------------------------------------------------------------ stitching and storage
def test_an_anonymous_visitors_attributes_merge_into_the_contact():
    contact, visitor = Profile("c1", known=True), Profile("anon:a1")
    feed(contact, [("v1", "product_view", T0, {"category": "shoes", "brand": "A"}),
                   ("i1", "identify", T0, {"tier": "silver"})])
    feed(visitor, [("v2", "product_view", T0 + HOUR_MS, {"category": "shoes", "brand": "B"}),
                   ("b1", "purchase", T0 + HOUR_MS, {"value": 10}),
                   ("i2", "identify", T0 + 2 * HOUR_MS, {"tier": "gold"})])
    merge_into(contact, visitor)
    got = attribute_values(contact, T0 + 2 * HOUR_MS, ATTRS)
    assert got == {"shoe_views_7d": 2, "spend_90d": 10, "brands_30d": 2, "last_category": "shoes", "tier": "gold"}


def test_the_codec_keeps_the_tallies_and_reads_blobs_written_before_them():
    p = Profile("c1", known=True)
    feed(p, [("v1", "product_view", T0, {"category": "shoes", "brand": "A"}), ("i1", "identify", T0, {"tier": "gold"})])
    back = from_parts("c1", to_blob(p), log_entries(p), [])
    assert back.tallies == p.tallies
    assert attribute_values(back, T0, ATTRS) == attribute_values(p, T0, ATTRS)
    old = orjson.loads(to_blob(p))
    del old["tallies"]  # a blob from before custom attributes
    assert from_parts("c1", orjson.dumps(old), log_entries(p), []).tallies == {}


def test_stitched_attributes_survive_redis(tmp_path, redis_url):
    settings = _settings(tmp_path, {"state.url": redis_url})
    engine = build_engine(settings, CollectorRegistry(), keep_models=False)
    run(engine, [line("v1", "product_view", T0, anon="a1", properties={"category": "shoes"}),
                 line("v2", "product_view", T0 + 1, anon="a1", properties={"category": "shoes"}),
                 line("i1", "identify", T0 + 2, "c1", anon="a1", properties={"tier": "gold"})])
    engine.store.close()
    again = build_engine(settings, CollectorRegistry(), keep_models=False)
    profile = again.store.load([contact_key("c1")])["c1"]
    values = attribute_values(profile, T0 + 2, settings.custom_attributes())
    assert values["shoe_views_7d"] == 2 and values["tier"] == "gold"
    again.store.close()


# ------------------------------------------------------------------ settings
CONFIG = """
[events]
custom_types = ["review_submitted"]

[attributes.shoe_views_7d]
event = "product_view"
where = { category = "shoes" }
window = "7d"

[attributes.spend_90d]
event = "purchase"
aggregate = "sum"
property = "value"
window = "90d"

[traits]
tier = "identify.tier"
"""


def _settings(tmp_path: Path, overrides: dict | None = None, extra: str = ""):
    path = tmp_path / "touchline.toml"
    path.write_text(CONFIG + extra)
    base = {"output.dir": tmp_path / "out", "metrics.enabled": False, "policy.holdout_share": 0.0}
    return load_settings(path, {**base, **(overrides or {})})


@pytest.mark.parametrize("extra, says", [
    ('[attributes.views]\nevent = "product_veiw"\nwindow = "7d"\n',
     "attributes.views.event: unknown event type 'product_veiw' (did you mean 'product_view'?"),
    ('[attributes.views]\nevent = "product_view"\nwindow = "400d"\n',
     "attributes.views.window: window '400d' is longer than the 366 days kept per contact"),
    ('[attributes.views]\nevent = "product_view"\nwindow = "7"\n', "attributes.views.window: bad duration '7'"),
    ('[attributes.views]\nevent = "product_view"\nwindow = "30m"\n', "use whole hours or days"),
    ('[attributes.views]\nevent = "product_view"\nwindow = "7d"\nwhere = { category = { eqq = 1 } }\n',
     "attributes.views.where: category: unknown operator(s) ['eqq'] (did you mean 'eq'?)"),
    ('[attributes.views]\nevent = "product_view"\naggregate = "sum"\nwindow = "7d"\n',
     "aggregate sum needs property"),
    ('[attributes.views]\nevent = "product_view"\naggregate = "avg"\nwindow = "7d"\n',
     "attributes.views.aggregate: Input should be 'count', 'sum', 'distinct' or 'last'"),
    ('[attributes.views]\nevent = "product_view"\nwindw = "7d"\n', "attributes.views.windw: unknown key (did you mean 'window'?)"),
    ('[attributes.cart_value]\nevent = "add_to_cart"\nwindow = "7d"\n',
     "attributes.cart_value: 'cart_value' is a built-in profile field or model feature"),
    ('[attributes.Views]\nevent = "product_view"\nwindow = "7d"\n', "attributes.Views: a name is lowercase"),
    ('[attributes.views]\nevent = "product_view"\nwindow = "300d"\n[state]\nretention_days = 200\n',
     "attributes.views.window: 300d is longer than state.retention_days (200)"),
])
def test_a_bad_attribute_is_refused_naming_its_key(tmp_path, extra, says):
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, extra=extra)
    assert says in str(err.value)


def test_bad_traits_and_custom_types_are_refused_naming_their_key(tmp_path):
    with pytest.raises(ConfigError, match=r"traits.persona: 'identify' is not EVENT.PROPERTY"):
        _settings(tmp_path, extra='persona = "identify"\n')
    with pytest.raises(ConfigError, match=r"traits.tier: attributes.tier has this name already"):
        _settings(tmp_path, extra='[attributes.tier]\nevent = "identify"\nwindow = "7d"\n')
    with pytest.raises(ConfigError, match=r"events.custom_types: 'purchase' is a built-in event type"):
        _settings(tmp_path, {"events.custom_types": ["purchase"]})


def test_model_features_name_custom_attributes_or_are_refused_with_a_hint(tmp_path):
    ok = _settings(tmp_path, {"models.lead.features": ["cart_value", "shoe_views_7d", "tier=gold"]})
    assert ok.models.lead.features == ["cart_value", "shoe_views_7d", "tier=gold"]
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, {"models.lead.features": ["cart_value", "shoe_view_7d", "teir=gold"]})
    assert ("unknown feature(s) ['shoe_view_7d' (did you mean 'shoe_views_7d'?), "
            "'teir=gold' (did you mean 'tier=...'?)]") in str(err.value)


def test_the_default_configuration_has_no_custom_attributes():
    settings = load_settings(None)
    assert not settings.custom_attributes() and settings.vocabulary() == Vocabulary(frozenset(), frozenset())


# ------------------------------------------------------------------ in a model
class Recording:
    """A stand-in estimator that records what it is asked to score (and says 0.5)."""

    seen: list[dict] = []

    def predict_proba_one(self, x):
        Recording.seen.append(dict(x))
        return {True: 0.5, False: 0.5}

    def learn_one(self, x, y):
        return None


def test_a_configured_model_scores_on_custom_attributes(tmp_path):
    settings = _settings(tmp_path, {"models.lead.estimator": f"{__name__}:Recording",
                                    "models.lead.features": ["cart_value", "shoe_views_7d", "spend_90d", "tier=gold"]})
    engine = build_engine(settings, CollectorRegistry(), keep_models=False)
    Recording.seen.clear()
    run(engine, [line("i1", "identify", T0, "c1", properties={"tier": "gold"}),
                 line("b1", "purchase", T0 + 1, "c1", properties={"value": 20.0}),
                 line("v1", "product_view", T0 + 2, "c1", properties={"category": "shoes"}),
                 line("v2", "add_to_cart", T0 + 3, "c1", properties={"value": 5.0})])
    scored = Recording.seen[-1]
    assert set(scored) == {"cart_value", "shoe_views_7d", "spend_90d", "tier=gold"}
    assert scored["shoe_views_7d"] == pytest.approx(0.6931, abs=1e-4)  # log1p(1), like the built-in counts
    assert scored["spend_90d"] == pytest.approx(3.0445, abs=1e-4)  # log1p(20)
    assert scored["tier=gold"] == 1.0
    Recording.seen.clear()
    run(engine, [line("i2", "identify", T0 + 4, "c1", properties={"tier": "silver"}),
                 line("v3", "add_to_cart", T0 + 5, "c1", properties={"value": 5.0})])
    assert Recording.seen[-1]["tier=gold"] == 0.0  # another tier: the indicator is off


# ------------------------------------------------------------------ in a journey
JOURNEY = """
journey: review_thanks
entry:
  event: review_submitted
  profile: {shoe_views_7d: {gte: 2}}
steps:
  - branch:
      - profile: {tier: gold}
        goto: vip
    else: plain
  - id: vip
    send: {channel: email, template: thanks/vip}
    next: done
  - id: plain
    send: {channel: email, template: thanks/plain}
  - id: done
    exit: completed
"""


def test_a_journey_enters_and_branches_on_custom_attributes(tmp_path):
    path = tmp_path / "review.yaml"
    path.write_text(JOURNEY)
    settings = _settings(tmp_path, {"journeys.files": [path]})
    engine = build_engine(settings, CollectorRegistry(), keep_models=False)

    def shoes(contact: str, at: int) -> list[bytes]:
        return [line(f"{contact}-v{i}", "product_view", at + i, contact, properties={"category": "shoes"})
                for i in range(2)]

    events = [line("g-i", "identify", T0, "gold1", properties={"tier": "gold"}), *shoes("gold1", T0),
              *shoes("plain1", T0),
              line("one-v", "product_view", T0, "one1", properties={"category": "shoes"}),
              *shoes("old1", T0 - 8 * DAY_MS)]
    reviews = [line(f"{c}-r", "review_submitted", T0 + HOUR_MS, c) for c in ("gold1", "plain1", "one1", "old1")]
    run(engine, [e for e in events if b'"old1"' in e])
    got = run(engine, [e for e in events if b'"old1"' not in e]) + run(engine, reviews)
    sent = {d["contact_id"]: d["template"] for d in got if d.get("journey") == "review_thanks"}
    assert sent == {"gold1": "thanks/vip", "plain1": "thanks/plain"}  # one1 viewed once, old1 8 days ago


def test_journey_files_know_custom_types_and_attributes_from_the_settings(tmp_path):
    vocabulary = _settings(tmp_path).vocabulary()
    assert parse_journey(JOURNEY, "r.yaml", vocabulary).entry.event == "review_submitted"
    with pytest.raises(JourneyError) as err:
        parse_journey(JOURNEY, "r.yaml")  # no settings: neither the type nor the attribute is known
    text = str(err.value)
    assert "r.yaml:4: entry.event.event: unknown event type 'review_submitted'" in text or \
        "unknown event type 'review_submitted'" in text
    assert "declare your own in the settings' events.custom_types" in text
    typo = JOURNEY.replace("event: review_submitted", "event: review_sumbitted").replace("{tier: gold}", "{teir: gold}")
    with pytest.raises(JourneyError) as err:
        parse_journey(typo, "r.yaml", vocabulary)
    assert "unknown event type 'review_sumbitted' (did you mean 'review_submitted'?" in str(err.value)
    assert "unknown profile field(s) ['teir'] (did you mean 'tier'?)" in str(err.value)


def test_journeys_check_with_config_reads_the_custom_names(tmp_path, capsys):
    from touchline.cli import main

    path = tmp_path / "review.yaml"
    path.write_text(JOURNEY)
    config = tmp_path / "touchline.toml"
    config.write_text(CONFIG + f'\n[output]\ndir = "{tmp_path / "out"}"\n')
    assert main(["journeys", "check", str(path)]) == 2
    assert "declare your own in the settings' events.custom_types" in capsys.readouterr().err
    assert main(["journeys", "check", str(path), "--config", str(config)]) == 0
    assert "ok  " in capsys.readouterr().out
