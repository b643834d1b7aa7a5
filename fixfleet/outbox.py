"""From Postgres to the queues: the outbox relay and the reconciler.

The relay publishes a task to its queue only after the transaction that made it queued has
committed. The reconciler rebuilds the queues from Postgres (the truth): every task whose
state says "queued" but that has no entry (Redis restarted empty) is enqueued again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from fixfleet.models import (
    CLAIMED_IN,
    QUEUED_IN,
    SIDE_JOBS,
    WORK,
    TaskStatus,
)
from fixfleet.queue import Queue
from fixfleet.store import OUTBOX_CHANNEL, Store
from fixfleet.takeover import Liveness, Roster, forget_gone, release_gone

log = logging.getLogger(__name__)
RECONCILE_LOCK_ID = 0x6669786672  # "fixfr": one reconciler at a time across processes


class OutboxRelay:
    def __init__(
        self,
        store: Store,
        queues: Mapping[str, Queue],
        *,
        poll_s: float = 0.5,
        batch: int = 500,
        gather_s: float = 0.002,
        reconcile_every_s: float | None = None,
        claimed_stale_s: float = 120.0,
        roster: Roster | None = None,
        takeover_every_s: float = 5.0,
        agent_lost_s: float = 180.0,
        listen: bool = True,
    ) -> None:
        self.store, self.queues, self.poll_s, self.batch = store, queues, poll_s, batch
        # Without `listen`, only this process's commits (and the poll) wake the relay: a Serve
        # ingress replica relays what it commits itself, and the relay deployment hears the rest.
        self.listen = listen
        # After a wake-up, wait this long so commits arriving together go out as one batch: a
        # batch costs four round trips however many rows it carries.
        self.gather_s = gather_s
        # With a period, the relay also reconciles (at start, then every period): a Redis that
        # restarted empty is refilled without anyone asking.
        self.reconcile_every_s, self.claimed_stale_s = reconcile_every_s, claimed_stale_s
        self._next_reconcile = 0.0
        # With reconciling, claims of agents that are gone are released every `takeover_every_s`
        # (fixfleet/takeover.py), judged with the platform's list of agents (`roster`) and their
        # heartbeats (older than `agent_lost_s`: gone).
        self.roster, self.takeover_every_s, self.agent_lost_s = roster, takeover_every_s, agent_lost_s
        self._next_takeover = 0.0
        self._redis_run_id: str | None = None
        self._wake = asyncio.Event()

    async def relay_once(self) -> int:
        """Publish one batch of outbox rows; returns how many were published."""
        async with self.store.outbox_batch(self.batch) as items:
            by_queue: dict[str, list[tuple[int, str, int | None, str]]] = {}
            for item in items:
                by_queue.setdefault(item.queue, []).append((item.task_id, item.priority, item.version, item.action))
            for name, entries in by_queue.items():
                await self.queues[name].enqueue_many(entries)
            return len(items)

    async def drain(self) -> int:
        """Relay until a batch comes back short: the outbox was empty as of that read (later
        commits wake the relay again)."""
        total = 0
        while True:
            n = await self.relay_once()
            total += n
            if n < self.batch:
                return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until stopped: woken by commits in this process, by NOTIFY from other
        processes' commits (when it listens), and by a poll as the fallback."""
        self.store.relay_wake = self._wake.set
        try:
            async with self._notifications():
                await self._relay_until(stop)
        finally:
            self.store.relay_wake = None

    @asynccontextmanager
    async def _notifications(self) -> AsyncIterator[None]:
        """Other processes' commits wake the relay by NOTIFY while this is open (if it listens)."""
        if not self.listen:
            yield
            return
        async with self.store.pool.acquire() as listener:
            await listener.add_listener(OUTBOX_CHANNEL, self._on_notify)
            try:
                yield
            finally:
                with suppress(Exception):
                    await listener.remove_listener(OUTBOX_CHANNEL, self._on_notify)

    async def _relay_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()  # before draining: a commit during the drain wakes us again
            try:
                await self.drain()
                await self._reconcile_when_due()
            except Exception as exc:  # an outage of Postgres or Redis pauses the relay, never ends it
                log.warning("outbox relay: %s; retrying", exc, exc_info=True)
            await wait_any(self._wake, stop, timeout=self.poll_s)
            if self._wake.is_set() and not stop.is_set():
                await asyncio.sleep(self.gather_s)

    async def _reconcile_when_due(self) -> None:
        if self.reconcile_every_s is None:
            return
        await self._take_over_when_due()
        if time.monotonic() < self._next_reconcile:
            return
        self._next_reconcile = time.monotonic() + self.reconcile_every_s  # also after a failed pass
        await reconcile(self.store, self.queues, claimed_stale_s=self.claimed_stale_s, liveness=await self._liveness())

    async def _take_over_when_due(self) -> None:
        """Release the claims of agents that are gone; reconcile at once when Redis restarted
        (a new run id: it may have come back empty)."""
        if time.monotonic() < self._next_takeover:
            return
        self._next_takeover = time.monotonic() + self.takeover_every_s
        redis = next(iter(self.queues.values())).redis
        run_id = (await redis.info("server")).get("run_id")
        if self._redis_run_id is not None and run_id != self._redis_run_id:
            log.warning("Redis restarted (run id %s): reconciling the queues now", run_id)
            self._next_reconcile = 0.0
        self._redis_run_id = run_id
        liveness = await self._liveness()
        await release_gone(self.queues, liveness)
        await forget_gone(redis, liveness)

    async def _liveness(self) -> Liveness:
        redis = next(iter(self.queues.values())).redis
        return await Liveness.look(redis, self.roster, stale_after_s=self.agent_lost_s)

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
    requeued_side_jobs: list[tuple[str, int]] = field(default_factory=list)  # (action, task id)
    checked: int = 0
    skipped: bool = False  # another process was reconciling at the same moment


