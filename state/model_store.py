"""Where models live between runs: the deployment (which model is champion and challenger
for each score) and checkpoints of their learned state. A directory in the embedded
setup (``file://DIR``), Redis in production (``redis://``, ``rediss://``,
``redis+cluster://``), chosen by URL scheme like the state store.

A checkpoint is one self-describing blob: a header line (format, score, version and
definition of the model, River and Python versions, SHA-256 of the payload, an
HMAC when ``models.checkpoint_key`` is set) and a pickle of the estimator and its
evaluation. :func:`decode_checkpoint` checks all of it before unpickling, so a corrupt,
truncated, foreign or incompatible checkpoint is a :class:`CheckpointError` that says
which, never a crash; the engine then starts that model fresh. Pickles run code when
loaded: point ``models.store`` only at storage you trust, and set a key to refuse
checkpoints nobody with the key wrote.

>>> from touchline.decisions.estimators import ModelConfig, ScoreModel
>>> m = ScoreModel.build(ModelConfig(name="lead"))
>>> blob = encode_checkpoint(m)
>>> decode_checkpoint(blob, m.config).version == m.version
True
>>> try:
...     decode_checkpoint(blob[:-5], m.config)
... except CheckpointError as exc:
...     print(exc)
checkpoint of lead logreg-a6e0dcb5 is corrupt: payload checksum mismatch (truncated or altered)
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import pickle
import platform
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import orjson
import river

from touchline.decisions.errors import TouchlineError
from touchline.decisions.estimators import ModelConfig, ScoreModel

T = TypeVar("T")

MAGIC = b"TOUCHLINE-MODEL-CHECKPOINT 1\n"
FORMAT = 1
#: Deployment documents keep this many history entries.
HISTORY = 50

Update = Callable[[dict[str, Any] | None], dict[str, Any] | None]


class CheckpointError(TouchlineError, ValueError):
    """A checkpoint that cannot be used; the message says whose and why."""


class ModelStoreError(TouchlineError, RuntimeError):
    """The model store could not be read or written."""


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def encode_checkpoint(model: ScoreModel, key: bytes | None = None, training: dict[str, Any] | None = None) -> bytes:
    """The model's learned state and evaluation as one blob (see the module docstring);
    ``training`` says, for a model trained offline, on what (``touchline models train``)."""
    payload = pickle.dumps(
        {"estimator": model.estimator, "evaluation": model.evaluation, "versus": model.versus,
         "held": model.held, "calibrator": model.calibrator},
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    header: dict[str, Any] = {
        "format": FORMAT,
        "score": model.name,
        "version": model.version,
        "spec": model.config.spec(),
        "labels": model.labels,
        "river": river.__version__,
        "python": platform.python_version(),
        "saved_at": time.time(),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    if training is not None:
        header["training"] = training
    if key is not None:
        header["hmac"] = hmac.new(key, payload, hashlib.sha256).hexdigest()
    return MAGIC + orjson.dumps(header) + b"\n" + payload


def read_header(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a checkpoint, or CheckpointError if it is not one."""
    if not blob.startswith(MAGIC):
        raise CheckpointError("not a Touchline model checkpoint (bad magic)")
    head, sep, payload = blob[len(MAGIC):].partition(b"\n")
    if not sep:
        raise CheckpointError("header is truncated")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise CheckpointError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError("header is not a JSON object")
    return header, payload


def decode_checkpoint(blob: bytes, config: ModelConfig, key: bytes | None = None) -> ScoreModel:
    """Rebuild the model ``config`` describes from ``blob``, refusing anything that does not fit."""
    who = f"{config.name} {config.version}"
    try:
        header, payload = read_header(blob)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint of {who} is corrupt: {exc}") from None
    _check_header(header, payload, config, key, who)
    state = _unpickle(payload, who)
    model = ScoreModel.build(config)
    estimator = state["estimator"]
    if type(estimator) is not type(model.estimator):
        raise CheckpointError(f"checkpoint of {who} holds a {type(estimator).__name__}, "
                              f"the configuration builds a {type(model.estimator).__name__}")
    model.estimator, model.evaluation, model.versus = estimator, state["evaluation"], state["versus"]
    model.held = state.get("held") or model.held  # checkpoints written before these had none
    model.calibrator = state.get("calibrator") or model.calibrator
    model.origin = _origin(header, model.labels)
    return model


