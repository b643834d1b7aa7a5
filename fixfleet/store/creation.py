"""Making tasks: many at once (group commit), once per webhook delivery, once per external thing.

A redelivery of a webhook (same source and delivery id) returns the task the first delivery
made. A second task about one external thing (a Sentry issue, a Jira key, a GitHub issue)
while one is open is refused by the database itself (migration 0002's partial unique indexes),
so two deliveries racing each other cannot both make one: the loser gets the open task.
"""

from __future__ import annotations

from enum import StrEnum

import asyncpg

from fixfleet.models import (
    ONE_OPEN_TASK_PER,
    QUEUED_IN,
    TERMINAL,
    NewTask,
    Task,
    TaskStatus,
)
from fixfleet.store.records import Creation, columns, task_from_row

MAX_RACES = 5  # the open task we collided with ended before we could read it: insert again


class Outcome(StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"  # the same delivery again
    EXISTING = "existing"  # an open task about the same external thing


Made = tuple[Task, Outcome]


# The delivery rows inserted first, each linked to its task through the primary key. (An UPDATE
# joined to an unnest kept the plan Postgres cached while the table was nearly empty, a sequential
# scan: each batch cost more with every delivery stored, 3.8 ms at 50,000 rows.)
LINK_DELIVERIES = (
    "INSERT INTO webhook_deliveries (source, delivery_id, task_id)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])"
    " ON CONFLICT (source, delivery_id) DO UPDATE SET task_id = EXCLUDED.task_id"
)


# The tasks of deliveries seen before (a sender's retry), each found through the keys: a lateral
# lookup per delivery, which no cached plan can turn into a scan of every delivery and task stored.
FIND_DELIVERED = (
    "SELECT k.source AS delivery_source, k.delivery_id, t.* FROM unnest($1::text[], $2::text[]) AS k(source, delivery_id)"
    " CROSS JOIN LATERAL (SELECT t.* FROM webhook_deliveries d JOIN tasks t ON t.id = d.task_id"
    "  WHERE d.source = k.source AND d.delivery_id = k.delivery_id LIMIT 1) t"
)


async def create_delivered(conn: asyncpg.Connection, batch: list[Creation], notify: str | None) -> list[Made]:
    """Tasks from deliveries, in one transaction: a delivery seen before returns its first task."""
    keys = [c.delivery_key for c in batch if c.delivery_key]
    fresh = {
        (r["source"], r["delivery_id"])
        for r in await conn.fetch(
            "INSERT INTO webhook_deliveries (source, delivery_id)"
            " SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING RETURNING source, delivery_id",
            *columns(keys),
        )
    }
    seen = await _delivery_tasks(conn, set(keys) - fresh)
    makers: dict[tuple[str, str] | None, int] = {}  # delivery -> the batch index that makes its task
    to_make = []
    for i, creation in enumerate(batch):
        key = creation.delivery_key
        if key not in seen and (key is None or key not in makers):
            makers[key] = i
            to_make.append(i)
    made = dict(zip(to_make, await insert_tasks(conn, [batch[i] for i in to_make], notify), strict=True))
    if linked := [(*batch[i].delivery_key, task.id) for i, (task, _) in made.items() if batch[i].delivery_key]:
        await conn.execute(LINK_DELIVERIES, *columns(linked))
    results: list[Made] = []
    for i, creation in enumerate(batch):
        if i in made:
            results.append(made[i])
        else:  # seen in an earlier delivery, or earlier in this batch
            key = creation.delivery_key
            results.append((seen[key] if key in seen else made[makers[key]][0], Outcome.DUPLICATE))
    return results


async def insert_tasks(db: asyncpg.Pool | asyncpg.Connection, batch: list[Creation], notify: str | None) -> list[Made]:
    """Insert the batch in one statement; a task whose external thing already has an open task
    is not made, and that open task is returned instead."""
    results: dict[int, Made] = {}
    waiting = list(range(len(batch)))
    for _ in range(MAX_RACES):
        if not waiting:
            break
        rows = await db.fetch(CREATE_TASKS, *columns([batch[i].row() for i in waiting]),
                              QUEUED_IN[TaskStatus.RECEIVED], notify)
        refused = []
        for row in sorted(rows, key=lambda r: r["n"]):
            index = waiting[row["n"] - 1]
            if row["id"] is None:
                refused.append(index)
            else:
                results[index] = (task_from_row(row), Outcome.CREATED)
        for index in refused:
            if (open_task := await open_task_for(db, batch[index].new)) is not None:
                results[index] = (open_task, Outcome.EXISTING)
        waiting = [i for i in refused if i not in results]
    if waiting:
        raise RuntimeError(f"tasks for {[batch[i].new.external_ids for i in waiting]} kept colliding with tasks that ended")
    return [results[i] for i in range(len(batch))]


async def open_task_for(db: asyncpg.Pool | asyncpg.Connection, new: NewTask) -> Task | None:
    """The open task about one of `new`'s external things, if any."""
    wanted = [new.external_ids.get(key) for key in ONE_OPEN_TASK_PER]
    if not any(wanted):
        return None
    tests = " OR ".join(f"external_ids ->> '{key}' = ${i}" for i, key in enumerate(ONE_OPEN_TASK_PER, start=2))
    row = await db.fetchrow(f"SELECT * FROM tasks WHERE status <> ALL($1::text[]) AND ({tests}) ORDER BY id LIMIT 1",
                            [s.value for s in TERMINAL], *wanted)
    return task_from_row(row) if row else None


async def _delivery_tasks(conn: asyncpg.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Task]:
    if not keys:
        return {}
    rows = await conn.fetch(FIND_DELIVERED, *columns(keys))
    return {(r["delivery_source"], r["delivery_id"]): task_from_row(r) for r in rows}


# One round trip for a batch of tasks: each task, its first audit row, its outbox row and,
# when the relay is in another process, the relay's wake-up ($11: the NOTIFY channel, or
# NULL). Ids are drawn first so each returned row can be matched to its input (`n`); a task
# the unique indexes refuse (an open task about the same thing exists) comes back with a
# NULL id and gets neither an audit row nor an outbox row.
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
    ON CONFLICT DO NOTHING
    RETURNING *
), event AS (
    INSERT INTO task_events (task_id, from_status, to_status, actor, reason, data)
    SELECT id, NULL, 'RECEIVED', input.actor, 'task received', input.data FROM task JOIN input USING (id)
), queued AS (
    INSERT INTO outbox (task_id, queue, priority, version) SELECT id, $10, priority, version FROM task
), notified AS (
    SELECT pg_notify($11, '') WHERE $11::text IS NOT NULL AND EXISTS (SELECT 1 FROM task)
)
SELECT task.*, input.n FROM input LEFT JOIN task USING (id) LEFT JOIN notified ON true
"""
