"""Reading tasks: one, by external id, a page, the audit trail, the states the reconciler watches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from fixfleet.models import TERMINAL, SideJob, Task, TaskEvent, TaskStatus, TaskView
from fixfleet.store.errors import TaskNotFound
from fixfleet.store.records import TaskState, parse_ref, task_from_row

VIEW_COLUMNS = ", ".join(TaskView.model_fields)  # every column but the platform's context


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a list shows: each field given narrows it (None: any)."""

    statuses: tuple[TaskStatus, ...] | None = None
    external: tuple[tuple[str, str], ...] | None = None  # carrying any of these (key, id) external ids
    repo: str | None = None
    source: str | None = None
    priorities: tuple[str, ...] | None = None
    text: str | None = None  # in the title (any case), or the task's key (FF-12)

    @classmethod
    def of(cls, *, statuses: Iterable[TaskStatus] | None = None, external: Iterable[tuple[str, str]] | None = None,
           **narrower: Any) -> TaskFilter:
        return cls(statuses=tuple(statuses) if statuses else None,
                   external=tuple(external) if external is not None else None, **narrower)

    def where(self, *, first: int) -> tuple[str, list[Any]]:
        """The SQL condition and its arguments, numbered from `$first`."""
        tests, args = ["true"], []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${first + len(args) - 1}"

        if self.statuses:
            tests.append(f"status = ANY({arg([s.value for s in self.statuses])}::text[])")
        if self.external is not None:
            # One containment test per id, OR-ed: each can use the GIN index on external_ids.
            carried = [f"external_ids @> {arg({key: value})}::jsonb" for key, value in self.external]
            tests.append(f"({' OR '.join(carried) or 'false'})")
        if self.repo:
            tests.append(f"repo = {arg(self.repo)}")
        if self.source:
            tests.append(f"source = {arg(self.source)}")
        if self.priorities:
            tests.append(f"priority = ANY({arg(list(self.priorities))}::text[])")
        if self.text:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            tests.append(f"(title ILIKE {arg(pattern)} OR key = {arg(self.text.strip().upper())})")
        return " AND ".join(tests), args


class TaskReads:
    pool: asyncpg.Pool

    async def get_task(self, ref: int | str) -> Task:
        row = await self.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", parse_ref(ref))
        if row is None:
            raise TaskNotFound(ref)
        return task_from_row(row)

    async def state_of(self, ref: int | str) -> tuple[TaskStatus, int]:
        """(status, version): the cheap look a working agent takes every second."""
        row = await self.pool.fetchrow("SELECT status, version FROM tasks WHERE id = $1", parse_ref(ref))
        if row is None:
            raise TaskNotFound(ref)
        return TaskStatus(row["status"]), row["version"]

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
        where, args = TaskFilter.of(statuses=statuses, external=external).where(first=3)
        rows = await self.pool.fetch(f"SELECT * FROM tasks WHERE {where} ORDER BY id DESC LIMIT $1 OFFSET $2",
                                     limit, offset, *args)
        return [task_from_row(r) for r in rows]

    async def list_views(self, wanted: TaskFilter, *, limit: int = 50, offset: int = 0) -> list[TaskView]:
        """A page of tasks as people see them (without the platform's context), newest first."""
        where, args = wanted.where(first=3)
        rows = await self.pool.fetch(f"SELECT {VIEW_COLUMNS} FROM tasks WHERE {where} ORDER BY id DESC LIMIT $1 OFFSET $2",
                                     limit, offset, *args)
        return [TaskView.model_validate(dict(r) | {"cost_usd": float(r["cost_usd"])}) for r in rows]

    async def repos(self, limit: int = 200) -> list[str]:
        """The repositories tasks were made for, for a filter to offer."""
        rows = await self.pool.fetch("SELECT DISTINCT repo FROM tasks ORDER BY repo LIMIT $1", limit)
        return [r["repo"] for r in rows]

    async def events(self, ref: int | str) -> list[TaskEvent]:
        task = await self.get_task(ref)
        rows = await self.pool.fetch("SELECT * FROM task_events WHERE task_id = $1 ORDER BY id", task.id)
        return [TaskEvent.model_validate(dict(r)) for r in rows]

    async def pending(self, job: SideJob, *, ids: list[int] | None = None) -> list[TaskState]:
        """Tasks where `job` was asked for and not yet answered, in a state where it still runs."""
        rows = await self.pool.fetch(
            "SELECT id, status, priority, version, extract(epoch FROM now() - updated_at) AS age FROM tasks"
            " WHERE status = ANY($1::text[]) AND context ? $2"
            " AND context->$2 IS DISTINCT FROM context->$3 AND ($4::bigint[] IS NULL OR id = ANY($4::bigint[]))",
            [s.value for s in job.states], job.asked, job.answered, ids)
        return [TaskState(r["id"], TaskStatus(r["status"]), r["priority"], float(r["age"]), r["version"]) for r in rows]

    async def task_states(self, statuses: Iterable[TaskStatus], *, ids: list[int] | None = None) -> list[TaskState]:
        rows = await self.pool.fetch(
            "SELECT id, status, priority, version, extract(epoch FROM now() - updated_at) AS age"
            " FROM tasks WHERE status = ANY($1::text[]) AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))",
            [s.value for s in statuses],
            ids,
        )
        return [TaskState(r["id"], TaskStatus(r["status"]), r["priority"], float(r["age"]), r["version"]) for r in rows]

    async def claimed_by(self, ids: list[int]) -> dict[int, str]:
        """Task id -> who moved it into its current state (for a claimed task: the agent holding it)."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (task_id) task_id, actor FROM task_events"
            " WHERE task_id = ANY($1::bigint[]) AND to_status IS NOT NULL ORDER BY task_id, id DESC", ids)
        return {r["task_id"]: r["actor"] for r in rows}
