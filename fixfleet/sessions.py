"""The records of Claude sessions, as the store keeps them and every reader (API, CLI, console) sees them.

A session (`SessionRecord`) is one run of the claude CLI for a task: a planner making a plan, an
executor carrying one out, or the planner answering a question (purpose "answer"). Its messages
(`SessionMessage`) are numbered from 1 in the order the session produced them: the prompt, the
CLI's system messages, the assistant's text and thinking, each tool call with its input (JSON),
each tool result, the final result. Each message's content is redacted before it is recorded and
cut to a limit (`clip`); `full_size` keeps the size of the whole. A gap in the numbers is a
message the recorder could not write (the session row counts them in `dropped`).

A session is `running` from before the CLI starts until it `ended` (with the runner's outcome) or
was `cut_short`: stopped by a cancel or a pause, superseded by the task's next attempt, or lost
with its agent (a crashed replica); `error` says which. What it wrote before stays.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from fixfleet.pgtext import storable

SessionRole = Literal["planner", "executor"]
SessionPurpose = Literal["work", "answer"]
MESSAGE_LIMIT_BYTES = 16 * 1024  # the default cut (FIXFLEET_SESSION_MESSAGE_MAX_BYTES)


class SessionStatus(StrEnum):
    RUNNING = "running"
    ENDED = "ended"
    CUT_SHORT = "cut_short"


class MessageKind(StrEnum):
    PROMPT = "prompt"  # what the platform asked the agent
    SYSTEM = "system"  # the CLI's own messages: init (tools, model, skills), api_retry, ...; `name` is the subtype
    TEXT = "text"  # the assistant's words
    THINKING = "thinking"
    TOOL_USE = "tool_use"  # `name`: the tool; content: its input as JSON
    TOOL_RESULT = "tool_result"  # content: what the tool answered; `is_error` when it failed or was refused
    USER = "user"  # other user-side content the CLI adds
    RESULT = "result"  # the CLI's last word; `name`: its subtype


class MessageBody(BaseModel):
    """What one message says, before the recorder numbers it."""

    kind: MessageKind
    name: str | None = None
    tool_use_id: str | None = None
    is_error: bool = False
    content: str = ""
    full_size: int = Field(0, ge=0, description="bytes of the whole content before the cut")

    @classmethod
    def clipped(cls, kind: MessageKind, content: str, limit: int, **fields: object) -> MessageBody:
        text, full_size = clip(content, limit)
        return cls(kind=kind, content=text, full_size=full_size, **fields)


class SessionMessage(MessageBody):
    seq: int = Field(ge=1)
    at: datetime

    @computed_field  # readers need not compare sizes themselves
    @property
    def truncated(self) -> bool:
        return len(self.content.encode()) < self.full_size


class SessionOwner(BaseModel):
    """Whom a session works for: which task, which attempt of it, which plan, which agent."""

    task_id: int
    attempt: int = Field(ge=0)
    plan_version: int | None = None
    agent: str = Field(min_length=1)


class NewSession(SessionOwner):
    """A session's row as it starts, before its CLI does."""

    role: SessionRole
    purpose: SessionPurpose = "work"
    model: str | None = None
    cli_session_id: str = Field(min_length=1)


class SessionEnd(BaseModel):
    """How a session ended, as its runner knows it."""

    status: Literal[SessionStatus.ENDED, SessionStatus.CUT_SHORT]
    outcome: str | None = None  # the runner's subtype: success, timeout, error_max_turns, ...
    error: str | None = None  # redacted: why it failed or was cut short
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    turns: int = 0
    dropped: int = 0


class SessionRecord(NewSession):
    id: int
    status: SessionStatus
    outcome: str | None
    error: str | None
    cost_usd: float
    input_tokens: int
    output_tokens: int
    turns: int
    messages: int  # written so far
    dropped: int  # never written (the store was away)
    pruned: int  # removed since by retention
    started_at: datetime
    beat_at: datetime
    ended_at: datetime | None

    @computed_field
    @property
    def task_key(self) -> str:
        return f"FF-{self.task_id}"


def clip(text: str, limit: int) -> tuple[str, int]:
    """`text` cut to at most `limit` UTF-8 bytes (never inside a character), and its whole size.
    What Postgres text cannot hold (NUL, a lone surrogate from a tool's output) becomes U+FFFD."""
    encoded = storable(text).encode()
    if len(encoded) > limit:
        return encoded[:limit].decode(errors="ignore"), len(encoded)
    return encoded.decode(), len(encoded)


# --- in words (chat answers, the terminal) ----------------------------------------------------


def describe_session(session: SessionRecord, now: datetime | None = None) -> str:
    """One line: what the session was for and how it went."""
    work = session.role + (" answering a question" if session.purpose == "answer" else "")
    plan = f" (plan v{session.plan_version})" if session.plan_version else ""
    head = f"{work}{plan}, attempt {session.attempt}"
    count = f"{session.messages} message(s)" + (f", {session.dropped} not recorded" if session.dropped else "")
    if session.status == SessionStatus.RUNNING:
        running_s = ((now or datetime.now(session.started_at.tzinfo)) - session.started_at).total_seconds()
        return f"{head}: running for {duration(running_s)}, {count} so far"
    took = duration(((session.ended_at or session.beat_at) - session.started_at).total_seconds())
    spent = f"{session.turns} turn(s), ${session.cost_usd:.4f}, {count}"
    if session.status == SessionStatus.CUT_SHORT:
        return f"{head}: cut short after {took} ({session.error or 'no reason recorded'}), {spent}"
    failed = f": {first_line(session.error)}" if session.error and session.outcome != "success" else ""
    return f"{head}: ended {session.outcome}{failed} in {took}, {spent}"


def describe_message(message: SessionMessage, width: int = 120) -> str:
    """One line: the message's kind, its name, the start of its content."""
    label = {MessageKind.TEXT: "assistant", MessageKind.TOOL_USE: f"{message.name}",
             MessageKind.SYSTEM: f"system {message.name or ''}".strip(),
             MessageKind.RESULT: f"result {message.name or ''}".strip(),
             MessageKind.TOOL_RESULT: "tool error" if message.is_error else "tool result"}.get(message.kind, message.kind)
    text = " ".join(message.content.split())
    line = f"{label}: {text}" if text else label
    return line if len(line) <= width else line[: width - 1] + "…"


def duration(seconds: float) -> str:
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def first_line(text: str, width: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"
