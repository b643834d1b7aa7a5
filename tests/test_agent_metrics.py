"""The seed's metric contract on the ingress's /metrics: the five ai_agent_* names with the seed's
label values (agent planning|executor, status success|failed, queue_name planning_queue|
execution_queue), read from the audit trail and the queues, the same from every replica."""

from __future__ import annotations

from pathlib import Path

import httpx
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.models import NewTask, Source, Task, TaskStatus
from fixfleet.services import make_queues
from fixfleet.store import Store
from tests.fakes.github import FakeGitHub
from tests.ingress_server import running_ingress
from tests.ingress_world import GITHUB_TOKEN, REPO, configured

S = TaskStatus


async def moved(store: Store, title: str, *steps: S | tuple[S, str, dict]) -> Task:
    """A new task moved through `steps`: a state, or (state, reason, data) for a failure."""
    task, _ = await store.create_task(NewTask(source=Source.GITHUB, repo=REPO, title=title))
    for step in steps:
        target, reason, data = step if isinstance(step, tuple) else (step, "", {})
        task = await store.transition(task.id, target, actor="test", reason=reason, data=data)
    return task


async def drive(store: Store) -> None:
    """Four tasks: one all the way, one whose planning times out after a takeover, one whose
    execution is retried after a failed verification and then fails setting up, one paused."""
    done = await moved(store, "done", S.PLANNING, S.AWAITING_APPROVAL, S.APPROVED, S.EXECUTING, S.COMPLETED)
    await moved(store, "plan timed out", S.PLANNING, S.PLANNING,
                (S.FAILED, "failed on attempt 2, not retried: planner session ended timeout: no plan submitted",
                 {"error_type": "SessionFailedForGood", "permanent": True}))
    setup = await moved(store, "setup broke", S.PLANNING, S.AWAITING_APPROVAL, S.APPROVED, S.EXECUTING)
    await store.record_event(setup.id, actor="test", reason="attempt 1 failed; retry in 5s",
                             data={"error": "EvidenceError: RED check failed: no test fails on the base code"})
    await store.transition(setup.id, S.FAILED, actor="test",
                           reason="failed after 2 attempts: SetupFailed: setting up the repository failed (exit 1)")
    await moved(store, "paused", S.PLANNING, S.PAUSED)
    # The finished plan took 100 s: its entry into PLANNING moved back in time.
    await store.pool.execute("UPDATE task_events SET created_at = created_at - interval '100 seconds'"
                             " WHERE task_id = $1 AND to_status = 'PLANNING'", done.id)
    await store.pool.execute("DELETE FROM outbox")  # the queues hold only what the test puts there


async def test_the_seeds_agent_metrics_are_on_the_ingress(settings: Settings, store: Store, redis: Redis,
                                                          tmp_path: Path) -> None:
    await drive(store)
    queues = make_queues(redis, settings)
    for task_id in (1001, 1002):
        await queues["planning"].enqueue(task_id)
    await queues["execution"].enqueue(1003)
    with FakeGitHub(GITHUB_TOKEN) as github, running_ingress(configured(settings, github, tmp_path)) as api:
        with running_ingress(configured(settings, github, tmp_path)) as other:  # a second replica
            first, second = httpx.get(f"{api}/metrics").text, httpx.get(f"{other}/metrics").text
    for line in (
        'ai_agent_tasks_started_total{agent="planning"} 4.0',  # the takeover continues a step
        'ai_agent_tasks_started_total{agent="executor"} 2.0',
        'ai_agent_tasks_completed_total{agent="planning",status="success"} 2.0',
        'ai_agent_tasks_completed_total{agent="planning",status="failed"} 1.0',  # the pause is not scored
        'ai_agent_tasks_completed_total{agent="executor",status="success"} 1.0',
        'ai_agent_tasks_completed_total{agent="executor",status="failed"} 1.0',
        'ai_agent_task_duration_seconds_count{agent="planning",status="success"} 2.0',
        'ai_agent_task_duration_seconds_bucket{agent="planning",le="60",status="success"} 1.0',
        'ai_agent_task_duration_seconds_bucket{agent="planning",le="120",status="success"} 2.0',
        'ai_agent_task_duration_seconds_count{agent="executor",status="failed"} 1.0',
        'ai_agent_errors_total{agent="planning",error_type="timeout"} 1.0',
        'ai_agent_errors_total{agent="executor",error_type="verification"} 1.0',  # the retried attempt
        'ai_agent_errors_total{agent="executor",error_type="setup"} 1.0',
        'ai_agent_errors_total{agent="executor",error_type="other"} 0.0',
        'ai_agent_queue_length{queue_name="planning_queue"} 2.0',
        'ai_agent_queue_length{queue_name="execution_queue"} 1.0',
    ):
        assert line in first, (line, [x for x in first.splitlines() if x.startswith(line.split("{")[0])])
    assert [x for x in first.splitlines() if x.startswith("ai_agent")] == \
        [x for x in second.splitlines() if x.startswith("ai_agent")]
