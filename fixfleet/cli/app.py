"""The `fixfleet` command: submit and steer tasks on the store and queues directly (no Ray needed)."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from fixfleet.config import ConfigError, Settings
from fixfleet.config import load_settings as read_settings
from fixfleet.embedded import EmbeddedError
from fixfleet.models import NewTask, Priority, Source, Task, TaskEvent, TaskStatus
from fixfleet.outbox import OutboxRelay, ReconcileReport, reconcile
from fixfleet.redact import Redactor, redact_logs
from fixfleet.repos import InvalidRepo, validate_repo
from fixfleet.services import Services, ServiceUnavailable, open_services
from fixfleet.store import StoreError
from fixfleet.store.outcomes import duration, outcome_line
from fixfleet.takeover import Liveness
from fixfleet.workspace.sandbox import SandboxUnavailable

app = typer.Typer(help="fixfleet: production errors and tickets in, tested pull requests out.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
TaskRef = Annotated[str, typer.Argument(help="Task key (FF-12) or id.")]
Actor = Annotated[str, typer.Option("--as", help="Who is acting (recorded in the audit trail).")]


class CliError(Exception):
    """A failure to report as one line, without a traceback."""


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        settings = read_settings()
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers calm
    redact_logs(Redactor.from_settings(settings))
    return settings


def with_services(work: Callable[[Services], Awaitable[T]], *, migrate: bool = True) -> T:
    """Run `work` with the store and queues open; every expected failure becomes one line."""

    async def main() -> T:
        async with open_services(load_settings(), migrate=migrate, pool_size=2) as services:
            result = await work(services)
            await OutboxRelay(services.store, services.queues).drain()
            return result

    try:
        return asyncio.run(main())
    except (StoreError, ServiceUnavailable, EmbeddedError, CliError, ValueError) as exc:
        fail(str(exc))
        raise


def emit(as_json: bool, payload: Any, render: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
    else:
        render()


def task_json(task: Task) -> dict[str, Any]:
    return task.model_dump(mode="json")


@app.command()
def submit(
    repo: Annotated[str, typer.Argument(help="Repository URL (https, ssh, file://).")],
    title: Annotated[str, typer.Option("--title", "-t", help="One line: what is wrong.")],
    body: Annotated[str, typer.Option("--body", "-b", help="Details, stack trace, steps.")] = "",
    body_file: Annotated[
        Path | None, typer.Option("--body-file", help="Read the body from this file ('-' for stdin).")
    ] = None,
    priority: Annotated[Priority, typer.Option("--priority", "-p")] = Priority.NORMAL,
    as_json: JsonFlag = False,
) -> None:
    """Create a task; it is queued for planning. Prints its key."""
    if body_file is not None:
        body = _read_body(body_file)
    try:
        repo = validate_repo(repo, load_settings(), any_local_path=True)
        new = NewTask(source=Source.CLI, repo=repo, title=title, body=body, priority=priority,
                      context={"initiator": f"cli:{getpass.getuser()}"})
    except ValidationError as exc:
        fail("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors()))
        raise
    except InvalidRepo as exc:
        fail(str(exc))
        raise
    task = with_services(lambda s: _create(s, new))
    emit(as_json, task_json(task), lambda: out.print(task.key))


def _read_body(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text()
    except OSError as exc:
        fail(f"cannot read --body-file {path}: {exc.strerror}")
        raise


async def _create(services: Services, new: NewTask) -> Task:
    task, _ = await services.store.create_task(new, actor="cli")
    return task


@app.command("tasks")
def list_tasks(
    status: Annotated[list[TaskStatus] | None, typer.Option("--status", "-s", help="Only these states.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """List tasks, newest first."""
    tasks = with_services(lambda s: s.store.list_tasks(statuses=status, limit=limit, offset=offset))

    def render() -> None:
        table = Table("key", "status", "priority", "repo", "title", "updated")
        for t in tasks:
            table.add_row(t.key, t.status, t.priority, t.repo, t.title, f"{t.updated_at:%Y-%m-%d %H:%M:%S}")
        out.print(table if tasks else "no tasks")

    emit(as_json, [task_json(t) for t in tasks], render)


@app.command()
def status(
    ref: Annotated[str | None, typer.Argument(help="Task key (FF-12) or id; none: the whole platform.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """One task and its timeline; without a task, the platform: agents, queues, scaling, last tasks."""
    if ref is None:
        platform_status(as_json)
        return

    async def load(s: Services) -> tuple[Task, list[TaskEvent]]:
        return await s.store.get_task(ref), await s.store.events(ref)

    task, events = with_services(load)

    def render() -> None:
        out.print(f"[bold]{task.key}[/bold] {task.title}\n{task.status} · {task.priority} · {task.repo}")
        if task.branch or task.pr_url:
            out.print(f"branch {task.branch or '-'} · PR {task.pr_url or '-'}")
        if task.outcome:
            took = f" after {duration(task.merge_seconds)}" if task.merge_seconds is not None else ""
            out.print(f"pull request {outcome_line(task.outcome, task.outcome_by)}{took}", highlight=False)
        out.print(f"attempts {task.attempts} · plan v{task.plan_version} · cost ${task.cost_usd:.4f}")
        table = Table("when", "from", "to", "actor", "reason")
        for e in events:
            table.add_row(f"{e.created_at:%Y-%m-%d %H:%M:%S}", e.from_status or "", e.to_status or "", e.actor, e.reason)
        out.print(table)

    emit(as_json, {"task": task_json(task), "events": [e.model_dump(mode="json") for e in events]}, render)


def platform_status(as_json: bool) -> None:
    from fixfleet.overview import gather

    view = with_services(gather)

    def render() -> None:
        pools = Table("pool", "busy", "idle", "draining", "lost", title="agents by role")
        for role, states in sorted(view.pools.items()):
            pools.add_row(role, *(str(states.get(state, 0)) for state in ("busy", "idle", "draining", "lost")))
        out.print(pools if view.pools else "no agent has reported: is `fixfleet up` (or the Serve app) running?")
        agents = Table("agent", "state", "task", "for", "done", "failed", "seen")
        for a in view.agents:
            agents.add_row(a.name, a.state, a.task or "-", _duration(a.busy_for_s), str(a.done), str(a.failed),
                           f"{_duration(a.seen_s_ago)} ago")
        if view.agents:
            out.print(agents)
        queues = Table("queue", "waiting", "running", "delayed", "dead", title="queues")
        for name, d in view.queues.items():
            queues.add_row(name, *(str(d[k]) for k in ("waiting", "pending", "delayed", "dead")))
        out.print(queues)
        decisions = Table("when", "pool", "replicas", "depth", "why", title="last scale decisions")
        for d in view.decisions:
            decisions.add_row(f"{datetime.fromtimestamp(d.at):%H:%M:%S}", d.queue, f"{d.current} -> {d.replicas}",
                              str(d.depth), d.reason)
        out.print(decisions if view.decisions else "no scale decision yet")
        tasks = Table("task", "status", "repo", "title", "updated", title="last tasks")
        for t in view.tasks:
            tasks.add_row(t.key, t.status, t.repo, t.title, t.updated_at[:19].replace("T", " "))
        out.print(tasks if view.tasks else "no tasks")
        out.print(outcomes_line(view.outcomes), highlight=False)

    emit(as_json, view.model_dump(mode="json"), render)


def outcomes_line(figures: dict[str, Any]) -> str:
    """"pull requests of 4 completed tasks: 2 merged, 1 closed unmerged, 1 open · merge rate 67 % · median
    time to merge 1h02m"."""
    if not figures.get("completed"):
        return "pull requests: no completed task yet"
    rate = figures.get("merge_rate")
    median = figures.get("median_merge_s")
    return (f"pull requests of {figures['completed']} completed tasks: {figures['merged']} merged, "
            f"{figures['closed']} closed unmerged, {figures['open']} open · merge rate "
            f"{'-' if rate is None else f'{100 * rate:.0f} %'} · median time to merge "
            f"{'-' if median is None else duration(median)}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@app.command()
def migrate(as_json: JsonFlag = False) -> None:
    """Apply database migrations (also done at every start)."""

    async def run(s: Services) -> dict[str, list[str]]:
        applied = await s.store.migrate()
        return {"applied": applied, "current": await s.store.applied_migrations()}

    result = with_services(run, migrate=False)
    emit(as_json, result, lambda: out.print(f"applied {result['applied'] or 'nothing'}; at {result['current'][-1]}"))


@app.command("reconcile")
def reconcile_queues(as_json: JsonFlag = False) -> None:
    """Put back in its queue every task Postgres says is waiting but Redis lost (after a Redis
    restart, say). Running services do this by themselves every FIXFLEET_RECONCILE_S."""

    async def run(s: Services) -> ReconcileReport:
        # The agents' heartbeats tell which of them are gone (no Serve here to ask).
        liveness = await Liveness.look(s.redis, None, stale_after_s=s.settings.agent_lost_s)
        return await reconcile(s.store, s.queues, claimed_stale_s=s.settings.claimed_stale_s, liveness=liveness)

    report = with_services(run)
    if report.skipped:
        fail("another process is reconciling right now; try again in a moment")

    def render() -> None:
        keys = ", ".join(f"FF-{i}" for i in report.requeued)
        out.print(f"checked {report.checked} queued task(s); " + (f"put back: {keys}" if keys else "none was missing"))

    emit(as_json, {"checked": report.checked, "requeued": report.requeued}, render)


@app.command()
def config(as_json: JsonFlag = False) -> None:
    """Print the effective configuration, secrets masked."""
    shown = load_settings().masked()

    def render() -> None:
        table = Table("setting", "value")
        for name, value in shown.items():
            table.add_row(name, "-" if value is None else str(value))
        out.print(table)

    emit(as_json, shown, render)


@app.command()
def demo(
    live: Annotated[bool, typer.Option("--live", help="Use the real model (ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN).")] = False,
    http_port: Annotated[int, typer.Option(help="Port of the Serve ingress.")] = 8000,
    as_json: JsonFlag = False,
) -> None:
    """Offline walk-through: a Sentry alert about a real bug becomes a tested fix on a branch."""
    from fixfleet.demo import Demo, DemoFailed

    settings = load_settings()
    if live and not (settings.anthropic_api_key or settings.claude_code_oauth_token):
        fail("--live needs ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN")
    if not live:
        settings = settings.model_copy(update={"anthropic_api_key": None, "claude_code_oauth_token": None})
    say = (lambda line: err.print(f"[dim]demo:[/dim] {line}", highlight=False)) if as_json else (lambda line: out.print(f"[cyan]demo:[/cyan] {line}", highlight=False))
    try:
        result = Demo(settings, live=live, http_port=http_port, progress=say).run()
    except (DemoFailed, EmbeddedError, ServiceUnavailable, SandboxUnavailable) as exc:
        fail(str(exc))
        return
    summary = {k: v for k, v in vars(result).items() if k != "root_cause"}
    if as_json:
        print(json.dumps(summary))
        return
    out.print(f"\n[bold green]{result.task} {result.status}[/bold green] in {result.seconds:.0f}s, ${result.cost_usd:.4f}")
    out.print(f"root cause: {result.root_cause}")
    out.print(f"RED exit {result.red_exit_code} · GREEN exit {result.green_exit_code} · suite exit {result.suite_exit_code}")
    out.print(f"branch {result.branch} on {result.remote}:")
    for commit in result.commits:
        out.print(f"  {commit}")


@app.command("backlog")
def backlog_command(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A Sentry or Jira CSV export.")],
    budget: Annotated[float | None, typer.Option(
        "--budget", min=0.01, help="Total USD for this backlog: a task is sent only while spent + committed "
                                   "(unfinished tasks x per-task budget) + its own stays within it.")] = None,
    max_in_flight: Annotated[int, typer.Option(min=1, help="This backlog's unfinished tasks at most at once.")] = 4,
    approve_above: Annotated[float | None, typer.Option(
        min=0, max=1, help="Approve plans whose confidence is at or above this (needs the approve scope); "
                           "default: every plan waits for a human.")] = None,
    per_task_usd: Annotated[float | None, typer.Option(
        min=0.01, help="Committed per unfinished task (default FIXFLEET_MAX_BUDGET_USD).")] = None,
    url: Annotated[str, typer.Option(envvar="FIXFLEET_URL", help="The running fixfleet's address.")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(
        envvar="FIXFLEET_TOKEN", show_default=False,
        help="An API token (scopes read, submit; approve for --approve-above). Prefer FIXFLEET_TOKEN: "
             "a command line is visible to other users.")] = None,
    repo: Annotated[list[str] | None, typer.Option(
        "--repo", help="PROJECT=URL: the repository of a Sentry project or Jira project key (repeatable); "
                       "else FIXFLEET_SENTRY_PROJECT_REPOS / FIXFLEET_JIRA_PROJECT_REPOS.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be submitted, submit nothing.")] = False,
    follow: Annotated[bool, typer.Option(help="Wait until every task ends (else stop once all are sent).")] = True,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between looks at unfinished tasks.")] = 5.0,
    as_json: JsonFlag = False,
) -> None:
    """Submit a backlog (a CSV export) in priority order within a cap and a budget, follow it and print what
    became of each item. Interrupt and run again to resume: nothing is submitted twice."""
    from fixfleet import backlog
    from fixfleet.backlog.console import plan_table, progress_bar, result_table

    if not token:
        fail("give an API token: FIXFLEET_TOKEN=... (or --token)")
    repos = dict(_project_repo(value) for value in repo or [])
    settings = load_settings()
    progress = err if as_json else out

    async def main() -> tuple[backlog.Plan, backlog.RunResult | None]:
        async with backlog.TaskApi(url, token) as api:
            items = backlog.read_csv(file, repos=repos, settings=settings)
            plan = await backlog.preview(items, api)
            progress.print(plan_table(plan))
            if dry_run:
                return plan, None
            with progress_bar(progress, len(plan.to_run)) as on_event:
                return plan, await backlog.submit(plan, api, settings=settings, on_event=on_event, budget_usd=budget,
                                                  max_in_flight=max_in_flight, per_task_usd=per_task_usd,
                                                  approve_above=approve_above, poll_s=poll, follow=follow)

    try:
        plan, result = asyncio.run(main())
    except (backlog.BacklogFormatError, backlog.ScopeError, backlog.ApiError, ValidationError) as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        fail("interrupted: run the same command again to resume (nothing is submitted twice)", code=130)
        return
    if as_json:
        print(json.dumps({"plan": plan.rows(), "results": result.rows() if result else None,
                          "budget_exhausted": bool(result and result.budget_exhausted),
                          "message": result.message if result else plan.summary()}, default=str))
    elif result is not None:
        out.print(result_table(result))
        out.print(result.message, highlight=False)


def _project_repo(value: str) -> tuple[str, str]:
    project, equals, url = value.partition("=")
    if not equals or not project.strip() or not url.strip():
        fail(f"--repo {value!r}: write PROJECT=URL, e.g. --repo backend=https://github.com/acme/api.git")
    return project.strip(), url.strip()


@app.command()
def up(
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting one.")] = None,
    http_port: Annotated[int, typer.Option(help="Port of the Serve ingress.")] = 8000,
    executors: Annotated[int | None, typer.Option(
        min=1, max=64, help="Most executors at once on this machine (default FIXFLEET_EXECUTORS_MAX); the pool "
                            "grows to it with the execution queue.")] = None,
    dashboard: Annotated[bool, typer.Option(help="Start the Ray dashboard (the application, agents, logs).")] = True,
    dashboard_port: Annotated[int, typer.Option(help="Port of the Ray dashboard.")] = 8265,
) -> None:
    """Run the platform: the Serve application (ingress, planner and executor pools, relay). Ctrl-C stops it."""
    from fixfleet.platform import PlatformOptions
    from fixfleet.up import run_up

    settings = load_settings()
    options = PlatformOptions(address=address, http_port=http_port, executors=executors or settings.executors_max,
                              dashboard=dashboard, dashboard_port=dashboard_port)
    try:
        run_up(settings, options, out)
    except (EmbeddedError, ServiceUnavailable, SandboxUnavailable) as exc:
        fail(str(exc))


def main() -> None:
    app()

