"""Secrets never printed: the one redaction for everything Touchline prints, logs or writes.

What counts as a secret:

* in a URL (``scheme://user:password@host/path?query#fragment``): the password (the user
  name stays, as redis-py shows it), and every query-string and fragment value (the
  parameter names stay: ``?api_key=***``);
* the values of settings that are :class:`pydantic.SecretStr` (they print as
  ``**********``), of configured HTTP headers, and of plug-in settings whose name says
  secret (password, token, api_key, ...);
* any of those values quoted on its own, outside a URL (an HTTP library's error quoting
  an illegal header value, say): :func:`remember` learns them from the settings at start
  (:func:`remember_settings`), and :func:`redact_secrets` replaces them wherever they turn up.

>>> redact_url("https://bot:hunter2@hooks.example.com/send?api_key=k3y&v=2")
'https://bot:***@hooks.example.com/send?api_key=***&v=***'
>>> redact_secrets("POST failed: ConnectError for https://hooks.example.com/x?token=abc (retrying)")
'POST failed: ConnectError for https://hooks.example.com/x?token=*** (retrying)'

Cheap when there is nothing to hide: text without ``://`` and without a remembered
secret is returned as it is, so a logging filter can call it on every record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretStr

#: What a secret inside a longer text becomes.
MASK = "***"
#: What a whole secret value becomes in printed settings (as pydantic shows a SecretStr).
SECRET_MASK = "**********"
#: Remembered secrets shorter than this are not replaced in free text: a 2-character
#: query value such as ``v=2`` would otherwise mask every "2" in every log line. URLs are
#: masked by their structure whatever the length.
MIN_REMEMBERED = 6

#: A URL inside free text: a scheme, ``://``, then up to whitespace, a quote or an angle bracket.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s'\"<>`]+")
#: Characters that end a sentence or a bracket after a URL rather than belong to it.
_TRAILING = ").,;:]}!"
#: Setting names whose plain-string values are secrets (plug-in connectors, kafka.config).
_SECRET_NAME = re.compile(r"password|passwd|passphrase|(?<![a-z])pass(?![a-z])|secret|token|api[_.-]?key|"
                          r"(?<![a-z])auth(?![a-z])|authorization|credential|private[_.-]?key", re.IGNORECASE)

_known: tuple[str, ...] = ()  # longest first; replaced as a whole, so never mutated in place


def redact_url(url: str) -> str:
    """``url`` with its password and every query/fragment value replaced by ``***``.

    >>> redact_url("redis://app:s3cret@cache:6379/0"), redact_url("memory://")
    ('redis://app:***@cache:6379/0', 'memory://')
    >>> redact_url("https://user:PW@127.0.0.1:8080/hook?api_key=KEY&flag&empty=#sig=abc")
    'https://user:***@127.0.0.1:8080/hook?api_key=***&flag&empty=#sig=***'
    >>> redact_url("rediss://:pw@h:6380?ssl_cert_reqs=none")
    'rediss://:***@h:6380?ssl_cert_reqs=***'
    >>> redact_url("https://example.com/plain/path"), redact_url("not a url")
    ('https://example.com/plain/path', 'not a url')
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    return f"{scheme}://{_redact_authority(rest[:end])}{_redact_tail(rest[end:])}"


def _redact_authority(authority: str) -> str:
    """``user:password@host`` with the password masked; the user name stays (as redis-py shows it).

    >>> _redact_authority("app:s3cret@cache:6379"), _redact_authority("app@cache"), _redact_authority("cache:6379")
    ('app:***@cache:6379', 'app@cache', 'cache:6379')
    """
    userinfo, sign, hostport = authority.rpartition("@")
    if sign and ":" in userinfo:
        return f"{userinfo.partition(':')[0]}:{MASK}@{hostport}"
    return authority


