"""Sentry REST: an issue, and its latest event's stack frames in the shape `fixfleet.events` gives.

An `issue` webhook (and a message event) carries no frames; the planner asks for the latest event.
The API spells frames in camelCase (`absPath`, `lineNo`, `inApp`, `context` as [[lineno, line], ...]);
`latest_event` turns them into the webhook's snake_case shape, so the planner reads one format.
"""

from __future__ import annotations

from typing import Any, Unpack
from urllib.parse import quote

from pydantic import SecretStr

from fixfleet.intake import MAX_CONTEXT_LINE, MAX_FRAMES
from fixfleet.integrations.base import ApiClient, ClientOptions, secret_value

SENTRY_API_URL = "https://sentry.io/api/0"
MAX_ISSUE_PAGES = 200  # 100 issues a page


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _lineno(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def normalize_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """One frame, API (camelCase) or event-payload (snake_case) spelling, as fixfleet's frame dict:
    filename, abs_path, function, lineno, in_app, context_line."""
    lineno = _lineno(frame.get("lineno", frame.get("lineNo")))
    line = _text(frame.get("context_line"))
    if line is None and isinstance(frame.get("context"), list):
        for entry in frame["context"]:  # [[lineno, source line], ...] around the frame's line
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and _lineno(entry[0]) == lineno:
                line = _text(entry[1])
                break
    in_app = frame.get("in_app", frame.get("inApp"))
    return {
        "filename": _text(frame.get("filename")),
        "abs_path": _text(frame.get("abs_path", frame.get("absPath"))),
        "function": _text(frame.get("function")),
        "lineno": lineno,
        "in_app": in_app is True,
        "context_line": line[:MAX_CONTEXT_LINE] if line else None,
    }


def event_exceptions(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Each exception of an event (API `entries` or payload `exception.values`) with its frames,
    oldest call first, at most MAX_FRAMES each (the most recent)."""
    values: list[Any] = []
    for entry in event.get("entries") or []:
        if isinstance(entry, dict) and entry.get("type") == "exception":
            values.extend((entry.get("data") or {}).get("values") or [])
    if not values and isinstance(event.get("exception"), dict):
        values = event["exception"].get("values") or []
    found = []
    for value in values:
        if not isinstance(value, dict):
            continue
        frames = ((value.get("stacktrace") or {}).get("frames")) or []
        normalized = [normalize_frame(f) for f in frames if isinstance(f, dict)]
        found.append({"type": _text(value.get("type")), "value": _text(value.get("value")), "frames": normalized[-MAX_FRAMES:]})
    if not found:  # a message event with an attached stack trace
        for entry in event.get("entries") or []:
            if isinstance(entry, dict) and entry.get("type") == "stacktrace":
                frames = (entry.get("data") or {}).get("frames") or []
                normalized = [normalize_frame(f) for f in frames if isinstance(f, dict)]
                found.append({"type": None, "value": _text(event.get("message")), "frames": normalized[-MAX_FRAMES:]})
    return found


class SentryClient(ApiClient):
    service = "sentry"

    def __init__(
        self,
        token: SecretStr | str,
        api_url: str = SENTRY_API_URL,
        **retry: Unpack[ClientOptions],
    ) -> None:
        plain = secret_value(token) or ""
        super().__init__(
            base_url=api_url, headers={"Authorization": f"Bearer {plain}", "Accept": "application/json"},
            secrets=[plain], **retry,
        )

    async def get_issue(self, issue_id: str | int) -> dict[str, Any]:
        return self._json(await self._call("GET", f"/issues/{quote(str(issue_id))}/"))

    async def project_issues(self, organization: str, project: str, *, query: str = "is:unresolved",
                             limit: int | None = None) -> list[dict[str, Any]]:
        """A project's issues matching `query`, following the Link header's `rel="next"` cursor
        while it says `results="true"`."""
        found: list[dict[str, Any]] = []
        path = f"/projects/{quote(organization, safe='')}/{quote(project, safe='')}/issues/"
        params = {"query": query}
        for _ in range(MAX_ISSUE_PAGES):
            response = await self._call("GET", path, params=params)
            page = self._json(response)
            found.extend(issue for issue in (page if isinstance(page, list) else []) if isinstance(issue, dict))
            following = response.links.get("next") or {}
            if (limit is not None and len(found) >= limit) or following.get("results") != "true" \
                    or not following.get("cursor"):
                break
            params = {"query": query, "cursor": following["cursor"]}
        return found[:limit] if limit is not None else found

    async def latest_event_details(self, issue_id: str | int) -> dict[str, Any]:
        """The latest event, summarised: event_id, title, message, exceptions (type, value,
        frames), frames (all exceptions' frames in order) and `raw`, the API's answer."""
        event = self._json(await self._call("GET", f"/issues/{quote(str(issue_id))}/events/latest/"))
        exceptions = event_exceptions(event)
        return {
            "event_id": _text(event.get("eventID")) or _text(event.get("event_id")) or _text(event.get("id")),
            "title": _text(event.get("title")),
            "message": _text(event.get("message")),
            "exceptions": exceptions,
            "frames": [frame for exc in exceptions for frame in exc["frames"]],
            "raw": event,
        }

    async def latest_event(self, issue_id: str | int) -> list[dict[str, Any]]:
        """The latest event's stack frames, in the shape `fixfleet.events` produces."""
        return (await self.latest_event_details(issue_id))["frames"]
