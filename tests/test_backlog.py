"""Batch backlogs (fixfleet.backlog) as an operator uses them: real export files, the Jira and
Sentry stand-ins, the real ingress under uvicorn with the real store; no agents run, so the
tests move tasks through their states with the store, as agents would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from pydantic import SecretStr
from redis.asyncio import Redis
from typer.testing import CliRunner

from fixfleet.backlog import (Action, BacklogFormatError, Plan, RunEvent, ScopeError, SourceNotConfigured, TaskApi,
                              load_jira, load_sentry, parse_csv, preview, read_csv, submit)
from fixfleet.cli import app
from fixfleet.config import Settings
from fixfleet.integrations.jira import JiraClient
from fixfleet.models import TERMINAL, NewTask, Priority, Source, Task, TaskEvent
from fixfleet.models import TaskStatus as S
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
ACTIVE = [s for s in S if s not in TERMINAL]


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
        # No client given: one is made from the settings, as a notebook with SENTRY_AUTH_TOKEN set would.
        configured = MAPPED.model_copy(update={"sentry_auth_token": SecretStr(SENTRY_TOKEN),
                                               "sentry_api_url": f"{fake.url}/api/0"})
        items = await load_sentry("acme", "backend", settings=configured)
        with pytest.raises(SourceNotConfigured, match="set SENTRY_AUTH_TOKEN or pass client="):
            await load_sentry("acme", "backend", settings=MAPPED)
    assert [(i.external_id, i.count, i.users, i.priority) for i in items] == [
        ("4242", 1520, 87, Priority.HIGH), ("4243", 3, 1, Priority.CRITICAL)]
    assert 'File "app/calc.py", line 2, in div' in items[0].body and "return a / b" in items[0].body
    assert items[0].repository == API_REPO and items[0].url.endswith("/issues/4242/")


# --- against a running fixfleet ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ingress(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real ingress (task API) on the test database, with three tokens; one for the module."""
    configured = Settings(database_url=database_url, redis_url=redis_url, home=tmp_path_factory.mktemp("home"),
                          api_tokens=json.dumps(TOKENS), repo_allowlist=["https://github.com/acme/*"])
    with running_ingress(configured) as url:
        yield url


@pytest.fixture
def platform(ingress: str, store: Store, redis: Redis) -> str:
    """The ingress, on an empty database and Redis (the `store` and `redis` fixtures empty them)."""
    return ingress


@pytest.fixture
async def lead(platform: str) -> AsyncIterator[TaskApi]:
    async with TaskApi(platform, "tok-approve", backoff_s=0.01) as api:
        yield api


class Agents:
    """Stands in for the planner and executor: each pass moves every unfinished task one step, as
    they would (plan with a confidence, wait for approval, execute, finish with a cost)."""

    def __init__(self, store: Store, *, costs: dict[int, float] | None = None,
                 confidence: dict[str, float] | None = None, human_approves: bool = False) -> None:
        self.store, self.costs, self.confidence = store, costs or {}, confidence or {}
        self.human_approves = human_approves
        self.to_reject: set[str] = set()
        self.one_at_a_time = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(0.01)

    async def step(self) -> None:
        tasks = sorted(await self.store.list_tasks(statuses=ACTIVE, limit=500), key=lambda t: t.id)
        for task in tasks[:1] if self.one_at_a_time else tasks:
            await self.advance(task)

    async def advance(self, task: Task) -> None:
        move = lambda target, **kw: self.store.transition(task.id, target, actor="agent", **kw)  # noqa: E731
        if task.status == S.RECEIVED:
            await move(S.PLANNING)
        elif task.status == S.PLANNING:
            plan = {"root_cause": "x", "confidence": self.confidence.get(task.title, 0.5)}
            await move(S.AWAITING_APPROVAL, changes={"plan": plan, "plan_version": 1})
        elif task.status == S.AWAITING_APPROVAL and task.key in self.to_reject:
            await self.store.transition(task.id, S.REJECTED, actor="cli:alice", reason="not this one")
        elif task.status == S.AWAITING_APPROVAL and self.human_approves:
            await self.store.transition(task.id, S.APPROVED, actor="cli:alice", reason="approved")
        elif task.status == S.APPROVED:
            await move(S.EXECUTING, changes={"attempts": task.attempts + 1})
        elif task.status == S.EXECUTING:
            await move(S.COMPLETED, changes={"cost_usd": self.costs.get(task.id, 0.1), "tokens": 1000,
                                             "branch": f"fixfleet/{task.key}"})