def _origin(header: dict[str, Any], labels: int) -> str:
    """Where a restored model comes from, for status and summaries.

    >>> _origin({}, 12), _origin({"training": {"labels": 900, "input": "may.jsonl"}}, 0)
    ('restored, 12 labels', 'restored, 0 labels; trained offline on 900 labels of may.jsonl')
    """
    training = header.get("training")
    trained = ""
    if isinstance(training, dict):
        trained = f"; trained offline on {training.get('labels')} labels of {training.get('input')}"
    return f"restored, {labels} labels{trained}"


def spec_of(header: dict[str, Any]) -> dict[str, Any]:
    """A header's model definition with the keys added since it was written at their defaults
    (a checkpoint from before calibration and warm starts existed still fits its configuration)."""
    spec = header.get("spec")
    if not isinstance(spec, dict):
        return {}
    return {"calibration": "none", "warm_start": None, **spec}


def _check_header(header: dict[str, Any], payload: bytes, config: ModelConfig, key: bytes | None, who: str) -> None:
    """Refuse a checkpoint of another format, model or configuration, an altered payload, one not
    signed with ``key`` (when set), or one saved with another minor version of River."""
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint of {who} has format {header.get('format')!r}; this engine reads {FORMAT}")
    if header.get("version") != config.version or spec_of(header) != config.spec():
        raise CheckpointError(f"checkpoint of {who} holds model {header.get('version')!r} "
                              f"({header.get('spec')}), not this configuration")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"checkpoint of {who} is corrupt: payload checksum mismatch (truncated or altered)")
    if key is not None and not _signed(header.get("hmac"), payload, key):
        raise CheckpointError(f"checkpoint of {who} is not signed with models.checkpoint_key; refusing to load it")
    saved_with = str(header.get("river", "?"))
    if _minor(saved_with) != _minor(river.__version__):
        raise CheckpointError(f"checkpoint of {who} was saved with River {saved_with}; this engine runs "
                              f"River {river.__version__} (model internals differ between minor versions)")


def _signed(signature: Any, payload: bytes, key: bytes) -> bool:
    """Whether ``signature`` is the payload's HMAC-SHA256 under ``key`` (compared in constant time)."""
    return isinstance(signature, str) and hmac.compare_digest(
        signature, hmac.new(key, payload, hashlib.sha256).hexdigest())


def _unpickle(payload: bytes, who: str) -> dict[str, Any]:
    """The estimator, its evaluation, its comparison with the champion, its held labels and its
    calibration map (the last two may be absent), from a checked payload."""
    try:
        state = pickle.loads(payload)
        missing = [k for k in ("estimator", "evaluation", "versus") if k not in state]
        if missing:
            raise KeyError(", ".join(missing))
    except Exception as exc:  # a pickle from another code version can fail in many ways
        raise CheckpointError(f"checkpoint of {who} cannot be loaded: {type(exc).__name__}: {exc}") from None
    return dict(state)


class ModelStore(ABC):
    """Deployment, status and checkpoints; one implementation per URL scheme."""

    url: str

    @abstractmethod
    def read_deployment(self) -> dict[str, Any] | None: ...

    @abstractmethod
    def update_deployment(self, change: Update) -> dict[str, Any] | None:
        """Atomically apply ``change`` to the current document (None: leave it); returns the
        document now stored."""

    @abstractmethod
    def save_checkpoint(self, score: str, version: str, blob: bytes) -> None: ...

    @abstractmethod
    def load_checkpoint(self, score: str, version: str) -> bytes | None: ...

    @abstractmethod
    def checkpoints(self, score: str) -> list[str]:
        """Versions with a checkpoint for ``score``."""

    @abstractmethod
    def delete_checkpoint(self, score: str, version: str) -> None: ...

    @abstractmethod
    def write_status(self, status: dict[str, Any]) -> None: ...

    @abstractmethod
    def read_status(self) -> dict[str, Any] | None: ...

    def close(self) -> None:
        return None


