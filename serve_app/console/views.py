"""What the console's pages show, built from the store, the sessions and the task's context.

Plain data for the templates: every value is escaped when it is drawn (render.py).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fixfleet.models import (
    ALLOWED_FROM,
    EXPLAIN,
    OPEN,
    RERUN,
    Priority,
    Task,
    TaskEvent,
    TaskStatus,
)
from fixfleet.plan_doc import plan_versions, render_plan
from serve_app.console.auth import Viewer
from serve_app.console.transcripts import SessionInfo

MAX_DIFF_LINES = 20_000
MAX_DATA_CHARS = 5_000
EVIDENCE_STEPS = (("red", "RED: the new tests on the base code"), ("green", "GREEN: the new tests with the fix"),
                  ("suite", "The whole suite with the fix"))
S = TaskStatus


@dataclass(frozen=True)
class Action:
    """A command the console offers on a task: shown when the task's state allows it and the
    viewer's token holds its scope; carried out by the one command handler."""

    name: str
    label: str
    applies: Callable[[Task], bool]
    scope: str | None = None  # None: the command's own (fixfleet/commands/definitions.yaml)


ACTIONS: tuple[Action, ...] = (
    Action("approve", "Approve", lambda t: t.status == S.AWAITING_APPROVAL and t.plan is not None),
    Action("revise", "Ask for a revision", lambda t: t.status == S.AWAITING_APPROVAL),
    Action("reject", "Reject", lambda t: t.status == S.AWAITING_APPROVAL),
    Action("resume", "Resume", lambda t: t.status == S.PAUSED),
    Action("retry", "Retry", lambda t: t.status == S.FAILED),
    Action("rerun-tests", "Run the tests again", lambda t: bool(t.branch) and t.status in RERUN.states),
    Action("explain", "Ask the planner", lambda t: t.plan is not None and t.status in EXPLAIN.states, scope="submit"),
    Action("priority", "Set priority", lambda t: t.status in OPEN),
    Action("assign", "Assign", lambda _: True),
    Action("pause", "Pause", lambda t: t.status in ALLOWED_FROM[S.PAUSED]),
    Action("cancel", "Cancel", lambda t: t.status in ALLOWED_FROM[S.CANCELLED]),
)
BY_NAME = {action.name: action for action in ACTIONS}


def scope_of(action: Action, scopes: dict[str, str]) -> str:
    return action.scope or scopes[action.name]


def offered(task: Task, viewer: Viewer, scopes: dict[str, str]) -> list[Action]:
    """The actions this viewer may take on this task now (the handler checks again when one is sent)."""
    return [a for a in ACTIONS if a.applies(task) and viewer.may(scope_of(a, scopes))]


@dataclass
class DiffLine:
    kind: str  # add, del, hunk, file, context
    text: str


def diff_lines(text: str | None) -> list[DiffLine]:
    lines = []
    for line in (text or "").splitlines()[:MAX_DIFF_LINES]:
        if line.startswith(("+++", "---", "diff --git", "index ")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "context"
        lines.append(DiffLine(kind, line))
    return lines


@dataclass
class PlanView:
    version: int
    document: str  # PLAN.md as the platform wrote it (Markdown)
    posted_at: Any
    posted_by: str
    changes: list[DiffLine] = field(default_factory=list)  # from the version before


def plans(task: Task, events: list[TaskEvent]) -> list[PlanView]:
    """Every plan version, newest first, each with what changed from the one before."""
    posted = plan_versions(events)
    if task.plan is not None and not any(p.version == task.plan_version for p in posted):
        views = [PlanView(task.plan_version, render_plan(task, task.plan, task.plan_version), task.updated_at, "")]
    else:
        views = []
    previous: str | None = None
    for version in posted:
        document = render_plan(task, version.plan, version.version, setup=version.setup)
        changes = [] if previous is None else diff_lines("\n".join(difflib.unified_diff(
            previous.splitlines(), document.splitlines(), "before", "after", lineterm="", n=1)))
        views.append(PlanView(version.version, document, version.posted_at, version.posted_by, changes))
        previous = document
    return sorted(views, key=lambda v: v.version, reverse=True)


def evidence_of(task: Task) -> dict[str, Any] | None:
    found = task.context.get("evidence") or (task.context.get("pushing") or {}).get("evidence")
    return found if isinstance(found, dict) else None


@dataclass
class EventView:
    event: TaskEvent
    details: str  # the row's data as JSON, cut short


def timeline(events: list[TaskEvent]) -> list[EventView]:
    views = []
    for event in reversed(events):
        details = json.dumps(event.data, indent=2, ensure_ascii=False, default=str) if event.data else ""
        if len(details) > MAX_DATA_CHARS:
            details = details[:MAX_DATA_CHARS] + f"\n... ({len(details) - MAX_DATA_CHARS} more characters)"
        views.append(EventView(event, details))
    return views


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def task_fingerprint(task: Task, events: list[TaskEvent], sessions: list[SessionInfo]) -> str:
    """Changes when anything the task page shows changes."""
    return fingerprint(task.version, task.updated_at.isoformat(), task.cost_usd, task.tokens, task.owner,
                       task.priority, len(events), events[-1].id if events else 0,
                       [(s.id, s.running) for s in sessions])


def actions_fingerprint(task: Task, viewer: Viewer) -> str:
    """Changes when the actions offered change (their forms are then drawn again)."""
    return fingerprint(task.status, task.version, task.plan_version, task.priority, task.branch,
                       sorted(viewer.scopes))


PRIORITIES = [p.value for p in Priority]
