"""An agent at work is stopped by any move of its task it did not make, however quick.

A real started agent (`AgentLoop`: its store, its watch over the task, its sessions) runs a job
whose step claims the task and then works until told otherwise; people move the task meanwhile
through the store, as the API does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from actors.agent import AgentLoop
from actors.executor import Executor
from actors.planner import Planner
from fixfleet.config import Settings
from fixfleet.errors import Interrupted
from fixfleet.models import NewTask, QueuedTask, Source, TaskStatus
from fixfleet.queue import Job
from fixfleet.store import Store

REPO = "https://github.com/acme/statskit.git"
S = TaskStatus
Starter = Callable[[type[AgentLoop]], Awaitable[Any]]


class Stepping:
    """A role's step, cut to its moves: claim the task, then (once `hand_on` is set) end the step
    with the role's own transition under the hold, as the real step ends (the plan published, the
    fix pushed), then go on working until `finish` is set (the planner's base run)."""

    claim_into: TaskStatus
    hand_on_to: TaskStatus

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.claimed, self.hand_on, self.finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handle(self, job: Job) -> None:
        task = await self.claim(await self.store.get_task(job.task_id), self.claim_into)  # type: ignore[attr-defined]
        self.claimed.set()
        await self.hand_on.wait()
        async with self.holding(task) as hold:  # type: ignore[attr-defined]
            await hold.transition(self.hand_on_to, actor=self.name, reason="step done")  # type: ignore[attr-defined]
        await self.finish.wait()


class SteppingExecutor(Stepping, Executor):
    claim_into, hand_on_to = S.EXECUTING, S.COMPLETED


class SteppingPlanner(Stepping, Planner):
    claim_into, hand_on_to = S.PLANNING, S.AWAITING_APPROVAL


@pytest.fixture
async def started(settings: Settings, store: Store, redis: Redis) -> AsyncIterator[Starter]:
    """Start an agent of a kind; its queues are empty (`redis`), so the jobs are the test's own."""
    agents: list[AgentLoop] = []

    async def start(kind: type[AgentLoop]) -> Any:
        agent = kind(f"{kind.role}-control", settings.model_copy(update={"control_poll_s": 1.0}))
        await agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        await agent.stop()


async def task_in(store: Store, *steps: TaskStatus) -> Job:
    """A new task moved through `steps`, and a queue entry for it as the relay would make."""
    task, _ = await store.create_task(NewTask(source=Source.GITHUB, repo=REPO, title="mean() of []"))
    for step in steps:
        task = await store.transition(task.id, step, actor="test")
    message = QueuedTask(task_id=task.id, queue="work", priority=task.priority, version=task.version,
                         enqueued_at=time.time())
    return Job(message=message, stream="fixfleet:test", entry_id="1-0", consumer="control")


async def test_a_pause_and_a_resume_between_two_looks_stop_the_agent(started: Starter, store: Store) -> None:
    """The task is paused and resumed within milliseconds, inside the agent's one look a second:
    its status is APPROVED again (neither EXECUTING nor PAUSED), yet the executor's work stops,
    so the resumed task's new job does not wait behind a session working for an old claim."""
    agent = await started(SteppingExecutor)
    job = await task_in(store, S.PLANNING, S.AWAITING_APPROVAL, S.APPROVED)
    handling = asyncio.create_task(agent._handle_under_control(job))
    await asyncio.wait_for(agent.claimed.wait(), 10)
    await store.transition(job.task_id, S.PAUSED, actor="api:lead", reason="release freeze")
    await store.resume(job.task_id, actor="api:lead")
    assert (await store.get_task(job.task_id)).status == S.APPROVED
    with pytest.raises(Interrupted, match="moved to APPROVED meanwhile"):
        await asyncio.wait_for(handling, 10)
    stopped = (await store.events(job.task_id))[-1]
    assert stopped.actor == agent.name and stopped.reason.startswith("stopped: ") and "APPROVED" in stopped.reason


async def test_after_its_own_move_the_agent_is_stopped_by_a_cancel_not_by_the_next_step(
        started: Starter, store: Store) -> None:
    """Once the planner published its plan (its own transition), the approval that follows is
    not a reason to stop the work it still does (the base run); a cancel is."""
    agent = await started(SteppingPlanner)
    job = await task_in(store)
    handling = asyncio.create_task(agent._handle_under_control(job))
    await asyncio.wait_for(agent.claimed.wait(), 10)
    agent.hand_on.set()
    await wait_for_status(store, job.task_id, S.AWAITING_APPROVAL)
    await store.transition(job.task_id, S.APPROVED, actor="api:lead", reason="approved")
    await asyncio.sleep(2.5)  # two looks and more
    assert not handling.done()
    await store.transition(job.task_id, S.CANCELLED, actor="api:lead", reason="wrong approach")
    with pytest.raises(Interrupted, match="was CANCELLED"):
        await asyncio.wait_for(handling, 10)


async def test_an_agent_that_makes_its_own_moves_is_not_stopped(started: Starter, store: Store) -> None:
    """Its claim and its own closing transition move the version too: neither stops it."""
    agent = await started(SteppingExecutor)
    job = await task_in(store, S.PLANNING, S.AWAITING_APPROVAL, S.APPROVED)
    handling = asyncio.create_task(agent._handle_under_control(job))
    await asyncio.wait_for(agent.claimed.wait(), 10)
    await asyncio.sleep(1.5)
    agent.hand_on.set()
    await wait_for_status(store, job.task_id, S.COMPLETED)
    await asyncio.sleep(1.5)
    agent.finish.set()
    await asyncio.wait_for(handling, 10)
    assert not [e for e in await store.events(job.task_id) if e.reason.startswith("stopped")]


async def wait_for_status(store: Store, task_id: int, status: TaskStatus) -> None:
    deadline = time.monotonic() + 10
    while (await store.get_task(task_id)).status != status:
        assert time.monotonic() < deadline, f"task {task_id} never reached {status}"
        await asyncio.sleep(0.05)
