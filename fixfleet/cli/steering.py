"""`fixfleet approve|reject|revise|cancel|pause|resume|retry|priority|assign|rerun-tests|plan|diff|
evidence|explain|cost|queue`: the commands of definitions.yaml from a terminal, through the
same handlers as GitHub, Slack and the API (fixfleet/commands/handlers.py). The operator at the
terminal holds every scope; `--as` names them in the audit trail. (`logs` reads the session
records whole: fixfleet/cli/logs.py; in chat it answers with a summary.)"""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import typer

from fixfleet.approvals import Approvals, Principal, Refused
from fixfleet.cli.app import (
    Actor,
    CliError,
    JsonFlag,
    TaskRef,
    app,
    emit,
    out,
    task_json,
    with_services,
)
from fixfleet.commands.handlers import CommandResult, Commands, NeedsTask
from fixfleet.commands.notices import ForgeOwnerNotice
from fixfleet.models import Priority
from fixfleet.providers import connect
from fixfleet.loops import Loops
from fixfleet.redact import Redactor
from fixfleet.services import Services

Reason = Annotated[str, typer.Option(help="Why (kept in the audit trail).")]
Operator = Annotated[str, typer.Option("--as", help="Who is acting (recorded in the audit trail).")]


def run_command(name: str, ref: str | None, actor: str, as_json: bool, **args: Any) -> None:
    """Run one command and print its answer (or, with --json, the task and the answer)."""

    async def run(services: Services) -> CommandResult:
        settings = services.settings
        async with connect(settings, Redactor.from_settings(settings)) as providers:
            try:
                approvals = Approvals(services.store, settings, providers.forges)
                loops = Loops(settings, services.store, providers)
                commands = Commands(services.store, approvals, notice=ForgeOwnerNotice(providers.forges),
                                    on_decision=loops.decided)
                return await commands.run(Principal(kind="cli", name=actor or getpass.getuser()), name,
                                          task_ref=ref, args=args)
            except (Refused, NeedsTask) as refusal:
                raise CliError(str(refusal)) from None

    result = with_services(run)
    payload = (task_json(result.task) if result.task else {}) | {"reply": result.text}  # scripts read the task's fields
    emit(as_json, payload, lambda: out.print(result.text, highlight=False, markup=False))


@app.command()
def approve(ref: TaskRef, actor: Actor, plan_version: Annotated[
        int | None, typer.Option("--plan-version", help="Refuse if the plan changed since this version.")] = None,
        as_json: JsonFlag = False) -> None:
    """Approve the task's plan: it is queued for execution."""
    run_command("approve", ref, actor, as_json, plan_version=plan_version)


@app.command()
def reject(ref: TaskRef, actor: Actor, reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Reject the task's plan and close the task."""
    run_command("reject", ref, actor, as_json, reason=reason)


@app.command()
def revise(ref: TaskRef, feedback: Annotated[str, typer.Argument(help="What the planner should change.")],
           actor: Operator = "", as_json: JsonFlag = False) -> None:
    """Send the plan back to the planner with your feedback."""
    run_command("revise", ref, actor, as_json, feedback=feedback)


@app.command()
def cancel(ref: TaskRef, actor: Operator = "", reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Stop the task for good; an agent working on it is stopped within seconds and pushes nothing."""
    run_command("cancel", ref, actor, as_json, reason=reason)


@app.command()
def pause(ref: TaskRef, actor: Operator = "", reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Hold the task (an agent working on it is stopped) until `fixfleet resume`."""
    run_command("pause", ref, actor, as_json, reason=reason)


@app.command()
def resume(ref: TaskRef, actor: Operator = "", as_json: JsonFlag = False) -> None:
    """Continue a paused task from what is durable (the pushed plan, the approved plan)."""
    run_command("resume", ref, actor, as_json)


@app.command()
def retry(ref: TaskRef, actor: Operator = "", as_json: JsonFlag = False) -> None:
    """Retry a FAILED task: execution again if its plan was approved, else planning from scratch."""
    run_command("retry", ref, actor, as_json)


@app.command()
def priority(ref: TaskRef, level: Annotated[Priority, typer.Argument(help="critical, high, normal or low.")],
             actor: Operator = "", as_json: JsonFlag = False) -> None:
    """Change the task's priority; a waiting task is re-queued at its new place."""
    run_command("priority", ref, actor, as_json, level=level.value)


@app.command()
def assign(ref: TaskRef, user: Annotated[str, typer.Argument(help="A GitHub login (@octocat) or `me`.")],
           actor: Operator = "", as_json: JsonFlag = False) -> None:
    """Make someone the task's owner; they are mentioned on its pull request."""
    run_command("assign", ref, actor, as_json, user=user)


@app.command("rerun-tests")
def rerun_tests(ref: TaskRef, actor: Operator = "", as_json: JsonFlag = False) -> None:
    """Run the test suite again on the task's branch; the result is recorded on the task."""
    run_command("rerun-tests", ref, actor, as_json)


@app.command()
def plan(ref: TaskRef, version: Annotated[int | None, typer.Option("--version", help="An earlier plan version.")] = None,
         as_json: JsonFlag = False) -> None:
    """Show the plan (files, root cause, confidence, test command)."""
    run_command("plan", ref, "", as_json, plan_version=version)


@app.command()
def diff(ref: TaskRef, as_json: JsonFlag = False) -> None:
    """Show the verified change the executor made."""
    run_command("diff", ref, "", as_json)


@app.command()
def evidence(ref: TaskRef, as_json: JsonFlag = False) -> None:
    """Show the test evidence: the new test failing without the fix, passing with it, the suite."""
    run_command("evidence", ref, "", as_json)


@app.command()
def explain(ref: TaskRef, question: Annotated[str, typer.Argument(help="A question about the plan.")] = "",
            as_json: JsonFlag = False) -> None:
    """Explain the root cause and why the plan fixes it."""
    run_command("explain", ref, "", as_json, question=question)


@app.command()
def cost(ref: TaskRef, as_json: JsonFlag = False) -> None:
    """Show what the task has cost so far (model spend, tokens, turns)."""
    run_command("cost", ref, "", as_json)


@app.command()
def queue(as_json: JsonFlag = False) -> None:
    """List the tasks waiting and running, by priority."""
    run_command("queue", None, "", as_json)
