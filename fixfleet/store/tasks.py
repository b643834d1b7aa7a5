"""The durable task store: Postgres through asyncpg. Postgres is the truth; queues are rebuildable.

Every status change is one guarded UPDATE (allowed from-states, optionally the expected
version) plus its `task_events` row, in one transaction; entering a queued state also writes
an outbox row so the task reaches its queue only after the transaction commits.

Everything written passes the platform's redactor first (a task's text, its plan and context,
every event's reason and data): an alert that quotes a secret never stores it. Session messages
(fixfleet/store/sessions.py) come redacted by the session runner, whose redactor knows more.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

from fixfleet.batcher import Batcher
from fixfleet.errors import Interrupted
from fixfleet.models import (
    ALLOWED_FROM,
    QUEUED_IN,
    RESUMES_TO,
    TERMINAL,
    WORK,
    NewTask,
    SideJob,
    Task,
    TaskStatus,
)
from fixfleet.redact import Redactor
from fixfleet.store.creation import (
    Outcome,
    create_delivered,
    insert_tasks,
    open_task_for,
)
from fixfleet.store.errors import (
    IllegalTransition,
    Refusal,
    StaleVersion,
    StoreError,
    TaskNotFound,
)
from fixfleet.store.agent_figures import AgentRecords
from fixfleet.store.outcomes import OutcomeRecords
from fixfleet.store.queueing import QueueRows
from fixfleet.store.reads import TaskReads
from fixfleet.store.records import (
    Creation,
    Delivery,
    init_connection,
    parse_ref,
    task_from_row,
)
from fixfleet.store.schema import applied_migrations, migrate
from fixfleet.store.sessions import SessionRecords

OUTBOX_CHANNEL = "fixfleet_outbox"

# Columns a transition may change along with the status.
_CHANGEABLE = {"plan", "plan_version", "branch", "pr_url", "attempts", "external_ids", "priority", "owner", "cost_usd",
               "tokens"}
_TEXTUAL = {"plan", "pr_url", "branch", "owner"}  # what may carry words an agent or a sender chose


class Store(TaskReads, QueueRows, SessionRecords, OutcomeRecords, AgentRecords):
    def __init__(self, pool: asyncpg.Pool, redactor: Redactor | None = None) -> None:
        self.pool = pool
        self.redactor = redactor or Redactor()
        self._creations: Batcher[Creation, tuple[Task, Outcome]] = Batcher(self._create_batch)
        # Set by an outbox relay running in this process: commits wake it directly. Without
        # one, each commit that fills the outbox sends NOTIFY, which serialises commits
        # (Postgres takes a global lock to queue a notification).
        self.relay_wake: Callable[[], None] | None = None

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10, migrate: bool = True,
                      redactor: Redactor | None = None) -> Store:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init_connection)
        store = cls(pool, redactor)
        if migrate:
            await store.migrate()
        return store

    async def close(self) -> None:
        await self.pool.close()

    async def migrate(self) -> list[str]:
        return await migrate(self.pool)

    async def applied_migrations(self) -> list[str]:
        return await applied_migrations(self.pool)

    # --- tasks ------------------------------------------------------------------------------

    async def create_task(
        self, new: NewTask, *, delivery: Delivery | None = None, actor: str = "system"
    ) -> tuple[Task, bool]:
        """Store a new task (RECEIVED, queued for planning). Returns (task, created).

        With a delivery, a redelivery of the same (source, id) returns the first task and
        creates nothing; while a task about the same external thing is open, that task is
        returned. Concurrent calls are written together (one statement, one commit: see
        `fixfleet.batcher`); each returns once its task is committed.
        """
        task, outcome = await self.create_or_find(new, delivery=delivery, actor=actor)
        return task, outcome is Outcome.CREATED

    async def create_or_find(
        self, new: NewTask, *, delivery: Delivery | None = None, actor: str = "system"
    ) -> tuple[Task, Outcome]:
        """Like `create_task`, saying whether the task was made, the delivery was seen before
        (DUPLICATE) or an open task about the same external thing already existed (EXISTING)."""
        clean = new.model_copy(update={"title": self.redactor.text(new.title), "body": self.redactor.text(new.body),
                                       "context": self.redactor.value(new.context)})
        task, outcome = await self._creations.submit(Creation(clean, delivery, actor))
        if outcome is Outcome.CREATED:
            self._wake_local_relay()
        return task, outcome

    async def _create_batch(self, batch: list[Creation]) -> list[tuple[Task, Outcome] | BaseException]:
        try:
            return await self._create_together(batch)
        except asyncpg.PostgresConnectionError:
            raise  # did it commit? unknown: writing again could make a second task
        except asyncpg.PostgresError:
            if len(batch) == 1:
                raise
        # The server refused the batch (so none of it committed): one bad task must not sink
        # the others, so each is written alone and only the bad one fails.
        return [await _outcome(self._create_together([creation])) for creation in batch]

    async def _create_together(self, batch: list[Creation]) -> list[tuple[Task, Outcome]]:
        async with self.pool.acquire() as conn, conn.transaction():
            if not any(c.delivery for c in batch):
                return await insert_tasks(conn, batch, self._notify_channel())
            return await create_delivered(conn, batch, self._notify_channel())

    async def record_delivery(self, delivery: Delivery, task_id: int | None = None) -> bool:
        """Remember a delivery that made no new task; False when it was seen before."""
        first = await self.pool.fetchval(
            "INSERT INTO webhook_deliveries (source, delivery_id, task_id) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            delivery.source,
            delivery.delivery_id,
            task_id,
        )
        return first is not None

    async def transition(
        self,
        ref: int | str,
        target: TaskStatus | str,
        *,
        actor: str,
        reason: str = "",
        data: dict[str, Any] | None = None,
        expected_version: int | None = None,
        changes: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
    ) -> Task:
        """Move a task to `target` if the edge is legal (and the version matches); else raise.
        `changes`: columns set with it; `context`: keys merged into the task's context."""
        async with self.pool.acquire() as conn, conn.transaction():
            task = await self._transition(conn, parse_ref(ref), TaskStatus(target), actor=actor, reason=reason,
                                          data=data, expected_version=expected_version, changes=changes, context=context)
        if task.status in QUEUED_IN:
            self._wake_local_relay()
        return task

    async def _transition(
        self, conn: asyncpg.Connection, task_id: int, target: TaskStatus, *, actor: str, reason: str = "",
        data: dict[str, Any] | None = None, expected_version: int | None = None,
        changes: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
    ) -> Task:
        """The guarded UPDATE, its audit row and (into a waiting state) its outbox row, on `conn`
        inside the caller's transaction. Only a transition moves `version`: it guards states."""
        sets, args = self._settings(changes, context, first=5)
        query = (
            f"UPDATE tasks t SET status = $2, version = t.version + 1, updated_at = now(){sets}"
            " FROM (SELECT id, status AS old FROM tasks WHERE id = $1 FOR UPDATE) o"
            " WHERE t.id = o.id AND t.status = ANY($3::text[])"
            " AND ($4::int IS NULL OR t.version = $4::int)"
            " RETURNING t.*, o.old"
        )
        try:
            async with conn.transaction():  # a savepoint: a refused UPDATE leaves the caller's transaction usable
                row = await conn.fetchrow(query, task_id, target.value, [s.value for s in ALLOWED_FROM[target]],
                                          expected_version, *args)
        except asyncpg.UniqueViolationError:
            raise await self._duplicate_open(conn, task_id) from None
        if row is None:
            await self._raise_refusal(conn, task_id, target, expected_version)
        task = task_from_row(row)
        await self._event(conn, task_id, TaskStatus(row["old"]), target, actor, self.redactor.text(reason),
                          self.redactor.value(data or {}))
        if target in QUEUED_IN:
            await self._to_outbox(conn, task)
        return task

    async def change(
        self,
        ref: int | str,
        *,
        actor: str,
        reason: str,
        allowed: Iterable[TaskStatus],
        changes: dict[str, Any],
        data: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        requeue: bool = False,
        side_job: SideJob | None = None,
    ) -> Task:
        """Change a task's data (not its state) if it is in one of the `allowed` states, with an
        audit row, in one transaction; else raise Refusal. `requeue`: a task waiting in a queue
        gets a new entry (the old one is then stale: `actors.agent.stale_entry`). `side_job`: ask
        an agent for a job that leaves the state alone (stamped `<key>_asked_at`: pending until answered)."""
        task_id = parse_ref(ref)
        if side_job:
            context = (context or {}) | {side_job.asked: datetime.now(UTC).isoformat()}
        sets, args = self._settings(changes, context, first=3)  # may be none: the audit row is the change
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE tasks SET updated_at = updated_at{sets} WHERE id = $1 AND status = ANY($2::text[])"
                " RETURNING *", task_id, [s.value for s in allowed], *args)
            if row is None:
                current = await self.get_task(task_id)  # raises TaskNotFound
                raise Refusal(f"{current.key} is {current.status}: {reason} is not possible now")
            task = task_from_row(row)
            await self._event(conn, task_id, task.status, None, actor, self.redactor.text(reason),
                              self.redactor.value(data or {}))
            if requeue and task.status in QUEUED_IN:
                await self._to_outbox(conn, task)
            if side_job:
                await self._to_outbox(conn, task, queue=side_job.queue, action=side_job.action)
        if requeue or side_job:
            self._wake_local_relay()
        return task

    async def resume(self, ref: int | str, *, actor: str, reason: str = "resumed") -> Task:
        """PAUSED -> the waiting state of the step it paused in (RESUMES_TO)."""
        task = await self.get_task(ref)
        if task.status != TaskStatus.PAUSED:
            raise IllegalTransition(task, TaskStatus.RECEIVED, detail=f"{task.key} is {task.status}, not PAUSED")
        paused = [e for e in await self.events(task.id) if e.to_status == TaskStatus.PAUSED]
        target = RESUMES_TO[paused[-1].from_status] if paused and paused[-1].from_status else TaskStatus.RECEIVED
        return await self.transition(task.id, target, actor=actor, reason=reason, expected_version=task.version,
                                     data={"paused_in": paused[-1].from_status if paused else None})

    @asynccontextmanager
    async def holding(self, task: Task) -> AsyncIterator[Hold]:
        """Hold `task` as claimed (pass the task as the claim returned it: its state and version
        must be unchanged, or this raises `Interrupted`) for a block of side effects
        (a push, the PR, Jira, Slack) and the transition that ends them: a cancel or pause
        arriving meanwhile waits for the block, and one that came before makes it raise
        `Interrupted` before anything is done. Other writes (events, costs) go on."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR NO KEY UPDATE", task.id)
            if row is None:
                raise TaskNotFound(task.id)
            if row["status"] != task.status or row["version"] != task.version:
                raise Interrupted(task.id, row["status"], f"{task.key} is now {row['status']} (version "
                                  f"{row['version']}, was {task.status} v{task.version}): stopped")
            hold = Hold(self, conn, task_from_row(row))  # as it is now: its data may have changed since
            yield hold
        if hold.moved_to in QUEUED_IN:
            self._wake_local_relay()

    async def fail(self, ref: int | str, *, actor: str, reason: str, data: dict[str, Any] | None = None) -> Task | None:
        """Mark a task FAILED unless it already ended; returns None when it had."""
        task = await self.get_task(ref)
        if task.status in TERMINAL:
            return None
        try:
            return await self.transition(task.id, TaskStatus.FAILED, actor=actor, reason=reason, data=data)
        except IllegalTransition:
            return None

    async def retry(self, ref: int | str, *, actor: str, reason: str = "retry requested") -> Task:
        """Send a FAILED task back: to execution if its plan was approved, else to planning."""
        task = await self.get_task(ref)
        was_approved = any(e.to_status == TaskStatus.APPROVED for e in await self.events(task.id))
        target = TaskStatus.APPROVED if was_approved else TaskStatus.RECEIVED
        if task.status != TaskStatus.FAILED:  # APPROVED is also entered from PAUSED: that is resume's move
            raise IllegalTransition(task, target, detail=f"{task.key} is {task.status}: only a FAILED task is retried")
        return await self.transition(task.id, target, actor=actor, reason=reason, expected_version=task.version)

    async def update_fields(self, ref: int | str, *, context: dict[str, Any] | None = None, **changes: Any) -> Task:
        """Change data (plan, PR, ...) without a status change. `context`: keys merged into the
        task's context in SQL (never a stale copy written back). The version stays: it guards
        state changes, and a data write must not make a pending approval stale."""
        if not changes and not context:
            raise ValueError("cannot update nothing")
        sets, args = self._settings(changes, context, first=2)
        row = await self.pool.fetchrow(f"UPDATE tasks SET updated_at = now(){sets} WHERE id = $1 RETURNING *",
                                       parse_ref(ref), *args)
        if row is None:
            raise TaskNotFound(ref)
        return task_from_row(row)

    async def add_cost(self, ref: int | str, cost_usd: float, tokens: int) -> Task:
        """Add a session's spend: an increment in SQL, so concurrent additions all count."""
        row = await self.pool.fetchrow(
            "UPDATE tasks SET cost_usd = cost_usd + $2, tokens = tokens + $3 WHERE id = $1 RETURNING *",
            parse_ref(ref), cost_usd, tokens)
        if row is None:
            raise TaskNotFound(ref)
        return task_from_row(row)

    async def attach_alert(self, ref: int | str, *, actor: str, last_seen: str | None) -> int:
        """Count another alert about an open task's thing; returns how many it has had."""
        task_id = parse_ref(ref)
        async with self.pool.acquire() as conn, conn.transaction():
            count = await conn.fetchval(
                "UPDATE tasks SET context = context || jsonb_build_object("
                " 'event_count', coalesce((context ->> 'event_count')::int, 1) + 1,"
                " 'last_seen', coalesce($2, context ->> 'last_seen'))"
                " WHERE id = $1 RETURNING (context ->> 'event_count')::int", task_id, last_seen)
            if count is None:
                raise TaskNotFound(ref)
            status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
            await self._event(conn, task_id, TaskStatus(status), None, actor, "another alert for this issue",
                              {"event_count": count})
        return count

    async def record_event(
        self, ref: int | str, *, actor: str, reason: str, data: dict[str, Any] | None = None
    ) -> None:
        """An audit row that is not a transition (a refused approval, a takeover, a note)."""
        task_id = parse_ref(ref)
        async with self.pool.acquire() as conn:
            status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
            if status is None:
                raise TaskNotFound(ref)
            await self._event(conn, task_id, TaskStatus(status), None, actor, self.redactor.text(reason),
                              self.redactor.value(data or {}))

    # --- helpers ----------------------------------------------------------------------------

    def _settings(self, changes: dict[str, Any] | None, context: dict[str, Any] | None,
                  *, first: int) -> tuple[str, list[Any]]:
        """`, col = $n` for each change (redacted where text) and a context merge, numbered from `first`."""
        changes = dict(changes or {})
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")
        sets, args = [], []
        for column, value in changes.items():
            args.append(self.redactor.value(value) if column in _TEXTUAL else value)
            sets.append(f", {column} = ${first + len(args) - 1}")
        if context:
            args.append(self.redactor.value(context))
            sets.append(f", context = context || ${first + len(args) - 1}::jsonb")
        return "".join(sets), args

    async def _raise_refusal(
        self, conn: asyncpg.Connection, task_id: int, target: TaskStatus, expected_version: int | None
    ) -> None:
        row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
        if row is None:
            raise TaskNotFound(task_id)
        current = task_from_row(row)
        if current.status not in ALLOWED_FROM[target]:
            raise IllegalTransition(current, target)
        raise StaleVersion(current, expected_version or 0)

    async def _duplicate_open(self, conn: asyncpg.Connection, task_id: int) -> StoreError:
        task = task_from_row(await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id))
        other = await open_task_for(conn, NewTask(repo=task.repo, title=task.title, external_ids=task.external_ids))
        named = f" ({other.key})" if other else ""
        return Refusal(f"{task.key} cannot reopen: another task about the same thing is open{named}")

    @staticmethod
    async def _event(
        conn: asyncpg.Connection,
        task_id: int,
        source: TaskStatus | None,
        target: TaskStatus | None,
        actor: str,
        reason: str,
        data: dict[str, Any],
    ) -> None:
        await conn.execute(
            "INSERT INTO task_events (task_id, from_status, to_status, actor, reason, data)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            task_id,
            source.value if source else None,
            target.value if target else None,
            actor,
            reason,
            json.loads(json.dumps(data, default=str)),
        )

    async def _to_outbox(self, conn: asyncpg.Connection, task: Task, *, queue: str | None = None,
                         action: str = WORK) -> None:
        await conn.execute("INSERT INTO outbox (task_id, queue, priority, version, action) VALUES ($1, $2, $3, $4, $5)",
                           task.id, queue or QUEUED_IN[task.status], task.priority.value, task.version, action)
        if channel := self._notify_channel():
            await conn.execute("SELECT pg_notify($1, '')", channel)

    def _notify_channel(self) -> str | None:
        """Relays in other processes hear of new outbox rows by NOTIFY; a local one directly."""
        return None if self.relay_wake else OUTBOX_CHANNEL

    def _wake_local_relay(self) -> None:
        if self.relay_wake:
            self.relay_wake()


async def _outcome(result: Awaitable[list[tuple[Task, Outcome]]]) -> tuple[Task, Outcome] | BaseException:
    try:
        return (await result)[0]
    except Exception as exc:
        return exc


class Hold:
    """The held task and the one transition that ends the hold, on the hold's transaction."""

    def __init__(self, store: Store, conn: asyncpg.Connection, task: Task) -> None:
        self.store, self.conn, self.task = store, conn, task
        self.moved_to: TaskStatus | None = None

    async def transition(self, target: TaskStatus, *, actor: str, reason: str = "",
                         data: dict[str, Any] | None = None, changes: dict[str, Any] | None = None,
                         context: dict[str, Any] | None = None) -> Task:
        task = await self.store._transition(self.conn, self.task.id, target, actor=actor, reason=reason, data=data,
                                            expected_version=self.task.version, changes=changes, context=context)
        self.moved_to, self.task = target, task
        return task
