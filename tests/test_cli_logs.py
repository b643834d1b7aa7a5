"""`fixfleet logs` as a user runs it (a real process, the real Postgres): the task's sessions and one
session's messages, readable in a terminal, as JSON, and followed live until the session ends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.recorder import SessionRecorder
from actors.transcript import Transcriber
from fixfleet.models import NewTask
from fixfleet.redact import Redactor
from fixfleet.sessions import (
    MessageBody,
    MessageKind,
    NewSession,
    SessionEnd,
    SessionStatus,
)
from fixfleet.store import Store
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]
BIG_OUTPUT = "\n".join(f"collected line {n}" for n in range(1, 2001))  # 35 KB: cut when recorded


@pytest.fixture
def env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FIXFLEET_")}
    return clean | {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FIXFLEET_HOME": str(tmp_path / "home"),
                    "COLUMNS": "100"}


async def a_task(store: Store) -> str:
    task, _ = await store.create_task(NewTask(repo="file:///srv/repo.git", title="mean() crashes"))
    return task.key


def recorder(store: Store, key: str, attempt: int) -> SessionRecorder:
    return SessionRecorder(store, NewSession(task_id=int(key[3:]), attempt=attempt, plan_version=1, agent=f"executor-{attempt}",
                                             role="executor", model="claude-sonnet-4-5", cli_session_id=os.urandom(8).hex()),
                           flush_s=0.05)


def steps() -> list[MessageBody]:
    transcriber = Transcriber(Redactor(), limit=16 * 1024)
    return [transcriber.prompt("Carry out the approved plan v1"),
            MessageBody(kind=MessageKind.TEXT, content="Running the tests first.", full_size=24),
            MessageBody(kind=MessageKind.TOOL_USE, name="Bash", tool_use_id="tu_1",
                        content='{"command": "python -m pytest -q"}', full_size=34),
            MessageBody.clipped(MessageKind.TOOL_RESULT, BIG_OUTPUT, 16 * 1024, tool_use_id="tu_1"),
            MessageBody(kind=MessageKind.TOOL_RESULT, tool_use_id="tu_2", is_error=True,
                        content="network commands are not allowed", full_size=32),
            MessageBody(kind=MessageKind.RESULT, name="success", content="Fixed.", full_size=6)]


async def two_sessions(store: Store) -> str:
    key = await a_task(store)
    first = recorder(store, key, 1)
    await first.open()
    first.add(steps()[:3])
    await first.close(SessionEnd(status=SessionStatus.CUT_SHORT, error=f"stopped: {key} was PAUSED"))
    second = recorder(store, key, 2)
    await second.open()
    second.add(steps())
    await second.close(SessionEnd(status=SessionStatus.ENDED, outcome="success", turns=3, cost_usd=0.0421))
    return key


async def test_logs_shows_the_sessions_and_the_latest_ones_messages_in_order(env: dict[str, str], store: Store) -> None:
    key = await two_sessions(store)
    shown = run(["logs", key], env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"{key}: 2 agent session(s)" in text and "cut short" in text and "success" in text
    order = ["#1 prompt", "Carry out the approved plan v1", "#2 assistant", "Running the tests first.",
             "#3 → Bash", '{"command": "python -m pytest -q"}', "#4 ← result", "collected line 1\n",
             "collected line 12\n", "#5 ← error", "network commands are not allowed", "#6 result success: Fixed."]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions), text
    assert "collected line 13\n" not in text  # a long result shows its first lines ...
    assert f"more line(s): --full shows them; recorded 16,384 of {len(BIG_OUTPUT):,} bytes" in text  # ... and what is left
    assert "attempt 2: ended success" in text and "$0.0421" in text

    first = run(["logs", key, "--session", "1", "--full"], env).stdout
    assert "Running the tests first." in first and "#4" not in first
    assert "attempt 1: cut short after" in first and f"stopped: {key} was PAUSED" in first
    whole = run(["logs", key, "--full"], env).stdout
    assert "collected line 800\n" in whole and "collected line 2000" not in whole  # as recorded: cut at 16 KB
    last = run(["logs", key, "-n", "2"], env).stdout
    assert "#5 ← error" in last and "#4" not in last


async def test_logs_says_what_is_wrong_in_one_line(env: dict[str, str], store: Store) -> None:
    key = await two_sessions(store)
    beyond = run(["logs", key, "--session", "3"], env)
    assert beyond.returncode == 1 and beyond.stderr.strip() == f"error: {key} has 2 session(s): --session takes 1 to 2"
    unknown = run(["logs", "FF-999"], env)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: no task FF-999"
    fresh = await a_task(store)
    assert run(["logs", fresh], env).stdout.strip() == f"{fresh} has no agent session yet."


async def test_logs_json_is_one_document(env: dict[str, str], store: Store) -> None:
    key = await two_sessions(store)
    document = json.loads(run(["logs", key, "--json"], env).stdout)
    assert document["task"] == key and document["session"] == 2
    assert [(s["attempt"], s["status"]) for s in document["sessions"]] == [(1, "cut_short"), (2, "ended")]
    messages = document["messages"]
    assert [m["seq"] for m in messages] == [1, 2, 3, 4, 5, 6]
    assert (messages[3]["truncated"], messages[3]["full_size"]) == (True, len(BIG_OUTPUT))
    assert (messages[2]["kind"], messages[2]["name"], messages[2]["tool_use_id"]) == ("tool_use", "Bash", "tu_1")


async def test_logs_follow_prints_a_running_session_live_and_ends_with_it(env: dict[str, str], store: Store) -> None:
    key = await a_task(store)
    live = recorder(store, key, 1)
    await live.open()
    live.add(steps()[:1])
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fixfleet.cli", "logs", key, "--follow", "--json", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[dict] = []

    async def next_line() -> dict:
        line = await asyncio.wait_for(follower.stdout.readline(), 60)  # type: ignore[union-attr]
        assert line, (await follower.stderr.read()).decode()  # type: ignore[union-attr]
        lines.append(json.loads(line))
        return lines[-1]

    try:
        assert (await next_line())["type"] == "session"
        assert (await next_line())["content"] == "Carry out the approved plan v1"
        live.add(steps()[1:3])  # while the follower waits
        assert [(await next_line())["seq"] for _ in range(2)] == [2, 3]
        assert follower.returncode is None  # still following a running session
        live.add(steps()[3:])
        await live.close(SessionEnd(status=SessionStatus.ENDED, outcome="success", turns=3))
        while (await next_line())["type"] != "end":
            pass
        assert await asyncio.wait_for(follower.wait(), 60) == 0
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    assert [line.get("seq") for line in lines if line["type"] == "message"] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["session"]["status"] == "ended" and lines[-1]["session"]["messages"] == 6


async def test_logs_follow_in_a_terminal_ends_when_the_session_has_ended(env: dict[str, str], store: Store) -> None:
    key = await two_sessions(store)
    followed = run(["logs", key, "--follow"], env)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.index("#6 result success") < followed.stdout.index("attempt 2: ended success")
