"""The agents as Serve deployments: each replica is one long-lived agent consuming its stream.

A planner or executor replica is a Ray actor that Serve starts, health-checks, scales and
retires. Its constructor starts the agent loop (claim -> work -> ack over the role's Redis
stream, with warm workspaces under its home); `check_health` fails when the loop has ended or
its heartbeat stalled, so Serve replaces it; when Serve retires it (scaling down, a redeploy),
`__del__` stops claiming and lets the task in hand finish before the replica goes (Serve waits
up to `graceful_shutdown_timeout_s`, set above the session timeout). A replica killed anyway
leaves its task to be taken over: at once when the relay sees it gone (Serve no longer lists
it, its process died), else after the lease.

The outbox relay, the queue reconciler and the upkeep of session records run once per
application, in the Relay deployment.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, suppress
from typing import Any

from ray import serve

from actors.agent import AgentLoop
from actors.executor import Executor
from actors.planner import Planner
from fixfleet import logs
from fixfleet.config import Settings, load_settings
from fixfleet.loops import Loops
from fixfleet.outbox import OutboxRelay
from fixfleet.providers import connect
from fixfleet.redact import Redactor, redact_logs
from fixfleet.retention import Retention
from fixfleet.services import Services, open_services
from fixfleet.session_upkeep import run_session_upkeep
from serve_app.autoscaling import DEPTH_METRIC
from serve_app.loop_thread import LoopThread
from serve_app.roster import ServeRoster, this_application

log = logging.getLogger(__name__)
DRAIN_MARGIN_S = 120.0  # Serve's graceful timeout is the session timeout plus this


def replica_settings(overrides: dict[str, Any] | None, component: str, agent: str | None = None) -> Settings:
    """The replica's settings; from here on it logs redacted JSON lines."""
    logs.configure(component, agent=agent)
    settings = load_settings(**(overrides or {}))
    redact_logs(Redactor.from_settings(settings))
    return settings


class AgentReplica:
    """Shared body of the planner and executor deployments; subclasses name their loop."""

    loop_class: type[AgentLoop] = AgentLoop

    async def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        name = f"{self.loop_class.role}-{serve.get_replica_context().replica_id.unique_id}"
        self.loop = self.loop_class(name, replica_settings(overrides, self.loop_class.role, name))
        self.thread = LoopThread(name)  # the agent's work runs there, not on Serve's uvloop
        await self.thread.run(self.loop.start())
        log.info("%s consumes the %s stream (event loop: %s)", name, self.loop.queue_name,
                 type(self.thread.loop).__module__)

    async def check_health(self) -> None:
        problem = self.loop.problem()
        if problem:
            raise RuntimeError(f"{self.loop.name}: {problem}")

    async def status(self) -> dict[str, Any]:
        return self.loop.status()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The queue's depth as this replica sees it: the policy's source where the controller
        cannot reach Redis itself (serve_app/autoscaling.py)."""
        return {DEPTH_METRIC: (await self.thread.run(self.loop.queue.depth())).work}

    async def __del__(self) -> None:
        await self.thread.run(self.loop.drain(self.loop.settings.session_timeout_s + DRAIN_MARGIN_S / 2))
        self.thread.close()


class PlannerReplica(AgentReplica):
    loop_class = Planner


class ExecutorReplica(AgentReplica):
    loop_class = Executor


class RelayReplica:
    """The outbox relay, the reconciler, the session upkeep and retention, once per application
    (num_replicas=1): a task reaches its queue only after its transaction commits (the ingress
    replicas relay their own commits; this relay hears the agents' and the CLI's by NOTIFY and
    polls for anything left behind, e.g. by an ingress replica that died), the queues are
    rebuilt from Postgres when Redis lost them (at start too), the claims of agents that are gone
    (Serve no longer runs them, their process died) are handed over at once, sessions whose agent
    died are marked cut short and old session messages removed (fixfleet/session_upkeep.py), and
    old closed tasks purged (fixfleet/retention.py)."""

    async def __init__(self) -> None:
        settings = replica_settings(None, "relay")
        self._stack = AsyncExitStack()
        services = await self._stack.enter_async_context(open_services(settings, pool_size=6))
        relay = OutboxRelay(services.store, services.queues, poll_s=settings.outbox_poll_s,
                            reconcile_every_s=settings.reconcile_s, claimed_stale_s=settings.claimed_stale_s,
                            roster=ServeRoster(this_application()), takeover_every_s=min(5.0, settings.lease_s),
                            agent_lost_s=settings.agent_lost_s)
        self._stop = asyncio.Event()
        self._tasks = {"the outbox relay": asyncio.create_task(relay.run(self._stop)),
                       "the session upkeep": asyncio.create_task(run_session_upkeep(services.store, settings, self._stop)),
                       "retention": asyncio.create_task(Retention(services.store, settings).run(self._stop)),
                       "closing the loops": asyncio.create_task(self._loops(services, settings))}
        log.info("the outbox relay, the queue reconciler, the session upkeep and retention run here (reconciling every "
                 "%ss)", settings.reconcile_s)

    async def _loops(self, services: Services, settings: Settings) -> None:
        """Pull requests' outcomes checked, ended tasks' pull requests closed, merges told."""
        providers = await self._stack.enter_async_context(connect(settings, Redactor.from_settings(settings)))
        await Loops(settings, services.store, providers).run(self._stop)

    async def check_health(self) -> None:
        for name, task in self._tasks.items():
            if task.done():
                raise RuntimeError(f"{name} has ended")

    async def __del__(self) -> None:
        self._stop.set()
        with suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._tasks.values()), 10)
        await self._stack.aclose()
