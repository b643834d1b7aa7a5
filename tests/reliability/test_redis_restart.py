"""Redis killed (kill -9) and started again EMPTY, twice, while 500 signed Sentry alerts arrive.

The promise: every alert answered 2xx becomes one task that ends COMPLETED. Postgres is the
truth; the queues are rebuilt from it by the reconciler, which the ingress's outbox relay runs
every `reconcile_s`. Real workers (fixfleet.worker.Worker) consume the real queues; only the
agents' work is a stand-in, moving each task through its real store transitions, and a person
approves each plan through the task API.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis

from fixfleet.models import TaskStatus
from fixfleet.queue import Job
from fixfleet.services import make_queues
from fixfleet.store import Store
from fixfleet.worker import Worker
from tests.ingress_server import running_ingress
from tests.reliability.harness import (
    TOKEN,
    Answer,
    PrivateRedis,
    Webhook,
    chaos_settings,
    client,
    empty_tables,
    report,
    send,
    sentry_alert,
    status_counts,
)

pytestmark = pytest.mark.chaos
WEBHOOKS = 500
RATE_PER_S = 80  # they arrive over about 6 s, so both restarts fall among them
RESTART_AFTER = (150, 325)  # kill Redis once this many webhooks were answered
DOWN_S = 1.0  # how long Redis stays dead each time
CONSUMERS = 3  # per queue
DEADLINE_S = 120.0
WORK_S = 0.05  # the stand-in's "work": slower than arrivals, so entries wait in Redis when it dies
REQUEUED = re.compile(r"reconciler re-enqueued (\d+) task")

S = TaskStatus


def stand_in_for_agent_work(store: Store) -> Callable[[Job], Awaitable[None]]:
    """The test's stand-in for the planner and executor agents: no model, no repository, only each
    task's real store transitions (what a real agent does around its work), so that what is tested
    is the durability of queues and store, not agent work."""

    async def work(job: Job) -> None:
        task = await store.get_task(job.task_id)
        if job.message.queue == "planning" and task.status in (S.RECEIVED, S.REVISING, S.PLANNING):
            await store.transition(task.id, S.PLANNING, actor="stand-in planner", reason="claimed")
            await asyncio.sleep(WORK_S)
            await store.transition(task.id, S.AWAITING_APPROVAL, actor="stand-in planner", reason="plan written",
                                   changes={"plan_version": task.plan_version + 1, "plan": {"root_cause": "stand-in"}})
        elif job.message.queue == "execution" and task.status in (S.APPROVED, S.EXECUTING):
            await store.transition(task.id, S.EXECUTING, actor="stand-in executor", reason="claimed")
            await asyncio.sleep(WORK_S)
            await store.transition(task.id, S.COMPLETED, actor="stand-in executor", reason="fix pushed")
        # Otherwise another consumer already took this task further (an entry queued twice, as at
        # least once delivery allows): there is nothing left to do for it here.

    return work


async def approve_plans(http: httpx.AsyncClient, stop: asyncio.Event) -> int:
    """A person approving every plan waiting for it, through the task API."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    approved = 0
    while not stop.is_set():
        page = await http.get("/tasks", params={"status": "AWAITING_APPROVAL", "limit": 500}, headers=headers)
        for task in page.json()["items"] if page.status_code == 200 else []:
            answer = await http.post(f"/tasks/{task['key']}/approve", json={"plan_version": task["plan_version"]},
                                     headers=headers)
            approved += answer.status_code == 200
        await asyncio.sleep(0.2)
    return approved


async def deliver(http: httpx.AsyncClient, webhook: Webhook, gate: asyncio.Semaphore) -> tuple[Answer, int]:
    """Like a sender: a 503 is delivered again after its Retry-After. Returns the last answer and
    how many times it was sent."""
    sends = 0
    while True:
        async with gate:
            answer = await send(http, webhook)
            sends += 1
        if answer.status != 503 or sends >= 20:
            return answer, sends
        await asyncio.sleep(min(float(answer.retry_after or 1), 1.0))  # the test waits less than it is told


async def restart_redis_while_answering(redis_server: PrivateRedis, answered: Callable[[], int]) -> list[float]:
    """kill -9, DOWN_S dead, start EMPTY: once per threshold of answered webhooks."""
    restarts = []
    for threshold in RESTART_AFTER:
        while answered() < threshold:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(redis_server.kill)
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(redis_server.start)
        restarts.append(time.monotonic())
    return restarts


