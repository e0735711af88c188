"""Models across their life: checkpoints and restarts, corrupt checkpoints, hot swap and
promotion in a running engine, delayed feedback, the ``touchline models`` commands and
the model metrics. Real files and a real Redis; no fakes of either."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from touchline.cli import main
from touchline.decisions.evaluation import Evaluation
from touchline.decisions.batches import RawBatch
from touchline.model_commands import deploy, model_config, promote
from touchline.runner import build_engine, run
from touchline.state.model_store import MAGIC, FileModelStore, RedisModelStore, new_revision


class Constant:
    """A model that always says 0.5 and learns nothing: any model with signal beats it."""

    def predict_proba_one(self, x):
        return {True: 0.5, False: 0.5}

    def learn_one(self, x, y):
        return None


class Recorder:
    """Logistic regression that also records what it was trained on."""

    seen: list[dict] = []

    def __init__(self):
        from touchline.decisions.estimators import default_pipeline

        self.inner = default_pipeline()

    def predict_proba_one(self, x):
        return self.inner.predict_proba_one(x)

    def learn_one(self, x, y):
        Recorder.seen.append(dict(x))
        self.inner.learn_one(x, y)


CONSTANT = f"{__name__}:Constant"


def _models(summary: dict) -> dict:
    return summary["models"]


RESUME = {"models.restore": True}  # a replay starts fresh unless told to continue (models.restore = auto)


# ------------------------------------------------------------------ checkpoints
def test_a_replay_starts_fresh_models_by_default_and_says_so(small_settings):
    first = run(small_settings(), progress=None).summary
    second = run(small_settings(), progress=None).summary
    assert second["model_store"]["start"] == "fresh" and second["model_store"]["resumed_from"] is None
    assert second["model_store"]["restored"] == [] and _models(second)["lead"]["origin"] == "fresh"
    assert _models(second)["lead"]["labels"] == _models(first)["lead"]["labels"]


def test_a_restart_continues_learning_where_it_stopped(small_settings):
    first = run(small_settings(**RESUME), progress=None).summary
    assert first["model_store"]["restored"] == []
    labels_then = _models(first)["lead"]["labels"]
    assert labels_then > 0
    second = run(small_settings(**RESUME), progress=None).summary
    assert second["model_store"]["start"] == "resumed"
    assert second["model_store"]["resumed_from"] == second["model_store"]["url"]
    restored = second["model_store"]["restored"]
    assert any(r.startswith("lead ") for r in restored) and any(r.startswith("churn ") for r in restored)
    lead = _models(second)["lead"]
    assert lead["origin"].startswith("restored")
    assert lead["labels"] > labels_then  # the curve continues, it did not start again


def test_models_restore_off_starts_fresh_but_still_saves(small_settings):
    run(small_settings(), progress=None)
    again = run(small_settings(**{"models.restore": False}), progress=None).summary
    assert again["model_store"]["restored"] == []
    assert _models(again)["lead"]["origin"] == "fresh"


def _corrupt(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00\xffnot a checkpoint at all")
    elif how == "flipped":
        path.write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
    elif how == "old_river":
        head, _, payload = blob[len(MAGIC):].partition(b"\n")
        header = orjson.loads(head)
        header["river"] = "0.19.0"
        path.write_bytes(MAGIC + orjson.dumps(header) + b"\n" + payload)
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how,says", [
    ("truncated", "checksum mismatch"), ("garbage", "bad magic"), ("flipped", "checksum mismatch"),
    ("old_river", "saved with River 0.19.0"), ("empty", "bad magic"),
])
def test_a_corrupt_checkpoint_is_reported_and_the_model_starts_fresh(small_settings, how, says):
    settings = small_settings(**RESUME)
    run(settings, progress=None)
    models_dir = settings.output.dir / "models"
    [lead_ckpt] = list((models_dir / "lead").glob("*.ckpt"))
    _corrupt(lead_ckpt, how)
    summary = run(settings, progress=None).summary
    refused = summary["model_store"]["refused"]
    assert len(refused) == 1 and says in refused[0] and "lead" in refused[0], refused
    assert _models(summary)["lead"]["origin"] == "fresh"
    assert _models(summary)["churn"]["origin"].startswith("restored")  # only the bad one is dropped
    # and the next run has a good checkpoint again
    assert run(settings, progress=None).summary["model_store"]["refused"] == []


def test_signed_checkpoints_refuse_one_signed_with_another_key(small_settings):
    run(small_settings(**{"models.checkpoint_key": "first-secret"}), progress=None)
    summary = run(small_settings(**{"models.checkpoint_key": "another", **RESUME}), progress=None).summary
    assert all("not signed with models.checkpoint_key" in r for r in summary["model_store"]["refused"])
    assert len(summary["model_store"]["refused"]) == 2


def test_a_changed_configuration_is_a_new_version_and_old_checkpoints_go(small_settings):
    settings = small_settings()
    run(settings, progress=None)
    old = {p.name for p in (settings.output.dir / "models" / "lead").glob("*.ckpt")}
    changed = small_settings(**{"models.lead.params": {"learning_rate": 0.05}})
    summary = run(changed, progress=None).summary
    assert _models(summary)["lead"]["origin"] == "fresh"
    assert "configuration changed" in json.dumps(
        json.loads((settings.output.dir / "models" / "deployment.json").read_text())["history"])
    now = {p.name for p in (settings.output.dir / "models" / "lead").glob("*.ckpt")}
    assert now and not (now & old)  # the retired version's checkpoint was removed


def test_checkpoints_live_in_the_state_stores_redis(redis_url, small_settings):
    settings = small_settings(**{"state.url": redis_url, **RESUME})
    run(settings, progress=None)
    store = RedisModelStore(redis_url)
    assert store.checkpoints("lead") and store.checkpoints("churn")
    assert store.read_deployment()["revision"] == 1
    assert not (settings.output.dir / "models").exists()
    second = run(settings, progress=None).summary
    assert second["model_store"]["url"].startswith("redis://")
    assert len(second["model_store"]["restored"]) == 2


# ------------------------------------------------------------------ model store contract
@pytest.fixture(params=["file", "redis"])
def model_store(request, tmp_path):
    if request.param == "file":
        yield FileModelStore(f"file://{tmp_path / 'models'}")
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisModelStore(url)
        yield store
        store.close()


def test_store_contract_concurrent_deployment_updates_are_never_lost(model_store):
    """Two writers at once (a promotion command and an automatic promotion): both changes
    end up in the history, whether the store serialises them (file lock) or retries the
    loser (Redis compare-and-set)."""
    import threading
    import time

    assert model_store.read_deployment() is None
    first = model_store.update_deployment(lambda cur: new_revision(cur, {"lead": {}}, "configured", seed="s"))
    assert first["revision"] == 1
    other = threading.Thread(
        target=lambda: model_store.update_deployment(lambda c: new_revision(c, {"lead": {}}, "other writer")))

    def slow(cur):
        if not other.is_alive() and other.ident is None:
            other.start()
            time.sleep(0.3)  # the other writer runs (or waits for the lock) meanwhile
        return new_revision(cur, {"lead": {}}, "mine")

    model_store.update_deployment(slow)
    other.join(5)
    doc = model_store.read_deployment()
    assert doc["revision"] == 3
    assert sorted(h["change"] for h in doc["history"]) == ["configured", "mine", "other writer"]
    assert model_store.update_deployment(lambda cur: None)["revision"] == 3  # no change, no new revision


def test_store_contract_checkpoints_and_status(model_store):
    model_store.save_checkpoint("lead", "logreg-1", b"one")
    model_store.save_checkpoint("lead", "hat-2", b"two")
    model_store.save_checkpoint("churn", "logreg-1", b"three")
    assert model_store.checkpoints("lead") == ["hat-2", "logreg-1"]
    assert model_store.load_checkpoint("lead", "hat-2") == b"two"
    assert model_store.load_checkpoint("lead", "nope") is None
    model_store.delete_checkpoint("lead", "hat-2")
    assert model_store.checkpoints("lead") == ["logreg-1"]
    assert model_store.read_status() is None
    model_store.write_status({"revision": 4})
    assert model_store.read_status() == {"revision": 4}


# ------------------------------------------------------------------ hot swap and promotion
def _lines(tmp_path: Path, contacts: int = 300, days: int = 10) -> list[bytes]:
    path = tmp_path / "events.jsonl"
    assert main(["simulate", "--out", str(path), "--contacts", str(contacts), "--days", str(days), "--seed", "3",
                 "--malformed-rate", "0"]) == 0
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()]


def test_deploy_and_promote_reach_a_running_engine_between_batches(tmp_path, small_settings):
    """The engine keeps processing; a deploy adds a shadow challenger, a promotion makes it
    champion with what it learned in shadow, and no event is lost or scored twice."""
    settings = small_settings(**{"models.poll_seconds": 0.001})
    engine = build_engine(settings, CollectorRegistry())
    lines = _lines(tmp_path)
    third = len(lines) // 3
    records: list[list[dict]] = [[], [], []]
    hat = model_config("lead", "hat(grace_period=50)")
    for phase in range(3):
        if phase == 1:
            deploy(settings, "lead", hat, "challenger")
        if phase == 2:
            slot = engine.models["lead"]
            shadow_labels = slot.challengers[0].labels
            assert shadow_labels > 0  # it learned in shadow
            promote(settings, "lead", hat.version, force=True)  # the mechanics, whatever the figures
        chunk = lines[phase * third:(phase + 1) * third] if phase < 2 else lines[2 * third:]
        for i in range(0, len(chunk), 100):
            records[phase] += engine.process(RawBatch(chunk[i:i + 100], "events.jsonl", i + 1)).decisions
    engine.keeper.close()
    before, shadowed, after = records
    assert all(r["scores"]["lead"]["version"].startswith("logreg-") for r in before)
    assert all("challengers" not in r["scores"]["lead"] for r in before)
    assert shadowed and all(set(r["scores"]["lead"]["challengers"]) == {hat.version}
                            for r in shadowed if "lead" in r["scores"])
    assert after and all(r["scores"]["lead"]["version"] == hat.version for r in after if "lead" in r["scores"])
    assert engine.models["lead"].champion.labels >= shadow_labels  # kept what it learned
    assert engine.totals.lines == len(lines)
    history = [h["change"] for h in json.loads((settings.output.dir / "models" / "deployment.json")
                                                  .read_text())["history"]]
    assert history[0] == "configured" and "deployed as challenger" in history[1] and "promoted" in history[2]


def test_a_promotion_survives_a_restart(small_settings):
    settings = small_settings(**RESUME)
    run(settings, progress=None)
    deploy(settings, "lead", model_config("lead", "hat"), "challenger")
    run(settings, progress=None)  # the challenger learns in shadow
    promote(settings, "lead", None, force=True)
    summary = run(settings, progress=None).summary
    lead = _models(summary)["lead"]
    assert lead["estimator"] == "hat" and lead["origin"].startswith("restored")  # with its shadow learning
    assert "challengers" not in lead


def test_automatic_promotion_when_the_challenger_is_better(small_settings):
    settings = small_settings(**{
        "models.lead.estimator": CONSTANT,
        "models.lead.challenger": {"estimator": "logreg"},
        "models.lead.promote": {"metric": "roc_auc", "margin": 0.02, "min_labels": 150},
        # labels learned as they resolve: on this small run's 183 labels, held ones would leave
        # the challenger too few to pull ahead (the promotion, not the learning, is tested here)
        "labels.learn_at_horizon": [],
    })
    summary = run(settings, progress=None).summary
    assert any("promoted to champion" in c for c in summary["model_store"]["changes"]), summary["model_store"]
    assert _models(summary)["lead"]["estimator"] == "logreg"
    decisions = [json.loads(ln) for ln in (settings.output.dir / "decisions.jsonl").read_text().splitlines()]
    versions = [d["scores"]["lead"]["version"] for d in decisions if "lead" in d["scores"]]
    assert versions[0].startswith("Constant-") and versions[-1].startswith("logreg-")
    history = json.loads((settings.output.dir / "models" / "deployment.json").read_text())["history"]
    assert history[-1]["change"].startswith("lead: promoted logreg-") and "auto: roc_auc" in history[-1]["change"]


def test_challenger_and_champion_are_graded_on_the_same_labels(small_settings):
    settings = small_settings(**{"models.lead.challenger": {"estimator": "hat"}})
    lead = _models(run(settings, progress=None).summary)["lead"]
    [challenger] = lead["challengers"]
    assert challenger["labels"] == lead["labels"] == challenger["champion_on_same_labels"]["labels"]


# ------------------------------------------------------------------ delayed feedback
def test_models_learn_from_features_captured_when_they_scored(small_settings):
    """A lead label resolves days after the score: the model must see the features of the
    scoring moment (the purchase that resolves it is not in them), never those at label time."""
    Recorder.seen.clear()
    T = 1767614400000
    events = [
        {"event_id": "e1", "type": "identify", "contact_id": "c1", "ts": T, "properties": {"email": "a@x.io"}},
        {"event_id": "e2", "type": "add_to_cart", "contact_id": "c1", "ts": T + 60_000,
         "properties": {"value": 40.0, "sku": "s1"}},
        {"event_id": "e3", "type": "purchase", "contact_id": "c1", "ts": T + 86_400_000,
         "properties": {"value": 40.0, "order_id": "o1"}},
    ]
    settings = small_settings(**{"models.lead.estimator": f"{__name__}:Recorder", "labels.sample_rate": 1.0,
                                 "models.store": "off"})
    engine = build_engine(settings, CollectorRegistry())
    Recorder.seen.clear()  # the configuration's trial run learned too
    engine.process(RawBatch([orjson.dumps(e) for e in events], "t", 1))
    assert Recorder.seen == [], "a lead label is learned at its observation's horizon (labels.learn_at_horizon)"
    later = {"event_id": "e4", "type": "page_view", "contact_id": "c2", "ts": T + 4 * 86_400_000, "properties": {}}
    engine.process(RawBatch([orjson.dumps(later)], "t", 4, final=True))
    assert len(Recorder.seen) == 1, "the purchase should resolve the one lead observation"
    x = Recorder.seen[0]
    # counts are log1p: one add_to_cart in the last hour and no purchase, as of the add_to_cart;
    # at label time (a day later) the 1h count is 0 and the 30d purchase count is not
    assert x["n_purchase_30d"] == 0 and x["n_add_to_cart_1h"] == pytest.approx(math.log1p(1))


# ------------------------------------------------------------------ metrics
def test_model_metrics_per_score_and_role_on_a_fresh_registry(small_settings):
    registry = CollectorRegistry()
    settings = small_settings(**{"models.lead.challenger": {"estimator": "hat"}})
    summary = run(settings, progress=None, registry=registry).summary
    lead = _models(summary)["lead"]
    get = registry.get_sample_value
    for role in ("champion", "challenger"):
        assert get("touchline_model_graded_labels", {"model": "lead", "role": role}) == lead["labels"]
        assert 0 < get("touchline_model_roc_auc", {"model": "lead", "role": role}) < 1
        assert get("touchline_model_log_loss", {"model": "lead", "role": role}) > 0
        assert get("touchline_model_calibration_error_ratio", {"model": "lead", "role": role}) >= 0
    buckets = [s for m in registry.collect() if m.name == "touchline_model_calibration_labels"
               for s in m.samples if s.labels["model"] == "lead" and s.labels["role"] == "champion"]
    assert sum(s.value for s in buckets) == lead["labels"]
    assert get("touchline_model_label_delay_seconds_count", {"model": "lead"}) == lead["labels"]
    assert get("touchline_model_info", {"model": "lead", "role": "champion", "version": lead["version"],
                                        "estimator": "logreg"}) == 1
    assert get("touchline_model_checkpoints_total", {"outcome": "ok"}) >= 1
    names = {m.name for m in registry.collect()}
    assert "touchline_model_drift" in names


def test_drift_is_detected_when_the_error_rate_shifts():
    ev = Evaluation()
    detected = [ev.update(True, 0.9) for _ in range(600)]
    assert not any(detected)
    detected = [ev.update(False, 0.9) for _ in range(300)]  # same scores, the outcome flipped
    assert any(detected) and ev.drifts >= 1


def test_a_model_getting_better_is_not_drift():
    ev = Evaluation()
    for _ in range(600):
        ev.update(False, 0.9)
    assert not any(ev.update(True, 0.9) for _ in range(300)) and ev.drifts == 0  # the error fell


# ------------------------------------------------------------------ the commands
def test_models_evaluate_compares_candidates_on_the_same_labels(tmp_path, capsys):
    path = tmp_path / "ev.jsonl"
    path.write_bytes(b"\n".join(_lines(tmp_path)) + b"\n{not json\n")
    assert main(["models", "evaluate", "--input", str(path), "--model", "logreg",
                 "--model", "hat(grace_period=50)", "--score", "lead", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["scores"]["lead"]
    assert [r["model"] for r in rows] == ["logreg", "hat"] and rows[1]["params"] == {"grace_period": 50}
    assert rows[0]["labels"] == rows[1]["labels"] > 0
    assert result["invalid_lines"] == 1
    assert main(["models", "evaluate", "--input", str(path), "--model", "logreg", "--score", "churn"]) == 0
    text = capsys.readouterr().out
    assert "ROC AUC" in text and "calibration" in text and "churn" in text


@pytest.mark.parametrize("argv,says", [
    (["--model", "nope"], "neither a registered model"),
    (["--model", "hat(grace_period=)"], "name=value"),
    (["--model", "hat(no_such=1)"], "does not take these params"),
    (["--model", "river.linear_model.LinearRegression"], "no predict_proba_one"),
    (["--model", "logreg", "--features", "n_all_1h,bogus"], "unknown feature"),
])
def test_models_evaluate_rejects_bad_models_by_name(tmp_path, capsys, argv, says):
    path = tmp_path / "ev.jsonl"
    path.write_text("")
    assert main(["models", "evaluate", "--input", str(path), *argv]) == 2
    assert says in capsys.readouterr().err


def test_models_evaluate_missing_input(tmp_path, capsys):
    assert main(["models", "evaluate", "--input", str(tmp_path / "nope.jsonl"), "--model", "logreg"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_deploy_promote_status_commands(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    assert main(["models", "promote", "lead", *out]) == 1
    assert "has no challenger" in capsys.readouterr().err
    assert main(["models", "deploy", "lead", "arf(n_models=3)", *out]) == 0
    assert "revision 2" in capsys.readouterr().out  # 1 = the configuration it started from
    assert main(["models", "status", *out]) == 0
    text = capsys.readouterr().out
    assert "challenger arf-" in text and "arf(n_models=3)" in text
    assert main(["models", "promote", "lead", "--version", "arf-00000000", *out]) == 1
    assert "not arf-00000000" in capsys.readouterr().err
    assert main(["models", "promote", "lead", *out]) == 1  # no engine has graded it: no figures
    assert "no paired figures for challenger arf-" in capsys.readouterr().err
    assert main(["models", "promote", "lead", "--force", *out]) == 0
    captured = capsys.readouterr()
    assert "promoted arf-" in captured.out and "forced without paired figures" in captured.out
    assert "warning: lead: manual, forced without paired figures" in captured.err
    assert main(["models", "deploy", "lead", "nope", *out]) == 2
    assert main(["models", "list"]) == 0
    assert "hat" in capsys.readouterr().out


def test_a_deployed_churn_model_with_a_horizon_asks_the_labels_question(tmp_path, capsys):
    """``models deploy churn bgnbd`` predicts over labels.churn_horizon_days, as a configured one
    does (not its own 90-day default, graded on 7-day labels); another horizon is refused, naming both."""
    out = ["--out", str(tmp_path / "o")]
    assert main(["models", "deploy", "churn", "bgnbd", *out]) == 0
    capsys.readouterr()
    assert main(["models", "status", *out]) == 0
    assert "bgnbd(horizon_days=7.0)" in capsys.readouterr().out
    assert main(["models", "deploy", "churn", "bgnbd(horizon_days=90)", "--as", "champion", *out]) == 1
    assert ("models.churn.params.horizon_days (90) differs from labels.churn_horizon_days (7)"
            in capsys.readouterr().err)
    assert main(["models", "deploy", "churn", "bgnbd(horizon_days=7)", "--as", "champion", *out]) == 0


# ------------------------------------------------------------------ issue 22: a safer manual promotion
def _figures(out: Path, version: str, labels: int, challenger: dict, champion: dict) -> None:
    """The status document an engine's checkpoint writes, with one challenger beside the champion."""
    import time

    FileModelStore(f"file://{out / 'models'}").write_status({
        "revision": 2, "saved_at": time.time(), "scores": {"lead": {"models": [], "head_to_head": [
            {"challenger": version, "labels": labels, "challenger_metrics": challenger,
             "champion_metrics": champion}]}}})


