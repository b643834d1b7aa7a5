"""The HTTP ingress as senders use it: signed webhooks, commands, approvals and the task API.

The app runs under a real uvicorn with the real store and queues; GitHub is a local stand-in.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.metrics import FLUSH_S
from fixfleet.models import TaskStatus
from fixfleet.store import OUTBOX_CHANNEL, Store
from fixfleet.intake.signatures import sentry_headers, sign_slack
from serve_app.context import YOUNG_COLLECTION_EVERY
from tests.fakes.github import FakeGitHub
from tests.ingress_server import running_ingress
from tests.ingress_world import (
    GITHUB_TOKEN,
    REPO,
    SENTRY_SECRET,
    SLACK_SECRET,
    TOKENS,
    awaiting_task,
    bearer,
    comment_payload,
    configured,
    post_github,
    wait_for_comments,
)
from tests.corpus import CORPUS


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(GITHUB_TOKEN) as fake:
        fake.grant("acme/api", "maintainer", "maintain")
        fake.grant("acme/api", "reader", "read")
        yield fake


@pytest.fixture
def api(settings: Settings, github: FakeGitHub, store: Store, redis: Redis, tmp_path: Path) -> Iterator[str]:
    with running_ingress(configured(settings, github, tmp_path)) as url:
        yield url


def sentry_alert(issue_id: str = "1117540176") -> dict[str, Any]:
    payload = json.loads((CORPUS / "sentry-webhooks" / "event_alert.triggered.json").read_text())
    payload = copy.deepcopy(payload)
    payload["data"]["event"]["issue_id"] = issue_id
    return payload


def post_sentry(url: str, payload: dict, request_id: str, *, secret: str = SENTRY_SECRET, resource: str = "event_alert") -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(f"{url}/webhooks/sentry", content=body, headers=sentry_headers(secret, body, request_id, resource),
                      timeout=10)


async def count(store: Store, table: str) -> int:
    return await store.pool.fetchval(f"SELECT count(*) FROM {table}")


# --- webhooks: authentication and bad input -------------------------------------------------


async def test_sentry_alert_becomes_one_queued_task(api: str, store: Store, queues) -> None:
    first = post_sentry(api, sentry_alert(), "req-1")
    assert first.status_code == 202, first.text
    key = first.json()["task"]
    again = post_sentry(api, sentry_alert(), "req-1")  # Sentry retries the same delivery
    assert again.status_code == 200 and again.json() == {**first.json(), "status": "duplicate"}
    task = await store.get_task(key)
    assert task.source == "sentry" and task.repo == REPO and task.status == TaskStatus.RECEIVED
    assert task.context["frames"] and task.external_ids["sentry_issue"] == "1117540176"
    assert await count(store, "tasks") == 1
    deadline = time.monotonic() + 5  # the app's outbox relay puts it on the planning queue
    while (await queues["planning"].depth()).waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {task_id for task_id, _ in await queues["planning"].entries()} == {task.id}


async def test_an_ingress_replica_brings_its_webhooks_to_the_queue_itself_without_notify(
    settings: Settings, github: FakeGitHub, store: Store, queues, database_url: str, tmp_path: Path
) -> None:
    """As a Serve ingress replica runs the app (the once-only jobs and the relay deployment
    elsewhere, not running here): the task still reaches its queue, relayed by the replica that
    committed it, and no commit sent a NOTIFY (Postgres serialises the commits that notify)."""
    heard: list[str] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(OUTBOX_CHANNEL, lambda *args: heard.append(args[-1]))
    try:
        with running_ingress(configured(settings, github, tmp_path), singletons=False) as url:
            accepted = post_sentry(url, sentry_alert(), "req-1")
            assert accepted.status_code == 202, accepted.text
            task = await store.get_task(accepted.json()["task"])
            deadline = time.monotonic() + 5
            while not await queues["planning"].entries() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert {task_id for task_id, _ in await queues["planning"].entries()} == {task.id}
        await asyncio.sleep(0.2)  # a NOTIFY would have been delivered by now
        assert heard == []
    finally:
        await listener.close()


async def test_repeat_alert_attaches_to_the_open_task(api: str, store: Store) -> None:
    key = post_sentry(api, sentry_alert(), "req-1").json()["task"]
    repeat = post_sentry(api, sentry_alert(), "req-2")
    assert repeat.status_code == 200 and repeat.json()["status"] == "attached" and repeat.json()["task"] == key
    assert (await store.get_task(key)).context["event_count"] == 2
    other = post_sentry(api, sentry_alert(issue_id="999"), "req-3")
    assert other.status_code == 202 and other.json()["task"] != key


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"Sentry-Hook-Signature": None}, 401, "missing"),
        ({"Sentry-Hook-Signature": "00" * 32}, 401, "does not match"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
    ],
)
async def test_bad_requests_are_refused_and_store_nothing(api: str, store: Store, change: dict, status: int, reason: str) -> None:
    body = json.dumps(sentry_alert()).encode()
    headers = sentry_headers(SENTRY_SECRET, body, "r")
    for name, value in change.items():
        headers.pop(name)
        if value is not None:
            headers[name] = value
    answer = httpx.post(f"{api}/webhooks/sentry", content=body, headers=headers)
    assert answer.status_code == status and reason in answer.json()["detail"]
    assert await count(store, "tasks") == 0 and await count(store, "webhook_deliveries") == 0


async def test_oversized_and_malformed_bodies(api: str, store: Store) -> None:
    huge = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    too_big = httpx.post(f"{api}/webhooks/sentry", content=huge, headers=sentry_headers(SENTRY_SECRET, huge, "r"))
    assert too_big.status_code == 413
    broken = b'{"action": "triggered",'
    malformed = httpx.post(f"{api}/webhooks/sentry", content=broken, headers=sentry_headers(SENTRY_SECRET, broken, "r"))
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["detail"]
    assert await count(store, "tasks") == 0


def test_slack_timestamp_window(api: str) -> None:
    body = b"payload=" + httpx.QueryParams({"x": "{}"}).get("x").encode()

    def post(timestamp: int) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(timestamp),
                   "X-Slack-Signature": sign_slack(SLACK_SECRET, body, timestamp)}
        return httpx.post(f"{api}/webhooks/slack/interactions", content=body, headers=headers)

    stale = post(int(time.time()) - 301)
    assert stale.status_code == 401 and "300" in stale.json()["detail"]
    assert post(int(time.time())).status_code < 500


def test_every_github_corpus_payload_is_answered(api: str) -> None:
    files = sorted((CORPUS / "github-webhooks").glob("*.json"))
    assert len(files) > 50
    for n, path in enumerate(files):
        event = path.name.split(".")[0]
        answer = post_github(api, event, json.loads(path.read_text()), f"corpus-{n}")
        assert answer.status_code in (200, 202), (path.name, answer.status_code, answer.text)
        if event == "ping":
            assert answer.json()["status"] == "pong"


# --- commands and approvals -----------------------------------------------------------------


async def test_writer_approves_with_a_comment(api: str, store: Store, github: FakeGitHub) -> None:
    task = await awaiting_task(store)
    answer = post_github(api, "issue_comment", comment_payload("maintainer", "Looks right to me. @agent approve"), "c1")
    assert answer.status_code == 200
    assert (await store.get_task(task.id)).status == TaskStatus.APPROVED
    assert any(c.path.endswith("/collaborators/maintainer/permission") for c in github.calls)
    replies = wait_for_comments(github, 1)
    assert "APPROVED" in replies[0]["body"] and replies[0]["issue"] == 7


async def test_write_access_elsewhere_does_not_approve_this_task(api: str, store: Store, github: FakeGitHub) -> None:
    """Write on another repository that sends webhooks here, or a comment on another issue of the
    same repository, naming the task: both refused, the task waits."""
    task = await awaiting_task(store)
    github.grant("evil/other", "attacker", "admin")
    elsewhere = comment_payload("attacker", f"@agent approve {task.key}")
    elsewhere["repository"]["full_name"] = "evil/other"
    post_github(api, "issue_comment", elsewhere, "c-elsewhere")
    other_issue = comment_payload("maintainer", f"@agent approve {task.key}")
    other_issue["issue"]["number"] = 99
    post_github(api, "issue_comment", other_issue, "c-other-issue")

    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL
    refusals = [e.reason for e in await store.events(task.id) if "refused" in e.reason]
    assert len(refusals) == 2 and "evil/other#7" in refusals[0] and "acme/api#99" in refusals[1]
    assert all("comment there" in r for r in refusals)
    assert not any("/repos/evil/other/collaborators" in c.path for c in github.calls)  # never asked


async def test_a_review_on_a_pull_request_fixfleet_did_not_open_is_ignored(api: str, store: Store, github: FakeGitHub) -> None:
    payload = json.loads((CORPUS / "github-webhooks" / "pull_request_review.submitted.payload.json").read_text())
    payload["repository"]["full_name"], payload["repository"]["clone_url"] = "acme/api", REPO
    payload["pull_request"]["head"]["ref"] = "feature/someone-elses"
    payload["review"].update({"state": "changes_requested", "body": "Please rename this.",
                              "user": {"login": "maintainer", "type": "User"}})
    answer = post_github(api, "pull_request_review", payload, "r-foreign")
    assert answer.json()["status"] == "ignored" and "did not open" in answer.json()["detail"]
    time.sleep(0.3)
    assert github.comments == []  # no confusing bot reply


async def test_the_same_issue_number_on_two_github_hosts_makes_two_tasks(api: str, store: Store) -> None:
    payload = json.loads((CORPUS / "github-webhooks" / "issues.opened.payload.json").read_text())
    payload["repository"]["full_name"], payload["repository"]["clone_url"] = "acme/api", REPO
    payload["issue"]["labels"] = [{"name": "fixfleet"}]
    enterprise = copy.deepcopy(payload)
    enterprise["repository"]["html_url"] = "https://ghe.acme.internal/acme/api"
    first = post_github(api, "issues", payload, "i-cloud").json()
    second = post_github(api, "issues", enterprise, "i-ghe").json()
    assert first["status"] == second["status"] == "created" and first["task"] != second["task"]
    assert (await store.get_task(second["task"])).external_ids["github_issue"] == \
        f"ghe.acme.internal/acme/api#{payload['issue']['number']}"


async def test_who_asked_may_not_approve_where_the_repository_says_so(settings: Settings, store: Store) -> None:
    configured = Settings.model_validate(settings.model_copy(update={
        "api_tokens": json.dumps(TOKENS), "repo_allowlist": ["https://github.com/acme/*"],
        "independent_approval": ["https://github.com/acme/*"]}).model_dump())
    with running_ingress(configured) as url:
        submitted = httpx.post(f"{url}/tasks", json={"repo": REPO, "title": "t"}, headers=bearer("tok-approve"))
        task = await store.get_task(submitted.json()["key"])
        await store.transition(task.id, TaskStatus.PLANNING, actor="planner")
        await store.transition(task.id, TaskStatus.AWAITING_APPROVAL, actor="planner", changes={"plan_version": 1})
        refused = httpx.post(f"{url}/tasks/{task.key}/approve", json={"plan_version": 1}, headers=bearer("tok-approve"))
    assert refused.status_code == 403 and "may not also approve it" in refused.json()["detail"]
    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL


async def test_reader_is_refused_politely_and_task_waits(api: str, store: Store, github: FakeGitHub) -> None:
    task = await awaiting_task(store)
    post_github(api, "issue_comment", comment_payload("reader", "@agent approve"), "c2")
    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL
    refusal = (await store.events(task.id))[-1]
    assert refusal.to_status is None and "refused" in refusal.reason and refusal.actor == "github:reader"
    reply = wait_for_comments(github, 1)[0]["body"]
    assert reply.startswith("Sorry") and "read permission" in reply


async def test_own_comment_is_ignored(api: str, store: Store, github: FakeGitHub) -> None:
    task = await awaiting_task(store)
    answer = post_github(api, "issue_comment", comment_payload("fixfleet[bot]", "@agent approve", bot=True), "c3")
    assert answer.json()["status"] == "ignored"
    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL
    assert github.comments == [] and not any("permission" in c.path for c in github.calls)


async def test_approval_older_than_the_plan_is_stale(api: str, store: Store, github: FakeGitHub) -> None:
    task = await awaiting_task(store)
    written_before_plan = "2020-01-01T00:00:00Z"
    post_github(api, "issue_comment", comment_payload("maintainer", "@agent approve", created_at=written_before_plan), "c4")
    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL
    assert "posted after this comment" in wait_for_comments(github, 1)[0]["body"]


async def test_unknown_command_names_the_closest(api: str, store: Store, github: FakeGitHub) -> None:
    await awaiting_task(store)
    post_github(api, "issue_comment", comment_payload("maintainer", "@agent aprove"), "c5")
    assert "approve" in wait_for_comments(github, 1)[0]["body"]


async def test_revise_sends_the_task_back_with_feedback(api: str, store: Store) -> None:
    task = await awaiting_task(store)
    post_github(api, "issue_comment", comment_payload("maintainer", "@agent revise add a regression test for empty input"), "c6")
    revised = await store.get_task(task.id)
    assert revised.status == TaskStatus.REVISING
    assert (await store.events(task.id))[-1].data["feedback"] == "add a regression test for empty input"


async def test_slack_button_from_allowlisted_user_only(api: str, store: Store) -> None:
    from fixfleet.formats.slack import slack_action_value

    task = await awaiting_task(store)

    def click(user: str, trigger: str) -> httpx.Response:
        payload = {"type": "block_actions", "trigger_id": trigger, "user": {"id": user, "username": user},
                   "actions": [{"action_id": "approve", "value": slack_action_value(task.key, 1), "action_ts": trigger}],
                   "response_url": "http://127.0.0.1:9/unused"}
        body = httpx.QueryParams({"payload": json.dumps(payload)}).__str__().encode()
        now = int(time.time())
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(now),
                   "X-Slack-Signature": sign_slack(SLACK_SECRET, body, now)}
        return httpx.post(f"{api}/webhooks/slack/interactions", content=body, headers=headers)

    stranger = click("U_STRANGER", "t1")
    assert stranger.status_code == 200 and "FIXFLEET_SLACK_APPROVERS" in stranger.json()["text"]
    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL
    lead = click("U_LEAD", "t2")
    assert "APPROVED" in lead.json()["text"]
    assert (await store.get_task(task.id)).status == TaskStatus.APPROVED


# --- the task API -----------------------------------------------------------------------------


async def test_task_api_scopes_and_lifecycle(api: str, store: Store) -> None:
    new = {"repo": REPO, "title": "checkout fails", "body": "KeyError: 'sku'", "priority": "high"}
    assert httpx.post(f"{api}/tasks", json=new).status_code == 401
    assert httpx.post(f"{api}/tasks", json=new, headers=bearer("wrong")).status_code == 401
    assert httpx.post(f"{api}/tasks", json=new, headers=bearer("tok-read")).status_code == 403
    created = httpx.post(f"{api}/tasks", json=new, headers=bearer("tok-submit") | {"Idempotency-Key": "k1"})
    assert created.status_code == 202 and created.json()["status"] == "RECEIVED"
    retried = httpx.post(f"{api}/tasks", json=new, headers=bearer("tok-submit") | {"Idempotency-Key": "k1"})
    assert retried.status_code == 200 and retried.json()["id"] == created.json()["id"]
    key = created.json()["key"]

    page = httpx.get(f"{api}/tasks", params={"status": "RECEIVED", "limit": 1}, headers=bearer("tok-read")).json()
    assert [t["key"] for t in page["items"]] == [key] and page["next_offset"] is None
    assert httpx.get(f"{api}/tasks/{key}/events", headers=bearer("tok-read")).json()[0]["to_status"] == "RECEIVED"
    assert httpx.get(f"{api}/tasks/FF-99999", headers=bearer("tok-read")).status_code == 404

    await store.transition(key, TaskStatus.PLANNING, actor="planner")
    await store.transition(key, TaskStatus.AWAITING_APPROVAL, actor="planner", changes={"plan_version": 2})
    assert httpx.post(f"{api}/tasks/{key}/approve", json={"plan_version": 2}, headers=bearer("tok-submit")).status_code == 403
    stale = httpx.post(f"{api}/tasks/{key}/approve", json={"plan_version": 1}, headers=bearer("tok-approve"))
    assert stale.status_code == 409 and "v2" in stale.json()["detail"]
    approved = httpx.post(f"{api}/tasks/{key}/approve", json={"plan_version": 2}, headers=bearer("tok-approve"))
    assert approved.status_code == 200 and approved.json()["status"] == "APPROVED"
    again = httpx.post(f"{api}/tasks/{key}/approve", json={"plan_version": 2}, headers=bearer("tok-approve"))
    assert again.status_code == 409
    cancelled = httpx.post(f"{api}/tasks/{key}/cancel", json={"reason": "dup"}, headers=bearer("tok-submit"))
    assert cancelled.json()["status"] == "CANCELLED"


async def test_text_postgres_cannot_hold_is_stored_not_answered_500(api: str, store: Store) -> None:
    """A NUL in an alert's message or in a cancel's reason (the API fuzzer's find: POST
    /tasks/{ref}/cancel answered 500) is stored as U+FFFD like any character Postgres refuses."""
    alert = sentry_alert("31337")
    alert["data"]["event"]["title"] = "ValueError: bad byte \x00 in input"
    accepted = post_sentry(api, alert, "nul-1")
    assert accepted.status_code == 202, accepted.text
    key = accepted.json()["task"]
    assert "bad byte \ufffd in input" in (await store.get_task(key)).title
    cancelled = httpx.post(f"{api}/tasks/{key}/cancel", json={"reason": "dup\u0000 of FF-1"}, headers=bearer("tok-submit"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED", cancelled.text
    assert (await store.events(key))[-1].reason == "dup\ufffd of FF-1"


async def test_a_submitted_task_carries_its_external_ids_and_is_found_by_them(api: str, store: Store) -> None:
    new = {"repo": REPO, "title": "KeyError in checkout", "external_ids": {"sentry_issue": "4242", "jira": "OPS-7"}}
    created = httpx.post(f"{api}/tasks", json=new, headers=bearer("tok-submit"))
    assert created.status_code == 202 and created.json()["external_ids"] == new["external_ids"]
    assert created.json()["source"] == "api"  # who submitted it; the ids say what it is about
    other = httpx.post(f"{api}/tasks", json={"repo": REPO, "title": "other", "external_ids": {"jira": "OPS-8"}},
                       headers=bearer("tok-submit")).json()
    httpx.post(f"{api}/tasks", json={"repo": REPO, "title": "unrelated"}, headers=bearer("tok-submit"))

    def found(*filters: str) -> list[str]:
        page = httpx.get(f"{api}/tasks", params=[("external", f) for f in filters], headers=bearer("tok-read"))
        assert page.status_code == 200, page.text
        return [t["key"] for t in page.json()["items"]]

    assert found("sentry_issue:4242") == [created.json()["key"]]
    assert found("jira:OPS-7", "jira:OPS-8", "jira:OPS-9") == [other["key"], created.json()["key"]]
    assert found("sentry_issue:1") == []
    # A Sentry alert for the same issue attaches to the submitted task instead of making another.
    alert = post_sentry(api, sentry_alert(issue_id="4242"), "req-ext")
    assert alert.json()["status"] == "attached" and alert.json()["task"] == created.json()["key"]


@pytest.mark.parametrize(("external_ids", "reason"), [
    ({"github_pr": "acme/api#8"}, "use one of sentry_issue, jira"),
    # Attack: put a submitted task behind someone else's GitHub issue, to take its comments.
    ({"github_issue": "acme/api#7"}, "use one of sentry_issue, jira"),
    ({"sentry_issue": "BACKEND-4Z"}, "not a sentry issue id"),
    ({"jira": "OPS-1 OR 1=1"}, "not a jira id"),
    ({"jira": "A" * 199 + "-1"}, "1 to 200 characters"),
])
def test_bad_external_ids_are_422_with_a_reason(api: str, external_ids: dict, reason: str) -> None:
    answer = httpx.post(f"{api}/tasks", json={"repo": REPO, "title": "t", "external_ids": external_ids},
                        headers=bearer("tok-submit"))
    assert answer.status_code == 422 and reason in answer.text, answer.text


@pytest.mark.parametrize(("params", "reason"), [
    ([("external", "sentry_issue")], "write it as key:id"),
    ([("external", "sentry_issue:abc")], "not a sentry issue id"),
    ([("external", "nope:1")], "use one of"),
    ([("external", f"jira:OPS-{n}") for n in range(101)], "at most 100"),
])
def test_bad_external_filters_are_422_with_a_reason(api: str, params: list, reason: str) -> None:
    answer = httpx.get(f"{api}/tasks", params=params, headers=bearer("tok-read"))
    assert answer.status_code == 422 and reason in answer.json()["detail"], answer.text


async def test_an_approval_note_is_in_the_audit_trail_with_the_token_name(api: str, store: Store) -> None:
    key = httpx.post(f"{api}/tasks", json={"repo": REPO, "title": "t"}, headers=bearer("tok-submit")).json()["key"]
    await store.transition(key, TaskStatus.PLANNING, actor="planner")
    await store.transition(key, TaskStatus.AWAITING_APPROVAL, actor="planner", changes={"plan_version": 1})
    too_long = httpx.post(f"{api}/tasks/{key}/approve", json={"plan_version": 1, "note": "x" * 501},
                          headers=bearer("tok-approve"))
    assert too_long.status_code == 422
    note = "bulk approval: confidence 0.93 ≥ 0.90"
    approved = httpx.post(f"{api}/tasks/{key}/approve", json={"plan_version": 1, "note": note},
                          headers=bearer("tok-approve"))
    assert approved.status_code == 200 and approved.json()["status"] == "APPROVED"
    row = httpx.get(f"{api}/tasks/{key}/events", headers=bearer("tok-read")).json()[-1]
    assert (row["to_status"], row["actor"], row["reason"], row["data"]["note"]) == ("APPROVED", "api:lead", note, note)


def test_whoami_names_the_token_and_its_scopes(api: str) -> None:
    assert httpx.get(f"{api}/whoami", headers=bearer("tok-read")).json() == {"name": "reader", "scopes": ["read"]}
    assert httpx.get(f"{api}/whoami", headers=bearer("tok-approve")).json()["scopes"] == ["read", "submit", "approve"]
    assert httpx.get(f"{api}/whoami").status_code == 401
    assert httpx.get(f"{api}/whoami", headers=bearer("nope")).status_code == 401


@pytest.mark.parametrize(
    "repo",
    ["-oProxyCommand=touch /tmp/pwned", "https://user:pw@github.com/acme/api.git", "https://github.com/evil/api.git",
     "file:///etc/passwd", "ftp://github.com/acme/api.git", "https://github.com/acme/api.git --upload-pack=x"],
)
def test_bad_repositories_are_422(api: str, repo: str) -> None:
    answer = httpx.post(f"{api}/tasks", json={"repo": repo, "title": "t"}, headers=bearer("tok-submit"))
    assert answer.status_code == 422, answer.text


def test_health_and_metrics(api: str) -> None:
    health = httpx.get(f"{api}/health")
    assert health.status_code == 200
    checks = health.json()["checks"]
    assert checks["postgres"]["status"] == "ok" and checks["redis"]["status"] == "ok" and "agents" in checks
    assert checks["sandbox"]["status"] == "on"
    post_sentry(api, sentry_alert(), "req-m")
    metrics = httpx.get(f"{api}/metrics").text
    assert 'fixfleet_webhooks_total{outcome="created",source="sentry"} 1.0' in metrics
    assert "fixfleet_queue_depth" in metrics


def test_metrics_are_the_same_from_every_replica(api: str, settings: Settings, github: FakeGitHub,
                                                 tmp_path: Path) -> None:
    with running_ingress(configured(settings, github, tmp_path)) as other:  # a second ingress replica
        post_sentry(api, sentry_alert("9001"), "req-a")
        post_sentry(other, sentry_alert("9002"), "req-b")
        post_sentry(other, sentry_alert("9002"), "req-b")  # a redelivery
        time.sleep(FLUSH_S + 0.5)  # each replica adds its counts to Redis every FLUSH_S
        first, second = httpx.get(f"{api}/metrics").text, httpx.get(f"{other}/metrics").text
    for text in (first, second):
        assert 'fixfleet_webhooks_total{outcome="created",source="sentry"} 2.0' in text, text
        assert 'fixfleet_webhooks_total{outcome="duplicate",source="sentry"} 1.0' in text
        assert 'fixfleet_tasks{status="RECEIVED"} 2.0' in text
    counters = lambda text: sorted(line for line in text.splitlines() if line.startswith("fixfleet_webhooks_total"))  # noqa: E731
    assert counters(first) == counters(second)


def test_health_says_loudly_when_the_sandbox_is_off(settings: Settings, store: Store) -> None:
    with running_ingress(settings.model_copy(update={"sandbox": "off"})) as url:
        sandbox = httpx.get(f"{url}/health").json()["checks"]["sandbox"]
    assert sandbox["status"] == "OFF" and "WITHOUT isolation" in sandbox["detail"]


def test_the_app_collects_young_garbage_less_often_and_gives_the_process_its_settings_back(
        settings: Settings, store: Store) -> None:
    before = gc.get_threshold()
    with running_ingress(settings) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, *before[1:])
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # the next app in this process starts clean


def test_openapi_models_every_route(api: str) -> None:
    spec = httpx.get(f"{api}/openapi.json").json()
    paths = spec["paths"]
    for path in ["/webhooks/github", "/webhooks/jira", "/webhooks/sentry", "/webhooks/slack/interactions",
                 "/webhooks/slack/commands", "/health", "/metrics", "/tasks", "/tasks/{ref}", "/tasks/{ref}/events",
                 "/tasks/{ref}/approve", "/tasks/{ref}/reject", "/tasks/{ref}/revise", "/tasks/{ref}/cancel",
                 "/tasks/{ref}/retry", "/whoami"]:
        assert path in paths, path
    assert {"TaskIn", "TaskOut", "TaskPage", "WebhookOut", "HealthOut", "ApproveIn"} <= set(spec["components"]["schemas"])
    assert httpx.get(f"{api}/docs").status_code == 200


def test_schemathesis_finds_no_server_error(api: str) -> None:
    """Property-based requests over every operation of /openapi.json: never a 5xx."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{api}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "25", "--header", "Authorization: Bearer tok-approve", "--no-color",
         "--seed", "1", "--generation-deterministic"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


