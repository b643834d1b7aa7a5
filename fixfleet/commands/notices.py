"""Telling a task's new owner where it lives: a mention on the task's GitHub thread, which
GitHub turns into a notification (`assign @octocat` from Slack, the API or the CLI too)."""

from __future__ import annotations

from fixfleet.approvals import Principal
from fixfleet.config import Settings
from fixfleet.integrations.github import GitHubClient
from fixfleet.models import Task
from fixfleet.repos import github_name


class GitHubOwnerNotice:
    def __init__(self, github: GitHubClient | None, settings: Settings) -> None:
        self.github, self.settings = github, settings

    async def owner_assigned(self, task: Task, owner: str, by: Principal) -> str | None:
        """Mention the owner on the task's pull request (or issue); says where, or None when the
        task has no GitHub thread (or the owner is no GitHub login)."""
        thread = task.external_ids.get("github_pr") or task.external_ids.get("github_issue")
        repo = github_name(task.repo, self.settings)
        if self.github is None or repo is None or not thread or ":" in owner:
            return None
        number = int(thread.rsplit("#", 1)[1])
        await self.github.upsert_comment(repo, number, f"{task.key}-owner",
                                         f"@{owner}: {by.name} made you the owner of {task.key} ({task.status}).")
        return f"I mentioned @{owner} on {thread}."
