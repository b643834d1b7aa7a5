"""Session records in Postgres (migration 0003): the rows a running session's recorder writes,
what the API, the CLI and the console read, and the upkeep (sessions whose agent vanished,
retention of old messages). The models are in fixfleet/sessions.py.

Messages arrive redacted (the session runner's redactor knows the session's own secrets besides
the platform's) and cut to the recording limit; the store writes what it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg

from fixfleet.sessions import (
    NewSession,
    SessionEnd,
    SessionMessage,
    SessionRecord,
    SessionStatus,
)
from fixfleet.store.errors import StoreError, TaskNotFound
from fixfleet.store.records import columns, parse_ref

MAX_PAGE = 5000  # messages in one read


class SessionNotFound(StoreError):
    def __init__(self, ref: object) -> None:
        super().__init__(f"no session {ref}")
        self.ref = ref


class SessionRecords:
    pool: asyncpg.Pool

    # --- written by a running session's recorder ---------------------------------------------

    async def start_session(self, new: NewSession) -> SessionRecord:
        """The row of a session about to start. A session of the same task, role and purpose
        still marked running belongs to an earlier attempt whose agent is gone (a newer one
        would not have started otherwise): it is marked cut short."""
        superseded = f"superseded: attempt {new.attempt} of the task started on {new.agent}"
        row = await self.pool.fetchrow(START_SESSION, new.task_id, new.role, new.purpose, new.attempt,
                                       new.plan_version, new.agent, new.model, new.cli_session_id, superseded)
        if row is None:
            raise TaskNotFound(new.task_id)
        return _session(row)

    async def append_messages(self, session_id: int, messages: Sequence[SessionMessage]) -> int:
        """Write messages (a retry of the same ones writes nothing twice) and note that the
        session is alive; returns how many were new. An empty batch only notes that."""
        rows = [(m.seq, m.at, m.kind.value, m.name, m.tool_use_id, m.is_error, m.content, m.full_size)
                for m in messages]
        written = await self.pool.fetchval(APPEND_MESSAGES, session_id, *(columns(rows) if rows else [[]] * 8))
        if written is None:
            raise SessionNotFound(session_id)
        return written

    async def end_session(self, session_id: int, end: SessionEnd) -> SessionRecord:
        """Record how the session ended. Its runner knows best: this holds even when the upkeep
        had marked the session cut short meanwhile (its agent was alive after all)."""
        row = await self.pool.fetchrow(
            "UPDATE sessions SET status = $2, outcome = $3, error = $4, cost_usd = $5, input_tokens = $6,"
            " output_tokens = $7, turns = $8, dropped = $9, ended_at = now(), beat_at = now()"
            " WHERE id = $1 RETURNING *",
            session_id, end.status.value, end.outcome, end.error, end.cost_usd, end.input_tokens,
            end.output_tokens, end.turns, end.dropped)
        if row is None:
            raise SessionNotFound(session_id)
        return _session(row)

    # --- read -------------------------------------------------------------------------------

    async def task_sessions(self, ref: int | str) -> list[SessionRecord]:
        """The task's sessions, oldest first; TaskNotFound when there is no such task."""
        task_id = parse_ref(ref)
        rows = await self.pool.fetch(  # one row with NULLs for a task without sessions, none without the task
            "SELECT s.* FROM tasks t LEFT JOIN sessions s ON s.task_id = t.id WHERE t.id = $1 ORDER BY s.id", task_id)
        if not rows:
            raise TaskNotFound(ref)
        return [_session(r) for r in rows if r["id"] is not None]

    async def get_session(self, session_id: int) -> SessionRecord:
        row = await self.pool.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
        if row is None:
            raise SessionNotFound(session_id)
        return _session(row)

    async def session_messages(self, session_id: int, *, after: int = 0, limit: int = 500) -> list[SessionMessage]:
        """Messages numbered above `after`, in order, at most `limit` (up to MAX_PAGE): poll with
        the last number seen to get what came since."""
        rows = await self.pool.fetch(
            "SELECT seq, at, kind, name, tool_use_id, is_error, content, full_size FROM session_messages"
            " WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            session_id, after, max(1, min(limit, MAX_PAGE)))
        return [SessionMessage.model_validate(dict(r)) for r in rows]

    async def last_messages(self, session_id: int, count: int) -> list[SessionMessage]:
        """The session's last `count` messages (up to MAX_PAGE), in order."""
        rows = await self.pool.fetch(
            "SELECT * FROM (SELECT seq, at, kind, name, tool_use_id, is_error, content, full_size"
            " FROM session_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2) m ORDER BY seq",
            session_id, max(1, min(count, MAX_PAGE)))
        return [SessionMessage.model_validate(dict(r)) for r in rows]

    async def follow_session(self, session_id: int, *, after: int = 0,
                             poll_s: float = 0.5) -> AsyncIterator[SessionMessage | SessionRecord | None]:
        """Follow a session live: its messages numbered above `after` as they are written, then,
        once it is no longer running, its row (the last item). None on each poll that found
        nothing new (a caller may send a keep-alive). SessionNotFound when there is no such session."""
        while True:
            session = await self.get_session(session_id)  # before the messages: none written before its end is missed
            fresh = False
            while page := await self.session_messages(session_id, after=after, limit=MAX_PAGE):
                for message in page:
                    yield message
                after, fresh = page[-1].seq, True
                if len(page) < MAX_PAGE:
                    break
            if session.status != SessionStatus.RUNNING:
                yield session
                return
            if not fresh:
                yield None
            await asyncio.sleep(poll_s)

    # --- upkeep (the relay's periodic job) --------------------------------------------------

    async def cut_short_silent_sessions(self, silent_s: float) -> list[int]:
        """Mark cut short the running sessions whose recorder has said nothing for `silent_s`
        (it speaks every few seconds while its agent lives): their agent is gone. They ended
        at their last word. Returns their ids."""
        rows = await self.pool.fetch(
            "UPDATE sessions SET status = 'cut_short', ended_at = beat_at, error = $2"
            " WHERE status = 'running' AND beat_at < now() - make_interval(secs => $1) RETURNING id",
            silent_s, f"its agent stopped answering (no word for {silent_s:g} s): lost with its replica")
        return [r["id"] for r in rows]

    async def prune_messages(self, ended_before: datetime, limit: int = 5000) -> int:
        """Delete up to `limit` messages of sessions that ended before `ended_before` (the rows
        stay, counting what was removed in `pruned`); returns how many went."""
        return await self.pool.fetchval(PRUNE_MESSAGES, ended_before, limit)


def _session(row: asyncpg.Record) -> SessionRecord:
    data = dict(row)
    data["cost_usd"] = float(data["cost_usd"])
    return SessionRecord.model_validate(data)


# An earlier attempt's session still "running" is cut short; then the new row (none: no such
# task). Starting the same session again (a first try whose answer was lost) returns its row.
START_SESSION = f"""
WITH superseded AS (
    UPDATE sessions SET status = '{SessionStatus.CUT_SHORT}', ended_at = beat_at, error = $9
    WHERE task_id = $1 AND role = $2 AND purpose = $3 AND status = '{SessionStatus.RUNNING}' AND cli_session_id <> $8
)
INSERT INTO sessions (task_id, role, purpose, attempt, plan_version, agent, model, cli_session_id)
SELECT id, $2, $3, $4, $5, $6, $7, $8 FROM tasks WHERE id = $1
ON CONFLICT (cli_session_id) DO UPDATE SET beat_at = now()
RETURNING *
"""

# One round trip per batch: the messages (a retried batch adds nothing twice), the count and
# the session's sign of life. NULL when there is no such session.
APPEND_MESSAGES = """
WITH written AS (
    INSERT INTO session_messages (session_id, seq, at, kind, name, tool_use_id, is_error, content, full_size)
    SELECT $1, m.* FROM unnest($2::int[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::bool[],
                               $8::text[], $9::int[]) AS m
    WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $1)
    ON CONFLICT DO NOTHING
    RETURNING 1
), counted AS (
    UPDATE sessions SET messages = messages + (SELECT count(*) FROM written), beat_at = now()
    WHERE id = $1 RETURNING id
)
SELECT (SELECT count(*) FROM written) FROM counted
"""

PRUNE_MESSAGES = """
WITH doomed AS (
    SELECT m.session_id, m.seq FROM sessions s JOIN session_messages m ON m.session_id = s.id
    WHERE s.messages > s.pruned AND s.ended_at < $1
    LIMIT $2
), gone AS (
    DELETE FROM session_messages m USING doomed d WHERE m.session_id = d.session_id AND m.seq = d.seq
    RETURNING m.session_id
), counted AS (
    UPDATE sessions s SET pruned = s.pruned + g.n
    FROM (SELECT session_id, count(*) AS n FROM gone GROUP BY session_id) g WHERE s.id = g.session_id
)
SELECT count(*) FROM gone
"""
