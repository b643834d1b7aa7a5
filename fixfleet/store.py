"""The durable task store: Postgres through asyncpg. Postgres is the truth; queues are rebuildable.

Every status change is one guarded UPDATE (allowed from-states, optionally the expected
version) plus its `task_events` row, in one transaction; entering a queued state also writes
an outbox row so the task reaches its queue only after the transaction commits.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from fixfleet.models import (
    ALLOWED_FROM,
    QUEUED_IN,
    TERMINAL,
    NewTask,
    Task,
    TaskEvent,
    TaskStatus,
)

MIGRATION_LOCK_ID = 0x6669786665  # "fixfe": one advisory lock for all migrators
OUTBOX_CHANNEL = "fixfleet_outbox"

# Columns a transition may change along with the status.
_CHANGEABLE = {"plan", "plan_version", "branch", "pr_url", "cost_usd", "tokens", "attempts", "context", "external_ids"}
_JSON_COLUMNS = {"plan", "context", "external_ids"}


class StoreError(Exception):
    """Base of the store's typed errors."""


class TaskNotFound(StoreError):
    def __init__(self, ref: object) -> None:
        super().__init__(f"no task {ref}")
        self.ref = ref


class IllegalTransition(StoreError):
    def __init__(self, task: Task, target: TaskStatus) -> None:
        super().__init__(f"{task.key} is {task.status}: it cannot become {target}")
        self.task, self.target = task, target


