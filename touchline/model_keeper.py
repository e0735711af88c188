"""The life of the models around the dataflow: deployment, hot swap, promotion, checkpoints.

Between two batches (never inside one, so no event is scored by half a swap) the
keeper

- polls the model store's deployment every ``models.poll_seconds`` and moves each
  score's slot to it (``touchline models promote`` / ``deploy`` take effect here);
- promotes a challenger when the score's promotion rule says so, by writing a new
  deployment revision (so the change is durable and every reader sees it);
- saves a checkpoint of every live model every ``models.checkpoint_seconds``, and once
  more on shutdown, with a status document that ``touchline models status`` reads.

Which deployment wins at start: the stored one, unless the configuration's ``[models]``
changed since that deployment was seeded from it (then the configuration, as a new
revision). So a promotion survives a restart, and an edited config file still takes effect.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Mapping

import orjson

from touchline.decisions.champion import Drift, ModelSlot
from touchline.decisions.estimators import (
    ModelConfig, ModelSpecError, ScoreModel, ScoreSettings, config_from, score_settings,
)
from touchline.state.model_store import (
    CheckpointError,
    ModelStore,
    ModelStoreError,
    decode_checkpoint,
    encode_checkpoint,
    new_revision,
)

log = logging.getLogger(__name__)


def seed_of(configured: Mapping[str, ScoreSettings]) -> str:
    """A stable fingerprint of the configured models (what 'the config changed' means)."""
    canonical = orjson.dumps({k: v.model_dump(exclude={"name"}) for k, v in sorted(configured.items())},
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def parse_scores(doc: Mapping[str, Any], where: str) -> dict[str, ScoreSettings]:
    """The deployment's scores as settings; ModelStoreError naming the score if one is unusable
    (e.g. it names a plug-in model that is not installed here)."""
    out = {}
    for name, raw in dict(doc.get("scores") or {}).items():
        if not isinstance(raw, dict):
            raise ModelStoreError(f"{where}: score {name!r} is not a mapping")
        try:
            out[name] = score_settings(name, raw)
        except ModelSpecError as exc:
            raise ModelStoreError(f"{where}: {exc}") from None
    return out


class ModelKeeper:
    """Keeps one engine's model slots in step with the model store."""

    def __init__(self, store: ModelStore, *, poll_seconds: float = 5.0, checkpoint_seconds: float = 60.0,
                 restore: bool = True, key: bytes | None = None, metrics: Any = None) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self.restore_enabled = restore
        self.key = key
        self.metrics = metrics
        self.slots: dict[str, ModelSlot] = {}
        self.revision = 0
        self.restored: list[str] = []
        self.refused: list[str] = []
        self.changes: list[str] = []
        now = time.monotonic()
        self._next_poll = now + poll_seconds
        self._next_checkpoint = now + checkpoint_seconds
        #: False on every process but one of a cluster: they learn, one of them checkpoints
        self.saves = True

    # ----------------------------------------------------------------- start
    def reconcile(self, configured: Mapping[str, ScoreSettings]) -> dict[str, ScoreSettings]:
        """The deployment to start from (see the module docstring), stored as the current revision."""
        seed = seed_of(configured)
        scores = {k: v.model_dump(exclude={"name"}) for k, v in configured.items()}

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is not None and current.get("seed") == seed:
                return None
            why = "configured" if current is None else "configuration changed"
            return new_revision(current, scores, why, seed=seed)

        try:
            doc = self.store.update_deployment(change)
            assert doc is not None
            deployed = parse_scores(doc, f"model store {self.store.url}")
        except ModelStoreError as exc:
            log.error("%s; starting from the configured models", exc)
            self.refused.append(str(exc))
            return dict(configured)
        missing = set(configured) - set(deployed)
        for name in missing:
            deployed[name] = configured[name]
        self.revision = int(doc.get("revision", 0))
        if doc.get("seed") == seed and doc.get("revision", 1) > 1 and deployed != dict(configured):
            log.info("models: deployment revision %s from the model store (%s) differs from the config file "
                     "(promotions or deploys since); it stays in force until [models] is edited", self.revision,
                     doc.get("history", [{}])[-1].get("change", "?"))
        return deployed

    def restore(self, config: ModelConfig) -> ScoreModel | None:
        """The model's checkpoint, if there is a usable one (a bad one is reported, not fatal)."""
        if not self.restore_enabled:
            return None
        try:
            blob = self.store.load_checkpoint(config.name, config.version)
        except ModelStoreError as exc:
            log.error("%s; %s %s starts fresh", exc, config.name, config.version)
            self.refused.append(str(exc))
            return None
        if blob is None:
            return None
        try:
            model = decode_checkpoint(blob, config, self.key)
        except CheckpointError as exc:
            log.error("%s; starting %s %s from a fresh model", exc, config.name, config.version)
            self.refused.append(str(exc))
            return None
        self.restored.append(f"{config.name} {config.version} ({model.labels} labels)")
        log.info("models: restored %s %s from its checkpoint (%s labels)", config.name, config.version, model.labels)
        return model

    def attach(self, slots: dict[str, ModelSlot]) -> None:
        self.slots = slots

    # ----------------------------------------------------------------- between batches
    def tick(self, force: bool = False) -> None:
        """Poll the deployment and checkpoint when due (the engine calls this before each batch)."""
        now = time.monotonic()
        if force or now >= self._next_poll:
            self._next_poll = now + self.poll_seconds
            self.sync()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + self.checkpoint_seconds
            self.checkpoint()

    def sync(self) -> list[str]:
        """Move to the stored deployment if it has a newer revision; returns what changed."""
        try:
            doc = self.store.read_deployment()
            if doc is None or int(doc.get("revision", 0)) == self.revision:
                return []
            scores = parse_scores(doc, f"model store {self.store.url}, revision {doc.get('revision')}")
        except (ModelStoreError, ValueError) as exc:
            log.error("models: %s; keeping the models in use", exc)
            self._count("errors")
            return []
        self.revision = int(doc.get("revision", 0))
        changes = []
        for name, settings in scores.items():
            slot = self.slots.get(name)
            if slot is not None:
                changes += slot.reconfigure(settings, self.restore)
        for line in changes:
            log.info("models: revision %s: %s", self.revision, line)
        self.changes += changes
        if changes and self.metrics is not None:
            self.metrics.swaps.inc(len(changes))
            self.metrics.export(self.slots, {})
        return changes

    def after_batch(self, drifts: list[Drift]) -> None:
        """Report drift and apply the promotion rules after a batch that resolved labels."""
        for d in drifts:
            log.warning("models: drift detected in %s %s (%s) at label %s: the error rate shifted",
                        d.score, d.version, d.role, d.labels)
        for name, slot in self.slots.items():
            due = slot.promotion_due()
            if due is not None:
                self.promote(name, due, auto=True)

    def promote(self, score: str, challenger: ScoreModel, auto: bool = False) -> list[str]:
        """Make ``challenger`` the score's champion: a new deployment revision, applied now."""
        slot = self.slots[score]
        rule = slot.settings.promote
        why = "manual"
        if auto and rule is not None and challenger.versus is not None:
            mine, theirs = challenger.evaluation.metric(rule.metric), challenger.versus.metric(rule.metric)
            why = (f"auto: {rule.metric} {abs(mine or 0):.4f} vs champion {abs(theirs or 0):.4f} "
                   f"on the same {challenger.labels} labels (margin {rule.margin})")

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            return promoted_deployment(current, score, challenger.version, why)

        try:
            self.store.update_deployment(change)
        except (ModelStoreError, ValueError) as exc:
            log.error("models: promotion of %s %s not stored: %s", score, challenger.version, exc)
            return []
        return self.sync()

    def checkpoint(self) -> None:
        """Save every live model and a status document; drop checkpoints of retired versions."""
        if not self.saves:
            return
        started = time.perf_counter()
        try:
            for name, slot in self.slots.items():
                for model in slot.models:
                    self.store.save_checkpoint(name, model.version, encode_checkpoint(model, self.key))
                live = {m.version for m in slot.models}
                for version in self.store.checkpoints(name):
                    if version not in live:
                        self.store.delete_checkpoint(name, version)
            self.store.write_status(self.status())
        except (ModelStoreError, OSError) as exc:
            log.error("models: checkpoint failed: %s", exc)
            self._count("error")
            return
        self._count("ok")
        if self.metrics is not None:
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
            self.metrics.last_checkpoint.set(time.time())

    def status(self) -> dict[str, Any]:
        """What ``touchline models status`` prints: each score's models and their figures."""
        return {
            "revision": self.revision,
            "saved_at": time.time(),
            "scores": {name: slot_status(slot) for name, slot in self.slots.items()},
        }

    def close(self, checkpoint: bool = True) -> None:
        """Final checkpoint (on shutdown, after the last batch; none after a start that failed,
        which must not replace the checkpoints of the run before with models that saw nothing)."""
        if checkpoint:
            self.checkpoint()
        self.store.close()

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.checkpoints.labels(outcome).inc()


