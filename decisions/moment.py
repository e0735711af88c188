"""A decision point of one contact: whose it is, when, and what it may change.

Handlers and participants (journeys, experiments) receive a :class:`Moment` instead of
a closure back into the engine: the profile, the engine time, the batch's timers and the
batch's outcome to count into.
"""

from __future__ import annotations

from dataclasses import dataclass

from touchline.decisions.dispatch import TimerBook
from touchline.decisions.outcome import BatchOutcome
from touchline.decisions.profile import Profile


@dataclass(slots=True)
class Moment:
    """One contact at one engine time, inside one batch."""

    profile: Profile
    now_ms: int
    timers: TimerBook
    outcome: BatchOutcome

    def set_timer(self, kind: str, due_ms: int) -> None:
        """Set (or move) this contact's pending timer of ``kind``."""
        self.timers.set(self.profile, kind, due_ms)