async def test_jira_ip_allowlist(settings: Settings, store: Store) -> None:
    from fixfleet.intake.signatures import sign_jira

    payload = {"webhookEvent": "jira:issue_created", "issue": {"key": "OPS-1", "fields": {
        "summary": "boom", "project": {"key": "OPS"}, "labels": ["fixfleet"]}}}
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": "j-1",
               "X-Hub-Signature": sign_jira("jira-secret", body)}
    for allowlist, status in ((["10.0.0.0/8"], 403), (["127.0.0.0/8"], 202)):
        configured = Settings.model_validate(settings.model_dump() | {
            "jira_webhook_secret": "jira-secret", "jira_ip_allowlist": allowlist, "default_repo": REPO,
            "repo_allowlist": [REPO],
            "database_url": settings.database_url.get_secret_value(), "redis_url": settings.redis_url.get_secret_value()})
        with running_ingress(configured) as url:
            answer = httpx.post(f"{url}/webhooks/jira", content=body, headers=headers)
        assert answer.status_code == status, answer.text
    assert await count(store, "tasks") == 1


async def test_unsigned_jira_webhooks_are_refused_unless_the_operator_allows_them(settings: Settings, store: Store) -> None:
    payload = {"webhookEvent": "jira:issue_created", "issue": {"key": "OPS-2", "fields": {
        "summary": "boom", "project": {"key": "OPS"}, "labels": ["fixfleet"]}}}
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": "j-unsigned"}
    base = settings.model_dump() | {"default_repo": REPO, "repo_allowlist": [REPO],
                                    "database_url": settings.database_url.get_secret_value(),
                                    "redis_url": settings.redis_url.get_secret_value()}
    for allow, status in ((False, 401), (True, 202)):
        with running_ingress(Settings.model_validate(base | {"jira_allow_unsigned": allow})) as url:
            answer = httpx.post(f"{url}/webhooks/jira", content=body, headers=headers)
        assert answer.status_code == status, answer.text
        if status == 401:
            assert "FIXFLEET_JIRA_WEBHOOK_SECRET" in answer.json()["detail"]
    assert await count(store, "tasks") == 1


