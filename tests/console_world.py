"""What the console tests share: tokens, tasks in the states a reviewer meets, agent sessions as
actors/session.py records them, and a signed-in HTTP client."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import UTC, datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from redis.asyncio import Redis

from actors.session import _Session
from actors.transcript import Transcriber
from fixfleet.config import Settings
from fixfleet.models import NewTask, Source, Task, TaskStatus
from fixfleet.redact import Redactor
from fixfleet.services import AGENTS_KEY
from fixfleet.sessions import MESSAGE_LIMIT_BYTES, NewSession, SessionEnd, SessionStatus
from fixfleet.sessions import SessionMessage as RecordedMessage
from fixfleet.store import Store

TOKENS = [
    {"name": "reader", "token": "tok-read-0123456789", "scopes": ["read"]},
    {"name": "ci", "token": "tok-submit-0123456789", "scopes": ["read", "submit"]},
    {"name": "lead", "token": "tok-approve-0123456789", "scopes": ["read", "submit", "approve"]},
]
READ, SUBMIT, APPROVE = (t["token"] for t in TOKENS)
REPO = "https://github.com/acme/api.git"
PLANNER = "planner-7f3a"


def console_settings(settings: Settings, tokens: list[dict[str, Any]] | None = None) -> Settings:
    # A lease of 30 s: an agent's heartbeat written once stays alive through a test (3 leases).
    configured = settings.model_copy(update={"api_tokens": json.dumps(TOKENS if tokens is None else tokens),
                                             "repo_allowlist": ["https://github.com/acme/*"], "lease_s": 30.0})
    return Settings.model_validate(configured.model_dump())  # re-validated: secrets as SecretStr


def a_plan(root_cause: str = "parse_date() drops the timezone, so naive and aware datetimes are compared",
           **changes: Any) -> dict[str, Any]:
    """A plan as the planner's submit_plan tool hands it back (actors/session_models.PlanOutput)."""
    return {"repository": "acme/api", "confidence": 0.85,
            "affected_files": [{"path": "api/dates.py", "reason": "parse_date() is where the zone is lost"}],
            "root_cause": root_cause, "steps": ["keep tzinfo in parse_date()", "compare aware datetimes"],
            "tests_to_add": [{"path": "tests/test_dates.py::test_keeps_zone", "description": "an aware date stays aware"}],
            "test_command": "pytest tests/test_dates.py", "risk": "low"} | changes


def an_evidence() -> dict[str, Any]:
    """The executor's proof as it records it (fixfleet/workspace/verify.Evidence, dumped)."""
    test = "tests/test_dates.py::test_keeps_zone"
    return {"red": {"command": "pytest tests/test_dates.py", "exit_code": 1, "seconds": 0.8, "tests": {test: "failed"},
                    "output_tail": f"FAILED {test} - TypeError: can't compare offset-naive and offset-aware datetimes\n"
                                   "1 failed in 0.41s"},
            "green": {"command": "pytest tests/test_dates.py", "exit_code": 0, "seconds": 0.7, "tests": {test: "passed"},
                      "output_tail": "1 passed in 0.38s"},
            "suite": {"command": "pytest", "exit_code": 0, "seconds": 9.5, "output_tail": "212 passed in 9.12s"},
            "red_to_green": [test], "test_files": ["tests/test_dates.py"], "fix_files": ["api/dates.py"],
            "runner": "pytest", "setup": "uv venv; uv pip install -e .", "environment": "e3b0c442"}


A_DIFF = ("diff --git a/api/dates.py b/api/dates.py\n--- a/api/dates.py\n+++ b/api/dates.py\n@@ -1,2 +1,2 @@\n"
          " def parse_date(text):\n-    return datetime.strptime(text, FMT)\n+    return datetime.strptime(text, FMT).replace(tzinfo=UTC)\n")


