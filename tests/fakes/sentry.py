"""Sentry REST stand-in: an issue's latest event (`GET /api/0/organizations/{org}/issues/{id}/events/latest/`),
an issue (read, updated: resolved in the next release), its comments, a project's issues
(`GET /api/0/projects/{org}/{project}/issues/?query=...`, paged by the Link header's cursors as
Sentry pages), Bearer auth.

Events are served in the API's spelling (entries, camelCase frames, `context` as [[lineno, line]]),
not the webhook's, so a client has to translate. Paths keep Sentry's trailing slash. A project's
issues understand `is:unresolved|resolved|ignored` (no query means is:unresolved, as Sentry's);
any other word must appear in the title.
"""

from __future__ import annotations

import itertools
import re
import uuid
from typing import Any

from tests.fakes.base import Call, Reply
from tests.fakes.faults import FakeAPI

API = "/api/0"


def api_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """A webhook-style frame (snake_case) as the REST API returns it."""
    lineno = frame.get("lineno")
    context = []
    for offset, line in enumerate(frame.get("pre_context") or [], start=-len(frame.get("pre_context") or [])):
        context.append([lineno + offset, line])
    if frame.get("context_line") is not None:
        context.append([lineno, frame["context_line"]])
    for offset, line in enumerate(frame.get("post_context") or [], start=1):
        context.append([lineno + offset, line])
    return {
        "filename": frame.get("filename"), "absPath": frame.get("abs_path"), "function": frame.get("function"),
        "module": frame.get("module"), "lineNo": lineno, "colNo": None, "inApp": frame.get("in_app", False),
        "context": context, "vars": None, "errors": None,
    }


