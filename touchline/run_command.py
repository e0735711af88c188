"""``touchline run`` around the engine: where the run writes (a fresh run directory under
``output.dir``, or ``--out DIR`` as given), whether its models start fresh or continue
(``--resume-models``), what it says on stderr (text, or JSON objects with JSON logs), where
its summary goes, and its exit code (0 done, 130 stopped by Ctrl-C, 143 by SIGTERM)."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import touchline
from touchline import run_dirs
from touchline.entry import EXIT_TERMINATED as EXIT_TERMINATED
from touchline.logs import console
from touchline.settings import ConfigError, Settings

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


def exit_code(signum: int | None) -> int:
    """The exit code of a run a signal stopped: 143 for SIGTERM (128 + 15, as a shell reports a
    process SIGTERM ended), 130 for Ctrl-C.

    >>> exit_code(signal.SIGTERM), exit_code(signal.SIGINT), exit_code(None)
    (143, 130, 130)
    """
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


@dataclass
class RunPlan:
    """Where one run writes. ``settings`` are the run's own: ``output.dir`` is its directory."""

    settings: Settings
    run_dir: Path
    #: the root of the run directories (``latest``, ``runs/``); None: ``--out DIR`` as given
    root: Path | None = None
    #: the model directory the run's models are copied from (``--resume-models``)
    models_from: Path | None = None
    #: resuming asked for, with no earlier run to resume from
    nothing_to_resume: bool = False
    started: bool = field(default=False, init=False)
    #: the directory did not exist before this run (a failed start removes it again)
    created: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.created = not self.run_dir.exists()

    @property
    def run_id(self) -> str | None:
        """The run directory's name; also in a ``--processes`` child, given its parent's run
        directory with ``--out`` (``<root>/runs/<id>``)."""
        in_runs = self.run_dir.parent.name == run_dirs.RUNS and run_dirs.is_run_id(self.run_dir.name)
        return self.run_dir.name if self.root is not None or in_runs else None

    def prepare(self) -> None:
        """Copy the models to continue from into the run's model directory."""
        if self.models_from is not None:
            run_dirs.copy_models(self.models_from, self.run_dir / "models")

    def on_start(self) -> None:
        """The outputs are open: from now on the run's directory is kept, whatever happens. A
        directory written as given (``--out DIR``) loses the files of the run before that this
        run would not replace: its summary, and the simulator's events when it reads a file."""
        self.started = True
        if self.root is not None:
            return
        index = self.settings.runtime.process_id
        stale = [self.run_dir / ("summary.json" if index is None else f"summary-{index}.json")]
        if self.settings.source.kind != "simulator":
            stale.append(self.run_dir / self.settings.output.events)
        for path in stale:
            path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """A run that failed: before it opened its outputs, its fresh directory goes (a failed
        start leaves nothing, and ``--out DIR`` as it was); after, it stays, without becoming ``latest``."""
        if not self.run_dir.exists():
            return
        if self.root is None:
            if self.created and not self.started:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        if self.started:
            console(f"the outputs of the failed run are in {self.run_dir}; {self.root / run_dirs.LATEST} still "
                    "names the run before", level="warning", run_dir=str(self.run_dir))
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def describe(self, summary: dict[str, Any]) -> None:
        """Name the run and where its models came from in its summary."""
        summary["run"] = {"id": self.run_id, "dir": str(self.run_dir),
                          "latest": str(self.root / run_dirs.LATEST) if self.root is not None else None}
        store = summary.get("model_store")
        if not store:
            return
        if self.models_from is not None and store.get("start") == "resumed":
            store["resumed_from"] = str(self.models_from)
        elif self.nothing_to_resume:
            store.update(start="fresh", resumed_from=None,
                         note=f"nothing to resume: no earlier run with models in {self.root}")

    def finish(self) -> None:
        """The run ended with a summary: it becomes ``latest``, and the oldest runs beyond
        ``output.keep_runs`` go."""
        if self.root is None:
            return
        run_dirs.point_latest(self.root, self.run_dir)
        keep = self.settings.output.keep_runs
        removed = run_dirs.prune(self.root, keep)
        if removed:
            log.info("removed %d old run directories (output.keep_runs = %d)", len(removed), keep,
                     extra={"removed": [str(p) for p in removed]})


