"""Build the connectors that configuration names, and route decisions to them by channel,
claiming each decision in the send ledger first so none is delivered twice.

Connector kinds are looked up in :data:`CONNECTORS` (the one plug-in registry,
:mod:`touchline.decisions.plugins`): the built-in kinds, then the ``touchline.connectors``
entry-point group, where an entry point named ``kind`` is called as
``builder(channel, config, context) -> ChannelConnector``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from touchline.decisions.plugins import Registry, UnknownPlugin
from touchline.connectors.channels.base import ChannelConnector, DeliveryReport
from touchline.connectors.channels.config import CHANNELS, DeliverySettings
from touchline.redact import redact_secrets

if TYPE_CHECKING:
    from touchline.state.ledger import Claim, SendLedger

log = logging.getLogger(__name__)

#: An outcome as a connector reports it: channel, decision (None: not said), outcome.
_Outcome = tuple[str, dict[str, Any] | None, str]


@dataclass
class BuildContext:
    """What connectors may need beyond their own section."""

    report: DeliveryReport
    outbox_dir: Path
    kafka_config: dict[str, str] | None = None
    channel_topic_prefix: str = "touchline.channel."
    kafka_timeout_seconds: float = 60.0
    seed: int | None = None
    #: Where decisions are claimed before sending and marked once final (None: no ledger,
    #: so a re-emitted decision is sent again, deduplicated only by the endpoint's key).
    ledger: SendLedger | None = None


def _jsonl(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.jsonl import JsonlConnector

    path = None if cfg.path == "-" else Path(cfg.path) if cfg.path else ctx.outbox_dir / f"{channel}.jsonl"
    return JsonlConnector(channel, ctx.report, path)


def _kafka(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.kafka import KafkaChannelConnector

    if ctx.kafka_config is None:
        raise ValueError(f"delivery.channels.{channel}: kind kafka needs kafka.bootstrap (or --kafka HOST:PORT)")
    topic = cfg.topic or ctx.channel_topic_prefix + channel  # as DeliverySettings.kafka_topics names it
    return KafkaChannelConnector(channel, ctx.report, ctx.kafka_config, topic, ctx.kafka_timeout_seconds)


def _webhook(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.webhook import WebhookConnector

    return WebhookConnector(channel, ctx.report, cfg, ctx.seed)


def _smtp(channel: str, cfg: Any, ctx: BuildContext) -> ChannelConnector:
    from touchline.connectors.channels.smtp import SmtpConnector, TemplateError

    try:
        return SmtpConnector(channel, ctx.report, cfg, ctx.seed)
    except TemplateError as exc:
        raise ValueError(f"delivery.channels.{channel}: {exc}") from None


#: Channel connectors by kind: the built-in builders, then the ``touchline.connectors`` entry points.
CONNECTORS = Registry("channel connector", "touchline.connectors",
                      {kind: f"{__name__}:_{kind}" for kind in ("jsonl", "kafka", "webhook", "smtp")})


def builder_for(kind: str) -> Callable[[str, Any, BuildContext], ChannelConnector]:
    try:
        builder: Callable[[str, Any, BuildContext], ChannelConnector] = CONNECTORS.load(kind)
    except UnknownPlugin:
        raise ValueError(f"no channel connector of kind {kind!r}; known: {', '.join(CONNECTORS.names())}") from None
    return builder


DoneCallback = Callable[[list[dict[str, Any]]], None]


class _Track:
    """A channel's decisions handed to its connector and not yet settled."""

    __slots__ = ("outstanding", "pending")

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}  # decision id -> decision
        self.outstanding = 0  # handed over minus outcomes reported


class _Renewal:
    """When the settle loop next renews claims: every third of the ledger's lease (never
    without a ledger), so a claim in flight never lapses."""

    def __init__(self, ledger: SendLedger | None) -> None:
        self.period = ledger.lease_seconds / 3 if ledger is not None else None
        self.next_at = time.monotonic() + self.period if self.period else float("inf")

    def seconds_left(self) -> float | None:
        """Time until the next renewal (0 or less: due); None when there is none to wait for."""
        return self.next_at - time.monotonic() if self.period else None

    def due(self) -> bool:
        """Whether a renewal is due now; if so the next one is scheduled a period later."""
        if self.period and time.monotonic() >= self.next_at:
            self.next_at = time.monotonic() + self.period
            return True
        return False


