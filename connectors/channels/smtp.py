"""SMTP email connector: render a Jinja2 template per decision and send it.

A template file is ``<templates>/<template>.txt`` (the decision's ``template``, e.g.
``welcome/1`` -> ``welcome/1.txt``): a ``Subject:`` line, a blank line, then the body.
It sees the decision's fields (``contact_id``, ``action``, ``offer``, ``scores``, ...)::

    Subject: Welcome aboard, {{ contact_id }}

    Thanks for signing up. Your first offer: {{ offer or "10% off" }}.

Without a templates directory a plain built-in template is used.
"""

from __future__ import annotations

import csv
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from touchline.decisions.errors import TouchlineError
from touchline.connectors.channels.base import (
    DeliveryError, DeliveryReport, PermanentError, QueuedConnector, RetryableError,
)
from touchline.connectors.channels.config import SmtpConnectorConfig

DEFAULT_TEMPLATE = """Subject: {{ action | replace("_", " ") | capitalize }}

Hello,

this message is about: {{ action | replace("_", " ") }}{% if offer %} (offer: {{ offer }}){% endif %}.
"""

_SAMPLE = {"decision_id": "0" * 32, "contact_id": "c-1", "action": "welcome", "channel": "email",
           "template": "welcome/1", "offer": None, "journey": None, "step": None}


class TemplateError(TouchlineError, ValueError):
    """A template or address setting that cannot work; the message names the file and line."""


class Templates:
    """The compiled templates of one channel (all checked at start, so a typo fails fast).

    >>> t = Templates(None)
    >>> t.render({"action": "cart_reminder", "offer": None, "template": "x"})[0]
    'Cart reminder'
    """

    def __init__(self, directory: Path | None) -> None:
        self.env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                        loader=jinja2.FileSystemLoader(str(directory)) if directory else None)
        self.directory = directory
        self.default = self.env.from_string(DEFAULT_TEMPLATE)
        if directory is not None:
            if not directory.is_dir():
                raise TemplateError(f"templates directory {directory} does not exist")
            for name in self.env.list_templates(extensions=["txt"]):
                try:
                    self.env.get_template(name)
                except jinja2.TemplateSyntaxError as exc:
                    raise TemplateError(f"template {directory / name}, line {exc.lineno}: {exc.message}") from None

    def render(self, decision: dict[str, Any]) -> tuple[str, str]:
        """(subject, body) for a decision."""
        template = self.default
        if self.directory is not None:
            name = f"{decision.get('template') or decision.get('action')}.txt"
            try:
                template = self.env.get_template(name)
            except jinja2.TemplateNotFound:
                raise PermanentError("template_missing", f"no template {self.directory / name}") from None
        try:
            text = template.render(**decision)
        except jinja2.TemplateError as exc:
            raise PermanentError("template_error", f"{template.name or 'default template'}: {exc}") from None
        head, _, body = text.partition("\n\n")
        if not head.startswith("Subject:"):
            raise PermanentError("template_error", f"{template.name}: must start with a 'Subject:' line")
        return head[len("Subject:"):].strip().replace("\n", " "), body.lstrip("\n")


class Recipients:
    """Contact id -> email address: an address book (CSV contact_id,email) or a pattern."""

    def __init__(self, address_book: Path | None, pattern: str | None) -> None:
        self.book: dict[str, str] = {}
        self.pattern = pattern
        if address_book is not None:
            self.book = _read_address_book(address_book)
        if pattern is not None:
            try:
                pattern.format_map(_SAMPLE)
            except (KeyError, IndexError, ValueError) as exc:
                raise TemplateError(f"recipient pattern {pattern!r}: {exc!r} (fields: {', '.join(_SAMPLE)})") from None

    def address(self, decision: dict[str, Any]) -> str:
        contact = str(decision.get("contact_id"))
        if contact in self.book:
            return self.book[contact]
        if self.pattern is None:
            raise PermanentError("no_address", f"contact {contact!r} is not in the address book")
        return self.pattern.format_map(decision)


