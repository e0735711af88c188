"""``touchline models train`` writes a checkpoint that ``models deploy --checkpoint`` ships and the
engine starts from; ``models evaluate`` grades it beside the configured model and prints the
offline ceiling. Real files, the real CLI, a real model store directory (all under tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from touchline.cli import main
from touchline.model_keeper import ModelKeeper
from touchline.state.model_store import FileModelStore


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train") / "events.jsonl"
    assert main(["simulate", "--out", str(path), "--contacts", "300", "--days", "12", "--seed", "3"]) == 0
    return path


@pytest.fixture(scope="module")
def trained(events, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ckpt") / "lead.ckpt"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["models", "train", "--input", str(events), "--out", str(out), "--json"]) == 0
    return out, json.loads(buffer.getvalue())


def test_train_writes_a_warm_started_checkpoint_with_its_offline_figure(trained):
    path, done = trained
    assert path.is_file() and done["checkpoint"] == str(path)
    assert done["version"].startswith("logreg-") and done["spec"]["warm_start"]
    assert done["spec"]["calibration"] == "platt" and done["spec"]["params"] == {"learning_rate": 0.003}
    t = done["training"]
    assert t["labels"] > t["positives"] > 0 and "logistic regression" in t["method"]
    assert 0.5 < done["offline_ceiling"]["roc_auc"] < 1.0


def test_a_trained_checkpoint_deploys_and_the_engine_starts_from_it(trained, events, tmp_path, capsys):
    path, done = trained
    out = tmp_path / "o"
    assert main(["models", "deploy", "lead", "--checkpoint", str(path), "--as", "champion", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"{done['version']} deployed as champion from its checkpoint" in said
    assert (out / "models" / "lead" / f"{done['version']}.ckpt").read_bytes() == path.read_bytes()
    # a replay starts from fresh models unless told to resume (issue 22: reproducible by default)
    assert main(["run", "--input", str(events), "--out", str(out), "--quiet", "--no-metrics",
                 "--resume-models"]) == 0
    lead = json.loads((out / "summary.json").read_text())["models"]["lead"]
    assert lead["version"] == done["version"] and "trained offline" in lead["origin"]
    assert lead["labels"] > 0  # it went on learning online
    assert main(["models", "status", "--out", str(out)]) == 0
    assert f"warm_start={done['spec']['warm_start']}" in capsys.readouterr().out


def test_evaluate_grades_a_checkpoint_beside_the_configured_model_and_prints_the_ceiling(trained, events, capsys):
    path, done = trained
    assert main(["models", "evaluate", "--input", str(events), "--score", "lead", "--checkpoint", str(path)]) == 0
    text = capsys.readouterr().out
    assert "ceiling of [1], [2]: logistic regression (L2), 5-fold cross-validated on the same" in text
    assert "[1] logreg(learning_rate=0.003) platt " in text and f"warm:{done['spec']['warm_start'][:6]}" in text
    assert "[2] was trained offline on this very input: its figures are in-sample" in text
    assert main(["models", "evaluate", "--input", str(events), "--score", "lead", "--json",
                 "--model", "logreg", "--checkpoint", str(path)]) == 0
    rows = json.loads(capsys.readouterr().out)["scores"]["lead"]
    assert [r["version"] for r in rows][1] == done["version"] and rows[0]["labels"] == rows[1]["labels"] > 0
    assert [r["in_sample"] for r in rows] == [False, True]
    ceiling = rows[0]["offline_ceiling"]
    assert ceiling == rows[1]["offline_ceiling"] and ceiling["labels"] == rows[0]["labels"]
    assert 0.5 < ceiling["roc_auc"] <= 1.0 and ceiling["features"] == 55


def test_train_another_kind_of_model_by_one_pass(events, tmp_path, capsys):
    out = tmp_path / "hat.ckpt"
    assert main(["models", "train", "--input", str(events), "--model", "hat(grace_period=50)", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "one pass of learn_one" in text and out.is_file()


@pytest.mark.parametrize("argv, says", [
    (["models", "deploy", "lead"], "give MODEL or --checkpoint FILE"),
    (["models", "deploy", "lead", "hat", "--checkpoint", "x.ckpt"], "give MODEL or --checkpoint FILE"),
    (["models", "deploy", "lead", "--checkpoint", "missing.ckpt"], "missing.ckpt: No such file"),
    (["models", "deploy", "lead", "--checkpoint", "garbage.ckpt"], "garbage.ckpt: not a Touchline model checkpoint"),
    (["models", "deploy", "lead", "--checkpoint", "altered.ckpt"], "altered.ckpt: checkpoint of lead logreg-"),
    (["models", "deploy", "churn", "--checkpoint", "lead.ckpt"], "holds a lead model, not a churn one"),
    (["models", "deploy", "lead", "--checkpoint", "lead.ckpt", "--calibration", "platt"], "drop --features/"),
    (["models", "evaluate", "--input", "events.jsonl", "--score", "churn", "--checkpoint", "lead.ckpt"],
     "--score churn does not evaluate it"),
    (["models", "train", "--input", "events.jsonl", "--features", "known"], "define a --model"),
    (["models", "evaluate", "--input", "events.jsonl", "--calibration", "platt"], "define a --model"),
    (["models", "train", "--input", "missing.jsonl"], "--input missing.jsonl: no such file"),
    (["models", "train", "--input", "one.jsonl"], "training needs both classes"),
    (["models", "train", "--input", "events.jsonl", "--out", "garbage.ckpt/x.ckpt"], "cannot write the checkpoint"),
])
def test_bad_checkpoints_and_inputs_are_errors_naming_them(argv, says, trained, events, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lead.ckpt").write_bytes(trained[0].read_bytes())
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    blob = trained[0].read_bytes()
    (tmp_path / "altered.ckpt").write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
    (tmp_path / "events.jsonl").write_bytes(events.read_bytes())
    (tmp_path / "one.jsonl").write_text('{"event_id": "e1", "type": "page_view", "contact_id": "c1", '
                                        '"ts": 1767614400000}\n')
    assert main([*argv, *(["--out", str(tmp_path / "o")] if argv[1] == "deploy" else [])]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_keeper_never_drops_a_checkpoint_shipped_ahead_of_its_deployment(trained, tmp_path, small_settings):
    """``models deploy --checkpoint`` saves the checkpoint, then the deployment: a running engine
    checkpointing in between must not take the new file for a retired model's and delete it."""
    from touchline.runner import build_engine
    from prometheus_client import CollectorRegistry

    settings = small_settings()
    engine = build_engine(settings, CollectorRegistry())
    store = FileModelStore(f"file://{settings.output.dir / 'models'}")
    path, done = trained
    store.save_checkpoint("lead", done["version"], path.read_bytes())
    keeper: ModelKeeper = engine.keeper
    keeper.checkpoint()
    assert done["version"] in store.checkpoints("lead")
    keeper.close()


