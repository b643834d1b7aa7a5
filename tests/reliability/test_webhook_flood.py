"""A flood of signed webhooks: 30 % redeliveries (the same delivery id again), 10 % duplicate
events (another delivery id about the same thing, sent at the same moment: the same Sentry issue
alerting twice, GitHub's issues.opened + issues.labeled for one issue).

The promise: exactly one task per external thing, every delivery answered with that task, and
no 5xx. Size: 10,000 webhooks (about 40 s here: client and ingress share one process on 2 cores);
FIXFLEET_CHAOS_SCALE=<n> sends n instead (a quick run), =full the 10,000. Printed as `size`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import asyncpg
import pytest
from redis.asyncio import Redis

from tests.ingress_server import running_ingress
from tests.reliability.harness import (
    Answer,
    Webhook,
    chaos_settings,
    client,
    empty_tables,
    github_issue,
    report,
    send,
    sentry_alert,
    status_counts,
)

pytestmark = pytest.mark.chaos
FULL_SIZE = 10_000
REDELIVERED, DUPLICATE_EVENTS = 0.30, 0.10
SENDERS = 48  # bursts in flight at once
MAX_BURST = 4  # connections per sender: a burst is a first delivery, its twin and a few redeliveries


def flood_size() -> tuple[int, str]:
    """(webhooks, how the size was chosen) from FIXFLEET_CHAOS_SCALE."""
    scale = os.environ.get("FIXFLEET_CHAOS_SCALE", "").strip().lower()
    if scale.isdigit() and int(scale) >= 10:
        return int(scale), f"FIXFLEET_CHAOS_SCALE={scale}"
    return FULL_SIZE, "full" + (" (FIXFLEET_CHAOS_SCALE=full)" if scale == "full" else " (the default)")


@dataclass
class Flood:
    """Bursts of webhooks; a burst's members are sent at the same moment."""

    bursts: list[list[Webhook]] = field(default_factory=list)
    things: set[str] = field(default_factory=set)
    deliveries: set[str] = field(default_factory=set)
    redeliveries: int = 0
    duplicate_events: int = 0

    @property
    def webhooks(self) -> int:
        return sum(len(b) for b in self.bursts)


def first_event(n: int) -> Webhook:
    """Thing n's first delivery: a Sentry alert for issue n, or GitHub issue n opened (alternately)."""
    return sentry_alert(100_000 + n, f"alert-{n}") if n % 2 else github_issue(n, f"gh-{n}-opened")


def duplicate_event(n: int) -> Webhook:
    """Another delivery about thing n: the issue alerts again, or GitHub's issues.labeled."""
    return sentry_alert(100_000 + n, f"alert-{n}-again") if n % 2 else github_issue(n, f"gh-{n}-labeled", "labeled")


def plan_flood(size: int, rng: random.Random) -> Flood:
    redeliveries, duplicates = round(size * REDELIVERED), round(size * DUPLICATE_EVENTS)
    things = size - redeliveries - duplicates
    flood = Flood(redeliveries=redeliveries, duplicate_events=duplicates)
    twinned = set(rng.sample(range(things), duplicates))
    burst_of: dict[str, list[Webhook]] = {}  # delivery id -> the burst it is first sent in
    for n in range(things):
        burst = [first_event(n)] + ([duplicate_event(n)] if n in twinned else [])
        flood.bursts.append(burst)
        burst_of.update((w.delivery, burst) for w in burst)
    sent_once = [w for burst in flood.bursts for w in burst]
    for webhook in rng.choices(sent_once, k=redeliveries):
        if rng.random() < 0.5:  # the sender retried at once (a timeout on its side): concurrent
            burst_of[webhook.delivery].append(webhook)
        else:  # retried later
            flood.bursts.insert(rng.randrange(len(flood.bursts) + 1), [webhook])
    flood.things = {w.thing for w in sent_once}
    flood.deliveries = {w.delivery for w in sent_once}
    return flood


