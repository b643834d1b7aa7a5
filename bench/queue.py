"""Queue benchmark: tasks through submit -> outbox relay -> enqueue -> claim -> ack.

`python -m bench.queue [--tasks N] [--consumers C] [--processes P] [--rate R]`. Tasks are
offered at R per second (default 2,100, as webhooks would arrive; 0 = as fast as possible,
which measures queueing in a saturated system rather than the claim). Uses DATABASE_URL /
REDIS_URL (or the embedded servers) with a throwaway database and Redis key prefix.

As in the platform, the submitters and the outbox relay share one process (the ingress) and
the consumers run in others (the agents; P processes, default 1), each consumer the agents' own
loop (fixfleet/worker.py) with a handler that only takes note. Claim latency is the time from the
entry's XADD to its claim. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Semaphore
from queue import Queue as ResultQueue

import uvloop
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.models import NewTask
from fixfleet.outbox import OutboxRelay
from fixfleet.queue import QUEUES, Job, Queue
from fixfleet.scratch import create_database, drop_database
from fixfleet.services import resolve_urls
from fixfleet.store import Store
from fixfleet.worker import Worker

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


async def consume(queue: Queue, store: Store, name: str, claimed: Synchronized, total: int,
                  report: ConsumerReport) -> None:
    """Claim and ack as an agent does (fixfleet/worker.py: claim, handle with a heartbeat, ack),
    with a handler that only takes note, until every task was claimed."""
    stop = asyncio.Event()

    async def note(job: Job) -> None:
        report.last_claim_at = time.time()
        report.latencies.append(report.last_claim_at - job.message.enqueued_at)
        report.task_ids.append(job.task_id)
        with claimed.get_lock():
            claimed.value += 1

    async def until_all_claimed() -> None:
        while claimed.value < total:
            await asyncio.sleep(0.05)
        stop.set()

    await asyncio.gather(Worker(queue, store, note, name).run(stop, block_s=0.2), until_all_claimed())


@dataclass
class ConsumerReport:
    latencies: list[float] = field(default_factory=list)
    task_ids: list[int] = field(default_factory=list)
    last_claim_at: float = 0.0
    cpu_s: float = 0.0


async def consumers_main(
    redis_url: str, database_url: str, prefix: str, names: list[str], total: int, claimed: Synchronized,
    ready: Semaphore, results: ResultQueue,
) -> None:
    redis = Redis.from_url(redis_url)
    store = await Store.connect(database_url, min_size=1, max_size=2)  # the workers' (unused unless a job fails)
    queue = Queue(redis, "planning", lease_s=30, prefix=prefix)
    # Warm, as a running agent is: scripts loaded, a connection per consumer.
    await asyncio.gather(*(queue.dequeue(name, block_s=0) for name in names))
    report, cpu_before = ConsumerReport(), time.process_time()
    ready.release()
    consumers = [consume(queue, store, name, claimed, total, report) for name in names]
    await asyncio.wait_for(asyncio.gather(*consumers), timeout=300)
    report.cpu_s = time.process_time() - cpu_before
    await store.close()
    await redis.aclose()
    results.put(report)


def consumers_process(*args: object) -> None:
    uvloop.run(consumers_main(*args))


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def run(tasks: int, consumers: int, rate: float, processes: int) -> dict[str, float | int]:
    settings = Settings()
    embedded = EmbeddedServers(settings.home)
    server_url, redis_url = resolve_urls(settings, embedded)
    database_url = await create_database(server_url, "fixfleet_bench")
    store = await Store.connect(database_url, min_size=4, max_size=SUBMITTERS + 2)
    redis = Redis.from_url(redis_url)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    queues = {name: Queue(redis, name, lease_s=30, prefix=prefix) for name in QUEUES}
    relay, stop = OutboxRelay(store, queues, poll_s=0.05, batch=RELAY_BATCH), asyncio.Event()
    try:
        for queue in queues.values():
            await queue.ensure_groups()
        context = multiprocessing.get_context("spawn")
        ready, results, claimed = context.Semaphore(0), context.Queue(), context.Value("q", 0)
        names = [f"c{i}" for i in range(consumers)]
        children = [context.Process(target=consumers_process, args=(
            redis_url, database_url, prefix, names[p::processes], tasks, claimed, ready, results)) for p in range(processes)]
        for child in children:
            child.start()
        for _ in children:
            await asyncio.to_thread(ready.acquire, True, 60)
        started, started_at, cpu_before = time.perf_counter(), time.time(), time.process_time()
        relaying = asyncio.create_task(relay.run(stop))
        await submit_all(store, tasks, rate)
        submitted_s = time.perf_counter() - started
        reports: list[ConsumerReport] = [await asyncio.to_thread(results.get, True, 300) for _ in children]
        for child in children:
            child.join()
        elapsed = max(r.last_claim_at for r in reports) - started_at
        ingress_cpu_s = time.process_time() - cpu_before
        stop.set()
        await relaying
        stored = await store.pool.fetchval("SELECT count(*) FROM tasks")
    finally:
        keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await store.close()
        await drop_database(server_url, database_url)
        embedded.stop()
    latencies = [x for r in reports for x in r.latencies]
    claims = [t for r in reports for t in r.task_ids]
    done = set(claims)
    ms = [x * 1000 for x in latencies]
    print(
        f"{tasks} tasks, {consumers} consumers in {processes} process(es), offered {rate or 'max'}/s: "
        f"{tasks / elapsed:,.0f} tasks/s end to end (submit phase {tasks / submitted_s:,.0f}/s); "
        f"claim latency p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms; "
        f"stored {stored}, acked {len(done)}, claimed twice {len(claims) - len(done)}; CPU seconds: "
        f"submitters and relay {ingress_cpu_s:.2f}, consumers {sum(r.cpu_s for r in reports):.2f}"
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
    parser.add_argument("--processes", type=int, default=1, help="consumer processes (consumers spread over them)")
    parser.add_argument("--rate", type=float, default=2100.0, help="offered tasks/s (webhooks arriving); 0 = as fast as possible")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args.tasks, args.consumers, args.rate, args.processes))))


if __name__ == "__main__":
    main()
