"""GitHub REST stand-in: collaborator permissions and issue comments (more as the agents land)."""

from __future__ import annotations

import itertools
import re

from tests.fakes.base import Call, FakeService, Reply

LEGACY = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read"}


class FakeGitHub(FakeService):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.permissions: dict[tuple[str, str], str] = {}  # (owner/repo, login) -> role
        self.comments: list[dict] = []
        self._ids = itertools.count(1000)
        self.route("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/collaborators/(?P<user>[^/]+)/permission", self._permission)
        self.route("POST", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/issues/(?P<number>\d+)/comments", self._comment)

    def authorized(self, call: Call) -> bool:
        return call.headers.get("authorization") == f"Bearer {self.token}"

    def grant(self, repo: str, user: str, role: str) -> None:
        self.permissions[(repo.lower(), user.lower())] = role

    def _permission(self, call: Call, m: re.Match) -> Reply:
        role = self.permissions.get((f"{m['owner']}/{m['repo']}".lower(), m["user"].lower()))
        if role is None:
            return Reply(404, {"message": f"{m['user']} is not a user"})
        return Reply(200, {"permission": LEGACY[role], "role_name": role, "user": {"login": m["user"]}})

    def _comment(self, call: Call, m: re.Match) -> Reply:
        if not isinstance(call.body, dict) or not isinstance(call.body.get("body"), str):
            return Reply(422, {"message": "body is required"})
        comment = {"id": next(self._ids), "body": call.body["body"], "repo": f"{m['owner']}/{m['repo']}", "issue": int(m["number"])}
        self.comments.append(comment)
        return Reply(201, comment)
