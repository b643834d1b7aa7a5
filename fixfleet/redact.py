"""The one redactor: every string the platform stores or sends passes through it.

It knows every configured secret in every form it is configured in and every form it is likely
to travel in: the raw value, each part of a rotating `new,old` value, tokens inside the JSON of
FIXFLEET_API_TOKENS, the password of a database or Redis URL on its own, and their base64,
URL-encoded and HTTP Basic (`x-access-token:<token>`) forms. On top, common token shapes
(GitHub, Slack, Anthropic, AWS, Sentry, Atlassian, bearer headers, URL passwords) are replaced
even when nobody configured them.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from pydantic import SecretStr

REDACTED = "[REDACTED]"
MIN_SECRET = 6  # shorter values would shred ordinary text; they are not credentials anyway
TOKEN_SHAPES = [
    re.compile(r"gh[pousr]_[A-Za-z0-9]{16,}"),
    re.compile(r"github_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"xox[abposre]-[A-Za-z0-9-]{8,}"),
    re.compile(r"xapp-[A-Za-z0-9-]{8,}"),
    re.compile(r"sk-ant-[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"sntry[su]_[A-Za-z0-9_=+/-]{16,}"),
    re.compile(r"ATATT[A-Za-z0-9_=-]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
]
URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:@/]*:)(?P<password>[^\s@/]+)@")


class Redactor:
    """Replaces known secret values (in all their forms) and token shapes in any JSON-like value."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= _forms(secret)
        # Longest first, so a secret holding another is replaced whole.
        self.secrets = sorted((f for f in forms if len(f) >= MIN_SECRET), key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Any, extra: Iterable[str | None] = ()) -> Redactor:
        return cls([*settings_secrets(settings), *extra])

    def with_secrets(self, extra: Iterable[str | None]) -> Redactor:
        merged = Redactor(extra)
        merged.secrets = sorted(set(self.secrets) | set(merged.secrets), key=len, reverse=True)
        return merged

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        for pattern in TOKEN_SHAPES:
            value = pattern.sub(REDACTED, value)
        return URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", value)

    def knows(self, text: str) -> bool:
        """Whether `text` holds a configured secret in any of its forms (token shapes aside)."""
        return any(secret in text for secret in self.secrets)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        return value


def settings_secrets(settings: Any) -> list[str]:
    """Every secret value a Settings holds, unpacked from the forms it is configured in."""
    values: list[str] = []
    for _, field_value in settings:
        if isinstance(field_value, SecretStr):
            values += unpack(field_value.get_secret_value())
    jira_email, jira_token = getattr(settings, "jira_email", None), getattr(settings, "jira_api_token", None)
    if jira_email and jira_token:  # Jira's Basic auth: base64 of email:token
        values.append(f"{jira_email}:{jira_token.get_secret_value()}")
    return values


def unpack(raw: str) -> list[str]:
    """A configured value and the secrets inside it: rotation parts, JSON strings, URL passwords."""
    found = [raw]
    found += [part.strip() for part in raw.split(",") if part.strip()]
    try:
        found += list(_json_strings(json.loads(raw)))
    except ValueError:
        pass
    for candidate in list(found):
        try:
            password = urlsplit(candidate.strip()).password
        except ValueError:
            password = None
        if password:
            found.append(password)
    return found


def _json_strings(data: Any) -> Iterable[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, item in data.items():
            if key not in ("name", "scopes"):  # an API token's name and scopes are not secret
                yield from _json_strings(item)
    elif isinstance(data, list):
        for item in data:
            yield from _json_strings(item)


def _forms(secret: str) -> set[str]:
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for data in (raw, f"x-access-token:{secret}".encode()):
        for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
            text = encoded.decode()
            forms |= {text, text.rstrip("=")}
    return forms


def redact_logs(redactor: Redactor) -> None:
    """Every log record this process makes from now on is redacted where it is made (message,
    arguments and traceback), whichever logger or handler it goes to."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redactor", None) is not None:
        previous = previous.previous  # type: ignore[attr-defined] - replacing our own factory

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            record.msg, record.args = redactor.text(record.getMessage()), None
        except Exception:  # noqa: BLE001 - a malformed record stays as it is rather than crash logging
            return record
        if record.exc_info:
            record.exc_text = redactor.text(logging.Formatter().formatException(record.exc_info))
        return record

    factory.redactor, factory.previous = redactor, previous  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