async def send_flood(url: str, flood: Flood) -> list[Answer]:
    """SENDERS senders, each with its own small httpx client (one big pool spends its time
    choosing among its connections), each sending a burst's members at the same moment."""
    answers: list[Answer] = []
    queue: asyncio.Queue[list[Webhook]] = asyncio.Queue()
    for burst in flood.bursts:
        queue.put_nowait(burst)

    async def sender() -> None:
        async with client(url, MAX_BURST) as http:
            while not queue.empty():
                burst = queue.get_nowait()
                answers.extend(await asyncio.gather(*(send(http, w) for w in burst)))

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return answers


async def tasks_by_thing(database_url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, coalesce('sentry_issue:' || (external_ids ->> 'sentry_issue'),"
            " 'github_issue:' || (external_ids ->> 'github_issue')) AS thing FROM tasks")
    finally:
        await conn.close()
    found: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        found[row["thing"]].append(f"FF-{row['id']}")
    return found


def tasks_named(answers: list[Answer], key: str) -> dict[str, set[str | None]]:
    """delivery id (or thing) -> every task the answers to it named."""
    named: dict[str, set[str | None]] = defaultdict(set)
    for answer in answers:
        named[getattr(answer.webhook, key)].add(answer.task)
    return named


async def test_flood_of_redeliveries_and_duplicate_events_makes_one_task_per_thing(
    database_url: str, redis_url: str, tmp_path
) -> None:
    size, chosen = flood_size()
    flood = plan_flood(size, random.Random(20240611))
    await empty_tables(database_url)
    async with Redis.from_url(redis_url) as redis:
        await redis.flushdb()
    settings = chaos_settings(database_url, redis_url, tmp_path / "home")
    with running_ingress(settings) as url:
        started = time.monotonic()
        answers = await send_flood(url, flood)
        seconds = time.monotonic() - started
    found = await tasks_by_thing(database_url)
    async with Redis.from_url(redis_url) as redis:
        await redis.flushdb()

    per_delivery, per_thing = tasks_named(answers, "delivery"), tasks_named(answers, "thing")
    duplicated = {thing: keys for thing, keys in found.items() if len(keys) > 1}
    missing = flood.things - set(found)
    split = [d for d, keys in per_delivery.items() if len(keys) != 1]
    told_other_task = [t for t, keys in per_thing.items() if keys != set(found.get(t, [])[:1]) or len(found.get(t, [])) != 1]
    figures = report(
        "webhook_flood",
        size=size,
        size_chosen=chosen,
        faults_injected=flood.redeliveries + flood.duplicate_events,
        webhooks_sent=len(answers),
        redeliveries=flood.redeliveries,
        duplicate_events=flood.duplicate_events,
        unique_deliveries=len(flood.deliveries),
        external_things=len(flood.things),
        statuses=status_counts(answers),
        outcomes=dict(sorted(Counter(str(a.body.get("status")) for a in answers).items())),
        tasks=sum(len(keys) for keys in found.values()),
        lost=len(missing),
        duplicated=sum(len(keys) - 1 for keys in duplicated.values()),
        deliveries_answered_with_two_tasks=len(split),
        things_answered_with_another_task=len(told_other_task),
        wrong_status_codes=sum(1 for a in answers if not a.accepted),
        server_errors=sum(1 for a in answers if a.status >= 500 or a.status == 0),
        seconds=round(seconds, 1),
        webhooks_per_s=round(len(answers) / seconds),
    )
    assert len(answers) == size
    assert figures["server_errors"] == 0 and figures["wrong_status_codes"] == 0, [
        (a.status, a.error or a.body) for a in answers if not a.accepted][:5]
    assert missing == set(), f"things without a task: {sorted(missing)[:5]}"
    assert split == [], f"a redelivery was answered with another task: {split[:5]}"
    assert duplicated == {}, f"one task per external thing; {len(duplicated)} have more: {list(duplicated.items())[:3]}"
    assert told_other_task == []
    assert figures["statuses"].get("202") == len(flood.things), "each thing created once (202), the rest 200"
