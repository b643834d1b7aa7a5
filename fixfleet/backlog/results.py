"""What became of each task: status, where the fix is, what it cost, and how long each stage took,
read from the task's audit trail (every transition is an event with its time)."""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from fixfleet.backlog.api import RemoteEvent, RemoteTask
from fixfleet.backlog.items import BacklogItem
from fixfleet.models import TERMINAL, PullOutcome, TaskStatus
from fixfleet.store.outcomes import duration

S = TaskStatus
# The stage a task is in while in each status. Waiting in a queue for an agent is "queued",
# before planning (RECEIVED), before re-planning (REVISING) and before execution (APPROVED).
STAGE_OF = {S.RECEIVED: "queued", S.REVISING: "queued", S.APPROVED: "queued", S.PLANNING: "planning",
            S.AWAITING_APPROVAL: "waiting_for_approval", S.EXECUTING: "executing"}
STAGES = ("queued", "planning", "waiting_for_approval", "executing")
BULK_NOTE = "bulk approval"


class TaskResult(BaseModel):
    source: str
    external_id: str
    title: str
    task: str
    status: TaskStatus
    repository: str
    pr_url: str | None
    branch: str | None
    cost_usd: float
    tokens: int
    duration_s: float
    queued_s: float
    planning_s: float
    waiting_for_approval_s: float
    executing_s: float
    attempts: int
    failure: str | None
    approved_by: str | None
    bulk_approved: bool
    created_at: datetime
    ended_at: datetime | None  # when it reached its final status; None while it runs
    # What became of a completed task's pull request (the forge says; fixfleet/loops.py records it).
    pr_outcome: str | None = None  # merged, closed (unmerged) or open
    merged_by: str | None = None
    merged_at: datetime | None = None
    time_to_merge_s: float | None = None  # from the task's completion to the merge

    def row(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def stage_seconds(events: list[RemoteEvent], now: datetime) -> dict[str, float]:
    """Seconds spent in each stage: from each transition to the next (to `now` for the current one)."""
    spent = dict.fromkeys(STAGES, 0.0)
    moves = [e for e in events if e.to_status is not None]
    for move, following in zip(moves, [*moves[1:], None], strict=True):
        stage = STAGE_OF.get(move.to_status)  # type: ignore[arg-type]
        if stage is not None:
            spent[stage] += ((following.created_at if following else now) - move.created_at).total_seconds()
    return spent


def result_of(item: BacklogItem, task: RemoteTask, events: list[RemoteEvent], now: datetime) -> TaskResult:
    moves = [e for e in events if e.to_status is not None]
    started = moves[0].created_at if moves else task.created_at
    ended = moves[-1].created_at if moves and task.status in TERMINAL else now
    approvals = [e for e in moves if e.to_status == S.APPROVED and e.from_status == S.AWAITING_APPROVAL]
    approval = approvals[-1] if approvals else None
    stages = stage_seconds(events, now)
    return TaskResult(
        source=item.source, external_id=item.external_id, title=item.title, task=task.key, status=task.status,
        repository=task.repo, pr_url=task.pr_url, branch=task.branch, cost_usd=task.cost_usd, tokens=task.tokens,
        duration_s=round((ended - started).total_seconds(), 3), **{f"{k}_s": round(v, 3) for k, v in stages.items()},
        attempts=task.attempts, failure=_failure(task, moves), approved_by=approval.actor if approval else None,
        bulk_approved=bool(approval and approval.reason.startswith(BULK_NOTE)),
        created_at=started, ended_at=ended if task.status in TERMINAL else None,
        pr_outcome=task.outcome.value if task.outcome else None,
        merged_by=task.outcome_by if task.outcome == PullOutcome.MERGED else None,
        merged_at=task.outcome_at if task.outcome == PullOutcome.MERGED else None,
        time_to_merge_s=round(task.merge_seconds, 3) if task.merge_seconds is not None else None,
    )


def merge_summary(results: list[TaskResult]) -> str | None:
    """"2 of 3 completed merged (merge rate 67 % of decided), median time to merge 2h05m"; None
    while nothing completed."""
    completed = [r for r in results if r.status == S.COMPLETED]
    if not completed:
        return None
    merged = [r for r in completed if r.pr_outcome == PullOutcome.MERGED]
    closed = [r for r in completed if r.pr_outcome == PullOutcome.CLOSED]
    decided = len(merged) + len(closed)
    rate = f"merge rate {100 * len(merged) / decided:.0f} % of decided" if decided else "none decided yet"
    times = sorted(r.time_to_merge_s for r in merged if r.time_to_merge_s is not None)
    median = f", median time to merge {duration(statistics.median(times))}" if times else ""
    return f"{len(merged)} of {len(completed)} completed merged, {len(closed)} closed unmerged ({rate}){median}"


def _failure(task: RemoteTask, moves: list[RemoteEvent]) -> str | None:
    """Why the task ended without a fix (the reason of the move into FAILED, REJECTED or CANCELLED)."""
    if task.status not in (S.FAILED, S.REJECTED, S.CANCELLED):
        return None
    last = next((e for e in reversed(moves) if e.to_status == task.status), None)
    return (last.reason if last else "") or task.status.lower()
