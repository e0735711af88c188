"""The churn set-up derived from the data (decisions/purchase_setup.py): pure logic, no I/O."""

from __future__ import annotations

from touchline.decisions.purchase_setup import (
    DAY_MS, FALLBACK_HORIZON_DAYS, MAX_GAP_DAYS, PURCHASE_KEYS, PurchaseScan, announcement, derive)


def _buyers(gaps_days: list[int], contacts: int = 10) -> PurchaseScan:
    """Each contact buys on day 0 and then after each of ``gaps_days``."""
    scan = PurchaseScan()
    for c in range(contacts):
        day = 0
        scan.add("purchase", f"c{c}", 0)
        for gap in gaps_days:
            day += gap
            scan.add("purchase", f"c{c}", day * DAY_MS + 3_600_000)
    return scan


def test_purchase_data_gets_the_preset_with_three_median_gaps() -> None:
    d = derive(_buyers([20, 30, 40]), frozenset(), inactivity_days=7, retention_days=730)
    assert d.purchase_data
    assert d.applied == {"labels.churn_horizon_days": 90, **PURCHASE_KEYS}
    assert d.kept == ()


def test_clickstream_data_is_left_alone() -> None:
    scan = _buyers([10, 10])  # 30 purchases ...
    for i in range(31):  # ... and more page views of the same known contacts
        scan.add("page_view", "c1", i * DAY_MS)
    for i in range(1000):  # anonymous visitors do not count either way
        scan.add("purchase", None, 0)
    assert scan.purchase_share < 0.5 and not scan.is_purchase_data()
    d = derive(scan, frozenset(), 7, 730)
    assert (d.purchase_data, d.applied) == (False, {})
    assert "not purchase data" in announcement(scan, d, "f")[0]


def test_keys_the_user_set_win_whatever_their_value() -> None:
    explicit = frozenset({"labels.churn_horizon_days", "labels.churn_returns", "models.churn.calibration"})
    d = derive(_buyers([20, 30, 40]), explicit, 7, 730)
    assert d.applied == {"labels.churn_observations": "random_times"}  # models.churn.* left whole
    assert set(d.kept) == {"labels.churn_horizon_days", "labels.churn_returns", "models.churn.estimator",
                           "models.churn.params"}
    lines = announcement(_buyers([20]), d, "f")
    assert any(line.startswith("  kept as you set them: labels.churn_horizon_days") for line in lines)


def test_every_key_set_derives_nothing_but_says_so() -> None:
    explicit = frozenset({"labels.churn_horizon_days", *PURCHASE_KEYS})
    scan = _buyers([5])
    d = derive(scan, explicit, 7, 730)
    assert d.applied == {}
    assert announcement(scan, d, "f") == [
        "churn set-up: f is purchase data (100% of the known contacts' 20 events are purchases); every key of the "
        "purchase set-up is set in your settings: nothing derived"]


def test_one_purchase_per_customer_falls_back_to_a_stated_horizon() -> None:
    scan = _buyers([], contacts=50)
    assert scan.median_gap_days is None
    d = derive(scan, frozenset(), 7, 730)
    assert d.applied["labels.churn_horizon_days"] == FALLBACK_HORIZON_DAYS
    text = "\n".join(announcement(scan, d, "f"))
    assert f"labels.churn_horizon_days = {FALLBACK_HORIZON_DAYS}   (no contact bought on two days" in text


def test_same_day_orders_are_one_purchase_day_and_disorder_gives_no_gap() -> None:
    scan = PurchaseScan()
    for ts in (0, 3_600_000, 10 * DAY_MS, 5 * DAY_MS, 12 * DAY_MS):
        scan.add("purchase", "c", ts)
    assert dict(scan.gaps) == {10: 1, 2: 1}  # 0 -> 10 (same day ignored), 5 is before 10: none, 10 -> 12


def test_an_absurd_gap_is_one_capped_gap() -> None:
    scan = PurchaseScan()
    scan.add("purchase", "c", 0)
    scan.add("purchase", "c", 10**15)
    assert dict(scan.gaps) == {MAX_GAP_DAYS: 1}


def test_the_horizon_fits_the_retention() -> None:
    long_gaps = _buyers([200, 200])  # 3 median gaps: 600 days
    d = derive(long_gaps, frozenset(), 7, 365)
    assert d.applied["labels.churn_horizon_days"] == 600 and d.applied["state.retention_days"] == 1214
    d = derive(long_gaps, frozenset({"state.retention_days"}), 7, 365)
    assert d.applied["labels.churn_horizon_days"] == 357 and "state.retention_days" not in d.applied
    assert "capped below state.retention_days (365)" in d.horizon_why


def test_an_empty_scan_is_not_purchase_data() -> None:
    scan = PurchaseScan()
    assert not scan.is_purchase_data() and derive(scan, frozenset(), 7, 730).applied == {}


def test_memory_is_bounded_by_the_tracked_contacts(monkeypatch) -> None:
    import touchline.decisions.purchase_setup as ps

    monkeypatch.setattr(ps, "MAX_TRACKED_CONTACTS", 2)
    scan = PurchaseScan()
    for c in ("a", "b", "c", "c"):
        scan.add("purchase", c, 0)
    assert (scan.purchases, scan.untracked, len(scan._last_day)) == (4, 2, 2)
    assert "gaps taken from the first" in "\n".join(announcement(scan, derive(scan, frozenset(), 7, 730), "f"))
