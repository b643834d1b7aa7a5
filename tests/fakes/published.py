"""What a provider publishes about its API, for the fakes to check every request against
(tests/fakes/apis/: GitHub's OpenAPI description from @octokit/openapi, with request-body
schemas; Sentry's operations from its generated client @sentry/api; tables from Jira's and
Slack's reference pages, which no registry carries). A request the provider does not publish
(wrong path or method) or whose body breaks the published schema is refused by the fake, so a
client that drifts from the real API fails its tests instead of passing against our own idea."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

APIS = Path(__file__).parent / "apis"
GREEDY = {"ref"}  # parameters that span slashes (GitHub: git/refs/{ref} = heads/fixfleet/FF-1)
# Requests fixfleet makes that the provider's description leaves out, each with why it is allowed.
UNPUBLISHED = {
    "github": [("POST", "/graphql", "GitHub's GraphQL endpoint (markPullRequestReadyForReview): not REST")],
    "sentry": [(m, "/api/0/organizations/{organization_id_or_slug}/issues/{issue_id}/comments/",
                "the notes endpoint Sentry's own UI uses; the published API has no comments") for m in ("GET", "POST")],
}


@dataclass
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    body: dict[str, Any] | None = None


@dataclass
class PublishedApi:
    name: str
    source: str
    operations: list[Operation] = field(default_factory=list)

    @classmethod
    @lru_cache(maxsize=None)
    def load(cls, name: str) -> PublishedApi:
        data = json.loads((APIS / f"{name}.json").read_text())
        entries = [(o["method"], o["path"], o.get("body")) for o in data["operations"]]
        entries += [(method, path, None) for method, path, _ in UNPUBLISHED.get(name, [])]
        return cls(name, data["source"], [Operation(m, p, _compile(p), b) for m, p, b in entries])

    def check(self, method: str, path: str, body: Any) -> str | None:
        """None when the request is one the provider publishes; else why not."""
        matching = [op for op in self.operations if op.pattern.fullmatch(path)]
        if not matching:
            return f"{method} {path}: no such path in {self.name}'s published API ({self.source})"
        chosen = next((op for op in matching if op.method == method), None)
        if chosen is None:
            allowed = sorted({op.method for op in matching})
            return f"{method} {path}: {self.name}'s published API allows {', '.join(allowed)} there"
        if chosen.body is not None:
            try:
                jsonschema.validate(body, chosen.body)
            except jsonschema.ValidationError as exc:
                return f"{method} {chosen.template}: the body breaks {self.name}'s published schema: {exc.message}"
        return None


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    regex = "".join((".+" if part[1:-1] in GREEDY else "[^/]+") if part.startswith("{") else re.escape(part)
                    for part in parts)
    return re.compile(regex)