def _redact_tail(tail: str) -> str:
    """``/path?query#fragment`` with the query's and the fragment's values masked; the path stays.

    >>> _redact_tail("/0?db=1#k=v"), _redact_tail("/plain"), _redact_tail("#frag")
    ('/0?db=***#k=***', '/plain', '#frag')
    """
    if "?" not in tail and "#" not in tail:
        return tail
    before, hashmark, fragment = tail.partition("#")
    path, qmark, query = before.partition("?")
    return (path + (f"?{_mask_pairs(query)}" if qmark else "")
            + (f"#{_mask_pairs(fragment)}" if hashmark else ""))


def _mask_pairs(pairs: str) -> str:
    """``a=1&b&c=`` -> ``a=***&b&c=``: non-empty values masked, names kept."""
    out = []
    for pair in pairs.split("&"):
        name, eq, value = pair.partition("=")
        out.append(f"{name}={MASK}" if eq and value else pair)
    return "&".join(out)


def redact_secrets(text: str) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`) and every remembered
    secret replaced by ``***``; anything else is left as it is.

    >>> redact_secrets("ConnectError('[Errno 111] Connection refused') for "
    ...                "http://u:PW@127.0.0.1:9/hook?api_key=KEY.")
    "ConnectError('[Errno 111] Connection refused') for http://u:***@127.0.0.1:9/hook?api_key=***."
    >>> redact_secrets("HTTP 500 from <https://h/x?k=v>: {'url': 'https://h/y?q=1'}")
    "HTTP 500 from <https://h/x?k=***>: {'url': 'https://h/y?q=***'}"
    >>> redact_secrets("no URL here: 3 decisions, ratio 1:2"), redact_secrets("see https://example.com/docs")
    ('no URL here: 3 decisions, ratio 1:2', 'see https://example.com/docs')
    """
    known = _known
    if "://" not in text and not (known and any(s in text for s in known)):
        return text
    if "://" in text:
        text = _URL.sub(_redact_match, text)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _redact_match(match: re.Match[str]) -> str:
    url = match.group()
    core = url.rstrip(_TRAILING)
    return redact_url(core) + url[len(core):]


def redact_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with :func:`redact_secrets` applied to every
    string in it; the same object when nothing needed redacting.

    >>> redact_tree({"outputs": {"channel sms": "webhook https://u:p@h/x?k=v"}, "n": 3})
    {'outputs': {'channel sms': 'webhook https://u:***@h/x?k=***'}, 'n': 3}
    """
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value


def redact_config(value: Any, name: str = "") -> Any:
    """Printed settings (``Settings.model_dump(mode="json")``): URLs redacted, the values of
    ``headers`` and of keys named like a secret replaced by ``**********`` (names kept).

    >>> redact_config({"url": "https://u:pw@h/x?api_key=k", "headers": {"X-Api-Key": "k"},
    ...                "config": {"sasl.username": "bob", "ssl.keystore.password": "pw"}})
    {'url': 'https://u:***@h/x?api_key=***', 'headers': {'X-Api-Key': '**********'}, 'config': {'sasl.username': 'bob', 'ssl.keystore.password': '**********'}}
    """
    if isinstance(value, dict):
        return _redact_section(value, name)
    if isinstance(value, list):
        return [redact_config(v, name) for v in value]
    if isinstance(value, str):
        return _redact_setting(value, name)
    return value


def _redact_section(section: dict[Any, Any], name: str) -> dict[Any, Any]:
    """A settings mapping, each value redacted under its own key; a ``headers`` mapping's values
    are all masked (unset ones stay null)."""
    if name == "headers":
        return {k: SECRET_MASK if v is not None else None for k, v in section.items()}
    return {k: redact_config(v, str(k)) for k, v in section.items()}


def _redact_setting(value: str, name: str) -> str:
    """A string setting: wholly masked when its name says secret (unless empty or masked already),
    else with any URL in it redacted.

    >>> _redact_setting("pw", "sasl.password"), _redact_setting("", "sasl.password"), _redact_setting("bob", "user")
    ('**********', '', 'bob')
    """
    if name and _SECRET_NAME.search(name) and value and value != SECRET_MASK:
        return SECRET_MASK
    return redact_secrets(value)


def secret_name(name: str) -> bool:
    """Whether a setting of this name holds a secret.

    >>> [secret_name(n) for n in ("sasl_password", "api_key", "bearer_token", "basic_auth", "ssl.keystore.password")]
    [True, True, True, True, True]
    >>> [secret_name(n) for n in ("url", "sasl.username", "sasl.oauthbearer.method", "author", "passes")]
    [False, False, False, False, False]
    """
    return bool(_SECRET_NAME.search(name))


def remember(values: Iterable[str]) -> None:
    """Remember secret values, so :func:`redact_secrets` masks them wherever they appear.

    >>> remember(["TOKEN-b8e2f1"])
    >>> redact_secrets("illegal header value b'Bearer TOKEN-b8e2f1\\\\n'")
    "illegal header value b'Bearer ***\\\\n'"
    >>> forget()
    """
    global _known
    new = {v for v in values if isinstance(v, str) and len(v) >= MIN_REMEMBERED} - set(_known)
    if new:
        _known = tuple(sorted({*_known, *new}, key=len, reverse=True))


def forget() -> None:
    """Forget every remembered secret (tests)."""
    global _known
    _known = ()


def secrets_in(model: Any, name: str = "") -> set[str]:
    """The secret values in a settings object: every SecretStr, every header value (and the
    credential after an ``Authorization`` scheme word), URL passwords and query values, and
    plug-in settings named like a secret.

    >>> from touchline.connectors.channels.config import WebhookConnectorConfig
    >>> sorted(secrets_in(WebhookConnectorConfig(url="https://u:pw-123456@h/x?api_key=KEY-123456",
    ...                                          headers={"Authorization": "Bearer T-123456"})))
    ['Bearer T-123456', 'KEY-123456', 'T-123456', 'pw-123456']
    """
    found: set[str] = set()
    if isinstance(model, SecretStr):
        found.add(model.get_secret_value())
    elif isinstance(model, BaseModel):
        found = _field_secrets(model)
    elif isinstance(model, dict):
        found = _mapping_secrets(model, name)
    elif isinstance(model, (list, tuple, set, frozenset)):
        found = _item_secrets(model, name)
    elif isinstance(model, str):
        found = _string_secrets(model, name)
    return {s for s in found if s}


def _field_secrets(model: BaseModel) -> set[str]:
    """The secrets of a settings model's fields, each under its own name."""
    found: set[str] = set()
    for key, value in model:
        found |= secrets_in(value, key)
    return found


def _mapping_secrets(mapping: dict[Any, Any], name: str) -> set[str]:
    """The secrets of a mapping's values, each under its key; every value of a ``headers`` mapping is one."""
    found: set[str] = set()
    for key, value in mapping.items():
        if name == "headers":
            found |= _header_secrets(value)
        else:
            found |= secrets_in(value, str(key))
    return found


def _item_secrets(items: Iterable[Any], name: str) -> set[str]:
    """The secrets of a list's items, each under the list's own name."""
    found: set[str] = set()
    for value in items:
        found |= secrets_in(value, name)
    return found


def _string_secrets(value: str, name: str) -> set[str]:
    """A string is a secret when its setting's name says so; else a URL in it may hold some.

    >>> sorted(_string_secrets("s3cret-key", "api_key")), sorted(_string_secrets("redis://:pw@h/0", "url"))
    (['s3cret-key'], ['pw'])
    """
    if name and secret_name(name):
        return {value}
    if "://" in value:
        return _url_secrets(value)
    return set()


def _header_secrets(value: Any) -> set[str]:
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    scheme, space, credential = text.strip().partition(" ")
    return {text, credential.strip()} if space else {text}


def _url_secrets(url: str) -> set[str]:
    from urllib.parse import unquote, unquote_plus, urlsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return set()
    found = {password, unquote(password)} if password else set()
    for pairs in (parts.query, parts.fragment):
        for pair in pairs.split("&"):
            value = pair.partition("=")[2]
            found |= {value, unquote_plus(value)} if value else set()
    return found


def remember_settings(settings: BaseModel) -> None:
    """Remember the secrets of a run's settings (:func:`secrets_in`); called at start."""
    remember(secrets_in(settings))
