"""Sentry REST: an issue, a project's issues, and an issue's latest event with its stack frames
read by the one normaliser (fixfleet/formats/sentry.py), so they look as a webhook's do.

An `issue` webhook (and a message event) carries no frames: the backlog asks for the latest event.
"""

from __future__ import annotations

from typing import Any, Unpack
from urllib.parse import quote

from pydantic import SecretStr

from fixfleet.formats.access import as_str
from fixfleet.formats.sentry import event_exceptions
from fixfleet.integrations.base import ApiClient, ClientOptions, secret_value

SENTRY_API_URL = "https://sentry.io/api/0"
MAX_ISSUE_PAGES = 200  # 100 issues a page


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
            "event_id": as_str(event.get("eventID")) or as_str(event.get("event_id")) or as_str(event.get("id")),
            "title": as_str(event.get("title")),
            "message": as_str(event.get("message")),
            "exceptions": exceptions,
            "frames": [frame for exc in exceptions for frame in exc["frames"]],
            "raw": event,
        }
