"""Session records on the real Postgres: the recorder a session runs with (actors/recorder.py),
what the SDK's messages become (actors/transcript.py), and the store's reads and upkeep."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

from actors.recorder import SessionRecorder
from actors.transcript import Transcriber
from fixfleet.config import Settings
from fixfleet.models import NewTask
from fixfleet.redact import Redactor
from fixfleet.scratch import create_database, drop_database
from fixfleet.session_upkeep import keep_sessions
from fixfleet.sessions import (
    MessageBody,
    MessageKind,
    NewSession,
    SessionEnd,
    SessionMessage,
    SessionStatus,
)
from fixfleet.store import SessionNotFound, Store, TaskNotFound

ROOT = Path(__file__).resolve().parents[1]
GITHUB_TOKEN = "ghp_sessionsecret0123456789abcdefghij"
MODEL_KEY = "session-model-key-7d1e0c"  # the session's own credential: only the runner's redactor knows it


async def a_task(store: Store) -> int:
    task, _ = await store.create_task(NewTask(repo="file:///srv/repo.git", title="mean() crashes"))
    return task.id


def new_session(task_id: int, **fields: object) -> NewSession:
    return NewSession(**{"task_id": task_id, "attempt": 1, "plan_version": 1, "agent": "executor-a", "role": "executor",
                         "model": "claude-sonnet-4-5", "cli_session_id": os.urandom(8).hex(), **fields})


def texts(*words: str) -> list[MessageBody]:
    return [MessageBody.clipped(MessageKind.TEXT, word, 16384) for word in words]


async def eventually(check: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Wait for an awaitable condition; the timeout is wide: only a broken recorder reaches it."""
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


# --- the recorder ----------------------------------------------------------------------------


async def test_the_recorder_writes_messages_in_order_while_the_session_runs(store: Store) -> None:
    task_id = await a_task(store)
    recorder = SessionRecorder(store, new_session(task_id))
    await recorder.open()
    [row] = await store.task_sessions(task_id)  # the row exists before the CLI would start
    assert (row.status, row.messages, row.ended_at) == (SessionStatus.RUNNING, 0, None)
    recorder.add(texts("one", "two"))
    await eventually(lambda: _count(store, row.id, 2), "the first two messages written while running")
    for n in range(3, 451):  # a burst: batches of 200 go at once
        recorder.add(texts(f"message {n}"))
    await eventually(lambda: _count(store, row.id, 450), "the burst written")
    ended = await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success", cost_usd=0.25,
                                            input_tokens=1200, output_tokens=300, turns=4))
    messages = await store.session_messages(row.id, limit=1000)
    assert [m.seq for m in messages] == list(range(1, 451))
    assert [m.content for m in messages[:3]] == ["one", "two", "message 3"]
    assert ended is not None and (ended.status, ended.outcome, ended.turns, ended.messages, ended.dropped) == (
        SessionStatus.ENDED, "success", 4, 450, 0)
    assert (ended.cost_usd, ended.input_tokens, ended.output_tokens) == (0.25, 1200, 300)
    assert ended.ended_at is not None and ended.task_key == f"FF-{task_id}"


async def _count(store: Store, session_id: int, n: int) -> bool:
    return (await store.get_session(session_id)).messages >= n


def test_the_sdk_messages_become_one_record_per_block_cut_with_their_size_noted() -> None:
    transcriber = Transcriber(Redactor(), limit=1024)
    long_output = "é" * 3000  # 6,000 bytes: cut inside no character
    bodies = [
        *transcriber.bodies(SystemMessage(subtype="init", data={"model": "claude-sonnet-4-5", "tools": ["Read"]})),
        *transcriber.bodies(AssistantMessage(model="m", content=[
            TextBlock("Reading the file."), ToolUseBlock(id="tu_1", name="Read", input={"file_path": "/w/a.py"})])),
        *transcriber.bodies(UserMessage(content=[ToolResultBlock(tool_use_id="tu_1", content=[
            {"type": "text", "text": long_output}, {"type": "image", "source": {}}], is_error=False)])),
        *transcriber.bodies(UserMessage(content=[ToolResultBlock(tool_use_id="tu_2", content="denied", is_error=True)])),
        *transcriber.bodies(ResultMessage(subtype="success", duration_ms=1, duration_api_ms=1, is_error=False,
                                          num_turns=2, session_id="s", result="Fixed.")),
    ]
    assert [(b.kind, b.name) for b in bodies] == [
        (MessageKind.SYSTEM, "init"), (MessageKind.TEXT, None), (MessageKind.TOOL_USE, "Read"),
        (MessageKind.TOOL_RESULT, None), (MessageKind.TOOL_RESULT, None), (MessageKind.RESULT, "success")]
    assert json.loads(bodies[2].content) == {"file_path": "/w/a.py"} and bodies[2].tool_use_id == "tu_1"
    cut = bodies[3]
    assert len(cut.content.encode()) <= 1024 and cut.content == "é" * 512 and cut.full_size == 6000 + len("\n[image]")
    assert (bodies[4].content, bodies[4].is_error) == ("denied", True)


