"""The durable task store: Postgres through asyncpg. Postgres is the truth; queues are rebuildable.

Every status change is one guarded UPDATE (allowed from-states, optionally the expected
version) plus its `task_events` row, in one transaction; entering a queued state also writes
an outbox row so the task reaches its queue only after the transaction commits.

Everything written passes the platform's redactor first (a task's text, its plan and context,
every event's reason and data): an alert that quotes a secret never stores it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from fixfleet.batcher import Batcher
from fixfleet.models import ALLOWED_FROM, QUEUED_IN, TERMINAL, NewTask, Task, TaskEvent, TaskStatus
from fixfleet.store.errors import IllegalTransition, StaleVersion, TaskNotFound
from fixfleet.store.records import (Creation, Delivery, OutboxItem, TaskState, columns, init_connection, parse_ref,
                                    task_from_row)
from fixfleet.redact import Redactor
from fixfleet.store.schema import applied_migrations, migrate

OUTBOX_CHANNEL = "fixfleet_outbox"

# Columns a transition may change along with the status.
_CHANGEABLE = {"plan", "plan_version", "branch", "pr_url", "cost_usd", "tokens", "attempts", "context", "external_ids"}
_TEXTUAL = {"plan", "context", "pr_url", "branch"}  # what may carry words an agent or a sender chose


class Store:
    def __init__(self, pool: asyncpg.Pool, redactor: Redactor | None = None) -> None:
        self.pool = pool
        self.redactor = redactor or Redactor()
        self._creations: Batcher[Creation, tuple[Task, bool]] = Batcher(self._create_batch)
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
        creates nothing. Concurrent calls are written together (one statement, one commit:
        see `fixfleet.batcher`); each returns once its task is committed.
        """
        clean = new.model_copy(update={"title": self.redactor.text(new.title), "body": self.redactor.text(new.body),
                                       "context": self.redactor.value(new.context)})
        task, created = await self._creations.submit(Creation(clean, delivery, actor))
        if created:
            self._wake_local_relay()
        return task, created

    async def _create_batch(self, batch: list[Creation]) -> list[tuple[Task, bool] | BaseException]:
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

    async def _create_together(self, batch: list[Creation]) -> list[tuple[Task, bool]]:
        if not any(c.delivery for c in batch):  # one statement, atomic on its own
            return [(task, True) for task in await self._insert_tasks(self.pool, batch)]
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._create_delivered(conn, batch)

    async def _create_delivered(self, conn: asyncpg.Connection, batch: list[Creation]) -> list[tuple[Task, bool]]:
        """Tasks from webhook deliveries: a delivery seen before returns its first task."""
        keys = [c.delivery_key for c in batch if c.delivery_key]
        fresh = {
            (r["source"], r["delivery_id"])
            for r in await conn.fetch(
                "INSERT INTO webhook_deliveries (source, delivery_id)"
                " SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING RETURNING source, delivery_id",
                *columns(keys),
            )
        }
        seen = await self._delivery_tasks(conn, set(keys) - fresh)
        makers: dict[tuple[str, str] | None, int] = {}  # delivery -> the batch index that creates its task
        to_create = []
        for i, creation in enumerate(batch):
            key = creation.delivery_key
            if key not in seen and (key is None or key not in makers):
                makers[key] = i
                to_create.append(i)
        created = dict(zip(to_create, await self._insert_tasks(conn, [batch[i] for i in to_create]), strict=True))
        if linked := [(*batch[i].delivery_key, task.id) for i, task in created.items() if batch[i].delivery_key]:
            await conn.execute(
                "UPDATE webhook_deliveries d SET task_id = u.task_id"
                " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(source, delivery_id, task_id)"
                " WHERE d.source = u.source AND d.delivery_id = u.delivery_id",
                *columns(linked),
            )
        results = []
        for i, creation in enumerate(batch):
            key = creation.delivery_key
            if i in created:
                results.append((created[i], True))
            else:  # seen in an earlier delivery, or earlier in this batch
                results.append((seen[key] if key in seen else created[makers[key]], False))
        return results

    async def _insert_tasks(self, db: asyncpg.Pool | asyncpg.Connection, batch: list[Creation]) -> list[Task]:
        if not batch:
            return []
        values = columns([c.row() for c in batch])
        rows = await db.fetch(CREATE_TASKS, *values, QUEUED_IN[TaskStatus.RECEIVED], self._notify_channel())
        return [task_from_row(row) for row in sorted(rows, key=lambda r: r["n"])]

    async def _delivery_tasks(self, conn: asyncpg.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Task]:
        if not keys:
            return {}
        rows = await conn.fetch(
            "SELECT d.source AS delivery_source, d.delivery_id, t.* FROM webhook_deliveries d"
            " JOIN tasks t ON t.id = d.task_id"
            " JOIN unnest($1::text[], $2::text[]) AS k(source, delivery_id)"
            " ON d.source = k.source AND d.delivery_id = k.delivery_id",
            *columns(keys),
        )
        return {(r["delivery_source"], r["delivery_id"]): task_from_row(r) for r in rows}

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
    ) -> Task:
        """Move a task to `target` if the edge is legal (and the version matches); else raise."""
        task_id, target = parse_ref(ref), TaskStatus(target)
        changes = self._redacted(changes or {})
        reason, data = self.redactor.text(reason), self.redactor.value(data or {})
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
            task = task_from_row(row)
            await self._event(conn, task_id, TaskStatus(row["old"]), target, actor, reason, data or {})
            if target in QUEUED_IN:
                await self._to_outbox(conn, task_id, QUEUED_IN[target], task.priority.value)
        if target in QUEUED_IN:
            self._wake_local_relay()
        return task

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
        changes = self._redacted(changes)
        sets = [f"{column} = ${i}" for i, column in enumerate(changes, start=2)]
        row = await self.pool.fetchrow(
            f"UPDATE tasks SET {', '.join(sets)}, version = version + 1, updated_at = now()"
            " WHERE id = $1 RETURNING *",
            parse_ref(ref),
            *changes.values(),
        )
        if row is None:
            raise TaskNotFound(ref)
        return task_from_row(row)

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

    async def get_task(self, ref: int | str) -> Task:
        row = await self.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", parse_ref(ref))
        if row is None:
            raise TaskNotFound(ref)
        return task_from_row(row)

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
        return task_from_row(row) if row else None

    async def list_tasks(
        self,
        *,
        statuses: Iterable[TaskStatus] | None = None,
        external: Iterable[tuple[str, str]] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Task]:
        """Newest first. `external`: only tasks carrying one of these (key, id) external ids."""
        wanted = [s.value for s in statuses] if statuses else None
        args: list[Any] = [wanted, limit, offset]
        carried = ""
        if external is not None:
            # One containment test per id, OR-ed: each can use the GIN index on external_ids.
            tests = []
            for key, value in external:
                args.append({key: value})
                tests.append(f"external_ids @> ${len(args)}::jsonb")
            carried = f" AND ({' OR '.join(tests) or 'false'})"
        rows = await self.pool.fetch(
            f"SELECT * FROM tasks WHERE ($1::text[] IS NULL OR status = ANY($1::text[])){carried}"
            " ORDER BY id DESC LIMIT $2 OFFSET $3",
            *args,
        )
        return [task_from_row(r) for r in rows]

    async def events(self, ref: int | str) -> list[TaskEvent]:
        task = await self.get_task(ref)
        rows = await self.pool.fetch("SELECT * FROM task_events WHERE task_id = $1 ORDER BY id", task.id)
        return [TaskEvent.model_validate(dict(r)) for r in rows]

    async def task_states(self, statuses: Iterable[TaskStatus], *, ids: list[int] | None = None) -> list[TaskState]:
        rows = await self.pool.fetch(
            "SELECT id, status, priority, extract(epoch FROM now() - updated_at) AS age"
            " FROM tasks WHERE status = ANY($1::text[]) AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))",
            [s.value for s in statuses],
            ids,
        )
        return [TaskState(r["id"], TaskStatus(r["status"]), r["priority"], float(r["age"])) for r in rows]

    @asynccontextmanager
    async def try_lock(self, lock_id: int) -> AsyncIterator[bool]:
        """Hold a lock shared by every process on this database for the block, unless another
        holds it already; yields whether this one holds it."""
        async with self.pool.acquire() as conn:
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
            try:
                yield held
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)

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

    async def outbox_entries(self) -> set[tuple[str, int]]:
        """(queue, task id) of every row still to publish."""
        return {(r["queue"], r["task_id"]) for r in await self.pool.fetch("SELECT queue, task_id FROM outbox")}

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

    async def _to_outbox(self, conn: asyncpg.Connection, task_id: int, queue: str, priority: str) -> None:
        await conn.execute(
            "INSERT INTO outbox (task_id, queue, priority) VALUES ($1, $2, $3)", task_id, queue, priority
        )
        if channel := self._notify_channel():
            await conn.execute("SELECT pg_notify($1, '')", channel)

    def _redacted(self, changes: dict[str, Any]) -> dict[str, Any]:
        return {column: self.redactor.value(value) if column in _TEXTUAL else value for column, value in changes.items()}

    def _notify_channel(self) -> str | None:
        """Relays in other processes hear of new outbox rows by NOTIFY; a local one directly."""
        return None if self.relay_wake else OUTBOX_CHANNEL

    def _wake_local_relay(self) -> None:
        if self.relay_wake:
            self.relay_wake()


