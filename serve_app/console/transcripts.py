"""The agents' sessions as the console reads them: a small interface and today's implementation.
(Plain dataclasses: a transcript page builds thousands of them.)

The console asks a `SessionReader` for a task's sessions (role, cost, tokens, running or not) and
for a session's messages by position. `AuditTrailSessions` answers from what the platform keeps
today: each finished session's audit row (`<role> session: <outcome>`, with its cost, tokens,
turns and session id: actors/agent.py), the agents' heartbeats (an agent busy with the task has
a session running), and the JSONL transcript the session runner writes, one redacted SDK message
per line (actors/runner.py), readable where the ingress shares the agents' data directory (one
machine: `fixfleet up`, the tests). Sessions recorded in Postgres replace it with an adapter
over that store; `message_from_record` reads the same SDK records either way.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

from redis.asyncio import Redis

from fixfleet.models import TaskEvent
from fixfleet.overview import heartbeats
from fixfleet.store import Store

BlockKind = Literal["text", "thinking", "tool_use", "tool_result", "data"]
MessageKind = Literal["user", "assistant", "system", "result", "other"]
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_LIMIT = 5000


@dataclass(slots=True)
class SessionInfo:
    """One model session of a task's agents."""

    id: str
    task_id: int
    role: str  # planner, executor
    agent: str
    running: bool
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None  # success, error_max_turns, timeout, ... (None while running)
    cost_usd: float | None = None
    tokens: int | None = None
    turns: int | None = None
    note: str | None = None  # why it failed or was cut short, when known


@dataclass(slots=True)
class Block:
    """A piece of a message: text, the model's thinking, a tool call or its result, other data."""

    kind: BlockKind
    text: str = ""  # text, thinking, a tool result's output, data as JSON
    tool: str | None = None  # the tool called
    tool_use_id: str | None = None
    is_error: bool = False
    omitted: int = 0  # bytes the recording left out (a message cut to the recording limit)


@dataclass(slots=True)
class SessionMessage:
    seq: int  # 1-based position in its session
    kind: MessageKind
    at: datetime | None = None
    summary: str = ""  # one line: a system message's subtype, a result's outcome and cost
    blocks: list[Block] = field(default_factory=list)


class SessionReader(Protocol):
    """Where the console reads agents' sessions."""

    async def sessions_of(self, task_id: int) -> list[SessionInfo]:
        """The task's sessions, oldest first; a running one has `running` set."""
        ...

    async def messages(self, session_id: str, *, after: int = 0, limit: int = 500) -> list[SessionMessage]:
        """Up to `limit` messages of the session, those after position `after`, in order."""
        ...


# --- SDK records (one per message, as actors/runner.py writes them) --------------------------------


def message_from_record(seq: int, record: dict[str, Any], at: datetime | None = None) -> SessionMessage:
    """A transcript record (`{"type": "AssistantMessage", ...the dataclass's fields}`) as a message."""
    kind_name = str(record.get("type", ""))
    if kind_name == "AssistantMessage":
        return SessionMessage(seq=seq, kind="assistant", at=at, blocks=_blocks(record.get("content")),
                              summary=str(record.get("model") or ""))
    if kind_name == "UserMessage":
        return SessionMessage(seq=seq, kind="user", at=at, blocks=_blocks(record.get("content")))
    if kind_name == "SystemMessage":
        data = record.get("data") if isinstance(record.get("data"), dict) else {}
        return SessionMessage(seq=seq, kind="system", at=at, summary=str(record.get("subtype") or "system"),
                              blocks=[Block(kind="data", text=_json(data))] if data else [])
    if kind_name == "ResultMessage":
        cost = record.get("total_cost_usd")
        summary = f"{record.get('subtype', '?')}: {record.get('num_turns', '?')} turns" + \
            (f", ${float(cost):.4f}" if isinstance(cost, (int, float)) else "")
        blocks = [Block(kind="text", text=str(record["result"]))] if record.get("result") else []
        if record.get("structured_output") is not None:
            blocks.append(Block(kind="data", text=_json(record["structured_output"])))
        return SessionMessage(seq=seq, kind="result", at=at, summary=summary, blocks=blocks)
    return SessionMessage(seq=seq, kind="other", at=at, summary=kind_name or "unknown",
                          blocks=[Block(kind="data", text=_json(record))])


def _blocks(content: Any) -> list[Block]:
    """The SDK's content blocks, kept as plain dicts by `dataclasses.asdict` (so known by their keys)."""
    if isinstance(content, str):
        return [Block(kind="text", text=content)]
    blocks = []
    for item in content if isinstance(content, list) else []:
        if not isinstance(item, dict):
            continue
        if "tool_use_id" in item:
            blocks.append(Block(kind="tool_result", text=_result_text(item.get("content")),
                                tool_use_id=str(item["tool_use_id"]), is_error=bool(item.get("is_error"))))
        elif "name" in item and "input" in item:
            blocks.append(Block(kind="tool_use", tool=str(item["name"]), tool_use_id=str(item.get("id") or ""),
                                text=_json(item["input"])))
        elif "thinking" in item:
            blocks.append(Block(kind="thinking", text=str(item["thinking"])))
        elif "text" in item:
            blocks.append(Block(kind="text", text=str(item["text"])))
        else:
            blocks.append(Block(kind="data", text=_json(item)))
    return blocks


