"""From Postgres to the queues: the outbox relay and the reconciler.

The relay publishes a task to its queue only after the transaction that made it queued has
committed. The reconciler rebuilds the queues from Postgres (the truth): every task whose
state says "queued" but that has no entry (Redis restarted empty) is enqueued again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field

import asyncpg

from fixfleet.models import CLAIMED_IN, QUEUED_IN
from fixfleet.queue import Queue
from fixfleet.store import OUTBOX_CHANNEL, Store

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, store: Store, queues: Mapping[str, Queue], *, poll_s: float = 0.5, batch: int = 500) -> None:
        self.store, self.queues, self.poll_s, self.batch = store, queues, poll_s, batch
        self._wake = asyncio.Event()

    async def relay_once(self) -> int:
        """Publish one batch of outbox rows; returns how many were published."""
        async with self.store.outbox_batch(self.batch) as items:
            by_queue: dict[str, list[tuple[int, str]]] = {}
            for item in items:
                by_queue.setdefault(item.queue, []).append((item.task_id, item.priority))
            for name, entries in by_queue.items():
                await self.queues[name].enqueue_many(entries)
            return len(items)

    async def drain(self) -> int:
        total = 0
        while n := await self.relay_once():
            total += n
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until stopped: woken by NOTIFY from each committing transaction, polling as a fallback."""
        async with self.store.pool.acquire() as listener:
            await listener.add_listener(OUTBOX_CHANNEL, self._on_notify)
            try:
                while not stop.is_set():
                    try:
                        await self.drain()
                    except (OSError, asyncpg.PostgresError, ConnectionError) as exc:
                        log.warning("outbox relay: %s; retrying", exc)
                    self._wake.clear()
                    await wait_any(self._wake, stop, timeout=self.poll_s)
            finally:
                with suppress(Exception):
                    await listener.remove_listener(OUTBOX_CHANNEL, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Return when any event is set or the timeout passes."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@dataclass
class ReconcileReport:
    requeued: list[int] = field(default_factory=list)
    checked: int = 0


async def reconcile(store: Store, queues: Mapping[str, Queue], *, claimed_stale_s: float) -> ReconcileReport:
    """Enqueue every task that should be in a queue but is not.

    Waiting states (RECEIVED, REVISING, APPROVED) must have an entry. A claimed state
    (PLANNING, EXECUTING) whose entry vanished is re-enqueued once it has been quiet for
    `claimed_stale_s` (its agent is gone); the next agent takes it over.
    """
    present: set[int] = await store.outbox_task_ids()
    for queue in queues.values():
        await queue.ensure_groups()
        present |= await queue.task_ids()
    report = ReconcileReport()
    for state in await store.task_states([*QUEUED_IN, *CLAIMED_IN]):
        report.checked += 1
        if state.id in present:
            continue
        if state.status in CLAIMED_IN and state.seconds_since_update < claimed_stale_s:
            continue
        queue_name = QUEUED_IN.get(state.status) or CLAIMED_IN[state.status]
        await queues[queue_name].enqueue(state.id, state.priority)
        report.requeued.append(state.id)
    if report.requeued:
        log.warning("reconciler re-enqueued %d task(s): %s", len(report.requeued), report.requeued)
    return report
