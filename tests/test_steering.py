"""Steering tasks as people do it: every command of definitions.yaml through GitHub comments, Slack,
the task API and the CLI, with the same meaning and the same scopes; and the store's guarantees
under concurrency (one open task per external thing, context merged in SQL, the version that
guards states untouched by data writes, a held task)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from actors.agent import stale_entry
from fixfleet.commands import default_commands
from fixfleet.config import Settings
from fixfleet.errors import Interrupted
from fixfleet.models import NewTask, Priority, Source, TaskStatus
from fixfleet.queue import Job
from fixfleet.store import Outcome, Store
from fixfleet.intake.signatures import sign_slack
from tests.fakes.github import FakeGitHub
from tests.ingress_server import running_ingress
from tests.ingress_world import (
    GITHUB_TOKEN,
    REPO,
    SLACK_SECRET,
    awaiting_task,
    bearer,
    comment_payload,
    configured,
    post_github,
    wait_for_comments,
)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(GITHUB_TOKEN) as fake:
        fake.grant("acme/api", "maintainer", "maintain")
        fake.grant("acme/api", "triager", "triage")
        fake.grant("acme/api", "reader", "read")
        yield fake


@pytest.fixture
def steer_settings(settings: Settings, github: FakeGitHub, tmp_path: Path) -> Settings:
    return configured(settings, github, tmp_path).model_copy(update={"slack_submitters": ["U_OPS"]})


@pytest.fixture
def api(steer_settings: Settings, store: Store, redis: Redis) -> Iterator[str]:
    with running_ingress(steer_settings) as url:
        yield url


def say(api: str, author: str, text: str) -> str:
    """A comment on the task's own issue (acme/api#7); returns the platform's answer."""
    answer = post_github(api, "issue_comment", comment_payload(author, text), os.urandom(6).hex())
    assert answer.status_code == 200, answer.text
    return answer.json()["text"] or ""


def slash(api: str, user: str, text: str) -> str:
    form = {"command": "/fixfleet", "text": text, "user_id": user, "user_name": user, "team_id": "T1",
            "channel_id": "C1", "trigger_id": os.urandom(6).hex(), "response_url": "http://127.0.0.1:9/unused"}
    body = str(httpx.QueryParams(form)).encode()
    now = int(time.time())
    answer = httpx.post(f"{api}/webhooks/slack/commands", content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(now),
        "X-Slack-Signature": sign_slack(SLACK_SECRET, body, now)})
    assert answer.status_code == 200, answer.text
    return answer.json()["text"] or ""


async def actions(store: Store, task_id: int) -> list[tuple[str | None, str, str]]:
    return [(e.to_status, e.actor, e.reason) for e in await store.events(task_id)]


# --- every command works, through every channel ---------------------------------------------


async def test_no_defined_command_is_a_stub(api: str, store: Store, github: FakeGitHub) -> None:
    """Each command of definitions.yaml, given as its example on the task's own issue by a
    maintainer, answers with something other than "not available yet"."""
    answered = {}
    for spec in default_commands():
        task = await awaiting_task(store)
        example = spec.example.replace("FF-12", task.key).replace("FF-7", task.key).replace("/fixfleet", "@agent")
        answered[spec.name] = say(api, "maintainer", example)
        await store.pool.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = $1", task.id)
    assert set(answered) == {spec.name for spec in default_commands()}
    stubs = {name: text for name, text in answered.items() if "not available" in text or not text}
    assert not stubs, stubs


async def test_steering_through_github_comments(api: str, store: Store, github: FakeGitHub) -> None:
    task = await awaiting_task(store)
    assert "PAUSED" in say(api, "maintainer", "@agent pause waiting for the freeze")
    assert (await store.get_task(task.id)).status == TaskStatus.PAUSED
    assert "approve" in say(api, "maintainer", "@agent approve").lower()  # refused: not waiting any more
    assert (await store.get_task(task.id)).status == TaskStatus.PAUSED
    say(api, "maintainer", "@agent resume")
    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL  # where it paused
    say(api, "triager", "@agent priority critical")
    assert (await store.get_task(task.id)).priority == Priority.CRITICAL
    reply = say(api, "triager", "@agent assign @octocat")
    assert "@octocat now owns" in reply
    assert (await store.get_task(task.id)).owner == "octocat"
    mention = [c for c in wait_for_comments(github, 1) if "@octocat" in c["body"]]
    assert mention and "made you the owner" in mention[0]["body"]
    say(api, "maintainer", "@agent cancel duplicate of FF-1")
    cancelled = await store.get_task(task.id)
    assert cancelled.status == TaskStatus.CANCELLED
    trail = await actions(store, task.id)
    assert (TaskStatus.PAUSED, "github:maintainer", "waiting for the freeze") in trail
    assert (None, "github:triager", "priority normal -> critical") in trail
    assert (None, "github:triager", "assigned to octocat") in trail
    assert (TaskStatus.CANCELLED, "github:maintainer", "duplicate of FF-1") in trail


async def test_scopes_are_enforced_the_same_in_every_channel(api: str, store: Store) -> None:
    task = await awaiting_task(store)
    # GitHub: a reader may look, not steer; the refusal is audited
    assert "AWAITING_APPROVAL" in say(api, "reader", f"@agent status {task.key}")
    refused = say(api, "reader", "@agent cancel")
    assert "Sorry" in refused and "triage" in refused
    # Slack: anyone may look; only submitters (and approvers) steer
    assert task.key in slash(api, "U_STRANGER", f"status {task.key}")
    assert "FIXFLEET_SLACK_SUBMITTERS" in slash(api, "U_STRANGER", f"pause {task.key}")
    # the API: the token's scopes
    assert httpx.post(f"{api}/tasks/{task.key}/pause", json={}, headers=bearer("tok-read")).status_code == 403
    generic = httpx.post(f"{api}/commands", json={"text": f"pause {task.key}"}, headers=bearer("tok-read"))
    assert generic.status_code == 403 and "submit" in generic.json()["detail"]
    assert (await store.get_task(task.id)).status == TaskStatus.AWAITING_APPROVAL
    refusals = [a for a in await actions(store, task.id) if "refused" in a[2]]
    assert [actor for _, actor, _ in refusals] == ["github:reader", "slack:U_STRANGER", "api:reader"]
    assert refusals[0][2] == ("cancel refused: @reader has read permission on acme/api; submit needs admin or "
                              "maintain or triage or write")
    # ... and those allowed do it
    assert "PAUSED" in slash(api, "U_OPS", f"pause {task.key}")
    resumed = httpx.post(f"{api}/tasks/{task.key}/resume", headers=bearer("tok-submit"))
    assert resumed.status_code == 200 and resumed.json()["status"] == "AWAITING_APPROVAL"


async def test_the_api_runs_every_command_and_answers_409_when_the_state_forbids(api: str, store: Store) -> None:
    task = await awaiting_task(store)
    await store.update_fields(task.id, context={"diff": "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n",
                                                "evidence": {"red": {"exit_code": 1}, "green": {"exit_code": 0},
                                                             "suite": {"exit_code": 0}}})
    diff = httpx.get(f"{api}/tasks/{task.key}/diff", headers=bearer("tok-read")).json()
    assert "+b" in diff["text"] and diff["task"]["key"] == task.key
    evidence = httpx.get(f"{api}/tasks/{task.key}/evidence", headers=bearer("tok-read")).json()
    assert "RED: exit 1" in evidence["text"] and "GREEN: exit 0" in evidence["text"]
    bumped = httpx.post(f"{api}/tasks/{task.key}/priority", json={"level": "high"}, headers=bearer("tok-submit"))
    assert bumped.status_code == 200 and bumped.json()["priority"] == "high"
    owned = httpx.post(f"{api}/tasks/{task.key}/assign", json={"user": "me"}, headers=bearer("tok-submit"))
    assert owned.json()["owner"] == "api:ci"
    assert httpx.post(f"{api}/tasks/{task.key}/assign", json={"user": "bad name!"},
                      headers=bearer("tok-submit")).status_code == 422
    retry = httpx.post(f"{api}/tasks/{task.key}/retry", headers=bearer("tok-submit"))
    assert retry.status_code == 409 and "AWAITING_APPROVAL" in retry.json()["detail"]
    rerun = httpx.post(f"{api}/tasks/{task.key}/rerun-tests", headers=bearer("tok-submit"))
    assert rerun.status_code == 403 and "no pushed branch" in rerun.json()["detail"]
    logs = httpx.post(f"{api}/commands", json={"text": f"logs {task.key}"}, headers=bearer("tok-read")).json()
    assert logs["text"] == f"{task.key} has no agent session yet (AWAITING_APPROVAL)."
    unknown = httpx.post(f"{api}/commands", json={"text": "frobnicate"}, headers=bearer("tok-read"))
    assert unknown.status_code == 422


async def test_queue_lists_waiting_and_running_tasks_by_priority(api: str, store: Store) -> None:
    low, _ = await store.create_task(NewTask(repo=REPO, title="low one", priority=Priority.LOW))
    critical, _ = await store.create_task(NewTask(repo=REPO, title="critical one", priority=Priority.CRITICAL))
    done, _ = await store.create_task(NewTask(repo=REPO, title="cancelled one"))
    await store.transition(done.id, TaskStatus.CANCELLED, actor="t")
    text = httpx.get(f"{api}/queue", headers=bearer("tok-read")).json()["text"]
    assert text.index(critical.key) < text.index(low.key) and done.key not in text


async def test_rerun_tests_queues_a_side_job_and_leaves_the_state(store: Store, queues: dict) -> None:
    from fixfleet.approvals import Approvals, Principal
    from fixfleet.commands.handlers import Commands
    from fixfleet.outbox import OutboxRelay

    task = await awaiting_task(store)
    await store.update_fields(task.id, branch="fixfleet/FF-1")
    commands = Commands(store, Approvals(store, Settings(database_url="x", redis_url="y")))
    result = await commands.run(Principal(kind="cli", name="op"), "rerun-tests", task_ref=task.key)
    assert result.task.status == TaskStatus.AWAITING_APPROVAL
    await OutboxRelay(store, queues).drain()
    job = await queues["execution"].dequeue("test", block_s=0)
    assert job.task_id == task.id and job.message.action == "rerun-tests"


async def test_a_question_goes_to_the_planner_and_takes_the_submit_scope(api: str, store: Store,
                                                                        queues: dict) -> None:
    task = await awaiting_task(store)
    question = "why not fix the caller instead?"
    # anyone on the thread may read the plan; a question spends model time on the repository
    refused = say(api, "reader", f"@agent explain {question}")
    assert "Sorry" in refused and "triage" in refused
    assert "explain with a question refused" in (await store.events(task.id))[-1].reason

    reply = say(api, "triager", f"@agent explain {question}")
    assert f"Your question: _{question}_" in reply and "posted on the pull request" in reply
    asked = await store.get_task(task.id)
    assert asked.status == TaskStatus.AWAITING_APPROVAL and asked.version == task.version  # a look, not a step
    assert "answer_asked_at" in asked.context
    assert (await store.events(task.id))[-1].data == {"question": question}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = {("planning", task_id, action) for task_id, action in await queues["planning"].entries()}
        if ("planning", task.id, "explain") in entries | await store.outbox_entries():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("no explain job for the planner")


async def test_a_rerun_lost_with_redis_comes_back_until_it_is_answered(store: Store, queues: dict) -> None:
    from fixfleet.approvals import Approvals, Principal
    from fixfleet.commands.handlers import Commands
    from fixfleet.outbox import reconcile

    task = await awaiting_task(store)
    await store.update_fields(task.id, branch="fixfleet/FF-1")
    commands = Commands(store, Approvals(store, Settings(database_url="x", redis_url="y")))
    await commands.run(Principal(kind="cli", name="op"), "rerun-tests", task_ref=task.key)
    # relayed to a Redis that then restarted empty: the request is only in the task now
    await store.pool.execute("DELETE FROM outbox WHERE task_id = $1", task.id)

    first = await reconcile(store, queues, claimed_stale_s=600)
    assert first.requeued_side_jobs == [("rerun-tests", task.id)] and task.id not in first.requeued  # its step waits on a person
    assert (await reconcile(store, queues, claimed_stale_s=600)).requeued_side_jobs == []  # queued once
    job = await queues["execution"].dequeue("test", block_s=0)
    assert job.task_id == task.id and job.message.action == "rerun-tests"

    asked = (await store.get_task(task.id)).context["rerun_asked_at"]
    await store.update_fields(task.id, context={"rerun_answered_at": asked})  # what the executor writes
    await queues["execution"].ack(job)
    assert (await reconcile(store, queues, claimed_stale_s=600)).requeued_side_jobs == []


def test_the_cli_steers_like_the_other_channels(database_url: str, redis_url: str, tmp_path: Path,
                                               store: Store, redis: Redis) -> None:
    env = dict(os.environ) | {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FIXFLEET_HOME": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fixfleet.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    key = cli("submit", "file:///srv/repo.git", "-t", "boom").stdout.strip()
    paused = cli("pause", key, "--as", "ann", "--reason", "freeze", "--json")
    assert paused.returncode == 0 and json.loads(paused.stdout)["status"] == "PAUSED", paused.stderr
    again = cli("pause", key)
    assert again.returncode == 1 and again.stderr.startswith("error:") and "PAUSED" in again.stderr
    assert "RECEIVED again" in cli("resume", key).stdout
    assert "high priority" in cli("priority", key, "high").stdout
    assert "@octocat now owns" in cli("assign", key, "@octocat").stdout
    assert key in cli("queue").stdout
    assert "has not made a verified change yet" in " ".join(cli("diff", key).stdout.split())
    bad = cli("priority", key, "urgent")
    assert bad.returncode == 2 and "urgent" in bad.stderr


# --- the store under concurrency ------------------------------------------------------------


async def test_one_open_task_per_external_thing_even_when_deliveries_race(store: Store, database_url: str) -> None:
    """Fifty alerts about one Sentry issue at once, from separate connections and batches: one task."""
    others = [await Store.connect(database_url, migrate=False, max_size=2) for _ in range(5)]
    try:
        new = NewTask(source=Source.SENTRY, repo=REPO, title="KeyError", external_ids={"sentry_issue": "4242"})
        made = await asyncio.gather(*(s.create_or_find(new) for s in [store, *others] for _ in range(10)))
    finally:
        for other in others:
            await other.close()
    assert [outcome for _, outcome in made].count(Outcome.CREATED) == 1
    assert len({task.id for task, _ in made}) == 1
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 1
    assert await store.pool.fetchval("SELECT count(*) FROM outbox") == 1  # queued once
    # the database itself refuses a second open one, whatever the code does
    with pytest.raises(asyncpg.UniqueViolationError):
        await store.pool.execute("INSERT INTO tasks (source, repo, title, external_ids) VALUES "
                                 "('sentry', $1, 'x', '{\"sentry_issue\": \"4242\"}')", REPO)
    # once it ended, the next alert opens a new task; reopening the old one is then refused
    await store.transition(made[0][0].id, TaskStatus.FAILED, actor="t")
    fresh, outcome = await store.create_or_find(new)
    assert outcome is Outcome.CREATED and fresh.id != made[0][0].id
    from fixfleet.store import Refusal
    with pytest.raises(Refusal, match="another task about the same thing is open"):
        await store.retry(made[0][0].id, actor="t")


async def test_context_writes_merge_and_data_writes_leave_the_state_version(store: Store) -> None:
    task = await awaiting_task(store)
    version = task.version
    await asyncio.gather(
        store.update_fields(task.id, context={"slack_ts": "1700000000.1"}),
        *(store.attach_alert(task.id, actor="webhook", last_seen=f"2026-11-30T00:00:{n:02d}Z") for n in range(10)),
        store.add_cost(task.id, 0.5, 100), store.add_cost(task.id, 0.25, 50),
    )
    seen = await store.get_task(task.id)
    assert seen.context["slack_ts"] == "1700000000.1" and seen.context["event_count"] == 11
    assert seen.cost_usd == pytest.approx(0.75) and seen.tokens == 150
    assert seen.version == version  # data writes do not make a pending approval stale
    approved = await store.transition(task.id, TaskStatus.APPROVED, actor="lead", expected_version=version)
    assert approved.status == TaskStatus.APPROVED


async def test_a_held_task_stops_the_agent_or_makes_the_cancel_wait(store: Store) -> None:
    task = await awaiting_task(store)
    await store.transition(task.id, TaskStatus.APPROVED, actor="lead")
    claimed = await store.transition(task.id, TaskStatus.EXECUTING, actor="executor")
    order = []

    async def cancel() -> None:
        await asyncio.sleep(0.1)
        try:
            await store.transition(task.id, TaskStatus.CANCELLED, actor="op")
            order.append("cancelled")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            order.append(type(exc).__name__)

    async with store.holding(claimed) as hold:
        canceller = asyncio.create_task(cancel())
        await asyncio.sleep(0.5)  # the push would happen here: the cancel waits
        order.append("pushed")
        await hold.transition(TaskStatus.COMPLETED, actor="executor", context={"commits": ["abc"]})
    await canceller
    assert order == ["pushed", "IllegalTransition"]  # the cancel came too late, and was told so
    # the other order: cancelled first, the agent's hold refuses before anything is done
    second = await awaiting_task(store)
    await store.transition(second.id, TaskStatus.APPROVED, actor="lead")
    held = await store.transition(second.id, TaskStatus.EXECUTING, actor="executor")
    await store.transition(second.id, TaskStatus.CANCELLED, actor="op")
    with pytest.raises(Interrupted, match="CANCELLED"):
        async with store.holding(held):
            pytest.fail("a cancelled task must not be held")


@pytest.mark.parametrize(("paused_in", "resumes_to"), [
    (TaskStatus.RECEIVED, TaskStatus.RECEIVED), (TaskStatus.PLANNING, TaskStatus.RECEIVED),
    (TaskStatus.APPROVED, TaskStatus.APPROVED), (TaskStatus.EXECUTING, TaskStatus.APPROVED)])
async def test_resume_goes_back_to_waiting_for_the_step_it_paused_in(store: Store, paused_in: TaskStatus,
                                                                   resumes_to: TaskStatus) -> None:
    task, _ = await store.create_task(NewTask(repo=REPO, title="t"))
    path = {TaskStatus.RECEIVED: [], TaskStatus.PLANNING: [TaskStatus.PLANNING],
            TaskStatus.APPROVED: [TaskStatus.PLANNING, TaskStatus.AWAITING_APPROVAL, TaskStatus.APPROVED],
            TaskStatus.EXECUTING: [TaskStatus.PLANNING, TaskStatus.AWAITING_APPROVAL, TaskStatus.APPROVED,
                                   TaskStatus.EXECUTING]}[paused_in]
    for step in path:
        await store.transition(task.id, step, actor="t")
    await store.transition(task.id, TaskStatus.PAUSED, actor="op")
    resumed = await store.resume(task.id, actor="op")
    assert resumed.status == resumes_to
    queued = await store.pool.fetch("SELECT queue, version FROM outbox WHERE task_id = $1 ORDER BY id", task.id)
    assert queued[-1]["version"] == resumed.version  # the new entry; older ones are stale


def test_stale_entries_do_not_start_work() -> None:
    from fixfleet.models import QueuedTask, Task

    def job(priority: str = "normal", version: int | None = 3, deliveries: int = 1, attempt: int = 1) -> Job:
        message = QueuedTask(task_id=1, queue="planning", priority=priority, version=version, attempt=attempt,
                             enqueued_at=0)
        return Job(message=message, stream="s", entry_id="1-0", consumer="c", deliveries=deliveries)

    def task(status: str, priority: str = "normal", version: int = 3) -> Task:
        return Task.model_validate({
            "id": 1, "key": "FF-1", "source": "cli", "external_ids": {}, "repo": REPO, "title": "t", "body": "",
            "priority": priority, "status": status, "version": version, "attempts": 0, "plan": None,
            "plan_version": 0, "branch": None, "pr_url": None, "cost_usd": 0, "tokens": 0, "context": {},
            "created_at": "2026-11-30T00:00:00Z", "updated_at": "2026-11-30T00:00:00Z"})

    assert stale_entry(job(), task("RECEIVED")) is None
    assert "priority high" in stale_entry(job(), task("RECEIVED", priority="high"))  # re-queued at high
    assert "version" in stale_entry(job(version=2), task("RECEIVED"))  # resumed or retried since
    assert "another agent holds" in stale_entry(job(version=3), task("PLANNING", version=4))
    assert stale_entry(job(version=3, deliveries=2), task("PLANNING", version=4)) is None  # its lease ran out
    assert stale_entry(job(version=3, attempt=2), task("PLANNING", version=4)) is None  # a retry
    assert stale_entry(job(version=None), task("PLANNING", version=4)) is None  # an entry from before versions
