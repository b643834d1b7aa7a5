"""The planner: the long-lived agent loop that turns a task into PLAN.md on a branch and asks a human.

It claims the task (RECEIVED/REVISING -> PLANNING), makes sure the repository's environment
exists (a repository that cannot be set up fails here, with the setup log), runs a planner
session in the sandbox on a read-only checkout, and then the platform (not the agent) writes
PLAN.md as a commit made from data on its own mirror, pushes it on `fixfleet/<task-key>`, opens
the draft PR, tells Jira and Slack, and moves the task to AWAITING_APPROVAL with the plan and
its new version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from datetime import UTC, datetime
from typing import Any

from actors.agent import AgentLoop
from actors.session_models import SessionRequest
from fixfleet.models import (
    EXPLAIN,
    QUESTION_ANSWERED,
    QUESTION_ASKED,
    SIDE_JOBS,
    Task,
    TaskStatus,
)
from fixfleet.plan_doc import render_plan
from fixfleet.queue import Job
from fixfleet.forges.codeowners import owners_for, read_codeowners
from fixfleet.workspace.mirrors import FileContent
from fixfleet.workspace.sandbox import SandboxSpec

log = logging.getLogger(__name__)
CLAIMABLE = {TaskStatus.RECEIVED, TaskStatus.REVISING, TaskStatus.PLANNING}
# What the platform keeps in a task's context for itself: not the planner's business.
PLATFORM_CONTEXT = {"slack_ts", "reviewers", "sentry_event", "sentry_event_error", "jira_ticket", "jira_ticket_error", "pull_closed_at", "merge_told_at", "pushing", "plan_pushing", "evidence", "commits", "diff", "last_refusal",
                    *(key for job in SIDE_JOBS.values() for key in (job.key, job.asked, job.answered))}


class PlanningFailed(RuntimeError):
    pass


class Planner(AgentLoop):
    role, queue_name = "planner", "planning"
    git_history = 50  # discovery reads history: `git log -p`, `git blame`

    async def handle(self, job: Job) -> None:
        if job.message.action == EXPLAIN.action:
            await self.answer_questions(job)
            return
        task = await self.claimable(job, CLAIMABLE)
        if task is None:
            return
        feedback = await self._feedback_thread(task)
        branch = task.branch or f"fixfleet/{task.key}"
        task = await self.claim(task, TaskStatus.PLANNING, branch=branch)
        task = await self.publisher.fetch_context(task)  # Sentry's latest event for a task without a trace
        head = await self.workspaces.branch_head(task.repo, branch)  # a plan pushed before (revise, retry)
        pushed = task.context.get("plan_pushing") or {}
        if head and head == pushed.get("commit") and pushed.get("version") == task.plan_version + 1:
            # An earlier attempt pushed this plan and stopped before recording it (killed, a power
            # cut): only the publication is left; planning again would stack a second plan commit.
            await self.store.record_event(task.id, actor=self.name, reason="the plan is already on the branch; finishing")
            await self._publish(task, branch, head, head, pushed)
            await self._warm_baseline(task, pushed["base"])
            return
        base = head or await self.workspaces.resolve(task.repo)
        env = await self.environment(task, base)
        checkout, spec, _ = await self.session_checkout(task, env, base, "plan", writable=False)
        try:
            plan = await self._plan(task, checkout.path, spec, env.plan.test_domains, feedback)
            codeowners = read_codeowners(Path(checkout.path))  # asked to review the fix, by the files it touches
        finally:
            await self.workspaces.discard(checkout)
        users, teams = owners_for(codeowners, [str(f.get("path")) for f in plan.get("affected_files", [])
                                               if isinstance(f, dict) and f.get("path")])
        plan = self.claude.redactor.value(plan)  # PLAN.md, the PR, Jira and Slack quote it
        version = task.plan_version + 1
        document = render_plan(task, plan, version, setup=env.plan.describe(), sandboxed=self.sandbox.enabled)
        commit = await self.workspaces.commit(task.repo, base, {"PLAN.md": FileContent(content=document.encode())},
                                              f"docs: plan v{version} for {task.key}")
        pushing = {"commit": commit, "version": version, "plan": plan, "setup": env.plan.describe(), "base": base,
                   "reviewers": {"users": users, "teams": teams}}
        # Recorded before the push: a takeover after a push whose recording was lost finds it.
        await self.store.update_fields(task.id, context={"plan_pushing": pushing})
        await self._publish(task, branch, head, commit, pushing)
        await self._warm_baseline(task, base)

    async def _publish(self, task: Task, branch: str, head: str | None, commit: str, pushing: dict[str, Any]) -> None:
        """Push the plan's commit (unless the branch has it already), publish it and ask a human."""
        plan, version = pushing["plan"], pushing["version"]
        async with self.holding(task) as hold:  # as claimed: a cancel waits, or stops this
            task = hold.task
            if head != commit:
                await self.workspaces.push(task.repo, commit, branch, expected=head)
            published = await self.publisher.plan_ready(task, plan, version, branch)
            await hold.transition(
                TaskStatus.AWAITING_APPROVAL, actor=self.name, reason=f"plan v{version} ready",
                data={"branch": branch, "pr_url": published.pr_url, "setup": pushing["setup"],
                      "plan_version": version, "plan": plan},  # `plan v1` finds earlier plans here
                changes={"plan": plan, "plan_version": version, "pr_url": published.pr_url or task.pr_url,
                         "external_ids": task.external_ids | published.external_ids},
                context=published.context | {"reviewers": pushing.get("reviewers") or {}},
            )

    async def _warm_baseline(self, task: Task, sha: str) -> None:
        """The suite on the base commit, run while a human reads the plan, so that the executor's
        proof finds the base's own results ready. Best effort: the executor runs it if missing."""
        try:
            baseline, reused = await self.verifier.warm_baseline(task.repo, sha, name=f"{task.key}-base")
        except Exception:  # noqa: BLE001 - the plan is out; the executor's check can still make this run
            log.warning("%s: the base run of %s could not be made", self.name, task.key, exc_info=True)
            return
        failing = baseline.failing()
        await self.store.record_event(task.id, actor=self.name,
                                      reason=f"base run: {len(baseline.tests)} tests, {len(failing)} failing already",
                                      data={"baseline": baseline.summary(reused=reused) | {"failing": failing[:50]}})

    async def _plan(self, task: Task, worktree: Any, spec: SandboxSpec, domains: list[str],
                    feedback: list[dict[str, Any]]) -> dict[str, Any]:
        request = SessionRequest(role="planner", worktree=worktree, prompt=planner_prompt(task, feedback),
                                 context=task_context(task, feedback))
        return await self.run_session(task, request, spec, domains, PlanningFailed, "no plan submitted")

    async def answer_questions(self, job: Job) -> None:
        """Answer the questions asked about the plan since the last answer, from the code on the
        task's branch (a read-only checkout in the sandbox), and post the answer where the task
        is discussed. The task's state is left alone; a question that cannot be answered says why."""
        task = await self.side_job_task(job, EXPLAIN)
        if task is None:
            return
        questions = await self._open_questions(task)
        if not questions:
            await self.side_job_done(task, EXPLAIN, "explain: no open question")
            return
        try:
            answer = self.claude.redactor.value(await self._answer(task, questions))
        except Exception as exc:  # told to whoever asked, with the reason
            log.warning("%s: the question about %s could not be answered", self.name, task.key, exc_info=True)
            await self.side_job_done(task, EXPLAIN, f"explain: the question could not be answered: {exc}; ask again")
            return
        record = {"questions": questions, "at": datetime.now(UTC).isoformat(), **answer}
        await self.side_job_done(task, EXPLAIN, QUESTION_ANSWERED, record)
        # The answer is on the task (`explain`) whatever happens here: an outage only costs the post.
        if missed := await self.publisher.question_answered(task, questions, answer["answer"],
                                                            task.context.get(EXPLAIN.asked, "")):
            await self.store.record_event(task.id, actor=self.name, reason=f"explain: the answer is on the task but "
                                          f"could not be posted to {' or '.join(missed)} (see the log)")

    async def _answer(self, task: Task, questions: list[str]) -> dict[str, Any]:
        head = await self.workspaces.branch_head(task.repo, task.branch) if task.branch else None
        base = head or await self.workspaces.resolve(task.repo)
        env = await self.environment(task, base)
        checkout, spec, _ = await self.session_checkout(task, env, base, "answer", writable=False)
        try:
            request = SessionRequest(role="planner", purpose="answer", worktree=checkout.path,
                                     prompt=answer_prompt(task, questions), context=task_context(task, []))
            return await self.run_session(task, request, spec, env.plan.test_domains, PlanningFailed, "no answer given")
        finally:
            await self.workspaces.discard(checkout)

    async def _open_questions(self, task: Task) -> list[str]:
        """The questions asked since the planner last answered, oldest first."""
        questions: list[str] = []
        for event in await self.store.events(task.id):
            if event.reason == QUESTION_ANSWERED:
                questions.clear()
            elif event.reason == QUESTION_ASKED and event.data.get("question"):
                questions.append(str(event.data["question"]))
        return questions

    async def _feedback_thread(self, task: Task) -> list[dict[str, Any]]:
        """Every revise request so far, oldest first: the planner answers all of them."""
        return [
            {"author": e.actor, "at": e.created_at.isoformat(), "text": e.data.get("feedback", e.reason)}
            for e in await self.store.events(task.id)
            if e.to_status == TaskStatus.REVISING
        ]


