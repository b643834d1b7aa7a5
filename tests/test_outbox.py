"""Postgres is the truth: the outbox relay publishes after commit, the reconciler rebuilds queues."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.models import NewTask, Priority, TaskStatus
from fixfleet.outbox import OutboxRelay, reconcile
from fixfleet.queue import Queue
from fixfleet.services import make_queues
from fixfleet.store import Store


async def test_task_reaches_queue_only_after_commit(store: Store, queues: dict[str, Queue]) -> None:
    relay = OutboxRelay(store, queues)
    async with store.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "INSERT INTO tasks (source, repo, title) VALUES ('cli', 'file:///r', 'uncommitted')"
        )
        row = await conn.fetchrow("SELECT id FROM tasks WHERE title = 'uncommitted'")
        await conn.execute("INSERT INTO outbox (task_id, queue, priority) VALUES ($1, 'planning', 'normal')", row["id"])
        assert await relay.drain() == 0  # not visible before commit
        await tx.rollback()
    assert await relay.drain() == 0 and (await queues["planning"].depth()).waiting == 0

    task, _ = await store.create_task(NewTask(repo="file:///r", title="committed", priority=Priority.HIGH))
    assert await relay.drain() == 1
    job = await queues["planning"].dequeue("c", block_s=0)
    assert job.task_id == task.id and job.message.priority == Priority.HIGH
    assert await relay.drain() == 0  # published once


async def test_relay_loop_wakes_on_notify(store: Store, queues: dict[str, Queue]) -> None:
    relay = OutboxRelay(store, queues, poll_s=30)  # only NOTIFY can be this quick
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.2)
    task, _ = await store.create_task(NewTask(repo="file:///r", title="t"))
    job = await queues["planning"].dequeue("c", block_s=3)
    stop.set()
    await asyncio.wait_for(running, 3)
    assert job is not None and job.task_id == task.id


async def test_flushall_then_reconcile_brings_every_queued_task_back(
    store: Store, embedded: EmbeddedServers, settings: Settings
) -> None:
    redis = Redis.from_url(embedded.redis_url())  # a private server: FLUSHALL touches nothing else
    queues = make_queues(redis, settings)
    try:
        relay = OutboxRelay(store, queues)
        tasks = {}
        for title in ["received", "revising", "approved", "completed", "planning-dead-agent", "planning-live"]:
            tasks[title], _ = await store.create_task(NewTask(repo="file:///r", title=title))
        for title, path in {
            "revising": ["PLANNING", "AWAITING_APPROVAL", "REVISING"],
            "approved": ["PLANNING", "AWAITING_APPROVAL", "APPROVED"],
            "completed": ["PLANNING", "AWAITING_APPROVAL", "APPROVED", "EXECUTING", "COMPLETED"],
            "planning-dead-agent": ["PLANNING"],
            "planning-live": ["PLANNING"],
        }.items():
            for status in path:
                await store.transition(tasks[title].id, TaskStatus(status), actor="t")
        await relay.drain()
        await store.pool.execute(
            "UPDATE tasks SET updated_at = now() - interval '1 hour' WHERE id = $1", tasks["planning-dead-agent"].id
        )

        await redis.flushall()
        report = await reconcile(store, queues, claimed_stale_s=600)

        expected = {tasks[t].id for t in ("received", "revising", "approved", "planning-dead-agent")}
        assert set(report.requeued) == expected
        planning = await queues["planning"].task_ids()
        execution = await queues["execution"].task_ids()
        assert planning == {tasks[t].id for t in ("received", "revising", "planning-dead-agent")}
        assert execution == {tasks["approved"].id}
        again = await reconcile(store, queues, claimed_stale_s=600)
        assert again.requeued == []  # nothing twice
    finally:
        await redis.flushall()
        await redis.aclose()
