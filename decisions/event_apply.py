"""Applying one event to its contact's profile: identity merge, the idempotency rules
(too late to tell from a replay, seen before) and the batch's tallies of what was applied."""

from __future__ import annotations

from typing import TYPE_CHECKING

from touchline.decisions.events import KNOWN_TYPES, Event, missing_attributes
from touchline.decisions.feedback import FEEDBACK_TYPES, feedback_key, is_linked
from touchline.decisions.profile import DAY_MS, MAX_ALIASES, Profile, apply_event, is_too_late, merge_into

if TYPE_CHECKING:
    from touchline.decisions.batch_run import BatchRun


#: Gaps between purchases are tallied in whole days up to this (longer ones count here).
MAX_GAP_DAYS = 3650


class EventApplier:
    """Applies the events of one batch to the loaded profiles."""

    def __init__(self, run: BatchRun) -> None:
        self.run = run
        self.outcome = run.outcome

    def apply(self, ev: Event, key: str, merged: str | None) -> Profile | None:
        """The profile ``ev`` was applied to; None when it was not (late or a replay)."""
        profile = self._live_profile(key)
        fresh = profile.events_total == 0
        if merged is not None:
            self.outcome.merges += 1
            self.merge(profile, merged)
        if is_too_late(profile, ev.ts_ms):
            self.outcome.dead.append(ev.to_dead_letter(
                "late_event", f"event {ev.event_id!r} is older than the idempotency window of its contact"))
            self.outcome.dead_keys.append(key)
            return None
        bought_before = profile.last_purchase_ts
        if not apply_event(profile, ev.event_id, ev.type, ev.ts_ms, ev.properties, ev.context, ev.channel):
            self.outcome.duplicates += 1
            self.outcome.duplicated.append(ev.source or "")
            self.outcome.duplicated_keys.append(key)
            return None
        self._count(ev, profile, fresh)
        if self.run.core.attributes:
            self.run.core.attributes.apply(profile, ev.type, ev.ts_ms, ev.properties)
        if ev.type == "purchase" and bought_before is not None and ev.ts_ms > bought_before:
            self.outcome.purchase_gap_days[min(MAX_GAP_DAYS, (ev.ts_ms - bought_before) // DAY_MS)] += 1
        return profile

    def _live_profile(self, key: str) -> Profile:
        """The profile of ``key``; a fresh one if it expired earlier in this batch and is active again."""
        run = self.run
        run.touched.add(key)
        if key not in run.deleted:
            return run.profiles[key]
        run.deleted.discard(key)
        run.expired.discard(key)
        profile = run.profiles[key] = Profile(key, known=run.profiles[key].known)
        return profile

    def _count(self, ev: Event, profile: Profile, fresh: bool) -> None:
        """Tallies of an applied event: type, identity, new ids, missing attributes, feedback."""
        out = self.outcome
        out.by_type[ev.type if ev.type in KNOWN_TYPES else "other"] += 1  # bounded: no label per stranger type
        known = profile.known
        out.identities["known" if ev.contact_id is not None else
                       "anonymous_resolved" if known else "anonymous_unresolved"] += 1
        if fresh:
            out.new_ids["known" if known else "anonymous"] += 1
        for attribute in missing_attributes(ev.type, ev.properties, ev.context, ev.channel):
            out.missing[(ev.type, attribute)] += 1
        if ev.type in FEEDBACK_TYPES:
            fb = feedback_key(ev.type, ev.properties, ev.channel)
            if fb is not None:
                out.feedback[(*fb, "true" if is_linked(ev.properties) else "false")] += 1

    def merge(self, contact: Profile, anon_key: str) -> None:
        """Fold an anonymous visitor's profile into the known contact it turned out to be."""
        run = self.run
        run.merged_into[anon_key] = contact.key  # landed once the contact is written, even with nothing to fold in
        anon = run.profiles.get(anon_key)
        if anon is None:
            return
        alias = anon_key.partition(":")[2]
        merged_before = alias in contact.aliases  # the contact was written merged, the drop of anon was not (a crash)
        if not merged_before and len(contact.aliases) < MAX_ALIASES:
            contact.aliases.append(alias)
        if anon.events_total and not merged_before:
            for kind, due in merge_into(contact, anon).items():
                run.timers.set(contact, kind, due)
        run.timers.forget(anon_key, anon.timers)
        run.deleted.add(anon_key)  # dropped with its pending timers when the batch is saved
