"""Redis Streams queues: priorities, exclusive claims, leases, retries, dead letters, TTL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from redis.asyncio import Redis

from fixfleet.models import NewTask, Priority, TaskStatus
from fixfleet.queue import Job, LeaseLost, Queue
from fixfleet.store import Store
from fixfleet.worker import Worker


def make_queue(redis: Redis, **kwargs) -> Queue:
    options = {"lease_s": 1.0, "max_attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.2} | kwargs
    return Queue(redis, "planning", **options)


async def new_task(store: Store, title: str = "boom") -> int:
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title=title))
    return task.id


async def test_priority_order(redis: Redis) -> None:
    queue = make_queue(redis)
    for task_id, priority in [(1, "low"), (2, "normal"), (3, "high"), (4, "critical"), (5, "normal")]:
        await queue.enqueue(task_id, priority)
    order = [(await queue.dequeue("c", block_s=0)).task_id for _ in range(5)]
    assert order == [4, 3, 2, 5, 1]
    assert await queue.dequeue("c", block_s=0) is None


async def test_blocked_consumer_wakes_for_new_entry(redis: Redis) -> None:
    queue = make_queue(redis, lease_s=30)
    waiting = asyncio.create_task(queue.dequeue("c", block_s=5))
    await asyncio.sleep(0.2)
    await queue.enqueue(9, Priority.LOW)
    job = await asyncio.wait_for(waiting, 2)
    assert job is not None and job.task_id == 9


async def test_two_consumers_never_hold_one_entry(redis: Redis) -> None:
    queue = make_queue(redis, lease_s=30)
    await queue.enqueue_many([(i, list(Priority)[i % 4]) for i in range(200)])
    held: dict[str, list[int]] = {}

    async def consume(name: str) -> None:
        while (job := await queue.dequeue(name, block_s=0.05)) is not None:
            held.setdefault(name, []).append(job.task_id)
            await asyncio.sleep(0)
            assert await queue.ack(job)

    await asyncio.gather(*(consume(f"c{i}") for i in range(4)))
    claimed = [t for ids in held.values() for t in ids]
    assert sorted(claimed) == list(range(200))  # each entry exactly once
    assert len(held) > 1
    assert await queue.depth() == type(await queue.depth())(0, 0, 0, 0)


async def test_heartbeat_keeps_claim_and_takeover_after_lease(redis: Redis) -> None:
    queue = make_queue(redis, lease_s=0.3)
    await queue.enqueue(1)
    job = await queue.dequeue("a", block_s=0)
    for _ in range(4):  # 0.6 s of work, longer than the lease, kept alive
        await asyncio.sleep(0.15)
        await queue.heartbeat(job)
        assert await queue.dequeue("b", block_s=0) is None
    await asyncio.sleep(0.45)  # no heartbeat: the lease runs out
    taken = await queue.dequeue("b", block_s=0)
    assert taken is not None and taken.task_id == 1 and taken.deliveries == 2
    try:
        await queue.heartbeat(job)
        raise AssertionError("the old holder kept a claim it lost")
    except LeaseLost:
        pass
    assert not await queue.ack(job)  # the old holder cannot finish it
    assert await queue.ack(taken)


KILLED_CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    from redis.asyncio import Redis
    from fixfleet.queue import Queue

    async def main():
        queue = Queue(Redis.from_url(sys.argv[1]), "planning", lease_s=float(sys.argv[2]))
        job = await queue.dequeue("doomed", block_s=5)
        print(job.task_id, flush=True)
        await asyncio.sleep(3600)  # "working" until killed: never acks

    asyncio.run(main())
    """
)


