"""The platform's Prometheus metrics, the same whichever ingress replica serves /metrics.

Counters (webhooks, API calls) live in Redis: each replica counts locally and adds its counts to
Redis every second and before it answers a scrape, so a scrape sees every replica's counts up
to about a second old. Gauges (tasks by status, queue depths, agents by role and state, the
model credential's time left) are read from Postgres and Redis at scrape time, and so are the
outcomes of completed tasks' pull requests (ai_agent_outcomes_total, ai_agent_time_to_merge_seconds:
counted over the tasks the store keeps).

The seed's metric contract is served here too, with the seed's label values, read at scrape time
like the gauges: ai_agent_tasks_started_total{agent}, ai_agent_tasks_completed_total{agent,status},
ai_agent_task_duration_seconds{agent,status} and ai_agent_errors_total{agent,error_type} from the
audit trail (`agent` planning|executor, `status` success|failed, `error_type`
timeout|session|setup|verification|other: fixfleet/store/agent_figures.py), and
ai_agent_queue_length{queue_name} (planning_queue|execution_queue: waiting, in hand or delayed)
from the queues' depths. The agents' own metrics (ai_agent_*, agent planner|executor) go through
Ray's metrics (actors/metrics.py), which Ray exports with a `ray_` prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis.asyncio import Redis

from fixfleet.overview import heartbeats
from fixfleet.queue import Depth, Queue
from fixfleet.store import Store
from fixfleet.store.agent_figures import DURATION_BUCKETS as AGENT_DURATION_BUCKETS

COUNTERS = {  # name -> (metric, help, labels)
    "webhooks": ("fixfleet_webhooks", "Webhook deliveries by source and outcome", ("source", "outcome")),
    "api_calls": ("fixfleet_api_requests", "Task API calls by operation", ("operation",)),
}
KEY = "fixfleet:metrics:{}"  # Redis hash per counter: "label|label" -> count
FLUSH_S = 1.0


class Metrics:
    def __init__(self) -> None:
        self._pending: Counter[tuple[str, tuple[str, ...]]] = Counter()

    def count(self, name: str, *labels: str) -> None:
        assert name in COUNTERS and len(labels) == len(COUNTERS[name][2]), (name, labels)
        self._pending[(name, labels)] += 1

    async def flush(self, redis: Redis) -> None:
        pending, self._pending = self._pending, Counter()
        if not pending:
            return
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for (name, labels), n in pending.items():
                    pipe.hincrby(KEY.format(name), "|".join(labels), n)
                await pipe.execute()
        except Exception:
            self._pending.update(pending)  # Redis away: kept for the next flush
            raise

    async def flush_every(self, redis: Redis, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_S)
            with suppress(Exception):  # the counts stay pending; /health reports Redis
                await self.flush(redis)

    async def render(self, store: Store, queues: dict[str, Queue], redis: Redis, *, lease_s: float,
                     credential_seconds_left: float | None) -> bytes:
        await self.flush(redis)
        families: list[Metric] = [await _counter(redis, name) for name in COUNTERS]
        depth = GaugeMetricFamily("fixfleet_queue_depth", "Queue entries by queue and state", labels=["queue", "state"])
        depths = {name: await queue.depth() for name, queue in queues.items()}
        for name, found in depths.items():
            for state in ("waiting", "pending", "delayed", "dead"):
                depth.add_metric([name, state], getattr(found, state))
        tasks = GaugeMetricFamily("fixfleet_tasks", "Tasks by status", labels=["status"])
        for row in await store.pool.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status"):
            tasks.add_metric([row["status"]], row["n"])
        agents = GaugeMetricFamily("fixfleet_agents", "Agents by role and state (from their heartbeats)",
                                   labels=["role", "state"])
        now = time.time()
        for (role, state), n in Counter((b.role, b.state(now, 3 * lease_s)) for b in await heartbeats(redis)).items():
            agents.add_metric([role, state], n)
        families += [depth, tasks, agents, *await outcome_families(store), *await agent_families(store, depths)]
        if credential_seconds_left is not None:
            families.append(GaugeMetricFamily("fixfleet_model_credential_seconds_left",
                                              "Seconds until the model credential expires", value=credential_seconds_left))
        return generate_latest(_Registry(families))


async def outcome_families(store: Store) -> list[Metric]:
    """What became of completed tasks' pull requests, and how long merges took after completion."""
    figures = await store.outcome_figures()
    outcomes = CounterMetricFamily("ai_agent_outcomes", "Completed tasks by what became of their pull request",
                                   labels=["outcome"])
    for outcome in ("merged", "closed", "open"):
        outcomes.add_metric([outcome], getattr(figures, outcome))
    buckets = [(f"{bound:g}", count) for bound, count in figures.merge_buckets] + [("+Inf", figures.merged)]
    merge = HistogramMetricFamily("ai_agent_time_to_merge_seconds",
                                  "Seconds from a task's completion to its pull request's merge",
                                  buckets=buckets, sum_value=figures.merge_seconds_sum)
    return [outcomes, merge]


async def agent_families(store: Store, depths: dict[str, Depth]) -> list[Metric]:
    """The seed's five agent metrics with the seed's label values: steps begun and ended, their
    durations and the failures by kind from the audit trail; the queues' lengths from their depths."""
    figures = await store.agent_figures()
    started = CounterMetricFamily("ai_agent_tasks_started", "Steps begun (a task entering PLANNING or EXECUTING)",
                                  labels=["agent"])
    for agent, n in figures.started.items():
        started.add_metric([agent], n)
    completed = CounterMetricFamily("ai_agent_tasks_completed", "Steps ended: success (a plan awaiting approval, "
                                    "a completed fix) or failed", labels=["agent", "status"])
    for (agent, status), n in figures.completed.items():
        completed.add_metric([agent, status], n)
    duration = HistogramMetricFamily("ai_agent_task_duration_seconds", "Seconds from a step's start to its end",
                                     labels=["agent", "status"])
    for (agent, status), found in figures.durations.items():
        buckets = [(f"{bound:g}", n) for bound, n in zip(AGENT_DURATION_BUCKETS, found.buckets, strict=True)]
        duration.add_metric([agent, status], [*buckets, ("+Inf", found.count)], found.seconds_sum)
    errors = CounterMetricFamily("ai_agent_errors", "Failed attempts (retried or final) by kind",
                                 labels=["agent", "error_type"])
    for (agent, error_type), n in figures.errors.items():
        errors.add_metric([agent, error_type], n)
    length = GaugeMetricFamily("ai_agent_queue_length", "Tasks waiting, in hand or delayed, by queue",
                               labels=["queue_name"])
    for name, found in depths.items():
        length.add_metric([f"{name}_queue"], found.work)
    return [started, completed, duration, errors, length]


async def _counter(redis: Redis, name: str) -> CounterMetricFamily:
    metric, help_text, labels = COUNTERS[name]
    family = CounterMetricFamily(metric, help_text, labels=list(labels))
    for field, value in sorted((await redis.hgetall(KEY.format(name))).items()):
        family.add_metric(field.decode().split("|"), int(value))
    return family


class _Registry(CollectorRegistry):
    """One scrape's families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)
