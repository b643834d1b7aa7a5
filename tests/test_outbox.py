"""Postgres is the truth: the outbox relay publishes after commit, the reconciler rebuilds queues."""

from __future__ import annotations

import asyncio

import asyncpg
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.models import NewTask, Priority, TaskStatus
from fixfleet.outbox import RECONCILE_LOCK_ID, OutboxRelay, reconcile
from fixfleet.ports import free_port
from fixfleet.queue import Queue
from fixfleet.services import make_queues
from fixfleet.store import OUTBOX_CHANNEL, Store


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


async def test_relay_loop_wakes_on_a_commit_in_its_own_process_without_notify(
    store: Store, database_url: str, queues: dict[str, Queue]
) -> None:
    relay = OutboxRelay(store, queues, poll_s=30)  # only a wake-up can be this quick
    heard: list[str] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(OUTBOX_CHANNEL, lambda *args: heard.append(args[-1]))
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.sleep(0.2)
        task, _ = await store.create_task(NewTask(repo="file:///r", title="t"))
        job = await queues["planning"].dequeue("c", block_s=3)
        assert job is not None and job.task_id == task.id
        await asyncio.sleep(0.1)
        assert heard == []  # no NOTIFY: it would serialise every commit on a global lock
    finally:
        stop.set()
        await asyncio.wait_for(running, 3)
        await listener.close()


async def test_relay_loop_wakes_on_notify_from_another_process(
    store: Store, database_url: str, queues: dict[str, Queue]
) -> None:
    relay = OutboxRelay(store, queues, poll_s=30)  # only NOTIFY can be this quick
    other_process = await Store.connect(database_url, max_size=2)  # e.g. the CLI
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.sleep(0.2)
        task, _ = await other_process.create_task(NewTask(repo="file:///r", title="from the CLI"))
        approved = await other_process.create_task(NewTask(repo="file:///r", title="to approve"))
        first = await queues["planning"].dequeue("c", block_s=3)
        assert first is not None and first.task_id == task.id
        for status in ("PLANNING", "AWAITING_APPROVAL", "APPROVED"):
            await other_process.transition(approved[0].id, TaskStatus(status), actor="t")
        second = await queues["execution"].dequeue("c", block_s=3)
        assert second is not None and second.task_id == approved[0].id
    finally:
        stop.set()
        await asyncio.wait_for(running, 3)
        await other_process.close()


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
        planning = {task_id for task_id, _ in await queues["planning"].entries()}
        execution = {task_id for task_id, _ in await queues["execution"].entries()}
        assert planning == {tasks[t].id for t in ("received", "revising", "planning-dead-agent")}
        assert execution == {tasks["approved"].id}
        again = await reconcile(store, queues, claimed_stale_s=600)
        assert again.requeued == []  # nothing twice
    finally:
        await redis.flushall()
        await redis.aclose()


async def test_a_running_relay_refills_a_flushed_redis_by_itself(
    store: Store, embedded: EmbeddedServers, settings: Settings
) -> None:
    redis = Redis.from_url(embedded.redis_url())  # a private server: FLUSHALL touches nothing else
    queues = make_queues(redis, settings)
    relay = OutboxRelay(store, queues, poll_s=0.05, reconcile_every_s=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        task, _ = await store.create_task(NewTask(repo="file:///r", title="survives a Redis restart"))
        for _ in range(50):
            if task.id in {task_id for task_id, _ in await queues["planning"].entries()}:
                break
            await asyncio.sleep(0.05)
        await redis.flushall()
        job = await queues["planning"].dequeue("c", block_s=3)
        assert job is not None and job.task_id == task.id
    finally:
        stop.set()
        await asyncio.wait_for(running, 3)
        await redis.flushall()
        await redis.aclose()


async def test_one_reconciler_at_a_time(store: Store, queues: dict[str, Queue]) -> None:
    await store.create_task(NewTask(repo="file:///r", title="waiting"))
    async with store.try_lock(RECONCILE_LOCK_ID) as held:
        assert held
        busy = await reconcile(store, queues, claimed_stale_s=600)
    assert busy.skipped and busy.requeued == []
    done = await reconcile(store, queues, claimed_stale_s=600)
    assert not done.skipped and done.checked == 1


async def test_relay_outlives_a_redis_outage(store: Store, settings: Settings) -> None:
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    relay = OutboxRelay(store, make_queues(unreachable, settings), poll_s=0.05, reconcile_every_s=0.1)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        task, _ = await store.create_task(NewTask(repo="file:///r", title="waits for Redis"))
        await asyncio.sleep(0.5)
        assert not running.done()  # still relaying: every pass failed and was retried
        assert await store.outbox_entries() == {("planning", task.id, "work")}  # nothing lost meanwhile
    finally:
        stop.set()
        await asyncio.wait_for(running, 3)
        await unreachable.aclose()