async def test_a_secret_in_a_tool_result_never_reaches_the_table(store: Store) -> None:
    """The attack: the agent prints the platform's GitHub token and the session's own model key
    (raw, base64, JSON-escaped, in a tool's input, and straddling the cut); none is stored."""
    task_id = await a_task(store)
    redactor = Redactor([GITHUB_TOKEN]).with_secrets([MODEL_KEY])  # as the runner makes a session's
    transcriber = Transcriber(redactor, limit=1024)
    leaks = [
        AssistantMessage(model="m", content=[ToolUseBlock(id="tu_1", name="Bash", input={
            "command": f"curl -H 'Authorization: token {GITHUB_TOKEN}' https://api.github.com/user"})]),
        UserMessage(content=[ToolResultBlock(tool_use_id="tu_1", content=(
            f"GITHUB_TOKEN={GITHUB_TOKEN}\nANTHROPIC_API_KEY={MODEL_KEY}\n"
            f"b64 {base64.b64encode(GITHUB_TOKEN.encode()).decode()}\njson {json.dumps({'k': MODEL_KEY})}"))]),
        UserMessage(content=[ToolResultBlock(tool_use_id="tu_2", content="x" * 1015 + GITHUB_TOKEN)]),  # across the cut
        AssistantMessage(model="m", content=[TextBlock(f"The key is {MODEL_KEY}.")]),
    ]
    recorder = SessionRecorder(store, new_session(task_id))
    await recorder.open()
    for message in leaks:
        recorder.add(transcriber.bodies(message))
    record = await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))
    assert record is not None and record.messages == 4
    stored = json.dumps([dict(r) for r in await store.pool.fetch("SELECT * FROM session_messages")], default=str)
    for secret in (GITHUB_TOKEN, MODEL_KEY, GITHUB_TOKEN[:20], base64.b64encode(GITHUB_TOKEN.encode()).decode()):
        assert secret not in stored
    assert stored.count("[REDACTED]") >= 6  # what held: each leak replaced where it was


async def test_a_store_outage_fails_nothing_and_the_row_says_what_was_dropped(postgres_server_url: str) -> None:
    url = await create_database(postgres_server_url)
    store = await Store.connect(url, max_size=2)
    admin = await asyncpg.connect(postgres_server_url)
    name = url.rsplit("/", 1)[1]
    try:
        task_id = await a_task(store)
        recorder = SessionRecorder(store, new_session(task_id), buffer_max=50, retry_max_s=0.2)
        await recorder.open()
        recorder.add(texts("before the outage"))
        session_id = recorder.record_id
        assert session_id is not None
        await eventually(lambda: _count(store, session_id, 1), "the first message written")

        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        started = time.monotonic()
        for n in range(80):  # the session goes on: nothing waits, nothing raises
            recorder.add(texts(f"during the outage {n}"))
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(1.0)  # the writer meets the outage and keeps what it can (50 of 80)
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await store.get_session(session_id)  # the outage is real
        assert recorder.dropped == 30  # the buffer holds 50: the newest 30 of the burst had no room

        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        record = await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))
        assert record is not None and (record.status, record.messages, record.dropped) == (SessionStatus.ENDED, 51, 30)
        seqs = [m.seq for m in await store.session_messages(session_id, limit=200)]
        assert seqs == list(range(1, 52))  # in order; the dropped ones leave their numbers out (52 to 81)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
        await store.close()
        await drop_database(postgres_server_url, url)


