"""A closed-loop simulator: simulated people react to the engine's messages, with a
true effect the simulator knows, so an experiment's measured lift can be checked.

The natural stream is exactly :meth:`Simulator.lines` (same spec, same bytes): the
decisions never touch a person's random stream, so the untreated potential outcome of
every person is the same whether the engine messages them or not. On top of it,
:meth:`ClosedLoopSimulator.react` turns each message into reactions (opens and clicks,
a purchase the message caused, a fatigue unsubscribe) drawn from randomness of their
own, keyed by a stable hash of (seed, decision id), and merges them into the stream
by event time. Since the simulator knows each message's causal probability, it can
say what the true average treatment effect was (:meth:`ClosedLoopSimulator.true_lift`).

Wiring: one process, one worker. The engine calls ``react(decisions)`` synchronously
after each micro-batch; the source (``SimulatorSource(spec, simulator=sim)``) pulls
the merged lines. Reactions whose time the stream has passed come at the next pull
(slightly late events, which the engine accepts).

>>> from touchline.connectors.simulator import SimulatorSpec
>>> spec = SimulatorSpec(seed=1, contacts=5, days=3)
>>> sim = ClosedLoopSimulator(spec, EffectSpec(base=0.9))  # a message all but sure to sell
>>> stream = sim.lines()
>>> first = next(stream)
>>> sim.react([{"decision_id": "d1", "contact_id": "c-0", "channel": "email", "action": "welcome",
...             "template": "welcome_v1", "decision_time_ms": spec.start_ms + 3_600_000}])
>>> [orjson.loads(line)["type"] for line in stream if b'"react-' in line]
['email_open', 'email_click', 'page_view', 'purchase']
>>> sim.messages()[0].u, sim.messages()[0].caused
(0.95, True)
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import random
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import orjson

from touchline.connectors.simulator import (CATEGORIES, DAY_MS, HOUR_MS, MINUTE_MS, READ_DECAY_HOURS, Simulator,
                                            SimulatorSpec, Traits, _Person, _pick, _stable_seed, read_chance,
                                            reading_wait)
from touchline.decisions.events import parse_ts

if TYPE_CHECKING:
    from touchline.connectors.sim_source import SimulatorSource

_DUMP = orjson.OPT_SORT_KEYS
_PURCHASE = b'"type":"purchase"'  # natural lines are dumped compactly with sorted keys
_UNSUBSCRIBE = b'"type":"unsubscribe"'
_BOUNCE = b'"type":"email_bounce"'
#: Feedback events per channel: (open-like event, click-like event or None).
FEEDBACK = {"email": ("email_open", "email_click"), "sms": ("sms_reply", None), "push": ("push_open", None)}
#: One reaction to queue: (event time ms, event type, properties).
_Reaction = tuple[int, str, dict[str, Any]]


@dataclass(frozen=True)
class EffectSpec:
    """The hidden true effect of a message (never emitted in events).

    The uplift ``u`` of one message is the probability that it causes a purchase that
    would not otherwise happen::

        u = min(cap, (base + intent_gain * intent) * boost * template_multiplier)

    with ``boost = preferred_channel_boost`` on the person's preferred channel, else 1.
    It depends on hidden traits so that targeting (lead scores, channel preference) has
    something to find, and on the template so that an A/B test of templates has a real
    difference to find. It is 0 for a person who has churned (they no longer read), and
    for a channel the person unsubscribed from (naturally or from fatigue) or whose
    email bounced before the message. Sales tasks (channel ``sales_task``) have a constant ``sales_task_uplift``
    (default 0: a call is not simulated), no feedback and no fatigue.

    Fatigue: counting this one, the messages (not sales tasks) to a person in the last
    ``fatigue_window_ms``; each beyond ``fatigue_after`` adds ``unsubscribe_step`` to the
    chance that this message makes the person unsubscribe from its channel.

    Feedback: the person opens (email_open, sms_reply, push_open) with probability
    ``open_base + open_intent * intent``, plus ``open_preferred`` on the preferred
    channel; an opened email is clicked with ``click_given_open``. A message that causes
    a purchase is always opened (and an email clicked): the purchase comes through it.

    Reading hour (``SimulatorSpec.preferred_hours``): a person reads at a habitual local
    hour, so a message is opened at the next start of it, and both its chance to be opened
    and its uplift are multiplied by ``exp(-wait / read_decay_hours)`` for the hours it waited
    (a buried message is read less, and sells less). Without preferred hours nothing waits.
    """

    base: float = 0.03
    intent_gain: float = 0.25
    preferred_channel_boost: float = 2.0
    template_multipliers: tuple[tuple[str, float], ...] = ()
    cap: float = 0.95
    sales_task_uplift: float = 0.0
    delay_mean_ms: int = DAY_MS
    fatigue_after: int = 2
    fatigue_window_ms: int = 7 * DAY_MS
    unsubscribe_step: float = 0.08
    open_base: float = 0.1
    open_intent: float = 0.3
    open_preferred: float = 0.35
    click_given_open: float = 0.3
    read_decay_hours: float = READ_DECAY_HOURS

    def uplift(self, traits: Traits, channel: str, template: str | None) -> float:
        """``u`` of one message to a person who can still be reached on ``channel``.

        >>> t = Traits("c-0", 0.4, "sms", "Europe/London", 0.1, 0.5, None)
        >>> round(EffectSpec().uplift(t, "sms", None), 4), round(EffectSpec().uplift(t, "email", None), 4)
        (0.26, 0.13)
        """
        if channel == "sales_task":
            return self.sales_task_uplift
        u = self.base + self.intent_gain * traits.intent
        if channel == traits.preferred_channel:
            u *= self.preferred_channel_boost
        u *= dict(self.template_multipliers).get(template or "", 1.0)
        return max(0.0, min(self.cap, u))

    def p_open(self, traits: Traits, channel: str) -> float:
        """Chance to open (or reply to) a message that did not cause a purchase."""
        p = self.open_base + self.open_intent * traits.intent
        return min(1.0, p + self.open_preferred * (channel == traits.preferred_channel))


@dataclass(frozen=True, slots=True)
class Message:
    """What the simulator remembers of one message, for the truth.

    ``caused_at_ms`` is the time the caused purchase happens (or would have happened:
    the delay is drawn whether or not the message causes one, so the truth can use the
    realised delay and the expected value over the Bernoulli).
    """

    person: int
    decision_id: str
    decision_ms: int
    channel: str
    u: float
    caused: bool
    caused_at_ms: int


@dataclass(frozen=True, slots=True)
class TrueLift:
    """The true average treatment effect on the conversion rate of a segment's treated
    contacts (``lift``), over ``n`` of them."""

    lift: float
    n: int


class ClosedLoopSimulator:
    """The natural stream of :class:`Simulator` plus people's reactions to messages.

    One instance serves one run: reactions, remembered messages and natural purchases
    accumulate on it. ``react`` and the ``lines`` generator may run on different threads.
    """

    def __init__(self, spec: SimulatorSpec, effects: EffectSpec = EffectSpec()):
        self.spec = spec
        self.effects = effects
        self._sim = Simulator(spec)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, bytes]] = []  # (ts, seq, line): reactions not yet yielded
        self._seq = 0
        self._seen: set[str] = set()
        self._traits: dict[int, Traits] = {}
        self._messages: dict[int, list[Message]] = defaultdict(list)
        self._recent: dict[int, deque[int]] = defaultdict(deque)  # decision times, for fatigue
        self._unsubscribed: dict[tuple[int, str], int] = {}  # (person, channel) -> unreachable since (ms)
        self._natural: dict[int, list[int]] = defaultdict(list)  # person -> natural purchase times

    @property
    def end_ms(self) -> int:
        """End of the simulated period (exclusive)."""
        return self._sim.end_ms

    def traits(self) -> list[Traits]:
        """The hidden truth of every person, in index order."""
        return self._sim.traits()

    def messages(self) -> list[Message]:
        """Every message reacted to, by person then time of arrival."""
        return [m for person in sorted(self._messages) for m in self._messages[person]]

    def natural_purchases(self, person: int) -> list[int]:
        """Times of the natural purchases of a person yielded so far (sorted)."""
        return list(self._natural.get(person, ()))

    # ---------------------------------------------------------------- stream
    def lines(self) -> Iterator[bytes]:
        """The natural lines with reactions merged in by event time.

        A reaction is yielded before the first natural line at or after its time; one
        queued behind the stream comes at the next line. At the end, reactions before the
        end of the period are yielded and later ones dropped (as the natural stream does).
        """
        self._natural.clear()
        for ts, person, line in self._sim.timed_lines():
            yield from self._due(ts)
            if person >= 0:
                if _PURCHASE in line:
                    self._natural[person].append(ts)
                elif _UNSUBSCRIBE in line or _BOUNCE in line:
                    self._note_unreachable(person, line, ts)
            yield line
        yield from self._due(self.end_ms - 1)
        with self._lock:
            self._pending.clear()

    def _due(self, ts: int) -> Iterator[bytes]:
        while True:
            with self._lock:
                if not self._pending or self._pending[0][0] > ts:
                    return
                line = heapq.heappop(self._pending)[2]
            yield line

    def _note_unreachable(self, person: int, line: bytes, ts: int) -> None:
        """A natural unsubscribe or email bounce: later messages on that channel are not read."""
        channel = orjson.loads(line).get("channel")
        if isinstance(channel, str):
            self._unreachable_from(person, channel, ts)

    def _unreachable_from(self, person: int, channel: str, ts: int) -> None:
        since = self._unsubscribed.get((person, channel))
        if since is None or ts < since:
            self._unsubscribed[(person, channel)] = ts

    # -------------------------------------------------------------- reactions
    def react(self, decisions: list[dict[str, Any]]) -> None:
        """React to one micro-batch of decision records (idempotent per decision id).

        Records for contacts that are not simulated people, for a decision already
        seen, or for a message not sent (holdout) are ignored. Decisions are handled in
        decision-time order, so fatigue counts the same whatever the batch order.
        """
        todo = []
        for record in decisions:
            person = self._person(record.get("contact_id"))
            decision_id = record.get("decision_id")
            if person is None or not isinstance(decision_id, str) or not decision_id or not _sent(record):
                continue
            todo.append((_decision_ms(record), decision_id, person, record))
        for decision_ms, decision_id, person, record in sorted(todo, key=lambda item: item[:2]):
            if decision_id in self._seen:
                continue
            self._seen.add(decision_id)
            self._react_one(person, decision_id, decision_ms, str(record.get("channel") or ""),
                            record.get("template"))

    def _person(self, contact_id: Any) -> int | None:
        """The index of a simulated person's contact id ("c-<index>"), else None."""
        if not isinstance(contact_id, str) or not contact_id.startswith("c-"):
            return None
        digits = contact_id[2:]
        if not digits.isdigit() or str(int(digits)) != digits or int(digits) >= self.spec.contacts:
            return None
        return int(digits)

    def _person_traits(self, person: int) -> Traits:
        traits = self._traits.get(person)
        if traits is None:
            traits = self._traits[person] = _Person(self.spec, person).traits
        return traits

    def _react_one(self, person: int, decision_id: str, at: int, channel: str, template: Any) -> None:
        """Draw and queue one message's reactions, and remember its truth.

        Fatigue counts every message but sales tasks, read or not; feedback and a fatigue
        unsubscribe come only from a message the person can still read."""
        traits = self._person_traits(person)
        d = _draw(self.spec.seed, decision_id, self.effects.delay_mean_ms)
        reachable = self._reachable(person, traits, channel, at)
        p_unsubscribe = self._p_unsubscribe(person, at) if channel != "sales_task" else 0.0
        u = self.effects.uplift(traits, channel, template if isinstance(template, str) else None) if reachable else 0.0
        u *= self._read_share(traits, channel, at)
        message = Message(person, decision_id, at, channel, u, d.cause < u, at + d.delay)
        self._messages[person].append(message)
        events = _purchase_session(decision_id, channel, template, message.caused_at_ms, d.value) if message.caused else []
        if reachable and channel in FEEDBACK:
            events += self._read_feedback(message, traits, d)
            events += self._fatigue_unsubscribe(message, d, p_unsubscribe)
        self._queue(person, channel, decision_id, events)

    def _read_feedback(self, message: Message, traits: Traits, d: _Draws) -> list[_Reaction]:
        """The open (and click) of a message the person reads. A message that caused a sale
        is always read, at the latest a minute before the purchase, since the sale comes
        through it; never sooner than a second after it was sent."""
        fx, at = self.effects, message.decision_ms
        if not (message.caused or d.open < fx.p_open(traits, message.channel) * self._read_share(traits, message.channel, at)):
            return []
        opened_at = at + d.open_delay
        if traits.preferred_hour is not None:  # read at the person's hour, within it
            opened_at = at + reading_wait(at, traits.timezone, traits.preferred_hour) + d.open_delay % HOUR_MS
        if message.caused:
            opened_at = min(opened_at, message.caused_at_ms - MINUTE_MS)
        return _feedback(message.decision_id, message.channel, max(at + 1_000, opened_at),
                         message.caused or d.click < fx.click_given_open)

    def _read_share(self, traits: Traits, channel: str, at: int) -> float:
        """What is left of a message's chance to be read after it waited for the person's hour (1: no wait)."""
        if traits.preferred_hour is None or channel == "sales_task":
            return 1.0
        return read_chance(reading_wait(at, traits.timezone, traits.preferred_hour), self.effects.read_decay_hours)

    def _fatigue_unsubscribe(self, message: Message, d: _Draws, p_unsubscribe: float) -> list[_Reaction]:
        """The unsubscribe this message tips the person into, if it does; one who is already
        leaving the channel does not leave it twice."""
        person, channel = message.person, message.channel
        if d.unsubscribe < p_unsubscribe and (person, channel) not in self._unsubscribed:
            at = message.decision_ms + d.unsubscribe_delay
            self._unreachable_from(person, channel, at)
            return [(at, "unsubscribe", {})]
        return []

    def _reachable(self, person: int, traits: Traits, channel: str, at: int) -> bool:
        """Whether the person still reads messages on ``channel`` at ``at``."""
        if traits.churn_at_ms is not None and at >= traits.churn_at_ms:
            return False
        since = self._unsubscribed.get((person, channel))
        return since is None or at < since

    def _p_unsubscribe(self, person: int, at: int) -> float:
        """Fatigue: the chance that a message at ``at`` tips the person into unsubscribing
        (every message but sales tasks counts, whichever channel and whether read or not)."""
        recent = self._recent[person]
        recent.append(at)
        while recent and recent[0] <= at - self.effects.fatigue_window_ms:
            recent.popleft()
        extra = sum(1 for t in recent if t <= at) - self.effects.fatigue_after
        return min(1.0, max(0, extra) * self.effects.unsubscribe_step)

    def _queue(self, person: int, channel: str, decision_id: str,
               events: list[_Reaction]) -> None:
        contact = f"c-{person}"
        with self._lock:
            for n, (ts, type_, props) in enumerate(events, 1):
                doc: dict[str, Any] = {"event_id": f"react-{self.spec.seed}-{_key(decision_id)}-{n}",
                                       "type": type_, "ts": ts, "contact_id": contact}
                if type_ != "purchase" and type_ != "page_view":
                    doc["channel"] = channel
                if props:
                    doc["properties"] = props
                self._seq += 1
                heapq.heappush(self._pending, (ts, self._seq, orjson.dumps(doc, option=_DUMP)))

    # ----------------------------------------------------------------- truth
    def true_lift(self, outcomes: list[dict[str, Any]],
                  experiment: str = "global_holdout") -> dict[tuple[str, str], TrueLift]:
        """The true average treatment effect on conversion, per segment and ("all", "all").

        For a treated contact i with window W = (exposed_at_ms, exposed_at_ms + window_ms]:
        its untreated outcome is ``natural_i`` (a natural purchase in W), the same in
        both arms because messages never change the natural stream; treated, it
        converts if natural or if any message caused a purchase in W. So its effect is
        ``tau_i = P(caused in W) * (1 - natural_i)``, with
        ``P(caused in W) = 1 - prod_j (1 - u_j)`` over its messages j decided at or after
        the exposure whose (realised) caused time falls in W: the expectation over the
        Bernoulli draws, not their realisation, so the truth has no draw noise. The ATE
        of a segment is the mean of ``tau_i`` over its treated outcomes; it is what the
        treatment-minus-holdout conversion rate estimates, because assignment is random.
        Outcomes of other experiments, arms or contacts are ignored.
        """
        taus: dict[tuple[str, str], list[float]] = defaultdict(list)
        for record in outcomes:
            if record.get("kind", "outcome") != "outcome" or record.get("experiment") != experiment:
                continue
            person = self._person(record.get("contact_id"))
            if person is None or record.get("arm") != "treatment":
                continue
            tau = self.tau(person, int(record["exposed_at_ms"]), int(record["window_ms"]))
            taus[("all", "all")].append(tau)
            for dimension, value in sorted((record.get("segment") or {}).items()):
                taus[(str(dimension), str(value))].append(tau)
        return {key: TrueLift(math.fsum(values) / len(values), len(values)) for key, values in taus.items()}

    def tau(self, person: int, exposed_at_ms: int, window_ms: int) -> float:
        """The effect on one treated person of their messages in one window (see :meth:`true_lift`)."""
        end = exposed_at_ms + window_ms
        natural = self._natural.get(person, [])
        i = bisect.bisect_right(natural, exposed_at_ms)
        if i < len(natural) and natural[i] <= end:
            return 0.0
        p_none = 1.0
        for m in self._messages.get(person, ()):
            if exposed_at_ms <= m.decision_ms <= end and exposed_at_ms < m.caused_at_ms <= end:
                p_none *= 1.0 - m.u
        return 1.0 - p_none


