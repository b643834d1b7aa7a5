"""What the outbox relay and the reconciler read: the outbox rows, and the lock that lets one
process reconcile at a time; and the retention purge of what old closed tasks leave behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from fixfleet.models import TERMINAL
from fixfleet.store.records import OutboxItem


@dataclass(frozen=True)
class Purged:
    tasks: int  # closed tasks removed with their audit trail and outbox rows
    deliveries: int  # webhook delivery ids forgotten


class QueueRows:
    pool: asyncpg.Pool

    @asynccontextmanager
    async def try_lock(self, lock_id: int) -> AsyncIterator[bool]:
        """Hold a lock shared by every process on this database for the block, unless another
        holds it already; yields whether this one holds it."""
        async with self.pool.acquire() as conn:
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
            try:
                yield held
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)

    @asynccontextmanager
    async def outbox_batch(self, limit: int = 500) -> AsyncIterator[list[OutboxItem]]:
        """Take up to `limit` unpublished outbox rows; they are gone only if the block succeeds.

        Rows are locked (SKIP LOCKED), so several relays never publish the same row at once.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM outbox WHERE id IN ("
                " SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, task_id, queue, priority, version, action",
                limit,
            )
            yield [OutboxItem(r["id"], r["task_id"], r["queue"], r["priority"], r["version"], r["action"]) for r in rows]

    async def outbox_entries(self) -> set[tuple[str, int, str]]:
        """(queue, task id, action) of every row still to publish."""
        return {(r["queue"], r["task_id"], r["action"])
                for r in await self.pool.fetch("SELECT queue, task_id, action FROM outbox")}

    async def purge(self, *, closed_for_s: float | None, deliveries_for_s: float | None, batch: int = 1000) -> Purged:
        """Delete tasks closed (COMPLETED, FAILED, REJECTED, CANCELLED) for longer than
        `closed_for_s`, with their events and outbox rows, and the webhook delivery ids older
        than `deliveries_for_s` (a sender's redelivery after that is matched to its open task
        by the external id, not by the delivery id). None keeps them. In batches: no long lock
        on the tables."""
        tasks = deliveries = 0
        while closed_for_s is not None:
            deleted = await self.pool.fetchval(
                "WITH gone AS (DELETE FROM tasks WHERE id IN ("
                " SELECT id FROM tasks WHERE status = ANY($1::text[])"
                " AND updated_at < now() - make_interval(secs => $2) LIMIT $3) RETURNING 1)"
                " SELECT count(*) FROM gone", [s.value for s in TERMINAL], closed_for_s, batch)
            tasks += deleted
            if deleted < batch:
                break
        while deliveries_for_s is not None:
            deleted = await self.pool.fetchval(
                "WITH gone AS (DELETE FROM webhook_deliveries WHERE ctid IN ("
                " SELECT ctid FROM webhook_deliveries WHERE received_at < now() - make_interval(secs => $1)"
                " LIMIT $2) RETURNING 1) SELECT count(*) FROM gone", deliveries_for_s, batch)
            deliveries += deleted
            if deleted < batch:
                break
        return Purged(tasks, deliveries)
