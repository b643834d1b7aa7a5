"""GitHub's REST API (plus the one GraphQL mutation REST lacks), as the GitHub forge
(fixfleet/forges/github.py) uses it: a user's permission, the default branch, pull requests
(create, update, mark ready, close), labels, deleting a branch, and issue comments. The
platform's git pushes the branches itself.

Every write is idempotent, so a step retried after a crash changes nothing twice: `create_pull`
returns the open PR of the branch, `upsert_comment` finds its own comment by a hidden marker.
"""

from __future__ import annotations

import re
import time
from typing import Any, Unpack
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from fixfleet.integrations.base import (
    ApiClient,
    AuthenticationError,
    ClientOptions,
    NotFoundError,
    RejectedError,
    ResponseError,
    secret_value,
)
from fixfleet.integrations.http import IntegrationError

GITHUB_API_URL = "https://api.github.com"
MAX_PAGES = 30  # x 100 items: enough for any PR thread fixfleet takes part in
_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")
_MARKER = re.compile(r"^[\w.:/-]+$")

MARK_READY = """
mutation($id: ID!) {
  markPullRequestReadyForReview(input: {pullRequestId: $id}) {
    pullRequest { id number isDraft }
  }
}
"""


class GraphQLError(ResponseError):
    """GitHub's GraphQL answered 200 with an `errors` list."""


def comment_marker(marker: str) -> str:
    """The hidden HTML comment that identifies fixfleet's comment for one step."""
    if not _MARKER.match(marker) or "--" in marker:
        raise ValueError(f"marker {marker!r}: use letters, digits and . _ : / - (no '--')")
    return f"<!-- fixfleet:{marker} -->"


def graphql_url(api_url: str) -> str:
    """api.github.com -> /graphql; GitHub Enterprise `https://host/api/v3` -> `https://host/api/graphql`."""
    api_url = api_url.rstrip("/")
    return api_url[: -len("v3")] + "graphql" if api_url.endswith("/api/v3") else api_url + "/graphql"


async def _secondary_rate_limit_as_429(response: httpx.Response) -> None:
    """GitHub says "rate limited" with 403 + Retry-After or x-ratelimit-remaining: 0; make it a 429
    so the shared `request()` waits and retries it like any other."""
    if response.status_code != 403:
        return
    headers = response.headers
    if "retry-after" not in headers and headers.get("x-ratelimit-remaining") != "0":
        return
    if "retry-after" not in headers:
        try:
            headers["retry-after"] = str(max(1, int(headers.get("x-ratelimit-reset", "0")) - int(time.time())))
        except ValueError:
            pass
    response.status_code = 429


def _repo(repo_full_name: str) -> str:
    if not _REPO.match(repo_full_name or ""):
        raise ValueError(f"{repo_full_name!r} is not an owner/name repository")
    return repo_full_name


