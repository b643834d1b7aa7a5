"""`fixfleet logs FF-12`: the task's agent sessions and one session's messages, read from the store
(the records the agents write as they run: fixfleet/sessions.py), readable in a terminal.

    fixfleet logs FF-12                  the sessions, then the latest one's messages
    fixfleet logs FF-12 --session 2      the task's second session
    fixfleet logs FF-12 --follow         and keep printing while it runs, until it ends
    fixfleet logs FF-12 --json           one JSON document; with --follow, one JSON object a line
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from fixfleet.cli.app import JsonFlag, TaskRef, app, fail, out, with_services
from fixfleet.services import Services
from fixfleet.sessions import (
    MessageKind,
    SessionMessage,
    SessionRecord,
    SessionStatus,
    describe_message,
    describe_session,
    duration,
)
from fixfleet.store.records import parse_ref
from fixfleet.store.sessions import MAX_PAGE

SHOWN_LINES = 12  # of a message's content, unless --full
ARROWS = {MessageKind.TOOL_USE: "→", MessageKind.TOOL_RESULT: "←"}


@app.command()
def logs(
    ref: TaskRef,
    session: Annotated[int | None, typer.Option(
        "--session", "-s", min=1, help="Which session: 1 is the task's first (the list shows them); the latest by default.")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="While the session runs, keep printing its messages as they come, until it ends.")] = False,
    last: Annotated[int | None, typer.Option(
        "--last", "-n", min=1, max=MAX_PAGE, help="Only the session's last N messages.")] = None,
    full: Annotated[bool, typer.Option(
        "--full", help=f"Print each message whole (as recorded), not its first {SHOWN_LINES} lines.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """The task's agent sessions (planner, executor, answers) and one session's messages in order: the
    prompt, what the agent said, each tool call with its input and its result. `fixfleet status FF-12`
    shows the task's audit trail."""
    view = _Printer(full=full, as_json=as_json)

    async def show(services: Services) -> None:
        store = services.store
        sessions = await store.task_sessions(ref)
        task_key = f"FF-{parse_ref(ref)}"
        if not sessions:
            view.no_sessions(task_key)
            return
        if session is not None and session > len(sessions):
            fail(f"{task_key} has {len(sessions)} session(s): --session takes 1 to {len(sessions)}")
        number = session or len(sessions)
        chosen = sessions[number - 1]
        messages = await (store.last_messages(chosen.id, last) if last else _all_messages(services, chosen.id))
        if follow:
            view.following(task_key, sessions, number, messages)
            async for item in store.follow_session(chosen.id, after=messages[-1].seq if messages else 0):
                if isinstance(item, SessionMessage):
                    view.message(item)
                elif isinstance(item, SessionRecord):
                    view.ended(item)
        else:
            view.whole(task_key, sessions, number, messages)

    try:
        with_services(show)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _all_messages(services: Services, session_id: int) -> list[SessionMessage]:
    messages: list[SessionMessage] = []
    while page := await services.store.session_messages(session_id, after=messages[-1].seq if messages else 0,
                                                        limit=MAX_PAGE):
        messages += page
        await asyncio.sleep(0)
        if len(page) < MAX_PAGE:
            break
    return messages


