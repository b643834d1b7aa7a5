"""A client of a running fixfleet's task API (serve_app/tasks_api.py), as the backlog uses it.

`TaskApi(url, token)` is cheap and holds no connection until used: its httpx client is made in
the event loop that first needs it (a notebook's, or the one `fixfleet.backlog.sync` starts), and
`aclose()` lets it go. Transport errors and 502/503/504 are retried; a submission is safe to
retry because it carries an Idempotency-Key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import ConfigDict, SecretStr

from fixfleet.backlog.items import BacklogItem
from fixfleet.models import TERMINAL, TaskEventView, TaskView

RETRIED = {502, 503, 504}
FIND_BATCH = 100  # the API's limit of external filters per request


class ApiError(Exception):
    """fixfleet answered with an error; `detail` is its reason."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"fixfleet answered {status}: {detail}" if status else detail)
        self.status, self.detail = status, detail


class RemoteTask(TaskView):
    """A task as the API shows it (fields a newer fixfleet adds are ignored)."""

    model_config = ConfigDict(extra="ignore")

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


class RemoteEvent(TaskEventView):
    """A row of a task's audit trail as the API shows it."""

    model_config = ConfigDict(extra="ignore")


class TaskApi:
    def __init__(self, url: str, token: str | SecretStr, *, timeout_s: float = 30.0, attempts: int = 3,
                 backoff_s: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never the token
        return f"TaskApi({self.url!r})"

    async def __aenter__(self) -> TaskApi:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = self._loop = None

    # --- the calls ------------------------------------------------------------------------------

    async def whoami(self) -> tuple[str, list[str]]:
        """The token's name and scopes."""
        answer = await self._call("GET", "/whoami")
        return str(answer["name"]), [str(s) for s in answer["scopes"]]

    async def submit(self, item: BacklogItem) -> tuple[RemoteTask, bool]:
        """Create the item's task (or get the one an earlier try made); returns (task, created)."""
        if item.repository is None:
            raise ValueError(f"{item.ref} has no repository")
        body = {"repo": item.repository, "title": item.title, "body": item.task_body(),
                "priority": item.priority.value, "external_ids": item.external_ids}
        response = await self._send("POST", "/tasks", json=body, headers={"Idempotency-Key": item.idempotency_key})
        return RemoteTask.model_validate(response.json()), response.status_code == 202

    async def find(self, external: list[tuple[str, str]]) -> list[RemoteTask]:
        """Every task carrying one of these (key, id) external ids."""
        found: dict[int, RemoteTask] = {}
        for start in range(0, len(external), FIND_BATCH):
            batch = external[start:start + FIND_BATCH]
            params: list[tuple[str, str | int]] = [("external", f"{key}:{value}") for key, value in batch]
            offset: int | None = 0
            while offset is not None:
                page = await self._call("GET", "/tasks", params=[*params, ("limit", 500), ("offset", offset)])
                found.update((t.id, t) for t in map(RemoteTask.model_validate, page["items"]))
                offset = page["next_offset"]
        return sorted(found.values(), key=lambda t: t.id)

    async def get(self, ref: str) -> RemoteTask:
        return RemoteTask.model_validate(await self._call("GET", f"/tasks/{ref}"))

    async def events(self, ref: str) -> list[RemoteEvent]:
        return [RemoteEvent.model_validate(e) for e in await self._call("GET", f"/tasks/{ref}/events")]

    async def approve(self, ref: str, plan_version: int, note: str) -> RemoteTask:
        body = {"plan_version": plan_version, "note": note}
        return RemoteTask.model_validate(await self._call("POST", f"/tasks/{ref}/approve", json=body))

    # --- plumbing -------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:  # a client belongs to the loop that made it
            self._http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, headers={
                "Authorization": f"Bearer {self._token.get_secret_value()}", "Accept": "application/json"})
            self._loop = loop
        return self._http

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._send(method, path, **kwargs)).json()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self._client().request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.attempts:
                    reason = f"{type(exc).__name__}: {exc}"
                    raise ApiError(None, f"fixfleet at {self.url} did not answer ({reason})") from None
            else:
                if response.status_code not in RETRIED or attempt == self.attempts:
                    break
            await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        if response.is_error:
            raise ApiError(response.status_code, _detail(response))
        return response


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(detail, list):  # FastAPI's validation errors
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail)
    return str(detail)
