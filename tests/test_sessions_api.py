"""The session records on the task API (serve_app/sessions_api.py), on a real uvicorn with the real
Postgres: the routes with the read scope, paging, and the live stream of a running session."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from actors.recorder import SessionRecorder
from fixfleet.config import Settings
from fixfleet.models import NewTask
from fixfleet.sessions import (
    MessageBody,
    MessageKind,
    NewSession,
    SessionEnd,
    SessionStatus,
)
from fixfleet.store import Store
from tests.ingress_server import running_ingress

TOKENS = [{"name": "reader", "token": "tok-read", "scopes": ["read"]},
          {"name": "bot", "token": "tok-submit-only", "scopes": ["submit"]}]
READ = {"Authorization": "Bearer tok-read"}


@pytest.fixture
def api(settings: Settings, store: Store) -> Iterator[str]:
    with running_ingress(settings.model_copy(update={"api_tokens": SecretStr(json.dumps(TOKENS))})) as url:
        yield url


async def recorded_session(store: Store, words: list[str], *, end: bool = True) -> tuple[str, SessionRecorder]:
    task, _ = await store.create_task(NewTask(repo="file:///srv/repo.git", title="mean() crashes"))
    recorder = SessionRecorder(store, NewSession(task_id=task.id, attempt=1, plan_version=1, agent="executor-a",
                                                 role="executor", cli_session_id=os.urandom(8).hex()), flush_s=0.05)
    await recorder.open()
    recorder.add(say(*words))
    if end:
        await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success", turns=3, cost_usd=0.01))
    return task.key, recorder


def say(*words: str) -> list[MessageBody]:
    return [MessageBody(kind=MessageKind.TEXT, content=word, full_size=len(word)) for word in words]


async def test_the_routes_answer_with_the_read_scope_only(api: str, store: Store) -> None:
    key, recorder = await recorded_session(store, ["hello"])
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        sessions = (await http.get(f"/tasks/{key}/sessions", headers=READ)).json()
        assert [(s["id"], s["task_key"], s["status"], s["outcome"], s["messages"]) for s in sessions] == [
            (recorder.record_id, key, "ended", "success", 1)]
        for path in (f"/tasks/{key}/sessions", f"/sessions/{recorder.record_id}", f"/sessions/{recorder.record_id}/stream"):
            assert (await http.get(path)).status_code == 401
            refused = await http.get(path, headers={"Authorization": "Bearer tok-submit-only"})
            assert refused.status_code == 403 and "read" in refused.json()["detail"]
        assert (await http.get("/tasks/FF-99999/sessions", headers=READ)).json() == {"detail": "no task FF-99999"}
        assert (await http.get("/sessions/99999", headers=READ)).status_code == 404
        assert (await http.get("/sessions/99999/stream", headers=READ)).status_code == 404
        assert (await http.get("/sessions/0", headers=READ)).status_code == 422
        assert (await http.get(f"/sessions/{recorder.record_id}?after=-1", headers=READ)).status_code == 422
        assert (await http.get(f"/sessions/{recorder.record_id}?limit=100000", headers=READ)).status_code == 422


async def test_a_transcript_is_read_in_pages_and_polled_with_after(api: str, store: Store) -> None:
    _, recorder = await recorded_session(store, [f"m{n}" for n in range(1, 1001)], end=False)
    session_id = recorder.record_id
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        deadline = time.monotonic() + 30
        while (page := (await http.get(f"/sessions/{session_id}", headers=READ)).json())["session"]["messages"] < 1000:
            assert time.monotonic() < deadline, page["session"]
            await asyncio.sleep(0.05)
        first = (await http.get(f"/sessions/{session_id}", params={"limit": 600}, headers=READ)).json()
        assert [m["seq"] for m in first["messages"]] == list(range(1, 601)) and first["more"]
        rest = (await http.get(f"/sessions/{session_id}", params={"after": first["next_after"], "limit": 600},
                               headers=READ)).json()
        assert [m["content"] for m in rest["messages"]][-1] == "m1000" and not rest["more"]
        assert rest["session"]["status"] == "running"
        recorder.add(say("later"))  # polling with after= brings only what came since
        await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))
        since = (await http.get(f"/sessions/{session_id}", params={"after": rest["next_after"]}, headers=READ)).json()
        assert [(m["seq"], m["content"], m["kind"], m["truncated"]) for m in since["messages"]] == [
            (1001, "later", "text", False)]
        assert since["session"]["status"] == "ended" and since["next_after"] == 1001
        nothing = (await http.get(f"/sessions/{session_id}", params={"after": 1001}, headers=READ)).json()
        assert (nothing["messages"], nothing["next_after"]) == ([], 1001)


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events as dicts: {"event", "id", "data"}."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            event[field] = json.loads(value) if field == "data" else value


async def test_the_stream_delivers_a_running_session_live_and_ends_with_it(api: str, store: Store) -> None:
    _, recorder = await recorded_session(store, ["first"], end=False)
    seen: list[tuple[str, Any]] = []
    async with httpx.AsyncClient(base_url=api, timeout=60) as http, \
            http.stream("GET", f"/sessions/{recorder.record_id}/stream", headers=READ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        async for event in events(response):
            data = event["data"]
            seen.append((event["event"], data.get("content") or data.get("status")))
            if event["event"] == "message":
                assert event["id"] == str(data["seq"])
                if data["content"] == "first":
                    assert (await store.get_session(recorder.record_id)).status == "running"  # live, not after the end
                    recorder.add(say("second"))
                elif data["content"] == "second":
                    await recorder.close(SessionEnd(status=SessionStatus.CUT_SHORT, error="stopped: FF-1 was PAUSED"))
    assert seen == [("session", "running"), ("message", "first"), ("message", "second"), ("end", "cut_short")]


async def test_a_reconnecting_stream_resumes_after_its_last_event(api: str, store: Store) -> None:
    _, recorder = await recorded_session(store, ["a", "b", "c"])
    async with httpx.AsyncClient(base_url=api, timeout=30) as http, \
            http.stream("GET", f"/sessions/{recorder.record_id}/stream", headers=READ | {"Last-Event-ID": "2"}) as response:
        got = [(e["event"], e["data"].get("content")) async for e in events(response)]
    assert got == [("session", None), ("message", "c"), ("end", None)]  # an ended session: sent, then closed


async def test_logs_in_chat_sums_up_the_sessions_and_says_where_to_read_them(settings: Settings, store: Store) -> None:
    key, first = await recorded_session(store, ["planned"])
    task_id = int(key[3:])
    second = SessionRecorder(store, NewSession(task_id=task_id, attempt=2, plan_version=1, agent="executor-b",
                                               role="executor", cli_session_id=os.urandom(8).hex()))
    await second.open()
    second.add([MessageBody(kind=MessageKind.TOOL_USE, name="Bash", content='{"command": "python -m pytest -q"}',
                            full_size=34)])
    await second.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))  # writes it all ...
    await store.pool.execute("UPDATE sessions SET status = 'running', ended_at = NULL WHERE id = $1",
                             second.record_id)  # ... and is running again, as a live session would be
    public = settings.model_copy(update={"api_tokens": SecretStr(json.dumps(TOKENS)),
                                         "public_url": "https://fixfleet.acme.test/"})
    with running_ingress(public) as api:
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            answer = (await http.post("/commands", json={"text": f"logs {key}"}, headers=READ)).json()["text"]
            earlier = (await http.post("/commands", json={"text": f"logs {key} 1"}, headers=READ)).json()["text"]
            beyond = (await http.post("/commands", json={"text": f"logs {key} 3"}, headers=READ)).json()["text"]
    lines = answer.splitlines()
    assert lines[0] == f"**{key}** (RECEIVED): 2 agent session(s)"
    assert lines[1].startswith("1. executor (plan v1), attempt 1: ended success in ") and "1 message(s)" in lines[1]
    assert lines[2].startswith("**2. executor (plan v1), attempt 2: running for ") and "1 message(s) so far" in lines[2]
    assert lines[3] == "Session 2 is at: `Bash: {\"command\": \"python -m pytest -q\"}`"
    assert lines[4] == (f"Its messages: https://fixfleet.acme.test/ui/tasks/{key}?session={second.record_id} "
                        f"(or `fixfleet logs {key} --session 2`).")
    assert "**1. executor (plan v1), attempt 1: ended success" in earlier and "is at" not in earlier
    assert beyond == f"{key} has 2 session(s): name one from 1 to 2."
