"""The pools' autoscaling policy: what it decides for a depth, and that it reads the real queue."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from redis.asyncio import Redis

from fixfleet.queue import Queue
from fixfleet.services import SCALE_DECISIONS_KEY
from serve_app.autoscaling import QueueDepthPolicy, decide, latest_reported

POOL = {"minimum": 2, "maximum": 8, "tasks_per_replica": 2, "scale_down_after_s": 300.0}


def test_grows_at_once_with_the_queue_and_never_past_the_maximum() -> None:
    assert decide(5, 2, idle_since=None, now=0, **POOL).replicas == 3  # ceil(5 / 2)
    assert decide(64, 3, idle_since=None, now=0, **POOL).replicas == 8
    assert decide(0, 2, idle_since=0, now=10_000, **POOL).replicas == 2  # never under the minimum


def test_shrinks_only_after_the_queue_was_empty_long_enough() -> None:
    busy = decide(1, 6, idle_since=None, now=100, **POOL)
    assert (busy.replicas, busy.reason) == (6, "holding: the queue has not been empty long enough")
    quiet_briefly = decide(0, 6, idle_since=0, now=299, **POOL)
    assert quiet_briefly.replicas == 6
    quiet = decide(0, 6, idle_since=0, now=301, **POOL)
    assert (quiet.replicas, quiet.reason) == (2, "queue empty for 301s")


def test_takes_the_newest_depth_a_replica_reported() -> None:
    point = lambda at, value: SimpleNamespace(timestamp=at, value=value)  # noqa: E731 - Serve's TimeStampedValue
    raw = {"queue_depth": {"r1": [point(1, 9), point(5, 4)], "r2": [point(3, 7)], "r3": []}}
    assert latest_reported(raw) == 4
    assert latest_reported({}) is None and latest_reported(None) is None


def context(current: int, raw: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(current_num_replicas=current, raw_metrics=raw or {})


async def test_reads_the_execution_stream_and_keeps_its_decisions(
        redis: Redis, queues: dict[str, Queue], monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    await queues["execution"].enqueue_many([(n, "normal") for n in range(1, 12)])  # 11 tasks waiting
    policy = QueueDepthPolicy("execution", minimum=2, maximum=8, tasks_per_replica=2, scale_down_after_s=300)
    policy(context(2))  # starts the first read of the stream
    for _ in range(50):
        await asyncio.sleep(0.05)
        replicas, stats = policy(context(2))
        if replicas != 2:
            break
    assert (replicas, stats) == (6, {"queue_depth": 11})
    await asyncio.sleep(0.2)
    await policy._redis.aclose()
    kept = [json.loads(entry) for entry in await redis.lrange(SCALE_DECISIONS_KEY, 0, -1)]
    assert kept[0] | {"at": 0} == {"queue": "execution", "replicas": 6, "current": 2, "depth": 11, "reason": "queue",
                                    "at": 0}


async def test_without_redis_in_the_controller_it_follows_the_replicas_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    policy = QueueDepthPolicy("execution", minimum=2, maximum=8, tasks_per_replica=2, scale_down_after_s=300)
    report = {"queue_depth": {"r1": [SimpleNamespace(timestamp=1.0, value=7)]}}
    assert policy(context(2, report)) == (4, {"queue_depth": 7})