@asynccontextmanager
async def agents_running(agents: Agents) -> AsyncIterator[Agents]:
    stop = asyncio.Event()
    working = asyncio.create_task(agents.run(stop))
    try:
        yield agents
    finally:
        stop.set()
        await working


async def tasks_in(store: Store) -> list[Task]:
    return sorted(await store.list_tasks(limit=500), key=lambda t: t.id)


def max_overlap(histories: list[list[TaskEvent]]) -> int:
    """The most tasks unfinished at one moment, from their audit trails (received -> terminal)."""
    edges = []
    for events in histories:
        edges.append((events[0].created_at, 1))
        ended = [e.created_at for e in events if e.to_status in TERMINAL]
        if ended:
            edges.append((ended[0], -1))
    running = peak = 0
    for _, change in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += change
        peak = max(peak, running)
    return peak


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


async def test_never_more_than_max_in_flight_and_in_priority_order(lead: TaskApi, store: Store) -> None:
    items = read_csv(DATA / "sentry_discover.csv", repos={"web": WEB_REPO, "mobile": WEB_REPO}, settings=MAPPED)
    plan = await preview(items, lead)
    expected = [e.item.external_id for e in plan.to_run]
    assert len(expected) == 5
    async with agents_running(Agents(store, human_approves=True)):
        result = await submit(plan, lead, max_in_flight=2, poll_s=0.02, per_task_usd=1.0)
    tasks = await tasks_in(store)
    assert [t.external_ids["sentry_issue"] for t in tasks] == expected  # one each, highest priority first
    assert all(t.status == S.COMPLETED for t in tasks) and all(t.source == "api" for t in tasks)
    assert max_overlap([await store.events(t.id) for t in tasks]) == 2  # the cap was used, never passed
    assert [r.status for r in result.results] == [S.COMPLETED] * 5 and not result.budget_exhausted
    assert result.message.startswith("5 submitted, 0 resumed, 1 skipped") and "5 COMPLETED" in result.message


async def test_submissions_stop_at_the_budget_and_the_caller_is_told(lead: TaskApi, store: Store) -> None:
    items = read_csv(DATA / "sentry_discover.csv", repos={"web": WEB_REPO, "mobile": WEB_REPO}, settings=MAPPED)
    plan = await preview(items, lead)
    agents = Agents(store, costs={1: 0.4, 2: 0.9, 3: 0.5}, human_approves=True)
    agents.one_at_a_time = True  # tasks finish in the order they came
    events: list[RunEvent] = []
    async with agents_running(agents):
        result = await submit(plan, lead, budget_usd=2.5, per_task_usd=1.0, max_in_flight=10, poll_s=0.02,
                              on_event=events.append)
    # 1 and 2 fit (0 + 1 + 1 <= 2.5); 3 waits until task 1 ends at $0.40 (0.4 + 1 + 1 <= 2.5); then
    # 1.3 + 1 + 1 and 1.8 + 0 + 1 do not fit: two items stay unsubmitted.
    assert len(await tasks_in(store)) == 3
    assert result.budget_exhausted and result.spent_usd == pytest.approx(1.8) and result.committed_usd == 0
    assert "budget $2.50 reached: spent $1.80 + committed $0.00" in result.message
    assert "2 item(s) not submitted" in result.message
    not_sent = [r for r in result.rows() if r["outcome"] == "not submitted"]
    assert len(not_sent) == 2 and all("budget" in r["reason"] for r in not_sent)
    assert events[-1].kind == "budget"
    costs = {r["id"]: r["cost_usd"] for r in result.rows() if r["outcome"] == "submitted"}
    assert sorted(costs.values()) == [0.4, 0.5, 0.9]


