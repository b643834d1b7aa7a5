"""What became of completed tasks' pull requests: recorded from the forge (a `pull_request`
webhook or the periodic check), each change with its audit row; read back as figures (merge rate,
time to merge) for `fixfleet status`, the metrics and the backlog."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fixfleet.models import PullOutcome, Task, TaskStatus
from fixfleet.store.records import parse_ref, task_from_row

if TYPE_CHECKING:
    import asyncpg

# Seconds: the time-to-merge histogram's buckets (an hour, a day, a week, ...).
MERGE_BUCKETS = (600.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0, 30 * 86400.0)

_RECORD = """
UPDATE tasks SET outcome = $2, outcome_by = $3, outcome_at = coalesce($4, now()),
    outcome_checked_at = now(), updated_at = now(),
    merge_seconds = CASE WHEN $2 = 'merged' THEN greatest(0, extract(epoch FROM coalesce($4, now()) - coalesce(
        (SELECT max(created_at) FROM task_events WHERE task_id = $1 AND to_status = 'COMPLETED'), created_at)))
        ELSE NULL END
WHERE id = $1 AND status = 'COMPLETED' AND outcome IS DISTINCT FROM $2 AND outcome IS DISTINCT FROM 'merged'
RETURNING *
"""


@dataclass(frozen=True)
class OutcomeFigures:
    """Completed tasks and what became of their pull requests."""

    completed: int
    merged: int
    closed: int
    open: int  # checked and still open, or not checked yet
    median_merge_s: float | None
    merge_seconds_sum: float
    merge_buckets: list[tuple[float, int]]  # (upper bound, merges at most that long): cumulative

    @property
    def merge_rate(self) -> float | None:
        """Merged among the decided ones (merged or closed); None while none is decided."""
        decided = self.merged + self.closed
        return self.merged / decided if decided else None

    def as_dict(self) -> dict[str, Any]:
        return {"completed": self.completed, "merged": self.merged, "closed": self.closed, "open": self.open,
                "merge_rate": self.merge_rate, "median_merge_s": self.median_merge_s}


class OutcomeRecords:
    pool: asyncpg.Pool

    async def record_outcome(self, ref: int | str, outcome: PullOutcome, *, by: str | None, at: datetime | None,
                             actor: str, data: dict[str, Any] | None = None) -> Task | None:
        """Record what became of a COMPLETED task's pull request, with its audit row; None (and
        nothing written) when the task is not COMPLETED, the outcome is unchanged, or it was
        already merged (final)."""
        task_id = parse_ref(ref)
        by = self.redactor.text(by) if by else None  # type: ignore[attr-defined]
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_RECORD, task_id, outcome.value, by, at)
            if row is None:
                return None
            task = task_from_row(row)
            who = f" by {by}" if by else ""
            reason = {PullOutcome.MERGED: f"pull request merged{who}", PullOutcome.CLOSED: f"pull request closed unmerged{who}",
                      PullOutcome.OPEN: f"pull request reopened{who}"}[outcome]
            await self._event(conn, task_id, TaskStatus.COMPLETED, None, actor, reason,  # type: ignore[attr-defined]
                              self.redactor.value({"outcome": outcome.value, "by": by,  # type: ignore[attr-defined]
                                                   "at": task.outcome_at.isoformat() if task.outcome_at else None,
                                                   "merge_seconds": task.merge_seconds, **(data or {})}))
        return task

    async def outcome_checked(self, ref: int | str, *, still_open: bool = True) -> None:
        """Checked, nothing new: ask again later. `still_open`: the forge said the pull request is
        open (False: nobody could say, as for a branch on a plain git remote: no outcome recorded)."""
        await self.pool.execute("UPDATE tasks SET outcome_checked_at = now(),"
                                " outcome = CASE WHEN $2 THEN coalesce(outcome, 'open') ELSE outcome END"
                                " WHERE id = $1", parse_ref(ref), still_open)

    async def outcomes_to_check(self, *, older_than_s: float, limit: int) -> list[Task]:
        """COMPLETED tasks whose pull request may still change (no outcome yet, open, or closed:
        it may be reopened), least recently checked first, not checked in `older_than_s`."""
        rows = await self.pool.fetch(
            "SELECT * FROM tasks WHERE status = 'COMPLETED' AND outcome IS DISTINCT FROM 'merged'"
            " AND (outcome_checked_at IS NULL OR outcome_checked_at < now() - make_interval(secs => $1))"
            " ORDER BY outcome_checked_at NULLS FIRST, id LIMIT $2", older_than_s, limit)
        return [task_from_row(r) for r in rows]

    async def outcome_figures(self, *, repo: str | None = None, ids: list[int] | None = None) -> OutcomeFigures:
        """Merge rate and time to merge over completed tasks (of one repository, or these ids)."""
        where = "status = 'COMPLETED' AND ($1::text IS NULL OR repo = $1) AND ($2::bigint[] IS NULL OR id = ANY($2))"
        buckets = ", ".join(f"count(*) FILTER (WHERE merge_seconds <= {b}) AS b{i}" for i, b in enumerate(MERGE_BUCKETS))
        row = await self.pool.fetchrow(
            f"SELECT count(*) AS completed, count(*) FILTER (WHERE outcome = 'merged') AS merged,"
            f" count(*) FILTER (WHERE outcome = 'closed') AS closed,"
            f" percentile_cont(0.5) WITHIN GROUP (ORDER BY merge_seconds) AS median,"
            f" coalesce(sum(merge_seconds), 0) AS total, {buckets} FROM tasks WHERE {where}", repo, ids)
        merged, closed = row["merged"], row["closed"]
        return OutcomeFigures(
            completed=row["completed"], merged=merged, closed=closed, open=row["completed"] - merged - closed,
            median_merge_s=row["median"], merge_seconds_sum=float(row["total"]),
            merge_buckets=[(b, row[f"b{i}"]) for i, b in enumerate(MERGE_BUCKETS)])

    async def ended_unclosed(self, pull_key: str, *, within_s: float, limit: int = 50) -> list[Task]:
        """REJECTED or CANCELLED tasks with a pull request or a branch not yet closed by fixfleet
        (`context.pull_closed_at`), ended within `within_s`."""
        rows = await self.pool.fetch(
            "SELECT * FROM tasks WHERE status IN ('REJECTED', 'CANCELLED') AND (external_ids ? $1 OR branch IS NOT NULL)"
            " AND NOT context ? 'pull_closed_at' AND updated_at > now() - make_interval(secs => $2)"
            " ORDER BY id LIMIT $3", pull_key, within_s, limit)
        return [task_from_row(r) for r in rows]

    async def merged_untold(self, *, limit: int = 50) -> list[Task]:
        """Merged tasks whose trackers and chat were not told yet (`context.merge_told_at`)."""
        rows = await self.pool.fetch(
            "SELECT * FROM tasks WHERE status = 'COMPLETED' AND outcome = 'merged'"
            " AND NOT context ? 'merge_told_at' ORDER BY id LIMIT $1", limit)
        return [task_from_row(r) for r in rows]


def duration(seconds: float) -> str:
    """3725 -> "1h02m"; 95 -> "1m35s"; two days and more in days and hours."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def outcome_line(outcome: PullOutcome | None, by: str | None) -> str:
    """How a task's outcome reads in a status line: "merged by alice"."""
    if outcome is None:
        return "-"
    return f"{outcome.value}{' by ' + by if by else ''}"