def _ids_of(kind: str, batch: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The decision ids of the settled decisions of one kind (those without an id have none
    to record)."""
    return [str(d["decision_id"]) for k, d in batch if k == kind and d.get("decision_id") is not None]


class Delivery:
    """The connectors of a run, one per delivered channel; routes decisions by channel.

    With a send ledger, ``submit`` claims the batch's decision ids in one round trip and
    hands only claimed decisions to connectors; those delivered already are counted as
    ``duplicate``, those claimed by another owner are held and claimed again every third of
    a lease (that owner may have died) until someone delivers them. Final outcomes (delivered, or failed and
    dead-lettered) are marked in the ledger; a decision the engine stopped before sending
    is released, so a later run sends it. While a decision is in flight its claim is
    renewed, so a slow endpoint never lets another process take it over.

    ``on_done``, settable any time, hears (from a background thread, one call at a time,
    in batches) the decisions that need no more delivery: delivered, failed for good,
    skipped as already final, or routed to a channel without a connector. Not those the
    engine stopped before sending, nor those skipped while another owner holds them
    (they may still need a re-emission if that owner dies).

    A connector that reports ``delivered`` without the decision (the kafka connector) has
    its decisions settled when it has nothing in flight (at the latest on close).
    The report belongs to this Delivery: it listens to its outcomes. A ledger that stays
    unreachable fails ``submit`` (sending unclaimed could send twice); the ledger is the
    caller's to close.
    """

    def __init__(self, connectors: dict[str, ChannelConnector], report: DeliveryReport,
                 ledger: SendLedger | None = None) -> None:
        self.connectors = connectors
        self.report = report
        self.ledger = ledger
        self.on_done: DoneCallback | None = None
        self._closed = False
        self._tracks = {channel: _Track() for channel in connectors}
        self._wake = threading.Condition()  # guards _tracks and _settled
        self._settled: list[tuple[str, dict[str, Any]]] = []  # ("final"|"marked"|"release"|"skip", decision)
        self._stopping = False
        self._settler: threading.Thread | None = None
        #: decisions another owner held a claim on when submitted: claimed again later (that
        #: owner may have died; its claim then lapses), until delivered by someone
        self._held: list[dict[str, Any]] = []
        #: per thread: the outcomes reported during a submit under way on it (see _outcomes_together)
        self._collecting = threading.local()
        report.listener = self._outcome

    @classmethod
    def build(cls, settings: DeliverySettings, ctx: BuildContext) -> Delivery:
        connectors: dict[str, ChannelConnector] = {}
        for channel in CHANNELS:
            cfg = settings.for_channel(channel, kafka=ctx.kafka_config is not None)
            if cfg.kind == "none":
                continue
            connectors[channel] = builder_for(cfg.kind)(channel, cfg, ctx)
        return cls(connectors, ctx.report, ctx.ledger)

    def start(self) -> None:
        """Start the connectors; those that connect somewhere (and may refuse to start) before the
        JSONL files, which empty the previous run's outbox when opened."""
        for connector in sorted(self.connectors.values(), key=lambda c: c.kind == "jsonl"):
            connector.start()
        self._settler = threading.Thread(target=self._settle_loop, name="touchline-delivery-settle", daemon=True)
        self._settler.start()

    def submit(self, decisions: list[dict[str, Any]]) -> None:
        """Hand decisions to their channels' connectors; with a ledger, only those claimed
        here (see the class docstring). Raises if the ledger cannot be reached: sending
        unclaimed could send twice."""
        by_channel, unrouted = self._route(decisions)
        if unrouted:
            self._settle("skip", unrouted)  # no connector will ever deliver them
        claim = self._claim(by_channel)
        with self._outcomes_together():
            for channel, batch in by_channel.items():
                connector = self.connectors[channel]
                if claim is not None:
                    batch = self._claimed(channel, connector.kind, batch, claim)
                    if not batch:
                        continue
                self._count_in_flight(channel, batch)
                connector.submit(batch)

    def _route(self, decisions: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
        """The decisions by channel, in order, and those for a channel without a connector."""
        by_channel: dict[str, list[dict[str, Any]]] = {}
        unrouted: list[dict[str, Any]] = []
        for decision in decisions:
            channel = decision.get("channel", "")
            if channel in self.connectors:
                by_channel.setdefault(channel, []).append(decision)
            else:
                unrouted.append(decision)
        return by_channel, unrouted

    def _claim(self, by_channel: dict[str, list[dict[str, Any]]]) -> Claim | None:
        """Claim every routed decision id in one ledger round trip; None without a ledger
        (or nothing to claim)."""
        if self.ledger is None or not by_channel:
            return None
        return self.ledger.claim([str(d["decision_id"]) for batch in by_channel.values() for d in batch
                                  if d.get("decision_id") is not None])

    def _count_in_flight(self, channel: str, batch: list[dict[str, Any]]) -> None:
        """Count ``batch`` as handed over (and its identified decisions as pending) before the
        connector sees it, so an outcome can never arrive for an untracked decision."""
        with self._wake:
            track = self._tracks[channel]
            track.outstanding += len(batch)
            for decision in batch:
                if decision.get("decision_id") is not None:
                    track.pending[str(decision["decision_id"])] = decision

    def _claimed(self, channel: str, kind: str, batch: list[dict[str, Any]], claim: Claim) -> list[dict[str, Any]]:
        """The decisions of ``batch`` this process may send; the others counted and settled."""
        send: list[dict[str, Any]] = []
        final: list[dict[str, Any]] = []
        for decision in batch:
            if decision.get("decision_id") is None:  # nothing to deduplicate by: sent unclaimed
                send.append(decision)
                continue
            decision_id = str(decision["decision_id"])
            if decision_id in claim:
                claim.discard(decision_id)  # a second copy in the same submit is held, like any claimed one
                send.append(decision)
            elif decision_id in claim.done:
                final.append(decision)
            else:
                with self._wake:
                    self._held.append(decision)
        if final:
            self.report.duplicate(channel, kind, len(final))
            self._settle("skip", final)
        return send

    # ------------------------------------------------------------------ outcomes
    def _outcome(self, channel: str, decision: dict[str, Any] | None, outcome: str) -> None:
        """The report's listener (any connector thread): settle the decision, or, reported on
        the thread of a ``submit`` under way, collect it for the end of that submit."""
        collected: list[_Outcome] | None = getattr(self._collecting, "outcomes", None)
        if collected is not None:
            collected.append((channel, decision, outcome))
            return
        to_mark = self._to_mark(channel, decision, outcome)
        self._settle_one(channel, decision, outcome, to_mark is not None and self._mark_now([to_mark]))

    @contextmanager
    def _outcomes_together(self) -> Iterator[None]:
        """Outcomes reported on this thread inside (a connector that serves its delivery reports
        when it is called: Kafka's, about one report per decision) are settled when the block
        ends, their ledger marks in one call instead of one round trip each. The crash window
        between the endpoint's answer and the mark grows by at most the block (one submit)."""
        if getattr(self._collecting, "outcomes", None) is not None:  # already collecting
            yield
            return
        collected: list[_Outcome] = []
        self._collecting.outcomes = collected
        try:
            yield
        finally:
            self._collecting.outcomes = None
            marks = [(reported, self._to_mark(*reported)) for reported in collected]
            to_mark = [d for _, d in marks if d is not None]
            marked = bool(to_mark) and self._mark_now(to_mark)
            for reported, d in marks:
                self._settle_one(*reported, marked and d is not None)

    def _settle_one(self, channel: str, decision: dict[str, Any] | None, outcome: str, marked: bool) -> None:
        """Settle one outcome: ``release`` when the engine stopped before sending (a later run
        sends it), ``marked`` when the final outcome is in the ledger already, else ``final``
        (the settle loop records it)."""
        kind = "release" if outcome == "shutdown" else "marked" if marked else "final"
        with self._wake:
            track = self._tracks.get(channel)
            if track is None:
                return
            track.outstanding -= 1
            if decision is not None:
                track.pending.pop(str(decision.get("decision_id")), None)
                self._settled.append((kind, decision))
            if track.outstanding <= 0:
                self._settle_unattributed(track)
            self._wake.notify()

    def _to_mark(self, channel: str, decision: dict[str, Any] | None, outcome: str) -> dict[str, Any] | None:
        """The decision, when this is a final outcome of an identified decision of a known
        channel and there is a ledger to mark it in; else None."""
        if (outcome == "shutdown" or decision is None or channel not in self._tracks or self.ledger is None
                or decision.get("decision_id") is None):
            return None
        return decision

    def _settle_unattributed(self, track: _Track) -> None:
        """Nothing in flight on a channel: its decisions still pending had deliveries reported
        without the decision (the kafka connector), so they are final. Lock held."""
        track.outstanding = 0
        if track.pending:
            self._settled.extend(("final", d) for d in track.pending.values())
            track.pending.clear()

    def _mark_now(self, decisions: list[dict[str, Any]]) -> bool:
        """Record final outcomes in the ledger at once, on the reporting thread: the time
        between the endpoint's answer and this mark is the only window in which a crash
        makes a re-emission send the decision again (with the same idempotency key)."""
        assert self.ledger is not None
        try:
            self.ledger.delivered([str(d["decision_id"]) for d in decisions])
        except Exception:  # the settle loop tries again
            log.exception("send ledger: could not record %d decision(s) as final (%s ...)", len(decisions),
                          decisions[0].get("decision_id"))
            return False
        return True

    def _settle(self, kind: str, decisions: list[dict[str, Any]]) -> None:
        with self._wake:
            self._settled.extend((kind, d) for d in decisions)
            self._wake.notify()

    def _settle_loop(self) -> None:
        """Record settled decisions in batches off the connectors' threads; every third of a
        lease, renew the claims in flight and claim held decisions again."""
        renewal = _Renewal(self.ledger)
        while True:
            with self._wake:
                self._wait_for_work(renewal)
                batch, self._settled = self._settled, []
                stopping = self._stopping
                renew, held = self._take_renewals() if renewal.due() else ([], [])
            self._apply(batch)
            if held and not stopping:
                self._retry_held(held)
            if renew:
                self._renew(renew)
            if stopping:
                return

    def _wait_for_work(self, renewal: _Renewal) -> None:
        """Wait (lock held) until decisions are settled, the run stops, or claims are due."""
        while not self._settled and not self._stopping:
            left = renewal.seconds_left()
            if left is not None and left <= 0:
                break
            self._wake.wait(left)

    def _take_renewals(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The decision ids in flight (their claims to renew) and the held decisions, taken
        to be claimed again. Lock held."""
        in_flight = [i for track in self._tracks.values() for i in track.pending]
        held, self._held = self._held, []
        return in_flight, held

    def _renew(self, decision_ids: list[str]) -> None:
        """Extend the claims in flight, so a slow endpoint never lets another process take
        them over; a failure is logged, and the next period tries again."""
        if self.ledger is None:
            return
        try:
            self.ledger.renew(decision_ids)
        except Exception:
            log.exception("send ledger: could not renew %d claims in flight", len(decision_ids))

    def _apply(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Record settled decisions in the ledger (final ones and releases), then tell
        ``on_done`` about all but the released ones."""
        if not batch:
            return
        if self.ledger is not None:
            self._record(self.ledger, batch)
        self._tell_done([d for kind, d in batch if kind != "release"])

    @staticmethod
    def _record(ledger: SendLedger, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Mark the decisions settled as final, and release those the engine stopped before
        sending, one ledger call each (``marked`` ones are in already, ``skip`` ones need
        nothing). On failure the claims lapse after their lease: a re-emission may resend."""
        final = _ids_of("final", batch)
        released = _ids_of("release", batch)
        try:
            if final:
                ledger.delivered(final)
            if released:
                ledger.release(released)
        except Exception:
            log.exception("send ledger: could not record %d final and %d released decisions",
                          len(final), len(released))

    def _tell_done(self, done: list[dict[str, Any]]) -> None:
        """Pass decisions that need no more delivery to ``on_done``; its failure is logged,
        never raised into the settle loop."""
        on_done = self.on_done
        if on_done is None or not done:
            return
        try:
            on_done(done)
        except Exception:
            log.exception("delivery on_done callback failed")

    def _retry_held(self, held: list[dict[str, Any]]) -> None:
        """Claim again what another owner held: delivered by it meanwhile (settled here as a
        duplicate), or its claim lapsed (sent now), or still held (kept for later)."""
        try:
            self.submit(held)
        except Exception:  # the ledger is unreachable: try again at the next period
            log.exception("send ledger: could not claim %d held decisions again", len(held))
            with self._wake:
                self._held.extend(held)

    def _wait_held(self, timeout: float) -> None:
        """At close: give decisions held by a lapsing claim (a crashed process) the time to be
        claimed and delivered here; what is still held after ``timeout`` stays in the outbox."""
        deadline = time.monotonic() + timeout
        step = max(0.2, min(2.0, self.ledger.lease_seconds / 10)) if self.ledger is not None else 1.0
        while time.monotonic() < deadline:
            with self._wake:
                held, self._held = self._held, []
            if not held:
                return
            self._retry_held(held)
            for connector in self.connectors.values():
                connector.flush(max(0.0, deadline - time.monotonic()))
            time.sleep(step)
        with self._wake:
            if self._held:
                log.warning("%d decision(s) still claimed by another process at shutdown; the next start "
                            "delivers them", len(self._held))

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float) -> None:
        """Wait for deliveries in flight (up to ``timeout`` each), then release; idempotent.

        The ledger is the caller's: it stays open."""
        if self._closed:
            return
        self._wait_held(timeout)
        self._closed = True
        for connector in self.connectors.values():
            try:
                connector.close(timeout)
            except Exception:  # one connector's trouble must not keep the others from closing
                log.exception("closing the %s connector for %s", connector.kind, connector.channel)
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._settler is not None:
            self._settler.join()
            self._settler = None
        with self._wake:
            batch, self._settled = self._settled, []
        self._apply(batch)

    def describe(self) -> dict[str, str]:
        """channel -> connector kind and where it delivers (summary, startup line), secrets
        masked (a plug-in's target too)."""
        return {channel: redact_secrets(f"{c.kind} {c.target}") for channel, c in self.connectors.items()}


class _DeliveryPartition(StatelessSinkPartition[dict[str, Any]]):
    def __init__(self, delivery: Delivery, on_fatal: Callable[[Exception], None] | None) -> None:
        self._delivery, self._on_fatal = delivery, on_fatal
        self._failed = False

    def write_batch(self, items: list[dict[str, Any]]) -> None:
        """Never raises (an exception here ends the dataflow with a panic): a ledger that stays
        unreachable stops the run through ``on_fatal``; the decisions not handed over stay
        in the engine's outbox and go out at the next start."""
        if self._failed:
            return
        try:
            self._delivery.submit(items)
        except Exception as exc:  # noqa: BLE001
            self._failed = True
            if self._on_fatal is None:
                raise
            self._on_fatal(exc)


class DeliverySink(DynamicSink[dict[str, Any]]):
    """Decisions into the channel connectors.

    Delivery: each connector's (see :mod:`touchline.connectors.channels.base`), never
    twice for one decision id when a send ledger is configured (:class:`Delivery`); a full
    connector queue blocks here, which holds the dataflow back (backpressure).
    """

    def __init__(self, delivery: Delivery, on_fatal: Callable[[Exception], None] | None = None) -> None:
        self.delivery, self.on_fatal = delivery, on_fatal

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeliveryPartition:
        return _DeliveryPartition(self.delivery, self.on_fatal)
