"""The model API misbehaves: 429, 529, 500, a stream cut mid-message, a stream that stalls.

Real agents (the planner's `AgentLoop`, no Ray) claim a real task from Redis, build the
repository's environment, and run the real claude CLI in bubblewrap against the scripted model
server, which fails on purpose. For every fault the task either retries and reaches
AWAITING_APPROVAL, or ends FAILED with a reason in its audit trail that names the fault; each
case is bounded in time, and the agent plans the next task as if nothing had happened.

The agents are tests/reliability/fleet.py's `Fleet`. The sessions' limit (what the stalled stream
runs into) and each case's bound are derived from a clean session measured first on this machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fixfleet.config import Settings
from fixfleet.demo import make_sample_repo
from fixfleet.models import TaskStatus
from fixfleet.replay import ReplayServer
from fixfleet.replay.scenario import Scenario
from tests.reliability.fleet import (
    Fleet,
    Pace,
    attempts,
    failure_reason,
    fleet_settings,
    measure_pace,
    no_leftover_processes,
)
from tests.reliability.harness import report
from tests.slate import clean_slate

pytestmark = pytest.mark.chaos

# --- the faults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    error: dict[str, Any]  # the scenario's ErrorSpec for the planner's first turn
    recovers: bool  # the CLI's own retry gets past it, within one attempt of the task
    words: tuple[str, ...] = ()  # when it fails: what the task's reason must mention (any of them; {timeout}: the limit)
    permanent: bool = False  # fails on its first attempt: retrying cannot help


FAULTS = [
    Fault("429-retry-after", {"kind": "status", "status": 429, "retry_after": 1, "times": 1}, recovers=True),
    Fault("529-overloaded", {"kind": "status", "status": 529, "retry_after": 0, "times": 1}, recovers=True),
    Fault("500-server-error", {"kind": "status", "status": 500, "times": 1}, recovers=True),
    Fault("stream-cut", {"kind": "cut", "after_events": 4, "times": 1}, recovers=True),
    Fault("stall-past-timeout", {"kind": "stall", "after_events": 3, "seconds": 600, "times": 1000},
          recovers=False, words=("no result within {timeout}s",)),  # the pace's session limit
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
    pace: Pace | None = None  # measured once the rig stands

    @property
    def repo(self) -> str:
        return f"file://{self.remote}"

    def settings(self, **overrides: Any) -> Settings:
        limit = {"session_timeout_s": self.pace.session_timeout_s} if self.pace else {}
        return fleet_settings(self.database_url, self.redis_url, self.root / "home", self.model.url,
                              **limit, **overrides)

    async def measure_pace(self) -> Pace:
        """A clean planning session first (which also builds statskit's environment)."""
        async with Fleet(self.settings()) as fleet:
            return await measure_pace(fleet, self.repo)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[Rig]:
    clean_slate(database_url, redis_url)
    root = tmp_path_factory.mktemp("model-faults")
    model = ReplayServer("demo_planner").start()
    try:
        rig = Rig(root, make_sample_repo(root), model, database_url, redis_url)
        rig.pace = asyncio.run(rig.measure_pace())
        report("model_fault[pace]", session_s=rig.pace.session_s, session_timeout_s=rig.pace.session_timeout_s,
               case_limit_s=rig.pace.case_limit_s)
        yield rig
    finally:
        model.stop()


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_model_fault_is_retried_or_fails_with_its_reason(rig: Rig, fault: Fault) -> None:
    figures = asyncio.run(model_fault_case(rig, fault))
    report(f"model_fault[{fault.name}]", **figures)
    assert rig.pace and figures["seconds"] < rig.pace.case_limit_s
    assert figures["fault_served"], "the scripted model never produced the fault"
    if fault.recovers:
        assert figures["status"] == "AWAITING_APPROVAL", figures
    else:
        assert figures["status"] == "FAILED", figures
        if fault.permanent:  # a refused credential: the same attempt would meet it again
            assert figures["attempts"] == 1 and figures["retried_events"] == 0, figures
        else:
            assert figures["attempts"] == 2 and figures["retried_events"] == 1, figures  # transient: retried once
        words = [word.format(timeout=f"{rig.pace.session_timeout_s:g}") for word in fault.words]
        assert any(word in figures["reason"] for word in words), (words, figures)
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
    assert rig.pace
    limit = rig.pace.case_limit_s
    rig.model.scenario, _ = faulty_planner(fault), rig.model.clear()
    async with Fleet(rig.settings()) as fleet:
        started = time.monotonic()
        task = await fleet.submit(rig.repo, title=f"mean() fails ({fault.name})")
        task = await fleet.wait_until(task.id, {TaskStatus.AWAITING_APPROVAL, TaskStatus.FAILED}, limit)
        seconds = time.monotonic() - started
        await fleet.idle()
        events = await fleet.events(task.id)
        served = [r.failure for r in rig.model.main_requests() if r.failure]
        requests = len(rig.model.main_requests())
        gap = retry_gap(rig.model)
        left = await no_leftover_processes(rig.root / "home")
        rig.model.scenario, _ = Scenario.load("demo_planner"), rig.model.clear()
        after = await fleet.submit(rig.repo, title=f"after {fault.name}")
        after = await fleet.wait_until(after.id, {TaskStatus.AWAITING_APPROVAL, TaskStatus.FAILED}, limit)
    return {"fault": fault.name, "status": task.status.value, "seconds": round(seconds, 1),
            "attempts": attempts(events), "retried_events": sum("retry in" in e.reason for e in events),
            "fault_served": len(served), "model_requests": requests, "retry_gap_s": gap,
            "reason": failure_reason(events)[:300], "leftover_processes": left, "next_task": after.status.value}
