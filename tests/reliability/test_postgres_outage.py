"""Postgres stopped for 10 s under a steady stream of webhooks.

What a sender must see: while Postgres is down, 503 with Retry-After (never a 2xx for something
not stored, never a 500); afterwards 202 again without anyone restarting the ingress; a delivery
refused with 503 and sent again later is accepted once. /health says Postgres is down meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.services import make_queues
from tests.ingress_server import running_ingress
from tests.reliability.harness import (
    Answer,
    PrivatePostgres,
    Webhook,
    chaos_settings,
    client,
    report,
    send,
    send_all,
    sentry_alert,
    status_counts,
)

pytestmark = pytest.mark.chaos
OUTAGE_S = 10.0
RATE_PER_S = 40  # a steady stream: one new alert every 25 ms
BEFORE_S, AFTER_S = 3.0, 6.0  # load before the outage, and after Postgres is back
RETRY_AFTER_MAX_S = 60
RELAY_CATCH_UP_S = 15.0


@dataclass
class Timed:
    answer: Answer
    sent_at: float
    answered_at: float


@dataclass
class Outage:
    down_at: float = 0.0
    restart_at: float = 0.0  # Postgres may answer before its start returns: the outage ends here
    up_at: float = 0.0


async def steady_load(http: httpx.AsyncClient, stop: asyncio.Event) -> list[Timed]:
    """A new alert (its own issue, its own delivery id) every 1/RATE s, answered or not."""
    sent: list[asyncio.Task[Timed]] = []
    n = 0
    while not stop.is_set():
        n += 1
        sent.append(asyncio.create_task(timed(http, sentry_alert(700_000 + n, f"steady-{n}"))))
        await asyncio.sleep(1 / RATE_PER_S)
    return list(await asyncio.gather(*sent))


async def timed(http: httpx.AsyncClient, webhook: Webhook) -> Timed:
    sent_at = time.monotonic()
    answer = await send(http, webhook)
    return Timed(answer, sent_at, time.monotonic())


async def watch_health(http: httpx.AsyncClient, stop: asyncio.Event) -> list[tuple[float, int, str, str | None]]:
    """/health every 0.5 s: (time, status code, postgres check, Retry-After)."""
    seen = []
    while not stop.is_set():
        response = await http.get("/health")
        seen.append((time.monotonic(), response.status_code, response.json()["checks"]["postgres"]["status"],
                     response.headers.get("retry-after")))
        await asyncio.sleep(0.5)
    return seen


async def stop_postgres_for_a_while(postgres: PrivatePostgres, outage: Outage) -> None:
    await asyncio.sleep(BEFORE_S)
    await asyncio.to_thread(postgres.stop)
    outage.down_at = time.monotonic()  # once the server is gone: a busy machine takes a while to stop it
    await asyncio.sleep(OUTAGE_S)
    outage.restart_at = time.monotonic()
    await asyncio.to_thread(postgres.start)
    outage.up_at = time.monotonic()
    await asyncio.sleep(AFTER_S)


def wrong(timed_answer: Timed) -> bool:
    """Anything but 2xx, or 503 with a usable Retry-After, is a wrong answer under an outage."""
    answer = timed_answer.answer
    if answer.accepted:
        return answer.status != 202 or not answer.task
    retry_after = answer.retry_after or ""
    return answer.status != 503 or not (retry_after.isdigit() and 0 < int(retry_after) <= RETRY_AFTER_MAX_S)


async def stored_deliveries(url: str) -> dict[str, str | None]:
    """delivery id -> the key of its task (None: a delivery row without a task)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT delivery_id, task_id FROM webhook_deliveries WHERE source = 'sentry'")
        return {r["delivery_id"]: (f"FF-{r['task_id']}" if r["task_id"] else None) for r in rows}
    finally:
        await conn.close()