class FakeSentry(FakeAPI):
    published_api = "sentry"

    def __init__(self, token: str, organization: str = "acme") -> None:
        super().__init__()
        self.token, self.organization = token, organization
        self.issues: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}  # issue id -> latest event
        self.issue_page_size = 100  # Sentry's page; tests shrink it to page
        self._ids = itertools.count(4000)
        issue = rf"{API}/organizations/(?P<org>[\w.-]+)/issues/(?P<id>\d+)/"  # as Sentry's published API names them
        self.route("GET", rf"{issue}events/latest/", self._latest_event)
        self.route("GET", rf"{API}/projects/(?P<org>[\w.-]+)/(?P<project>[\w.-]+)/issues/", self._project_issues)
        self.route("PUT", issue, self._update_issue)
        self.route("GET", issue, self._get_issue)
        self.route("GET", rf"{issue}comments/", self._list_comments)
        self.route("POST", rf"{issue}comments/", self._add_comment)
        self.notes: dict[str, list[dict[str, Any]]] = {}  # issue id -> its comments (Sentry's "notes")

    def authorized(self, call: Call) -> bool:
        return call.headers.get("authorization") == f"Bearer {self.token}"

    def unauthorized(self, call: Call) -> Reply:
        return Reply(401, {"detail": "Invalid token header. No credentials provided."})

    def add_issue(self, issue_id: str, title: str, frames: list[dict[str, Any]] | None = None, *,
                  exc_type: str = "ZeroDivisionError", exc_value: str = "division by zero",
                  project: str = "backend", status: str = "unresolved", level: str = "error", count: int = 3,
                  users: int = 1) -> dict[str, Any]:
        """An issue whose latest event raised `exc_type` through `frames` (snake_case, oldest first);
        `frames=None` makes a message event without a stack trace."""
        issue = {
            "id": issue_id, "shortId": f"{project.upper()}-{issue_id}", "title": title, "culprit": "app.main",
            "permalink": f"https://sentry.io/organizations/{self.organization}/issues/{issue_id}/", "level": level,
            "status": status, "count": str(count), "userCount": users,
            "project": {"id": "2", "slug": project, "name": project},
            "metadata": {"type": exc_type, "value": exc_value}, "firstSeen": "2024-01-01T00:00:00Z",
            "lastSeen": "2024-01-02T00:00:00Z",
        }
        entries: list[dict[str, Any]] = []
        if frames is not None:
            entries.append({"type": "exception", "data": {"values": [{
                "type": exc_type, "value": exc_value, "module": None, "mechanism": {"type": "generic", "handled": False},
                "stacktrace": {"frames": [api_frame(f) for f in frames], "framesOmitted": None, "hasSystemFrames": True},
            }], "hasSystemFrames": True, "excOmitted": None}})
        self.issues[issue_id] = issue
        self.events[issue_id] = {
            "id": uuid.uuid4().hex, "eventID": uuid.uuid4().hex, "groupID": issue_id, "title": title,
            "message": "" if frames is not None else title, "platform": "python", "entries": entries,
            "tags": [{"key": "level", "value": "error"}, {"key": "environment", "value": "production"}],
            "dateCreated": "2024-01-02T00:00:00Z", "release": {"version": "api@1.4.2"},
        }
        self.events[issue_id]["entries"].append({"type": "breadcrumbs", "data": {"values": [
            {"category": "http", "level": "info", "message": "GET /totals?count=0", "timestamp": "2024-01-02T00:00:00Z"},
        ]}})
        return issue

    @staticmethod
    def _missing() -> Reply:
        return Reply(404, {"detail": "The requested resource does not exist"})

    def _latest_event(self, call: Call, m: re.Match) -> Reply:
        event = self.events.get(m["id"]) if m["org"] == self.organization else None
        return Reply(200, event) if event else self._missing()

    def _project_issues(self, call: Call, m: re.Match) -> Reply:
        if m["org"] != self.organization:
            return self._missing()
        words = ((call.query.get("query") or [""])[0] or "is:unresolved").split()
        statuses = {w.removeprefix("is:") for w in words if w.startswith("is:")} or {"unresolved", "resolved", "ignored"}
        text = [w.casefold() for w in words if not w.startswith("is:")]
        hits = [i for i in self.issues.values() if i["project"]["slug"] == m["project"] and i["status"] in statuses
                and all(t in i["title"].casefold() for t in text)]
        start = int((call.query.get("cursor") or ["0:0:0"])[0].split(":")[1])
        size = self.issue_page_size
        return Reply(200, hits[start:start + size], {"Link": self._links(call.path, start, size, len(hits))})

    def _links(self, path: str, start: int, size: int, total: int) -> str:
        """Both cursors always, `results` saying whether that page holds anything (Sentry's way)."""
        before, after = f"0:{max(start - size, 0)}:1", f"0:{start + size}:0"
        return (f'<{self.url}{path}?&cursor={before}>; rel="previous"; results="{str(start > 0).lower()}"; '
                f'cursor="{before}", <{self.url}{path}?&cursor={after}>; rel="next"; '
                f'results="{str(start + size < total).lower()}"; cursor="{after}"')

    # --- updating an issue, its comments ----------------------------------------------------------

    STATUSES = ("resolved", "resolvedInNextRelease", "unresolved", "ignored")

    def _get_issue(self, call: Call, m: re.Match) -> Reply:
        issue = self.issues.get(m["id"]) if m["org"] == self.organization else None
        return Reply(200, issue) if issue else self._missing()

    def _update_issue(self, call: Call, m: re.Match) -> Reply:
        issue = self.issues.get(m["id"])
        if issue is None:
            return Reply(404, {"detail": "The requested resource does not exist"})
        body = call.body if isinstance(call.body, dict) else {}
        status = body.get("status")
        if status is not None and status not in self.STATUSES:
            return Reply(400, {"status": [f'"{status}" is not a valid choice.']})
        if status == "resolvedInNextRelease":  # Sentry answers with the resolution it made
            issue["status"], issue["statusDetails"] = "resolved", {"inNextRelease": True}
        elif status is not None:
            issue["status"], issue["statusDetails"] = status, body.get("statusDetails") or {}
        return Reply(200, {"status": issue["status"], "statusDetails": issue.get("statusDetails", {})})

    def _list_comments(self, call: Call, m: re.Match) -> Reply:
        if m["id"] not in self.issues:
            return Reply(404, {"detail": "The requested resource does not exist"})
        return Reply(200, self.notes.get(m["id"], []))

    def _add_comment(self, call: Call, m: re.Match) -> Reply:
        if m["id"] not in self.issues:
            return Reply(404, {"detail": "The requested resource does not exist"})
        text = call.body.get("text") if isinstance(call.body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return Reply(400, {"text": ["This field is required."]})
        note = {"id": str(next(self._ids)), "type": "note", "data": {"text": text}, "user": {"name": "fixfleet"}}
        self.notes.setdefault(m["id"], []).insert(0, note)  # newest first, as Sentry lists activity
        return Reply(201, note)
