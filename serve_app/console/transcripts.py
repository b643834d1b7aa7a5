"""The agents' sessions as the console reads them: a small interface (`SessionReader`) and the
view models it hands back (plain dataclasses: a transcript page builds thousands of them).

The console asks a `SessionReader` for a task's sessions (role, cost, tokens, running or not) and
for a session's messages by position; `serve_app/console/recorded.py` answers from the session
records in Postgres.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol



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