async def test_an_interrupted_run_resumes_without_submitting_anything_twice(lead: TaskApi, store: Store) -> None:
    items = read_csv(DATA / "sentry_discover.csv", repos={"web": WEB_REPO, "mobile": WEB_REPO}, settings=MAPPED)
    first = await preview(items, lead)
    submitted: list[str] = []

    def interrupt_after_two(event: RunEvent) -> None:
        if event.kind == "submitted":
            submitted.append(event.ref or "")
            if len(submitted) == 2:
                running.cancel()  # as Ctrl-C would, in the middle of the run

    running = asyncio.create_task(submit(first, lead, max_in_flight=4, poll_s=0.02, on_event=interrupt_after_two))
    with pytest.raises(asyncio.CancelledError):
        await running
    assert len(await tasks_in(store)) == 2

    second = await preview(items, lead)
    assert [e.action for e in second.to_run].count(Action.RESUME) == 2
    # One more was sent just before the interruption, its answer lost: the re-run's request
    # carries the same Idempotency-Key and gets that task back.
    lost = next(e for e in second.to_run if e.action == Action.SUBMIT)
    await lead.submit(lost.item)
    async with agents_running(Agents(store, human_approves=True)):
        result = await submit(second, lead, max_in_flight=4, poll_s=0.02)
    tasks = await tasks_in(store)
    assert sorted(t.external_ids["sentry_issue"] for t in tasks) == sorted(e.item.external_id for e in first.to_run)
    assert len(tasks) == len(first.to_run) == 5  # exactly one task per backlog item
    outcomes = {r["id"]: r["outcome"] for r in result.rows() if r["outcome"] != "skipped"}
    assert list(outcomes.values()).count("resumed") == 3 and outcomes[lost.item.external_id] == "resumed"
    assert all(t.status == S.COMPLETED for t in tasks)
    third = await preview(items, lead)  # and again: everything is followed, nothing sent
    assert [e.action for e in third.to_run] == [Action.RESUME] * 5
    async with TaskApi(lead.url, "tok-submit") as other:  # the first, stale plan with another token: the same
        again = await submit(first, other, poll_s=0.02)
    assert len(await tasks_in(store)) == 5 and [r["outcome"] for r in again.rows()].count("resumed") == 5


async def test_bulk_approval_approves_confident_plans_only_and_says_so_in_the_audit_trail(
        lead: TaskApi, store: Store) -> None:
    items = read_csv(DATA / "jira_all_fields.csv", settings=MAPPED)  # OPS-12, OPS-13 (OPS-9 is done)
    plan = await preview(items, lead)
    confidence = {"Checkout total is wrong when a coupon, and tax, apply": 0.90, "Export button does nothing": 0.72}
    agents = Agents(store, confidence=confidence)

    def human_rejects_the_rest(event: RunEvent) -> None:
        if event.kind == "waiting":
            agents.to_reject.add(event.task or "")

    async with agents_running(agents):
        result = await submit(plan, lead, approve_above=0.9, poll_s=0.02, on_event=human_rejects_the_rest)
    by_id = {r.external_id: r for r in result.results}
    assert by_id["OPS-12"].status == S.COMPLETED and by_id["OPS-12"].bulk_approved  # 0.90 is at the threshold
    assert by_id["OPS-12"].approved_by == "api:lead"
    assert by_id["OPS-13"].status == S.REJECTED and not by_id["OPS-13"].bulk_approved
    assert by_id["OPS-13"].failure == "not this one"
    approval = next(e for e in await store.events(by_id["OPS-12"].task) if e.to_status == S.APPROVED)
    assert (approval.actor, approval.reason) == ("api:lead", "bulk approval: confidence 0.90 ≥ 0.90")
    assert approval.data["note"] == approval.reason and approval.data["plan_version"] == 1
    assert not any(e.actor.startswith("api:") and e.to_status == S.APPROVED
                   for e in await store.events(by_id["OPS-13"].task))


async def test_bulk_approval_is_off_by_default(lead: TaskApi, store: Store) -> None:
    plan = await preview(read_csv(DATA / "jira_all_fields.csv", settings=MAPPED), lead)
    agents = Agents(store, confidence={"Export button does nothing": 0.99})
    waiting: list[str] = []

    def note(event: RunEvent) -> None:
        if event.kind == "waiting":
            waiting.append(event.task or "")
            agents.to_reject.add(event.task or "")

    async with agents_running(agents):
        result = await submit(plan, lead, poll_s=0.02, on_event=note)
    assert len(waiting) == 2 and {r.status for r in result.results} == {S.REJECTED}  # a human decided both


