"""The forge seam: what fixfleet asks of the place where a repository's changes are reviewed.

One interface, one implementation per forge (a new forge is one module, and one line in
fixfleet/providers.py, which builds them all):
- GitHub (fixfleet/forges/github.py): pull requests, comments, permissions over its REST API;
- a plain git remote (fixfleet/forges/git_remote.py): any URL git can push to; the pushed branch
  is the whole publication, and approvals come from Slack, the API or the CLI.

What crosses the seam is typed: repositories and threads as `ForgeRepo` / `ForgeRef`
(fixfleet/forge_refs.py, the one place they are parsed and formatted), pull requests as
`PullRequest`. A task keeps its threads as external ids (`pull_key`, `issue_key`); a forge reads
them back with `pull_of` / `threads_of`.

Every write is idempotent: a step retried after a crash changes nothing twice. Steps still to
come take one method each here, on refs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from fixfleet.forge_refs import ForgeRef, ForgeRepo
from fixfleet.models import PullOutcome, Task


class ForgeError(Exception):
    """The forge cannot do this (a plain git remote has no pull requests or comments)."""


class PullRequest(BaseModel):
    """A pull request fixfleet opened (or found open) for a task's branch."""

    model_config = ConfigDict(frozen=True)

    ref: ForgeRef
    url: str | None = None  # its web page


class PullState(BaseModel):
    """Where a pull request stands: open, merged (by whom, when) or closed unmerged."""

    model_config = ConfigDict(frozen=True)

    outcome: PullOutcome
    by: str | None = None  # who merged it (closed: who closed it, when the forge says)
    at: datetime | None = None  # when it was merged or closed


class Forge(ABC):
    # Who acts here: a Principal of this kind (a commenter on this forge) may act on the tasks
    # whose repository is on it; "git" for a plain remote, where nobody comments.
    kind: ClassVar[str]
    # The task's external ids that name its pull request and the issue it was asked for on.
    pull_key: ClassVar[str | None] = None
    issue_key: ClassVar[str | None] = None

    @abstractmethod
    def repo_of(self, url: str) -> ForgeRepo | None:
        """The repository at git URL `url`, when it is reviewed on this forge; else None."""

    def pull_of(self, task: Task) -> ForgeRef | None:
        """The task's pull request on this forge, if it has one."""
        return _ref(task.external_ids.get(self.pull_key)) if self.pull_key else None

    def threads_of(self, task: Task) -> list[ForgeRef]:
        """Where the task is discussed on this forge: its pull request and the issue it came from."""
        found = [_ref(task.external_ids.get(key)) for key in (self.pull_key, self.issue_key) if key]
        return [ref for ref in found if ref is not None]

    @abstractmethod
    async def open_pull(self, repo_url: str, head: str, title: str, body: str, *, draft: bool = True) -> PullRequest | None:
        """Open a pull request from branch `head` into the default branch (or find the one open)
        and set its body; None where the forge has no pull requests."""

    @abstractmethod
    async def update_pull(self, ref: ForgeRef, *, body: str | None = None, ready: bool = False) -> None:
        """Set the pull request's body; `ready`: take it out of draft too."""

    @abstractmethod
    async def comment(self, ref: ForgeRef, body: str) -> None:
        """A new comment on the pull request or issue (an answer to a command)."""

    @abstractmethod
    async def upsert_comment(self, ref: ForgeRef, marker: str, body: str) -> None:
        """One comment per `marker` on the thread: made once, then edited in place."""

    @abstractmethod
    async def permission(self, repo_url: str, user: str) -> str:
        """`user`'s permission on the repository: admin, maintain, write, triage, read or none."""

    async def pull_state(self, ref: ForgeRef) -> PullState:
        """Whether the pull request is open, merged or closed unmerged."""
        raise ForgeError(f"{ref}: {self.kind} has no pull requests")

    async def close_pull(self, ref: ForgeRef, reason: str, *, marker: str, delete_branch: bool) -> None:
        """Say why on the pull request (once per `marker`), close it, and delete its head branch
        (`delete_branch`); each step does nothing when already done."""
        raise ForgeError(f"{ref}: {self.kind} has no pull requests")

    async def delete_branch(self, repo_url: str, branch: str) -> bool:
        """Delete fixfleet's branch (`fixfleet/*` only) on the repository, through the forge's API;
        False when it was gone already."""
        raise ForgeError(f"{repo_url}: {self.kind} deletes no branches (git does)")

    async def request_reviewers(self, ref: ForgeRef, users: list[str], teams: list[str]) -> None:
        """Ask these people (logins) and teams (`org/team`) to review the pull request."""

    async def acknowledge(self, ref: ForgeRef, comment_id: str) -> None:
        """Say a command in comment `comment_id` on the thread was read (GitHub: a +1 reaction)."""

    async def add_labels(self, ref: ForgeRef, labels: list[str]) -> None:
        """Put these labels on the pull request or issue (the ones it has stay)."""
        raise ForgeError(f"{ref}: {self.kind} has no labels")

    async def set_state_label(self, ref: ForgeRef, label: str, *, prefix: str) -> None:
        """`label` on the pull request, and no other label starting with `prefix` (the task's state)."""
        raise ForgeError(f"{ref}: {self.kind} has no labels")


def _ref(text: str | None) -> ForgeRef | None:
    """A stored thread reference; one that does not parse names nothing (it is never guessed at)."""
    if not text:
        return None
    try:
        return ForgeRef.parse(text)
    except ValueError:
        return None