def _safe(part: str) -> str:
    """A score or version as a file-name part (they are [a-z0-9_-] already; be sure)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in part)


class FileModelStore(ModelStore):
    """A directory: ``deployment.json``, ``status.json`` and ``<score>/<version>.ckpt``.
    Writes go to a temporary file renamed into place, so a reader (or a crash) never sees
    half a file; the deployment is updated under an exclusive lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dir = Path(url.partition("://")[2] or ".")
        if self.dir.exists() and not self.dir.is_dir():
            raise ModelStoreError(f"models.store {url}: {self.dir} is not a directory")

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelStoreError(f"models.store {self.url}: cannot create {path.parent}: {exc}") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _read_json(self, name: str) -> dict[str, Any] | None:
        path = self.dir / name
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ModelStoreError(f"{path}: unreadable ({exc})") from None
        if not isinstance(data, dict):
            raise ModelStoreError(f"{path}: not a JSON object")
        return data

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelStoreError(f"models.store {self.url}: cannot create directory: {exc}") from None
        with open(self.dir / ".deployment.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read_deployment(self) -> dict[str, Any] | None:
        return self._read_json("deployment.json")

    def update_deployment(self, change: Update) -> dict[str, Any] | None:
        if not self.dir.exists() and change(None) is None:  # a refused change (a typo'd --out) creates nothing
            return None
        with self._locked():
            current = self.read_deployment()
            new = change(current)
            if new is None:
                return current
            self._write(self.dir / "deployment.json", orjson.dumps(new, option=orjson.OPT_INDENT_2))
            return new

    def save_checkpoint(self, score: str, version: str, blob: bytes) -> None:
        self._write(self.dir / _safe(score) / f"{_safe(version)}.ckpt", blob)

    def load_checkpoint(self, score: str, version: str) -> bytes | None:
        try:
            return (self.dir / _safe(score) / f"{_safe(version)}.ckpt").read_bytes()
        except FileNotFoundError:
            return None

    def checkpoints(self, score: str) -> list[str]:
        folder = self.dir / _safe(score)
        return sorted(p.stem for p in folder.glob("*.ckpt")) if folder.is_dir() else []

    def delete_checkpoint(self, score: str, version: str) -> None:
        (self.dir / _safe(score) / f"{_safe(version)}.ckpt").unlink(missing_ok=True)

    def write_status(self, status: dict[str, Any]) -> None:
        self._write(self.dir / "status.json", orjson.dumps(status, option=orjson.OPT_INDENT_2))

    def read_status(self) -> dict[str, Any] | None:
        return self._read_json("status.json")


_CAS = """
local cur = redis.call('GET', KEYS[1])
local rev = 0
if cur then rev = tonumber(cjson.decode(cur)['revision']) or 0 end
if tonumber(ARGV[1]) ~= rev then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class RedisModelStore(ModelStore):
    """Keys under ``touchline:models:`` in the state store's Redis (or another one). The
    deployment is replaced by a compare-and-set on its revision (one Lua call), so two
    writers (a promotion command and an automatic promotion) never lose each other's change.
    All keys share one hash tag, so a Redis Cluster keeps them on one node."""

    PREFIX = "touchline:models:{m}:"

    def __init__(self, url: str, username: str | None = None, password: str | None = None,
                 socket_timeout: float = 5.0) -> None:
        import redis

        from touchline.state.base import StoreOptions
        from touchline.state.redis import _client

        self.url = url
        try:
            self.client: Any = _client(url, StoreOptions(socket_timeout=socket_timeout, username=username,
                                                         password=password), decode_responses=False)
            self.client.ping()
        except (redis.RedisError, OSError, ValueError) as exc:
            from touchline.redact import redact_url

            raise ModelStoreError(f"models.store {redact_url(url)}: {exc}") from None
        self._cas = self.client.register_script(_CAS)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import redis

        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            raise ModelStoreError(f"model store: {what} failed: {exc}") from None

    def _get_json(self, key: str) -> dict[str, Any] | None:
        raw = self._call(f"reading {key}", lambda: self.client.get(self.PREFIX + key))
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ModelStoreError(f"model store key {self.PREFIX + key} is not JSON") from None
        if not isinstance(data, dict):
            raise ModelStoreError(f"model store key {self.PREFIX + key} is not a JSON object")
        return data

    def read_deployment(self) -> dict[str, Any] | None:
        return self._get_json("deployment")

    def update_deployment(self, change: Update) -> dict[str, Any] | None:
        for _ in range(10):
            current = self.read_deployment()
            new = change(current)
            if new is None:
                return current
            expected = int(current.get("revision", 0)) if current else 0
            done = self._call("writing the deployment", lambda: self._cas(
                keys=[self.PREFIX + "deployment"], args=[expected, orjson.dumps(new)]))
            if done:
                return new
        raise ModelStoreError("model store: the deployment kept changing under this update (10 attempts)")

    def _ckpt(self, score: str, version: str) -> str:
        return f"{self.PREFIX}ckpt:{score}:{version}"

    def save_checkpoint(self, score: str, version: str, blob: bytes) -> None:
        self._call("saving a checkpoint", lambda: self.client.set(self._ckpt(score, version), blob))

    def load_checkpoint(self, score: str, version: str) -> bytes | None:
        blob: bytes | None = self._call("loading a checkpoint", lambda: self.client.get(self._ckpt(score, version)))
        return blob

    def checkpoints(self, score: str) -> list[str]:
        prefix = self._ckpt(score, "")
        keys = self._call("listing checkpoints", lambda: list(self.client.scan_iter(match=prefix + "*", count=200)))
        return sorted((k.decode() if isinstance(k, bytes) else k)[len(prefix):] for k in keys)

    def delete_checkpoint(self, score: str, version: str) -> None:
        self._call("deleting a checkpoint", lambda: self.client.delete(self._ckpt(score, version)))

    def write_status(self, status: dict[str, Any]) -> None:
        self._call("writing the status", lambda: self.client.set(self.PREFIX + "status", orjson.dumps(status)))

    def read_status(self) -> dict[str, Any] | None:
        return self._get_json("status")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection must not mask the real error
            pass


def open_model_store(url: str, username: str | None = None, password: str | None = None) -> ModelStore:
    """The model store for ``url`` (``file://DIR`` or a Redis URL).

    >>> try:
    ...     open_model_store("ftp://x")
    ... except ModelStoreError as exc:
    ...     print(exc)
    models.store 'ftp://x': unknown scheme 'ftp' (file, redis, rediss, redis+cluster, rediss+cluster)
    """
    scheme, sep, _ = url.partition("://")
    if scheme == "file" and sep:
        return FileModelStore(url)
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        return RedisModelStore(url, username, password)
    raise ModelStoreError(f"models.store {url!r}: unknown scheme {scheme!r} "
                          "(file, redis, rediss, redis+cluster, rediss+cluster)")


def new_revision(current: dict[str, Any] | None, scores: dict[str, Any], change: str, seed: str | None = None,
                 now: float | None = None) -> dict[str, Any]:
    """The next deployment document: ``scores`` (name -> ScoreSettings as a dict), one
    history line saying what changed and why.

    >>> doc = new_revision(None, {"lead": {}}, "configured", seed="s1", now=0)
    >>> new_revision(doc, {"lead": {}}, "promoted", now=1)["revision"], doc["seed"]
    (2, 's1')
    """
    now = time.time() if now is None else now
    revision = int(current.get("revision", 0)) + 1 if current else 1
    history = list(current.get("history", [])) if current else []
    history.append({"revision": revision, "at": now, "change": change})
    return {
        "revision": revision,
        "seed": seed if seed is not None else (current or {}).get("seed"),
        "updated_at": now,
        "scores": scores,
        "history": history[-HISTORY:],
    }
