"""Which agents are gone, and handing their work over at once instead of after a lease.

An agent's claim on a queue entry outlives the agent when its process dies (killed, a power
cut, Ray gone): the entry waits for its lease to run out before another agent takes it over.
Here the claim is released as soon as the agent is known to be gone, from evidence that cannot
be wrong:
- the platform's list of agents (Serve's replicas, in any state, also draining) no longer
  names it: agent names carry their replica's id, which is never used again;
- its heartbeat names a process on this node that no longer runs (pid and start time: a
  reused pid is another process);
- its heartbeat is older than a bound far past its period.
A stale heartbeat alone (a long blocking call) or a live replica with a stuck loop is not
enough: such an agent keeps its claim until its lease runs out, as before. A wrong verdict costs
work, not correctness: the next agent takes the task over as after a lease (a guarded
transition and a versioned entry), and the old one stops when its claim or its task moves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from fixfleet.overview import Heartbeat, heartbeats
from fixfleet.processes import ProcessRef, this_node
from fixfleet.queue import Queue
from fixfleet.services import AGENTS_KEY

log = logging.getLogger(__name__)


class Roster(Protocol):
    """The agents the platform runs now (Serve's replicas of the agent deployments)."""

    async def agent_names(self) -> set[str] | None:
        """Their names, in any state (starting, running, draining); None when it cannot be known."""
        ...


@dataclass(frozen=True)
class Liveness:
    """What is known at one moment about which agents live."""

    beats: Mapping[str, Heartbeat]
    roster: frozenset[str] | None  # None: unknown (no roster, or it could not be read)
    stale_after_s: float
    node: str = field(default_factory=this_node)
    now: float = field(default_factory=time.time)

    @classmethod
    async def look(cls, redis: Redis, roster: Roster | None, *, stale_after_s: float) -> Liveness:
        names = await _roster_names(roster)
        beats = {beat.name: beat for beat in await heartbeats(redis)}
        return cls(beats, frozenset(names) if names else None, stale_after_s)

    def gone(self, agent: str) -> str | None:
        """Why `agent` is certainly gone, or None when it may be alive."""
        if self.roster is not None and agent not in self.roster:
            return "the platform no longer runs it"
        beat = self.beats.get(agent)
        if beat is None:
            return None
        if beat.node == self.node and beat.pid and beat.started and not ProcessRef(beat.pid, beat.started).alive():
            return f"its process {beat.pid} is gone"
        if beat.at and self.now - beat.at > self.stale_after_s:
            return f"no heartbeat for {self.now - beat.at:.0f}s"
        return None

    def left(self, agent: str | None, task_id: int, quiet_s: float) -> str | None:
        """Why `agent`, which claimed task `task_id` `quiet_s` seconds ago, no longer works on it:
        it is gone, or a heartbeat it wrote since then names no task or another."""
        if agent is None:
            return None
        if reason := self.gone(agent):
            return reason
        beat = self.beats.get(agent)
        if beat is not None and beat.at > self.now - quiet_s + 1.0 and beat.busy_with != task_id:
            return "its heartbeat since the claim says it works on something else"
        return None


async def release_gone(queues: Mapping[str, Queue], liveness: Liveness) -> dict[str, list[str]]:
    """Release every claim held by an agent that is gone; returns queue -> the agents released."""
    released: dict[str, list[str]] = {}
    for name, queue in queues.items():
        for agent in await queue.holders():
            reason = liveness.gone(agent)
            if reason is None:
                continue
            count = await queue.release(agent)
            if count:
                released.setdefault(name, []).append(agent)
                log.warning("%s held %d %s entr%s and is gone (%s): released for the next agent", agent, count, name,
                            "y" if count == 1 else "ies", reason)
    return released


async def forget_gone(redis: Redis, liveness: Liveness) -> list[str]:
    """Drop the heartbeat lines of agents that are gone and have been silent past the bound: a
    replica killed -9 never removes its own, and the status would list it as lost for ever."""
    forgotten = [name for name, beat in liveness.beats.items()
                 if liveness.now - beat.at > liveness.stale_after_s and liveness.gone(name)]
    if forgotten:
        await redis.hdel(AGENTS_KEY, *forgotten)
    return forgotten


async def _roster_names(roster: Roster | None) -> set[str] | None:
    if roster is None:
        return None
    try:
        return await roster.agent_names()
    except Exception as exc:  # no verdict from a roster that did not answer
        log.warning("the list of agents could not be read (%s); deciding from heartbeats only", exc)
        return None
