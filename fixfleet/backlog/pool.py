"""The agent pools and their queues over time, read from a running fixfleet's /metrics (every
ingress replica gives the same answer), so a notebook can show the executor pool growing with the
backlog and shrinking after it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from fixfleet.backlog.tables import as_table

LIVE = {"idle", "busy", "draining"}  # a "lost" heartbeat is no agent


class PoolSample(BaseModel):
    at: datetime
    executors: int  # live executor replicas
    busy_executors: int
    planners: int
    execution_queue: int  # waiting + in hand + delayed: what the autoscaling policy follows
    planning_queue: int


async def read_pool(client: httpx.AsyncClient, url: str) -> PoolSample:
    answer = await client.get(f"{url.rstrip('/')}/metrics")
    answer.raise_for_status()
    agents: dict[tuple[str, str], float] = {}
    queues: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "fixfleet_agents":
                agents[(sample.labels["role"], sample.labels["state"])] = sample.value
            elif sample.name == "fixfleet_queue_depth" and sample.labels["state"] != "dead":
                queues[sample.labels["queue"]] = queues.get(sample.labels["queue"], 0) + sample.value
    live = lambda role: int(sum(n for (r, state), n in agents.items() if r == role and state in LIVE))  # noqa: E731
    return PoolSample(at=datetime.now(UTC), executors=live("executor"), planners=live("planner"),
                      busy_executors=int(agents.get(("executor", "busy"), 0)),
                      execution_queue=int(queues.get("execution", 0)), planning_queue=int(queues.get("planning", 0)))


class PoolRecorder:
    """Samples the pools every `every_s` while a run goes on: `async with PoolRecorder(url) as pool:`."""

    def __init__(self, url: str, every_s: float = 2.0) -> None:
        self.url, self.every_s = url, every_s
        self.samples: list[PoolSample] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PoolRecorder:
        self._task = asyncio.create_task(self._record())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _record(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):  # a missed sample is a gap in the plot, not a failure
                    self.samples.append(await read_pool(client, self.url))
                await asyncio.sleep(self.every_s)

    def table(self) -> object:
        """A pandas DataFrame when pandas is installed, else the list of rows."""
        return as_table([s.model_dump() for s in self.samples])
