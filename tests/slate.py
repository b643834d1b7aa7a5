"""A clean slate in the suite's database and Redis db: what each test world starts from."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from fixfleet.store import Store

TABLES = "tasks, task_events, webhook_deliveries, outbox"


def clean_slate(database_url: str, redis_url: str) -> None:
    """Empty tables and queues, for a module-scoped world that cannot use the async fixtures:
    what an earlier test left (a task still RECEIVED, say) must not become its work."""

    async def main() -> None:
        store = await Store.connect(database_url, max_size=1)
        await store.pool.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        await store.close()
        redis = Redis.from_url(redis_url)
        await redis.flushdb()
        await redis.aclose()

    asyncio.run(main())