async def statuses_of(store: Store, keys: list[str]) -> dict[str, S]:
    rows = await store.pool.fetch("SELECT id, status FROM tasks WHERE id = ANY($1::bigint[])",
                                  [int(k.removeprefix("FF-")) for k in keys])
    return {f"FF-{r['id']}": S(r["status"]) for r in rows}


async def wait_until_completed(store: Store, keys: list[str]) -> dict[str, S]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = await statuses_of(store, keys)
        if all(found.get(k) == S.COMPLETED for k in keys) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.25)


def requeued_by_reconciler(caplog: pytest.LogCaptureFixture) -> int:
    """How many queue entries the reconciler (in the ingress's relay) put back, from its log."""
    return sum(int(m[1]) for r in caplog.records if (m := REQUEUED.search(r.getMessage())))


async def test_every_accepted_webhook_completes_across_redis_restarts(
    private_redis: PrivateRedis, database_url: str, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fixfleet.outbox")
    await empty_tables(database_url)
    settings = chaos_settings(database_url, private_redis.url, tmp_path / "home", reconcile_s=0.5)
    started = time.monotonic()
    with running_ingress(settings) as url:
        store = await Store.connect(database_url, max_size=10)
        redis = Redis.from_url(private_redis.url)
        queues = make_queues(redis, settings)
        stop = asyncio.Event()
        work = stand_in_for_agent_work(store)
        workers = [Worker(queues[name], store, work, f"{name}-{i}") for name in queues for i in range(CONSUMERS)]
        running = [asyncio.create_task(w.run(stop, block_s=0.2)) for w in workers]
        try:
            async with client(url, 32) as http:
                approver = asyncio.create_task(approve_plans(http, stop))
                answered: list[tuple[Answer, int]] = []
                faults = asyncio.create_task(restart_redis_while_answering(private_redis, lambda: len(answered)))
                gate = asyncio.Semaphore(8)

                async def one(n: int) -> None:
                    await asyncio.sleep(n / RATE_PER_S)
                    answered.append(await deliver(http, sentry_alert(900_000 + n, f"restart-{n}"), gate))

                await asyncio.gather(*(one(n) for n in range(WEBHOOKS)))
                restarts = await faults
                accepted = [a for a, _ in answered if a.accepted]
                keys = [a.task for a in accepted if a.task]
                final = await wait_until_completed(store, keys)
                stop.set()
                approvals = await approver
            counts = await store.pool.fetchrow(
                "SELECT count(*) AS tasks, count(DISTINCT external_ids ->> 'sentry_issue') AS issues,"
                " count(*) FILTER (WHERE status = 'COMPLETED') AS completed FROM tasks")
        finally:
            stop.set()
            await asyncio.gather(*running, return_exceptions=True)
            await redis.aclose()
            await store.close()

    lost = [k for k in keys if final.get(k) != S.COMPLETED]
    figures = report(
        "redis_restart",
        faults_injected=len(restarts),
        redis_down_s_each=DOWN_S,
        webhooks_sent=WEBHOOKS,
        sends_including_redeliveries=sum(n for _, n in answered),
        statuses=status_counts(a for a, _ in answered),
        accepted=len(accepted),
        tasks=counts["tasks"],
        completed=counts["completed"],
        approvals=approvals,
        requeued_by_reconciler=requeued_by_reconciler(caplog),
        lost=len(lost),
        lost_states=dict(Counter(str(final.get(k)) for k in lost)),
        duplicated=counts["tasks"] - counts["issues"],
        wrong_status_codes=sum(1 for a, _ in answered if not a.accepted),
        seconds_to_complete_all=round(time.monotonic() - started, 1),
        seconds_after_last_restart=round(time.monotonic() - restarts[-1], 1) if restarts else None,
    )
    assert figures["faults_injected"] == len(RESTART_AFTER)
    assert figures["requeued_by_reconciler"] > 0, "the restarts emptied queues that held entries"
    assert figures["wrong_status_codes"] == 0, [a.body for a, _ in answered if not a.accepted][:5]
    assert len(keys) == WEBHOOKS == len(set(keys)), "each alert (its own issue) makes its own task"
    assert lost == [], f"accepted but not completed: {lost[:10]}"
    assert figures["duplicated"] == 0 and counts["tasks"] == WEBHOOKS
