"""Sentry REST: an issue, a project's issues, and an issue's latest event with its stack frames
read by the one normaliser (fixfleet/formats/sentry.py), so they look as a webhook's do; marking an
issue resolved in the next release, and commenting on it; Sentry as a task's Tracker.

An `issue` webhook (and a message event) carries no frames: the planner (and the backlog) asks for
the latest event first (`event_context`: what the planner's prompt shows).
"""

from __future__ import annotations

from typing import Any, Unpack
from urllib.parse import quote

from pydantic import SecretStr

from fixfleet.formats.access import as_int, as_list, as_str, obj
from fixfleet.formats.sentry import event_exceptions
from fixfleet.integrations.base import ApiClient, ClientOptions, secret_value
from fixfleet.integrations.tracker import Tracker

SENTRY_API_URL = "https://sentry.io/api/0"
MAX_ISSUE_PAGES = 200  # 100 issues a page
MAX_BREADCRUMBS = 20  # the last ones before the error
MARKER = "[fixfleet:{}]"


class SentryClient(ApiClient):
    service = "sentry"

    def __init__(
        self,
        token: SecretStr | str,
        api_url: str = SENTRY_API_URL,
        organization: str | None = None,
        **retry: Unpack[ClientOptions],
    ) -> None:
        """`organization` (FIXFLEET_SENTRY_ORG): issues are addressed as Sentry's published API
        does, `/organizations/{org}/issues/{id}/`; without it, by the older `/issues/{id}/` paths."""
        self.organization = organization
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

    def issue_path(self, issue_id: str | int, organization: str | None = None) -> str:
        """An issue's path: under its organization (Sentry's published API) when it is known."""
        org = organization or self.organization
        issue = quote(str(issue_id), safe="")
        return f"/organizations/{quote(org, safe='')}/issues/{issue}/" if org else f"/issues/{issue}/"

    async def latest_event_details(self, issue_id: str | int, organization: str | None = None) -> dict[str, Any]:
        """The latest event, summarised: event_id, title, message, exceptions (type, value,
        frames), frames (all exceptions' frames in order) and `raw`, the API's answer."""
        event = self._json(await self._call("GET", f"{self.issue_path(issue_id, organization)}events/latest/"))
        exceptions = event_exceptions(event)
        return {
            "event_id": as_str(event.get("eventID")) or as_str(event.get("event_id")) or as_str(event.get("id")),
            "title": as_str(event.get("title")),
            "message": as_str(event.get("message")),
            "exceptions": exceptions,
            "frames": [frame for exc in exceptions for frame in exc["frames"]],
            "raw": event,
        }

    async def issue(self, issue_id: str | int) -> dict[str, Any]:
        return self._json(await self._call("GET", self.issue_path(issue_id)))

    async def event_context(self, issue_id: str | int) -> dict[str, Any]:
        """What the planner is shown of an issue without a trace: the latest event's exceptions
        (chained, frames with their context lines), breadcrumbs, tags, release, environment, and
        the issue's user count (when the issue itself can be read)."""
        details = await self.latest_event_details(issue_id)
        event = details.pop("raw")
        tags = {as_str(t.get("key")): as_str(t.get("value")) for t in map(obj, as_list(event.get("tags"))) if t.get("key")}
        crumbs = [obj(entry.get("data")).get("values") for entry in map(obj, as_list(event.get("entries")))
                  if entry.get("type") == "breadcrumbs"]
        breadcrumbs = [{k: as_str(c.get(k)) for k in ("timestamp", "category", "level", "message")}
                       for c in map(obj, as_list(crumbs[0] if crumbs else []))][-MAX_BREADCRUMBS:]
        release = event.get("release")
        context = details | {
            "tags": tags, "breadcrumbs": breadcrumbs, "environment": tags.get("environment"),
            "release": as_str(obj(release).get("version")) if isinstance(release, dict) else as_str(release),
        }
        try:
            context["user_count"] = as_int((await self.issue(issue_id)).get("userCount"))
        except Exception:  # the event is what matters; the count is a nicety
            context["user_count"] = None
        return context

    async def resolve_in_next_release(self, issue_id: str | int) -> dict[str, Any]:
        """PUT /issues/{id}/ {"status": "resolvedInNextRelease"} (Sentry's Update an Issue)."""
        return self._json(await self._call("PUT", self.issue_path(issue_id), json={"status": "resolvedInNextRelease"}))

    async def add_comment(self, issue_id: str | int, text: str, marker: str) -> dict[str, Any] | None:
        """A comment (Sentry's issue note) once per `marker`: None when one with it is there."""
        tag = MARKER.format(marker)
        path = f"{self.issue_path(issue_id)}comments/"  # the notes endpoint Sentry's own UI uses: not in the published API
        for note in self._json(await self._call("GET", path)) or []:
            if tag in str(obj(obj(note).get("data")).get("text") or ""):
                return None
        return self._json(await self._call("POST", path, json={"text": f"{text}\n\n{tag}"}))


class SentryTracker(Tracker):
    """Sentry as a task's tracker: comments (issue notes) and, on a merged fix, "resolved in the
    next release" with a comment linking the pull request. No transitions, links or labels."""

    key = "sentry_issue"

    def __init__(self, client: SentryClient) -> None:
        self.client = client

    async def comment(self, issue: str, text: str, *, marker: str) -> None:
        await self.client.add_comment(issue, text, marker)

    async def fixed(self, issue: str, text: str, *, marker: str) -> None:
        await self.client.resolve_in_next_release(issue)
        await self.client.add_comment(issue, text, marker)
