"""The HTTP API as a Starlette application (served by uvicorn: :mod:`touchline.api.server`).

- ``GET /v1/contacts/{id}`` (``?id_type=anonymous`` for an anonymous id): the profile.
- ``POST /v1/decide``: the next best action for a placement, now.
- ``POST /v1/events``: one event, a JSON array of them, or NDJSON; applied before the answer.
- ``GET /openapi.json``; ``/healthz``, ``/readyz`` and ``/metrics`` as the engine serves them.

Every ``/v1`` request needs an API key and is rate-limited per key; every error is JSON
(``{"error": code, "message": ..., "field": ...}``), never a traceback.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from typing import Any, Awaitable, Callable, Iterator

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from touchline.api.guard import Keys, Limits
from touchline.api.schema import MAX_ID, check_text, json_body, openapi_document, parse_decide
from touchline.api.worker import ApiError, ApiWorker, Job
from touchline.decisions.requests import DECIDE, PROFILE, Ask
from touchline.metrics.api_metrics import ApiMetrics
from touchline.metrics.server import Health
from touchline.settings import ApiSettings

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Api:
    """The endpoints, over the engine thread that answers them."""

    def __init__(self, worker: ApiWorker, settings: ApiSettings, keys: Keys, health: Health,
                 registry: CollectorRegistry, exposed: CollectorRegistry | None = None) -> None:
        self.worker, self.settings, self.keys, self.health, self.registry = worker, settings, keys, health, registry
        #: what /metrics answers from (``serve --workers``: every worker's samples); else ``registry``
        self.exposed = exposed or registry
        self.limits = Limits(settings.rate_per_second, settings.burst)
        self.metrics = ApiMetrics(registry)
        self._openapi = orjson.dumps(openapi_document())
        self._ids = request_ids()

    # ------------------------------------------------------------------ /v1
    async def contact(self, request: Request) -> Response:
        ident = _check_id(request.path_params["id"], "id")
        id_type = request.query_params.get("id_type", "contact")
        if id_type not in ("contact", "anonymous"):
            raise ApiError(400, "bad_request", f"id_type: {id_type!r} is not contact or anonymous", field="id_type")
        contact = id_type == "contact"
        ask = Ask(PROFILE, ident if contact else None, None if contact else ident, request_id=next(self._ids))
        await self._run(Job(ask.request_id, asks=[ask]))
        return JsonResponse(_answer_of(ask, f"{id_type} id {ident!r}"))

    async def decide(self, request: Request) -> Response:
        asked = parse_decide(await self._body(request))
        ctx = asked.context
        ask = Ask(DECIDE, asked.contact_id, asked.anonymous_id if asked.contact_id is None else None, ctx.channel,
                  ctx.placement, ctx.page, next(self._ids))
        await self._run(Job(ask.request_id, asks=[ask]))
        who = f"contact id {asked.contact_id!r}" if asked.contact_id else f"anonymous id {asked.anonymous_id!r}"
        return JsonResponse(_answer_of(ask, who))

    async def events(self, request: Request) -> Response:
        ndjson = "ndjson" in request.headers.get("content-type", "")
        lines, single = events_in(await self._body(request), ndjson, self.settings.max_events)
        job = await self._run(Job(next(self._ids), lines=lines))
        answer = _tally(job.statuses)
        if single and answer["dead_letters"]:
            first = job.statuses[0]
            raise ApiError(400, "invalid_event", f"{first['reason']}: {first['detail']} (dead-lettered)", **answer)
        return JsonResponse(answer)

    async def _run(self, job: Job) -> Job:
        return await self.worker.run(job, self.settings.timeout_seconds)

    async def _body(self, request: Request) -> bytes:
        """The body, at most ``api.max_body_bytes`` (a 413 before reading more)."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def guarded(self, endpoint: str, handler: Handler) -> Handler:
        """``handler`` behind the key check and the rate limit, its errors as JSON, timed."""

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            try:
                self.limits.check(self.keys.identify(request.headers))
                response = await handler(request)
            except ApiError as exc:
                response = error_response(exc)
            except Exception as exc:  # noqa: BLE001 - never a traceback to the client
                log.warning("%s raised %s: %s", endpoint, type(exc).__name__, exc, exc_info=True)
                response = error_response(ApiError(500, "internal_error", f"{type(exc).__name__} (a bug to report)"))
            self.metrics.observe(endpoint, response.status_code, time.perf_counter() - started)
            return response

        return run

    # ------------------------------------------------------------------ open endpoints
    async def openapi(self, _request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    async def healthz(self, _request: Request) -> Response:
        code, body = self.health.liveness()
        return JsonResponse(body, status_code=code)

    async def readyz(self, _request: Request) -> Response:
        code, body = await run_in_threadpool(self.health.readiness)
        return JsonResponse(body, status_code=code)

    async def prometheus(self, _request: Request) -> Response:
        return Response(generate_latest(self.exposed), media_type=CONTENT_TYPE_LATEST)


def request_ids() -> Iterator[str]:
    """Request ids unique across processes and restarts: a random prefix drawn once, then a
    count. Not ``uuid4`` per request: its ``os.urandom`` call lets go of the GIL, and the event
    loop then waits for the engine thread to hand it back (up to the switch interval).

    >>> ids = request_ids()
    >>> a, b = next(ids), next(ids)
    >>> len(a), a[:16] == b[:16], a != b
    (32, True, True)
    """
    prefix = secrets.token_hex(8)
    return (f"{prefix}{n:016x}" for n in itertools.count())


def build_app(api: Api) -> Starlette:
    routes = [
        Route("/v1/contacts/{id:path}", api.guarded("contact", api.contact), methods=["GET"]),
        Route("/v1/decide", api.guarded("decide", api.decide), methods=["POST"]),
        Route("/v1/events", api.guarded("events", api.events), methods=["POST"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})  # type: ignore[dict-item]


async def _http_error(_request: Request, exc: HTTPException) -> Response:
    """Starlette's own answers (no such path, wrong method) as JSON too."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = {404: "no such endpoint: see /openapi.json"}.get(exc.status_code, str(exc.detail))
    return error_response(ApiError(exc.status_code, code, message))


def error_response(exc: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status == 429:
        headers["Retry-After"] = str(max(1, round(exc.extra.get("retry_after", 1))))
    return JsonResponse(exc.body(), status_code=exc.status, headers=headers)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the body is over api.max_body_bytes ({size:,} > {limit:,} bytes)")


def _check_id(value: str, name: str) -> str:
    """An id as the event contract allows it (1-256 characters, no control characters); a 400 naming it."""
    try:
        check_text(value)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"{name}: {exc}", field=name) from None
    if not 0 < len(value) <= MAX_ID:
        raise ApiError(400, "bad_request", f"{name}: must be 1 to {MAX_ID} characters", field=name)
    return value


def _answer_of(ask: Ask, who: str) -> dict[str, Any]:
    """A request's answer; a 404 when the identity has no stored events."""
    if ask.unknown or ask.answer is None:
        raise ApiError(404, "not_found", f"no contact with {who}: no event of it is stored")
    if "error" in ask.answer:
        raise ApiError(500, "internal_error", ask.answer["error"])
    return ask.answer


def _tally(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {"accepted": 0, "duplicate": 0, "dead_letter": 0, "dropped": 0}
    for status in statuses:
        counts[status["status"]] += 1
    return {"accepted": counts["accepted"], "duplicates": counts["duplicate"], "dead_letters": counts["dead_letter"],
            "dropped": counts["dropped"], "events": statuses}


# ---------------------------------------------------------------------- event bodies

def events_in(body: bytes, ndjson: bool, limit: int) -> tuple[list[bytes], bool]:
    """The raw events of a ``POST /v1/events`` body, each as sent (the engine parses them, so a
    bad one is dead-lettered with its reason like a bad line of a file), and whether the body
    was one object. NDJSON: one event per non-blank line.

    >>> events_in(b'[{"a": 1}, {"a": 1, "a": 2}]', False, 10)
    ([b'{"a": 1}', b'{"a": 1, "a": 2}'], False)
    """
    lines, single = (_ndjson(body), False) if ndjson else _json_events(body, limit)
    if not lines:
        raise ApiError(400, "bad_request", "no events in the body")
    if len(lines) > limit:
        raise _too_many(len(lines), limit)
    return lines, single


def _ndjson(body: bytes) -> list[bytes]:
    """One event per non-blank line (a bad one is dead-lettered like a bad line of a file)."""
    return [line.rstrip(b"\r") for line in body.split(b"\n") if line.strip()]


def _json_events(body: bytes, limit: int) -> tuple[list[bytes], bool]:
    """A JSON object (one event) or array of them; anything else is a 400."""
    doc = json_body(body)
    if isinstance(doc, dict):
        return [body.strip()], True
    if not isinstance(doc, list):
        raise ApiError(400, "bad_request", "the body must be an event (a JSON object) or a JSON array of events")
    if len(doc) > limit:
        raise _too_many(len(doc), limit)
    return _items(body, doc), False


def _too_many(count: int, limit: int) -> ApiError:
    return ApiError(413, "too_large", f"{count:,} events in one request; api.max_events is {limit:,}")


def _items(body: bytes, doc: list[Any]) -> list[bytes]:
    """Each item of a JSON array as its own text, so a repeated key in one still shows (it is
    refused as the contract says, not read as "the last one wins"); items nested too deeply
    for the json module are written out again instead."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    at = _skip(text, text.index("[") + 1)
    out: list[bytes] = []
    try:
        while text[at] != "]":
            _, end = decoder.raw_decode(text, at)
            out.append(text[at:end].encode())
            at = _skip(text, end)
            if text[at] == ",":
                at = _skip(text, at + 1)
    except RecursionError:
        return [orjson.dumps(item) for item in doc]
    return out


def _skip(text: str, at: int) -> int:
    """Past the JSON whitespace at ``at``."""
    while text[at] in " \t\n\r":
        at += 1
    return at
