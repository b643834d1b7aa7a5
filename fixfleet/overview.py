"""What the platform is doing right now: agents by role and state, queues, scaling, recent tasks.

Every agent writes a heartbeat line to one Redis hash (AGENTS_KEY); the pools' autoscaling
policy keeps its decisions in a Redis list (SCALE_DECISIONS_KEY). `fixfleet status`, the live
line of `fixfleet up` and /health read them here; nothing needs Ray to be reachable.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from fixfleet.queue import Depth
from fixfleet.services import AGENTS_KEY, SCALE_DECISIONS_KEY, Services
from fixfleet.store import StoreError

AgentState = Literal["busy", "idle", "draining", "lost"]


class Heartbeat(BaseModel):
    """One agent's line in AGENTS_KEY, written every lease/3 seconds."""

    name: str
    role: str = "agent"
    busy_with: int | None = None  # the task id in hand
    busy_since: float | None = None
    draining: bool = False  # retiring: claims nothing more, finishes its task
    done: int = 0
    failed: int = 0
    pid: int | None = None
    started: float | None = None  # when its process started: with `pid`, which process it is
    node: str | None = None  # where that process runs (fixfleet.processes.this_node)
    at: float = 0.0

    @classmethod
    def parse(cls, name: str, value: bytes | str) -> Heartbeat:
        try:
            return cls.model_validate({"name": name, **json.loads(value)})
        except (ValueError, TypeError, ValidationError):
            return cls(name=name)  # unreadable: shown as lost

    def state(self, now: float, stale_after_s: float) -> AgentState:
        if now - self.at > stale_after_s:
            return "lost"
        if self.draining:
            return "draining"
        return "busy" if self.busy_with is not None else "idle"


class AgentView(BaseModel):
    name: str
    role: str
    state: AgentState
    task: str | None  # its key
    busy_for_s: float | None
    done: int
    failed: int
    seen_s_ago: float


class Decision(BaseModel):
    queue: str
    current: int
    replicas: int
    depth: int
    reason: str
    at: float


class TaskLine(BaseModel):
    key: str
    status: str
    repo: str
    title: str
    updated_at: str


class Overview(BaseModel):
    pools: dict[str, dict[str, int]]  # role -> state -> agents
    agents: list[AgentView]
    queues: dict[str, dict[str, int]]  # queue -> waiting/pending/delayed/dead
    decisions: list[Decision]  # newest first
    tasks: list[TaskLine]  # most recently updated first
    # Completed tasks' pull requests: completed, merged, closed, open, merge_rate, median_merge_s.
    outcomes: dict[str, float | int | None] = {}


async def heartbeats(redis: Redis) -> list[Heartbeat]:
    lines = await redis.hgetall(AGENTS_KEY)
    return sorted((Heartbeat.parse(name.decode(), value) for name, value in lines.items()), key=lambda b: b.name)


async def scale_decisions(redis: Redis, limit: int = 10) -> list[Decision]:
    decisions = []
    for entry in await redis.lrange(SCALE_DECISIONS_KEY, 0, limit - 1):
        try:
            decisions.append(Decision.model_validate_json(entry))
        except ValidationError:
            continue
    return decisions


async def gather(services: Services, *, tasks: int = 10, now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    stale_after_s = 3 * services.settings.lease_s
    beats = await heartbeats(services.redis)
    keys = {b.busy_with: await task_key(services, b.busy_with) for b in beats if b.busy_with is not None}
    agents = [AgentView(name=b.name, role=b.role, state=b.state(now, stale_after_s), task=keys.get(b.busy_with or 0),
                        busy_for_s=now - b.busy_since if b.busy_since else None, done=b.done, failed=b.failed,
                        seen_s_ago=max(0.0, now - b.at)) for b in beats]
    pools: dict[str, dict[str, int]] = {}
    for agent in agents:
        pool = pools.setdefault(agent.role, {})
        pool[agent.state] = pool.get(agent.state, 0) + 1
    depths: dict[str, Depth] = {name: await queue.depth() for name, queue in services.queues.items()}
    recent = await services.store.list_tasks(limit=tasks)
    return Overview(
        pools=pools, agents=agents,
        queues={name: {"waiting": d.waiting, "pending": d.pending, "delayed": d.delayed, "dead": d.dead}
                for name, d in depths.items()},
        decisions=await scale_decisions(services.redis),
        tasks=[TaskLine(key=t.key, status=t.status, repo=t.repo, title=t.title, updated_at=t.updated_at.isoformat())
               for t in recent],
        outcomes=(await services.store.outcome_figures()).as_dict(),
    )


async def task_key(services: Services, task_id: int) -> str:
    try:
        return (await services.store.get_task(task_id)).key
    except StoreError:  # gone since the beat was written
        return f"#{task_id}"


def summary_line(overview: Overview) -> str:
    """One line for `fixfleet up`'s live display."""
    pools = " · ".join(f"{role} " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
                       for role, states in sorted(overview.pools.items())) or "no agents yet"
    queues = " · ".join(f"{name} {d['waiting']} waiting/{d['pending']} running/{d['delayed']} delayed"
                        for name, d in overview.queues.items())
    done = sum(agent.done for agent in overview.agents)
    return f"{pools} · {queues} · {done} tasks handled"
