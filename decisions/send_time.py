"""Best send time per contact: engagement by local hour, shrunk toward the population.

A contact's opens and clicks are counted in 24 buckets of their *local* hour (the time
zone quiet hours use, so DST moves nobody's habits). The share of a contact's engagement
that falls in hour ``h`` is estimated as the posterior mean of a Dirichlet whose prior is
the population's pattern with weight ``k`` (empirical Bayes)::

    score_h = (n_h + k * population_share_h) / (n + k)

so a contact with no history gets the population's pattern and one with many opens gets
their own. A send with ``send_at: best_time`` goes out at the start of the best-scoring
local hour within its window, skipping the channel's quiet hours (ties: the soonest).

>>> own = [0] * 24; own[20] = 3
>>> scores = hour_scores(own, population_share([0] * 24), prior_weight=10)
>>> best_hour(scores), round(scores[20], 3), round(scores[9], 3)
(20, 0.263, 0.032)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from touchline.decisions.participant import Participant
from touchline.decisions.send_hours import (
    HOURS, SendHours as SendHours, add_engagement, best_hour, bound_counts, hour_scores, population_share,
)
from touchline.decisions.policy import QuietHours, in_quiet_hours, local_hour

if TYPE_CHECKING:
    from touchline.decisions.events import Event
    from touchline.decisions.moment import Moment
    from touchline.decisions.profile import Profile

HOUR_MS = 3_600_000
#: Event types that show when the person reads: opens, clicks and replies.
ENGAGEMENT_TYPES = frozenset({"email_open", "email_click", "push_open", "sms_reply"})
#: The population's counters are halved when their sum passes this.
MAX_POPULATION_TOTAL = 1_000_000


def send_slots(now_ms: int, within_ms: int, zone: str | None, default_zone: str) -> list[tuple[int, int]]:
    """The moments a send may be placed at, as (time, local hour): now, then the start of
    every local hour up to ``within_ms`` after now. Steps are an hour of absolute time from
    the start of the current local hour, so a DST change neither skips nor repeats a slot.

    >>> slots = send_slots(1767614400000 + 1_800_000, 3 * HOUR_MS, "Asia/Kolkata", "UTC")  # 12:30Z = 18:00 IST
    >>> [hour for _, hour in slots], (slots[1][0] - slots[0][0]) // 60_000
    ([18, 19, 20, 21], 60)
    """
    hour_now = local_hour(now_ms, zone, default_zone)
    start = now_ms - _into_local_hour(now_ms, zone, default_zone)
    slots = [(now_ms, hour_now)]
    at = start + HOUR_MS
    while at <= now_ms + within_ms:
        slots.append((at, local_hour(at, zone, default_zone)))
        at += HOUR_MS
    return slots


def _into_local_hour(now_ms: int, zone: str | None, default_zone: str) -> int:
    """Milliseconds since the start of the current local hour (a half-hour zone's hours start at :30 UTC)."""
    from datetime import datetime

    from touchline.decisions.policy import contact_zone

    local = datetime.fromtimestamp(now_ms / 1000, tz=contact_zone(zone, default_zone))
    return (local.minute * 60 + local.second) * 1000 + local.microsecond // 1000


def best_send_time(now_ms: int, within_ms: int, scores: Sequence[float], zone: str | None,
                   default_zone: str, quiet: QuietHours | None) -> int:
    """When to send within the window: the start of the best-scoring local hour outside the
    quiet hours (``quiet``: None when they do not apply to the channel); the soonest of a tie,
    so a contact without any pattern is sent to now. If every slot is quiet: now (the policy
    then holds it back as for any send).

    >>> scores = [0.0] * 24; scores[20] = scores[22] = 1.0
    >>> t = 1767614400000  # 12:00 UTC
    >>> (best_send_time(t, 24 * HOUR_MS, scores, "UTC", "UTC", None) - t) // HOUR_MS
    8
    >>> (best_send_time(t, 4 * HOUR_MS, scores, "UTC", "UTC", None) - t) // HOUR_MS  # 20:00 is out of the window
    0
    """
    slots = [(at, hour) for at, hour in send_slots(now_ms, within_ms, zone, default_zone)
             if quiet is None or not in_quiet_hours(hour, quiet)]
    if not slots:
        return now_ms
    return max(slots, key=lambda slot: (scores[slot[1]], -slot[0]))[0]


class SendTime(Participant):
    """The engine's send-time learner on one worker: it counts each contact's engagement by
    local hour (in the profile) and the population's, and says when a best-time send of a
    contact should go out. The population's counters are shared through the state store by
    every process (the engine's, ``touchline serve``'s) and kept across restarts: the engine
    passes on what this worker counted (:meth:`unshared`) and hands back the store's totals
    (:meth:`adopt`) between batches. A send already scheduled keeps its time (it is a
    timer).

    >>> from touchline.decisions.profile import Profile
    >>> learner = SendTime("UTC", QuietHours())
    >>> learner.observe(Profile("c1"), 1767614400000)  # 12:00 UTC
    >>> told = learner.unshared(); told[12]
    1
    >>> learner.adopt([0] * 12 + [40] + [0] * 11, told)  # the store's, with every process's
    >>> learner.population[12], learner.unshared()[12]
    (40, 0)
    """

    def __init__(self, default_zone: str, quiet: QuietHours, prior_weight: float = 10.0) -> None:
        self.default_zone, self.quiet, self.prior_weight = default_zone, quiet, prior_weight
        #: the population's counters as this worker sees them: the store's when last read,
        #: plus what this worker counted since (halved as the store halves them, for a
        #: worker that never shares them)
        self.population = [0] * HOURS
        #: what this worker counted that the store has not been told of yet
        self._unshared = [0] * HOURS

    def on_applied(self, at: Moment, event: Event) -> None:
        if event.type in ENGAGEMENT_TYPES:
            self.observe(at.profile, event.ts_ms)

    def observe(self, profile: Profile, ts_ms: int) -> None:
        """One engagement of ``profile`` at ``ts_ms``, in its local hour."""
        hour = local_hour(ts_ms, profile.timezone, self.default_zone)
        add_engagement(profile.send_hours, hour)
        self.population[hour] += 1
        self._unshared[hour] += 1
        bound_counts(self.population, MAX_POPULATION_TOTAL)

    def unshared(self) -> list[int]:
        """The engagement by local hour counted here that the store has not been told of."""
        return list(self._unshared)

    def adopt(self, totals: Sequence[int], shared: Sequence[int]) -> None:
        """The store's population counters (every process's) after it was told ``shared``
        (what :meth:`unshared` gave), plus what this worker counted since."""
        if len(totals) != HOURS:
            raise ValueError(f"the population's send hours have {len(totals)} counters, not {HOURS}")
        self._unshared = [mine - told for mine, told in zip(self._unshared, shared)]
        self.population = [int(n) + mine for n, mine in zip(totals, self._unshared)]

    def scores(self, profile: Profile) -> list[float]:
        """The contact's expected engagement share per local hour."""
        return hour_scores(profile.send_hours, population_share(self.population), self.prior_weight)

    def best_hour(self, profile: Profile) -> int | None:
        """The contact's best local hour (shrunk toward the population); None: no pattern yet."""
        return best_hour(self.scores(profile))

    def when(self, profile: Profile, now_ms: int, within_ms: int, channel: str) -> int:
        """When a best-time send on ``channel`` should go out (``now_ms`` if now is best)."""
        quiet = self.quiet if channel in self.quiet.channels else None
        return best_send_time(now_ms, within_ms, self.scores(profile), profile.timezone, self.default_zone, quiet)
