"""Queue benchmark: tasks through submit -> outbox relay -> enqueue -> claim -> ack.

`python -m bench.queue [--tasks N] [--consumers C] [--rate R]`. Tasks are offered at R per
second (default 2,200, as webhooks would arrive; 0 = as fast as possible, which measures
queueing in a saturated system rather than the claim). Uses DATABASE_URL / REDIS_URL (or the
embedded servers) with a throwaway database and Redis key prefix. Submitters, the relay and
the consumers share one event loop (uvloop). Claim latency is the time from the entry's
XADD to its claim. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import uvloop
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.models import NewTask
from fixfleet.outbox import OutboxRelay
from fixfleet.queue import QUEUES, Queue
from fixfleet.services import resolve_urls
from fixfleet.store import Store

SUBMITTERS = 16
RELAY_BATCH = 50  # small batches: a big one sits in the stream while consumers catch up


async def submit_all(store: Store, count: int, rate: float) -> None:
    """Submit `count` tasks; with a rate, task n is submitted no earlier than n / rate seconds in
    (an offered load, as webhooks arrive), else as fast as the submitters can."""
    numbers = iter(range(count))
    started = time.perf_counter()

    async def submitter() -> None:
        for n in numbers:
            if rate > 0 and (wait := started + n / rate - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            await store.create_task(NewTask(repo="file:///bench/repo", title=f"bench task {n}"))

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))


async def consume(queue: Queue, name: str, done: set[int], latencies: list[float], total: int) -> None:
    while len(done) < total:
        job = await queue.dequeue(name, block_s=0.2)
        if job is None:
            continue
        latencies.append(time.time() - job.message.enqueued_at)
        await queue.ack(job)
        done.add(job.task_id)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def database_url_for(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


async def run(tasks: int, consumers: int, rate: float) -> dict[str, float | int]:
    settings = Settings()
    embedded = EmbeddedServers(settings.home)
    server_url, redis_url = resolve_urls(settings, embedded)
    database = f"fixfleet_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    store = await Store.connect(database_url_for(server_url, database), max_size=SUBMITTERS + 2)
    redis = Redis.from_url(redis_url)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    queues = {name: Queue(redis, name, lease_s=30, prefix=prefix) for name in QUEUES}
    relay, stop = OutboxRelay(store, queues, poll_s=0.05, batch=RELAY_BATCH), asyncio.Event()
    done: set[int] = set()
    latencies: list[float] = []
    try:
        for queue in queues.values():
            await queue.ensure_groups()
        started = time.perf_counter()
        relaying = asyncio.create_task(relay.run(stop))
        consuming = [
            asyncio.create_task(consume(queues["planning"], f"c{i}", done, latencies, tasks)) for i in range(consumers)
        ]
        await submit_all(store, tasks, rate)
        submitted_s = time.perf_counter() - started
        await asyncio.wait_for(asyncio.gather(*consuming), timeout=300)
        elapsed = time.perf_counter() - started
        stop.set()
        await relaying
        stored = await store.pool.fetchval("SELECT count(*) FROM tasks")
    finally:
        keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await store.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        embedded.stop()
    ms = [x * 1000 for x in latencies]
    print(
        f"{tasks} tasks, {consumers} consumers, offered {rate or 'max'}/s: {tasks / elapsed:,.0f} tasks/s end to end "
        f"(submit phase {tasks / submitted_s:,.0f}/s); claim latency p50 {percentile(ms, 50):.2f} ms, "
        f"p99 {percentile(ms, 99):.2f} ms; stored {stored}, acked {len(done)}"
    )
    return {
        "tasks_per_s": round(tasks / elapsed, 1),
        "claim_p50_ms": round(percentile(ms, 50), 3),
        "claim_p99_ms": round(percentile(ms, 99), 3),
        "lost": tasks - len(done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2200.0, help="offered tasks/s (webhooks arriving); 0 = as fast as possible")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args.tasks, args.consumers, args.rate))))


if __name__ == "__main__":
    main()
