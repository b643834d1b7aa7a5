"""The backlog in a terminal: the preview table, a progress bar while tasks run, the final table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fixfleet.backlog.preview import Plan
from fixfleet.backlog.runner import RunEvent, RunResult

SHOWN_EVENTS = {"submitted", "resumed", "refused", "approved", "approval_refused", "waiting", "ended", "budget"}


def _cut(text: str | None, width: int = 48) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


def plan_table(plan: Plan) -> Table:
    table = Table("#", "action", "item", "title", "repository", "priority", "events", "users", "task / reason",
                  title=f"backlog: {plan.summary()}")
    for n, entry in enumerate(plan.entries, 1):
        item = entry.item
        note = " ".join(filter(None, [entry.task if entry.action != "skip" else None, entry.reason]))
        table.add_row(str(n), entry.action.value, item.ref, _cut(item.title), item.repository or "-",
                      item.priority.value, _number(item.count), _number(item.users), _cut(note, 70))
    return table


def result_table(result: RunResult) -> Table:
    table = Table("outcome", "item", "task", "status", "cost", "duration", "queued", "planning", "approval",
                  "executing", "PR / branch", "reason", title="results")
    for row in result.rows():
        timing = [_seconds(row.get(k)) for k in ("duration_s", "queued_s", "planning_s", "waiting_for_approval_s",
                                                  "executing_s")]
        cost = f"${row['cost_usd']:.2f}" if row.get("cost_usd") is not None else "-"
        where = row.get("pr_url") or row.get("branch") or "-"
        table.add_row(row["outcome"], f"{row['source']}:{row['id']}", row.get("task") or "-", row.get("status") or "-",
                      cost, *timing, _cut(where, 40), _cut(row.get("reason"), 60))
    return table


@contextmanager
def progress_bar(console: Console, total: int) -> Iterator[Callable[[RunEvent], None]]:
    """A bar over the tasks to run (advancing as they end) and a line per notable event."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=False)
    task = bar.add_task("starting", total=max(total, 1))

    def on_event(event: RunEvent) -> None:
        p = event.progress
        bar.update(task, completed=p.ended, description=f"{p.submitted + p.resumed} sent · {p.in_flight} running · "
                                                         f"${p.spent_usd:.2f} spent")
        if event.kind in SHOWN_EVENTS:
            bar.console.print(f"[dim]{event.kind}:[/dim] {event.message}", highlight=False)

    with bar:
        yield on_event


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s"