def task_context(task: Task, feedback: list[dict[str, Any]]) -> dict[str, Any]:
    context = {"task": task.key, "source": task.source, "repo": task.repo, "title": task.title,
               "external_ids": task.external_ids, **{k: v for k, v in task.context.items() if k not in PLATFORM_CONTEXT}}
    if task.plan:
        context["previous_plan"] = {"version": task.plan_version, "plan": task.plan}
    if feedback:
        context["feedback_thread"] = feedback
    return context


def answer_prompt(task: Task, questions: list[str]) -> str:
    return "\n".join([
        f"A reviewer asks about your plan v{task.plan_version} for {task.key}: {task.title}",
        "",
        "The plan:", json.dumps(task.plan, indent=2),
        "",
        "Their question(s), oldest first:", *(f"- {q[:4000]}" for q in questions),
        "",
        "Answer from the code (cite path:line); do not edit files. Hand back the answer with the answer_question tool.",
    ])


def planner_prompt(task: Task, feedback: list[dict[str, Any]]) -> str:
    skill = "plan-changes" if feedback else "discovery"
    lines = [
        f"Plan the fix for {task.key}: {task.title}",
        "",
        task.body[:20000],
        "",
        f"Use the `{skill}` skill, then hand back the plan with the submit_plan tool.",
        "Do not edit files: the platform writes PLAN.md from your plan.",
    ]
    lines += sentry_lines(task.context) + jira_lines(task.context)
    if feedback:
        lines += ["", "Reviewer feedback to address (oldest first):", json.dumps(feedback, indent=2)]
    return "\n".join(lines)


