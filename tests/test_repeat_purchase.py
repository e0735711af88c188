"""The repeat-purchase population (``touchline simulate --repeat-purchase``) and the churn
benchmark on it (``python -m touchline.churn_bench``): determinism, the event contract, the
heterogeneity and silent dropout it is for, and every figure of the benchmark on a tiny run."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from touchline import churn_bench
from touchline.cli import main
from touchline.connectors.repeat_purchase import DAY_MS, RepeatPurchase, RepeatPurchaseSpec
from touchline.decisions.events import Event, parse_event

SPEC = RepeatPurchaseSpec(seed=3, customers=400, days=360)


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return list(RepeatPurchase(SPEC).lines())


@pytest.fixture(scope="module")
def purchases(lines: list[bytes]) -> dict[str, list[int]]:
    """Each customer's purchase times (ms), in order."""
    out: dict[str, list[int]] = defaultdict(list)
    for e in map(parse_event, lines):
        assert isinstance(e, Event)
        out[e.contact_id or ""].append(e.ts_ms)
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(lines: list[bytes]) -> None:
    assert list(RepeatPurchase(SPEC).lines()) == lines
    other = RepeatPurchaseSpec(seed=4, customers=SPEC.customers, days=SPEC.days)
    assert list(RepeatPurchase(other).lines()) != lines


def test_purchases_only_valid_in_time_order_inside_the_period(lines: list[bytes]) -> None:
    events = [parse_event(line) for line in lines]
    assert all(isinstance(e, Event) for e in events), [e for e in events if not isinstance(e, Event)][:1]
    valid = [e for e in events if isinstance(e, Event)]
    assert {e.type for e in valid} == {"purchase"}
    times = [e.ts_ms for e in valid]
    assert times == sorted(times)
    assert SPEC.start_ms <= times[0] and times[-1] < SPEC.end_ms
    assert len({e.event_id for e in valid}) == len(valid)
    values = [orjson.loads(line)["properties"]["value"] for line in lines]
    assert min(values) > 0 and statistics.pstdev(values) > 5  # spend differs


def test_first_purchases_staggered_over_the_acquisition_period(purchases: dict[str, list[int]]) -> None:
    firsts = sorted((times[0] - SPEC.start_ms) / DAY_MS for times in purchases.values())
    assert len(firsts) == SPEC.customers  # everyone buys once
    assert firsts[-1] < SPEC.acquisition_days and firsts[len(firsts) // 2] > 0.3 * SPEC.acquisition_days


def test_rates_differ_and_customers_drop_out_silently(purchases: dict[str, list[int]]) -> None:
    truth = RepeatPurchase(SPEC).truth()
    rates = np.array([c.rate for c in truth])
    assert rates.std() / rates.mean() > 0.5  # gamma-heterogeneous, not one rhythm
    counts = np.array([len(purchases[c.contact_id]) for c in truth])
    fast, slow = rates > np.median(rates), rates <= np.median(rates)
    assert counts[fast].mean() > 2 * counts[slow].mean()
    dead = [c for c in truth if c.death_ms < SPEC.end_ms - 90 * DAY_MS]
    assert 0.2 * len(truth) < len(dead) < 0.9 * len(truth)
    assert all(t < c.death_ms for c in dead for t in purchases[c.contact_id])  # nothing after dropout
    # ... and nothing marks it: a dead customer's last event is an ordinary purchase
    assert all(purchases[c.contact_id][-1] < SPEC.end_ms - 90 * DAY_MS for c in dead)


def test_bad_spec_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="mean_gap_days"):
        RepeatPurchaseSpec(mean_gap_days=0)


def test_cli_writes_the_population(tmp_path: Path) -> None:
    out = tmp_path / "rp.jsonl"
    assert main(["simulate", "--repeat-purchase", "--contacts", "50", "--days", "200", "--seed", "3",
                 "--out", str(out)]) == 0
    expected = list(RepeatPurchase(RepeatPurchaseSpec(seed=3, customers=50, days=200)).lines())
    assert out.read_bytes().splitlines() == expected


