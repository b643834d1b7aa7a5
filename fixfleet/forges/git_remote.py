"""A plain git remote as a forge: any URL git can push to, where the pushed branch is the whole
publication. Nobody comments or approves there (Slack, the API and the CLI do), so it names no
repository and no thread, and the operations on threads are never reached."""

from __future__ import annotations

from fixfleet.forges.base import Forge, ForgeError, PullRequest
from fixfleet.forge_refs import ForgeRef, ForgeRepo


class PlainGitRemote(Forge):
    kind = "git"

    def repo_of(self, url: str) -> ForgeRepo | None:
        return None

    async def open_pull(self, repo_url: str, head: str, title: str, body: str, *, draft: bool = True) -> PullRequest | None:
        return None  # the branch fixfleet pushed is what people review

    async def permission(self, repo_url: str, user: str) -> str:
        return "none"

    async def update_pull(self, ref: ForgeRef, *, body: str | None = None, ready: bool = False) -> None:
        raise _no_threads(ref)

    async def comment(self, ref: ForgeRef, body: str) -> None:
        raise _no_threads(ref)

    async def upsert_comment(self, ref: ForgeRef, marker: str, body: str) -> None:
        raise _no_threads(ref)


def _no_threads(ref: ForgeRef) -> ForgeError:
    return ForgeError(f"{ref}: a plain git remote has no pull requests or comments")