@pytest.mark.parametrize(("token", "options", "said"), [
    ("tok-submit", {"approve_above": 0.9}, "the token 'ci' lacks the approve scope"),
    ("tok-read", {}, "the token 'reader' lacks the submit scope"),
])
async def test_a_token_without_the_scope_is_refused_before_anything_is_submitted(
        platform: str, store: Store, token: str, options: dict, said: str) -> None:
    async with TaskApi(platform, token) as api:
        plan = await preview(read_csv(DATA / "jira_all_fields.csv", settings=MAPPED), api)
        with pytest.raises(ScopeError) as refused:
            await submit(plan, api, poll_s=0.02, **options)
    assert said in str(refused.value) and "nothing was submitted" in str(refused.value)
    assert await tasks_in(store) == []


async def test_results_carry_each_stage_from_the_audit_trail(lead: TaskApi, store: Store) -> None:
    plan = await preview(read_csv(DATA / "jira_all_fields.csv", settings=MAPPED), lead)
    async with agents_running(Agents(store, human_approves=True, costs={1: 0.25, 2: 0.5})):
        result = await submit(plan, lead, poll_s=0.02)
    for r in result.results:
        events = await store.events(r.task)
        assert r.duration_s == pytest.approx((events[-1].created_at - events[0].created_at).total_seconds(), abs=0.01)
        stages = r.queued_s + r.planning_s + r.waiting_for_approval_s + r.executing_s
        assert stages == pytest.approx(r.duration_s, abs=0.01) and r.attempts == 1
        assert r.branch == f"fixfleet/{r.task}" and r.tokens == 1000 and r.repository == API_REPO
    assert sorted(r.cost_usd for r in result.results) == [0.25, 0.5]
    table = result.table()
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table  # pandas when installed
    assert [row["outcome"] for row in rows] == ["submitted", "submitted", "skipped", "skipped", "skipped"]


def test_the_sync_facade_works_inside_a_running_event_loop(platform: str, store: Store) -> None:
    from fixfleet.backlog import sync

    api = TaskApi(platform, "tok-approve")

    async def notebook_cell() -> Plan:  # Jupyter runs cells in a loop: asyncio.run is not allowed there
        return sync.preview(read_csv(DATA / "jira_all_fields.csv", settings=MAPPED), api)

    plan = asyncio.run(notebook_cell())
    assert plan.summary() == "2 to submit, 0 to resume, 3 skipped"
    assert sync.preview([], api).entries == []  # and outside one


# --- the command ---------------------------------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The command as a user runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "fixfleet.cli", "backlog", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def invoke(args: list[str], env: dict[str, str]) -> Result:
    """The command in this process (quicker; the same code path after the process starts)."""
    return CliRunner().invoke(app, ["backlog", *args], env=env)


@pytest.fixture
def cli_env(platform: str) -> dict[str, str]:
    return {"FIXFLEET_URL": platform, "FIXFLEET_TOKEN": "tok-approve", "COLUMNS": "200",
            "FIXFLEET_SENTRY_PROJECT_REPOS": json.dumps({"backend": API_REPO})}


def tasks_seen(url: str) -> list[dict]:
    return httpx.get(f"{url}/tasks", params={"limit": 500}, headers={"Authorization": "Bearer tok-read"}).json()["items"]


def test_the_command_previews_submits_and_prints_a_table(cli_env: dict[str, str], platform: str) -> None:
    csv_file = str(DATA / "sentry_discover.csv")
    dry = invoke([csv_file, "--dry-run", "--repo", f"web={WEB_REPO}"], cli_env)
    assert dry.exit_code == 0, dry.output
    assert "4 to submit, 0 to resume, 2 skipped" in dry.output and "no repository" in dry.output
    assert tasks_seen(platform) == []
    refused = invoke([csv_file, "--approve-above", "0.9"], cli_env | {"FIXFLEET_TOKEN": "tok-submit"})
    assert refused.exit_code == 1 and "lacks the approve scope" in refused.output
    assert tasks_seen(platform) == []
    bad = invoke([csv_file, "--repo", "web"], cli_env)
    assert bad.exit_code == 1 and "PROJECT=URL" in bad.output

    clean = {k: v for k, v in os.environ.items() if not k.startswith("FIXFLEET_")}
    sent = run_cli([csv_file, "--repo", f"web={WEB_REPO}", "--no-follow", "--max-in-flight", "5", "--json"],
                   clean | cli_env)
    assert sent.returncode == 0, sent.stderr
    report = json.loads(sent.stdout)
    assert [r["outcome"] for r in report["results"]].count("submitted") == 4
    assert report["message"].startswith("4 submitted, 0 resumed, 2 skipped")
    assert len(tasks_seen(platform)) == 4