async def task_keys(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [f"FF-{i}" for i in await conn.fetchval("SELECT array_agg(id) FROM tasks") or []]
    finally:
        await conn.close()


async def relayed(url: str, redis_url: str, settings: Settings) -> tuple[int, int]:
    """(rows left in the outbox, tasks on the planning queue) once the relay has caught up: its
    Postgres connections died with the server, and it must carry on with new ones by itself."""
    conn = await asyncpg.connect(url)
    redis = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + RELAY_CATCH_UP_S
        while (left := await conn.fetchval("SELECT count(*) FROM outbox")) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return left, len({task_id for task_id, _ in await make_queues(redis, settings)["planning"].entries()})
    finally:
        await conn.close()
        await redis.aclose()


def first_accepted_after(answers: list[Timed], moment: float) -> float | None:
    """Seconds from `moment` until a webhook sent after it was accepted again."""
    later = [t.answered_at - moment for t in answers if t.sent_at >= moment and t.answer.accepted]
    return round(min(later), 2) if later else None


async def test_postgres_outage_is_answered_503_and_the_ingress_recovers_by_itself(
    private_postgres: PrivatePostgres, redis_url: str, tmp_path
) -> None:
    async with Redis.from_url(redis_url) as flush:
        await flush.flushdb()
    settings = chaos_settings(private_postgres.url, redis_url, tmp_path / "home")
    outage = Outage()
    with running_ingress(settings) as url:
        async with client(url, 64) as http:
            stop = asyncio.Event()
            load = asyncio.create_task(steady_load(http, stop))
            health = asyncio.create_task(watch_health(http, stop))
            await stop_postgres_for_a_while(private_postgres, outage)
            stop.set()
            answers, health_seen = await load, await health

            stored_before = await stored_deliveries(private_postgres.url)
            refused = [t.answer.webhook for t in answers if t.answer.status == 503]
            redelivered = await send_all(http, refused, 16)  # the senders come back after Retry-After
            again = await send_all(http, refused, 16)  # and a sender's own retry, once more
            stored_after = await stored_deliveries(private_postgres.url)
            keys = await task_keys(private_postgres.url)
            outbox_left, queued = await relayed(private_postgres.url, redis_url, settings)

    during = [t for t in answers if outage.down_at + 0.5 <= t.sent_at and t.answered_at <= outage.restart_at]
    accepted = [t.answer for t in answers if t.answer.accepted]
    lost = [a.webhook.delivery for a in accepted if stored_before.get(a.webhook.delivery) != a.task]
    stored_though_refused = [w.delivery for w in refused if w.delivery in stored_before]
    redelivery_tasks = {a.webhook.delivery: a.task for a in redelivered}
    duplicated = len(keys) - len(set(stored_after.values()) - {None})
    health_down = [h for h in health_seen if outage.down_at + 1 <= h[0] <= outage.restart_at]
    health_after = [h for h in health_seen if h[0] > outage.up_at + 3]
    figures = report(
        "postgres_outage",
        faults_injected=1,
        outage_s=OUTAGE_S,
        webhooks_sent=len(answers),
        redeliveries_sent=len(redelivered) + len(again),
        statuses=status_counts(t.answer for t in answers),
        statuses_during_outage=status_counts(t.answer for t in during),
        statuses_of_redeliveries=status_counts(redelivered),
        statuses_of_second_redeliveries=status_counts(again),
        tasks=len(keys),
        lost=len(lost),
        duplicated=duplicated,
        stored_though_answered_503=len(stored_though_refused),
        outbox_left=outbox_left,
        queued_for_planning=queued,
        wrong_status_codes=sum(wrong(t) for t in answers),
        recovered_after_s=first_accepted_after(answers, outage.up_at),
        health_during_outage=dict(Counter(str(h[1]) for h in health_down)),
        health_after=dict(Counter(str(h[1]) for h in health_after)),
    )
    assert figures["wrong_status_codes"] == 0, [(t.answer.status, t.answer.body) for t in answers if wrong(t)][:5]
    assert during and all(t.answer.status == 503 for t in during), (
        "nothing can be stored while Postgres is down",
        [(t.answer.status, round(t.sent_at - outage.down_at, 2)) for t in during if t.answer.status != 503][:5])
    assert lost == [], "a webhook answered 2xx must be stored with the task it was told"
    assert stored_though_refused == [], "a webhook answered 503 must not have been stored"
    assert all(a.status == 202 and a.task for a in redelivered), "a refused delivery, sent again, makes its task"
    assert all(a.status == 200 and a.body.get("status") == "duplicate" and a.task == redelivery_tasks[a.webhook.delivery]
               for a in again), "a delivery is accepted once"
    assert duplicated == 0 and len(keys) == len(accepted) + len(refused)
    assert outbox_left == 0 and queued == len(keys), "the relay recovers too: every task reaches its queue"
    assert figures["recovered_after_s"] is not None, "the ingress must accept webhooks again without a restart"
    assert all(t.answer.accepted for t in answers if t.sent_at >= outage.up_at + 2), "recovered for good"
    assert health_down and all(h[1] == 503 and h[2] == "down" and h[3] for h in health_down)
    assert health_after and all(h[1] == 200 and h[2] == "ok" for h in health_after)
