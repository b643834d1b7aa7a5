"""What the outbox relay and the reconciler read: the outbox rows, and the lock that lets one
process reconcile at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from fixfleet.store.records import OutboxItem


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
