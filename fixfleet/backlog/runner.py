"""Submit a planned backlog to a running fixfleet and follow it to the end.

In priority order, never more than `max_in_flight` of this backlog's tasks unfinished at once,
and within a budget: a task is submitted only while what is spent (the cost of every task of
this backlog so far) plus what is committed (unfinished tasks x the per-task budget, by default
FIXFLEET_MAX_BUDGET_USD, which an agent may not exceed) plus its own per-task budget stays within
`budget_usd`. When a finished task leaves room, submitting goes on; when nothing is running and
there is no room, the run stops and says so (`RunResult.budget_exhausted`, `message`).

Interrupt it at any point and run it again (with the same plan or a new preview): the plan is
checked against fixfleet's tasks first, so an item submitted before is found and followed, not
sent again; a submission whose answer was lost asks again with the same Idempotency-Key, which
gets the same task back.

With `approve_above`, plans whose confidence is at or above it are approved by this run's token
(it must have the approve scope, checked before anything is submitted); the approval's audit row
says "bulk approval: confidence 0.93 ≥ 0.90" with actor `api:<token name>`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fixfleet.backlog.api import ApiError, RemoteTask, TaskApi
from fixfleet.backlog.preview import Action, Entry, Plan, recheck
from fixfleet.backlog.results import BULK_NOTE, TaskResult, merge_summary, result_of
from fixfleet.backlog.tables import as_table
from fixfleet.config import Settings, load_settings
from fixfleet.models import TaskStatus


class ScopeError(PermissionError):
    """The token may not do what the run needs; raised before anything is submitted."""


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option must not be silently ignored

    budget_usd: float | None = Field(None, gt=0, description="total for this backlog; None: no limit")
    max_in_flight: int = Field(4, ge=1, description="this backlog's unfinished tasks at most at once")
    per_task_usd: float | None = Field(None, gt=0,
                                       description="committed per unfinished task; None: FIXFLEET_MAX_BUDGET_USD")
    approve_above: float | None = Field(None, ge=0, le=1, description="approve plans this confident; None: never")
    poll_s: float = Field(5.0, gt=0, description="how often unfinished tasks are looked at")
    follow: bool = Field(True, description="wait until every task ends (else return once all are submitted)")
    timeout_s: float | None = Field(None, gt=0, description="stop following after this long; a re-run resumes")


class Progress(BaseModel):
    to_run: int  # items to submit or resume
    submitted: int = 0
    resumed: int = 0
    ended: int = 0
    in_flight: int = 0
    spent_usd: float = 0.0
    committed_usd: float = 0.0


class RunEvent(BaseModel):
    """What just happened, for progress displays: submitted, resumed, refused, approved,
    approval_refused, waiting (a plan needs a human), ended, budget."""

    kind: str
    ref: str | None = None
    task: str | None = None
    message: str
    progress: Progress


class Tracked(BaseModel):
    entry: Entry
    task: RemoteTask
    created: bool
    seen_versions: set[int] = Field(default_factory=set)  # plans already judged for approval
    approval_refused: str | None = None


class RunResult(BaseModel):
    results: list[TaskResult]
    entries: list[Entry]  # the plan, for the table's order and the skipped
    outcomes: dict[str, str]  # item ref -> submitted (made by this run) or resumed (an earlier run's task)
    not_submitted: dict[str, str]  # item ref -> why (budget, timeout, refused by fixfleet)
    budget_exhausted: bool
    timed_out: bool
    spent_usd: float
    committed_usd: float
    message: str

    def rows(self) -> list[dict[str, Any]]:
        by_ref = {f"{r.source}:{r.external_id}": r for r in self.results}
        rows = []
        for entry in self.entries:
            item = entry.item
            base = {"outcome": "", "source": item.source, "id": item.external_id, "title": item.title,
                    "priority": item.priority.value, "reason": entry.reason}
            if entry.action != Action.SKIP and (result := by_ref.get(item.ref)) is not None:
                done = {"outcome": self.outcomes[item.ref]} | result.row() | {"reason": result.failure or ""}
                rows.append(base | done)
            elif item.ref in self.not_submitted:
                rows.append(base | {"outcome": "not submitted", "repository": item.repository,
                                    "reason": self.not_submitted[item.ref]})
            else:
                rows.append(base | {"outcome": "skipped", "task": entry.task, "repository": item.repository})
        return rows

    def table(self) -> Any:
        """A pandas DataFrame when pandas is installed, else the list of rows."""
        return as_table(self.rows())


async def submit(plan: Plan, api: TaskApi, *, settings: Settings | None = None,
                 on_event: Callable[[RunEvent], None] | None = None, **options: Any) -> RunResult:
    """Run `plan` (see the module's docstring); `options` are RunOptions' fields."""
    opts = RunOptions(**options)
    per_task = opts.per_task_usd or (settings if settings is not None else load_settings()).max_budget_usd
    await check_token(api, opts)
    return await BacklogRun(await recheck(plan, api), api, opts, per_task, on_event).execute()


async def check_token(api: TaskApi, opts: RunOptions) -> None:
    """Refuse up front, before anything is submitted, a token that lacks a scope the run needs."""
    try:
        name, scopes = await api.whoami()
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise ApiError(404, f"{api.url} has no /whoami: it predates batch backlogs; upgrade it") from None
    needed = ["read", "submit"] + (["approve"] if opts.approve_above is not None else [])
    missing = [scope for scope in needed if scope not in scopes]
    if missing:
        why = " (approve_above approves plans)" if "approve" in missing else ""
        raise ScopeError(f"the token {name!r} lacks the {' and '.join(missing)} scope{'s' if len(missing) > 1 else ''}"
                         f"{why}; it has {', '.join(scopes) or 'none'}: nothing was submitted")


class BacklogRun:
    def __init__(self, plan: Plan, api: TaskApi, opts: RunOptions, per_task_usd: float,
                 on_event: Callable[[RunEvent], None] | None) -> None:
        self.plan, self.api, self.opts, self.per_task = plan, api, opts, per_task_usd
        self.on_event = on_event
        self.pending = deque(e for e in plan.to_run if e.action == Action.SUBMIT)
        self.tracked: dict[str, Tracked] = {}
        self.refused: dict[str, str] = {}
        self.budget_blocked = self.timed_out = False

    async def execute(self) -> RunResult:
        for entry in (e for e in self.plan.to_run if e.action == Action.RESUME):
            self._track(entry, await self.api.get(entry.task or ""), created=False)
        deadline = time.monotonic() + self.opts.timeout_s if self.opts.timeout_s else None
        while True:
            await self._refresh()
            await self._approve_confident()
            await self._fill()
            if not self.pending and (not self.opts.follow or not self._in_flight()):
                break
            if self.budget_blocked and not self._in_flight():
                break  # nothing running can free budget: stop and say so
            if deadline is not None and time.monotonic() >= deadline:
                self.timed_out = True
                break
            await asyncio.sleep(self.opts.poll_s)
        return await self._result()

    # --- one cycle ------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        running = [t for t in self.tracked.values() if not t.task.ended]
        latest = await asyncio.gather(*(self.api.get(t.task.key) for t in running))
        for tracked, task in zip(running, latest, strict=True):
            tracked.task = task
            if task.ended:
                self._emit("ended", tracked.entry, task, f"{task.key} {task.status} (${task.cost_usd:.2f})")

    async def _approve_confident(self) -> None:
        for tracked in self.tracked.values():
            task = tracked.task
            if task.status != TaskStatus.AWAITING_APPROVAL or task.plan_version in tracked.seen_versions:
                continue
            tracked.seen_versions.add(task.plan_version)
            confidence = _confidence(task.plan)
            threshold = self.opts.approve_above
            if threshold is None or confidence is None or confidence < threshold:
                shown = "no confidence" if confidence is None else f"confidence {confidence:.2f}"
                self._emit("waiting", tracked.entry, task, f"{task.key} plan v{task.plan_version} ({shown}) waits "
                                                          "for a human's approval")
                continue
            await self._approve(tracked, confidence, threshold)

    async def _approve(self, tracked: Tracked, confidence: float, threshold: float) -> None:
        task = tracked.task
        note = f"{BULK_NOTE}: confidence {confidence:.2f} ≥ {threshold:.2f}"
        try:
            tracked.task = await self.api.approve(task.key, task.plan_version, note)
        except ApiError as exc:
            if exc.status not in (403, 409):  # refused (e.g. independent approval) or the plan moved on
                raise
            tracked.approval_refused = exc.detail
            self._emit("approval_refused", tracked.entry, task, f"{task.key}: not approved: {exc.detail}")
            return
        self._emit("approved", tracked.entry, tracked.task, f"{task.key} approved: {note}")

    async def _fill(self) -> None:
        self.budget_blocked = False
        while self.pending and self._in_flight() < self.opts.max_in_flight:
            if self.opts.budget_usd is not None and \
                    self._spent() + self._committed() + self.per_task > self.opts.budget_usd + 1e-9:
                self.budget_blocked = True
                return
            await self._submit(self.pending.popleft())

    async def _submit(self, entry: Entry) -> None:
        try:
            task, created = await self.api.submit(entry.item)
        except ApiError as exc:
            if exc.status is None or exc.status in (401, 403) or exc.status >= 500:
                raise  # the platform or the token is the problem: every other item would fail too
            self.refused[entry.item.ref] = f"refused by fixfleet: {exc.detail}"
            self._emit("refused", entry, None, f"{entry.item.ref} refused: {exc.detail}")
            return
        self._track(entry, task, created=created)

    # --- bookkeeping ----------------------------------------------------------------------------

    def _track(self, entry: Entry, task: RemoteTask, *, created: bool) -> None:
        self.tracked[task.key] = Tracked(entry=entry, task=task, created=created)
        verb = "submitted" if created else "resumed"
        self._emit(verb, entry, task, f"{entry.item.ref} {verb} as {task.key} ({task.status})")

    def _in_flight(self) -> int:
        return sum(not t.task.ended for t in self.tracked.values())

    def _spent(self) -> float:
        return sum(t.task.cost_usd for t in self.tracked.values())

    def _committed(self) -> float:
        return self._in_flight() * self.per_task

    def progress(self) -> Progress:
        tracked = self.tracked.values()
        return Progress(to_run=len(self.plan.to_run), submitted=sum(t.created for t in tracked),
                        resumed=sum(not t.created for t in tracked), ended=sum(t.task.ended for t in tracked),
                        in_flight=self._in_flight(), spent_usd=round(self._spent(), 6),
                        committed_usd=round(self._committed(), 6))

    def _emit(self, kind: str, entry: Entry | None, task: RemoteTask | None, message: str) -> None:
        if self.on_event is not None:
            self.on_event(RunEvent(kind=kind, ref=entry.item.ref if entry else None, task=task.key if task else None,
                                   message=message, progress=self.progress()))

    async def _result(self) -> RunResult:
        now = datetime.now(timezone.utc)
        tracked = list(self.tracked.values())
        histories = await asyncio.gather(*(self.api.events(t.task.key) for t in tracked))
        results = [result_of(t.entry.item, t.task, events, now) for t, events in zip(tracked, histories, strict=True)]
        left = "the budget" if self.budget_blocked else "the timeout" if self.timed_out else "not submitted"
        not_submitted = {e.item.ref: f"not submitted: {left}" for e in self.pending} | self.refused
        exhausted = self.budget_blocked and bool(self.pending)
        if exhausted:
            self._emit("budget", None, None, self._budget_message())
        outcomes = {t.entry.item.ref: "submitted" if t.created else "resumed" for t in tracked}
        return RunResult(results=results, entries=self.plan.entries, outcomes=outcomes, not_submitted=not_submitted,
                         budget_exhausted=exhausted, timed_out=self.timed_out, spent_usd=round(self._spent(), 6),
                         committed_usd=round(self._committed(), 6), message=self._message(results, exhausted))

    def _budget_message(self) -> str:
        return (f"budget ${self.opts.budget_usd:.2f} reached: spent ${self._spent():.2f} + committed "
                f"${self._committed():.2f} leaves no room for another task at ${self.per_task:.2f}; "
                f"{len(self.pending)} item(s) not submitted (raise the budget and run again to continue)")

    def _message(self, results: list[TaskResult], exhausted: bool) -> str:
        progress = self.progress()
        statuses: dict[str, int] = {}
        for result in results:
            statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
        parts = [f"{progress.submitted} submitted, {progress.resumed} resumed, {len(self.plan.skipped)} skipped"]
        parts += [f"{len(self.refused)} refused by fixfleet"] if self.refused else []
        parts += [", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))] if statuses else []
        parts += [merged] if (merged := merge_summary(results)) else []
        parts.append(f"spent ${progress.spent_usd:.2f}")
        message = "; ".join(parts)
        if exhausted:
            message += ". " + self._budget_message()
        if self.timed_out:
            message += (f". Stopped following after {self.opts.timeout_s:g} s with {progress.in_flight} task(s) "
                        f"unfinished and {len(self.pending)} not submitted: run again to resume")
        return message


def _confidence(plan: dict[str, Any] | None) -> float | None:
    value = (plan or {}).get("confidence")
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
