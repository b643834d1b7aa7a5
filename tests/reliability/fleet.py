"""Real agents in this process for the chaos tests of tests/reliability/test_model_faults.py and
test_repo_faults.py: the planner's and the executor's `AgentLoop` (as a Serve replica runs them,
without Ray), the outbox relay, and the store to submit, approve and watch tasks; and the `Pace`
of this machine, from which the cases' time bounds are derived.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil

from actors.agent import AgentLoop
from actors.executor import Executor
from actors.planner import Planner
from fixfleet.approvals import Approvals, Decision, Principal
from fixfleet.config import Settings
from fixfleet.models import NewTask, Task, TaskEvent, TaskStatus
from fixfleet.outbox import OutboxRelay
from fixfleet.services import Services, open_services

MODEL_KEY = "sk-ant-api03-chaos-model-key-0123456789"
ENDED = {TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.AWAITING_APPROVAL, TaskStatus.CANCELLED,
         TaskStatus.REJECTED}
BUG_REPORT = "statskit.mean([]) raises ZeroDivisionError: division by zero (statskit/mean.py, line 6)"


def fleet_settings(database_url: str, redis_url: str, home: Path, model_url: str, **overrides: Any) -> Settings:
    """The agents' settings: the scripted model, no SaaS (the pushed branch is the publication),
    no MCP servers, quick retries, and sessions as long as `Pace.session_timeout_s` (in `overrides`)
    or `SESSION_BOUND_S`."""
    no_mcp = home.parent / "no-mcp.json"
    no_mcp.write_text('{"mcpServers": {}}')
    values: dict[str, Any] = {
        "database_url": database_url, "redis_url": redis_url, "home": home,
        "anthropic_base_url": model_url, "anthropic_api_key": MODEL_KEY, "claude_code_oauth_token": None,
        "credentials_file": None, "github_token": None, "slack_bot_token": None, "jira_base_url": None,
        "jira_api_token": None, "mcp_config": no_mcp, "agent_model": "claude-sonnet-4-5",
        "max_attempts": 2, "retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0, "lease_s": 3.0,
        "session_timeout_s": SESSION_BOUND_S, "outbox_poll_s": 0.1, "control_poll_s": 0.5,
        **overrides,
    }
    return Settings(_env_file=None, **values)


class Fleet:
    """A planner and an executor (`AgentLoop`s, as a Serve replica runs them, without Ray), the
    outbox relay that queues their tasks, and the store to submit, approve and watch tasks.
    `executor_settings`: the executor's own (its model server), None: no executor."""

    def __init__(self, settings: Settings, executor_settings: Settings | None = None) -> None:
        self.settings = settings
        self.planner = Planner("planner-chaos", settings)
        self.executor = Executor("executor-chaos", executor_settings) if executor_settings else None
        self._stop = asyncio.Event()
        self._relay: asyncio.Task[None] | None = None

    @property
    def agents(self) -> list[AgentLoop]:
        return [a for a in (self.planner, self.executor) if a is not None]

    async def __aenter__(self) -> Self:
        self._services_context = open_services(self.settings, pool_size=4)
        self.services: Services = await self._services_context.__aenter__()
        self.store = self.services.store
        relay = OutboxRelay(self.store, self.services.queues, poll_s=self.settings.outbox_poll_s,
                            reconcile_every_s=self.settings.reconcile_s, claimed_stale_s=self.settings.claimed_stale_s)
        self._relay = asyncio.create_task(relay.run(self._stop))
        for agent in self.agents:
            await agent.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for agent in self.agents:
            await agent.stop()
        self._stop.set()
        if self._relay is not None:
            await asyncio.wait_for(self._relay, 15)
        await self._services_context.__aexit__(None, None, None)

    async def submit(self, repo: str, title: str = "mean() of an empty list", body: str = BUG_REPORT) -> Task:
        task, _ = await self.store.create_task(NewTask(repo=repo, title=title, body=body))
        return task

    async def approve(self, task: Task) -> Task:
        return await Approvals(self.store, self.settings).decide(
            Principal(kind="cli", name="lead"), task.id, Decision.APPROVE, plan_version=task.plan_version)

    async def wait_until(self, task_id: int, statuses: set[TaskStatus], timeout_s: float) -> Task:
        """The task once it is in one of `statuses` (or has ended elsewhere); fails the test past
        the deadline: nothing may hang."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = await self.store.get_task(task_id)
            if task.status in statuses or task.status in ENDED:
                return task
            await asyncio.sleep(0.2)
        trail = [(e.to_status, e.reason) for e in await self.store.events(task_id)]
        raise AssertionError(f"task {task_id} still {task.status} after {timeout_s:.0f}s: {trail[-6:]}")

    async def events(self, task_id: int) -> list[TaskEvent]:
        return await self.store.events(task_id)

    async def idle(self, timeout_s: float = 60.0) -> None:
        """Until no agent holds a job: the worker has finished with the last one (acked, retried or
        failed it), so what it left behind can be looked at."""
        deadline = time.monotonic() + timeout_s
        while any(a.worker.busy_with is not None for a in self.agents) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)


def attempts(events: list[TaskEvent]) -> int:
    """How many times an agent took the task up: the first claim and every retry."""
    return 1 + sum(1 for e in events if "retry in" in e.reason)


def failure_reason(events: list[TaskEvent]) -> str:
    return next((e.reason for e in reversed(events) if e.to_status == TaskStatus.FAILED), "")


def leftover_processes(home: Path) -> list[str]:
    """Processes (children of this one, or working under the agents' home) still alive."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(process.cmdline())[:160])
        except psutil.Error:
            continue
    for process in psutil.process_iter(["pid", "cwd", "status"]):
        cwd = process.info["cwd"]
        if process.pid != os.getpid() and cwd and Path(cwd).is_relative_to(home) \
                and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"pid {process.pid} in {cwd}")
    return found