def slot_status(slot: ModelSlot) -> dict[str, Any]:
    """One score's models with their progressive figures, champion first."""
    return {
        "models": [{"role": slot.role(m), "version": m.version, "estimator": m.config.estimator,
                    "params": m.config.params, "origin": m.origin, **m.evaluation.summary()}
                   for m in slot.models],
        "head_to_head": slot.head_to_head(),
        "promote": slot.settings.promote.model_dump() if slot.settings.promote else None,
    }


def promoted_deployment(current: dict[str, Any] | None, score: str, version: str | None, why: str) -> dict[str, Any]:
    """The deployment after the challenger of ``score`` becomes champion. ``version``, when
    given, must be the challenger's (so a command never promotes a model it did not see).

    Raises ValueError when there is nothing to promote."""
    if current is None:
        raise ValueError("no deployment is stored yet (start the engine once, or use 'models deploy')")
    scores = {k: dict(v) for k, v in dict(current.get("scores") or {}).items()}
    if score not in scores:
        raise ValueError(f"no score {score!r} in the deployment (known: {', '.join(sorted(scores))})")
    entry = scores[score]
    challenger = entry.get("challenger")
    if not challenger:
        raise ValueError(f"{score} has no challenger to promote")
    cfg = config_from(score, challenger, "challenger")
    if version is not None and cfg.version != version:
        raise ValueError(f"{score}'s challenger is now {cfg.version}, not {version}")
    old = config_from(score, entry)
    entry.update(cfg.spec())
    entry["challenger"] = None
    scores[score] = entry
    return new_revision(current, scores, f"{score}: promoted {cfg.version} over {old.version} ({why})")
