"""The model API misbehaves: 429, 529, 500, a stream cut mid-message, a stream that stalls.

Real agents (the planner's `AgentLoop`, no Ray) claim a real task from Redis, build the
repository's environment, and run the real claude CLI in bubblewrap against the scripted model
server, which fails on purpose. For every fault the task either retries and reaches
AWAITING_APPROVAL, or ends FAILED with a reason in its audit trail that names the fault; each
case is bounded in time, and the agent plans the next task as if nothing had happened.

The `Fleet` below (agents, the outbox relay, the store, in this process) is shared with
tests/reliability/test_repo_faults.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil
import pytest

from actors.agent import AgentLoop
from actors.executor import Executor
from actors.planner import Planner
from fixfleet.approvals import Approvals, Decision, Principal
from fixfleet.config import Settings
from fixfleet.demo import make_sample_repo
from fixfleet.models import NewTask, Task, TaskEvent, TaskStatus
from fixfleet.outbox import OutboxRelay
from fixfleet.replay import ReplayServer
from fixfleet.replay.scenario import Scenario
from fixfleet.services import Services, open_services
from tests.conftest import clean_slate
from tests.reliability.harness import report

pytestmark = pytest.mark.chaos

MODEL_KEY = "sk-ant-api03-chaos-model-key-0123456789"
SESSION_TIMEOUT_S = 6.0  # the stall case waits this long per attempt
CASE_LIMIT_S = 60.0  # no fault may hold a task longer than this
ENDED = {TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.AWAITING_APPROVAL, TaskStatus.CANCELLED,
         TaskStatus.REJECTED}
BUG_REPORT = "statskit.mean([]) raises ZeroDivisionError: division by zero (statskit/mean.py, line 6)"


# --- the fleet: real agents in this process ----------------------------------------------------


def fleet_settings(database_url: str, redis_url: str, home: Path, model_url: str, **overrides: Any) -> Settings:
    """The agents' settings: the scripted model, no SaaS (the pushed branch is the publication),
    no MCP servers, quick retries and short sessions."""
    no_mcp = home.parent / "no-mcp.json"
    no_mcp.write_text('{"mcpServers": {}}')
    values: dict[str, Any] = {
        "database_url": database_url, "redis_url": redis_url, "home": home,
        "anthropic_base_url": model_url, "anthropic_api_key": MODEL_KEY, "claude_code_oauth_token": None,
        "credentials_file": None, "github_token": None, "slack_bot_token": None, "jira_base_url": None,
        "jira_api_token": None, "mcp_config": no_mcp, "agent_model": "claude-sonnet-4-5",
        "max_attempts": 2, "retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0, "lease_s": 3.0,
        "session_timeout_s": SESSION_TIMEOUT_S, "outbox_poll_s": 0.1, "control_poll_s": 0.5,
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

    async def wait_until(self, task_id: int, statuses: set[TaskStatus], timeout_s: float = CASE_LIMIT_S) -> Task:
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

    async def idle(self, timeout_s: float = 15.0) -> None:
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


async def no_leftover_processes(home: Path, timeout_s: float = 10.0) -> list[str]:
    """What is still running once the background work (a spare checkout being built) has had
    `timeout_s` to end; [] when all is clean."""
    deadline = time.monotonic() + timeout_s
    while (left := leftover_processes(home)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return left


# --- the faults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    error: dict[str, Any]  # the scenario's ErrorSpec for the planner's first turn
    recovers: bool  # the CLI's own retry gets past it, within one attempt of the task
    words: tuple[str, ...] = ()  # when it fails: what the task's reason must mention (any of them)
    permanent: bool = False  # fails on its first attempt: retrying cannot help


FAULTS = [
    Fault("429-retry-after", {"kind": "status", "status": 429, "retry_after": 1, "times": 1}, recovers=True),
    Fault("529-overloaded", {"kind": "status", "status": 529, "retry_after": 0, "times": 1}, recovers=True),
    Fault("500-server-error", {"kind": "status", "status": 500, "times": 1}, recovers=True),
    Fault("stream-cut", {"kind": "cut", "after_events": 4, "times": 1}, recovers=True),
    Fault("stall-past-timeout", {"kind": "stall", "after_events": 3, "seconds": 600, "times": 1000},
          recovers=False, words=("timeout", f"{SESSION_TIMEOUT_S:g}s")),
    Fault("529-for-good", {"kind": "status", "status": 529, "retry_after": 0, "times": 1000},
          recovers=False, words=("the model API kept failing: HTTP 529 overloaded",)),
    Fault("401-refused-key", {"kind": "status", "status": 401, "times": 1000}, recovers=False,
          words=("not retried",), permanent=True),
]


def faulty_planner(fault: Fault) -> Scenario:
    """The demo planner, whose first model request meets the fault."""
    scenario = Scenario.load("demo_planner")
    first = scenario.turns[0].model_copy(update={"error": fault.error})
    return scenario.model_copy(update={"turns": [first, *scenario.turns[1:]]})


@dataclass
class Rig:
    root: Path
    remote: Path
    model: ReplayServer
    database_url: str
    redis_url: str

    @property
    def repo(self) -> str:
        return f"file://{self.remote}"

    def settings(self, **overrides: Any) -> Settings:
        return fleet_settings(self.database_url, self.redis_url, self.root / "home", self.model.url, **overrides)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[Rig]:
    clean_slate(database_url, redis_url)
    root = tmp_path_factory.mktemp("model-faults")
    model = ReplayServer("demo_planner").start()
    try:
        yield Rig(root, make_sample_repo(root), model, database_url, redis_url)
    finally:
        model.stop()


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_model_fault_is_retried_or_fails_with_its_reason(rig: Rig, fault: Fault) -> None:
    figures = asyncio.run(model_fault_case(rig, fault))
    report(f"model_fault[{fault.name}]", **figures)
    assert figures["seconds"] < CASE_LIMIT_S
    assert figures["fault_served"], "the scripted model never produced the fault"
    if fault.recovers:
        assert figures["status"] == "AWAITING_APPROVAL", figures
    else:
        assert figures["status"] == "FAILED", figures
        if fault.permanent:  # a refused credential: the same attempt would meet it again
            assert figures["attempts"] == 1 and figures["retried_events"] == 0, figures
        else:
            assert figures["attempts"] == 2 and figures["retried_events"] == 1, figures  # transient: retried once
        assert any(word in figures["reason"] for word in fault.words), figures
    if "retry_after" in fault.error and fault.recovers:  # the CLI waited as long as it was asked to
        assert figures["retry_gap_s"] is not None and figures["retry_gap_s"] >= 0.9 * fault.error["retry_after"]
    assert figures["leftover_processes"] == []
    assert figures["next_task"] == "AWAITING_APPROVAL"  # the same agent, healthy for the next task


def retry_gap(model: ReplayServer) -> float | None:
    """Seconds from the first failed model request to the request after it (the CLI's retry)."""
    requests = model.main_requests()
    failed = next((i for i, r in enumerate(requests) if r.failure), None)
    if failed is None or failed + 1 >= len(requests):
        return None
    return round(requests[failed + 1].received_at - requests[failed].received_at, 2)


async def model_fault_case(rig: Rig, fault: Fault) -> dict[str, Any]:
    rig.model.scenario, _ = faulty_planner(fault), rig.model.clear()
    async with Fleet(rig.settings()) as fleet:
        started = time.monotonic()
        task = await fleet.submit(rig.repo, title=f"mean() fails ({fault.name})")
        task = await fleet.wait_until(task.id, {TaskStatus.AWAITING_APPROVAL, TaskStatus.FAILED})
        seconds = time.monotonic() - started
        await fleet.idle()
        events = await fleet.events(task.id)
        served = [r.failure for r in rig.model.main_requests() if r.failure]
        requests = len(rig.model.main_requests())
        gap = retry_gap(rig.model)
        left = await no_leftover_processes(rig.root / "home")
        rig.model.scenario, _ = Scenario.load("demo_planner"), rig.model.clear()
        after = await fleet.submit(rig.repo, title=f"after {fault.name}")
        after = await fleet.wait_until(after.id, {TaskStatus.AWAITING_APPROVAL, TaskStatus.FAILED})
    return {"fault": fault.name, "status": task.status.value, "seconds": round(seconds, 1),
            "attempts": attempts(events), "retried_events": sum("retry in" in e.reason for e in events),
            "fault_served": len(served), "model_requests": requests, "retry_gap_s": gap,
            "reason": failure_reason(events)[:300], "leftover_processes": left, "next_task": after.status.value}