def closed_loop_source(sim: ClosedLoopSimulator, batch_size: int = 1000,
                       stop: threading.Event | None = None) -> SimulatorSource:
    """The Bytewax source of a closed-loop run: :class:`SimulatorSource` over ``sim``.

    Its snapshot is a line count, so recovery is not exact for a closed loop: a resumed
    run regenerates and skips natural lines only, and reactions come back only as the
    engine re-emits the decisions they answer.

    >>> from touchline.connectors.simulator import SimulatorSpec
    >>> sim = ClosedLoopSimulator(SimulatorSpec(seed=1, contacts=3, days=1))
    >>> closed_loop_source(sim, batch_size=100).simulator is sim
    True
    """
    from touchline.connectors.sim_source import SimulatorSource  # needs Bytewax and the flows

    return SimulatorSource(sim.spec, batch_size, stop, simulator=sim)


class _Draws(NamedTuple):
    cause: float
    delay: int
    value: float
    open: float
    open_delay: int
    click: float
    unsubscribe: float
    unsubscribe_delay: int


def _draw(seed: int, decision_id: str, delay_mean_ms: float) -> _Draws:
    """Every draw of one message's reactions, in a fixed order whatever happens next: the
    outcome of one never shifts another, and the delay is independent of the Bernoulli.
    The stream is keyed by (seed, decision id), never by a person's own random stream,
    so the natural stream stays what it would have been without the message."""
    rng = random.Random(_stable_seed("react", seed, decision_id))
    return _Draws(rng.random(), int(rng.expovariate(1 / delay_mean_ms)) + 2 * MINUTE_MS,
                  round(rng.lognormvariate(3.8, 0.5), 2),
                  rng.random(), int(rng.expovariate(1 / (2 * HOUR_MS))) + 30_000, rng.random(),
                  rng.random(), int(rng.expovariate(1 / HOUR_MS)) + MINUTE_MS)


