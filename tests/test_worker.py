"""How the worker ends a job: permanent errors fail at once, interruptions end quietly."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from fixfleet.errors import Interrupted, PermanentError
from fixfleet.models import NewTask, TaskStatus
from fixfleet.queue import Job, Queue
from fixfleet.store import Store
from fixfleet.worker import Worker, find_in_chain


class WrappingFailure(RuntimeError):
    pass


async def queued_task(redis: Redis, store: Store) -> tuple[Queue, int]:
    queue = Queue(redis, "planning", lease_s=1.0, max_attempts=3, backoff_s=0.05, backoff_max_s=0.2)
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title="boom"))
    await queue.enqueue(task.id)
    return queue, task.id


async def test_a_permanent_error_fails_the_task_on_the_first_attempt(redis: Redis, store: Store) -> None:
    queue, task_id = await queued_task(redis, store)
    told: list[tuple[int, str]] = []

    async def no_repository(job: Job) -> None:
        raise PermanentError("the repository file:///nowhere does not exist or is not accessible")

    async def notify(task: int, reason: str) -> None:
        told.append((task, reason))

    calls = 0

    async def counted(job: Job) -> None:
        nonlocal calls
        calls += 1
        await no_repository(job)

    worker = Worker(queue, store, counted, "w", on_give_up=notify)
    assert await worker.run_once(block_s=0)
    assert await worker.run_once(block_s=0.3) is None  # nothing scheduled for a second attempt
    assert calls == 1
    assert (await store.get_task(task_id)).status == TaskStatus.FAILED
    events = await store.events(task_id)
    failure = events[-1]
    assert "does not exist" in failure.reason and "attempt 1" in failure.reason
    assert failure.data["permanent"] is True and failure.data["attempt"] == 1
    assert not any("retry in" in e.reason for e in events)
    assert [t for t, _ in told] == [task_id]
    dead = await redis.xrevrange(queue.dead_key)
    assert len(dead) == 1 and b"does not exist" in dead[0][1][b"reason"]
    depth = await queue.depth()
    assert (depth.waiting, depth.pending, depth.delayed, depth.dead) == (0, 0, 0, 1)


async def test_a_side_job_that_fails_for_good_leaves_the_task_as_it_was(redis: Redis, store: Store) -> None:
    queue = Queue(redis, "execution", lease_s=1.0, max_attempts=3, backoff_s=0.05, backoff_max_s=0.2)
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title="approved, waiting"))
    for status in ("PLANNING", "AWAITING_APPROVAL", "APPROVED"):
        await store.transition(task.id, TaskStatus(status), actor="t")
    await queue.enqueue_many([(task.id, "normal", None, "rerun-tests")])

    async def broken_rerun(job: Job) -> None:
        raise PermanentError("the repository's setup fails")

    assert await Worker(queue, store, broken_rerun, "w").run_once(block_s=0)
    assert (await store.get_task(task.id)).status == TaskStatus.APPROVED  # a look at the tests is not a step
    assert "rerun-tests" in (last := (await store.events(task.id))[-1]).reason and "setup fails" in last.reason


async def test_a_wrapped_permanent_error_keeps_its_meaning(redis: Redis, store: Store) -> None:
    queue, task_id = await queued_task(redis, store)

    async def wrapped(job: Job) -> None:
        try:
            raise PermanentError("no model credential: set ANTHROPIC_API_KEY")
        except PermanentError as exc:
            raise WrappingFailure("planner session could not start") from exc

    assert await Worker(queue, store, wrapped, "w").run_once(block_s=0)
    assert (await store.get_task(task_id)).status == TaskStatus.FAILED
    assert "no model credential" in (await store.events(task_id))[-1].reason


async def test_an_interruption_ends_the_job_without_failing_or_retrying(redis: Redis, store: Store) -> None:
    queue, task_id = await queued_task(redis, store)
    told: list[int] = []

    async def cancelled_meanwhile(job: Job) -> None:
        raise Interrupted(job.task_id, "CANCELLED")

    async def notify(task: int, reason: str) -> None:
        told.append(task)

    worker = Worker(queue, store, cancelled_meanwhile, "w", on_give_up=notify)
    before = await store.events(task_id)
    assert await worker.run_once(block_s=0)
    assert await worker.run_once(block_s=0.3) is None
    assert (await store.get_task(task_id)).status == TaskStatus.RECEIVED  # not failed by the worker
    assert await store.events(task_id) == before and told == []
    assert await queue.depth() == type(await queue.depth())(0, 0, 0, 0)


async def test_a_transient_error_is_still_retried(redis: Redis, store: Store) -> None:
    queue, task_id = await queued_task(redis, store)

    async def flaky(job: Job) -> None:
        raise ConnectionError("model API: 529 overloaded")

    assert await Worker(queue, store, flaky, "w").run_once(block_s=0)
    assert (await queue.depth()).delayed == 1
    assert (await store.get_task(task_id)).status == TaskStatus.RECEIVED
    assert "retry in" in (await store.events(task_id))[-1].reason


def test_the_cause_chain_is_followed_only_through_explicit_causes() -> None:
    permanent = PermanentError("invalid plan")
    wrapper = WrappingFailure("session failed")
    wrapper.__cause__ = permanent
    assert find_in_chain(wrapper, PermanentError) is permanent
    implicit = WrappingFailure("failed while handling another")
    implicit.__context__ = permanent  # an error raised while handling it is not caused by it
    assert find_in_chain(implicit, PermanentError) is None


class SwallowsOneCancellation(Queue):
    """The fault seen in the e2e suite: a cancellation that reaches the Redis call of the lease
    heartbeat at the wrong moment is swallowed, and the heartbeat goes on."""

    swallowed = 0

    async def heartbeat(self, job: Job) -> None:
        try:
            await asyncio.sleep(0.5)  # inside "the call" when the worker cancels the heartbeat
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
        await super().heartbeat(job)


async def test_a_heartbeat_that_swallows_its_cancellation_does_not_hold_the_job(redis: Redis, store: Store) -> None:
    """Before, the worker waited for its heartbeat for good and the heartbeat renewed the lease for
    good: the job was never failed, and no other agent could take it."""
    queue = SwallowsOneCancellation(redis, "planning", lease_s=0.3, max_attempts=1)
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title="refused"))
    await queue.enqueue(task.id)

    async def refused(job: Job) -> None:
        await asyncio.sleep(0.2)  # the heartbeat (every 0.1 s) is in its call now
        raise RuntimeError("verification failed: the change breaks the suite")

    running = asyncio.create_task(Worker(queue, store, refused, "w").run_once(block_s=0))
    await asyncio.wait({running}, timeout=30)  # about a second with the fault; for good without the fix
    if not running.done():
        running.cancel()  # cancels the heartbeat it awaits a second time: that one ends it
        await asyncio.wait({running}, timeout=5)
        raise AssertionError("the worker is still waiting for its heartbeat to stop")
    assert running.result() is not None
    assert queue.swallowed == 1  # the fault did happen
    assert (await store.get_task(task.id)).status == TaskStatus.FAILED
    assert (await queue.depth()).dead == 1


async def test_the_job_in_hand_is_shown_with_its_start_until_it_is_acked(redis: Redis, store: Store) -> None:
    """What an agent's heartbeat shows (`fixfleet status`: busy for how long): the worker's hold
    of its job, from the claim to the ack, not only the handler's run, so a worker stuck after
    its handler shows a job held for ever longer instead of a busy agent with no start."""
    queue = Queue(redis, "planning", lease_s=3)
    task, _ = await store.create_task(NewTask(repo="file:///tmp/repo", title="t"))
    await queue.enqueue(task.id)
    seen: list[tuple[int | None, float | None]] = []

    async def handler(job: Job) -> None:
        seen.append((worker.busy_with, worker.busy_since))

    worker = Worker(queue, store, handler, "w")
    claimed_after = time.time()
    await worker.run_once(block_s=0)
    (busy_with, busy_since), = seen
    assert busy_with == task.id and busy_since is not None and claimed_after <= busy_since <= time.time()
    assert (worker.busy_with, worker.busy_since) == (None, None)  # acked: nothing in hand
