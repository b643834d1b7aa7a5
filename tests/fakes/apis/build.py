"""Rebuild the published API tables the fakes check requests against (run by hand; the output is
committed so tests need no network):

    npm pack @octokit/openapi@23.0.2 && tar xzf octokit-openapi-23.0.2.tgz
    npm pack @sentry/api@0.1.0 && mkdir sentry && tar xzf sentry-api-0.1.0.tgz -C sentry
    python -m tests.fakes.apis.build package/generated/api.github.com.deref.json sentry/package/dist/index.js

- github.json: every operation (method + path) of GitHub's OpenAPI description (@octokit/openapi),
  with the JSON request-body schema of the operations fixfleet sends bodies to.
- sentry.json: every operation of Sentry's published API, as its generated client (@sentry/api,
  made from Sentry's OpenAPI document) lists them; the document itself is not on a registry.
Jira's and Slack's descriptions are on no registry: jira.json and slack.json are tables written
from their reference pages (the endpoints fixfleet calls, as documented).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
# Operations whose request bodies the GitHub fake checks (what fixfleet's client sends).
GITHUB_BODIES = {
    ("POST", "/repos/{owner}/{repo}/pulls"), ("PATCH", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/labels"),
}
_DROP = {"description", "examples", "example", "title"}


def _trim(schema):
    """The schema without prose: what validation needs."""
    if isinstance(schema, dict):
        return {k: _trim(v) for k, v in schema.items() if k not in _DROP}
    if isinstance(schema, list):
        return [_trim(v) for v in schema]
    return schema


def github(description: Path) -> dict:
    spec = json.loads(description.read_text())
    operations = []
    for path, item in sorted(spec["paths"].items()):
        for method, op in sorted(item.items()):
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            entry = {"method": method.upper(), "path": path}
            if (method.upper(), path) in GITHUB_BODIES:
                entry["body"] = _trim(op["requestBody"]["content"]["application/json"]["schema"])
            operations.append(entry)
    return {"source": f"@octokit/openapi {spec['info']['version']} (api.github.com.deref.json)",
            "operations": operations}


def sentry(client_js: Path) -> dict:
    found = re.findall(r'\.(get|put|post|patch|delete)\(\{\s*security:[^}]*?\}\],\s*url: "([^"]+)"', client_js.read_text())
    operations = sorted({(m.upper(), url) for m, url in found})
    return {"source": "@sentry/api 0.1.0 (generated from Sentry's OpenAPI document)",
            "operations": [{"method": m, "path": p} for m, p in operations]}


if __name__ == "__main__":
    (HERE / "github.json").write_text(json.dumps(github(Path(sys.argv[1])), indent=0, sort_keys=True) + "\n")
    (HERE / "sentry.json").write_text(json.dumps(sentry(Path(sys.argv[2])), indent=0, sort_keys=True) + "\n")
