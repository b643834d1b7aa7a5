"""The repository misbehaves: its remote refuses the push, its tests hang, it has no tests, it
does not exist; and the model credential is missing.

Real agents (planner and executor `AgentLoop`s, no Ray; tests/reliability/fleet.py's `Fleet`) plan and carry out tasks on local git remotes with the real claude CLI in bubblewrap
against the scripted model server. Each fault must end the task FAILED with a reason that says
what happened, leave nothing behind (no checkout, no session directory, no process), and the
same agents must then complete a normal task. A permanent error fails on the first attempt.
The sessions' limit and each case's bound are derived from a clean task measured first.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors.agent import AgentLoop
from fixfleet.demo import make_sample_repo
from fixfleet.models import Task, TaskStatus
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

SUITE_LIMIT_S = 5  # the hanging repository's own `timeouts.suite_s`
HANGING_CHILD = ["sleep", "4172"]  # what the hanging test starts: it must not outlive the run
HANGING_TEST = f'''import subprocess
import time


def test_waits_for_a_server_that_never_answers():
    subprocess.Popen({HANGING_CHILD!r})
    time.sleep(10**6)
'''
GIT = ["git", "-c", "user.name=chaos", "-c", "user.email=chaos@fixfleet.invalid"]


def derive_repo(root: Path, source: Path, name: str, files: dict[str, str | None]) -> Path:
    """A new bare remote: `source`'s history plus one commit writing (None: deleting) `files`."""
    work, remote = root / name, root / f"{name}.git"
    subprocess.run(["git", "clone", "-q", str(source), str(work)], check=True, capture_output=True)
    for path, content in files.items():
        target = work / path
        if content is None:
            subprocess.run(["git", "rm", "-rq", path], cwd=work, check=True, capture_output=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    subprocess.run([*GIT, "add", "-A"], cwd=work, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-qm", f"{name}"], cwd=work, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True, capture_output=True)
    return remote


def executor_running_only(test_file: str) -> Scenario:
    """The demo executor, whose own test runs stop at `test_file` (the whole suite would hang)."""
    scenario = Scenario.load("demo_executor")
    turns = []
    for turn in scenario.turns:
        if turn.name == "run-green":
            command = f"python -m pytest -q {test_file} 2>&1 | tail -3"
            block = turn.content[0].model_copy(update={"tool_use": turn.content[0].tool_use.model_copy(
                update={"input": {"command": command, "description": "Run the tests"}})})
            turn = turn.model_copy(update={"content": [block]})
        turns.append(turn)
    return scenario.model_copy(update={"turns": turns})


EXECUTOR_WITHOUT_TEST = {
    "name": "executor-fix-without-a-test",
    "description": "Fixes mean() and reports a test it never wrote: the platform must refuse the change.",
    "model": "claude-sonnet-4-5",
    "turns": [
        {"content": [{"tool_use": {"name": "Read", "input": {"file_path": "{cwd}/statskit/mean.py"}}}]},
        {"content": [{"tool_use": {"name": "Edit", "input": {
            "file_path": "{cwd}/statskit/mean.py", "old_string": "    return sum(values) / len(values)",
            "new_string": "    if not values:\n        return 0.0\n    return sum(values) / len(values)"}}}]},
        {"content": [{"tool_use": {"name": "mcp__fixfleet__report_result", "input": {
            "files_changed": ["statskit/mean.py"], "tests_added": ["tests/test_mean.py::test_mean_of_empty_list"],
            "test_command": "python -m pytest -q", "summary": "mean() returns 0.0 for an empty list now"}}}]},
    ],
    "final_text": "Done.",
}


@dataclass
class Rig:
    root: Path
    remote: Path  # the healthy repository
    planner_model: ReplayServer
    executor_model: ReplayServer
    database_url: str
    redis_url: str
    pace: Pace | None = None  # measured once the rig stands

    def fleet(self, **overrides: Any) -> Fleet:
        home = self.root / "home"
        overrides = ({"session_timeout_s": self.pace.session_timeout_s} if self.pace else {}) | overrides
        planner = fleet_settings(self.database_url, self.redis_url, home, self.planner_model.url, **overrides)
        executor = fleet_settings(self.database_url, self.redis_url, home, self.executor_model.url, **overrides)
        return Fleet(planner, executor)

    @property
    def limit_s(self) -> float:
        assert self.pace
        return self.pace.case_limit_s

    async def measure_pace(self) -> Pace:
        """A clean task planned and carried out first (which also builds statskit's environment)."""
        self.script()
        async with self.fleet() as fleet:
            return await measure_pace(fleet, f"file://{self.remote}", execute=True)

    def script(self, executor: Scenario | dict[str, Any] | str = "demo_executor") -> None:
        self.planner_model.scenario = Scenario.load("demo_planner")
        self.executor_model.scenario = executor if isinstance(executor, Scenario) else Scenario.load(executor)
        self.planner_model.clear()
        self.executor_model.clear()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[Rig]:
    clean_slate(database_url, redis_url)
    root = tmp_path_factory.mktemp("repo-faults")
    planner, executor = ReplayServer("demo_planner").start(), ReplayServer("demo_executor").start()
    try:
        rig = Rig(root, make_sample_repo(root), planner, executor, database_url, redis_url)
        rig.pace = asyncio.run(rig.measure_pace())
        report("repo_fault[pace]", session_s=rig.pace.session_s, session_timeout_s=rig.pace.session_timeout_s,
               case_limit_s=rig.pace.case_limit_s)
        yield rig
    finally:
        planner.stop()
        executor.stop()


# --- what a fault must leave behind: nothing ---------------------------------------------------


def workspace_leftovers(agents: list[AgentLoop]) -> list[str]:
    """Checkouts (the sessions', the verifier's, the setup's) and session directories still on
    disk once no task is in hand: all must be gone."""
    found = []
    for agent in agents:
        found += [f"{agent.name}: checkout {p.name}" for p in agent.workspaces.checkouts_dir.iterdir()]
        sessions = agent.claude.sessions_dir
        found += [f"{agent.name}: session {p.name}" for p in sessions.iterdir()] if sessions.is_dir() else []
        for mirror in agent.workspaces.mirrors_dir.glob("*/git"):  # the node's: shared by the agents
            if (mirror / "HEAD").exists():
                listed = subprocess.run(["git", "--git-dir", str(mirror), "worktree", "list", "--porcelain"],
                                        capture_output=True, text=True, check=True).stdout
                found += [f"{agent.name}: worktree {line}" for line in listed.splitlines()
                          if line.startswith("worktree ") and str(agent.workspaces.checkouts_dir) in line]
    return found


def hanging_children() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == HANGING_CHILD and p.info["status"] != psutil.STATUS_ZOMBIE]


async def plan_and_approve(fleet: Fleet, repo: str, title: str, limit_s: float) -> Task:
    task = await fleet.submit(repo, title=title)
    task = await fleet.wait_until(task.id, {TaskStatus.AWAITING_APPROVAL}, limit_s)
    assert task.status == TaskStatus.AWAITING_APPROVAL, [e.reason for e in await fleet.events(task.id)][-4:]
    return await fleet.approve(task)


async def then_a_normal_task(rig: Rig, fleet: Fleet) -> str:
    """The same agents, on the healthy repository: plan, approve, carry out."""
    rig.script()
    task = await plan_and_approve(fleet, f"file://{rig.remote}", "a normal task after the fault", rig.limit_s)
    return (await fleet.wait_until(task.id, {TaskStatus.COMPLETED, TaskStatus.FAILED}, rig.limit_s)).status.value


# --- the faults ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoFault:
    name: str
    words: str  # what the FAILED reason must say
    permanent: bool  # failed at once (one attempt) rather than after the retries


REPO_FAULTS = [
    RepoFault("push-refused", "refused the push", permanent=True),
    RepoFault("tests-hang", f"the full test suite did not finish within {SUITE_LIMIT_S}s", permanent=False),
    RepoFault("no-tests", "the change adds no test", permanent=False),
]


@pytest.mark.parametrize("fault", REPO_FAULTS, ids=[f.name for f in REPO_FAULTS])
def test_a_repository_fault_fails_cleanly_and_the_agent_stays_healthy(rig: Rig, fault: RepoFault) -> None:
    figures = asyncio.run(repo_fault_case(rig, fault))
    report(f"repo_fault[{fault.name}]", **figures)
    assert figures["status"] == "FAILED", figures
    assert fault.words in figures["reason"], figures
    assert figures["attempts"] == (1 if fault.permanent else 2), figures
    assert figures["workspace_leftovers"] == [] and figures["leftover_processes"] == [], figures
    assert figures["hanging_children"] == [] and not figures["fix_pushed"]
    assert figures["seconds"] < 2 * rig.limit_s  # planned, then carried out: each within the bound
    assert figures["next_task"] == "COMPLETED"


async def repo_fault_case(rig: Rig, fault: RepoFault) -> dict[str, Any]:
    repo, executor = arrange(rig, fault)
    async with rig.fleet() as fleet:
        started = time.monotonic()
        rig.script()
        task = await plan_and_approve(fleet, f"file://{repo}", f"mean() of an empty list ({fault.name})", rig.limit_s)
        rig.script(executor)
        if fault.name == "push-refused":
            refuse_pushes(repo)
        task = await fleet.wait_until(task.id, {TaskStatus.COMPLETED, TaskStatus.FAILED}, rig.limit_s)
        seconds = time.monotonic() - started
        await fleet.idle()
        events = await fleet.events(task.id)
        figures = {"fault": fault.name, "status": task.status.value, "seconds": round(seconds, 1),
                   "attempts": attempts(events), "reason": failure_reason(events)[:400],
                   "workspace_leftovers": workspace_leftovers(fleet.agents),
                   "leftover_processes": await no_leftover_processes(rig.root / "home"),
                   "hanging_children": hanging_children(), "fix_pushed": fix_pushed(repo, task.branch)}
        figures["next_task"] = await then_a_normal_task(rig, fleet)
    return figures


def arrange(rig: Rig, fault: RepoFault) -> tuple[Path, Scenario | dict[str, Any] | str]:
    """The repository of the fault and the executor's script for it."""
    if fault.name == "push-refused":
        return derive_repo(rig.root, rig.remote, "frozen", {"README.md": "statskit\n"}), "demo_executor"
    if fault.name == "tests-hang":
        files = {"tests/test_wait.py": HANGING_TEST, ".fixfleet.yml": f"timeouts: {{suite_s: {SUITE_LIMIT_S}}}\n"}
        return derive_repo(rig.root, rig.remote, "hangs", files), executor_running_only("tests/test_mean.py")
    return derive_repo(rig.root, rig.remote, "untested", {"tests": None}), EXECUTOR_WITHOUT_TEST


def refuse_pushes(remote: Path) -> None:
    """From now on the remote declines every push, as a frozen or protected repository does."""
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes to this repository are frozen for the release' >&2\nexit 1\n")
    hook.chmod(0o755)


def fix_pushed(remote: Path, branch: str | None) -> bool:
    """Whether the task's branch on the remote ends in a `fix:` commit (only the plan's `docs:` may be there)."""
    newest = subprocess.run(["git", "--git-dir", str(remote), "log", "-1", "--format=%s", f"refs/heads/{branch}"],
                            capture_output=True, text=True, check=False)
    return bool(branch) and newest.returncode == 0 and newest.stdout.startswith("fix:")


# --- permanent errors: failed on the first attempt ---------------------------------------------------


PERMANENT = {
    "missing-repository": "does not exist",
    "missing-credential": "no model credential",
}


@pytest.mark.parametrize("case", list(PERMANENT))
def test_a_permanent_error_fails_the_task_on_its_first_attempt(rig: Rig, case: str) -> None:
    figures = asyncio.run(permanent_case(rig, case))
    report(f"permanent_error[{case}]", **figures)
    assert figures["status"] == "FAILED" and PERMANENT[case] in figures["reason"], figures
    assert figures["claims"] == 1 and figures["retry_events"] == 0, figures  # one attempt, no "retry in"
    assert "attempt 1, not retried" in figures["reason"], figures
    assert figures["max_attempts"] > 1  # retries were allowed: the error itself stopped them
    assert figures["model_requests"] == 0  # nothing was asked of the model for a task that cannot be done
    assert figures["seconds"] < rig.limit_s
    assert figures["workspace_leftovers"] == [] and figures["leftover_processes"] == [], figures


async def permanent_case(rig: Rig, case: str) -> dict[str, Any]:
    rig.script()
    overrides: dict[str, Any] = {"max_attempts": 3}
    repo = f"file://{rig.remote}"
    if case == "missing-credential":
        overrides["anthropic_api_key"] = None
    else:
        repo = f"file://{rig.root / 'no-such-repository.git'}"
    async with rig.fleet(**overrides) as fleet:
        started = time.monotonic()
        task = await fleet.submit(repo, title=f"a task that cannot be done ({case})")
        task = await fleet.wait_until(task.id, {TaskStatus.FAILED, TaskStatus.AWAITING_APPROVAL}, rig.limit_s)
        seconds = time.monotonic() - started
        await fleet.idle()
        events = await fleet.events(task.id)
        return {"case": case, "status": task.status.value, "seconds": round(seconds, 1),
                "claims": sum(1 for e in events if e.to_status == TaskStatus.PLANNING),
                "retry_events": sum(1 for e in events if "retry in" in e.reason),
                "max_attempts": fleet.settings.max_attempts, "reason": failure_reason(events)[:400],
                "model_requests": len(rig.planner_model.main_requests()),
                "workspace_leftovers": workspace_leftovers(fleet.agents),
                "leftover_processes": await no_leftover_processes(rig.root / "home")}