class GitHubClient(ApiClient):
    service = "github"

    def __init__(
        self,
        token: SecretStr | str | None,
        *,
        api_url: str = GITHUB_API_URL,
        permission_ttl_s: float = 60.0,
        **retry: Unpack[ClientOptions],
    ) -> None:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        plain = secret_value(token)
        if plain is not None:
            headers["Authorization"] = f"Bearer {plain}"
        super().__init__(
            base_url=api_url, headers=headers, secrets=[plain], event_hooks={"response": [_secondary_rate_limit_as_429]},
            **retry,
        )
        self.graphql_url = graphql_url(api_url)
        self.permission_ttl_s = permission_ttl_s
        self._permissions: dict[tuple[str, str], tuple[float, str]] = {}

    # --- permissions and plain comments ------------------------------------------------------

    async def permission(self, repo_full_name: str, user: str) -> str:
        """The user's permission on the repository (admin, maintain, write, triage, read, none).

        Asked of the API and cached briefly: `author_association` hides private org members,
        so it is never used for authorization.
        """
        key = (repo_full_name.lower(), user.lower())
        cached = self._permissions.get(key)
        if cached and time.monotonic() - cached[0] < self.permission_ttl_s:
            return cached[1]
        try:
            response = await self._call("GET", f"/repos/{repo_full_name}/collaborators/{quote(user)}/permission")
            body = self._json(response)
            level = body.get("role_name") or body.get("permission") or "none"
        except IntegrationError as exc:
            if exc.status != 404:  # 404: not a collaborator; other errors must not grant anything
                raise
            level = "none"
        self._permissions[key] = (time.monotonic(), level)
        return level

    async def comment(self, repo_full_name: str, issue_number: int, body: str) -> dict[str, Any]:
        response = await self._call("POST", f"/repos/{repo_full_name}/issues/{issue_number}/comments", json={"body": body})
        return self._json(response)

    async def remove_label(self, repo_full_name: str, issue_number: int, name: str) -> None:
        """Take a label off an issue or pull request (gone already: nothing)."""
        url = f"/repos/{_repo(repo_full_name)}/issues/{int(issue_number)}/labels/{quote(name, safe='')}"
        try:
            await self._call("DELETE", url)
        except NotFoundError:
            pass

    async def request_reviewers(self, repo_full_name: str, number: int, users: list[str],
                                team_slugs: list[str]) -> dict[str, Any]:
        url = f"/repos/{_repo(repo_full_name)}/pulls/{int(number)}/requested_reviewers"
        return self._json(await self._call("POST", url, json={"reviewers": users, "team_reviewers": team_slugs}))

    async def react(self, repo_full_name: str, comment_id: int, content: str = "+1") -> dict[str, Any]:
        """A reaction to an issue comment (GitHub answers 200 when it is there already)."""
        url = f"/repos/{_repo(repo_full_name)}/issues/comments/{int(comment_id)}/reactions"
        return self._json(await self._call("POST", url, json={"content": content}))

    # --- the repository -----------------------------------------------------------------------

    async def get_repo(self, repo_full_name: str) -> dict[str, Any]:
        return self._json(await self._call("GET", f"/repos/{_repo(repo_full_name)}"))

    async def default_branch(self, repo_full_name: str) -> str:
        return (await self.get_repo(repo_full_name))["default_branch"]

    # --- pull requests ------------------------------------------------------------------------

    async def get_pull(self, repo_full_name: str, number: int) -> dict[str, Any]:
        return self._json(await self._call("GET", f"/repos/{_repo(repo_full_name)}/pulls/{int(number)}"))

    async def find_pull(self, repo_full_name: str, head_branch: str) -> dict[str, Any] | None:
        """The open pull request whose head is `owner:head_branch` (same-repository branch)."""
        repo = _repo(repo_full_name)
        owner = repo.split("/")[0]
        head = head_branch if ":" in head_branch else f"{owner}:{head_branch}"
        branch = head.split(":", 1)[1]
        pulls = await self._paginate(f"/repos/{repo}/pulls", {"head": head, "state": "open"})
        for pull in pulls:
            if pull.get("state") == "open" and (pull.get("head") or {}).get("ref") == branch:
                return pull
        return None

    async def create_pull(
        self, repo_full_name: str, head: str, base: str, title: str, body: str, draft: bool = True
    ) -> dict[str, Any]:
        """Open a pull request from branch `head` into `base`, or return the one already open."""
        repo = _repo(repo_full_name)
        existing = await self.find_pull(repo, head)
        if existing is not None:
            return existing
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
        try:
            return self._json(await self._call("POST", f"/repos/{repo}/pulls", json=payload))
        except RejectedError as exc:
            if exc.status == 422 and "already exists" in str(exc):  # opened meanwhile
                existing = await self.find_pull(repo, head)
                if existing is not None:
                    return existing
            raise

    async def update_pull(
        self, repo_full_name: str, number: int, title: str | None = None, body: str | None = None
    ) -> dict[str, Any]:
        changes = {key: value for key, value in (("title", title), ("body", body)) if value is not None}
        if not changes:
            return await self.get_pull(repo_full_name, number)
        url = f"/repos/{_repo(repo_full_name)}/pulls/{int(number)}"
        return self._json(await self._call("PATCH", url, json=changes))

    async def close_pull(self, repo_full_name: str, number: int) -> dict[str, Any]:
        url = f"/repos/{_repo(repo_full_name)}/pulls/{int(number)}"
        return self._json(await self._call("PATCH", url, json={"state": "closed"}))

    async def delete_branch(self, repo_full_name: str, branch: str) -> bool:
        """Delete the branch; False when it was gone already (GitHub: 422 "Reference does not exist")."""
        try:
            await self._call("DELETE", f"/repos/{_repo(repo_full_name)}/git/refs/heads/{quote(branch, safe='/')}")
        except IntegrationError as exc:
            if exc.status in (404, 422):
                return False
            raise
        return True

    async def add_labels(self, repo_full_name: str, issue_number: int, labels: list[str]) -> list[dict[str, Any]]:
        """Add labels to an issue or pull request (GitHub makes the ones the repository lacks)."""
        url = f"/repos/{_repo(repo_full_name)}/issues/{int(issue_number)}/labels"
        return self._json(await self._call("POST", url, json={"labels": labels}))

    async def mark_ready(self, repo_full_name: str, pull: dict[str, Any] | int) -> dict[str, Any]:
        """Take a draft pull request out of draft (GraphQL: REST cannot). `pull` is the PR as
        returned by the API, or its number. Returns the PR as it is afterwards."""
        pr = pull if isinstance(pull, dict) else await self.get_pull(repo_full_name, pull)
        if not pr.get("draft"):
            return pr
        try:
            await self.graphql(MARK_READY, {"id": pr["node_id"]})
        except GraphQLError:
            fresh = await self.get_pull(repo_full_name, pr["number"])
            if fresh.get("draft"):
                raise
            return fresh  # someone else marked it ready meanwhile
        return await self.get_pull(repo_full_name, pr["number"])

    async def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST {api}/graphql; GraphQL errors (answered with 200) raise typed errors too."""
        response = await self._call("POST", self.graphql_url, json={"query": query, "variables": variables or {}})
        data = self._json(response)
        errors = data.get("errors") if isinstance(data, dict) else None
        if errors:
            kinds = {e.get("type") for e in errors if isinstance(e, dict)}
            message = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)[:500]
            cls = (
                _GraphQLNotFound if "NOT_FOUND" in kinds
                else _GraphQLForbidden if kinds & {"FORBIDDEN", "UNAUTHORIZED"}
                else GraphQLError
            )
            raise cls(self.service, f"graphql: {message}", response.status_code)
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise ResponseError(self.service, "graphql: answer without data", response.status_code)
        return data["data"]

    # --- issue comments -----------------------------------------------------------------------

    async def list_comments(self, repo_full_name: str, issue_number: int) -> list[dict[str, Any]]:
        return await self._paginate(f"/repos/{_repo(repo_full_name)}/issues/{int(issue_number)}/comments", {})

    async def upsert_comment(self, repo_full_name: str, issue_number: int, marker: str, body: str) -> dict[str, Any]:
        """One comment per `marker` on the issue or PR: updated in place when it exists (found by
        the hidden `<!-- fixfleet:{marker} -->`), created otherwise. Unchanged text: no write."""
        tag = comment_marker(marker)
        full = f"{body.rstrip()}\n\n{tag}"
        for existing in await self.list_comments(repo_full_name, issue_number):
            if tag in (existing.get("body") or ""):
                if existing.get("body") == full:
                    return existing
                url = f"/repos/{_repo(repo_full_name)}/issues/comments/{existing['id']}"
                return self._json(await self._call("PATCH", url, json={"body": full}))
        return await self.comment(repo_full_name, issue_number, full)

    # --- helpers ------------------------------------------------------------------------------

    async def _paginate(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every item of a list endpoint, following `Link: rel="next"`."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        query: dict[str, Any] | None = {**params, "per_page": 100}
        for _ in range(MAX_PAGES):
            response = await self._call("GET", url, params=query)
            page = self._json(response)
            if not isinstance(page, list):
                raise ResponseError(self.service, f"GET {path}: expected a list", response.status_code)
            items.extend(page)
            url = response.links.get("next", {}).get("url")
            if not url:
                break
            query = None  # the next link carries the query
        return items


class _GraphQLNotFound(GraphQLError, NotFoundError):
    pass


class _GraphQLForbidden(GraphQLError, AuthenticationError):
    pass