def test_a_deeply_nested_body_is_a_400_not_a_500(api: str) -> None:
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    nested: object = []
    for _ in range(200):  # valid JSON the parser takes, nested past any provider's payload
        nested = [nested]
    nested = json.dumps({"action": "triggered", "data": {"event": {"x": nested}}}).encode()
    for body in (b'{"a": ' + deep + b"}", nested):
        answer = httpx.post(f"{api}/webhooks/sentry", content=body, timeout=30,
                            headers=sentry_headers(SENTRY_SECRET, body, "deep"))
        assert answer.status_code == 400 and "nests deeper" in answer.json()["detail"], answer.text


def test_a_repository_outside_the_allowlist_is_refused_and_the_default_allows_none(
        settings: Settings, store: Store) -> None:
    configured = Settings.model_validate(settings.model_dump() | {
        "api_tokens": json.dumps(TOKENS), "database_url": settings.database_url.get_secret_value(),
        "redis_url": settings.redis_url.get_secret_value()})
    assert configured.repo_allowlist == []
    with running_ingress(configured) as url:
        for repo in ("https://github.com/acme/api.git", "https://10.0.0.5/internal/secrets.git"):
            answer = httpx.post(f"{url}/tasks", json={"repo": repo, "title": "t"}, headers=bearer("tok-submit"))
            assert answer.status_code == 422 and "FIXFLEET_REPO_ALLOWLIST" in answer.json()["detail"]


