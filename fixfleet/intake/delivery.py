"""Delivery ids: what a redelivery repeats, so each delivery is stored once per source."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fixfleet.formats.access import as_str, dig

_DELIVERY_HEADER = {
    "github": "x-github-delivery",
    "sentry": "request-id",
    "jira": "x-atlassian-webhook-identifier",
}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive, for plain dicts as well as Starlette's Headers."""
    for key, value in headers.items():
        if key.lower() == name and value and value.strip():
            return value.strip()
    return None


def _content_hash(payload: Any, body: bytes | None) -> str:
    if body is None:  # canonical JSON: the same content hashes the same whatever its key order
        plain = dict(payload) if isinstance(payload, Mapping) else payload
        body = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def delivery_id(source: str, headers: Mapping[str, str], payload: Any, body: bytes | None = None) -> str:
    """The id a redelivery repeats, so the app stores each delivery once (per source).

    GitHub `X-GitHub-Delivery`, Sentry `Request-ID`, Jira `X-Atlassian-Webhook-Identifier`
    (stable across Jira's retries); Slack the Events API's `event_id` (its retries repeat it), the
    payload's `trigger_id`, else the action's `action_ts`. Without one: a hash of the raw body (or of the canonical JSON).
    """
    source = str(source)
    if source in _DELIVERY_HEADER:
        found = _header(headers, _DELIVERY_HEADER[source])
    elif source == "slack":
        found = (as_str(dig(payload, "event_id")) or as_str(dig(payload, "trigger_id"))
                 or as_str(dig(payload, "actions", 0, "action_ts")))
    else:
        found = None
    return found or _content_hash(payload, body)