# One round trip for a batch of tasks: each task, its first audit row, its outbox row and,
# when the relay is in another process, the relay's wake-up ($11: the NOTIFY channel, or
# NULL). Ids are drawn first so each returned row can be matched to its input (`n`).
CREATE_TASKS = """
WITH input AS (
    SELECT nextval(pg_get_serial_sequence('tasks', 'id')) AS id, i.*
    FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[],
                $8::text[], $9::jsonb[])
         WITH ORDINALITY AS i(source, external_ids, repo, title, body, priority, context, actor, data, n)
), task AS (
    INSERT INTO tasks (id, source, external_ids, repo, title, body, priority, context)
    OVERRIDING SYSTEM VALUE
    SELECT id, source, external_ids, repo, title, body, priority, context FROM input
    RETURNING *
), event AS (
    INSERT INTO task_events (task_id, from_status, to_status, actor, reason, data)
    SELECT id, NULL, 'RECEIVED', actor, 'task received', data FROM input
), queued AS (
    INSERT INTO outbox (task_id, queue, priority) SELECT id, $10, priority FROM input
), notified AS (
    SELECT pg_notify($11, '') WHERE $11::text IS NOT NULL
)
SELECT task.*, input.n FROM task JOIN input USING (id) LEFT JOIN notified ON true
"""


async def _outcome(result: Awaitable[list[tuple[Task, bool]]]) -> tuple[Task, bool] | BaseException:
    try:
        return (await result)[0]
    except Exception as exc:
        return exc
