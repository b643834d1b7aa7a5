"""The consumer loop every agent runs: claim -> (expired? fail) -> handle with heartbeat -> ack.

How a job ends decides what happens to its entry and its task:
- success: acked;
- a transient failure (network, a 5xx or 429/529 of the model, a stalled session): retried
  with backoff by the queue; after the last attempt the entry is dead-lettered and the task
  marked FAILED with the reason;
- a `PermanentError` (fixfleet/errors.py: no model credential, no such repository, an invalid
  plan or repository config, a repository that cannot be set up): the same end at once, on
  this attempt; trying again cannot help and would only delay the reason reaching a person;
- `Interrupted` (the task was cancelled, paused or taken over meanwhile): acked, neither
  retried nor failed; whoever stopped it decides what comes next;
- `LeaseLost` (another consumer took the entry over): left alone; the new holder finishes it.
Handlers must be idempotent per task (the store's guarded transitions make a second delivery a
no-op): delivery is at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fixfleet.errors import Interrupted, PermanentError
from fixfleet.models import WORK
from fixfleet.queue import Job, LeaseLost, Queue
from fixfleet.store import Store, TaskNotFound

log = logging.getLogger(__name__)

Handler = Callable[[Job], Awaitable[None]]
GiveUpHook = Callable[[int, str], Awaitable[None]]
E = TypeVar("E", bound=BaseException)


class Worker:
    def __init__(
        self, queue: Queue, store: Store, handler: Handler, consumer: str, *, on_give_up: GiveUpHook | None = None
    ) -> None:
        self.queue, self.store, self.handler, self.consumer = queue, store, handler, consumer
        self.on_give_up = on_give_up  # told (task id, reason) when a task is failed for good
        self.heartbeat_s = max(0.05, queue.lease_s / 3)
        # The job in hand, from its claim to its ack: an agent's heartbeat shows both, so a job held
        # far longer than its work could take (a worker stuck after its handler) shows as such.
        self.busy_with: int | None = None
        self.busy_since: float | None = None

    async def run(self, stop: asyncio.Event, *, block_s: float = 1.0) -> None:
        """Consume until stopped; an outage of Redis or Postgres pauses the loop, never ends it."""
        while not stop.is_set():
            try:
                await self.run_once(block_s=block_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # the entry stays pending and is retried after its lease
                log.exception("%s: consumer loop error; retrying in 1s", self.consumer)
                await asyncio.sleep(1.0)

    async def run_once(self, *, block_s: float = 1.0) -> Job | None:
        """Handle at most one job; returns it (None when the queue stayed empty)."""
        job = await self.queue.dequeue(self.consumer, block_s=block_s)
        if job is None:
            return None
        if job.expired():
            await self._give_up(job, "expired: the task waited past its TTL and was not run")
            await self.queue.ack(job)
            return job
        self.busy_with, self.busy_since = job.task_id, time.time()
        try:
            await self._handle_with_heartbeat(job)
        except LeaseLost as exc:
            log.warning("%s: %s; the new holder finishes it", self.consumer, exc)
        except Exception as exc:  # noqa: BLE001 - each way below logs it (with its traceback unless expected)
            await self._after_failure(job, exc)
        else:
            await self.queue.ack(job)
        finally:
            self.busy_with = self.busy_since = None
        return job

    async def _after_failure(self, job: Job, exc: Exception) -> None:
        if (interrupted := find_in_chain(exc, Interrupted)) is not None:
            log.info("task %s was stopped while %s worked on it (%s); the job ends here", job.task_id,
                     self.consumer, interrupted)
            await self.queue.ack(job)
        elif (permanent := find_in_chain(exc, PermanentError)) is not None:
            await self._fail_now(job, permanent)
        else:
            await self._retry(job, exc)

    async def _handle_with_heartbeat(self, job: Job) -> None:
        handling = asyncio.create_task(self.handler(job))
        beating = asyncio.create_task(self._beat(job))
        done, _ = await asyncio.wait({handling, beating}, return_when=asyncio.FIRST_COMPLETED)
        if beating in done:  # the claim was lost: stop working on someone else's entry
            try:
                await cancel_and_wait(handling)
            except Exception:  # the new holder owns the outcome; what this one raised while stopping is a line
                log.warning("%s: task %s failed while being stopped", self.consumer, job.task_id, exc_info=True)
            beating.result()
        await cancel_and_wait(beating)
        handling.result()

    async def _beat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.queue.heartbeat(job)

    async def _fail_now(self, job: Job, exc: PermanentError) -> None:
        """No retry: the reason is the error's own message, written for the person reading it."""
        attempt = job.message.attempt
        log.warning("task %s attempt %s failed for good (%s: %s); not retried", job.task_id, attempt,
                    type(exc).__name__, exc, exc_info=exc)
        reason = f"failed on attempt {attempt}, not retried: {exc}"
        await self.queue.dead_letter(job, reason)
        await self._give_up(job, reason, dead_lettered=True,
                            details={"error_type": type(exc).__name__, "attempt": attempt, "permanent": True})

    async def _retry(self, job: Job, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        decision = await self.queue.retry(job, reason)
        if decision.dead:
            log.warning("task %s attempt %s failed; it was the last", job.task_id, job.message.attempt, exc_info=exc)
            await self._give_up(job, f"failed after {decision.attempt} attempts: {reason}", dead_lettered=True)
        else:
            log.warning("task %s attempt %s failed (%s); retry in %.1fs", job.task_id, job.message.attempt, reason,
                        decision.delay_s, exc_info=exc)
            await self.store.record_event(
                job.task_id,
                actor=self.consumer,
                reason=f"attempt {job.message.attempt} failed; retry in {decision.delay_s:.0f}s",
                data={"error": reason[:2000], "attempt": job.message.attempt},
            )

    async def _give_up(self, job: Job, reason: str, *, dead_lettered: bool = False,
                       details: dict[str, Any] | None = None) -> None:
        log.error("task %s: %s", job.task_id, reason)
        data = {"queue": job.message.queue, "dead_letter": dead_lettered, **(details or {})}
        if job.message.action != WORK:  # a side job (rerun-tests) leaves the task's state alone, failed or not
            await self.store.record_event(job.task_id, actor=self.consumer, reason=f"{job.message.action}: {reason}",
                                          data=data)
            return
        try:
            failed = await self.store.fail(job.task_id, actor=self.consumer, reason=reason, data=data)
        except TaskNotFound:  # an entry for a task this database does not have: nothing to mark
            log.error("task %s is not in the store; its entry was dropped", job.task_id)
            return
        if failed is not None and self.on_give_up is not None:
            try:
                await self.on_give_up(job.task_id, reason)
            except Exception as exc:  # the failure is recorded; a lost notification must not hide it
                log.warning("task %s: failure notification not sent: %s", job.task_id, exc, exc_info=True)


async def cancel_and_wait(task: asyncio.Task[Any], *, again_after_s: float = 1.0) -> None:
    """Cancel `task` and wait for its end, cancelling it again every `again_after_s` until it
    ends; then raise what it raised, unless that was the cancellation. A cancellation that
    reaches a library at the wrong moment can be swallowed (seen in the e2e suite: the lease
    heartbeat, inside a Redis call, went on beating; the worker waited for it for good, and the
    lease it kept renewing hid the stuck job from every other agent)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=again_after_s)
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


def find_in_chain(exc: BaseException, kind: type[E]) -> E | None:
    """`exc` or the first of its explicit causes (`raise ... from`) that is a `kind`: a wrapper
    such as `ExecutionFailed(...) from PermanentError(...)` keeps the meaning of its cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None
