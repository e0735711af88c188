"""The API's request bodies (validated with pydantic) and its OpenAPI 3.1 document.

Request schemas are generated from the models that validate the requests, and the event
schema is the engine's own (``decisions/schema/event-v1.json``), so the document cannot drift
from what is checked; the answers' schemas are written here, and the tests hold the real
answers of a running server to them.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import touchline
from touchline.api.worker import ApiError
from touchline.decisions.events import load_schema
from touchline.decisions.policy import ANY_CHANNELS

#: Longest id (as the event contract) and the longest page a context may name.
MAX_ID, MAX_PAGE = 256, 2048


def check_text(value: str | None) -> str | None:
    """Text without control characters (ids go into keys and hashes joined by U+001F).

    >>> check_text("c-1"), check_text(None)
    ('c-1', None)
    """
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (U+0000-U+001F, U+007F)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecideContext(_Strict):
    """Where the answer will be shown."""

    placement: str = Field(min_length=1, max_length=MAX_ID, description="the slot asking, e.g. product_page_banner")
    page: str | None = Field(default=None, max_length=MAX_PAGE, description="the page or screen, e.g. /products/p-7")
    channel: str = Field(default="web", description="where the action is shown or sent",
                         json_schema_extra={"enum": list(ANY_CHANNELS)})

    @field_validator("placement", "page")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return check_text(value)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value not in ANY_CHANNELS:
            raise ValueError(f"unknown channel {value!r}; known: {', '.join(ANY_CHANNELS)}")
        return value


class DecideRequest(_Strict):
    """The next best action for one contact (or anonymous visitor) at one placement, now."""

    contact_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID,
                                   description="the contact (takes precedence over anonymous_id)")
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID,
                                     description="an anonymous visitor, resolved through identity links")
    context: DecideContext

    @field_validator("contact_id", "anonymous_id")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return check_text(value)

    @model_validator(mode="after")
    def _someone(self) -> "DecideRequest":
        if self.contact_id is None and self.anonymous_id is None:
            raise ValueError("give contact_id or anonymous_id")
        return self


def parse_decide(body: bytes) -> DecideRequest:
    """The request in ``body``; a 400 naming the field (or the JSON problem) otherwise.

    >>> parse_decide(b'{"contact_id": "c1", "context": {"placement": "p", "channel": "fax"}}')
    Traceback (most recent call last):
    ...
    touchline.api.worker.ApiError: context.channel: unknown channel 'fax'; known: email, sms, push, sales_task, web, in_app
    """
    doc = json_body(body)
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", f"the body must be a JSON object, not {_kind(doc)}")
    try:
        return DecideRequest.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        raise ApiError(400, "bad_request", f"{where}: {message}" if where else message, field=where or None) from None


def json_body(body: bytes) -> Any:
    """``body`` parsed; a 400 saying where it is not JSON."""
    if not body.strip():
        raise ApiError(400, "bad_json", "the body is empty: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None


def _kind(doc: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(doc), "null")


# ---------------------------------------------------------------------- the OpenAPI document
_ERROR = {"type": "object", "required": ["error", "message"], "properties": {
    "error": {"type": "string", "description": "bad_request, bad_json, unauthorized, not_found, too_large, "
              "rate_limited, invalid_event, unavailable, internal_error"},
    "message": {"type": "string"}, "field": {"type": ["string", "null"]},
    "retry_after": {"type": "number"}}}
_HELD = {"type": "object", "required": ["action", "channel", "reason"], "properties": {
    "action": {"type": "string"}, "channel": {"type": "string"},
    "reason": {"type": "string", "description": "not_offered, not_triggered, or the policy's: holdout, "
               "unreachable, bounced, no_consent, quiet_hours, cooldown, channel_cap, global_cap, arbitration, "
               "cap_reserved_elsewhere"},
    "detail": {"type": "string"}}}
_DECIDE_ANSWER = {"type": "object", "required": ["action", "contact_id", "channel", "placement", "reasons"],
                  "properties": {
    "action": {"type": ["string", "null"], "description": "null: nothing to show; reasons says why"},
    "contact_id": {"type": "string"}, "channel": {"type": "string"}, "placement": {"type": "string"},
    "decision_id": {"type": "string"}, "template": {"type": "string"}, "offer": {"type": ["string", "null"]},
    "reasons": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"$ref": "#/components/schemas/HeldBack"}]},
                "description": "with an action: why it was chosen; without: why each candidate was held back"},
    "held_back": {"type": "array", "items": {"$ref": "#/components/schemas/HeldBack"}},
    "decision": {"type": "object", "description": "the decision record, as written to the decisions output"}}}
_PROFILE_ANSWER = {"type": "object", "required": ["contact_id", "anonymous_id", "known", "as_of", "summary",
                                                  "windows", "attributes", "scores", "journeys", "consent",
                                                  "last_decisions"], "properties": {
    "contact_id": {"type": ["string", "null"]}, "anonymous_id": {"type": ["string", "null"]},
    "known": {"type": "boolean"}, "as_of": {"type": "string", "format": "date-time"},
    "summary": {"type": "object"},
    "windows": {"type": "object", "description": "window (1h, 24h, 7d, 30d) -> event type -> count",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}}},
    "attributes": {"type": "object", "description": "attribute name -> value"},
    "scores": {"type": "object", "additionalProperties": {"type": "object", "required": ["p", "model", "version"],
                                                          "properties": {"p": {"type": "number"}}}},
    "journeys": {"type": "array", "items": {"type": "object", "required": ["journey", "active", "step"]}},
    "consent": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["granted", "source"],
        "properties": {"granted": {"type": "boolean"}, "source": {"enum": ["contact", "default"]}}}},
    "engagement": {"type": "object"},
    "send_time": {"type": "object", "description": "best send time: the contact's best local hour (shrunk toward "
                  "the population's pattern; null before there is any pattern), the zone it is in, and the "
                  "opens and clicks by local hour it was learned from",
                  "required": ["best_local_hour", "timezone", "engagements", "engagement_by_local_hour"],
                  "properties": {"best_local_hour": {"type": ["integer", "null"], "minimum": 0, "maximum": 23},
                                 "timezone": {"type": "string"}, "engagements": {"type": "integer"},
                                 "engagement_by_local_hour": {"type": "array", "items": {"type": "integer"}}}},
    "last_decisions": {"type": "array", "items": {"type": "object", "required": ["time", "action", "channel"]}}}}
_EVENTS_ANSWER = {"type": "object", "required": ["accepted", "duplicates", "dead_letters", "dropped", "events"],
                  "properties": {
    **{k: {"type": "integer"} for k in ("accepted", "duplicates", "dead_letters", "dropped")},
    "events": {"type": "array", "items": {"type": "object", "required": ["index", "status"], "properties": {
        "index": {"type": "integer"}, "status": {"enum": ["accepted", "duplicate", "dead_letter", "dropped"]},
        "reason": {"type": "string"}, "detail": {"type": "string"}}}}}}


def _responses(ok: str, *codes: int) -> dict[str, Any]:
    text = {400: "bad request: the message names the field", 401: "no or an unknown API key",
            404: "no contact with this id", 413: "body over api.max_body_bytes or events over api.max_events",
            429: "over api.rate_per_second for this key (Retry-After says when to try again)",
            503: "the state store is unreachable or slow (the message says which)"}
    out: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{ok}"}}}}}
    for code in (*codes, 401, 429, 503):
        out[str(code)] = {"description": text[code], "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def _paths() -> dict[str, Any]:
    ident = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": MAX_ID}}
    id_type = {"name": "id_type", "in": "query", "required": False,
               "schema": {"enum": ["contact", "anonymous"], "default": "contact"},
               "description": "anonymous: id is an anonymous id, answered with the profile it resolves to"}
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DecideRequest"}}}}
    events = {"required": True, "content": {
        "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Event"},
                                                  {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}]}},
        "application/x-ndjson": {"schema": {"type": "string", "description": "one event per line"}}}}
    return {
        "/v1/contacts/{id}": {"get": {"summary": "A contact's profile", "operationId": "getContact",
                                      "parameters": [ident, id_type], "responses": _responses("Profile", 400, 404)}},
        "/v1/decide": {"post": {"summary": "The next best action for a placement, now", "operationId": "decide",
                                "requestBody": body, "responses": _responses("DecideAnswer", 400, 404, 413)}},
        "/v1/events": {"post": {"summary": "Apply one event or a batch, synchronously", "operationId": "postEvents",
                                "requestBody": events, "responses": _responses("EventsAnswer", 400, 413)}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API (served at ``/openapi.json``)."""
    request = DecideRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = request.pop("$defs", {})
    schemas.update({"DecideRequest": request, "DecideAnswer": _DECIDE_ANSWER, "HeldBack": _HELD,
                    "Profile": _PROFILE_ANSWER, "EventsAnswer": _EVENTS_ANSWER, "Error": _ERROR,
                    "Event": {k: v for k, v in load_schema().items() if k not in ("$schema", "$id")}})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Touchline API", "version": touchline.__version__,
                 "description": "Profiles and the next best action on request (README: 'HTTP API')."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": _paths(),
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "one of api.keys"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "one of api.keys"}}},
    }
