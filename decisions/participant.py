"""The one way a feature takes part in decisions: journeys and experiments plug in here.

The decision loop calls every participant at the same points, in order:

* ``on_applied``: an event was applied to the profile, before scoring (conversions);
* ``propose``: candidates after an event (``event`` given) or after scores computed without
  one (the inactivity check, ``event`` None);
* ``owns_timer`` / ``on_timer``: a timer of the participant's came due; may propose;
* ``shape``: before arbitration, change the candidates (experiment variants), never for a
  contact in the global holdout;
* ``settle``: after arbitration and the reservation: what was sent and what was held back,
  and notes for the decision record, which is built once, after every participant settled.

Every hook is a no-op by default, so a participant overrides only what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from touchline.decisions.arbitration import DecisionPoint
    from touchline.decisions.events import Event
    from touchline.decisions.moment import Moment
    from touchline.decisions.policy import Candidate


class Participant:
    """Base of the features that take part in decisions (see the module docstring)."""

    def on_applied(self, at: Moment, event: Event) -> None:
        """An event was applied to ``at.profile`` (before any scoring)."""

    def propose(self, at: Moment, event: Event | None, scores: Mapping[str, float]) -> list[Candidate]:
        """Candidates for this decision point."""
        return []

    def owns_timer(self, kind: str) -> bool:
        """Whether a timer of ``kind`` is this participant's."""
        return False

    def on_timer(self, at: Moment, kind: str) -> list[Candidate]:
        """One of this participant's timers came due; candidates it proposes now."""
        return []

    def shape(self, at: Moment, point: DecisionPoint) -> None:
        """Change ``point.candidates`` before arbitration."""

    def settle(self, at: Moment, point: DecisionPoint) -> None:
        """React to the outcome of ``point`` and leave notes for its record."""
