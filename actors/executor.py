"""The executor: the agent loop that turns an approved plan into tested commits on the PR branch.

The session runs in the sandbox on a writable checkout of the plan's branch. What it changed
comes out as data and is checked (fixfleet/workspace/changes.py); the platform then proves it
on a fresh checkout (fixfleet/workspace/verify.py): the new tests fail on the base code and pass
with the fix, and the whole suite passes. Only then does it make the commits itself, from that
same data on its own mirror (`test: …`, `fix: …`), push them to the task's branch, update the PR
with the evidence, and tell Jira and Slack. A change that does not prove itself is never pushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from actors.agent import AgentLoop
from actors.session_models import SessionRequest
from fixfleet.models import RERUN, Task, TaskStatus
from fixfleet.queue import Job
from fixfleet.workspace.changes import ChangeRefused, ChangeSet, extract, snapshot
from fixfleet.workspace.diffs import unified_diff
from fixfleet.workspace.sandbox import SandboxSpec
from fixfleet.workspace.verify import Evidence, EvidenceError

log = logging.getLogger(__name__)

CLAIMABLE = {TaskStatus.APPROVED, TaskStatus.EXECUTING}


class ExecutionFailed(RuntimeError):
    pass


class Executor(AgentLoop):
    role, queue_name = "executor", "execution"

    async def handle(self, job: Job) -> None:
        if job.message.action == RERUN.action:
            await self.rerun_tests(job)
            return
        task = await self.claimable(job, CLAIMABLE)
        if task is None:
            return
        task = await self.claim(task, TaskStatus.EXECUTING)
        branch = task.branch or f"fixfleet/{task.key}"
        head = await self.workspaces.branch_head(task.repo, branch)  # the plan's commit
        pushed = task.context.get("pushing") or {}
        if head and head == (pushed.get("commits") or [None])[-1]:
            # An earlier attempt pushed this verified fix and stopped before completing: only
            # the publication and the completion are left (a second session would find no change).
            await self.store.record_event(task.id, actor=self.name, reason="the fix is already on the branch; finishing")
            await self._complete(task, branch, head, pushed["commits"], pushed["evidence"])
            return
        base = head or await self.workspaces.resolve(task.repo)
        env = await self.environment(task, base)
        checkout, spec, placed = await self.session_checkout(task, env, base, "exec", writable=True)
        try:
            before = await asyncio.to_thread(snapshot, checkout.path)  # a walk: never on the event loop
            report = await self._execute(task, checkout.path, spec, env.plan.test_domains)
            change = await self._change(task, checkout.path, base, before, placed)
        finally:
            await self.workspaces.discard(checkout)
        evidence = await self._verify(task, change, report)
        commits = await self._commit(task, change, evidence, report.get("summary", ""))
        proof = self.runner.redactor.value(evidence.model_dump())
        diff = unified_diff(change, await self.workspaces.read_files(task.repo, base, change.paths))
        # Recorded before the push: a retry after a push whose completion was lost finds it.
        await self.store.update_fields(task.id, context={"pushing": {"commits": commits, "evidence": proof},
                                                         "diff": diff})
        await self._complete(task, branch, head, commits, proof)

    async def _complete(self, task: Task, branch: str, head: str | None, commits: list[str],
                        proof: dict[str, Any]) -> None:
        """Push, publish and complete, holding the task: a cancel or pause that came first stops
        this before the push; one that comes meanwhile waits and finds the task COMPLETED."""
        async with self.store.holding(task) as hold:  # `task` as claimed: a pause since then stops this
            task = hold.task
            if head != commits[-1]:
                await self.workspaces.push(task.repo, commits[-1], branch, expected=head)
            await self.publisher.fix_ready(task, proof, commits, task.cost_usd)
            await hold.transition(TaskStatus.COMPLETED, actor=self.name, reason="tests pass; pushed",
                                  data={"commits": commits, "evidence": proof},
                                  context={"evidence": proof, "commits": commits})

    async def rerun_tests(self, job: Job) -> None:
        """Run the suite again on the task's pushed branch; record and post the result. The
        task's state is left alone: this is a look, not a step, so a rerun that cannot run says
        why on the task (ask again) instead of failing it."""
        task = await self.side_job_task(job, RERUN)
        if task is None:
            return
        head = await self.workspaces.branch_head(task.repo, task.branch) if task.branch else None
        if head is None:
            await self.side_job_done(task, RERUN, "rerun-tests: the branch is gone")
            return
        try:
            run = await self.verifier.rerun_suite(task.repo, head, name=task.key)
        except Exception as exc:  # told to whoever asked, with the reason
            log.warning("%s: rerun-tests of %s could not run", self.name, task.key, exc_info=True)
            await self.side_job_done(task, RERUN, f"rerun-tests could not run: {exc}; ask again")
            return
        result = self.runner.redactor.value(run.model_dump()) | {"sha": head, "at": datetime.now(UTC).isoformat()}
        verdict = "passes" if run.exit_code == 0 else f"fails (exit {run.exit_code})"
        await self.side_job_done(task, RERUN, f"rerun-tests: the suite {verdict}", result)
        await self.publisher.tests_rerun(task, head, verdict, result)

    async def _execute(self, task: Task, worktree: Path, spec: SandboxSpec, domains: list[str]) -> dict[str, Any]:
        request = SessionRequest(role="executor", worktree=worktree, prompt=executor_prompt(task),
                                 context={"task": task.key, "title": task.title, "plan": task.plan,
                                          "plan_version": task.plan_version})
        return await self.run_session(task, request, spec, domains, ExecutionFailed, "no report")

    async def _change(self, task: Task, tree: Path, base: str, before: dict, placed: list[str]) -> ChangeSet:
        """The agent's work as checked data; a change that breaks a rule fails the task."""
        try:
            change = await asyncio.to_thread(extract, tree, base, await self.workspaces.list_tree(task.repo, base),
                                             before=before, mount_points=placed)
            leaking = [c.path for c in change.files if c.content and self.runner.redactor.knows(
                c.content.decode("utf-8", "replace"))]
            if leaking:
                raise ChangeRefused(f"{', '.join(leaking)} hold(s) one of the platform's secrets")
            return change
        except ChangeRefused as exc:
            await self.store.record_event(task.id, actor=self.name, reason=f"change refused: {exc}")
            raise ExecutionFailed(f"change refused: {exc}") from exc

    async def _verify(self, task: Task, change: ChangeSet, report: dict[str, Any]) -> Evidence:
        try:
            return await self.verifier.verify(task.repo, change, name=task.key,
                                              agent_test_command=report.get("test_command"))
        except EvidenceError as exc:
            await self.store.record_event(task.id, actor=self.name, reason=f"verification failed: {exc}",
                                          data={"evidence": self.runner.redactor.value(exc.evidence)})
            raise

    async def _commit(self, task: Task, change: ChangeSet, evidence: Evidence, summary: str) -> list[str]:
        """Two conventional commits made from the verified data: the tests, then the fix."""
        summary = self.runner.redactor.text(summary)
        subject = summary.strip().splitlines()[0][:60] if summary.strip() else "fix the reported bug"
        tests = await self.workspaces.commit(task.repo, change.base_sha, change.subset(evidence.test_files),
                                             f"test: reproduce {task.key}")
        fix = await self.workspaces.commit(task.repo, tests, change.subset(evidence.fix_files),
                                           f"fix: {subject} ({task.key})")
        return [tests, fix]


def executor_prompt(task: Task) -> str:
    return "\n".join([
        f"Carry out the approved plan v{task.plan_version} for {task.key}: {task.title}",
        "",
        "Plan:",
        json.dumps(task.plan or {}, indent=2),
        "",
        "Follow the `tdd-workflow` skill: write the failing test first, run it and see it fail, fix the code,",
        "run the tests and see them pass, then the whole suite. Do not commit: the platform verifies your files and commits.",
        "Hand back your work with the report_result tool.",
    ])
