"""Open what a process needs: the store and the queues, from URLs or the embedded default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from fixfleet.config import Settings, mask_url
from fixfleet.embedded import EmbeddedServers
from fixfleet.queue import QUEUES, Queue
from fixfleet.redact import Redactor
from fixfleet.store import Store
from fixfleet.store.records import init_connection

# An outage must fail a request quickly (the ingress answers 503 and the sender retries), not hold
# it: a connection Postgres or Redis does not accept within this gives up (asyncpg waits 60 s)...
CONNECT_TIMEOUT_S = 5.0
# ... and so does a query on a connection whose server vanished without closing it (a host gone,
# a network partition), which nothing else would ever end.
COMMAND_TIMEOUT_S = 60.0

AGENTS_KEY = "fixfleet:agents"  # Redis hash: agent name -> its last heartbeat (JSON); read by /health, status
SCALE_DECISIONS_KEY = "fixfleet:scale-decisions"  # Redis list, newest first: the pools' autoscaling decisions


class ServiceUnavailable(RuntimeError):
    """Postgres or Redis did not answer; the message names which and where."""


@dataclass
class Services:
    settings: Settings
    store: Store
    redis: Redis
    queues: dict[str, Queue]


def make_queues(redis: Redis, settings: Settings) -> dict[str, Queue]:
    return {
        name: Queue(
            redis,
            name,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            backoff_s=settings.retry_backoff_s,
            backoff_max_s=settings.retry_backoff_max_s,
            ttl_s=settings.task_ttl_s,
        )
        for name in QUEUES
    }


def resolve_urls(settings: Settings, embedded: EmbeddedServers) -> tuple[str, str]:
    database = settings.database_url.get_secret_value() if settings.database_url else embedded.postgres_url()
    redis = settings.redis_url.get_secret_value() if settings.redis_url else embedded.redis_url()
    return database, redis


@asynccontextmanager
async def open_services(settings: Settings, *, migrate: bool = True, pool_size: int = 10) -> AsyncIterator[Services]:
    embedded = EmbeddedServers(settings.home, log_max_bytes=settings.log_max_bytes, log_backups=settings.log_backups)
    try:
        database_url, redis_url = resolve_urls(settings, embedded)
        store = await _connect_store(database_url, migrate=migrate, pool_size=pool_size,
                                     redactor=Redactor.from_settings(settings))
        try:
            redis = await _connect_redis(redis_url)
            try:
                yield Services(settings, store, redis, make_queues(redis, settings))
            finally:
                await redis.aclose()
        finally:
            await store.close()
    finally:
        embedded.stop()


async def _connect_store(url: str, *, migrate: bool, pool_size: int, redactor: Redactor) -> Store:
    try:
        # The pool is made here rather than by Store.connect, which takes no timeouts.
        pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size, init=init_connection,
                                         timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S)
        store = Store(pool, redactor)
        if migrate:
            await _migrate(store)
        return store
    except Exception as exc:  # refused, unknown host, bad credentials, bad URL: one clear line
        raise ServiceUnavailable(f"Postgres at {mask_url(url)} did not answer ({exc}); check DATABASE_URL") from exc


async def _migrate(store: Store) -> None:
    try:
        await store.migrate()
    except BaseException:
        await store.close()
        raise


async def _connect_redis(url: str) -> Redis:
    # No read timeout: consumers block on XREADGROUP for up to half a lease.
    redis = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        await redis.ping()
    except Exception as exc:
        await redis.aclose()
        raise ServiceUnavailable(f"Redis at {mask_url(url)} did not answer ({exc}); check REDIS_URL") from exc
    return redis