async def new_task(store: Store, title: str = "TypeError: can't compare offset-naive and offset-aware datetimes",
                   *, body: str = "Seen 41 times in `api.dates`.", repo: str = REPO, source: Source = Source.API,
                   priority: str = "normal") -> Task:
    task, _ = await store.create_task(NewTask(source=source, repo=repo, title=title, body=body, priority=priority,
                                              context={"initiator": "api:ci"}), actor="api:ci")
    return task


async def post_plan(store: Store, task: Task, plan: dict[str, Any], *, agent: str = PLANNER) -> Task:
    """The planner's moves: claim the task, then post plan v<n+1> (what actors/planner.py records)."""
    task = await store.transition(task.id, TaskStatus.PLANNING, actor=agent, reason="planning",
                                  changes={"attempts": task.attempts + 1, "branch": f"fixfleet/{task.key}"})
    version = task.plan_version + 1
    return await store.transition(
        task.id, TaskStatus.AWAITING_APPROVAL, actor=agent, reason=f"plan v{version} ready",
        data={"branch": task.branch, "pr_url": "https://github.com/acme/api/pull/7", "setup": "uv venv; uv pip install -e .",
              "plan_version": version, "plan": plan},
        changes={"plan": plan, "plan_version": version, "pr_url": "https://github.com/acme/api/pull/7"})


async def planned_task(store: Store, **kwargs: Any) -> Task:
    plan = kwargs.pop("plan", None) or a_plan()
    return await post_plan(store, await new_task(store, **kwargs), plan)


# --- agent sessions, recorded as actors/session.py records them ----------------------------------


def transcript_line(message: Any) -> str:
    """actors/session.py's own transcript line for an SDK message (redacted, one JSON object)."""
    return _Session._transcript_line(SimpleNamespace(redactor=Redactor()), message)  # type: ignore[arg-type]


# What the Read tool answered: long enough to be fetched only when its fold is opened.
DATES_PY = "def parse_date(text):\n    return datetime.strptime(text, FMT)\n" + "".join(
    f"\n\ndef helper_{n}(value):\n    return value  # keeps line {n}\n" for n in range(20))


def opening_messages(task: Task) -> list[Any]:
    return [
        SystemMessage(subtype="init", data={"type": "system", "subtype": "init", "model": "claude-test", "tools": ["Read", "Bash"]}),
        AssistantMessage(content=[TextBlock(f"I will read `api/dates.py` to find why {task.key} fails.")], model="claude-test"),
        AssistantMessage(content=[ToolUseBlock(id="toolu_1", name="Read", input={"file_path": "/workspace/api/dates.py"})],
                         model="claude-test"),
        UserMessage(content=[ToolResultBlock(tool_use_id="toolu_1", is_error=False, content=DATES_PY)]),
    ]


def closing_messages() -> list[Any]:
    return [
        AssistantMessage(content=[TextBlock("The zone is dropped by `strptime`; the plan keeps it.")], model="claude-test"),
        ResultMessage(subtype="success", duration_ms=4200, duration_api_ms=3900, is_error=False, num_turns=3,
                      session_id="ignored", total_cost_usd=0.0123, usage={"input_tokens": 1200, "output_tokens": 300}),
    ]


async def beat(redis: Redis, task: Task | None, *, agent: str = PLANNER, role: str = "planner",
               since: float | None = None) -> None:
    """The agent's heartbeat as actors/agent.py writes it."""
    await redis.hset(AGENTS_KEY, agent, json.dumps({
        "name": agent, "role": role, "busy_with": task.id if task else None,
        "busy_since": (since or time.time()) if task else None, "draining": False, "done": 3, "failed": 0,
        "pid": 1234, "at": time.time()}))