async def reconcile(store: Store, queues: Mapping[str, Queue], *, claimed_stale_s: float,
                    liveness: Liveness | None = None) -> ReconcileReport:
    """Enqueue every task that should be in a queue but is not.

    Waiting states (RECEIVED, REVISING, APPROVED) must have an entry. A claimed state
    (PLANNING, EXECUTING) whose entry vanished is re-enqueued as soon as `liveness` shows that
    the agent that claimed it is gone or works on something else, else once it has been quiet
    for `claimed_stale_s`; the next agent takes it over. One process reconciles at a time.
    """
    async with store.try_lock(RECONCILE_LOCK_ID) as held:
        if not held:
            return ReconcileReport(skipped=True)
        return await _reconcile(store, queues, claimed_stale_s, liveness)


async def _reconcile(store: Store, queues: Mapping[str, Queue], claimed_stale_s: float,
                     liveness: Liveness | None) -> ReconcileReport:
    watched = [*QUEUED_IN, *CLAIMED_IN]
    # States first, then where the entries are: a task that is published meanwhile leaves
    # the outbox only after its entry is in the stream, so it is seen in one or the other.
    states = await store.task_states(watched)
    asked = {job: await store.pending(job) for job in SIDE_JOBS.values()}
    present = await _entries(store, queues)
    report = ReconcileReport(checked=len(states) + sum(map(len, asked.values())))
    missing = [state.id for state in states if (_queue_for(state.status), state.id, WORK) not in present]
    # A fresh look at the few that seem lost: one may have moved on (claimed, acked) meanwhile.
    fresh = await store.task_states(watched, ids=missing) if missing else []
    # Who holds them, read after that look: a takeover meanwhile names the new (live) holder.
    holders = await store.claimed_by(missing) if missing and liveness is not None else {}
    for state in fresh:
        if state.status in CLAIMED_IN and state.seconds_since_update < claimed_stale_s:
            left = liveness.left(holders.get(state.id), state.id, state.seconds_since_update) if liveness else None
            if left is None:
                continue
            log.warning("task %s: its entry is gone and %s %s: queued again", state.id, holders.get(state.id), left)
        await queues[_queue_for(state.status)].enqueue(state.id, state.priority, state.version)
        report.requeued.append(state.id)
    # A side job asked for and not answered is one a person waits for: it comes back too.
    for job, pending in asked.items():
        lost = [state.id for state in pending if (job.queue, state.id, job.action) not in present]
        for state in await store.pending(job, ids=lost) if lost else []:
            await queues[job.queue].enqueue(state.id, state.priority, state.version, action=job.action)
            report.requeued_side_jobs.append((job.action, state.id))
    if report.requeued or report.requeued_side_jobs:
        log.warning("reconciler re-enqueued %d task(s) %s and %d side job(s) %s", len(report.requeued), report.requeued,
                    len(report.requeued_side_jobs), report.requeued_side_jobs)
    return report


async def _entries(store: Store, queues: Mapping[str, Queue]) -> set[tuple[str, int, str]]:
    """(queue, task id, action) of every entry still in the outbox or in a queue; a step's entry
    counts as WORK whatever started it."""
    present = await store.outbox_entries()
    for name, queue in queues.items():
        await queue.ensure_groups()
        present |= {(name, task_id, action) for task_id, action in await queue.entries()}
    return {(name, task_id, action if action in SIDE_JOBS else WORK) for name, task_id, action in present}


def _queue_for(status: TaskStatus) -> str:
    return QUEUED_IN.get(status) or CLAIMED_IN[status]
