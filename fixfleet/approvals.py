"""Who may do what to a task, and the plan decisions themselves: the one rule, for every channel.

Three scopes, as the commands (fixfleet/commands/definitions.yaml) and API tokens name them:
- read: API tokens with the read scope; anyone in Slack; on GitHub, anyone commenting on the
  task's own pull request or issue (GitHub already decides who can see it); the CLI.
- submit (create and steer: retry, cancel, pause, priority, ...): tokens with the submit scope;
  Slack users in FIXFLEET_SLACK_SUBMITTERS or FIXFLEET_SLACK_APPROVERS; GitHub users with
  triage or more on the task's own repository, or who asked for the task, on its own thread.
- approve (approve, reject, revise a plan): GitHub users with write, maintain or admin
  permission on the TASK'S OWN repository (asked of the GitHub API), commenting on the task's
  own pull request or issue; Slack users in FIXFLEET_SLACK_APPROVERS; API tokens with the
  approve scope; the operator's CLI. Where
FIXFLEET_INDEPENDENT_APPROVAL names the repository, whoever asked for the task may not approve
it. An approval names the plan it approves (a version, or the moment the approver saw it): if
the plan changed since, the approval is stale and refused. Every refusal is an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from datetime import datetime
from enum import StrEnum
from typing import Literal

from fixfleet.config import Settings
from fixfleet.forge_refs import ForgeRef
from fixfleet.forges.registry import Forges
from fixfleet.models import Task, TaskStatus
from fixfleet.store import Store


class Scope(StrEnum):
    """Who may run a command (definitions.yaml names one per command); the same names as the scopes of API tokens."""

    READ = "read"
    SUBMIT = "submit"
    APPROVE = "approve"


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    REVISE = "revise"


GITHUB_LEVELS: dict[str, set[str]] = {"submit": {"admin", "maintain", "write", "triage"},
                                      "approve": {"admin", "maintain", "write"}}
TARGET = {Decision.APPROVE: TaskStatus.APPROVED, Decision.REJECT: TaskStatus.REJECTED, Decision.REVISE: TaskStatus.REVISING}


@dataclass(frozen=True)
class Principal:
    """Who asks: where they come from and what the platform knows of them."""

    kind: Literal["github", "slack", "api", "cli"]
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)  # api tokens
    where: ForgeRef | None = None  # github: the pull request or issue the comment was made on

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"


class Refused(Exception):
    """The request was understood but not allowed; the message is fit to show the person."""


class StaleApproval(Refused):
    """The approval names a plan that has since changed (or the task is no longer waiting)."""


class Approvals:
    def __init__(self, store: Store, settings: Settings, forges: Forges | None = None) -> None:
        """`forges`: where repositories are reviewed (none: every repository is a plain git remote)."""
        self.store, self.settings, self.forges = store, settings, forges or Forges()

    async def decide(
        self,
        principal: Principal,
        ref: int | str,
        decision: Decision,
        *,
        plan_version: int | None = None,
        seen_at: datetime | None = None,
        feedback: str = "",
        note: str = "",
    ) -> Task:
        """`note`: why, in the approver's words or a rule's (a bulk approval says which); kept in
        the audit row's reason and data."""
        task = await self.store.get_task(ref)
        try:
            await self.authorize(principal, task, Scope.APPROVE)
            await self._check_fresh(task, plan_version, seen_at)
        except Refused as refusal:
            await self.store.record_event(
                task.id, actor=principal.actor, reason=f"{decision} refused: {refusal}", data={"decision": decision}
            )
            raise
        data = ({"plan_version": task.plan_version, "decision": decision} | ({"feedback": feedback} if feedback else {})
                | ({"note": note} if note else {}))
        return await self.store.transition(
            task.id, TARGET[decision], actor=principal.actor, reason=feedback or note or f"{decision}d",
            data=data, expected_version=task.version,
        )

    async def authorize(self, principal: Principal, task: Task | None, scope: Scope) -> None:
        """Raise Refused unless `principal` holds `scope` on `task` (None: on no task in particular,
        such as listing the queue)."""
        if scope == "approve" and task is not None:
            self._check_independent(principal, task)
        if principal.kind == "cli":
            return
        if principal.kind == "api":
            if scope not in principal.scopes:
                raise Refused(f"the token {principal.name!r} lacks the {scope} scope")
            return
        if principal.kind == "slack":
            self._authorize_slack(principal, scope)
            return
        if task is not None:
            await self._authorize_on_forge(principal, task, scope)
        elif scope != "read":
            raise Refused(f"name the task: {scope} acts on one task")

    def _authorize_slack(self, principal: Principal, scope: Scope) -> None:
        approvers = self.settings.slack_approvers
        if scope == "approve" and principal.name not in approvers:
            raise Refused("this Slack user is not in FIXFLEET_SLACK_APPROVERS")
        if scope == "submit" and principal.name not in {*approvers, *self.settings.slack_submitters}:
            raise Refused("this Slack user is not in FIXFLEET_SLACK_SUBMITTERS (or FIXFLEET_SLACK_APPROVERS)")

    async def _authorize_on_forge(self, principal: Principal, task: Task, scope: Scope) -> None:
        """Permission on the task's own repository, asked on the task's own pull request or issue:
        write access to some other repository that sends webhooks here proves nothing."""
        forge = self.forges.for_repo(task.repo)
        if forge.kind != principal.kind:
            raise Refused(f"{task.key}'s repository is not reviewed on GitHub (or GITHUB_TOKEN is not set): "
                          "use Slack, the API or the CLI")
        own = forge.threads_of(task)
        if principal.where not in own:
            raise Refused(f"this comment is on {principal.where or 'another thread'}, but {task.key} lives on "
                          f"{' and '.join(sorted(map(str, own))) or 'no GitHub thread'}: comment there")
        if scope == "read" or (scope == "submit" and task.context.get("initiator") == principal.actor):
            return
        level = await forge.permission(task.repo, principal.name)
        if level not in GITHUB_LEVELS[scope]:
            repo = forge.repo_of(task.repo)
            raise Refused(f"@{principal.name} has {level} permission on {repo.name if repo else task.repo}; {scope} "
                          f"needs {' or '.join(sorted(GITHUB_LEVELS[scope]))}")

    def _check_independent(self, principal: Principal, task: Task) -> None:
        if not any(fnmatchcase(task.repo, pattern) for pattern in self.settings.independent_approval):
            return
        initiator = task.context.get("initiator")
        if initiator and initiator == principal.actor:
            raise Refused(f"{principal.actor} asked for {task.key} and may not also approve it "
                          "(FIXFLEET_INDEPENDENT_APPROVAL)")

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
