"""Webhooks in flight when the ingress replicas stop are still answered, and what was answered
2xx is stored: the replicas' servers hand webhooks straight to the app (serve_app/replica_http.py),
so Serve does not count them, and it is the server's graceful stop that must let them finish.

How: hold every webhook inside its transaction (a lock on the deliveries table),
delete the application while they wait, then let them go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from ray import serve
from redis import Redis

from fixfleet.platform import load_config, running_config
from fixfleet.ports import free_port
from fixfleet.scratch import create_database, drop_database, redis_db_url
from tests.reliability.harness import SENTRY_SECRET, sentry_alert

DRAIN_REDIS_DB = 15  # the suite has 13 and 3-9, the Serve test 12, the demo and benches 10, 11, 14
REPLICAS = 2
WEBHOOKS = 8


@pytest.fixture
def drain_database(postgres_server_url: str) -> Iterator[str]:
    url = asyncio.run(create_database(postgres_server_url))
    yield url
    asyncio.run(drop_database(postgres_server_url, url))


@pytest.fixture
def drain_redis(redis_server_url: str) -> Iterator[str]:
    url = redis_db_url(redis_server_url, DRAIN_REDIS_DB)
    with Redis.from_url(url) as client:
        client.flushdb()
        yield url
        client.flushdb()


async def wait_until(read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], what: str,
                     timeout_s: float = 60) -> None:
    """Reads until `done` says yes; on time out, says what it read last."""
    deadline = time.monotonic() + timeout_s
    while not done(seen := await read()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last seen: {seen}")
        await asyncio.sleep(0.1)


def application_status() -> str | None:
    application = serve.status().applications.get("fixfleet")
    return application.status if application else None


async def webhooks_across_a_stop(url: str, database: str) -> list[httpx.Response]:
    holder = await asyncpg.connect(database)
    held = holder.transaction()
    await held.start()
    await holder.execute("LOCK TABLE webhook_deliveries IN ACCESS EXCLUSIVE MODE")

    async def backends() -> list[dict[str, Any]]:
        return [dict(row) for row in await holder.fetch(
            "SELECT pid, wait_event_type, left(query, 60) AS query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")]

    async def status() -> str | None:
        return await asyncio.to_thread(application_status)

    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            base = int(time.time() * 1000)
            alerts = [sentry_alert(base + n, f"drain-{base + n}") for n in range(WEBHOOKS)]
            sending = [asyncio.create_task(client.post(alert.path, content=alert.body, headers=alert.headers))
                       for alert in alerts]
            await wait_until(backends, lambda rows: any(row["wait_event_type"] == "Lock" for row in rows),
                             "a webhook waiting on the lock")
            await asyncio.sleep(1.0)  # the others arrive meanwhile (each replica writes one batch at a time)

            await asyncio.to_thread(serve.delete, "fixfleet", _blocking=False)
            await wait_until(status, lambda seen: seen == "DELETING", "Serve to delete the application")
            await asyncio.sleep(2.0)  # the replicas are in their stop: listeners closed, servers shutting down
            assert not any(task.done() for task in sending)  # still held by the lock

            await held.rollback()
            answers = await asyncio.gather(*sending)
            await wait_until(status, lambda seen: seen is None, "the replicas to finish stopping")
            return answers
    finally:
        await holder.close()


@pytest.mark.e2e
def test_webhooks_in_flight_when_the_ingress_stops_are_answered_and_stored(drain_database: str, drain_redis: str,
                                                                            tmp_path: Path) -> None:
    config = load_config(http_host="127.0.0.1", http_port=free_port(), num_replicas=REPLICAS,
                         args={"planners_max": 0, "executors_max": 0},
                         env_vars={"DATABASE_URL": drain_database, "REDIS_URL": drain_redis,
                                   "FIXFLEET_SENTRY_CLIENT_SECRET": SENTRY_SECRET,
                                   "FIXFLEET_DEFAULT_REPO": "https://github.com/fixfleet-tests/drain",
                                   "FIXFLEET_REPO_ALLOWLIST": '["https://github.com/fixfleet-tests/*"]',
                                   "FIXFLEET_HOME": str(tmp_path / "home")})
    with running_config(config) as local:
        responses = asyncio.run(webhooks_across_a_stop(local.url, drain_database))

    assert [r.status_code for r in responses] == [202] * WEBHOOKS, [r.text for r in responses]
    keys = {r.json()["task"] for r in responses}

    async def stored() -> tuple[int, int]:
        conn = await asyncpg.connect(drain_database)
        try:
            return (await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE source = 'sentry'"),
                    await conn.fetchval("SELECT count(*) FROM tasks WHERE key = ANY($1::text[])", list(keys)))
        finally:
            await conn.close()

    assert asyncio.run(stored()) == (WEBHOOKS, WEBHOOKS)
