"""The console's SessionReader over the session records in Postgres (fixfleet/store/sessions.py).

A recorded message is one piece of what the session said (the prompt, a system message, text,
thinking, a tool call, a tool result, the result); the console shows each as a message with one
block. Ids are the records' own (numbers).
"""

from __future__ import annotations

from fixfleet.sessions import MessageKind, SessionMessage as Recorded, SessionRecord, SessionStatus
from fixfleet.store import Store
from serve_app.console.transcripts import Block, SessionInfo, SessionMessage

# recorded kind -> (the console's message kind, its block's kind)
KINDS = {MessageKind.PROMPT: ("user", "text"), MessageKind.SYSTEM: ("system", "data"),
         MessageKind.TEXT: ("assistant", "text"), MessageKind.THINKING: ("assistant", "thinking"),
         MessageKind.TOOL_USE: ("assistant", "tool_use"), MessageKind.TOOL_RESULT: ("user", "tool_result"),
         MessageKind.USER: ("user", "text"), MessageKind.RESULT: ("result", "text")}


class RecordedSessions:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def sessions_of(self, task_id: int) -> list[SessionInfo]:
        return [session_info(record) for record in await self.store.task_sessions(task_id)]

    async def messages(self, session_id: str, *, after: int = 0, limit: int = 500) -> list[SessionMessage]:
        if not session_id.isdigit() or len(session_id) > 18:
            return []
        return [message(m) for m in await self.store.session_messages(int(session_id), after=after, limit=limit)]


def session_info(record: SessionRecord) -> SessionInfo:
    running = record.status == SessionStatus.RUNNING
    outcome = None if running else record.outcome if record.status == SessionStatus.ENDED else "cut short"
    return SessionInfo(id=str(record.id), task_id=record.task_id,
                       role=record.role + (" (answer)" if record.purpose == "answer" else ""), agent=record.agent,
                       running=running, started_at=record.started_at, ended_at=record.ended_at, outcome=outcome,
                       cost_usd=record.cost_usd, tokens=record.input_tokens + record.output_tokens, turns=record.turns,
                       note=record.error)


def message(recorded: Recorded) -> SessionMessage:
    kind, block = KINDS[recorded.kind]
    named = recorded.name if kind in ("system", "result") else ""
    return SessionMessage(seq=recorded.seq, kind=kind, at=recorded.at, summary=named or "",  # type: ignore[arg-type]
                          blocks=[Block(kind=block, text=recorded.content,  # type: ignore[arg-type]
                                        tool=recorded.name if block == "tool_use" else None,
                                        tool_use_id=recorded.tool_use_id, is_error=recorded.is_error,
                                        omitted=max(0, recorded.full_size - len(recorded.content.encode())))])
