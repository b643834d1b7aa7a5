"""Telling a task's new owner where it lives: a mention on the task's thread on its forge (its
pull request, else its issue), which GitHub turns into a notification (`assign @octocat` from
Slack, the API or the CLI too)."""

from __future__ import annotations

from fixfleet.approvals import Principal
from fixfleet.forges.registry import Forges
from fixfleet.models import Task


class ForgeOwnerNotice:
    def __init__(self, forges: Forges) -> None:
        self.forges = forges

    async def owner_assigned(self, task: Task, owner: str, by: Principal) -> str | None:
        """Mention the owner on the task's pull request (or issue); says where, or None when the
        task has no thread on a forge (or the owner is no login there)."""
        forge = self.forges.for_repo(task.repo)
        threads = forge.threads_of(task)  # its pull request first
        if not threads or ":" in owner:
            return None
        await forge.upsert_comment(threads[0], f"{task.key}-owner",
                                   f"@{owner}: {by.name} made you the owner of {task.key} ({task.status}).")
        return f"I mentioned @{owner} on {threads[0]}."
