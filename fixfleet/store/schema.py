"""Numbered migrations (fixfleet/store/migrations/*.sql) applied under one advisory lock, so
several processes starting at once migrate once."""

from __future__ import annotations

from importlib import resources

import asyncpg

MIGRATION_LOCK_ID = 0x6669786665  # "fixfe": one advisory lock for all migrators


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the numbered migrations not applied yet; safe when several processes start at once."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for name, sql in migration_files():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", name)
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied


async def applied_migrations(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("fixfleet.store") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]
