"""Logging set-up for the entry point: text or one JSON object per line, secrets and personal
data masked.

No log line at any level carries a secret: every record's message, arguments, exception
text and ``extra=`` fields go through :func:`touchline.redact.redact_secrets` (URL
passwords and query values, the configured secrets), whichever library logged it.
Log lines at info level and above never carry personal data either: the engine logs counts,
states and masked URLs, never a contact id, and a filter masks e-mail addresses and
phone numbers that reach a message anyway (a mail server's error quoting a recipient,
say). Debug level is for local troubleshooting and is not masked for personal data.

>>> import logging
>>> record = logging.LogRecord("touchline.x", logging.WARNING, __file__, 1,
...                            "delivery failed: 550 <%s> unknown", ("ada@example.com",), None)
>>> Redact().filter(record)
True
>>> record.getMessage()
'delivery failed: 550 <[email]> unknown'
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, Literal

import orjson

from touchline.entry import asked_format as asked_format
from touchline.redact import redact_secrets

LogFormat = Literal["text", "json"]
LEVELS = ("debug", "info", "warning", "error")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
#: international (E.164-style) numbers, as the SMS connectors address them; a bare digit
#: run is left alone, since epoch milliseconds and dates look the same
_PHONE = re.compile(r"(?<![\w+])\+\d[\d ()-]{6,}\d(?!\w)")
#: What a LogRecord always has; anything else was passed with ``extra=`` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """Mask e-mail addresses and phone numbers.

    >>> redact("sms to +44 7700 900123 failed; mail to bo@example.org bounced at 1767225600000")
    'sms to [phone] failed; mail to [email] bounced at 1767225600000'
    """
    return _PHONE.sub("[phone]", _EMAIL.sub("[email]", text))


class RedactSecrets(logging.Filter):
    """Masks secrets in every record, at every level: the message with its arguments, the
    exception and stack text, and string ``extra=`` fields (:func:`redact_secrets`; a record
    without ``://`` or a known secret in it costs one ``getMessage``).

    >>> record = logging.LogRecord("httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%s"',
    ...                            ("POST", "https://u:pw@h/hook?api_key=k", "HTTP/1.1 500"), None)
    >>> RedactSecrets().filter(record), record.getMessage()
    (True, 'HTTP Request: POST https://u:***@h/hook?api_key=*** "HTTP/1.1 500"')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: shown, masked, not raised here
            message = f"{record.msg} (log arguments did not fit: {record.args!r})"
        record.msg = self.clean(record, message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = self.clean(record, logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.clean(record, record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record, record.stack_info)
        for key in record.__dict__.keys() - _STANDARD:
            value = record.__dict__[key]
            if isinstance(value, str):
                record.__dict__[key] = self.clean(record, value)
        return True

    def clean(self, record: logging.LogRecord, text: str) -> str:
        return redact_secrets(text)


class Redact(RedactSecrets):
    """Masks secrets in every record and personal data in records at info level and above
    (message, arguments, exception)."""

    def clean(self, record: logging.LogRecord, text: str) -> str:
        text = redact_secrets(text)
        return redact(text) if record.levelno >= logging.INFO else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, message, any ``extra=`` fields,
    and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


#: The format of the lines the commands write on stderr themselves (:func:`console`): the log format.
_console: dict[str, LogFormat] = {"format": "text"}


def json_logs() -> bool:
    """Whether stderr carries JSON objects only (``--log-format json``)."""
    return _console["format"] == "json"


def json_line(message: str, level: str = "info", logger: str = "touchline", **fields: Any) -> str:
    """One JSON log object, as :class:`JsonFormatter` writes them, secrets and personal data masked.

    >>> line = json_line("metrics: http://127.0.0.1:9464/metrics", url="http://127.0.0.1:9464/metrics")
    >>> sorted(orjson.loads(line))
    ['level', 'logger', 'message', 'ts', 'url']
    """
    doc: dict[str, Any] = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": level,
                           "logger": logger, "message": redact(redact_secrets(message))}
    doc.update({k: redact(redact_secrets(v)) if isinstance(v, str) else v for k, v in fields.items()})
    return orjson.dumps(doc, default=str).decode()


def console(message: str, level: str = "info", *, stream: Any = None, newline_first: bool = False,
            **fields: Any) -> None:
    """A line the command writes for its operator on stderr, whatever the log level (the banner,
    where /metrics is, progress, the final error): the text as is, or with JSON logs one JSON
    object with ``fields`` beside the message. ``newline_first`` ends a progress line a
    terminal shows (text only)."""
    out = stream or sys.stderr
    if json_logs():
        out.write(json_line(message, level, **fields) + "\n")
    else:
        out.write(("\n" if newline_first else "") + message + "\n")
    out.flush()


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """With JSON logs, an exception nothing caught is one JSON object too (with its traceback)."""
    import traceback

    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    console(f"touchline: internal error: {kind.__name__}: {exc}", level="critical",
            exception="".join(traceback.format_exception(kind, exc, tb)))


def configure(level: str = "warning", fmt: LogFormat = "text", stream: Any = None) -> logging.Handler:
    """Install one root handler on ``stream`` (stderr) in ``fmt``, replacing the one a previous
    call installed (other handlers, such as a test runner's, are left alone); returns it. With
    JSON, Python's warnings and uncaught exceptions go out as JSON objects as well."""
    _console["format"] = fmt
    logging.captureWarnings(fmt == "json")
    if fmt == "json":
        sys.excepthook = _log_uncaught
    elif sys.excepthook is _log_uncaught:
        sys.excepthook = sys.__excepthook__
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("touchline")
    handler.addFilter(Redact())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "touchline"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Internals. httpx logs a line per request at info (one per decision sent to a webhook),
    # so it stays at warning even in debug runs: the webhook connector logs failed attempts
    # itself, with the URL masked; should anyone turn httpx up, the filter masks its URLs too.
    for noisy in ("bytewax", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
