"""The domain both sides share: tasks, their states and the legal moves between them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from fixfleet.forge_refs import ISSUE_KEY, PULL_KEY, THREAD


class TaskStatus(StrEnum):
    RECEIVED = "RECEIVED"
    PLANNING = "PLANNING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    REVISING = "REVISING"
    APPROVED = "APPROVED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"


S = TaskStatus
_ACTIVE = {S.RECEIVED, S.PLANNING, S.AWAITING_APPROVAL, S.REVISING, S.APPROVED, S.EXECUTING}

# Every legal edge, keyed by the target state: the set of states it may be entered from.
# PLANNING->PLANNING and EXECUTING->EXECUTING are takeovers: another agent resumes a task
# whose first agent died or whose attempt is being retried. PAUSED is left only by `resume`
# (to the waiting state the task paused in: RESUMES_TO) or `cancel`.
ALLOWED_FROM: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.RECEIVED: frozenset({S.FAILED, S.PAUSED}),  # retry from scratch; resume
    S.PLANNING: frozenset({S.RECEIVED, S.REVISING, S.PLANNING}),
    S.AWAITING_APPROVAL: frozenset({S.PLANNING, S.PAUSED}),
    S.REVISING: frozenset({S.AWAITING_APPROVAL, S.PAUSED}),
    S.APPROVED: frozenset({S.AWAITING_APPROVAL, S.FAILED, S.PAUSED}),  # FAILED: retry the execution
    S.EXECUTING: frozenset({S.APPROVED, S.EXECUTING}),
    S.COMPLETED: frozenset({S.EXECUTING}),
    S.FAILED: frozenset(_ACTIVE - {S.AWAITING_APPROVAL}),
    S.REJECTED: frozenset({S.AWAITING_APPROVAL}),
    S.CANCELLED: frozenset(_ACTIVE | {S.PAUSED}),
    S.PAUSED: frozenset(_ACTIVE),
}

# Where `resume` sends a task, by the state it was paused in: back to waiting for the same
# step (an agent that was working on it was stopped; the next one starts from what is durable).
RESUMES_TO: dict[TaskStatus, TaskStatus] = {
    S.RECEIVED: S.RECEIVED, S.PLANNING: S.RECEIVED, S.REVISING: S.REVISING,
    S.AWAITING_APPROVAL: S.AWAITING_APPROVAL, S.APPROVED: S.APPROVED, S.EXECUTING: S.APPROVED,
}

TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.REJECTED, S.CANCELLED})
ENDED_UNFINISHED = frozenset({S.REJECTED, S.CANCELLED})  # ended by a person: the draft PR is closed


class PullOutcome(StrEnum):
    """What became of a COMPLETED task's pull request, as the forge says (a fact recorded on the
    task, not a state: COMPLETED stays the last state). MERGED is final; a closed pull request
    may be reopened (OPEN again) and merged later."""

    OPEN = "open"
    MERGED = "merged"
    CLOSED = "closed"
OPEN = frozenset(set(TaskStatus) - TERMINAL)

# States in which a task sits in a queue, waiting for an agent, and that queue's name.
QUEUED_IN: dict[TaskStatus, str] = {
    S.RECEIVED: "planning",
    S.REVISING: "planning",
    S.APPROVED: "execution",
}
# States in which an agent holds the task; its queue entry stays pending until it finishes.
CLAIMED_IN: dict[TaskStatus, str] = {S.PLANNING: "planning", S.EXECUTING: "execution"}
WORK = "work"  # the action of an entry for the task's next step


@dataclass(frozen=True)
class SideJob:
    """A job an agent does for a person without moving the task's state: its entry carries
    `action` on `queue`. A request is pending while the task's context holds `<key>_asked_at`
    and no equal `<key>_answered_at`; the reconciler queues a pending one whose entry is gone."""

    action: str
    queue: str
    key: str
    states: frozenset[TaskStatus]  # where it may be asked for and still runs

    @property
    def asked(self) -> str:
        return f"{self.key}_asked_at"

    @property
    def answered(self) -> str:
        return f"{self.key}_answered_at"

    def pending(self, context: dict[str, Any]) -> bool:
        return context.get(self.asked) is not None and context.get(self.asked) != context.get(self.answered)


_PLANNED = frozenset({S.AWAITING_APPROVAL, S.REVISING, S.APPROVED, S.EXECUTING, S.COMPLETED, S.FAILED, S.PAUSED})
# `rerun-tests`: the executor runs the suite on the task's pushed branch again.
RERUN = SideJob("rerun-tests", "execution", "rerun", frozenset({S.AWAITING_APPROVAL, S.APPROVED, S.COMPLETED, S.FAILED}))
# `explain <question>`: the planner answers questions about its plan from the code.
EXPLAIN = SideJob("explain", "planning", "answer", _PLANNED)
QUESTION_ASKED, QUESTION_ANSWERED = "question about the plan", "explain: the planner answered"  # their audit rows
SIDE_JOBS = {job.action: job for job in (RERUN, EXPLAIN)}


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the highest priority."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {priority: rank for rank, priority in enumerate(Priority)}


class Source(StrEnum):
    API = "api"
    CLI = "cli"
    GITHUB = "github"
    JIRA = "jira"
    SENTRY = "sentry"
    SLACK = "slack"


# External ids a submitter may attach to a task (the webhooks use the same keys), and their shapes:
# a Sentry issue id, a Jira issue key, a GitHub issue as "[host/]owner/name#n".
EXTERNAL_ID_FORMATS: dict[str, re.Pattern[str]] = {
    "sentry_issue": re.compile(r"\d{1,20}"),
    "jira": re.compile(r"[A-Z][A-Z0-9_]{0,99}-\d{1,18}"),
    ISSUE_KEY: THREAD,
}
LOOKUP_EXTERNAL_KEYS = (*EXTERNAL_ID_FORMATS, PULL_KEY)  # what tasks can be found by
# At most one open task per external thing of these kinds: the database enforces it (migration 0002).
ONE_OPEN_TASK_PER = tuple(EXTERNAL_ID_FORMATS)
MAX_EXTERNAL_ID = 200


def check_external_id(key: str, value: str, *, keys: tuple[str, ...] = tuple(EXTERNAL_ID_FORMATS)) -> None:
    """Raise ValueError (a message fit for a 422) unless `key` is one of `keys` and `value` its shape."""
    if key not in keys:
        raise ValueError(f"external id {key!r}: use one of {', '.join(keys)}")
    if not value or len(value) > MAX_EXTERNAL_ID:
        raise ValueError(f"external id {key}: 1 to {MAX_EXTERNAL_ID} characters")
    pattern = EXTERNAL_ID_FORMATS.get(key)
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"external id {key}={value[:50]!r} is not a {key.replace('_', ' ')} id")


class NewTask(BaseModel):
    """What a submitter provides; everything else is the platform's."""

    source: Source = Source.CLI
    repo: str = Field(min_length=1)
    title: str = Field(min_length=1, max_length=500)
    body: str = ""
    priority: Priority = Priority.NORMAL
    external_ids: dict[str, str] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)


