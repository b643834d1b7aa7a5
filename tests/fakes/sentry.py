"""Sentry REST stand-in: `GET /api/0/issues/{id}/` and `.../events/latest/`, Bearer auth.

Events are served in the API's spelling (entries, camelCase frames, `context` as [[lineno, line]]),
not the webhook's, so a client has to translate. Paths keep Sentry's trailing slash.
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
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.issues: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}  # issue id -> latest event
        self._ids = itertools.count(4000)
        self.route("GET", rf"{API}/issues/(?P<id>\d+)/", self._get_issue)
        self.route("GET", rf"{API}/issues/(?P<id>\d+)/events/latest/", self._latest_event)

    def authorized(self, call: Call) -> bool:
        return call.headers.get("authorization") == f"Bearer {self.token}"

    def unauthorized(self, call: Call) -> Reply:
        return Reply(401, {"detail": "Invalid token header. No credentials provided."})

    def add_issue(self, issue_id: str, title: str, frames: list[dict[str, Any]] | None = None, *,
                  exc_type: str = "ZeroDivisionError", exc_value: str = "division by zero",
                  project: str = "backend") -> dict[str, Any]:
        """An issue whose latest event raised `exc_type` through `frames` (snake_case, oldest first);
        `frames=None` makes a message event without a stack trace."""
        issue = {
            "id": issue_id, "shortId": f"{project.upper()}-{issue_id}", "title": title, "culprit": "app.main",
            "permalink": f"https://sentry.io/organizations/acme/issues/{issue_id}/", "level": "error",
            "status": "unresolved", "count": "3", "userCount": 1, "project": {"id": "2", "slug": project, "name": project},
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
            "tags": [{"key": "level", "value": "error"}], "dateCreated": "2024-01-02T00:00:00Z",
        }
        return issue

    @staticmethod
    def _missing() -> Reply:
        return Reply(404, {"detail": "The requested resource does not exist"})

    def _get_issue(self, call: Call, m: re.Match) -> Reply:
        issue = self.issues.get(m["id"])
        return Reply(200, issue) if issue else self._missing()

    def _latest_event(self, call: Call, m: re.Match) -> Reply:
        event = self.events.get(m["id"])
        return Reply(200, event) if event else self._missing()