async def test_a_store_away_at_the_start_gets_the_row_and_messages_once_back(postgres_server_url: str) -> None:
    url = await create_database(postgres_server_url)
    store = await Store.connect(url, max_size=2)
    admin = await asyncpg.connect(postgres_server_url)
    name = url.rsplit("/", 1)[1]
    try:
        task_id = await a_task(store)
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        recorder = SessionRecorder(store, new_session(task_id), retry_max_s=0.2)
        await recorder.open(timeout_s=1.0)  # does not hold the session up
        assert recorder.record_id is None
        recorder.add(texts("first", "second"))
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        record = await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))
        assert record is not None and (record.messages, record.dropped) == (2, 0)
        assert [m.content for m in await store.session_messages(record.id)] == ["first", "second"]
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
        await store.close()
        await drop_database(postgres_server_url, url)


RECORDING_CHILD = """
import asyncio, sys
from actors.recorder import SessionRecorder
from fixfleet.sessions import MessageBody, MessageKind, NewSession
from fixfleet.store import Store

async def main():
    store = await Store.connect(sys.argv[1], migrate=False)
    recorder = SessionRecorder(store, NewSession(task_id=int(sys.argv[2]), attempt=1, agent="executor-doomed",
                                                 role="executor", cli_session_id="doomed-session"), beat_s=0.2)
    await recorder.open()
    recorder.add([MessageBody(kind=MessageKind.TEXT, content=f"step {n}", full_size=6) for n in range(1, 4)])
    while (await store.get_session(recorder.record_id)).messages < 3:
        await asyncio.sleep(0.05)
    print(recorder.record_id, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_session_whose_agent_was_killed_is_cut_short_with_what_it_wrote(
        store: Store, database_url: str) -> None:
    task_id = await a_task(store)
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", RECORDING_CHILD, database_url, str(task_id),
                                                 stdout=subprocess.PIPE, cwd=ROOT,
                                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        session_id = int(await asyncio.wait_for(child.stdout.readline(), 60))  # type: ignore[union-attr]
        live = SessionRecorder(store, new_session(task_id, role="planner", agent="planner-alive"), beat_s=0.2)
        await live.open()
        await asyncio.sleep(1.0)  # both recorders speak every 0.2 s
        assert await store.cut_short_silent_sessions(0.8) == []
        child.send_signal(signal.SIGKILL)  # kill -9, mid-session
        await child.wait()
        await asyncio.sleep(1.0)
        assert await store.cut_short_silent_sessions(0.8) == [session_id]  # the living one stays
        lost = await store.get_session(session_id)
        assert lost.status == SessionStatus.CUT_SHORT and "stopped answering" in (lost.error or "")
        assert lost.ended_at is not None and lost.ended_at <= datetime.now(UTC)
        assert [m.content for m in await store.session_messages(session_id)] == ["step 1", "step 2", "step 3"]
        assert (await store.get_session(live.record_id)).status == SessionStatus.RUNNING  # type: ignore[arg-type]
        await live.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_the_next_attempt_cuts_short_the_one_left_running(store: Store) -> None:
    task_id = await a_task(store)
    first = await store.start_session(new_session(task_id, attempt=1, agent="executor-a"))
    answer = await store.start_session(new_session(task_id, role="planner", purpose="answer"))
    second = await store.start_session(new_session(task_id, attempt=2, agent="executor-b"))
    sessions = {s.id: s for s in await store.task_sessions(f"FF-{task_id}")}
    assert [sessions[i].status for i in (first.id, answer.id, second.id)] == [
        SessionStatus.CUT_SHORT, SessionStatus.RUNNING, SessionStatus.RUNNING]
    assert sessions[first.id].error == "superseded: attempt 2 of the task started on executor-b"
    again = await store.start_session(new_session(task_id, attempt=2, cli_session_id=second.cli_session_id))
    assert again.id == second.id and again.status == SessionStatus.RUNNING  # starting twice makes one row


# --- reading -----------------------------------------------------------------------------------


async def test_messages_are_read_in_pages_and_after_a_number(store: Store) -> None:
    task_id = await a_task(store)
    recorder = SessionRecorder(store, new_session(task_id))
    await recorder.open()
    recorder.add(texts(*(f"m{n}" for n in range(1, 1201))))
    record = await recorder.close(SessionEnd(status=SessionStatus.ENDED, outcome="success"))
    assert record is not None
    first = await store.session_messages(record.id, limit=500)
    second = await store.session_messages(record.id, after=first[-1].seq, limit=500)
    rest = await store.session_messages(record.id, after=second[-1].seq, limit=500)
    assert [len(first), len(second), len(rest)] == [500, 500, 200]
    assert (first[0].seq, second[0].seq, rest[-1].seq) == (1, 501, 1200)
    assert await store.session_messages(record.id, after=1200) == []
    assert [m.content for m in await store.last_messages(record.id, 3)] == ["m1198", "m1199", "m1200"]


async def test_unknown_tasks_and_sessions_are_named(store: Store) -> None:
    task_id = await a_task(store)
    assert await store.task_sessions(task_id) == []
    with pytest.raises(TaskNotFound):
        await store.task_sessions(task_id + 1)
    with pytest.raises(SessionNotFound, match="no session 999"):
        await store.get_session(999)
    with pytest.raises(SessionNotFound):
        await store.append_messages(999, [])
    with pytest.raises(TaskNotFound):
        await store.start_session(new_session(task_id + 1))


# --- retention --------------------------------------------------------------------------------


@pytest.fixture
async def three_sessions(store: Store) -> AsyncIterator[tuple[int, int, int]]:
    """An old ended session (40 days), a recent one (a day), a running one; 30 messages each."""
    task_id = await a_task(store)
    ids = []
    for _ in range(3):
        session = await store.start_session(new_session(task_id, role="planner"))
        now = datetime.now(UTC)
        await store.append_messages(session.id, [
            SessionMessage(seq=n, at=now, kind=MessageKind.TEXT, content=f"m{n}", full_size=3) for n in range(1, 31)])
        ids.append(session.id)
    old, recent, running = ids
    for session_id, age in ((old, 40), (recent, 1)):
        await store.end_session(session_id, SessionEnd(status=SessionStatus.ENDED, outcome="success"))
        await store.pool.execute("UPDATE sessions SET started_at = now() - make_interval(days => $2),"
                                 " ended_at = now() - make_interval(days => $2) WHERE id = $1", session_id, age)
    yield old, recent, running


async def test_retention_removes_old_messages_but_keeps_the_rows(store: Store, three_sessions: tuple[int, int, int],
                                                                 settings: Settings) -> None:
    old, recent, running = three_sessions
    report = await keep_sessions(store, settings.model_copy(update={"session_messages_retention_days": 30}), batch=7)
    assert report.pruned == 30 and report.cut_short == []  # in batches of 7
    assert await store.session_messages(old) == []
    kept = await store.get_session(old)
    assert (kept.status, kept.messages, kept.pruned) == (SessionStatus.ENDED, 30, 30)
    assert len(await store.session_messages(recent)) == 30 and len(await store.session_messages(running)) == 30
    again = await keep_sessions(store, settings.model_copy(update={"session_messages_retention_days": 30}))
    assert again.pruned == 0
    half_a_day = await keep_sessions(store, settings.model_copy(update={"session_messages_retention_days": 0.5}))
    assert half_a_day.pruned == 30 and len(await store.session_messages(running)) == 30  # a running one: never
    keep_all = settings.model_copy(update={"session_messages_retention_days": 0})
    await store.pool.execute("UPDATE sessions SET ended_at = now() - interval '5000 days' WHERE id = $1", running)
    assert (await keep_sessions(store, keep_all)).pruned == 0  # 0: kept for ever


async def test_the_upkeep_cuts_short_a_silent_session(store: Store, three_sessions: tuple[int, int, int],
                                                      settings: Settings) -> None:
    _, _, running = three_sessions
    await store.pool.execute("UPDATE sessions SET beat_at = now() - interval '10 minutes' WHERE id = $1", running)
    report = await keep_sessions(store, settings.model_copy(update={"session_silent_s": 120}))
    assert report.cut_short == [running]
    assert (await store.get_session(running)).status == SessionStatus.CUT_SHORT


def test_settings_name_the_retention_and_refuse_nonsense() -> None:
    assert Settings(_env_file=None).session_messages_retention_days == 30
    with pytest.raises(ValueError):
        Settings(_env_file=None, session_messages_retention_days=-1)
    assert timedelta(days=Settings(_env_file=None, session_messages_retention_days=0.5)
                     .session_messages_retention_days) == timedelta(hours=12)