def _history(out: Path) -> list[str]:
    return [h["change"] for h in json.loads((out / "models" / "deployment.json").read_text())["history"]]


def test_promote_refuses_a_challenger_worse_on_the_paired_labels_unless_forced(tmp_path, capsys):
    out = tmp_path / "o"
    hat = model_config("lead", "hat").version
    from touchline.settings import load_settings

    champion = load_settings(None, {}).models.lead.champion().version  # the configured lead champion
    assert main(["models", "deploy", "lead", "hat", "--out", str(out)]) == 0
    _figures(out, hat, 1200, {"roc_auc": 0.52, "log_loss": 0.71}, {"roc_auc": 0.68, "log_loss": 0.55})
    capsys.readouterr()
    assert main(["models", "promote", "lead", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert (f"touchline: lead: challenger {hat} did worse than champion {champion}: ROC AUC 0.5200 vs 0.6800 "
            "(log loss 0.7100 vs 0.5500) on the same 1,200 labels (figures of the last checkpoint, ") in err
    assert "Promote anyway with --force" in err and len(err.strip().splitlines()) == 1
    assert len(_history(out)) == 2 and "promoted" not in _history(out)[-1]  # nothing changed
    assert main(["models", "promote", "lead", "--force", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: lead: manual, forced although worse: ROC AUC 0.5200 vs 0.6800" in captured.err
    assert _history(out)[-1] == (f"lead: promoted {hat} over {champion} (manual, forced although worse: ROC AUC "
                                 "0.5200 vs 0.6800 (log loss 0.7100 vs 0.5500) on the same 1,200 labels)")


def test_promote_goes_ahead_when_the_challenger_did_better_and_records_why(tmp_path, capsys):
    out = tmp_path / "o"
    hat = model_config("lead", "hat").version
    assert main(["models", "deploy", "lead", "hat", "--out", str(out)]) == 0
    _figures(out, hat, 800, {"roc_auc": 0.74, "log_loss": 0.5}, {"roc_auc": 0.68, "log_loss": 0.55})
    assert main(["models", "promote", "lead", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "(manual: ROC AUC 0.7400 vs 0.6800 (log loss 0.5000 vs 0.5500) on the same 800 labels)" in captured.out


@pytest.mark.parametrize("rows, why", [
    (None, "no checkpoint with figures yet"),
    ({"roc_auc": None, "log_loss": 0.4}, "figures of the last checkpoint"),  # one class so far: no ROC AUC
])
def test_promote_without_paired_figures_needs_force(tmp_path, capsys, rows, why):
    out = tmp_path / "o"
    hat = model_config("lead", "hat").version
    assert main(["models", "deploy", "lead", "hat", "--out", str(out)]) == 0
    if rows is not None:
        _figures(out, hat, 40, rows, {"roc_auc": None, "log_loss": 0.3})
    capsys.readouterr()
    assert main(["models", "promote", "lead", "--out", str(out)]) == 1
    assert f"lead: no paired figures for challenger {hat} yet ({why}" in capsys.readouterr().err


def test_the_comparison_follows_the_scores_promotion_metric():
    from touchline.decisions.champion import paired

    row = {"challenger": "v", "labels": 10, "challenger_metrics": {"roc_auc": 0.7, "log_loss": 0.6},
           "champion_metrics": {"roc_auc": 0.6, "log_loss": 0.5}}
    assert paired([row], "v", "roc_auc").worse is False  # higher ROC AUC
    assert paired([row], "v", "log_loss").worse is True  # but higher log loss
    assert paired([row], "v", "log_loss").describe().startswith("log loss 0.6000 vs 0.5000 (ROC AUC 0.7000 vs")


def test_a_deployed_model_this_command_cannot_import_is_one_line(tmp_path, capsys, monkeypatch):
    """``models status`` names the model and its import path instead of a validation dump; a
    promotion that needs to build it says the same in one line; so does the engine's reading."""
    import sys

    from touchline.model_keeper import parse_scores
    from touchline.state.model_store import ModelStoreError

    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "tl_gone_plugin.py").write_text(
        "from river import linear_model\n\ndef make():\n    return linear_model.LogisticRegression()\n")
    monkeypatch.syspath_prepend(str(plug))
    out = tmp_path / "o"
    assert main(["models", "deploy", "lead", "tl_gone_plugin:make", "--out", str(out)]) == 0
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(plug)])
    monkeypatch.delitem(sys.modules, "tl_gone_plugin")
    capsys.readouterr()

    assert main(["models", "status", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("challenger tl_gone_plugin:make (cannot be built by this command: cannot import 'tl_gone_plugin:make': "
            "No module named 'tl_gone_plugin')") in text
    assert "validation error" not in text and "pydantic" not in text

    assert main(["models", "promote", "lead", "--force", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == ("touchline: lead challenger 'tl_gone_plugin:make' cannot be built here: cannot import "
                   "'tl_gone_plugin:make': No module named 'tl_gone_plugin'\n")

    doc = json.loads((out / "models" / "deployment.json").read_text())
    with pytest.raises(ModelStoreError) as exc:
        parse_scores(doc, "model store X")
    assert str(exc.value) == ("model store X: lead challenger 'tl_gone_plugin:make' cannot be built here: cannot "
                              "import 'tl_gone_plugin:make': No module named 'tl_gone_plugin'")
