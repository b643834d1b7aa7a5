"""What a backlog would do, before it does it: each item to submit (in priority order, to which
repository), to resume (a task this backlog submitted before), or to skip and why: a duplicate
in the file or of a task fixfleet already has, no repository, filtered out."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from fixfleet.backlog.api import RemoteTask, TaskApi
from fixfleet.backlog.items import BacklogItem
from fixfleet.backlog.tables import as_table
from fixfleet.models import Source

# A filter: keep the item (True), drop it (False), or drop it saying why (a string).
Where = Callable[[BacklogItem], "bool | str"]


class Action(StrEnum):
    SUBMIT = "submit"
    RESUME = "resume"  # submitted through the API before (an interrupted run): followed, not sent again
    SKIP = "skip"


class Entry(BaseModel):
    item: BacklogItem
    action: Action
    reason: str = ""
    task: str | None = None  # the existing task, for RESUME and duplicates

    def row(self) -> dict[str, Any]:
        item = self.item
        return {"action": self.action.value, "source": item.source, "id": item.external_id, "title": item.title,
                "repository": item.repository, "priority": item.priority.value, "count": item.count,
                "users": item.users, "task": self.task, "reason": self.reason}


class Plan(BaseModel):
    """Entries to submit or resume first, in priority order; skipped ones after, in file order."""

    entries: list[Entry]

    @property
    def to_run(self) -> list[Entry]:
        return [e for e in self.entries if e.action != Action.SKIP]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if e.action == Action.SKIP]

    def rows(self) -> list[dict[str, Any]]:
        return [e.row() for e in self.entries]

    def table(self) -> Any:
        """A pandas DataFrame when pandas is installed, else the list of rows."""
        return as_table(self.rows())

    def summary(self) -> str:
        counts = {action: sum(e.action == action for e in self.entries) for action in Action}
        return (f"{counts[Action.SUBMIT]} to submit, {counts[Action.RESUME]} to resume, "
                f"{counts[Action.SKIP]} skipped")


async def preview(items: list[BacklogItem], api: TaskApi | None = None, *, where: Where | None = None,
                  include_resolved: bool = False) -> Plan:
    """Plan `items`. With `api`, items fixfleet already has a task for are skipped (or resumed,
    when that task came through the API: an earlier run of a backlog); without, nothing is asked."""
    entries: list[Entry] = []
    kept: list[BacklogItem] = []
    first_line: dict[str, int | None] = {}
    for item in items:
        if (skip := _skip_reason(item, first_line, where, include_resolved)) is not None:
            entries.append(Entry(item=item, action=Action.SKIP, reason=skip))
        else:
            kept.append(item)
        first_line.setdefault(item.ref, item.line)
    existing = await _existing(kept, api) if api is not None else {}
    planned = [_against_tasks(item, existing) for item in kept]
    runnable = sorted((e for e in planned if e.action != Action.SKIP), key=lambda e: e.item.order)  # stable
    return Plan(entries=runnable + _in_file_order([e for e in planned if e.action == Action.SKIP] + entries))


async def recheck(plan: Plan, api: TaskApi) -> Plan:
    """`plan` against the tasks fixfleet has now: one made before an interruption, or long ago, may
    name as new an item that has a task since (a run's, a webhook's)."""
    existing = await _existing([e.item for e in plan.to_run], api)
    fresh = [_against_tasks(e.item, existing) for e in plan.to_run]
    return Plan(entries=[e for e in fresh if e.action != Action.SKIP]
                + _in_file_order([e for e in fresh if e.action == Action.SKIP] + plan.skipped))


def _in_file_order(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: e.item.line if e.item.line is not None else float("inf"))


def _skip_reason(item: BacklogItem, first_line: dict[str, int | None], where: Where | None,
                 include_resolved: bool) -> str | None:
    if item.ref in first_line:
        where_first = f"line {first_line[item.ref]}" if first_line[item.ref] else "earlier"
        return f"duplicate: {item.ref} is already in this backlog ({where_first})"
    if item.resolved and not include_resolved:
        return f"filtered out: {item.status or 'resolved'} in {item.source.capitalize()}"
    if where is not None and (verdict := where(item)) is not True:
        return f"filtered out: {verdict}" if isinstance(verdict, str) and verdict else "filtered out"
    if item.repository is None:
        setting = "FIXFLEET_SENTRY_PROJECT_REPOS" if item.source == "sentry" else "FIXFLEET_JIRA_PROJECT_REPOS"
        return (f"no repository: {item.source} project {item.project or '?'} maps to none "
                f"(pass repos={{...}} or set {setting})")
    return None


async def _existing(items: list[BacklogItem], api: TaskApi) -> dict[tuple[str, str], list[RemoteTask]]:
    wanted = sorted({pair for item in items for pair in item.external_ids.items()})
    found: dict[tuple[str, str], list[RemoteTask]] = {}
    for task in await api.find(wanted):
        for pair in task.external_ids.items():
            found.setdefault(pair, []).append(task)
    return found


def _against_tasks(item: BacklogItem, existing: dict[tuple[str, str], list[RemoteTask]]) -> Entry:
    tasks = {t.id: t for pair in item.external_ids.items() for t in existing.get(pair, [])}
    if not tasks:
        return Entry(item=item, action=Action.SUBMIT)
    own = [t for t in tasks.values()
           if t.source == Source.API and t.external_ids.get(item.external_key) == item.external_id]
    if own:  # a run of this backlog made it (or someone submitted it through the API): follow that one
        task = max(own, key=lambda t: t.id)
        return Entry(item=item, action=Action.RESUME, task=task.key,
                     reason=f"submitted before as {task.key} ({task.status}): followed, not submitted again")
    task = max(tasks.values(), key=lambda t: t.id)
    carried = ", ".join(f"{k} {v}" for k, v in task.external_ids.items() if (k, v) in item.external_ids.items())
    return Entry(item=item, action=Action.SKIP, task=task.key,
                 reason=f"duplicate: {task.key} ({task.source}, {task.status}) already has {carried}")
