"""A clean slate in the suite's database and Redis db: what each test world starts from."""

from __future__ import annotations

import asyncio

import asyncpg
from redis.asyncio import Redis

from fixfleet.store import Store

TABLES = "tasks, task_events, webhook_deliveries, outbox"
_IDENTITIES = """
    SELECT setval(pg_get_serial_sequence(quote_ident(table_name), column_name), 1, false)
    FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = ANY($1::text[])
      AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')
"""


async def empty_tables(pool: asyncpg.Pool) -> None:
    """Every row of TABLES gone and their ids starting again at 1, as `TRUNCATE ... RESTART
    IDENTITY CASCADE` leaves them, in a tenth of its time (a TRUNCATE makes new files for every
    table and index, slow on a busy disk; the tables hold a few rows). A table that refers to
    them without a cascading key still gets the TRUNCATE."""
    names = [name.strip() for name in TABLES.split(",")]
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                for name in reversed(names):  # the referring tables first
                    await conn.execute(f"DELETE FROM {name}")
                await conn.execute(_IDENTITIES, names)
        except asyncpg.ForeignKeyViolationError:
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")


def clean_slate(database_url: str, redis_url: str) -> None:
    """Empty tables and queues, for a module-scoped world that cannot use the async fixtures:
    what an earlier test left (a task still RECEIVED, say) must not become its work."""

    async def main() -> None:
        store = await Store.connect(database_url, max_size=1)
        await empty_tables(store.pool)
        await store.close()
        redis = Redis.from_url(redis_url)
        await redis.flushdb()
        await redis.aclose()

    asyncio.run(main())
