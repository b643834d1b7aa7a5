"""The task state machine: every edge, legal or not, through the real store."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from fixfleet.models import ALLOWED_FROM, QUEUED_IN, NewTask, TaskStatus
from fixfleet.store import IllegalTransition, StaleVersion, Store, TaskNotFound

ALL_EDGES = list(itertools.product(TaskStatus, TaskStatus))


async def task_in(store: Store, status: TaskStatus) -> int:
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title="boom"))
    await store.pool.execute("UPDATE tasks SET status = $2 WHERE id = $1", task.id, status.value)
    await store.pool.execute("DELETE FROM outbox")
    return task.id


async def snapshot(store: Store, task_id: int) -> tuple:
    row = await store.pool.fetchrow("SELECT status, version FROM tasks WHERE id = $1", task_id)
    events = await store.pool.fetchval("SELECT count(*) FROM task_events WHERE task_id = $1", task_id)
    outbox = await store.pool.fetchval("SELECT count(*) FROM outbox WHERE task_id = $1", task_id)
    return row["status"], row["version"], events, outbox


@pytest.mark.parametrize(("source", "target"), ALL_EDGES, ids=[f"{s}->{t}" for s, t in ALL_EDGES])
async def test_every_edge(store: Store, source: TaskStatus, target: TaskStatus) -> None:
    task_id = await task_in(store, source)
    status, version, events, _ = await snapshot(store, task_id)
    if source in ALLOWED_FROM[target]:
        task = await store.transition(task_id, target, actor="test", reason="edge")
        assert task.status == target and task.version == version + 1
        last = (await store.events(task_id))[-1]
        assert (last.from_status, last.to_status, last.actor) == (source, target, "test")
        queued = await store.pool.fetchval("SELECT queue FROM outbox WHERE task_id = $1", task_id)
        assert queued == QUEUED_IN.get(target)
    else:
        with pytest.raises(IllegalTransition) as refused:
            await store.transition(task_id, target, actor="test")
        assert str(source) in str(refused.value) and str(target) in str(refused.value)
        assert await snapshot(store, task_id) == (status, version, events, 0)


def test_design_edges_are_present() -> None:
    """The path of DESIGN.md walks only legal edges."""
    path = ["RECEIVED", "PLANNING", "AWAITING_APPROVAL", "REVISING", "PLANNING", "AWAITING_APPROVAL",
            "APPROVED", "EXECUTING", "COMPLETED"]
    for a, b in itertools.pairwise(path):
        assert TaskStatus(a) in ALLOWED_FROM[TaskStatus(b)], (a, b)
    for terminal in ("COMPLETED", "REJECTED", "CANCELLED"):
        assert not any(TaskStatus(terminal) in sources for sources in ALLOWED_FROM.values())


async def test_stale_version_changes_nothing(store: Store) -> None:
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title="t"))
    before = await snapshot(store, task.id)
    with pytest.raises(StaleVersion):
        await store.transition(task.id, TaskStatus.PLANNING, actor="a", expected_version=task.version + 5)
    assert await snapshot(store, task.id) == before


async def test_concurrent_claims_one_winner(store: Store) -> None:
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title="t"))
    claims = [
        store.transition(task.id, TaskStatus.PLANNING, actor=f"agent-{i}", expected_version=task.version)
        for i in range(6)
    ]
    results = await asyncio.gather(*claims, return_exceptions=True)
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, StaleVersion) for r in results if isinstance(r, Exception))
    planning_events = [e for e in await store.events(task.id) if e.to_status == TaskStatus.PLANNING]
    assert len(planning_events) == 1


async def test_unknown_task(store: Store) -> None:
    with pytest.raises(TaskNotFound):
        await store.transition("FF-999", TaskStatus.CANCELLED, actor="a")
    with pytest.raises(TaskNotFound):
        await store.get_task("not-a-key")
