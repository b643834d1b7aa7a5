"""Batch backlogs (fixfleet.backlog) as an operator uses them: real export files, the Jira and
Sentry stand-ins, the real ingress under uvicorn with the real store; no agents run, so the
tests move tasks through their states with the store, as agents would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from fixfleet.backlog import BacklogFormatError, TaskApi, load_jira, load_sentry, parse_csv, preview, read_csv
from fixfleet.config import Settings
from fixfleet.integrations.jira import JiraClient
from fixfleet.integrations.sentry import SentryClient
from fixfleet.models import NewTask, Priority, Source, Task
from fixfleet.store import Store
from tests.fakes.jira import FakeJira
from tests.fakes.sentry import FakeSentry
from tests.ingress_server import running_ingress

DATA = Path(__file__).parent / "data" / "backlog"
API_REPO = "https://github.com/acme/api.git"
WEB_REPO = "https://github.com/acme/web.git"
MAPPED = Settings(sentry_project_repos={"backend": API_REPO}, jira_project_repos={"OPS": API_REPO})
JIRA_EMAIL, JIRA_TOKEN, SENTRY_TOKEN = "bot@acme.test", "jira-api-token-0123", "sntrys_backlogTestToken0123"
TOKENS = [
    {"name": "reader", "token": "tok-read", "scopes": ["read"]},
    {"name": "ci", "token": "tok-submit", "scopes": ["read", "submit"]},
    {"name": "lead", "token": "tok-approve", "scopes": ["read", "submit", "approve"]},
]

# --- reading exports ---------------------------------------------------------------------------


def test_sentry_discover_export_becomes_items_with_counts_and_repositories() -> None:
    items = read_csv(DATA / "sentry_discover.csv", repos={"web": WEB_REPO}, settings=MAPPED)
    first = items[0]
    assert (first.source, first.external_id, first.title, first.project) == \
        ("sentry", "4242", "ZeroDivisionError: division by zero", "backend")
    assert (first.count, first.users, first.priority, first.line) == (1520, 87, Priority.HIGH, 2)
    assert first.external_ids == {"sentry_issue": "4242"}
    by_id = {i.external_id: i for i in items}
    assert by_id["4250"].priority == Priority.CRITICAL  # level fatal
    assert by_id["4260"].priority == Priority.NORMAL  # level warning
    assert by_id["5001"].repository == WEB_REPO  # the explicit mapping
    assert by_id["6001"].repository is None  # project "mobile" maps nowhere
    assert [i.line for i in items if i.external_id == "4242"] == [2, 5]  # the file repeats it; read as it is


def test_jira_export_reads_repeated_columns_multiline_descriptions_and_sentry_links() -> None:
    items = read_csv(DATA / "jira_all_fields.csv", settings=MAPPED)
    ops12 = items[0]
    assert (ops12.source, ops12.external_id, ops12.project, ops12.repository, ops12.priority) == \
        ("jira", "OPS-12", "OPS", API_REPO, Priority.HIGH)
    assert ops12.title == "Checkout total is wrong when a coupon, and tax, apply"
    assert "Steps: add item, apply COUPON10." in ops12.body and "Labels: checkout, fixfleet" in ops12.body
    # The description links one Sentry issue: a later alert for it finds this ticket's task.
    assert ops12.external_ids == {"jira": "OPS-12", "sentry_issue": "4242"}
    by_key = {i.external_id: i for i in items}
    assert by_key["OPS-13"].priority == Priority.CRITICAL and by_key["OPS-9"].resolved
    assert by_key["WEB-3"].repository is None and not by_key["WEB-3"].resolved


@pytest.mark.parametrize(("text", "said"), [
    ("name,size\nx,1\n", ["neither a Sentry nor a Jira CSV export", "Summary and Issue key", "found: name, size"]),
    ("Issue key,Status\nOPS-1,To Do\n", ["Jira CSV export but lacks the column(s) summary", "found: Issue key, Status"]),
    ("issue,title,project\nBACKEND-1,boom,backend\n", ["only by their short id", "add the issue.id column",
                                                       "found: issue, title, project"]),
    ("issue.id,title,count\n12,boom,3\n", ["Sentry CSV export but lacks the column(s) project"]),
    ("issue.id,title,project\n12,boom,backend\nBACKEND-4,bad,backend\n", ["line 3: no numeric issue id (BACKEND-4)"]),
    ("Summary,Issue key\nboom,ops-1\n", ["line 2: 'ops-1' is not a Jira issue key"]),
    ("", ["is empty"]),
])
def test_a_file_fixfleet_cannot_read_is_refused_with_what_is_missing_and_what_was_found(text: str, said: list[str]) -> None:
    with pytest.raises(BacklogFormatError) as refused:
        parse_csv(text, name="export.csv", settings=MAPPED)
    for words in said:
        assert words in str(refused.value), str(refused.value)


def test_title_case_sentry_columns_and_permalink_ids_are_read() -> None:
    text = ("Short ID,Title,Project,Level,Count,Users,First Seen,Last Seen,Permalink\n"
            "BACKEND-4Z,boom,backend,error,\"1,520\",87,2024-05-01,2024-05-02,"
            "https://sentry.io/organizations/acme/issues/4242/\n")
    [item] = parse_csv(text, settings=MAPPED)
    assert (item.external_id, item.count, item.users, item.url) == \
        ("4242", 1520, 87, "https://sentry.io/organizations/acme/issues/4242/")
    assert "First seen: 2024-05-01" in item.body


# --- loading from the sources' APIs ------------------------------------------------------------


async def test_a_jql_search_becomes_items() -> None:
    with FakeJira(JIRA_EMAIL, JIRA_TOKEN) as fake:
        fake.search_page_size = 2  # pages, as a long search would
        fake.add_issue("OPS-21", "Refund fails", description="See https://acme.sentry.io/issues/777/", priority="Highest")
        fake.add_issue("OPS-22", "Report is slow", priority="Low")
        fake.add_issue("OPS-23", "Fixed already", status="Done")
        fake.add_issue("WEB-5", "Other project")
        site = fake.url
        client = JiraClient(site, JIRA_EMAIL, JIRA_TOKEN)
        try:
            items = await load_jira("project = OPS AND statusCategory != Done", client=client, settings=MAPPED)
        finally:
            await client.aclose()
    assert [(i.external_id, i.priority, i.repository) for i in items] == [
        ("OPS-21", Priority.CRITICAL, API_REPO), ("OPS-22", Priority.LOW, API_REPO)]
    assert items[0].linked == {"sentry_issue": "777"} and items[0].url == f"{site}/browse/OPS-21"


async def test_a_sentry_projects_unresolved_issues_become_items_with_their_stack_traces() -> None:
    frames = [{"filename": "app/calc.py", "abs_path": "/srv/app/calc.py", "function": "div", "lineno": 2,
               "in_app": True, "context_line": "    return a / b"}]
    with FakeSentry(SENTRY_TOKEN) as fake:
        fake.issue_page_size = 1
        fake.add_issue("4242", "ZeroDivisionError: division by zero", frames, count=1520, users=87)
        fake.add_issue("4243", "KeyError: 'sku'", frames, level="fatal")
        fake.add_issue("4244", "Fixed", frames, status="resolved")
        client = SentryClient(SENTRY_TOKEN, f"{fake.url}/api/0")
        try:
            items = await load_sentry("acme", "backend", client=client, settings=MAPPED)
        finally:
            await client.aclose()
    assert [(i.external_id, i.count, i.users, i.priority) for i in items] == [
        ("4242", 1520, 87, Priority.HIGH), ("4243", 3, 1, Priority.CRITICAL)]
    assert 'File "app/calc.py", line 2, in div' in items[0].body and "return a / b" in items[0].body
    assert items[0].repository == API_REPO and items[0].url.endswith("/issues/4242/")


# --- against a running fixfleet ----------------------------------------------------------------


@pytest.fixture
def platform(settings: Settings, store: Store, redis: Redis) -> Iterator[str]:
    """The real ingress (task API) on the test database, with three tokens."""
    configured = Settings.model_validate(settings.model_dump() | {
        "api_tokens": json.dumps(TOKENS), "repo_allowlist": ["https://github.com/acme/*"],
        "database_url": settings.database_url.get_secret_value(), "redis_url": settings.redis_url.get_secret_value()})
    with running_ingress(configured) as url:
        yield url


@pytest.fixture
async def lead(platform: str) -> AsyncIterator[TaskApi]:
    async with TaskApi(platform, "tok-approve", backoff_s=0.01) as api:
        yield api


async def tasks_in(store: Store) -> list[Task]:
    return sorted(await store.list_tasks(limit=500), key=lambda t: t.id)



async def test_preview_skips_duplicates_in_the_file_and_of_existing_tasks_and_says_why(
        lead: TaskApi, store: Store) -> None:
    webhook_task, _ = await store.create_task(NewTask(source=Source.SENTRY, repo=API_REPO, title="KeyError: 'sku'",
                                                      external_ids={"sentry_issue": "4250"}))
    items = read_csv(DATA / "sentry_discover.csv", repos={"web": WEB_REPO}, settings=MAPPED)
    plan = await preview(items, lead)
    rows = {(r["id"], r["action"]): r for r in plan.rows()}
    assert [(r["id"], r["action"]) for r in plan.rows()][:3] == [("5001", "submit"), ("4242", "submit"),
                                                                  ("4260", "submit")]  # priority, then events
    assert "line 2" in rows[("4242", "skip")]["reason"] and "already in this backlog" in rows[("4242", "skip")]["reason"]
    dup = rows[("4250", "skip")]
    assert dup["task"] == webhook_task.key and f"duplicate: {webhook_task.key} (sentry, RECEIVED)" in dup["reason"]
    assert "no repository: sentry project mobile" in rows[("6001", "skip")]["reason"]
    assert plan.summary() == "3 to submit, 0 to resume, 3 skipped"
    # A Jira ticket linking a Sentry issue fixfleet already works on is a duplicate too; Done ones are filtered.
    jira = {r["id"]: r for r in (await preview(read_csv(DATA / "jira_all_fields.csv", settings=MAPPED), lead)).rows()}
    assert jira["OPS-12"]["action"] == "submit" and jira["OPS-9"]["reason"] == "filtered out: Done in Jira"
    await store.create_task(NewTask(source=Source.SENTRY, repo=API_REPO, title="x", external_ids={"sentry_issue": "4242"}))
    again = {r["id"]: r for r in (await preview(read_csv(DATA / "jira_all_fields.csv", settings=MAPPED), lead)).rows()}
    assert again["OPS-12"]["action"] == "skip" and "sentry_issue 4242" in again["OPS-12"]["reason"]
    assert len(await tasks_in(store)) == 2  # previewing submits nothing