class _Printer:
    """What `logs` prints: tables and readable messages for a person, JSON for a script."""

    def __init__(self, *, full: bool, as_json: bool) -> None:
        self.full, self.as_json = full, as_json

    def no_sessions(self, task_key: str) -> None:
        if self.as_json:
            self._json({"task": task_key, "sessions": [], "session": None, "messages": []})
        else:
            out.print(f"{task_key} has no agent session yet.", highlight=False)

    def whole(self, task_key: str, sessions: list[SessionRecord], number: int, messages: list[SessionMessage]) -> None:
        if self.as_json:
            self._json({"task": task_key, "sessions": [_dump(s) for s in sessions], "session": number,
                        "messages": [_dump(m) for m in messages]})
            return
        self._sessions(task_key, sessions, number)
        for message in messages:
            self.message(message)
        self._closing_line(sessions[number - 1])

    def following(self, task_key: str, sessions: list[SessionRecord], number: int,
                  messages: list[SessionMessage]) -> None:
        if self.as_json:  # one object a line: the session, its messages as they come, its end
            self._json({"type": "session", "task": task_key, "number": number, "session": _dump(sessions[number - 1])})
        else:
            self._sessions(task_key, sessions, number)
        for message in messages:
            self.message(message)

    def message(self, message: SessionMessage) -> None:
        if self.as_json:  # only while following: `whole` prints its messages in one document
            self._json({"type": "message", **_dump(message)})
            return
        head = Text(f"{message.at:%H:%M:%S} #{message.seq} ", style="dim")
        arrow = ARROWS.get(message.kind, "")
        if message.kind in (MessageKind.SYSTEM, MessageKind.RESULT):
            head.append(describe_message(message, 160), style="cyan" if message.kind == MessageKind.RESULT else "dim")
            out.print(head)
            return
        label = {MessageKind.TOOL_USE: f"{arrow} {message.name}", MessageKind.TEXT: "assistant",
                 MessageKind.TOOL_RESULT: f"{arrow} {'error' if message.is_error else 'result'}"}.get(
                     message.kind, message.kind.value)
        head.append(label, style="bold red" if message.is_error else "bold")
        out.print(head)
        self._content(message)

    def ended(self, session: SessionRecord) -> None:
        if self.as_json:
            self._json({"type": "end", "session": _dump(session)})
        else:
            self._closing_line(session)

    def _content(self, message: SessionMessage) -> None:
        lines = message.content.splitlines() or [""]
        shown = lines if self.full else lines[:SHOWN_LINES]
        out.print(Text("\n".join(f"    {line}" for line in shown)), soft_wrap=True)
        notes = []
        if len(shown) < len(lines):
            notes.append(f"{len(lines) - len(shown)} more line(s): --full shows them")
        if message.truncated:
            notes.append(f"recorded {len(message.content.encode()):,} of {message.full_size:,} bytes")
        if notes:
            out.print(Text(f"    … {'; '.join(notes)}", style="dim"))

    def _sessions(self, task_key: str, sessions: list[SessionRecord], number: int) -> None:
        table = Table("#", "role", "try", "plan", "started", "took", "status", "turns", "cost", "msgs",
                      title=f"{task_key}: {len(sessions)} agent session(s)", title_justify="left", box=box.SIMPLE_HEAD,
                      padding=(0, 1, 0, 0))
        for column in table.columns:
            column.no_wrap = True
        for n, s in enumerate(sessions, start=1):
            took = ((s.ended_at or s.beat_at) - s.started_at).total_seconds()
            status = s.outcome if s.status == SessionStatus.ENDED else s.status.value.replace("_", " ")
            table.add_row(f"{'>' if n == number else ' '}{n}", "answer" if s.purpose == "answer" else s.role,
                          str(s.attempt), f"v{s.plan_version}" if s.plan_version else "-", f"{s.started_at:%m-%d %H:%M}",
                          duration(took), status or "-", str(s.turns), f"${s.cost_usd:.2f}", str(s.messages),
                          style="bold" if n == number else None)
        out.print(table)
        chosen = sessions[number - 1]
        out.print(Text(f"Session {number} (id {chosen.id}, agent {chosen.agent}, model {chosen.model or 'default'}):",
                       style="bold"))

    def _closing_line(self, session: SessionRecord) -> None:
        style = {SessionStatus.RUNNING: "yellow", SessionStatus.CUT_SHORT: "red"}.get(
            session.status, "green" if session.outcome == "success" else "red")
        out.print(Text(describe_session(session), style=style))
        if session.pruned:
            out.print(Text(f"{session.pruned} older message(s) were removed by the retention setting", style="dim"))

    @staticmethod
    def _json(payload: dict[str, Any]) -> None:
        print(json.dumps(payload, default=str), flush=True)


def _dump(model: SessionRecord | SessionMessage) -> dict[str, Any]:
    return model.model_dump(mode="json")