def jira_lines(context: dict[str, Any]) -> list[str]:
    """The Jira ticket the platform read (or why it could not), for the prompt."""
    if error := context.get("jira_ticket_error"):
        return ["", f"The Jira ticket could not be read ({error}): plan from the title and the text above."]
    ticket = context.get("jira_ticket")
    if not isinstance(ticket, dict):
        return []
    lines = ["", "The Jira ticket (read by the platform):", ticket.get("description") or "(no description)"]
    if ticket.get("components"):
        lines.append("Components: " + ", ".join(ticket["components"]))
    lines += [f"Comment: {c}" for c in ticket.get("comments") or []]
    if ticket.get("sentry_links"):
        lines.append("Linked Sentry issues: " + ", ".join(ticket["sentry_links"]))
    return lines


def sentry_lines(context: dict[str, Any]) -> list[str]:
    """The latest Sentry event the platform fetched (or why it could not), for the prompt."""
    if error := context.get("sentry_event_error"):
        return ["", f"Sentry could not be reached for this issue's latest event ({error}): plan from the "
                    "title and the code, and say in the plan that the stack trace was not available."]
    event = context.get("sentry_event")
    if not isinstance(event, dict):
        return []
    lines = ["", "The Sentry issue's latest event (fetched by the platform):"]
    for exc in event.get("exceptions") or []:
        lines.append(f"{exc.get('type') or 'Error'}: {exc.get('value') or ''}")
        lines += [f"  {f.get('filename') or f.get('abs_path')}:{f.get('lineno')} in {f.get('function')}"
                  + (f"\n      {f['context_line'].strip()}" if f.get("context_line") else "")
                  for f in exc.get("frames") or []]
    facts = {k: event.get(k) for k in ("release", "environment", "user_count") if event.get(k) is not None}
    if facts:
        lines.append("Facts: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    if crumbs := event.get("breadcrumbs"):
        lines.append("Breadcrumbs (last first): " + "; ".join(
            f"{c.get('category')}: {c.get('message')}" for c in reversed(crumbs[-10:])))
    return lines
