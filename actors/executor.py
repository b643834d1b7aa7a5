"""The executor: the agent loop that turns an approved plan into tested commits on the PR branch.

The session runs in the sandbox on a writable checkout of the plan's branch. What it changed
comes out as data and is checked (fixfleet/workspace/changes.py); the platform then proves it
on fresh checkouts against the approved plan (fixfleet/workspace/verify.py): the new tests fail
on the base code and pass with the fix, and the suite breaks nothing that passed on the base
commit. Only then does it make the commits itself, from that same data on its own mirror
(`test: …`, `fix: …`), push them to the task's branch, update the PR with the evidence, and tell
Jira and Slack. A change that does not prove itself is never pushed.

The agent is not left guessing: during its session it may ask for that same proof of its
current files (the `verify_change` tool, a few times), and an attempt after a refused change
starts with the refusal in its prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_agent_sdk import SdkMcpTool, tool

from actors.agent import AgentLoop
from actors.session_models import SessionRequest
from fixfleet.models import RERUN, Task, TaskStatus
from fixfleet.queue import Job
from fixfleet.workspace.changes import ChangeRefused, ChangeSet, extract, snapshot
from fixfleet.workspace.diffs import unified_diff
from fixfleet.workspace.sandbox import SandboxSpec
from fixfleet.workspace.scope import PlanScope
from fixfleet.workspace.verify import Evidence, EvidenceError, refusal_text, verified_text

log = logging.getLogger(__name__)

CLAIMABLE = {TaskStatus.APPROVED, TaskStatus.EXECUTING}


class ExecutionFailed(RuntimeError):
    pass


@dataclass
class _Work:
    """The session's checkout as the platform reads it back, and the proofs already made of it."""

    tree: Path
    base: str
    before: dict
    placed: list[str]
    verified: dict[str, Evidence] = field(default_factory=dict)  # change digest -> its passed proof
    checks: int = 0