async def no_leftover_processes(home: Path, timeout_s: float = 60.0) -> list[str]:
    """What is still running once the background work (a spare checkout being built) has had
    `timeout_s` to end; [] when all is clean."""
    deadline = time.monotonic() + timeout_s
    while (left := leftover_processes(home)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return left


# --- how fast this machine is now -----------------------------------------------------------------

SESSION_BOUND_S = 600.0  # a session's limit before the pace is known (the clean session that measures it)


@dataclass(frozen=True)
class Pace:
    """How long a clean Claude session (the CLI's start-up included) takes on this machine now.
    The cases' time bounds are derived from it with a wide margin, so that a busy machine (two
    cores shared by several engineers) moves the bounds, never a verdict: a 6-second session
    limit once expired before a loaded machine's CLI had sent its first request."""

    session_s: float

    @property
    def session_timeout_s(self) -> float:
        """Five clean sessions long, at least 10 s: a session stopped by it had stalled."""
        return float(math.ceil(max(10.0, 5 * self.session_s)))

    @property
    def case_limit_s(self) -> float:
        """No fault may hold a task longer: a few sessions up to their limit, the retry between them,
        the checkouts and the repository's environment."""
        return 60.0 + 4 * self.session_timeout_s


async def measure_pace(fleet: Fleet, repo: str, *, execute: bool = False) -> Pace:
    """A clean task planned (and with `execute`, approved and carried out) by `fleet`: its longest
    session is the pace. It also builds the repository's environment the cases then reuse."""
    task = await fleet.submit(repo, title="a clean task: how long a session takes on this machine")
    task = await fleet.wait_until(task.id, {TaskStatus.AWAITING_APPROVAL}, 3 * SESSION_BOUND_S)
    if execute and task.status == TaskStatus.AWAITING_APPROVAL:
        approved = await fleet.approve(task)
        task = await fleet.wait_until(approved.id, {TaskStatus.COMPLETED}, 3 * SESSION_BOUND_S)
    events = await fleet.events(task.id)
    sessions = [e.data["seconds"] for e in events if e.reason.endswith(" session: success")]
    wanted = TaskStatus.COMPLETED if execute else TaskStatus.AWAITING_APPROVAL
    assert task.status == wanted and sessions, [(e.to_status, e.reason) for e in events][-6:]
    await fleet.idle()
    return Pace(session_s=max(sessions))