class TaskView(BaseModel):
    """A task as the task API shows it: what the ingress answers and its clients read."""

    id: int
    key: str
    source: str
    external_ids: dict[str, str]
    repo: str
    title: str
    body: str
    priority: Priority
    status: TaskStatus
    version: int
    attempts: int
    plan: dict[str, Any] | None
    plan_version: int
    branch: str | None
    pr_url: str | None
    cost_usd: float
    tokens: int
    owner: str | None = None
    created_at: datetime
    updated_at: datetime
    outcome: PullOutcome | None = None  # a COMPLETED task's pull request: merged, closed or still open
    outcome_by: str | None = None  # who merged (or closed) it
    outcome_at: datetime | None = None
    merge_seconds: float | None = None  # from the task's completion to the merge


class Task(TaskView):
    """A task as the store holds it: the view plus the platform's own context."""

    model_config = ConfigDict(from_attributes=True)

    source: Source
    context: dict[str, Any]


class TaskEventView(BaseModel):
    """One row of a task's audit trail as the task API shows it: who moved it (or tried), when, why."""

    id: int
    from_status: TaskStatus | None
    to_status: TaskStatus | None
    actor: str
    reason: str
    data: dict[str, Any]
    created_at: datetime


class TaskEvent(TaskEventView):
    """A row of the audit trail as the store holds it: the view plus its task."""

    task_id: int


class QueuedTask(BaseModel):
    """A message on a queue: which task, where, and when it may no longer run."""

    task_id: int
    queue: str
    priority: Priority
    attempt: int = 1
    version: int | None = None  # the task's version when it was queued: a later change makes this entry stale
    action: str = WORK  # WORK: the task's next step; else a SideJob's action
    enqueued_at: float
    expires_at: float | None = None

    @computed_field  # in the JSON so the queue's scripts can pick the stream by number
    @property
    def rank(self) -> int:
        return self.priority.rank
