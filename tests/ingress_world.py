"""The ingress as the tests configure it (secrets, API tokens, the GitHub stand-in) and what its
senders post to it: tests/test_ingress.py and tests/test_steering.py drive the same one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from fixfleet.config import Settings
from fixfleet.models import NewTask, Source, TaskStatus
from fixfleet.store import Store
from fixfleet.intake.signatures import sign_github
from tests.fakes.github import FakeGitHub
from tests.corpus import CORPUS

GITHUB_SECRET, SENTRY_SECRET, SLACK_SECRET = "gh-secret", "sentry-secret", "slack-secret"
GITHUB_TOKEN = "ghp_ingress_test_token"
REPO = "https://github.com/acme/api.git"
TOKENS = [
    {"name": "reader", "token": "tok-read", "scopes": ["read"]},
    {"name": "ci", "token": "tok-submit", "scopes": ["read", "submit"]},
    {"name": "lead", "token": "tok-approve", "scopes": ["read", "submit", "approve"]},
]


def configured(settings: Settings, github: FakeGitHub, tmp_path: Path) -> Settings:
    configured = settings.model_copy(
        update={
            "github_webhook_secret": GITHUB_SECRET,
            "sentry_client_secret": f"new-secret,{SENTRY_SECRET}",  # rotation: the old one still works
            "slack_signing_secret": SLACK_SECRET,
            "api_tokens": json.dumps(TOKENS),
            "github_token": GITHUB_TOKEN,
            "github_api_url": github.url,
            "default_repo": REPO,
            "repo_allowlist": ["https://github.com/acme/*", f"file://{tmp_path}/*"],
            "local_repo_roots": [tmp_path],
            "slack_approvers": ["U_LEAD"],
        }
    )
    return Settings.model_validate(configured.model_dump())  # re-validate (secrets as SecretStr)


def post_github(url: str, event: str, payload: dict, delivery: str) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": sign_github(GITHUB_SECRET, body)}
    return httpx.post(f"{url}/webhooks/github", content=body, headers=headers, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def awaiting_task(store: Store, *, plan_version: int = 1) -> Any:
    task, _ = await store.create_task(
        NewTask(source=Source.GITHUB, repo=REPO, title="boom",
                external_ids={"github_issue": "acme/api#7", "github_pr": "acme/api#8"})
    )
    await store.transition(task.id, TaskStatus.PLANNING, actor="planner")
    return await store.transition(task.id, TaskStatus.AWAITING_APPROVAL, actor="planner",
                                  changes={"plan_version": plan_version, "plan": {"root_cause": "x"}})


def comment_payload(author: str, text: str, *, created_at: str | None = None, bot: bool = False) -> dict:
    payload = json.loads((CORPUS / "github-webhooks" / "issue_comment.created.payload.json").read_text())
    payload["repository"]["full_name"], payload["repository"]["clone_url"] = "acme/api", REPO
    payload["issue"]["number"] = 7
    payload["issue"].pop("pull_request", None)
    payload["comment"]["body"] = text
    payload["comment"]["user"]["login"] = author
    payload["comment"]["user"]["type"] = "Bot" if bot else "User"
    payload["sender"] = payload["comment"]["user"]
    payload["comment"]["created_at"] = created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    return payload


def wait_for_comments(github: FakeGitHub, n: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while len(github.comments) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return github.comments