class Recording:
    """An agent's session of a task as the platform records it, for the console to read: the
    session's row, its messages as actors/session.py's transcriber makes them, its end and the
    audit row run_session writes (actors/agent.py). The console's tests go through this class only."""

    def __init__(self, store: Store, redis: Redis, home: Path, task: Task, *, agent: str = PLANNER,
                 role: str = "planner") -> None:
        self.store, self.task, self.agent, self.role = store, task, agent, role
        self.transcriber = Transcriber(Redactor(), MESSAGE_LIMIT_BYTES)
        self.id, self.seq = "", 0

    async def start(self, messages: list[Any] = ()) -> Recording:
        record = await self.store.start_session(NewSession(task_id=self.task.id, attempt=1, agent=self.agent,
                                                           role=self.role, cli_session_id=str(uuid.uuid4())))
        self.id = str(record.id)
        await self.write(messages)
        return self

    async def write(self, messages: list[Any]) -> None:
        batch = []
        for message in messages:
            for body in self.transcriber.bodies(message):
                self.seq += 1
                batch.append(RecordedMessage(seq=self.seq, at=datetime.now(UTC), **body.model_dump()))
        if batch:
            await self.store.append_messages(int(self.id), batch)

    async def end(self, messages: list[Any] = ()) -> None:
        """The session says `messages` and ends with success (3 turns, $0.0123, 1,500 tokens)."""
        await self.write(messages)
        await self.store.end_session(int(self.id), SessionEnd(status=SessionStatus.ENDED, outcome="success", cost_usd=0.0123,
                                                              input_tokens=1200, output_tokens=300, turns=3))
        await session_ended(self.store, self.task, self.id, agent=self.agent, role=self.role)


async def recorded(store: Store, redis: Redis, home: Path, task: Task, messages: list[Any], **kwargs: Any) -> Recording:
    """A session that ran and ended, having said `messages`."""
    recording = Recording(store, redis, home, task, **kwargs)
    await recording.start(messages)
    await recording.end()
    return recording


@asynccontextmanager
async def beating(redis: Redis, task: Task | None, **kwargs: Any) -> AsyncIterator[None]:
    """An agent alive for the block: it beats every lease/3 as actors/agent.py does (the tests' lease is 1 s)."""
    since = kwargs.pop("since", None) or time.time()

    async def loop() -> None:
        while True:
            await beat(redis, task, since=since, **kwargs)
            await asyncio.sleep(0.3)

    beats = asyncio.create_task(loop())
    try:
        yield
    finally:
        beats.cancel()
        with suppress(asyncio.CancelledError):
            await beats


async def session_ended(store: Store, task: Task, session_id: str, *, agent: str = PLANNER, role: str = "planner") -> None:
    """The audit row run_session writes when a session ends (actors/agent.py)."""
    await store.add_cost(task.id, 0.0123, 1500)
    await store.record_event(task.id, actor=agent, reason=f"{role} session: success",
                             data={"cost_usd": 0.0123, "turns": 3, "session": session_id, "tokens": 1500, "role": role,
                                   "seconds": 4.2, "denials": []})


# --- a browser's view, over HTTP ----------------------------------------------------------------


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_in(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found[1]


def signed_in(url: str, token: str) -> tuple[httpx.Client, str]:
    """A client holding a console session for `token`, and the session's CSRF token."""
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=20)
    form = client.get("/ui/login")
    answer = client.post("/ui/login", data={"token": token, "csrf": csrf_in(form.text), "next": "/ui/"})
    assert answer.status_code == 303, answer.text
    return client, csrf_in(client.get("/ui/pool").text)


def act(client: httpx.Client, key: str, command: str, csrf: str | None, **fields: Any) -> httpx.Response:
    data = {k: str(v) for k, v in fields.items()} | ({"csrf": csrf} if csrf is not None else {})
    return client.post(f"/ui/tasks/{key}/do/{command}", data=data)


def flash_after(client: httpx.Client, answer: httpx.Response) -> str:
    """The line the task page shows after a form's redirect."""
    assert answer.status_code == 303, (answer.status_code, answer.text[:500])
    page = client.get(answer.headers["location"]).text
    found = re.search(r'<div class="flash[^"]*" role="[a-z]+">(.*?)</div>', page, re.S)
    return re.sub(r"<[^>]+>", "", found[1]).strip() if found else ""