def plan_run(settings: Settings, resume: bool | Path | None) -> RunPlan:
    """Where a run with these settings writes, and the models it starts from."""
    given = _models_given(settings, resume)
    if not settings.output.runs:
        return RunPlan(settings, settings.output.dir, models_from=given)
    root = settings.output.dir
    run_dir = run_dirs.new_run(root)
    recovery = settings.runtime.recovery_dir or root / run_dirs.RECOVERY
    own = settings.model_copy(update={"output": settings.output.model_copy(update={"dir": run_dir}),
                                      "runtime": settings.runtime.model_copy(update={"recovery_dir": recovery})})
    plan = RunPlan(own, run_dir, root, given)
    if given is None:
        _resume_latest(plan, settings)
    return plan


def _models_given(settings: Settings, resume: bool | Path | None) -> Path | None:
    """The model directory ``--resume-models DIR`` names (None without DIR); an error where the
    models do not live in run directories (Redis, an explicit models.store)."""
    if not isinstance(resume, Path):
        return None
    if not _embedded_models(settings):
        from touchline.redact import redact_url
        from touchline.runner import model_store_url

        raise ConfigError(f"--resume-models {resume}: this run keeps its models in "
                          f"{redact_url(model_store_url(settings) or 'off')} (models.store), not in a run directory; "
                          "--resume-models without DIR continues from there")
    return run_dirs.models_of(resume)


def _resume_latest(plan: RunPlan, settings: Settings) -> None:
    """A run that resumes (``--resume-models``, ``models.restore``) in a fresh run directory starts
    from a copy of the latest run's models."""
    from touchline.runner import resumes

    if not (_embedded_models(settings) and resumes(settings)):
        return
    assert plan.root is not None
    previous = run_dirs.latest(plan.root)
    if previous is not None and (previous / "models" / "deployment.json").is_file():
        plan.models_from = previous / "models"
    else:
        plan.nothing_to_resume = True


def _embedded_models(settings: Settings) -> bool:
    """Whether the models live in the run's directory (``models.store = auto`` without Redis)."""
    from touchline.runner import state_redis_url

    return settings.models.store == "auto" and state_redis_url(settings) is None


def models_settings(settings: Settings) -> tuple[Settings, str | None]:
    """The settings a ``touchline models`` command finds an embedded model store with: the run
    an engine is running in, else the latest run (``--out DIR`` written as given: DIR); and,
    when no engine runs there, a note saying whose models a change reaches."""
    root = settings.output.dir
    if not _embedded_models(settings) or not run_dirs.is_root(root):
        return settings, None
    run_dir = run_dirs.current(root)
    note = None if run_dirs.in_use(run_dir) else (
        f"no engine is running in {root}: this changed the models of its latest run, {run_dir}; "
        "a new run starts from them with touchline run --resume-models")
    return settings.model_copy(update={"output": settings.output.model_copy(update={"dir": run_dir})}), note


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """``touchline run``: run to the end of the input (or a signal), then save and print the
    summary; with several local processes, start and supervise them instead."""
    plan = plan_run(settings, args.resume_models)
    if settings.runtime.processes > 1 and settings.runtime.process_id is None:
        return _run_processes(plan, args)
    if not args.quiet:
        console(run_banner(plan), **_banner_fields(plan))
    try:
        plan.prepare()
        result = _run(plan, args.quiet)
    except BaseException:
        plan.abandon()
        raise
    plan.describe(result.summary)
    summary_path = save_summary(plan.settings, result.summary)
    plan.finish()
    print_summary(result.summary, summary_path, args.json)
    if result.interrupted:
        cause = "SIGTERM" if result.signal == signal.SIGTERM else "Ctrl-C"
        console(f"{'terminated' if cause == 'SIGTERM' else 'interrupted'}: the summary covers what was processed "
                f"before {cause}", level="warning", exit_code=exit_code(result.signal))
        return exit_code(result.signal)
    return 0


