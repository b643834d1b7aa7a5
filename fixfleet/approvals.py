"""Who may approve, reject or revise a plan, and the decision itself.

Allowed: GitHub users with write, maintain or admin permission on the repository (asked of
the GitHub API), Slack users in FIXFLEET_SLACK_APPROVERS, API tokens with the approve scope,
and the operator's CLI. An approval names the plan it approves (a version, or the moment the
approver saw it): if the plan changed since, the approval is stale and refused. Every
refusal is recorded as an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from fixfleet.config import Settings
from fixfleet.integrations.github import GitHubClient
from fixfleet.models import Task, TaskStatus
from fixfleet.store import Store


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    REVISE = "revise"


TARGET = {Decision.APPROVE: TaskStatus.APPROVED, Decision.REJECT: TaskStatus.REJECTED, Decision.REVISE: TaskStatus.REVISING}


@dataclass(frozen=True)
class Principal:
    """Who asks: where they come from and what the platform knows of them."""

    kind: Literal["github", "slack", "api", "cli"]
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)  # api tokens
    repo_full_name: str | None = None  # github: the repository the comment was made on

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"


class Refused(Exception):
    """The request was understood but not allowed; the message is fit to show the person."""


class StaleApproval(Refused):
    """The approval names a plan that has since changed (or the task is no longer waiting)."""


class Approvals:
    def __init__(self, store: Store, settings: Settings, github: GitHubClient | None = None) -> None:
        self.store, self.settings, self.github = store, settings, github

    async def decide(
        self,
        principal: Principal,
        ref: int | str,
        decision: Decision,
        *,
        plan_version: int | None = None,
        seen_at: datetime | None = None,
        feedback: str = "",
    ) -> Task:
        task = await self.store.get_task(ref)
        try:
            await self._authorize(principal, task)
            await self._check_fresh(task, plan_version, seen_at)
        except Refused as refusal:
            await self.store.record_event(
                task.id, actor=principal.actor, reason=f"{decision} refused: {refusal}", data={"decision": decision}
            )
            raise
        data = {"plan_version": task.plan_version, "decision": decision} | ({"feedback": feedback} if feedback else {})
        return await self.store.transition(
            task.id, TARGET[decision], actor=principal.actor, reason=feedback or f"{decision}d",
            data=data, expected_version=task.version,
        )

    async def _authorize(self, principal: Principal, task: Task) -> None:
        if principal.kind == "cli":
            return
        if principal.kind == "api":
            if "approve" not in principal.scopes:
                raise Refused(f"the token {principal.name!r} lacks the approve scope")
            return
        if principal.kind == "slack":
            if principal.name not in self.settings.slack_approvers:
                raise Refused("this Slack user is not in FIXFLEET_SLACK_APPROVERS")
            return
        await self._authorize_github(principal, task)

    async def _authorize_github(self, principal: Principal, task: Task) -> None:
        if self.github is None or principal.repo_full_name is None:
            raise Refused("GitHub approvals need GITHUB_TOKEN to check permissions")
        level = await self.github.permission(principal.repo_full_name, principal.name)
        if level not in {"admin", "maintain", "write"}:
            raise Refused(f"@{principal.name} has {level} permission on {principal.repo_full_name}; approving needs write")

    async def _check_fresh(self, task: Task, plan_version: int | None, seen_at: datetime | None) -> None:
        if task.status != TaskStatus.AWAITING_APPROVAL:
            raise StaleApproval(f"{task.key} is {task.status}, not waiting for approval")
        if plan_version is not None and plan_version != task.plan_version:
            raise StaleApproval(f"this approves plan v{plan_version}, but {task.key} now has plan v{task.plan_version}")
        if seen_at is not None:
            posted = await self._plan_posted_at(task)
            if posted is not None and posted > seen_at:
                raise StaleApproval(f"plan v{task.plan_version} of {task.key} was posted after this comment; review it again")

    async def _plan_posted_at(self, task: Task) -> datetime | None:
        events = await self.store.events(task.id)
        posted = [e.created_at for e in events if e.to_status == TaskStatus.AWAITING_APPROVAL]
        return posted[-1] if posted else None
