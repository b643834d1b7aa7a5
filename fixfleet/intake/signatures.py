"""Webhook authentication: one verify function per source, pure and constant-time.

Each `verify_*` returns None when the request is authentic and raises `SignatureError` with a
human reason otherwise; the app answers 401 with that reason and stores nothing. Every source
takes a list of secrets so a secret can be rotated: any of them may match. An empty list is
refused rather than treated as "no check": webhooks are never accepted unsigned.

The `sign_*` helpers produce the header values the senders would, for tests, benchmarks and the
offline demo.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

SLACK_WINDOW_S = 300  # Slack's own advice: refuse requests older than five minutes (replays)

# The setting to name when a source has no secret, so the operator knows what to set.
_SECRET_SETTING = {
    "github": "FIXFLEET_GITHUB_WEBHOOK_SECRET",
    "sentry": "FIXFLEET_SENTRY_CLIENT_SECRET",
    "jira": "FIXFLEET_JIRA_WEBHOOK_SECRET",
    "slack": "FIXFLEET_SLACK_SIGNING_SECRET",
}

_SLACK_TIMESTAMP = re.compile(r"^\d{1,12}$")  # whole seconds; rejects "1e9", "nan", "-5", " 12"


class SignatureError(Exception):
    """A request that is not provably from its claimed sender; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- signing (what the senders do) ---------------------------------------------------------


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_github(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub would send."""
    return "sha256=" + _hmac_hex(secret, body)


def sign_sentry(secret: str, body: bytes) -> str:
    """The `Sentry-Hook-Signature` value Sentry would send: bare hex, no prefix."""
    return _hmac_hex(secret, body)


def sentry_headers(secret: str, body: bytes, request_id: str, resource: str = "event_alert") -> dict[str, str]:
    """The headers of a webhook Sentry would send: its resource, delivery id and signature."""
    return {"Content-Type": "application/json", "Sentry-Hook-Resource": resource, "Request-ID": request_id,
            "Sentry-Hook-Signature": sign_sentry(secret, body)}


def sign_jira(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature` value Jira Cloud would send."""
    return "sha256=" + _hmac_hex(secret, body)


def _slack_base_string(timestamp: str, body: bytes) -> bytes:
    return b"v0:" + timestamp.encode("ascii") + b":" + body


def sign_slack(secret: str, body: bytes, timestamp: int | str) -> str:
    """The `X-Slack-Signature` value Slack would send for this body and timestamp."""
    return "v0=" + _hmac_hex(secret, _slack_base_string(str(timestamp), body))


# --- verifying -----------------------------------------------------------------------------


def _require_secrets(source: str, secrets: list[str]) -> list[str]:
    usable = [s for s in secrets if s]
    if not usable:
        raise SignatureError(f"no secret configured for {source}; set {_SECRET_SETTING[source]}")
    return usable


def _require_header(name: str, value: str | None) -> str:
    if value is None or not value.strip():
        raise SignatureError(f"missing {name} header")
    return value.strip()


def _strip_prefix(name: str, value: str, prefix: str) -> str:
    """`sha256=abc` -> `abc`; any other scheme is named in the refusal."""
    scheme, sep, digest = value.partition("=")
    if not sep or scheme.lower() != prefix:
        shown = scheme if sep else value[:16]
        raise SignatureError(f"{name} must look like '{prefix}=<hex>', got scheme {shown!r}")
    return digest


def _matches_any(secrets: list[str], message: bytes, provided_hex: str) -> bool:
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold anything.
    provided = provided_hex.strip().lower().encode("utf-8", "replace")
    # Check every secret (no early exit) so timing does not tell which one is configured.
    results = [hmac.compare_digest(_hmac_hex(s, message).encode("ascii"), provided) for s in secrets]
    return any(results)


def _verify_hmac(source: str, secrets: list[str], body: bytes, provided_hex: str) -> None:
    if not _matches_any(_require_secrets(source, secrets), body, provided_hex):
        raise SignatureError("signature does not match")


def verify_github(secrets: list[str], body: bytes, signature_header: str | None) -> None:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`."""
    _require_secrets("github", secrets)
    header = _require_header("X-Hub-Signature-256", signature_header)
    _verify_hmac("github", secrets, body, _strip_prefix("X-Hub-Signature-256", header, "sha256"))


def verify_sentry(secrets: list[str], body: bytes, signature_header: str | None) -> None:
    """`Sentry-Hook-Signature: <hex HMAC-SHA256 of the raw body with the client secret>`."""
    _require_secrets("sentry", secrets)
    header = _require_header("Sentry-Hook-Signature", signature_header)
    _verify_hmac("sentry", secrets, body, header)


def verify_jira(secrets: list[str], body: bytes, signature_header: str | None) -> None:
    """`X-Hub-Signature: sha256=<hex>`; the caller only calls this when a Jira secret is set."""
    _require_secrets("jira", secrets)
    header = _require_header("X-Hub-Signature", signature_header)
    _verify_hmac("jira", secrets, body, _strip_prefix("X-Hub-Signature", header, "sha256"))


def _check_slack_timestamp(timestamp: str, now: float, window_s: float) -> None:
    if not _SLACK_TIMESTAMP.match(timestamp):
        raise SignatureError(f"X-Slack-Request-Timestamp is not a number of seconds: {timestamp[:20]!r}")
    skew = abs(now - int(timestamp))
    if skew > window_s:
        raise SignatureError(f"timestamp is {skew:.0f} s from now; the limit is {window_s:.0f} s")


def verify_slack(
    secrets: list[str],
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    *,
    now: float | None = None,
    window_s: float = SLACK_WINDOW_S,
) -> None:
    """`X-Slack-Signature: v0=<hex>` over `v0:{X-Slack-Request-Timestamp}:{raw body}`.

    The timestamp is checked first (both directions, `window_s` inclusive) so a captured request
    cannot be replayed later, nor one with a forged future time kept for later.
    """
    _require_secrets("slack", secrets)
    timestamp = _require_header("X-Slack-Request-Timestamp", timestamp_header)
    header = _require_header("X-Slack-Signature", signature_header)
    _check_slack_timestamp(timestamp, time.time() if now is None else now, window_s)
    digest = _strip_prefix("X-Slack-Signature", header, "v0")
    _verify_hmac("slack", secrets, _slack_base_string(timestamp, body), digest)
