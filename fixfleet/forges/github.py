"""GitHub (github.com or an Enterprise server) as a forge, over its REST API
(fixfleet/forges/github_api.py). A repository is on it when its URL is a github.com one or
FIXFLEET_GITHUB_REPOS maps it to owner/name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fixfleet.forges.base import Forge, ForgeError, PullRequest, PullState
from fixfleet.forges.github_api import GitHubClient
from fixfleet.forge_refs import ISSUE_KEY, PULL_KEY, ForgeRef, ForgeRepo, host_of
from fixfleet.models import PullOutcome

_GITHUB_URL = re.compile(
    r"^(?:https://github\.com/|git@github\.com:|ssh://git@github\.com/)(?P<name>[\w.-]+/[\w.-]+?)(?:\.git)?/?$")


class GitHubForge(Forge):
    kind = "github"
    pull_key = PULL_KEY
    issue_key = ISSUE_KEY

    def __init__(self, client: GitHubClient, repos: Mapping[str, str] | None = None) -> None:
        """`repos`: git URL -> owner/name, for repositories whose URL does not say (an Enterprise
        server, a mirror)."""
        self.client = client
        self.repos = dict(repos or {})
        self.host = host_of(client.base_url)  # threads on an Enterprise server are named with its host

    def repo_of(self, url: str) -> ForgeRepo | None:
        match = _GITHUB_URL.match(url)
        name = self.repos.get(url) or (match["name"] if match else None)
        return ForgeRepo(host=self.host, name=name) if name else None

    async def open_pull(self, repo_url: str, head: str, title: str, body: str, *, draft: bool = True) -> PullRequest | None:
        repo = self.repo_of(repo_url)
        if repo is None:
            return None
        base = await self.client.default_branch(repo.name)
        pull = await self.client.create_pull(repo.name, head, base, title, body, draft=draft)
        await self.client.update_pull(repo.name, pull["number"], body=body)  # an open one gets the new body
        return PullRequest(ref=repo.thread(pull["number"]), url=pull.get("html_url"))

    async def update_pull(self, ref: ForgeRef, *, body: str | None = None, ready: bool = False) -> None:
        pull = await self.client.update_pull(ref.repo.name, ref.number, body=body)
        if ready:
            await self.client.mark_ready(ref.repo.name, pull)

    async def comment(self, ref: ForgeRef, body: str) -> None:
        await self.client.comment(ref.repo.name, ref.number, body)

    async def upsert_comment(self, ref: ForgeRef, marker: str, body: str) -> None:
        await self.client.upsert_comment(ref.repo.name, ref.number, marker, body)

    async def permission(self, repo_url: str, user: str) -> str:
        repo = self.repo_of(repo_url)
        return await self.client.permission(repo.name, user) if repo else "none"

    async def delete_branch(self, repo_url: str, branch: str) -> bool:
        repo = self.repo_of(repo_url)
        if repo is None or not branch.startswith("fixfleet/"):
            raise ForgeError(f"refused to delete {branch!r} of {repo_url}: only fixfleet/* branches on GitHub")
        return await self.client.delete_branch(repo.name, branch)

    async def pull_state(self, ref: ForgeRef) -> PullState:
        return pull_state(await self.client.get_pull(ref.repo.name, ref.number))

    async def close_pull(self, ref: ForgeRef, reason: str, *, marker: str, delete_branch: bool) -> None:
        pull = await self.client.get_pull(ref.repo.name, ref.number)
        if pull.get("merged"):
            return  # merged meanwhile: nothing to close, and its branch is history now
        await self.client.upsert_comment(ref.repo.name, ref.number, marker, reason)
        if pull.get("state") == "open":
            await self.client.close_pull(ref.repo.name, ref.number)
        head = pull.get("head") or {}
        branch = head.get("ref")
        same_repo = ((head.get("repo") or {}).get("full_name") or ref.repo.name).lower() == ref.repo.name.lower()
        if delete_branch and same_repo and isinstance(branch, str) and branch.startswith("fixfleet/"):
            await self.client.delete_branch(ref.repo.name, branch)

    async def request_reviewers(self, ref: ForgeRef, users: list[str], teams: list[str]) -> None:
        if users or teams:
            await self.client.request_reviewers(ref.repo.name, ref.number, users,
                                                [t.split("/", 1)[1] for t in teams if "/" in t])

    async def acknowledge(self, ref: ForgeRef, comment_id: str) -> None:
        if comment_id.isdigit():  # an issue comment's id (a review's is answered by the reply alone)
            await self.client.react(ref.repo.name, int(comment_id))

    async def add_labels(self, ref: ForgeRef, labels: list[str]) -> None:
        await self.client.add_labels(ref.repo.name, ref.number, labels)

    async def set_state_label(self, ref: ForgeRef, label: str, *, prefix: str) -> None:
        pull = await self.client.get_pull(ref.repo.name, ref.number)
        names = [str(item.get("name")) for item in pull.get("labels") or [] if isinstance(item, dict)]
        for name in names:
            if name.startswith(prefix) and name != label:
                await self.client.remove_label(ref.repo.name, ref.number, name)
        if label not in names:
            await self.client.add_labels(ref.repo.name, ref.number, [label])


def pull_state(pull: dict[str, Any]) -> PullState:
    """A pull request as the REST API (or a `pull_request` webhook) shows it, as a PullState."""
    if pull.get("merged") or pull.get("merged_at"):
        return PullState(outcome=PullOutcome.MERGED, by=(pull.get("merged_by") or {}).get("login"),
                         at=_time(pull.get("merged_at")))
    if pull.get("state") == "closed":
        return PullState(outcome=PullOutcome.CLOSED, at=_time(pull.get("closed_at")))
    return PullState(outcome=PullOutcome.OPEN)


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