def _run(plan: RunPlan, quiet: bool) -> Any:
    from touchline.runner import run

    return run(plan.settings, progress=None if quiet else sys.stderr,
               on_metrics=None if quiet else _announce_metrics, on_start=plan.on_start)


def _run_processes(plan: RunPlan, args: argparse.Namespace) -> int:
    """Several engine processes on this host, all writing to the plan's directory (and the
    recovery directory beside the runs); it becomes ``latest`` when they stopped cleanly."""
    from touchline.runtime import CLEAN_EXITS, run_processes

    argv = sys.argv[1:] if args.argv is None else args.argv
    rt = plan.settings.runtime
    where = ["--out", str(plan.run_dir)] + (["--recovery-dir", str(rt.recovery_dir)] if rt.recovery_dir else [])
    code = run_processes(plan.settings, argv, where)
    if code in CLEAN_EXITS and plan.run_dir.is_dir():
        plan.finish()
    elif plan.root is not None and run_dirs.holds_nothing(plan.run_dir):
        shutil.rmtree(plan.run_dir, ignore_errors=True)
    return code


def _announce_metrics(host: str, port: int) -> None:
    """Where /metrics is served, once the server has bound (the port may have been 0: any free one)."""
    url = f"http://{host}:{port}/metrics"
    console(f"metrics: {url}", url=url)


def run_banner(plan: RunPlan) -> str:
    """The line a run starts with: the version, what it reads, where state and decisions go."""
    from touchline.redact import redact_url

    settings = plan.settings
    return (f"touchline {touchline.__version__}: {_run_input(settings)}; state {redact_url(settings.state.url)}; "
            f"decisions -> {_run_output(settings)}")


def _banner_fields(plan: RunPlan) -> dict[str, Any]:
    """The banner's facts as JSON fields."""
    from touchline.redact import redact_url

    s = plan.settings
    return {"version": touchline.__version__, "source": s.source.kind, "state": redact_url(s.state.url),
            "run_id": plan.run_id, "run_dir": str(plan.run_dir), "decisions": str(_run_output(s))}


def _run_input(settings: Settings) -> str:
    """What the run reads: a file (replayed or followed), a Kafka topic, or the simulator."""
    ks = settings.kafka
    if settings.source.kind == "jsonl":
        verb = "following (live, wall clock; Ctrl-C to stop)" if settings.source.follow else "replaying"
        return f"{verb} {settings.source.path}"
    if settings.source.kind == "kafka":
        return (f"reading Kafka topic {ks.events_topic} at {ks.bootstrap} from {ks.start}"
                f"{' (Ctrl-C to stop)' if ks.tail else ' to its end'}")
    sim = settings.simulator
    return f"simulating {sim.contacts:,} contacts over {sim.days:g} days (seed {sim.seed})"


def _run_output(settings: Settings) -> str | Path:
    """Where the decisions go: the Kafka decisions topic, or the JSONL file in the output directory."""
    ks = settings.kafka
    return (f"Kafka topic {ks.decisions_topic} at {ks.bootstrap}" if ks.bootstrap
            else settings.output.dir / settings.output.decisions)


def save_summary(settings: Settings, summary: dict[str, Any]) -> Path:
    """Write summary.json (summary-<process id>.json for one process of a cluster); its path."""
    index = settings.runtime.process_id
    summary_path = settings.output.dir / ("summary.json" if index is None else f"summary-{index}.json")
    summary_path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return summary_path


def print_summary(summary: dict[str, Any], summary_path: Path, as_json: bool) -> None:
    """The summary on stdout: as JSON, or as text followed by where the run and summary.json are."""
    from touchline.summary import format_summary

    if as_json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    print(format_summary(summary))
    run = summary.get("run") or {}
    if run.get("latest"):
        print(f"  {'run':<18} {run['dir']} (now {run['latest']})")
    print(f"  {'summary':<18} {summary_path}")
