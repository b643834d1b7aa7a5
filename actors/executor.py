"""ExecutorAgent: a Ray actor that turns an approved plan into tested commits on the PR branch.

After the executor session, the platform verifies the change itself (actors/evidence.py):
the new tests fail on the base code and pass with the fix, and the whole suite passes. Only
then does it commit (`test: …`, `fix: …`), push, update the PR with the evidence, and tell
Jira and Slack. A change that breaks the suite is never pushed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray

from actors.agent import AgentActor, AgentLoop
from actors.evidence import EvidenceError, commit_change, verify
from actors.session_models import SessionRequest
from fixfleet.models import Task, TaskStatus
from fixfleet.queue import Job

CLAIMABLE = {TaskStatus.APPROVED, TaskStatus.EXECUTING}


class ExecutionFailed(RuntimeError):
    pass


class Executor(AgentLoop):
    role, queue_name = "executor", "execution"

    async def handle(self, job: Job) -> None:
        task = await self.claimable(job, CLAIMABLE)
        if task is None:
            return
        task = await self.claim(task, TaskStatus.EXECUTING)
        worktree = await self.worktree(task, task.branch or f"fixfleet/{task.key}", existing=True, purpose="exec")
        try:
            report = await self._execute(task, worktree.path)
            evidence = await self._verify(task, worktree.path, report)
            commits = await commit_change(worktree.path, evidence, task_key=task.key, summary=report.get("summary", ""))
            await self.workspaces.push(worktree, worktree.branch)
            task = await self.store.get_task(task.id)
            proof = evidence.model_dump()
            await self.publisher.fix_ready(task, proof, commits, task.cost_usd)
            await self.store.transition(
                task.id, TaskStatus.COMPLETED, actor=self.name, reason="tests pass; pushed",
                data={"commits": commits, "evidence": proof}, changes={"context": task.context | {"evidence": proof, "commits": commits}},
            )
        finally:
            await self.workspaces.remove_worktree(worktree)

    async def _execute(self, task: Task, worktree: Path) -> dict[str, Any]:
        request = SessionRequest(role="executor", worktree=worktree, prompt=executor_prompt(task),
                                 context={"task": task.key, "title": task.title, "plan": task.plan,
                                          "plan_version": task.plan_version})
        return await self.run_session(task, request, ExecutionFailed, "no report")

    async def _verify(self, task: Task, worktree: Path, report: dict[str, Any]) -> Any:
        plan = task.plan or {}
        test_command = report.get("test_command") or plan.get("test_command") or "python -m pytest -q"
        suite_command = self.settings.suite_command or "python -m pytest -q"
        try:
            return await verify(worktree, test_command=test_command, suite_command=suite_command)
        except EvidenceError as exc:
            await self.store.record_event(task.id, actor=self.name, reason=f"verification failed: {exc}",
                                          data={"evidence": exc.evidence})
            raise


def executor_prompt(task: Task) -> str:
    return "\n".join([
        f"Carry out the approved plan v{task.plan_version} for {task.key}: {task.title}",
        "",
        "Plan:",
        json.dumps(task.plan or {}, indent=2),
        "",
        "Follow the `tdd-workflow` skill: write the failing test first, run it and see it fail, fix the code,",
        "run the tests and see them pass, then the whole suite. Do not commit or push: the platform does.",
        "Hand back your work with the report_result tool.",
    ])


@ray.remote(max_restarts=-1, max_task_retries=-1)
class ExecutorAgent(AgentActor):
    """`ExecutorAgent.options(name=..., resources={"executor_slot": 1}).remote(name, overrides)`."""

    loop_class = Executor