def _result_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) if isinstance(part, dict) and "text" in part else _json(part)
                         for part in content)
    return _json(content)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# --- today's implementation -------------------------------------------------------------------


class AuditTrailSessions:
    """Sessions from the task's audit rows and the agents' heartbeats; messages from the JSONL
    transcripts under `home` (`agents/<agent>/session/transcripts/<session>.jsonl`: the agent's
    home in actors/agent.py, its runner's in actors/runner.py)."""

    def __init__(self, store: Store, redis: Redis, home: Path, *, stale_after_s: float) -> None:
        self.store, self.redis, self.home, self.stale_after_s = store, redis, Path(home), stale_after_s

    async def sessions_of(self, task_id: int) -> list[SessionInfo]:
        ended = [s for s in (self._ended(task_id, e) for e in await self.store.events(task_id)) if s is not None]
        running = await self._running(task_id, {s.id for s in ended})
        return ended + running

    async def messages(self, session_id: str, *, after: int = 0, limit: int = 500) -> list[SessionMessage]:
        if not SESSION_ID.fullmatch(session_id):
            return []
        return await asyncio.to_thread(self._read, session_id, max(0, after), max(1, min(limit, MAX_LIMIT)))

    # -- sessions ----------------------------------------------------------------------------------

    @staticmethod
    def _ended(task_id: int, event: TaskEvent) -> SessionInfo | None:
        data = event.data
        session = data.get("session")
        if not isinstance(session, str) or not SESSION_ID.fullmatch(session):
            return None  # not a session's row (or an id no file could be named by)
        role, _, outcome = event.reason.partition(" session: ")
        seconds = data.get("seconds")
        started = event.created_at - timedelta(seconds=float(seconds)) if isinstance(seconds, (int, float)) else None
        return SessionInfo(id=session, task_id=task_id, role=str(data.get("role") or role), agent=event.actor,
                           running=False, started_at=started, ended_at=event.created_at, outcome=outcome or None,
                           cost_usd=_number(data.get("cost_usd")), tokens=_integer(data.get("tokens")),
                           turns=_integer(data.get("turns")))

    async def _running(self, task_id: int, ended: set[str]) -> list[SessionInfo]:
        now = time.time()
        busy = [b for b in await heartbeats(self.redis)
                if b.busy_with == task_id and b.state(now, self.stale_after_s) != "lost" and AGENT_NAME.fullmatch(b.name)]
        running: list[SessionInfo] = []
        for beat in busy:
            since = (beat.busy_since or now) - 1.0
            for session_id, started in await asyncio.to_thread(self._transcripts_since, beat.name, since):
                if session_id not in ended:
                    running.append(SessionInfo(id=session_id, task_id=task_id, role=beat.role, agent=beat.name,
                                               running=True, started_at=started))
        return sorted(running, key=lambda s: s.started_at or datetime.min.replace(tzinfo=UTC))

    def _transcripts_since(self, agent: str, since: float) -> list[tuple[str, datetime]]:
        directory = self.home / "agents" / agent / "session" / "transcripts"
        found = []
        try:
            entries = list(directory.iterdir())
        except OSError:
            return []
        for path in entries:
            try:
                changed = path.stat().st_mtime
            except OSError:
                continue
            if path.suffix == ".jsonl" and SESSION_ID.fullmatch(path.stem) and changed >= since:
                found.append((path.stem, datetime.fromtimestamp(path.stat().st_ctime, UTC)))
        return found

    # -- messages ----------------------------------------------------------------------------------

    def _read(self, session_id: str, after: int, limit: int) -> list[SessionMessage]:
        path = self._transcript(session_id)
        if path is None:
            return []
        messages = []
        with path.open(encoding="utf-8", errors="replace") as lines:
            for seq, line in enumerate(islice(lines, after, after + limit), start=after + 1):
                if not line.endswith("\n"):
                    break  # being written: the next read has it whole
                try:
                    record = json.loads(line)
                except ValueError:
                    record = {"type": "unreadable line", "line": line[:2000]}
                messages.append(message_from_record(seq, record if isinstance(record, dict) else {"value": record}))
        return messages

    def _transcript(self, session_id: str) -> Path | None:
        agents = self.home / "agents"
        try:
            names = [p.name for p in agents.iterdir() if AGENT_NAME.fullmatch(p.name)]
        except OSError:
            return None
        for name in sorted(names):
            path = agents / name / "session" / "transcripts" / f"{session_id}.jsonl"
            if path.is_file():
                return path
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
