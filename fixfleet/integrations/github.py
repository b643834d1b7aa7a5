"""GitHub REST: what the platform needs of it (permissions, comments; more as the agents land)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from pydantic import SecretStr

from fixfleet.integrations.http import IntegrationError, request

WRITE_PERMISSIONS = {"admin", "maintain", "write"}


class GitHubClient:
    def __init__(self, token: SecretStr | None, *, api_url: str = "https://api.github.com", permission_ttl_s: float = 60.0) -> None:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self.http = httpx.AsyncClient(base_url=api_url.rstrip("/"), headers=headers, timeout=10.0)
        self.permission_ttl_s = permission_ttl_s
        self._permissions: dict[tuple[str, str], tuple[float, str]] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await request(self.http, "github", method, path, **kwargs)

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
            response = await self._call("GET", f"/repos/{repo_full_name}/collaborators/{user}/permission")
            body = response.json()
            level = body.get("role_name") or body.get("permission") or "none"
        except IntegrationError as exc:
            if exc.status != 404:  # 404: not a collaborator; other errors must not grant anything
                raise
            level = "none"
        self._permissions[key] = (time.monotonic(), level)
        return level

    async def can_write(self, repo_full_name: str, user: str) -> bool:
        return await self.permission(repo_full_name, user) in WRITE_PERMISSIONS

    async def comment(self, repo_full_name: str, issue_number: int, body: str) -> dict[str, Any]:
        response = await self._call("POST", f"/repos/{repo_full_name}/issues/{issue_number}/comments", json={"body": body})
        return response.json()
