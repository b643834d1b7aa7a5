"""The agent pools follow their queue: a Serve autoscaling policy that reads stream depth.

Serve calls the policy in its controller every few seconds with an AutoscalingContext; it
answers how many replicas the deployment should have. Here that is

    clamp(ceil(depth / tasks_per_replica), min, max)

where depth is what waits in the role's Redis stream, what is claimed and running, and what
waits for its retry. Down is slow on purpose: the pool shrinks only after the queue has been
empty for `scale_down_after_s` (and Serve lets a replica that is stopped finish its task).
Every decision that changes something is logged with its inputs, exported as metrics and kept
in Redis for `fixfleet status`.

Where the depth comes from: the policy reads the stream itself when the controller's
environment has REDIS_URL (a pod's env, `fixfleet up`), in a one-shot task started from the
call (the call must not block), as Ray's own queue-length policy does: the figure is at most
one poll old. Where it does not (`serve run` with the URL only in the app's runtime_env), the
agent replicas report the depth they see (`record_autoscaling_stats`, every ~10 s) and the
policy takes the latest; a pool at 0 replicas then cannot see its queue, so keep its minimum at 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from fixfleet.services import SCALE_DECISIONS_KEY

log = logging.getLogger("ray.serve")
POLL_S = 2.0
DEPTH_METRIC = "queue_depth"  # what agent replicas report through record_autoscaling_stats
DECISIONS_KEPT = 50


@dataclass(frozen=True)
class Decision:
    replicas: int
    depth: int
    current: int
    reason: str


def decide(depth: int, current: int, *, minimum: int, maximum: int, tasks_per_replica: int,
           idle_since: float | None, now: float, scale_down_after_s: float) -> Decision:
    """The pool size for this depth: up at once, down only after a quiet `scale_down_after_s`."""
    wanted = max(minimum, min(maximum, math.ceil(depth / max(1, tasks_per_replica))))
    if wanted >= current:
        return Decision(wanted, depth, current, "queue" if wanted > current else "steady")
    quiet_for = now - idle_since if idle_since is not None else 0.0
    if depth == 0 and quiet_for >= scale_down_after_s:
        return Decision(wanted, depth, current, f"queue empty for {quiet_for:.0f}s")
    return Decision(current, depth, current, "holding: the queue has not been empty long enough")


def latest_reported(raw_metrics: dict[str, dict[Any, list[Any]]] | None) -> int | None:
    """The newest depth any running replica reported, or None when none has."""
    newest = None
    for series in ((raw_metrics or {}).get(DEPTH_METRIC) or {}).values():
        if series and (newest is None or series[-1].timestamp > newest.timestamp):
            newest = series[-1]
    return None if newest is None else int(newest.value)


class QueueDepthPolicy:
    """`AutoscalingPolicy(policy_function=QueueDepthPolicy, policy_kwargs={...})`."""

    def __init__(self, queue: str, minimum: int, maximum: int, tasks_per_replica: int = 2,
                 scale_down_after_s: float = 300.0) -> None:
        self.queue_name, self.minimum, self.maximum = queue, minimum, maximum
        self.tasks_per_replica, self.scale_down_after_s = tasks_per_replica, scale_down_after_s
        self.polled: int | None = None  # the depth read by this policy itself, when it can
        self.idle_since: float | None = None
        self._redis: Any = None
        self._queue: Any = None
        self._poll: asyncio.Task | None = None
        self._last_poll = 0.0
        self._last: Decision | None = None
        self._metrics: Any = None
        self._direct = bool(os.environ.get("REDIS_URL"))

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        self._maybe_poll()
        depth = self.polled if self.polled is not None else latest_reported(ctx.raw_metrics) or 0
        now = time.monotonic()
        if depth > 0:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        decision = decide(depth, ctx.current_num_replicas, minimum=self.minimum, maximum=self.maximum,
                          tasks_per_replica=self.tasks_per_replica, idle_since=self.idle_since, now=now,
                          scale_down_after_s=self.scale_down_after_s)
        self._record(decision)
        return decision.replicas, {DEPTH_METRIC: depth}

    def _maybe_poll(self) -> None:
        if not self._direct:
            return
        if self._poll is not None and self._poll.done():
            self._poll = None
        now = time.monotonic()
        if self._poll is None and now - self._last_poll >= POLL_S:
            self._last_poll = now
            self._poll = asyncio.get_running_loop().create_task(self._read_depth())

    async def _read_depth(self) -> None:
        try:
            queue = await self._open_queue()
            self.polled = (await queue.depth()).work
        except Exception as exc:  # noqa: BLE001 - Redis away: fall back on the replicas' reports
            self.polled = None
            log.warning("autoscaling %s: cannot read the queue depth (%s)", self.queue_name, type(exc).__name__)

    async def _open_queue(self) -> Any:
        if self._queue is None:
            from redis.asyncio import Redis

            from fixfleet.config import load_settings
            from fixfleet.services import make_queues

            settings = load_settings()  # the controller's environment, as every process of the node has it
            self._redis = Redis.from_url(settings.redis_url.get_secret_value())
            self._queue = make_queues(self._redis, settings)[self.queue_name]
        return self._queue

    def _record(self, decision: Decision) -> None:
        changed, self._last = decision != self._last, decision
        self._export(decision, resized=changed and decision.replicas != decision.current)
        if not changed:
            return
        if decision.replicas != decision.current or decision.reason != "steady":
            log.info("autoscaling %s: %d -> %d replicas (depth %d, %d per replica, min %d, max %d: %s)",
                     self.queue_name, decision.current, decision.replicas, decision.depth, self.tasks_per_replica,
                     self.minimum, self.maximum, decision.reason)
        if self._redis is not None and decision.replicas != decision.current:
            entry = json.dumps({"queue": self.queue_name, "at": time.time(), **asdict(decision)})
            asyncio.get_running_loop().create_task(self._keep(entry))

    async def _keep(self, entry: str) -> None:
        try:
            await self._redis.lpush(SCALE_DECISIONS_KEY, entry)
            await self._redis.ltrim(SCALE_DECISIONS_KEY, 0, DECISIONS_KEPT - 1)
        except Exception:  # noqa: BLE001 - the log line above already has it
            log.debug("autoscaling %s: decision not kept in Redis", self.queue_name)

    def _export(self, decision: Decision, *, resized: bool) -> None:
        from ray.util.metrics import Counter, Gauge

        if self._metrics is None:
            self._metrics = (
                Gauge("ai_agent_pool_target_replicas", "Replicas the autoscaling policy asks for", tag_keys=("queue_name",)),
                Gauge("ai_agent_queue_length", "Tasks waiting, in hand or delayed, as the policy saw them",
                      tag_keys=("queue_name",)),
                Counter("ai_agent_scale_decisions_total", "Autoscaling decisions that changed the pool size",
                        tag_keys=("queue_name", "direction")),
            )
        target, depth, decisions = self._metrics
        tags = {"queue_name": self.queue_name}
        target.set(decision.replicas, tags=tags)
        depth.set(decision.depth, tags=tags)
        if resized:
            decisions.inc(tags={**tags, "direction": "up" if decision.replicas > decision.current else "down"})
