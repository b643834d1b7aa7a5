"""Throwaway databases on a Postgres server and Redis, for the tests and the benchmarks."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_database(server_url: str, prefix: str = "fixfleet_test") -> str:
    """Create an empty database with a fresh name; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    """Drop the database `url` names, closing its connections."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def redis_db_url(server_url: str, db: int) -> str:
    """The same Redis server, another database number (a unix socket URL names it as ?db=)."""
    parts = urlsplit(server_url)
    if parts.scheme == "unix":
        return f"{server_url.split('?')[0]}?db={db}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def named_redis_db(url: str | None) -> int | None:
    """The database number a redis:// URL names (`/11`, or `?db=11` for unix sockets), unless 0."""
    if not url:
        return None
    parts = urlsplit(url)
    text = parse_qs(parts.query).get("db", [""])[0] if parts.scheme == "unix" else parts.path.strip("/")
    return int(text) if text.isdigit() and int(text) != 0 else None


async def flush_redis(url: str) -> None:
    """Empty the Redis database `url` names."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