async def test_review_requesting_changes_sends_the_plan_back(api: str, store: Store) -> None:
    task = await awaiting_task(store)
    payload = json.loads((CORPUS / "github-webhooks" / "pull_request_review.submitted.payload.json").read_text())
    payload["repository"]["full_name"], payload["repository"]["clone_url"] = "acme/api", REPO
    payload["pull_request"]["head"]["ref"] = f"fixfleet/{task.key}"
    payload["pull_request"]["number"] = 8  # the task's own pull request
    payload["review"].update({"state": "changes_requested", "body": "Please also cover\nnegative numbers.",
                              "user": {"login": "maintainer", "type": "User"},
                              "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))})
    payload["sender"] = payload["review"]["user"]
    assert post_github(api, "pull_request_review", payload, "r1").status_code == 200
    revised = await store.get_task(task.id)
    assert revised.status == TaskStatus.REVISING
    assert (await store.events(task.id))[-1].data["feedback"] == "Please also cover negative numbers."


def slack_event(url: str, payload: dict, *, secret: str = SLACK_SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    now = str(int(time.time()))
    return httpx.post(f"{url}/webhooks/slack/events", content=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Slack-Request-Timestamp": now,
        "X-Slack-Signature": sign_slack(secret, body, now)})


def mention(event_id: str, user: str, text: str, **extra: Any) -> dict:
    return {"type": "event_callback", "event_id": event_id, "event": {
        "type": "app_mention", "user": user, "text": text, "channel": "C0PLANS", "ts": "1700000000.000100", **extra}}


async def test_slack_events_answer_the_challenge_and_run_commands_from_mentions(settings: Settings, store: Store) -> None:
    from tests.fakes.slack import FakeSlack

    with FakeSlack("xoxb-ingress-test") as slack:
        configured = Settings.model_validate(settings.model_dump() | {
            "slack_signing_secret": SLACK_SECRET, "slack_bot_token": "xoxb-ingress-test", "slack_api_url": slack.api_url,
            "slack_approvers": ["U_LEAD"], "database_url": settings.database_url.get_secret_value(),
            "redis_url": settings.redis_url.get_secret_value()})
        task = await awaiting_task(store)
        with running_ingress(configured) as url:
            challenge = slack_event(url, {"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
            forged = slack_event(url, mention("Ev-forged", "U_LEAD", f"<@U0APP> approve {task.key}"), secret="wrong")
            stranger = slack_event(url, mention("Ev-1", "U_STRANGER", f"<@U0APP> approve {task.key}"))
            bot = slack_event(url, mention("Ev-2", "U_LEAD", f"<@U0APP> approve {task.key}", bot_id="B1"))
            lead = slack_event(url, mention("Ev-3", "U_LEAD", f"<@U0APP|fixfleet> approve {task.key}"))
            retry = slack_event(url, mention("Ev-3", "U_LEAD", f"<@U0APP|fixfleet> approve {task.key}"))
            deadline = time.monotonic() + 5
            while len(slack.messages) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)

    assert challenge.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert forged.status_code == 401
    assert bot.json()["status"] == "ignored" and retry.json()["status"] == "duplicate"
    assert "not in FIXFLEET_SLACK_APPROVERS" in stranger.json()["text"]
    assert lead.json()["status"] == "command"
    assert (await store.get_task(task.id)).status == TaskStatus.APPROVED
    replies = [m for m in slack.messages if m["channel"] == "C0PLANS"]
    assert len(replies) == 2 and "APPROVED" in replies[-1]["text"]