def change_digest(change: ChangeSet) -> str:
    digest = hashlib.sha256(change.base_sha.encode())
    for file in change.files:
        digest.update(f"\0{file.path}\0{file.mode}\0".encode() + (file.content or b"\0deleted"))
    return digest.hexdigest()


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
            work = _Work(checkout.path, base, before, placed)
            report = await self._execute(task, checkout.path, spec, env.plan.test_domains, work)
            change = await self._change(task, work)
        finally:
            await self.workspaces.discard(checkout)
        evidence = await self._verify(task, change, report, work)
        commits = await self._commit(task, change, evidence, report.get("summary", ""))
        proof = self.claude.redactor.value(evidence.model_dump())
        diff = unified_diff(change, await self.workspaces.read_files(task.repo, base, change.paths))
        # Recorded before the push: a retry after a push whose completion was lost finds it.
        await self.store.update_fields(task.id, context={"pushing": {"commits": commits, "evidence": proof},
                                                         "diff": diff})
        await self._complete(task, branch, head, commits, proof)

    async def _complete(self, task: Task, branch: str, head: str | None, commits: list[str],
                        proof: dict[str, Any]) -> None:
        """Push, publish and complete, holding the task: a cancel or pause that came first stops
        this before the push; one that comes meanwhile waits and finds the task COMPLETED."""
        async with self.holding(task) as hold:  # `task` as claimed: a pause since then stops this
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
        result = self.claude.redactor.value(run.model_dump()) | {"sha": head, "at": datetime.now(UTC).isoformat()}
        verdict = "passes" if run.exit_code == 0 else f"fails (exit {run.exit_code})"
        await self.side_job_done(task, RERUN, f"rerun-tests: the suite {verdict}", result)
        await self.publisher.tests_rerun(task, head, verdict, result)

    async def _execute(self, task: Task, worktree: Path, spec: SandboxSpec, domains: list[str],
                       work: _Work) -> dict[str, Any]:
        request = SessionRequest(role="executor", worktree=worktree, prompt=executor_prompt(task),
                                 context={"task": task.key, "title": task.title, "plan": task.plan,
                                          "plan_version": task.plan_version})
        tools = [self._verify_tool(task, work)] if self.settings.verify_calls else []
        return await self.run_session(task, request, spec, domains, ExecutionFailed, "no report", tools)

    async def _change(self, task: Task, work: _Work, *, record: bool = True) -> ChangeSet:
        """The agent's work as checked data; a change that breaks a rule fails the attempt (and
        the next attempt is told why)."""
        try:
            tree = await self.workspaces.list_tree(task.repo, work.base)
            change = await asyncio.to_thread(extract, work.tree, work.base, tree, before=work.before,
                                             mount_points=work.placed)
            leaking = [c.path for c in change.files if c.content and self.claude.redactor.knows(
                c.content.decode("utf-8", "replace"))]
            if leaking:
                raise ChangeRefused(f"{', '.join(leaking)} hold(s) one of the platform's secrets")
            return change
        except ChangeRefused as exc:
            if record:
                await self._refused(task, "change", f"change refused: {exc}", {})
            raise ExecutionFailed(f"change refused: {exc}") from exc

    async def _verify(self, task: Task, change: ChangeSet, report: dict[str, Any], work: _Work) -> Evidence:
        """The proof of the final change: the in-session one when it proved these very files."""
        agent_command = report.get("test_command")
        if (proven := work.verified.get(change_digest(change))) is not None:
            await self.store.record_event(task.id, actor=self.name,
                                          reason="verified: the final change is the one proven during the session")
            return proven.model_copy(update={"agent_test_command": agent_command, "test_seconds": 0.0})  # none ran now
        try:
            return await self.verifier.verify(task.repo, change, name=task.key, plan=PlanScope.from_plan(task.plan),
                                              agent_test_command=agent_command)
        except EvidenceError as exc:
            await self._refused(task, exc.stage, f"verification failed: {exc}", exc.evidence, refusal_text(exc))
            raise

    async def _refused(self, task: Task, stage: str, reason: str, evidence: dict[str, Any], text: str = "") -> None:
        """Audit the refusal and keep it for the next attempt's prompt."""
        redact = self.claude.redactor
        await self.store.record_event(task.id, actor=self.name, reason=reason,
                                      data={"evidence": redact.value(evidence), "stage": stage})
        await self.store.update_fields(task.id, context={"last_refusal": {
            "attempt": task.attempts, "plan_version": task.plan_version, "stage": stage,
            "text": redact.text(text or reason)[-6000:]}})

    def _verify_tool(self, task: Task, work: _Work) -> SdkMcpTool[Any]:
        """`verify_change`: the platform's own proof of the agent's current files, as the final
        check will make it (fresh checkouts, the approved scope, the base commit's results)."""
        limit = self.settings.verify_calls

        @tool("verify_change", (
            "Ask the platform to verify your change as it stands now, exactly as its final check will: your "
            "tests must fail on the base code (RED) and pass with your fix (GREEN), and the whole suite may not "
            f"break a test that passed before. Returns VERIFIED or REFUSED with the reason and the output. At most "
            f"{limit} calls; each takes as long as the repository's tests."), {"type": "object", "properties": {}})
        async def verify_change(args: dict[str, Any]) -> dict[str, Any]:
            if work.checks >= limit:
                return _text(f"verify_change may be called {limit} times per session; it was. Hand back your work "
                             "with report_result: the platform verifies it.")
            work.checks += 1
            started = time.monotonic()
            try:
                change = await self._change(task, work, record=False)
                evidence = await self.verifier.verify(task.repo, change, name=f"{task.key}-check{work.checks}",
                                                      plan=PlanScope.from_plan(task.plan))
            except ExecutionFailed as refused:
                answer, outcome = f"REFUSED at change: {refused}", "refused (change)"
            except EvidenceError as refused:
                answer, outcome = refusal_text(refused), f"refused ({refused.stage})"
            else:
                work.verified[change_digest(change)] = evidence
                answer, outcome = verified_text(evidence), "verified"
            await self.store.record_event(task.id, actor=self.name,
                                          reason=f"verify_change {work.checks}/{limit}: {outcome}",
                                          data={"seconds": round(time.monotonic() - started, 2)})
            return _text(self.claude.redactor.text(answer))

        return verify_change

    async def _commit(self, task: Task, change: ChangeSet, evidence: Evidence, summary: str) -> list[str]:
        """Two conventional commits made from the verified data: the tests, then the fix."""
        summary = self.claude.redactor.text(summary)
        subject = summary.strip().splitlines()[0][:60] if summary.strip() else "fix the reported bug"
        tests = await self.workspaces.commit(task.repo, change.base_sha, change.subset(evidence.test_files),
                                             f"test: reproduce {task.key}")
        fix = await self.workspaces.commit(task.repo, tests, change.subset(evidence.fix_files),
                                           f"fix: {subject} ({task.key})")
        return [tests, fix]


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def executor_prompt(task: Task) -> str:
    lines = [
        f"Carry out the approved plan v{task.plan_version} for {task.key}: {task.title}",
        "",
        "Plan:",
        json.dumps(task.plan or {}, indent=2),
        "",
        "Follow the `tdd-workflow` skill: write the failing test first, run it and see it fail, fix the code,",
        "run the tests and see them pass, then the whole suite. Do not commit: the platform verifies your files and commits.",
        "Change only what the plan names, plus tests: PLAN.md and the test configuration are not yours to change.",
        "Before you hand back, call the verify_change tool: it runs the platform's own proof of your files.",
        "Hand back your work with the report_result tool.",
    ]
    refusal = task.context.get("last_refusal")
    if refusal and refusal.get("plan_version") == task.plan_version:  # a refusal under an older plan tells nothing
        lines += ["", "Your previous attempt was refused by the platform's verification. "
                  "Do not repeat it; what the platform said:", "```", str(refusal.get("text", "")), "```"]
    return "\n".join(lines)