async def test_killed_consumer_task_finished_once_by_another(redis: Redis, redis_url: str, store: Store) -> None:
    lease = 0.5
    queue = make_queue(redis, lease_s=lease)
    task_id = await new_task(store)
    await queue.enqueue(task_id)
    doomed = subprocess.Popen(
        [sys.executable, "-c", KILLED_CONSUMER, redis_url, str(lease)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert doomed.stdout.readline().strip() == str(task_id)
    finally:
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
    assert (await queue.depth()).pending == 1

    async def finish(job: Job) -> None:
        await store.transition(job.task_id, TaskStatus.PLANNING, actor="survivor")

    survivor = Worker(queue, store, finish, "survivor")
    deadline = time.monotonic() + 10
    while (await store.get_task(task_id)).status != TaskStatus.PLANNING and time.monotonic() < deadline:
        await survivor.run_once(block_s=0.2)
    for _ in range(3):  # nothing is left to deliver a second time
        assert await survivor.run_once(block_s=0.1) is None
    claims = [e for e in await store.events(task_id) if e.to_status == TaskStatus.PLANNING]
    assert [e.actor for e in claims] == ["survivor"]
    assert await queue.depth() == type(await queue.depth())(0, 0, 0, 0)


async def test_retry_backoff_then_dead_letter(redis: Redis, store: Store) -> None:
    queue = make_queue(redis, max_attempts=3, backoff_s=0.1)
    task_id = await new_task(store)
    await queue.enqueue(task_id)
    calls: list[float] = []

    async def broken(job: Job) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("repository unreachable")

    worker = Worker(queue, store, broken, "w")
    assert await worker.run_once(block_s=0)  # attempt 1 fails
    depth = await queue.depth()
    assert (depth.waiting, depth.pending, depth.delayed) == (0, 0, 1)
    assert await queue.dequeue("other", block_s=0) is None  # delayed: not due yet
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        await worker.run_once(block_s=0.5)
    assert len(calls) == 3
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # 0.1 s then 0.2 s: exponential, not a busy loop
    task = await store.get_task(task_id)
    assert task.status == TaskStatus.FAILED
    failure = (await store.events(task_id))[-1]
    assert "repository unreachable" in failure.reason and "3 attempts" in failure.reason
    dead = await redis.xrevrange(queue.dead_key)  # the dead-letter stream: why, for whoever looks
    assert len(dead) == 1 and b"repository unreachable" in dead[0][1][b"reason"]
    assert (await queue.depth()).dead == 1


async def test_expired_task_is_not_run(redis: Redis, store: Store) -> None:
    queue = make_queue(redis, ttl_s=0.05)
    task_id = await new_task(store)
    await queue.enqueue(task_id)
    await asyncio.sleep(0.1)
    ran: list[int] = []

    async def handler(job: Job) -> None:
        ran.append(job.task_id)

    assert await Worker(queue, store, handler, "w").run_once(block_s=0)
    assert ran == []
    task = await store.get_task(task_id)
    assert task.status == TaskStatus.FAILED
    assert "expired" in (await store.events(task_id))[-1].reason
    assert await queue.depth() == type(await queue.depth())(0, 0, 0, 0)


async def test_depth_counts(redis: Redis) -> None:
    queue = make_queue(redis, backoff_s=60)
    await queue.enqueue_many([(1, "normal"), (2, "high"), (3, "low")])
    claimed = await queue.dequeue("c", block_s=0)
    retried = await queue.dequeue("c", block_s=0)
    await queue.retry(retried, "flaky")
    depth = await queue.depth()
    assert (depth.waiting, depth.pending, depth.delayed, depth.dead) == (1, 1, 1, 0)
    await queue.ack(claimed)
    assert (await queue.depth()).pending == 0


async def test_unknown_queue_name_is_refused(redis: Redis) -> None:
    try:
        Queue(redis, "plannnig")
    except ValueError as exc:
        assert "planning" in str(exc)
    else:
        raise AssertionError("a typo in a queue name must not create a new queue")


async def test_a_taken_over_job_is_not_acked_by_its_old_holder(redis: Redis) -> None:
    queue = make_queue(redis, lease_s=0.2)
    await queue.enqueue(1)
    stale = await queue.dequeue("a", block_s=0)
    await asyncio.sleep(0.3)  # a works past its lease without a heartbeat
    taken = await queue.dequeue("b", block_s=0)
    assert taken is not None and taken.task_id == 1
    assert not await queue.ack(stale)  # its ack is refused...
    assert (await queue.depth()).pending == 1  # ...and b still holds the entry
    assert await queue.ack(taken)


async def test_claims_go_on_after_script_flush_and_dropped_connections(redis: Redis) -> None:
    """A Redis restart forgets the Lua scripts and drops every connection: a consumer's next
    claim reloads and reconnects by itself instead of failing."""
    queue = make_queue(redis, lease_s=30)
    await queue.enqueue(1)
    assert (await queue.dequeue("c", block_s=0)).task_id == 1
    await redis.script_flush()
    await redis.client_kill_filter(_type="normal", skipme=True)
    await queue.enqueue(2)
    job = await queue.dequeue("c", block_s=0)
    assert job is not None and job.task_id == 2


async def test_cancelled_blocking_claim_leaves_the_consumer_usable(redis: Redis) -> None:
    queue = make_queue(redis, lease_s=30)
    waiting = asyncio.create_task(queue.dequeue("c", block_s=5))
    await asyncio.sleep(0.2)
    waiting.cancel()  # an agent stopping mid-wait
    await asyncio.gather(waiting, return_exceptions=True)
    await queue.enqueue(3)
    job = await queue.dequeue("c", block_s=1)
    assert job is not None and job.task_id == 3


async def test_blocking_claim_works_on_either_protocol(redis_url: str) -> None:
    """The claim loop reads raw replies: RESP2 lists and RESP3 maps both come back as jobs."""
    for protocol in (2, 3):
        client = Redis.from_url(redis_url, protocol=protocol)
        try:
            queue = make_queue(client, lease_s=30)
            waiting = asyncio.create_task(queue.dequeue(f"c{protocol}", block_s=5))
            await asyncio.sleep(0.2)
            await queue.enqueue(protocol, Priority.HIGH)
            job = await asyncio.wait_for(waiting, 2)
            assert job is not None and job.task_id == protocol and job.message.priority is Priority.HIGH
            assert await queue.ack(job)
        finally:
            await client.aclose()


async def test_one_consumer_claiming_twice_at_once_gets_two_jobs(redis: Redis) -> None:
    """Calls for one consumer share its connection: overlapping ones must not mix replies."""
    queue = make_queue(redis, lease_s=30)
    await queue.enqueue_many([(1, Priority.NORMAL), (2, Priority.NORMAL)])
    first, second = await asyncio.gather(queue.dequeue("c", block_s=1), queue.dequeue("c", block_s=1))
    assert {first.task_id, second.task_id} == {1, 2}