def _purchase_session(decision_id: str, channel: str, template: Any, at: int,
                      value: float) -> list[_Reaction]:
    """The caused purchase: a landing page view from the message, then the order."""
    order = f"ro-{_key(decision_id)}"
    url = f"/landing?utm_source={channel}&utm_campaign={template or 'none'}"
    return [(at - 90_000, "page_view", {"url": url, "decision_id": decision_id}),
            (at, "purchase", {"value": value, "currency": "EUR", "order_id": order,
                              "category": _pick(order, CATEGORIES)})]


def _feedback(decision_id: str, channel: str, at: int, click: bool) -> list[_Reaction]:
    opened, clicked = FEEDBACK[channel]
    events = [(at, opened, {"decision_id": decision_id})]
    if click and clicked is not None:
        events.append((at + 30_000, clicked, {"decision_id": decision_id}))
    return events


def _sent(record: dict[str, Any]) -> bool:
    """Whether a decision record is a message that went out (not a holdout's would-be one)."""
    if record.get("sent") is False:
        return False
    arms = record.get("experiments") or {}
    legacy = record.get("experiment") or {}
    return arms.get("global_holdout") != "holdout" and legacy.get("arm") != "holdout"


def _key(decision_id: str) -> str:
    """The decision id in derived ids: itself (32 hex digits from the engine), or a digest
    of it if it is long (event ids are at most 256 characters)."""
    if len(decision_id) <= 64:
        return decision_id
    return hashlib.blake2b(decision_id.encode(), digest_size=16).hexdigest()


def _decision_ms(record: dict[str, Any]) -> int:
    """The decision time in epoch ms (the ISO string of older records if need be)."""
    value = record.get("decision_time_ms")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return parse_ts(record["decision_time"])


__all__ = ["ClosedLoopSimulator", "EffectSpec", "Message", "TrueLift", "closed_loop_source"]
