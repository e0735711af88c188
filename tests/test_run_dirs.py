"""Runs as a new user meets them (issue 22): each ``touchline run`` writes to a fresh run
directory and ``touchline-out/latest`` names the current one; a failed start touches nothing;
old runs are pruned; a replay is byte-identical run after run unless ``--resume-models``;
with ``--log-format json`` every line on stderr is a JSON object; SIGTERM is a termination
(exit 143). Every run here writes under tmp_path (the CLI's default directory is made
relative to a temporary working directory)."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import orjson
import pytest

from touchline import run_dirs
from touchline.cli import main
from touchline.erasure_outputs import LOCK_NAME, rewrite_without

SMALL = ["--contacts", "150", "--days", "7", "--quiet"]


def _run(*argv: str) -> int:
    return main(["run", *SMALL, "--no-metrics", *argv])


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` (symlinks as their target): size, mtime, contents."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            found[str(p.relative_to(folder))] = (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
    if (folder / "latest").is_symlink():
        found["latest ->"] = (0, 0, os.readlink(folder / "latest").encode())
    return found


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory of its own, so the default ``touchline-out`` lands in tmp_path."""
    for key in [k for k in os.environ if k.startswith("TOUCHLINE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------ run directories
def test_each_run_keeps_its_outputs_latest_names_the_newest_and_old_runs_are_pruned(workdir, monkeypatch, capsys):
    root = workdir / "touchline-out"
    monkeypatch.setenv("TOUCHLINE_OUTPUT__KEEP_RUNS", "2")
    assert _run() == 0
    first = run_dirs.latest(root)
    assert first is not None and first.parent == root / "runs"
    assert _run("--seed", "3") == 0
    second = run_dirs.latest(root)
    assert second != first and os.readlink(root / "latest") == f"runs/{second.name}"
    for run_dir in (first, second):  # both runs' outputs are there, whole
        assert (run_dir / "decisions.jsonl").stat().st_size > 0
        summary = orjson.loads((run_dir / "summary.json").read_bytes())
        assert summary["run"] == {"id": run_dir.name, "dir": str(run_dir.relative_to(workdir)),
                                  "latest": "touchline-out/latest"}
    assert (first / "decisions.jsonl").read_bytes() != (second / "decisions.jsonl").read_bytes()
    assert "(now touchline-out/latest)" in capsys.readouterr().out

    assert _run() == 0  # a third run: keep_runs = 2, the oldest goes
    third = run_dirs.latest(root)
    assert run_dirs.runs(root) == [second, third] and not first.exists()

    # readers of the default directory read the latest run
    assert main(["report"]) == 0
    assert f"report: {Path('touchline-out/runs') / third.name / 'report.html'}" in capsys.readouterr().out
    contact = orjson.loads((third / "decisions.jsonl").read_bytes().splitlines()[0])["contact_id"]
    assert main(["why", contact]) == 0
    assert f"read touchline-out/runs/{third.name}/decisions.jsonl" in capsys.readouterr().out
    assert main(["models", "status", "--json"]) == 0
    assert f"file://touchline-out/runs/{third.name}/models" in capsys.readouterr().out
    assert main(["models", "deploy", "lead", "hat"]) == 0
    assert "no engine is running in touchline-out" in capsys.readouterr().err


def test_out_dir_is_used_as_given_and_a_root_given_as_out_stays_a_root(workdir):
    assert _run("--out", "flat") == 0
    assert (workdir / "flat" / "decisions.jsonl").is_file() and not run_dirs.is_root(workdir / "flat")
    assert _run() == 0
    assert _run("--out", "touchline-out") == 0  # the default's root, named: still a root of runs
    assert len(run_dirs.runs(workdir / "touchline-out")) == 2
    assert not (workdir / "touchline-out" / "decisions.jsonl").exists()


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("case", ["missing input", "config typo", "redis down", "metrics port in use"])
def test_a_failed_start_leaves_the_previous_run_and_latest_untouched(workdir, monkeypatch, case):
    root = workdir / "touchline-out"
    assert _run() == 0
    before = _files(root)
    (workdir / "typo.toml").write_text("[simulatr]\ncontacts = 3\n")
    monkeypatch.setenv("TOUCHLINE_STATE__RETRY_SECONDS", "0")
    with _busy_port() as busy:
        argv = {"missing input": ["--no-metrics", "--input", "missing.jsonl"],
                "config typo": ["--no-metrics", "--config", "typo.toml"],
                "redis down": ["--no-metrics", "--redis", "redis://127.0.0.1:1/0"],
                "metrics port in use": ["--metrics-port", str(busy.getsockname()[1])]}[case]
        assert main(["run", *SMALL, *argv]) in (1, 2)
    assert _files(root) == before
    assert len(run_dirs.runs(root)) == 1


def test_a_failed_start_in_an_out_dir_truncates_nothing_there(workdir):
    """--out DIR is written as given, but only once every check passed: a start that fails on
    the metrics port (the last check) leaves the run before whole, outbox included."""
    out = workdir / "out"
    assert _run("--out", str(out)) == 0
    before = _files(out)
    assert before["decisions.jsonl"][0] and before["dead_letters.jsonl"][0] and before["outbox/email.jsonl"][0]
    with _busy_port() as busy:
        assert main(["run", *SMALL, "--out", str(out), "--metrics-port", str(busy.getsockname()[1])]) == 1
    assert _files(out) == before


def _run_dir(root: Path, minute: int) -> Path:
    path = root / "runs" / f"20260105T09{minute:02d}00Z-{minute:06x}"
    path.mkdir(parents=True)
    (path / "decisions.jsonl").write_bytes(b"{}\n")
    return path


def test_pruning_keeps_the_newest_the_latest_and_running_ones(tmp_path):
    root = tmp_path / "out"
    r1, r2, r3, r4, r5 = (_run_dir(root, m) for m in range(1, 6))
    (root / "runs" / "notes").mkdir()  # not a run directory: never touched
    run_dirs.point_latest(root, r1)
    assert run_dirs.prune(root, 0) == []  # 0 keeps every run
    with open(r2 / LOCK_NAME, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # an engine writes there
        assert run_dirs.in_use(r2) and not run_dirs.in_use(r3)
        assert run_dirs.current(root) == r2  # what a models command reaches
        assert run_dirs.prune(root, 2) == [r3]
    assert run_dirs.runs(root) == [r1, r2, r4, r5] and (root / "runs" / "notes").is_dir()
    assert run_dirs.current(root) == r1  # nothing running: the latest run


def test_latest_falls_back_to_a_text_pointer_where_symlinks_fail(tmp_path, monkeypatch):
    root = tmp_path / "out"
    run = _run_dir(root, 7)

    def no_symlinks(*_args, **_kwargs):
        raise OSError("operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    run_dirs.point_latest(root, run)
    assert (root / "latest").read_text() == f"runs/{run.name}\n"
    assert run_dirs.latest(root) == run and run_dirs.resolve(root) == run
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temporary pointer left


def test_erasing_from_a_root_of_runs_covers_every_run(tmp_path):
    root = tmp_path / "out"
    runs = [_run_dir(root, m) for m in (1, 2)]
    for run in runs:
        (run / "decisions.jsonl").write_bytes(b'{"contact_id":"ann"}\n{"contact_id":"bob"}\n')
    removed = rewrite_without(root, ["ann"])
    assert sorted(removed) == [r / "decisions.jsonl" for r in runs]
    assert all((r / "decisions.jsonl").read_bytes() == b'{"contact_id":"bob"}\n' for r in runs)


# ------------------------------------------------------------------ reproducible replays
def test_a_replay_is_byte_identical_run_after_run_and_resuming_models_is_explicit(workdir, capsys):
    events = workdir / "events.jsonl"
    assert main(["simulate", "--out", str(events), "--contacts", "300", "--days", "10"]) == 0
    root = workdir / "touchline-out"
    outputs = []
    for extra in ([], [], ["--resume-models"]):
        assert _run("--input", str(events), *extra) == 0
        latest = run_dirs.latest(root)
        outputs.append((latest, (latest / "decisions.jsonl").read_bytes(),
                        orjson.loads((latest / "summary.json").read_bytes())["model_store"]))
    (first, one, fresh1), (second, two, fresh2), (third, three, resumed) = outputs
    assert one == two and fresh1["start"] == fresh2["start"] == "fresh"
    assert three != two and resumed["start"] == "resumed" and len(resumed["restored"]) == 2
    assert resumed["resumed_from"] == str(Path("touchline-out/runs") / second.name / "models")
    assert "resumed from touchline-out/runs/" in capsys.readouterr().out

    assert _run("--input", str(events), "--resume-models", str(first)) == 0  # a run directory named
    chosen = orjson.loads((run_dirs.latest(root) / "summary.json").read_bytes())["model_store"]
    assert chosen["resumed_from"] == str(first / "models")
    assert (first / "decisions.jsonl").read_bytes() == one  # the run resumed from is left as it was


def test_resume_models_errors_name_the_flag(workdir, capsys):
    assert _run("--resume-models", "nowhere") == 2
    assert "--resume-models nowhere: no such directory" in capsys.readouterr().err
    assert _run("--resume-models", "run-dir", "--redis", "redis://127.0.0.1:1/0") == 2
    assert "continues from there" in capsys.readouterr().err
    assert not (workdir / "touchline-out").exists()


def test_resuming_with_nothing_to_resume_says_so(workdir):
    assert _run("--resume-models") == 0
    store = orjson.loads((run_dirs.latest(workdir / "touchline-out") / "summary.json").read_bytes())["model_store"]
    assert store["start"] == "fresh" and "nothing to resume" in store["note"]


# ------------------------------------------------------------------ logs for machines, SIGTERM
def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}


def _json_lines(text: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines
    return [orjson.loads(ln) for ln in lines]  # raises on any line that is not one JSON object


def test_json_logs_every_stderr_line_is_a_json_object_errors_included(tmp_path):
    def touchline(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "touchline", *argv], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=180)

    done = touchline("run", "--contacts", "150", "--days", "7", "--log-format", "json", "--log-level", "info",
                     "--metrics-port", "0")
    assert done.returncode == 0, done.stderr
    objects = _json_lines(done.stderr)
    messages = [o["message"] for o in objects]
    assert messages[0].startswith("touchline ") and objects[0]["run_dir"].startswith("touchline-out/runs/")
    assert any(m.startswith("metrics: http://127.0.0.1:") for m in messages)
    assert any(m.startswith("run finished") for m in messages)
    assert all({"ts", "level", "logger", "message"} <= o.keys() for o in objects)

    for argv, code in ((["run", "--input", "missing.jsonl"], 1), (["run", "--no-such-flag"], 2),
                       (["run", "--holdout", "2"], 2)):
        failed = touchline(*argv, "--log-format", "json")
        assert failed.returncode == code
        last = _json_lines(failed.stderr)[-1]
        assert last["level"] == "error" and last["exit_code"] == code and last["message"].startswith("touchline")


def test_sigterm_is_a_termination_with_exit_code_143_and_json_lines(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "touchline", "run", "--log-format", "json", "--log-level", "info",
                             "--no-metrics", "--contacts", "3000", "--days", "60"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[dict] = []
    deadline = time.monotonic() + 120
    assert proc.stderr is not None
    while time.monotonic() < deadline:  # a progress line (every 5 s) says it is well under way
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(orjson.loads(line))
        if seen[-1]["message"] == "progress":
            break
    assert seen and seen[-1]["message"] == "progress", seen
    assert {"events", "decisions", "events_per_second", "fraction"} <= seen[-1].keys()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 143
    objects = seen + _json_lines(rest)
    [term] = [o for o in objects if o.get("signal") == "SIGTERM"]
    assert term["level"] == "warning" and term["message"].startswith("terminating on SIGTERM")
    assert not any("Ctrl-C" in o["message"] for o in objects)
    assert objects[-1]["exit_code"] == 143 and "before SIGTERM" in objects[-1]["message"]
    run_dir = run_dirs.latest(tmp_path / "touchline-out")  # a clean stop: the run is the latest one
    assert run_dir is not None and orjson.loads((run_dir / "summary.json").read_bytes())["interrupted"] is True


def test_a_second_signal_aborts_naming_the_signal():
    """The first SIGTERM stops after the batch; a second one gives up, and says which signal it
    was so the exit code is SIGTERM's (143), not Ctrl-C's."""
    import threading

    from touchline.run_command import exit_code
    from touchline.runner import _stop_on_signals

    stop, received = threading.Event(), []
    restore = _stop_on_signals(stop, received)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.is_set() and received == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        assert exit_code(raised.value.signum) == 143
    finally:
        restore()


# ------------------------------------------------------------------ production in run directories
def test_a_production_restart_in_run_directories_resumes_its_snapshot_and_its_models(kafka_broker, topics,
                                                                                    redis_url, tmp_path):
    """Kafka in, Redis state, no --out: each start writes a run directory of its own, the
    recovery directory sits beside them (so the restart resumes at its snapshot, not at the
    start of the topic) and the models continue from their checkpoints (models.restore = auto)."""
    import re

    from engine_process import write_config
    from touchline.connectors.simulator import Simulator
    from touchline.runner import simulator_spec
    from touchline.settings import load_settings

    lines = list(Simulator(simulator_spec(load_settings(None, {"simulator.contacts": 300,
                                                                "simulator.days": 5}))).lines())
    kafka_broker.create_topics(topics["kafka.events_topic"], partitions=1)
    kafka_broker.produce(topics["kafka.events_topic"], lines[: len(lines) // 2])
    config = write_config(tmp_path / "prod.toml", topics, models={"store": "auto"})
    cmd = [sys.executable, "-m", "touchline", "run", "--kafka", kafka_broker.bootstrap, "--redis", redis_url,
           "--config", str(config), "--quiet", "--json", "--log-level", "info"]
    first = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    kafka_broker.produce(topics["kafka.events_topic"], lines[len(lines) // 2:])
    second = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr

    root = tmp_path / "touchline-out"
    assert any((root / "recovery").glob("part-*.sqlite3"))
    one, two = run_dirs.runs(root)
    assert run_dirs.latest(root) == two and not (two / "recovery").exists()
    offsets = [int(n) for n in re.findall(r"resuming .*? at offset (\d+)", second.stderr)]
    assert offsets and offsets[0] > 0, second.stderr
    summary = orjson.loads(second.stdout)
    assert summary["run"]["id"] == two.name and summary["model_store"]["start"] == "resumed"
    assert summary["model_store"]["url"].startswith("redis://") and len(summary["model_store"]["restored"]) == 2
    assert orjson.loads((one / "summary.json").read_bytes())["model_store"]["start"] == "resumed"


def _as_pid_one() -> list[str]:
    """A command prefix that starts the engine as PID 1 of a new PID namespace, as in a
    container without ``--init`` (needs root and util-linux's unshare), else none."""
    unshare = "/usr/bin/unshare"
    if os.geteuid() == 0 and os.path.exists(unshare) and subprocess.run(
            [unshare, "--pid", "--fork", "true"], capture_output=True).returncode == 0:
        return [unshare, "--pid", "--fork", "--kill-child"]
    return []


def test_sigterm_while_waiting_for_the_broker_at_start_up_ends_the_run_at_once(tmp_path):
    """A start-up wait (here for a broker that is not there, 60 s allowed) is cut short by
    SIGTERM with exit 143, also as PID 1, which ignores signals it has no handler for."""
    prefix = _as_pid_one()
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "touchline", "run", "--kafka", "127.0.0.1:1",
                             "--no-metrics", "--out", str(tmp_path / "out")],
                            cwd=tmp_path, env={**_env(), "TOUCHLINE_KAFKA__CONNECT_TIMEOUT_SECONDS": "60"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    banner = proc.stderr.readline()  # printed just before the broker is asked for its topics
    assert banner.startswith("touchline") and "127.0.0.1:1" in banner, banner
    engine = proc.pid
    if prefix:  # signal the engine itself (PID 1 inside), as `docker stop` does, not unshare
        engine = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
        [ns_pids] = [ln for ln in Path(f"/proc/{engine}/status").read_text().splitlines() if ln.startswith("NSpid:")]
        assert ns_pids.split()[-1] == "1", ns_pids
    time.sleep(0.5)
    os.kill(engine, signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)  # without the fix: up to 60 s, or for ever as PID 1
    assert proc.returncode == 143, rest
    assert rest.strip().splitlines()[-1] == "touchline: terminated"
    assert not (tmp_path / "out").exists()


def test_the_entry_catches_sigterm_before_it_loads_the_commands(monkeypatch):
    """The console script installs its SIGTERM handler before importing the commands (half a
    second of imports, during which PID 1 would ignore the signal)."""
    from touchline import entry

    seen = []
    loaded = types.ModuleType("touchline.cli")
    loaded.main = lambda: seen.append(signal.getsignal(signal.SIGTERM)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "touchline.cli", loaded)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert entry.main() == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [entry.terminated_while_loading]


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (the SigCgt mask in /proc)."""
    [caught] = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigCgt:")]
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sigterm_the_moment_the_command_starts_ends_it_as_pid_one(tmp_path, log_format):
    """SIGTERM as soon as the process can catch it (while the commands still load), to PID 1 as
    ``docker stop`` sends it: exit 143 at once with the one line, nothing written."""
    prefix = _as_pid_one()
    if not prefix:
        pytest.skip("needs root and unshare to start a process as PID 1")
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "touchline", "run", "--kafka", "127.0.0.1:1",
                             "--no-metrics", "--out", str(tmp_path / "out")], cwd=tmp_path,
                            env={**_env(), "TOUCHLINE_LOGGING__FORMAT": log_format,
                                 "TOUCHLINE_KAFKA__CONNECT_TIMEOUT_SECONDS": "60"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    engine = None
    while engine is None or not _catches_sigterm(engine):
        assert time.monotonic() < deadline and proc.poll() is None
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        engine = int(children[0]) if children else None
        time.sleep(0.002)
    os.kill(engine, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)  # ignored as PID 1: the 60 s broker wait, then exit 1
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    if log_format == "json":
        assert orjson.loads(last)["message"] == "touchline: terminated"
    else:
        assert last == "touchline: terminated"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, code", [
    (["journeys", "check", "bad.yaml"], 2),
    (["report", "--out", "nothing"], 2),
    (["why", "c1", "--out", "nothing"], 2),
    (["models", "promote", "lead", "--out", "nothing"], 1),
    (["contact", "export", "c1", "--redis", "redis://127.0.0.1:1"], 1),
])
def test_json_logs_hold_for_every_command_not_only_run(argv, code, tmp_path):
    """The image sets TOUCHLINE_LOGGING__FORMAT=json for every command it runs."""
    (tmp_path / "bad.yaml").write_text("journey: t\nentry: {event: signpu}\nsteps:\n  - wait: 5\n")
    done = subprocess.run([sys.executable, "-m", "touchline", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**_env(), "TOUCHLINE_LOGGING__FORMAT": "json"}, timeout=120)
    assert done.returncode == code, done.stderr
    objects = _json_lines(done.stderr)
    assert objects[-1]["level"] == "error" and objects[-1]["message"].startswith("touchline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing created by a failed command


def test_a_process_given_its_parents_run_directory_names_the_run(tmp_path):
    """``--processes N`` hands each child the run directory with ``--out``: their summaries
    carry the run's id as the parent's does; a directory of the user's own carries none."""
    from touchline.run_command import RunPlan
    from touchline.settings import load_settings

    settings = load_settings(None)
    child = RunPlan(settings, tmp_path / "touchline-out" / "runs" / "20261202T131415Z-0a1b2c")
    assert child.run_id == "20261202T131415Z-0a1b2c"
    assert RunPlan(settings, tmp_path / "my-out").run_id is None
    assert RunPlan(settings, tmp_path / "runs" / "not-a-run-id").run_id is None


def test_json_logs_hold_for_serve_from_start_to_stop(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "touchline", "serve", "--port", "0", "--out", str(tmp_path / "out")],
                            cwd=tmp_path, env={**_env(), "TOUCHLINE_LOGGING__FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    while not seen or not seen[-1]["message"].startswith("serving the API"):
        line = proc.stderr.readline()
        assert line, seen
        seen.append(orjson.loads(line))
    assert seen[-1]["url"].startswith("http://127.0.0.1:")
    import urllib.request

    deadline = time.monotonic() + 30
    while True:  # answering: its own signal handlers are up (a SIGTERM before then is a start-up abort, 143)
        try:
            urllib.request.urlopen(seen[-1]["url"] + "/openapi.json", timeout=2).read()
            break
        except OSError:
            assert time.monotonic() < deadline, "serve never answered"
            time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert _json_lines(rest)[-1]["signal"] == "SIGTERM"


def test_run_directories_sort_in_the_order_they_were_made_even_within_one_second(tmp_path):
    """Pruning removes the oldest by name: runs made back to back (the same second, the same
    millisecond) and after a clock step back must still sort in the order they were made."""
    made = []
    for _ in range(30):
        path = run_dirs.new_run(tmp_path)
        path.mkdir(parents=True)
        made.append(path)
    assert run_dirs.runs(tmp_path) == made
    ahead = tmp_path / "runs" / "29991231T235959.999Z-abcdef"  # a run stamped by a clock since stepped back
    ahead.mkdir()
    after = run_dirs.new_run(tmp_path)
    after.mkdir()
    assert run_dirs.runs(tmp_path)[-2:] == [ahead, after]
    old_format = tmp_path / "runs" / "20000101T000000Z-000000"  # an id of an earlier version still counts
    old_format.mkdir()
    assert run_dirs.runs(tmp_path)[0] == old_format