class StaleVersion(StoreError):
    def __init__(self, task: Task, expected: int) -> None:
        super().__init__(f"{task.key} is at version {task.version}, not {expected}: it changed meanwhile")
        self.task, self.expected = task, expected


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery: seen once per (source, delivery id)."""

    source: str
    delivery_id: str


@dataclass(frozen=True)
class OutboxItem:
    id: int
    task_id: int
    queue: str
    priority: str


@dataclass(frozen=True)
class TaskState:
    id: int
    status: TaskStatus
    priority: str
    seconds_since_update: float


async def _init_connection(conn: asyncpg.Connection) -> None:
    for codec in ("json", "jsonb"):
        await conn.set_type_codec(codec, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _task(row: asyncpg.Record) -> Task:
    data = dict(row)
    data["cost_usd"] = float(data["cost_usd"])
    return Task.model_validate(data)


def parse_ref(ref: int | str) -> int:
    """A task is named by its id (`12`) or its key (`FF-12`, any case)."""
    text = str(ref).strip()
    if text.upper().startswith("FF-"):
        text = text[3:]
    if not text.isdigit():
        raise TaskNotFound(ref)
    return int(text)


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10, migrate: bool = True) -> Store:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection)
        store = cls(pool)
        if migrate:
            await store.migrate()
        return store

    async def close(self) -> None:
        await self.pool.close()

    # --- migrations -------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the numbered migrations not applied yet; safe when several processes start at once."""
        applied: list[str] = []
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for name, sql in _migration_files():
                    if name in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", name)
                    applied.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        return applied

    async def applied_migrations(self) -> list[str]:
        rows = await self.pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
        return [r["version"] for r in rows]

    # --- tasks ------------------------------------------------------------------------------

    async def create_task(
        self, new: NewTask, *, delivery: Delivery | None = None, actor: str = "system"
    ) -> tuple[Task, bool]:
        """Store a new task (RECEIVED, queued for planning). Returns (task, created).

        With a delivery, a redelivery of the same (source, id) returns the first task and
        creates nothing.
        """
        args = _create_args(new, actor)
        if delivery is None:  # one statement, atomic on its own
            return _task(await self.pool.fetchrow(_CREATE_TASK, *args)), True
        async with self.pool.acquire() as conn, conn.transaction():
            first = await conn.fetchval(
                "INSERT INTO webhook_deliveries (source, delivery_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                delivery.source,
                delivery.delivery_id,
            )
            if first is None and (existing := await self._delivery_task(conn, delivery)) is not None:
                return existing, False
            task = _task(await conn.fetchrow(_CREATE_TASK, *args))
            await conn.execute(
                "UPDATE webhook_deliveries SET task_id = $3 WHERE source = $1 AND delivery_id = $2",
                delivery.source,
                delivery.delivery_id,
                task.id,
            )
            return task, True

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

    async def _delivery_task(self, conn: asyncpg.Connection, delivery: Delivery) -> Task | None:
        row = await conn.fetchrow(
            "SELECT t.* FROM webhook_deliveries d JOIN tasks t ON t.id = d.task_id"
            " WHERE d.source = $1 AND d.delivery_id = $2",
            delivery.source,
            delivery.delivery_id,
        )
        return _task(row) if row else None

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
    ) -> Task:
        """Move a task to `target` if the edge is legal (and the version matches); else raise."""
        task_id, target = parse_ref(ref), TaskStatus(target)
        changes = changes or {}
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise ValueError(f"a transition cannot change {sorted(unknown)}")
        sets = ["status = $2", "version = t.version + 1", "updated_at = now()"]
        args: list[Any] = [task_id, target.value, [s.value for s in ALLOWED_FROM[target]], expected_version]
        for column, value in changes.items():
            args.append(value)
            sets.append(f"{column} = ${len(args)}")
        query = (
            f"UPDATE tasks t SET {', '.join(sets)}"
            " FROM (SELECT id, status AS old FROM tasks WHERE id = $1 FOR UPDATE) o"
            " WHERE t.id = o.id AND t.status = ANY($3::text[])"
            " AND ($4::int IS NULL OR t.version = $4::int)"
            " RETURNING t.*, o.old"
        )
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(query, *args)
            if row is None:
                await self._raise_refusal(conn, task_id, target, expected_version)
            task = _task(row)
            await self._event(conn, task_id, TaskStatus(row["old"]), target, actor, reason, data or {})
            if target in QUEUED_IN:
                await self._to_outbox(conn, task_id, QUEUED_IN[target], task.priority.value)
            return task

    async def _raise_refusal(
        self, conn: asyncpg.Connection, task_id: int, target: TaskStatus, expected_version: int | None
    ) -> None:
        row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
        if row is None:
            raise TaskNotFound(task_id)
        current = _task(row)
        if current.status not in ALLOWED_FROM[target]:
            raise IllegalTransition(current, target)
        raise StaleVersion(current, expected_version or 0)

    async def fail(self, ref: int | str, *, actor: str, reason: str, data: dict[str, Any] | None = None) -> Task | None:
        """Mark a task FAILED unless it already ended; returns None when it had."""
        task = await self.get_task(ref)
        if task.status in TERMINAL:
            return None
        try:
            return await self.transition(task.id, TaskStatus.FAILED, actor=actor, reason=reason, data=data)
        except IllegalTransition:
            return None

    async def retry(self, ref: int | str, *, actor: str) -> Task:
        """Send a FAILED task back: to execution if its plan was approved, else to planning."""
        was_approved = any(e.to_status == TaskStatus.APPROVED for e in await self.events(ref))
        target = TaskStatus.APPROVED if was_approved else TaskStatus.RECEIVED
        return await self.transition(ref, target, actor=actor, reason="retry requested")

    async def update_fields(self, ref: int | str, **changes: Any) -> Task:
        """Change data (plan, costs, ...) without a status change; the version still moves."""
        unknown = set(changes) - _CHANGEABLE
        if unknown or not changes:
            raise ValueError(f"cannot update {sorted(unknown) or 'nothing'}")
        sets = [f"{column} = ${i}" for i, column in enumerate(changes, start=2)]
        row = await self.pool.fetchrow(
            f"UPDATE tasks SET {', '.join(sets)}, version = version + 1, updated_at = now()"
            " WHERE id = $1 RETURNING *",
            parse_ref(ref),
            *changes.values(),
        )
        if row is None:
            raise TaskNotFound(ref)
        return _task(row)

    async def record_event(
        self, ref: int | str, *, actor: str, reason: str, data: dict[str, Any] | None = None
    ) -> None:
        """An audit row that is not a transition (a refused approval, a takeover, a note)."""
        task_id = parse_ref(ref)
        async with self.pool.acquire() as conn:
            status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
            if status is None:
                raise TaskNotFound(ref)
            await self._event(conn, task_id, TaskStatus(status), None, actor, reason, data or {})

    async def get_task(self, ref: int | str) -> Task:
        row = await self.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", parse_ref(ref))
        if row is None:
            raise TaskNotFound(ref)
        return _task(row)

    async def find_task(self, *, external_key: str, external_id: str, open_only: bool = True) -> Task | None:
        """The newest task carrying this external id (e.g. a Sentry issue id)."""
        row = await self.pool.fetchrow(
            "SELECT * FROM tasks WHERE external_ids ->> $1 = $2"
            " AND (NOT $3 OR status <> ALL($4::text[])) ORDER BY id DESC LIMIT 1",
            external_key,
            external_id,
            open_only,
            [s.value for s in TERMINAL],
        )
        return _task(row) if row else None

    async def list_tasks(
        self, *, statuses: Iterable[TaskStatus] | None = None, limit: int = 50, offset: int = 0
    ) -> list[Task]:
        wanted = [s.value for s in statuses] if statuses else None
        rows = await self.pool.fetch(
            "SELECT * FROM tasks WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))"
            " ORDER BY id DESC LIMIT $2 OFFSET $3",
            wanted,
            limit,
            offset,
        )
        return [_task(r) for r in rows]

    async def events(self, ref: int | str) -> list[TaskEvent]:
        task = await self.get_task(ref)
        rows = await self.pool.fetch("SELECT * FROM task_events WHERE task_id = $1 ORDER BY id", task.id)
        return [TaskEvent.model_validate(dict(r)) for r in rows]

    async def task_states(self, statuses: Iterable[TaskStatus]) -> list[TaskState]:
        rows = await self.pool.fetch(
            "SELECT id, status, priority, extract(epoch FROM now() - updated_at) AS age"
            " FROM tasks WHERE status = ANY($1::text[])",
            [s.value for s in statuses],
        )
        return [TaskState(r["id"], TaskStatus(r["status"]), r["priority"], float(r["age"])) for r in rows]

    # --- outbox -----------------------------------------------------------------------------

    @asynccontextmanager
    async def outbox_batch(self, limit: int = 500) -> AsyncIterator[list[OutboxItem]]:
        """Take up to `limit` unpublished outbox rows; they are gone only if the block succeeds.

        Rows are locked (SKIP LOCKED), so several relays never publish the same row at once.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM outbox WHERE id IN ("
                " SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, task_id, queue, priority",
                limit,
            )
            yield [OutboxItem(r["id"], r["task_id"], r["queue"], r["priority"]) for r in rows]

    async def outbox_task_ids(self) -> set[int]:
        return {r["task_id"] for r in await self.pool.fetch("SELECT task_id FROM outbox")}

    # --- helpers ----------------------------------------------------------------------------

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

    @staticmethod
    async def _to_outbox(conn: asyncpg.Connection, task_id: int, queue: str, priority: str) -> None:
        await conn.execute(
            "INSERT INTO outbox (task_id, queue, priority) VALUES ($1, $2, $3)", task_id, queue, priority
        )
        await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)


# One round trip: the task, its first audit row, its outbox row and the relay's wake-up.
_CREATE_TASK = """
WITH task AS (
    INSERT INTO tasks (source, external_ids, repo, title, body, priority, context)
    VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *
), event AS (
    INSERT INTO task_events (task_id, from_status, to_status, actor, reason, data)
    SELECT id, NULL, 'RECEIVED', $8, 'task received', $9 FROM task
), queued AS (
    INSERT INTO outbox (task_id, queue, priority) SELECT id, $10, priority FROM task
), notified AS (
    SELECT pg_notify($11, '')
)
SELECT task.* FROM task, notified
"""


def _create_args(new: NewTask, actor: str) -> tuple[Any, ...]:
    return (
        new.source.value,
        new.external_ids,
        new.repo,
        new.title,
        new.body,
        new.priority.value,
        new.context,
        actor,
        {"source": new.source.value},
        QUEUED_IN[TaskStatus.RECEIVED],
        OUTBOX_CHANNEL,
    )


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("fixfleet") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]