def test_benchmark_prints_every_figure_on_a_tiny_population(capsys: pytest.CaptureFixture[str]) -> None:
    assert churn_bench.main(["--customers", "300", "--seed", "2", "--json"]) == 0
    figures = orjson.loads(capsys.readouterr().out)
    methods = figures["methods"]
    engine = {f"engine {m}, observed at {o}" for m in ("logreg", "bgnbd", "bgnbd_logreg")
              for o in ("activity", "random times")}
    assert set(methods) >= engine | {"recency rule", "offline BG/NBD", "offline MBG/NBD",
                                     "engine, no configuration (set-up derived from the data)"}
    assert len(methods) == 12
    for name, g in methods.items():
        assert 0.0 <= g["roc_auc"] <= 1.0, name
        if name != "recency rule":
            assert 0.0 <= g["ece"] <= 1.0, name
    assert methods["recency rule"]["roc_auc"] > 0.6  # silent dropout: the long-silent rarely come back
    assert 0.0 < figures["truth"]["share"] < 1.0
    assert figures["data"]["known_at_cutoff"] == 300 and figures["parameters"]["horizon_days"] > 0
    for m in figures["engine_models"].values():
        assert 0 < m["positives"] < m["labels"]
    assert {"offline BG/NBD", "offline MBG/NBD"} <= set(figures["bgnbd_params_days"])
    at_activity = figures["engine_models"]["engine bgnbd, observed at activity"]["fitted_on_at_purchase_share"]
    at_random = figures["engine_models"]["engine bgnbd, observed at random times"]["fitted_on_at_purchase_share"]
    assert 0.5 < at_activity <= 1.0 and 0.0 <= at_random < 0.5  # what the random times are for


def test_benchmark_text_names_each_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert churn_bench.main(["--customers", "150", "--days", "300", "--horizon-days", "30"]) == 0
    text = capsys.readouterr().out
    for needle in ("events", "cut-off", "horizon H       30 days (--horizon-days", "churners", "recency rule",
                   "offline BG/NBD", "ROC AUC", "ECE", "churn labels", "time"):
        assert needle in text, needle


def test_benchmark_refuses_a_horizon_past_the_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert churn_bench.main(["--customers", "50", "--days", "90", "--horizon-days", "60"]) == 2
    assert "does not fit in the 30 days after the cut-off" in capsys.readouterr().err


def _old_purchases(tmp_path: Path) -> Path:
    """A small population's purchases moved back to 1997 (before the engine's default
    min_event_time, as CDNOW's are), shuffled, with a page view and a broken line among them."""
    sim = RepeatPurchase(RepeatPurchaseSpec(seed=5, customers=120, days=300))
    shift = 28 * 365 * DAY_MS + 7 * DAY_MS  # 2025-01-01 -> 1997-01-01
    docs = [orjson.loads(line) for line in sim.lines()]
    for doc in docs:
        doc["ts"] -= shift
    lines = [orjson.dumps(doc) for doc in reversed(docs)]
    lines[5:5] = [b'{"event_id": "v", "type": "page_view", "ts": 852076800000, "contact_id": "c-0"}', b"{oops"]
    path = tmp_path / "old.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_benchmark_on_a_file_of_ones_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--input FILE --cutoff TIME``: the figures for a file of real purchases, old ones too
    (min_event_time is moved back for the replay), in any order, other events among them."""
    path = _old_purchases(tmp_path)
    assert churn_bench.main(["--input", str(path), "--cutoff", "1997-08-01", "--horizon-days", "60", "--json"]) == 0
    figures = orjson.loads(capsys.readouterr().out)
    assert figures["parameters"]["input"] == str(path) and figures["parameters"]["cutoff"].startswith("1997-08-01")
    assert figures["data"]["events"] == len(path.read_bytes().splitlines())
    assert figures["data"]["known_at_cutoff"] == 120 and 0.0 < figures["truth"]["share"] < 1.0
    engine = figures["methods"]["engine bgnbd_logreg, observed at random times"]
    assert engine["roc_auc"] > 0.6 and figures["engine_models"]["engine logreg, observed at random times"]["labels"] > 0


@pytest.mark.parametrize(("args", "says"), [
    (["--input", "{missing}"], "no such file"),
    (["--input", "{file}", "--cutoff", "2030-01-01"], "--cutoff 2030-01-01: not inside the data (1997-01-01"),
    (["--input", "{file}", "--cutoff", "August"], "--cutoff 'August': not a time"),
    (["--input", "{file}", "--cutoff", "1997-10-01", "--horizon-days", "90"], "does not fit in the"),
])
def test_benchmark_on_a_file_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str], says: str) -> None:
    path = _old_purchases(tmp_path)
    given = [a.format(file=path, missing=tmp_path / "nope.jsonl") for a in args]
    assert churn_bench.main(given) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_benchmark_cutoff_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        churn_bench.main(["--cutoff", "2025-06-01"])
    assert exit_.value.code == 2 and "--cutoff goes with --input" in capsys.readouterr().err
