"""The GitHub, Jira, Sentry and Slack clients against their local stand-ins: every method, the
idempotency a retried step relies on, retries and typed errors, and the registry."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from fixfleet.config import Settings
from fixfleet.forges.git_remote import PlainGitRemote
from fixfleet.forges.github import GitHubForge
from fixfleet.forges.github_api import GitHubClient, graphql_url
from fixfleet.formats.adf import adf_to_text
from fixfleet.formats.slack import slack_action_value
from fixfleet.intake import parse_sentry, parse_slack_interaction
from fixfleet.integrations.base import (
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    RejectedError,
    UnavailableError,
)
from fixfleet.integrations.http import IntegrationError
from fixfleet.integrations.jira import (
    JiraClient,
    JiraTracker,
    TransitionNotFoundError,
    text_to_adf,
)
from fixfleet.integrations.notifier import ChatThread
from fixfleet.integrations.sentry import SentryClient
from fixfleet.integrations.slack import (
    SlackAuthError,
    SlackClient,
    SlackError,
    SlackNotFoundError,
    SlackNotifier,
)
from fixfleet.logs import reset_log_once
from fixfleet.models import Priority, Source, Task, TaskStatus
from fixfleet.providers import connect, reset_skip_log
from fixfleet.redact import Redactor
from tests.fakes.github import FakeGitHub
from tests.fakes.jira import FakeJira
from tests.fakes.sentry import FakeSentry
from tests.fakes.slack import FakeSlack

GITHUB_TOKEN = "ghp_integrationTestToken0123456789"
JIRA_EMAIL, JIRA_TOKEN = "bot@acme.test", "jira-api-token-0123456789"
SENTRY_TOKEN = "sntrys_integrationTestToken0123"
SLACK_TOKEN = "xoxb-1111-2222-integrationTestToken"
FAST = {"attempts": 3, "backoff_s": 0.01, "max_wait_s": 2.0}
REPO = "acme/api"
NOW = datetime.now(UTC)
TASK = Task(id=1, key="FF-1", source=Source.SENTRY, external_ids={}, repo="https://github.com/acme/api.git",
            title="div by zero", body="", priority=Priority.HIGH, status=TaskStatus.AWAITING_APPROVAL, version=3,
            attempts=1, plan=None, plan_version=2, branch="fixfleet/FF-1", pr_url=None, context={}, cost_usd=0.0,
            tokens=0, created_at=NOW, updated_at=NOW)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub(GITHUB_TOKEN) as fake:
        fake.add_repo(REPO, {"app/calc.py": "def div(a, b):\n    return a / b\n", "README.md": "# api\n"})
        yield fake


@pytest.fixture
async def github(fake_github: FakeGitHub) -> AsyncIterator[GitHubClient]:
    client = GitHubClient(GITHUB_TOKEN, api_url=fake_github.url, **FAST)
    yield client
    await client.aclose()


@pytest.fixture
def fake_jira() -> Iterator[FakeJira]:
    with FakeJira(JIRA_EMAIL, JIRA_TOKEN) as fake:
        fake.add_issue("OPS-7", "Division by zero in calc")
        yield fake


@pytest.fixture
async def jira(fake_jira: FakeJira) -> AsyncIterator[JiraClient]:
    client = JiraClient(fake_jira.url, JIRA_EMAIL, JIRA_TOKEN, **FAST)
    yield client
    await client.aclose()


FRAMES = [
    {"filename": "app/main.py", "abs_path": "/srv/app/main.py", "function": "handler", "lineno": 12,
     "in_app": True, "context_line": "    return div(total, count)", "pre_context": ["def handler():"]},
    {"filename": "app/calc.py", "abs_path": "/srv/app/calc.py", "function": "div", "lineno": 2,
     "in_app": True, "context_line": "    return a / b", "post_context": [""]},
]


@pytest.fixture
def fake_sentry() -> Iterator[FakeSentry]:
    with FakeSentry(SENTRY_TOKEN) as fake:
        fake.add_issue("4242", "ZeroDivisionError: division by zero", FRAMES)
        yield fake


@pytest.fixture
async def sentry(fake_sentry: FakeSentry) -> AsyncIterator[SentryClient]:
    client = SentryClient(SENTRY_TOKEN, f"{fake_sentry.url}/api/0", "acme", **FAST)
    yield client
    await client.aclose()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(SLACK_TOKEN) as fake:
        yield fake


@pytest.fixture
async def slack(fake_slack: FakeSlack) -> AsyncIterator[SlackClient]:
    client = SlackClient(SLACK_TOKEN, fake_slack.api_url, **FAST)
    yield client
    await client.aclose()


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = f"{exc} {exc!r} {exc.args}"
    for secret in secrets:
        assert secret not in text


# --- GitHub -----------------------------------------------------------------------------------


async def test_github_permission_and_a_plain_comment(github: GitHubClient, fake_github: FakeGitHub) -> None:
    fake_github.grant(REPO, "maintainer", "maintain")
    assert await github.permission(REPO, "maintainer") == "maintain"
    assert await github.permission(REPO, "stranger") == "none"  # 404: not a collaborator
    comment = await github.comment(REPO, 3, "hello")
    assert comment["body"] == "hello" and fake_github.comments_on(REPO, 3) == [comment]
    assert await github.default_branch(REPO) == "main"


async def test_github_pull_requests_are_idempotent(github: GitHubClient, fake_github: FakeGitHub) -> None:
    fake_github.repos[REPO].refs["fixfleet/FF-1"] = fake_github.repos[REPO].refs["main"]  # pushed, nothing new
    with pytest.raises(RejectedError, match="No commits between"):
        await github.create_pull(REPO, "fixfleet/FF-1", "main", "FF-1", "body")
    fake_github.push(REPO, "fixfleet/FF-1", {"PLAN.md": "# Plan\n"})
    assert await github.find_pull(REPO, "fixfleet/FF-1") is None
    refused = len(fake_github.calls_to(r"/pulls$", "POST"))

    pr = await github.create_pull(REPO, "fixfleet/FF-1", "main", "fix: FF-1", "the plan", draft=True)
    again = await github.create_pull(REPO, "fixfleet/FF-1", "main", "fix: FF-1", "the plan", draft=True)
    assert again["number"] == pr["number"] and pr["draft"] is True
    assert len(fake_github.pulls) == 1 and len(fake_github.calls_to(r"/pulls$", "POST")) == refused + 1
    assert fake_github.calls_to(r"/pulls$", "GET")[-1].query["head"] == ["acme:fixfleet/FF-1"]
    found = await github.find_pull(REPO, "fixfleet/FF-1")
    assert found is not None and found["number"] == pr["number"]
    assert await github.find_pull(REPO, "fixfleet/FF-9") is None

    updated = await github.update_pull(REPO, pr["number"], body="the plan\n\n## Evidence\nRED 1, GREEN 0")
    assert updated["body"].endswith("GREEN 0") and updated["title"] == "fix: FF-1"
    assert (await github.update_pull(REPO, pr["number"], title="fix: divide safely"))["body"] == updated["body"]
    assert fake_github.pull(REPO, pr["number"])["title"] == "fix: divide safely"


async def test_github_mark_ready_flips_draft(github: GitHubClient, fake_github: FakeGitHub) -> None:
    fake_github.push(REPO, "fixfleet/FF-3", {"PLAN.md": "# Plan\n"})
    pr = await github.create_pull(REPO, "fixfleet/FF-3", "main", "fix: FF-3", "plan")
    assert fake_github.pull(REPO, pr["number"])["draft"] is True

    ready = await github.mark_ready(REPO, pr)
    assert ready["draft"] is False and fake_github.pull(REPO, pr["number"])["draft"] is False
    mutation = fake_github.calls_to(r"^/graphql$")[-1]
    assert "markPullRequestReadyForReview" in mutation.body["query"]
    assert mutation.body["variables"] == {"id": pr["node_id"]}

    assert (await github.mark_ready(REPO, pr["number"]))["draft"] is False  # already ready: no mutation
    assert len(fake_github.calls_to(r"^/graphql$")) == 1
    fake_github.push(REPO, "fixfleet/FF-4", {"PLAN.md": "# Plan 4\n"})
    other = await github.create_pull(REPO, "fixfleet/FF-4", "main", "fix: FF-4", "plan")
    with pytest.raises(NotFoundError, match="Could not resolve"):  # a GraphQL error answered with 200
        await github.mark_ready(REPO, {**other, "node_id": "PR_nope"})
    assert fake_github.pull(REPO, other["number"])["draft"] is True


def test_graphql_url_for_github_and_enterprise() -> None:
    assert graphql_url("https://api.github.com") == "https://api.github.com/graphql"
    assert graphql_url("https://ghe.acme.test/api/v3/") == "https://ghe.acme.test/api/graphql"


async def test_github_upsert_comment_makes_one_comment(github: GitHubClient, fake_github: FakeGitHub) -> None:
    first = await github.upsert_comment(REPO, 5, "plan", "Plan v1 is ready.")
    second = await github.upsert_comment(REPO, 5, "plan", "Plan v2 is ready.")
    same = await github.upsert_comment(REPO, 5, "plan", "Plan v2 is ready.")
    comments = fake_github.comments_on(REPO, 5)
    assert len(comments) == 1 and first["id"] == second["id"] == same["id"]
    assert comments[0]["body"] == "Plan v2 is ready.\n\n<!-- fixfleet:plan -->"
    assert len(fake_github.calls_to(r"/issues/comments/\d+$", "PATCH")) == 1  # unchanged text: no write

    await github.upsert_comment(REPO, 5, "evidence", "RED/GREEN")
    assert len(fake_github.comments_on(REPO, 5)) == 2
    with pytest.raises(ValueError):
        await github.upsert_comment(REPO, 5, "bad -- marker", "x")


async def test_github_upsert_comment_finds_its_comment_on_a_later_page(github: GitHubClient, fake_github: FakeGitHub) -> None:
    for n in range(130):
        await github.comment(REPO, 8, f"chatter {n}")
    await github.upsert_comment(REPO, 8, "plan", "v1")
    for n in range(20):
        await github.comment(REPO, 8, f"more {n}")
    await github.upsert_comment(REPO, 8, "plan", "v2")
    assert len(fake_github.comments_on(REPO, 8)) == 151
    assert [c["body"] for c in fake_github.comments_on(REPO, 8) if "fixfleet:plan" in c["body"]] == ["v2\n\n<!-- fixfleet:plan -->"]
    assert len(fake_github.calls_to(r"/issues/8/comments$", "GET")) >= 2 + 2  # two pages, twice


async def test_retry_after_429_then_success(fake_github: FakeGitHub) -> None:
    client = GitHubClient(GITHUB_TOKEN, api_url=fake_github.url, attempts=3, backoff_s=0.01, max_wait_s=5)
    try:
        fake_github.fail_next(r"^/repos/acme/api$", 429, retry_after=0.3)
        started = time.monotonic()
        assert await client.default_branch(REPO) == "main"
        assert time.monotonic() - started >= 0.3  # waited as told, not the 0.01 s backoff
        assert len(fake_github.calls_to(r"^/repos/acme/api$")) == 2
    finally:
        await client.aclose()


async def test_github_secondary_rate_limit_403_is_retried(github: GitHubClient, fake_github: FakeGitHub) -> None:
    fake_github.fail_next(r"^/repos/acme/api$", 403, retry_after=0.05,
                          body={"message": "You have exceeded a secondary rate limit."})
    assert await github.default_branch(REPO) == "main"
    assert len(fake_github.calls_to(r"^/repos/acme/api$")) == 2


async def test_github_primary_rate_limit_waits_for_the_reset(fake_github: FakeGitHub) -> None:
    client = GitHubClient(GITHUB_TOKEN, api_url=fake_github.url, attempts=2, backoff_s=0.01, max_wait_s=0.05)
    try:
        fake_github.fail_next(r"^/repos/acme/api$", 403, headers={
            "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 3600)})
        assert await client.default_branch(REPO) == "main"  # waited (capped) and retried
        fake_github.fail_next(r"^/repos/acme/api$", 403, times=None, headers={"x-ratelimit-remaining": "0"})
        with pytest.raises(RateLimitedError):
            await client.default_branch(REPO)
        fake_github.clear_faults()
        fake_github.fail_next(r"^/repos/acme/api$", 403, body={"message": "Resource not accessible by integration"})
        with pytest.raises(AuthenticationError):  # a plain 403 is not retried
            await client.default_branch(REPO)
        assert len(fake_github.calls_to(r"^/repos/acme/api$")) == 2 + 2 + 1
    finally:
        await client.aclose()


async def test_unreachable_api_is_unavailable() -> None:
    client = GitHubClient(GITHUB_TOKEN, api_url="http://127.0.0.1:9", **FAST)
    try:
        with pytest.raises(UnavailableError) as caught:
            await client.default_branch(REPO)
        assert caught.value.status is None
        assert_no_secret(caught.value, GITHUB_TOKEN)
    finally:
        await client.aclose()


async def test_500_forever_raises_after_the_attempts_and_the_retries_are_said_once(
        github: GitHubClient, fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    reset_log_once()
    fake_github.fail_next(r"^/repos/acme/api$", 500, times=None)
    for _ in range(2):  # a service that is down: every call fails after its retries
        with pytest.raises(UnavailableError) as caught:
            await github.default_branch(REPO)
    assert isinstance(caught.value, IntegrationError) and caught.value.status == 500
    assert len(fake_github.calls_to(r"^/repos/acme/api$")) == 2 * FAST["attempts"]
    said = [r.getMessage() for r in caplog.records if r.name == "fixfleet.integrations.http" and r.levelno >= logging.WARNING]
    assert said == ["github answered 500; retrying in 0.0s"]  # not once a retry: 2 calls, 4 retries


async def test_429_forever_is_rate_limited_error(slack: SlackClient, fake_slack: FakeSlack) -> None:
    fake_slack.fail_next(r"chat\.postMessage", 429, retry_after=0.01, times=None, body={"ok": False, "error": "ratelimited"})
    with pytest.raises(RateLimitedError):
        await slack.post_message("C0PLANS", "hi")
    assert len(fake_slack.calls_to(r"chat\.postMessage")) == FAST["attempts"]


async def test_github_wrong_token_is_typed_and_secret_free(fake_github: FakeGitHub) -> None:
    wrong = "ghp_wrongTokenWrongToken0123456789"
    client = GitHubClient(wrong, api_url=fake_github.url, **FAST)
    try:
        with pytest.raises(AuthenticationError) as caught:
            await client.default_branch(REPO)
        assert caught.value.status == 401 and "Bad credentials" in str(caught.value)
        assert_no_secret(caught.value, wrong, GITHUB_TOKEN)
        assert wrong not in repr(client)
        # An API that echoes the credential back: the message is scrubbed.
        fake_github.fail_next(r"^/repos/", 401, body={"message": f"token {wrong} is revoked"})
        with pytest.raises(AuthenticationError) as echoed:
            await client.default_branch(REPO)
        assert "[REDACTED]" in str(echoed.value)
        assert_no_secret(echoed.value, wrong)
        assert echoed.value.__cause__ is None and echoed.value.__context__ is None
    finally:
        await client.aclose()


async def test_github_missing_repo_is_not_found(github: GitHubClient) -> None:
    with pytest.raises(NotFoundError):
        await github.default_branch("acme/nothing")
    with pytest.raises(ValueError):
        await github.default_branch("not a repo")


# --- Jira -------------------------------------------------------------------------------------


async def test_jira_get_issue(jira: JiraClient, fake_jira: FakeJira) -> None:
    issue = await jira.get_issue("OPS-7")
    assert issue["key"] == "OPS-7" and issue["fields"]["summary"] == "Division by zero in calc"
    assert (await jira.get_issue("OPS-7", fields=["status"]))["fields"].keys() == {"status"}
    with pytest.raises(NotFoundError):
        await jira.get_issue("OPS-999")
    assert fake_jira.calls[0].path == "/rest/api/3/issue/OPS-7"


async def test_jira_comment_is_adf_and_made_once(jira: JiraClient, fake_jira: FakeJira) -> None:
    text = "Plan ready: https://github.com/acme/api/pull/1\n\n- add a test\n- fix div\n\n```\npytest -q\n```"
    first = await jira.add_comment("OPS-7", text, "plan-v1")
    again = await jira.add_comment("OPS-7", "something else entirely", "plan-v1")
    assert first["id"] == again["id"] and len(fake_jira.comments("OPS-7")) == 1
    assert len(fake_jira.calls_to(r"/comment$", "POST")) == 1
    body = fake_jira.calls_to(r"/comment$", "POST")[0].body["body"]
    assert body["type"] == "doc" and body["version"] == 1
    assert [node["type"] for node in body["content"]] == ["paragraph", "bulletList", "codeBlock", "paragraph"]
    rendered = adf_to_text(body)
    assert "https://github.com/acme/api/pull/1" in rendered and "[fixfleet:plan-v1]" in rendered
    assert {"type": "link", "attrs": {"href": "https://github.com/acme/api/pull/1"}} in body["content"][0]["content"][1]["marks"]

    await jira.add_comment("OPS-7", "Done.", "done")
    assert len(fake_jira.comments("OPS-7")) == 2
    with pytest.raises(ValueError):
        await jira.add_comment("OPS-7", "   ", "empty")


async def test_jira_comment_marker_found_on_a_later_page(jira: JiraClient, fake_jira: FakeJira) -> None:
    fake_jira.comment_page_size = 2
    for n in range(5):
        await jira.add_comment("OPS-7", f"note {n}", f"note-{n}")
    await jira.add_comment("OPS-7", "note 4 again", "note-4")
    assert len(fake_jira.comments("OPS-7")) == 5


async def test_jira_fake_refuses_a_non_adf_body(jira: JiraClient) -> None:
    with pytest.raises(RejectedError, match="Atlassian Document"):
        await jira._call("POST", "/issue/OPS-7/comment", json={"body": "plain wiki text"})
    with pytest.raises(RejectedError):
        await jira._call("POST", "/issue/OPS-7/comment",
                         json={"body": {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": ""}]}]}})


def test_text_to_adf_never_makes_empty_text_nodes() -> None:
    doc = text_to_adf("\n\n```\n```\n- \n\nhttps://a.test/x\n")
    stack = list(doc["content"])
    while stack:
        node = stack.pop()
        assert node.get("type") != "text" or node["text"]
        stack.extend(node.get("content") or [])


async def test_jira_transition_by_name(jira: JiraClient, fake_jira: FakeJira) -> None:
    taken = await jira.transition("OPS-7", "start PROGRESS")  # the transition's name, any case
    assert taken is not None and taken["id"] == "21" and fake_jira.status("OPS-7") == "In Progress"
    taken = await jira.transition("OPS-7", "in review")  # or the status it leads to
    assert taken is not None and fake_jira.status("OPS-7") == "In Review"
    posts = len(fake_jira.calls_to(r"/transitions$", "POST"))
    assert await jira.transition("OPS-7", "In Review") is None  # already there: nothing posted
    assert len(fake_jira.calls_to(r"/transitions$", "POST")) == posts
    assert fake_jira.calls_to(r"/transitions$", "POST")[0].body == {"transition": {"id": "21"}}

    with pytest.raises(TransitionNotFoundError) as caught:
        await jira.transition("OPS-7", "Deploy")
    assert "Done" in caught.value.available and "Start Progress" in str(caught.value)
    assert isinstance(caught.value, IntegrationError)


async def test_jira_wrong_token_is_typed_and_secret_free(fake_jira: FakeJira) -> None:
    wrong = "wrong-jira-token-0123456789"
    client = JiraClient(fake_jira.url, JIRA_EMAIL, wrong, **FAST)
    try:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_issue("OPS-7")
        basic = base64.b64encode(f"{JIRA_EMAIL}:{wrong}".encode()).decode()
        assert_no_secret(caught.value, wrong, basic)
        assert wrong not in repr(client)
    finally:
        await client.aclose()


async def test_jira_retries_a_503(jira: JiraClient, fake_jira: FakeJira) -> None:
    fake_jira.fail_next(r"/transitions$", 503, method="POST")
    await jira.transition("OPS-7", "Done")
    assert fake_jira.status("OPS-7") == "Done" and len(fake_jira.calls_to(r"/transitions$", "POST")) == 2


async def test_jira_search_pages_by_token_and_returns_the_fields_asked(jira: JiraClient, fake_jira: FakeJira) -> None:
    fake_jira.search_page_size = 2
    for n in range(8, 13):
        fake_jira.add_issue(f"OPS-{n}", f"bug {n}", status="Done" if n == 10 else "To Do")
    fake_jira.add_issue("WEB-1", "elsewhere")
    found = await jira.search("project = OPS AND statusCategory != Done ORDER BY created DESC")
    assert [i["key"] for i in found] == ["OPS-7", "OPS-8", "OPS-9", "OPS-11", "OPS-12"]
    assert found[0]["fields"]["summary"] == "Division by zero in calc" and "description" in found[0]["fields"]
    assert len(fake_jira.calls_to("/search/jql", "POST")) == 3  # 2 + 2 + 1, following nextPageToken
    assert [i["key"] for i in await jira.search("project in (OPS, WEB)", limit=3)] == ["OPS-7", "OPS-8", "OPS-9"]
    with pytest.raises(RejectedError, match="JQL"):
        await jira.search("assignee = currentUser()")


async def test_jira_as_a_tracker_comments_once_and_moves_to_review(jira: JiraClient, fake_jira: FakeJira) -> None:
    tracker = JiraTracker(jira, {"COMPLETED": "In Review"})
    assert tracker.issue_of(TASK.model_copy(update={"external_ids": {"jira": "OPS-7"}})) == "OPS-7"
    assert tracker.issue_of(TASK) is None
    for _ in range(2):  # a retried step
        await tracker.comment("OPS-7", "fixfleet pushed a tested fix", marker="FF-1-done")
        await tracker.move("OPS-7", "COMPLETED")
        await tracker.move("OPS-7", "EXECUTING")  # not mapped: nothing
    assert [adf_to_text(c["body"]).splitlines()[0] for c in fake_jira.issue_comments["OPS-7"]] == ["fixfleet pushed a tested fix"]
    assert fake_jira.status("OPS-7") == "In Review" and len(fake_jira.calls_to(r"/transitions$", "POST")) == 1


# --- Sentry -----------------------------------------------------------------------------------


async def test_sentry_latest_event_frames(sentry: SentryClient, fake_sentry: FakeSentry) -> None:
    details = await sentry.latest_event_details("4242")
    assert details["frames"] == [
        {"filename": "app/main.py", "abs_path": "/srv/app/main.py", "function": "handler", "lineno": 12,
         "in_app": True, "context_line": "    return div(total, count)"},
        {"filename": "app/calc.py", "abs_path": "/srv/app/calc.py", "function": "div", "lineno": 2,
         "in_app": True, "context_line": "    return a / b"},
    ]
    assert details["exceptions"][0]["type"] == "ZeroDivisionError" and details["title"].startswith("ZeroDivisionError")
    assert (await sentry.latest_event_details(4242))["frames"] == details["frames"]
    assert fake_sentry.calls[-1].path == "/api/0/organizations/acme/issues/4242/events/latest/"  # as Sentry publishes it


async def test_sentry_frames_read_alike_from_a_webhook_and_the_api(sentry: SentryClient) -> None:
    """The API spells frames in camelCase, the webhook in snake_case: the planner reads one shape."""
    alert = {"action": "triggered", "data": {"event": {
        "issue_id": "4242", "project_slug": "backend", "title": "ZeroDivisionError: division by zero",
        "exception": {"values": [{"type": "ZeroDivisionError", "value": "division by zero",
                                  "stacktrace": {"frames": FRAMES}}]}}}}
    parsed = parse_sentry("event_alert", alert, Settings(_env_file=None, default_repo="https://github.com/acme/api.git"))
    assert parsed.new_task.context["frames"] == (await sentry.latest_event_details("4242"))["frames"]


async def test_sentry_message_event_has_no_frames(sentry: SentryClient, fake_sentry: FakeSentry) -> None:
    fake_sentry.add_issue("77", "Something logged", None)
    details = await sentry.latest_event_details("77")
    assert details["frames"] == [] and details["message"] == "Something logged"
    with pytest.raises(NotFoundError):
        await sentry.latest_event_details("78")


async def test_sentry_project_issues_follow_the_link_cursor(sentry: SentryClient, fake_sentry: FakeSentry) -> None:
    fake_sentry.issue_page_size = 2
    for n in range(1, 6):
        fake_sentry.add_issue(str(5000 + n), f"KeyError {n}", FRAMES, status="resolved" if n == 3 else "unresolved")
    fake_sentry.add_issue("6000", "elsewhere", FRAMES, project="frontend")
    found = await sentry.project_issues("acme", "backend")
    assert [i["id"] for i in found] == ["4242", "5001", "5002", "5004", "5005"]
    pages = fake_sentry.calls_to("/projects/acme/backend/issues/")
    assert len(pages) == 3 and pages[0].query["query"] == ["is:unresolved"] and "cursor" in pages[1].query
    assert [i["id"] for i in await sentry.project_issues("acme", "backend", query="is:resolved")] == ["5003"]
    with pytest.raises(NotFoundError):
        await sentry.project_issues("other-org", "backend")


async def test_sentry_wrong_token(fake_sentry: FakeSentry) -> None:
    client = SentryClient("sntrys_wrong_0123456789", f"{fake_sentry.url}/api/0", "acme", **FAST)
    try:
        with pytest.raises(AuthenticationError) as caught:
            await client.latest_event_details("4242")
        assert_no_secret(caught.value, "sntrys_wrong_0123456789")
    finally:
        await client.aclose()


# --- Slack ------------------------------------------------------------------------------------


async def test_slack_post_plan_with_buttons(slack: SlackClient, fake_slack: FakeSlack) -> None:
    ts = await slack.post_plan("C0PLANS", "FF-12", 2, "Divide <safely> & soundly", "Guard b == 0.",
                               "https://github.com/acme/api/pull/1")
    message = fake_slack.message("C0PLANS", ts)
    assert message is not None and "FF-12" in message["text"]
    section, actions = message["blocks"]
    assert section["type"] == "section" and "&lt;safely&gt; &amp;" in section["text"]["text"]
    assert "<https://github.com/acme/api/pull/1|Pull request>" in section["text"]["text"]
    approve, reject = actions["elements"]
    assert (approve["action_id"], approve["style"], approve["value"]) == ("approve", "primary", slack_action_value("FF-12", 2))
    assert (reject["action_id"], reject["value"]) == ("reject", "FF-12:v2")
    call = fake_slack.calls_to(r"chat\.postMessage")[-1]
    assert call.headers["authorization"] == f"Bearer {SLACK_TOKEN}"

    # The ingress reads a click on that button back to the task and plan version.
    click = {"type": "block_actions", "user": {"id": "U1", "username": "ada"}, "response_url": fake_slack.response_url(),
             "actions": [{"action_id": approve["action_id"], "value": approve["value"]}]}
    action = parse_slack_interaction(click)
    assert (action.action, action.task_key, action.plan_version) == ("approve", "FF-12", 2)


async def test_slack_long_summary_fits_the_block_limit(slack: SlackClient, fake_slack: FakeSlack) -> None:
    ts = await slack.post_plan("C0PLANS", "FF-1", 1, "t", "x" * 10_000, None)
    assert len(fake_slack.message("C0PLANS", ts)["blocks"][0]["text"]["text"]) <= 3000


async def test_slack_update_replaces_the_buttons(slack: SlackClient, fake_slack: FakeSlack) -> None:
    ts = await slack.post_plan("C0PLANS", "FF-12", 1, "title", "summary", None)
    await slack.update("C0PLANS", ts, "FF-12 approved by ada")
    message = fake_slack.message("C0PLANS", ts)
    assert message["text"] == "FF-12 approved by ada" and message["blocks"] == [] and message["edits"] == 1
    done = [{"type": "section", "text": {"type": "mrkdwn", "text": "*FF-12* completed"}}]
    await slack.update("C0PLANS", ts, "FF-12 completed", blocks=done)
    assert fake_slack.message("C0PLANS", ts)["blocks"] == done
    with pytest.raises(SlackNotFoundError):
        await slack.update("C0PLANS", "1.2", "nothing there")


async def test_slack_ok_false_is_typed(slack: SlackClient, fake_slack: FakeSlack) -> None:
    with pytest.raises(SlackError) as caught:
        await slack.post_message("C0NOPE", "hi")
    assert caught.value.error == "channel_not_found" and caught.value.status == 200
    with pytest.raises(SlackError) as bad_blocks:
        await slack.post_message("C0PLANS", "hi", blocks=[{"type": "section"}])
    assert bad_blocks.value.error == "invalid_blocks"


async def test_slack_wrong_token_is_auth_error(fake_slack: FakeSlack) -> None:
    wrong = "xoxb-9999-wrong-token"
    client = SlackClient(wrong, fake_slack.api_url, **FAST)
    try:
        with pytest.raises(SlackAuthError) as caught:
            await client.post_plan("C0PLANS", "FF-1", 1, "t", "s", None)
        assert isinstance(caught.value, AuthenticationError) and caught.value.error == "invalid_auth"
        assert_no_secret(caught.value, wrong)
    finally:
        await client.aclose()


async def test_slack_ratelimited_429_honours_retry_after(slack: SlackClient, fake_slack: FakeSlack) -> None:
    fake_slack.fail_next(r"chat\.postMessage", 429, retry_after=0.2, body={"ok": False, "error": "ratelimited"})
    started = time.monotonic()
    ts = await slack.post_plan("C0PLANS", "FF-4", 1, "t", "s", None)
    assert time.monotonic() - started >= 0.2
    assert fake_slack.message("C0PLANS", ts) is not None
    assert len(fake_slack.calls_to(r"chat\.postMessage")) == 2 and len(fake_slack.messages) == 1


async def test_slack_as_the_notifier_keeps_the_plan_message_and_answers_in_threads(slack: SlackClient,
                                                                                    fake_slack: FakeSlack) -> None:
    notifier = SlackNotifier(slack, "C0PLANS")
    kept = await notifier.plan_ready(TASK, 2, "Guard b == 0.", "https://github.com/acme/api/pull/1")
    task = TASK.model_copy(update={"context": kept})
    message = fake_slack.message("C0PLANS", kept["slack_ts"])
    assert message is not None and message["blocks"][1]["elements"][0]["value"] == "FF-1:v2"
    await notifier.task_changed(task, "FF-1 fixed and tested")
    await notifier.task_reply(task, "the planner's answer " + "x" * 5000)
    assert fake_slack.message("C0PLANS", kept["slack_ts"])["text"] == "FF-1 fixed and tested"
    reply = fake_slack.messages[-1]
    assert reply["thread_ts"] == kept["slack_ts"] and len(reply["text"]) == 3900
    fake_slack.channels.add("C0OTHER")
    await notifier.answer(ChatThread(channel="C0OTHER", thread="171.1"), "FF-1 is now APPROVED")
    assert (fake_slack.messages[-1]["channel"], fake_slack.messages[-1]["thread_ts"]) == ("C0OTHER", "171.1")

    calls = len(fake_slack.calls)
    quiet = SlackNotifier(slack, None)  # no FIXFLEET_SLACK_CHANNEL: plans are not posted
    assert await quiet.plan_ready(TASK, 1, "s", None) == {}
    await quiet.task_changed(task, "x")
    await quiet.task_reply(task, "x")
    await notifier.task_changed(TASK, "no plan message: nothing to change")
    assert len(fake_slack.calls) == calls


# --- the one factory: fixfleet/providers.py ------------------------------------------------------

ENV_NAMES = ["GITHUB_TOKEN", "JIRA_BASE_URL", "JIRA_EMAIL", "JIRA_API_TOKEN", "SENTRY_AUTH_TOKEN", "SLACK_BOT_TOKEN"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    reset_skip_log()
    yield
    reset_skip_log()


def bare(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


async def test_unconfigured_services_are_skipped_and_said_once(clean_env: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fixfleet.providers")
    found = connect(bare(), Redactor())
    assert (found.github, found.jira, found.sentry, found.slack, found.notifier) == (None, None, None, None, None)
    assert found.configured == [] and found.trackers == []
    assert isinstance(found.forges.for_repo("https://github.com/acme/api.git"), PlainGitRemote)  # no token: plain git
    messages = [r.getMessage() for r in caplog.records]
    assert "jira not configured (JIRA_BASE_URL, JIRA_EMAIL, JIRA_API_TOKEN): skipped" in messages
    assert "slack not configured (SLACK_BOT_TOKEN): skipped" in messages
    assert len(messages) == 4
    connect(bare(), Redactor())
    assert len(caplog.records) == 4  # said once
    await found.aclose()


async def test_configured_services_are_built_with_the_one_redactor(clean_env: None, caplog: pytest.LogCaptureFixture,
                                                                   fake_jira: FakeJira, fake_slack: FakeSlack) -> None:
    caplog.set_level(logging.INFO, logger="fixfleet.providers")
    settings = bare(github_token="ghp_x123456", jira_base_url=fake_jira.url, jira_email=JIRA_EMAIL,
                    jira_api_token=JIRA_TOKEN, slack_bot_token=SLACK_TOKEN, slack_api_url=fake_slack.api_url,
                    slack_channel="C0PLANS")
    redactor = Redactor(["hunter2-the-database-password"])
    found = connect(settings, redactor, **FAST)
    try:
        assert isinstance(found.github, GitHubClient) and isinstance(found.jira, JiraClient)
        assert isinstance(found.slack, SlackClient) and found.sentry is None
        assert found.configured == ["github", "jira", "slack"]
        assert all(client.redactor is redactor for client in (found.github, found.jira, found.slack))
        assert isinstance(found.forges.for_repo("https://github.com/acme/api.git"), GitHubForge)
        assert [type(t) for t in found.trackers] == [JiraTracker] and isinstance(found.notifier, SlackNotifier)
        await found.notifier.answer(ChatThread(channel="C0PLANS"), "the password is hunter2-the-database-password")
        assert fake_slack.messages[-1]["text"] == "the password is [REDACTED]"  # what leaves passes the redactor
        assert [r.getMessage() for r in caplog.records] == ["sentry not configured (SENTRY_AUTH_TOKEN): skipped"]
        assert not any(secret in r.getMessage() for r in caplog.records for secret in (JIRA_TOKEN, "ghp_x123456"))
    finally:
        await found.aclose()


async def test_a_partial_config_is_named_with_what_it_lacks(clean_env: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fixfleet.providers")
    found = connect(bare(jira_base_url="https://acme.atlassian.net", jira_email="a@b.c"), Redactor())
    assert found.jira is None and found.trackers == []
    jira_lines = [r for r in caplog.records if r.getMessage().startswith("jira")]
    assert jira_lines[0].levelno == logging.WARNING and "missing JIRA_API_TOKEN" in jira_lines[0].getMessage()
    await found.aclose()