# ------------------------------------------------------------------ the benchmark
def test_lead_benchmark_prints_every_figure_on_a_tiny_simulation(capsys):
    """``python -m touchline.lead_bench`` end to end on a small population (figures only: the
    default run's are in the README; nothing about their size is asserted here)."""
    from touchline import lead_bench

    assert lead_bench.main(["--contacts", "150", "--days", "8", "--json"]) == 0
    f = json.loads(capsys.readouterr().out)
    [seed] = f["seeds"]
    assert seed["seed"] == 7 and seed["train_seed"] == 107 and seed["ceiling"]["labels"] > 0
    assert set(seed["models"]) == {"cold", "warm", "before"}
    for row in seed["models"].values():
        assert row["labels"] == seed["ceiling"]["labels"] and {"gap", "within_gap", "ece_ok"} <= set(row)
    assert lead_bench.main(["--contacts", "150", "--days", "8", "--no-before"]) == 0
    text = capsys.readouterr().out
    assert "ceiling" in text and "cold" in text and "warm" in text and "before" not in text.split("\n", 2)[2]


def test_lead_benchmark_refuses_bad_arguments(capsys):
    from touchline import lead_bench

    with pytest.raises(SystemExit):
        lead_bench.main(["--seeds", "seven"])
    assert "comma-separated whole numbers" in capsys.readouterr().err