def _read_address_book(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise TemplateError(f"address book {path} does not exist")
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"contact_id", "email"} <= set(reader.fieldnames):
            raise TemplateError(f"address book {path}: header must have columns contact_id,email "
                                f"(got {reader.fieldnames})")
        for row in reader:
            email = (row.get("email") or "").strip()
            if "@" not in email:
                raise TemplateError(f"address book {path}, line {reader.line_num}: not an email address {email!r}")
            out[(row.get("contact_id") or "").strip()] = email
    return out


@dataclass
class _Session:
    smtp: smtplib.SMTP | None = None


class SmtpConnector(QueuedConnector):
    """Sends one email per decision over SMTP (a connection kept per worker thread).

    Delivery: at least once; the Message-ID is derived from the decision id, so a
    receiving system can drop a duplicate. Retried: connection errors, timeouts, 4xx
    replies. Permanent: 5xx replies, a refused recipient, a missing template or address.
    """

    kind = "smtp"

    def __init__(self, channel: str, report: DeliveryReport, config: SmtpConnectorConfig,
                 seed: int | None = None) -> None:
        super().__init__(channel, report, config, seed)
        self.templates = Templates(config.templates)
        self.recipients = Recipients(config.address_book, config.recipient)

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def open_session(self) -> _Session:
        return _Session()

    def close_session(self, session: _Session) -> None:
        if session.smtp is not None:
            try:
                session.smtp.quit()
            except (smtplib.SMTPException, OSError):
                session.smtp.close()
            session.smtp = None

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        if cfg.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
            if cfg.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
        if cfg.username:
            smtp.login(cfg.username, cfg.password.get_secret_value() if cfg.password else "")
        return smtp

    def message(self, decision: dict[str, Any]) -> EmailMessage:
        """The email for a decision (no I/O)."""
        subject, body = self.templates.render(decision)
        msg = EmailMessage()
        msg["From"] = self.config.sender
        msg["To"] = self.recipients.address(decision)
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{decision.get('decision_id')}@touchline>"
        msg["X-Touchline-Decision-Id"] = str(decision.get("decision_id"))
        msg.set_content(body)
        return msg

    def send(self, decision: dict[str, Any], session: _Session) -> None:
        """Send one decision's email on the session's connection (opened on first use).

        A refused recipient (unless every refusal is a 4xx) and a 5xx answer are permanent;
        a 4xx, a timeout or a lost connection is retried. A connection that failed is
        dropped, so the retry opens a new one."""
        msg = self.message(decision)
        try:
            refused = self._transmit(msg, session)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refused_error(msg["To"], exc) from None
        except smtplib.SMTPResponseException as exc:
            self._drop(session)
            raise _response_error(exc) from None
        except (smtplib.SMTPServerDisconnected, socket.timeout, TimeoutError) as exc:
            self._drop(session)
            raise RetryableError("timeout" if not isinstance(exc, smtplib.SMTPServerDisconnected) else "disconnected",
                                 f"{self.config.host}:{self.config.port}: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            self._drop(session)
            raise RetryableError("connection", f"{self.config.host}:{self.config.port}: {exc}") from None
        if refused:
            raise PermanentError("recipient_refused", f"{refused}")

    def _transmit(self, msg: EmailMessage, session: _Session) -> dict[str, tuple[int, bytes]]:
        """Send ``msg``, connecting first if the session has no connection; returns the
        recipients the server refused (some accepted, so the message went out)."""
        if session.smtp is None:
            session.smtp = self._connect()
        return session.smtp.send_message(msg)

    def _drop(self, session: _Session) -> None:
        if session.smtp is not None:
            session.smtp.close()
            session.smtp = None


def _refused_error(to: str, exc: smtplib.SMTPRecipientsRefused) -> DeliveryError:
    """Every recipient refused: worth a retry only if every refusal was temporary (4xx)."""
    codes = [code for code, _ in exc.recipients.values()]
    error = RetryableError if all(400 <= c < 500 for c in codes) else PermanentError
    return error("recipient_refused", f"{to}: {exc.recipients}")


def _response_error(exc: smtplib.SMTPResponseException) -> DeliveryError:
    """An error answer from the server: 4xx is temporary (retried), anything else permanent."""
    if 400 <= exc.smtp_code < 500:
        return RetryableError("smtp_4xx", f"{exc.smtp_code} {exc.smtp_error!r}")
    return PermanentError("smtp_5xx", f"{exc.smtp_code} {exc.smtp_error!r}")
