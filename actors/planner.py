"""PlanningAgent: a long-lived Ray actor that turns a task into PLAN.md on a branch and asks a human.

It claims the task (RECEIVED/REVISING -> PLANNING), runs a planner session in a warm
worktree, and then the platform (not the agent) writes PLAN.md, commits and pushes it on
`fixfleet/<task-key>`, opens the draft PR, tells Jira and Slack, and moves the task to
AWAITING_APPROVAL with the plan and its new version.
"""

from __future__ import annotations

import json
from typing import Any

import ray

from actors.agent import AgentActor, AgentLoop
from actors.evidence import BOT_IDENTITY, git
from actors.session_models import SessionRequest
from fixfleet.models import Task, TaskStatus
from fixfleet.plan_doc import render_plan
from fixfleet.queue import Job

CLAIMABLE = {TaskStatus.RECEIVED, TaskStatus.REVISING, TaskStatus.PLANNING}


class PlanningFailed(RuntimeError):
    pass


class Planner(AgentLoop):
    role, queue_name = "planner", "planning"

    async def handle(self, job: Job) -> None:
        task = await self.claimable(job, CLAIMABLE)
        if task is None:
            return
        feedback = await self._feedback_thread(task)
        branch = task.branch or f"fixfleet/{task.key}"
        task = await self.claim(task, TaskStatus.PLANNING, branch=branch)
        worktree = await self.worktree(task, branch, existing=task.plan_version > 0 or task.attempts > 1, purpose="plan")
        try:
            plan = await self._plan(task, worktree.path, feedback)
            version = task.plan_version + 1
            (worktree.path / "PLAN.md").write_text(render_plan(task, plan, version))
            await git(worktree.path, "add", "PLAN.md")
            await git(worktree.path, *BOT_IDENTITY, "commit", "--no-verify", "-m", f"docs: plan v{version} for {task.key}")
            await self.workspaces.push(worktree, branch)
            task = await self.store.get_task(task.id)
            pr_url = await self.publisher.plan_ready(task, plan, version, branch)
            await self.store.transition(
                task.id, TaskStatus.AWAITING_APPROVAL, actor=self.name, reason=f"plan v{version} ready",
                data={"branch": branch, "pr_url": pr_url},
                changes={"plan": plan, "plan_version": version, "pr_url": pr_url or task.pr_url},
            )
        finally:
            await self.workspaces.remove_worktree(worktree)

    async def _plan(self, task: Task, worktree: Any, feedback: list[dict[str, Any]]) -> dict[str, Any]:
        request = SessionRequest(role="planner", worktree=worktree, prompt=planner_prompt(task, feedback),
                                 context=task_context(task, feedback))
        return await self.run_session(task, request, PlanningFailed, "no plan submitted")

    async def _feedback_thread(self, task: Task) -> list[dict[str, Any]]:
        """Every revise request so far, oldest first: the planner answers all of them."""
        return [
            {"author": e.actor, "at": e.created_at.isoformat(), "text": e.data.get("feedback", e.reason)}
            for e in await self.store.events(task.id)
            if e.to_status == TaskStatus.REVISING
        ]


def task_context(task: Task, feedback: list[dict[str, Any]]) -> dict[str, Any]:
    context = {"task": task.key, "source": task.source, "repo": task.repo, "title": task.title,
               "external_ids": task.external_ids, **{k: v for k, v in task.context.items() if k != "slack_ts"}}
    if task.plan:
        context["previous_plan"] = {"version": task.plan_version, "plan": task.plan}
    if feedback:
        context["feedback_thread"] = feedback
    return context


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
    if feedback:
        lines += ["", "Reviewer feedback to address (oldest first):", json.dumps(feedback, indent=2)]
    return "\n".join(lines)


@ray.remote(max_restarts=-1, max_task_retries=-1)
class PlanningAgent(AgentActor):
    """`PlanningAgent.options(name=..., resources={"planning_slot": 1}).remote(name, overrides)`."""

    loop_class = Planner
