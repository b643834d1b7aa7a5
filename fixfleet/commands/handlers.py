"""What each command does: ONE handler per command, for every channel (a GitHub comment, Slack,
the task API, the CLI). A channel finds the task and says who asks (a `Principal`); the handler
checks the command's scope (definitions.yaml) with the one permission rule (fixfleet/approvals.py),
then makes its change as one guarded store operation with its audit row, and answers in words.

Refusals raise: `Refused` (403 on the API), `TaskNotFound` (404), `IllegalTransition`,
`StaleVersion`, `Refusal` (409), `NeedsTask` (422); chat channels turn them into a polite line.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from fixfleet.approvals import Approvals, Decision, Principal, Refused, Scope
from fixfleet.commands.loader import default_commands
from fixfleet.commands.parser import help_text
from fixfleet.forge_refs import PULL_KEY
from fixfleet.integrations.slack import PLAN_MESSAGE
from fixfleet.models import (
    EXPLAIN,
    OPEN,
    QUESTION_ASKED,
    RERUN,
    Priority,
    Task,
    TaskStatus,
)
from fixfleet.plan_doc import plan_versions, proven
from fixfleet.sessions import (
    SessionRecord,
    SessionStatus,
    describe_message,
    describe_session,
)
from fixfleet.store import Store

QUEUE_SHOWN = 50
SESSIONS_SHOWN = 10  # in a chat answer: the latest ones
WAITING_OR_RUNNING = [s for s in TaskStatus if s in OPEN]


class NeedsTask(ValueError):
    """The command acts on one task, and none was named or implied."""


@dataclass(frozen=True)
class CommandResult:
    text: str  # the answer, in Markdown (GitHub, Slack and the CLI show it)
    task: Task | None = None  # the task after the command (changed or not)


class OwnerNotice(Protocol):
    """Tells a new owner where their task lives (a GitHub mention on its thread)."""

    async def owner_assigned(self, task: Task, owner: str, by: Principal) -> str | None: ...


@dataclass(frozen=True)
class Invocation:
    principal: Principal
    task: Task
    args: dict[str, Any]
    seen_at: datetime | None  # when the person wrote the command (a GitHub comment's time)


DecisionHook = Callable[[Task], Awaitable[None]]
TOLD = frozenset({TaskStatus.APPROVED, TaskStatus.REVISING, TaskStatus.REJECTED, TaskStatus.CANCELLED})


class Commands:
    """The one handler of every command (`run`): every channel calls it, whatever it came from."""

    def __init__(self, store: Store, approvals: Approvals, *, notice: OwnerNotice | None = None,
                 on_decision: DecisionHook | None = None) -> None:
        """`on_decision`: told of a task a command approved, sent back, rejected or cancelled
        (fixfleet/loops.py: the chat's buttons replaced by the decision, a closed task's draft pull
        request closed; its sweep finishes that when this call is lost)."""
        self.store, self.approvals, self.notice, self.on_decision = store, approvals, notice, on_decision
        self.specs = default_commands()

    async def run(self, principal: Principal, name: str, *, task_ref: str | int | None = None,
                  args: dict[str, Any] | None = None, seen_at: datetime | None = None) -> CommandResult:
        """Run the command `name` (canonical) for `principal` on the task `task_ref` names."""
        spec = self.specs.get(name)
        if spec is None:
            raise ValueError(f"unknown command {name!r}")
        args = args or {}
        if spec.name == "help":
            return CommandResult(help_text(args.get("command") or None))
        if spec.name == "queue":
            await self.approvals.authorize(principal, None, Scope.READ)
            return CommandResult(await self._queue(principal))
        if task_ref is None:
            raise NeedsTask(f"name the task `{spec.name}` is for, e.g. `{spec.name} FF-12`")
        task = await self.store.get_task(task_ref)
        call = Invocation(principal, task, args, seen_at)
        if spec.name in DECISIONS:  # the decision checks (and audits) its own permission
            result = await DECISIONS[spec.name](self, call)
        else:
            await self._authorize(call, spec.scope, spec.name)
            result = await HANDLERS[spec.name](self, call)
        decided = result.task is not None and result.task.status in TOLD and task.status != result.task.status
        if decided and self.on_decision is not None:
            await self.on_decision(result.task)
        return result

    async def _authorize(self, call: Invocation, scope: Scope, name: str) -> None:
        try:
            await self.approvals.authorize(call.principal, call.task, scope)
        except Refused as refusal:
            if scope != Scope.READ:  # a refused change is part of the task's story; a refused look is not
                await self.store.record_event(call.task.id, actor=call.principal.actor,
                                              reason=f"{name} refused: {refusal}", data={"command": name})
            raise

    # --- decisions on a plan ----------------------------------------------------------------

    async def _decide(self, call: Invocation, decision: Decision) -> CommandResult:
        args = call.args
        feedback = str(args.get("feedback") or args.get("reason") or "")
        task = await self.approvals.decide(call.principal, call.task.id, decision, plan_version=args.get("plan_version"),
                                           seen_at=call.seen_at, feedback=feedback)
        return CommandResult(f"{task.key} is now {task.status} ({decision}d by {call.principal.name}).", task)

    async def _approve(self, call: Invocation) -> CommandResult:
        return await self._decide(call, Decision.APPROVE)

    async def _reject(self, call: Invocation) -> CommandResult:
        return await self._decide(call, Decision.REJECT)

    async def _revise(self, call: Invocation) -> CommandResult:
        return await self._decide(call, Decision.REVISE)

    # --- steering -----------------------------------------------------------------------------

    async def _retry(self, call: Invocation) -> CommandResult:
        task = await self.store.retry(call.task.id, actor=call.principal.actor,
                                      reason=f"retry requested by {call.principal.name}")
        step = "execution of the approved plan" if task.status == TaskStatus.APPROVED else "planning"
        return CommandResult(f"{task.key} is queued again for {step} (from what is on `{task.branch or 'its base'}`).",
                             task)

    async def _rerun_tests(self, call: Invocation) -> CommandResult:
        if not call.task.branch or call.task.status not in RERUN.states:
            raise Refused(f"{call.task.key} is {call.task.status} and has no pushed branch to test yet")
        task = await self.store.change(call.task.id, actor=call.principal.actor, reason="rerun-tests requested",
                                       allowed=RERUN.states, changes={}, side_job=RERUN)
        return CommandResult(f"{task.key}: the test suite will run again on `{task.branch}`; "
                             "the result is posted on the task when it is done.", task)

    async def _cancel(self, call: Invocation) -> CommandResult:
        reason = str(call.args.get("reason") or "") or f"cancelled by {call.principal.name}"
        task = await self.store.transition(call.task.id, TaskStatus.CANCELLED, actor=call.principal.actor, reason=reason)
        running = " Its agent is stopped; nothing more is pushed." if call.task.status in RUNNING else ""
        return CommandResult(f"{task.key} is CANCELLED.{running}", task)

    async def _pause(self, call: Invocation) -> CommandResult:
        reason = str(call.args.get("reason") or "") or f"paused by {call.principal.name}"
        task = await self.store.transition(call.task.id, TaskStatus.PAUSED, actor=call.principal.actor, reason=reason)
        running = " Its agent is stopped;" if call.task.status in RUNNING else ""
        return CommandResult(f"{task.key} is PAUSED (was {call.task.status}).{running} "
                             f"`resume {task.key}` continues it.", task)

    async def _resume(self, call: Invocation) -> CommandResult:
        task = await self.store.resume(call.task.id, actor=call.principal.actor,
                                       reason=f"resumed by {call.principal.name}")
        return CommandResult(f"{task.key} is {task.status} again.", task)

    async def _priority(self, call: Invocation) -> CommandResult:
        level = Priority(call.args["level"])
        before = call.task.priority
        task = await self.store.change(call.task.id, actor=call.principal.actor, reason=f"priority {before} -> {level}",
                                       allowed=OPEN, changes={"priority": level.value},
                                       data={"from": before, "to": level}, requeue=True)
        where = " and re-queued" if task.status in WAITING else ""
        return CommandResult(f"{task.key} is now {level} priority (was {before}){where}.", task)

    async def _assign(self, call: Invocation) -> CommandResult:
        owner = owner_name(str(call.args["user"]), call.principal)
        task = await self.store.change(call.task.id, actor=call.principal.actor, reason=f"assigned to {owner}",
                                       allowed=set(TaskStatus), changes={"owner": owner},
                                       data={"owner": owner, "was": call.task.owner})
        told = await self.notice.owner_assigned(task, owner, call.principal) if self.notice else None
        where = task.pr_url or (f"branch `{task.branch}` of {task.repo}" if task.branch else task.repo)
        return CommandResult(f"{display_owner(owner)} now owns {task.key} ({task.status}); it lives at {where}."
                             + (f" {told}" if told else ""), task)

    # --- looking --------------------------------------------------------------------------------

    async def _status(self, call: Invocation) -> CommandResult:
        task = call.task
        events = await self.store.events(task.id)
        last = events[-1] if events else None
        lines = [f"**{task.key}** {task.status}: {task.title}",
                 f"priority {task.priority}, owner {display_owner(task.owner) if task.owner else 'nobody'}, "
                 f"plan v{task.plan_version}, {task.attempts} attempt(s)"]
        if task.pr_url or task.branch:
            lines.append(f"at {task.pr_url or '`' + str(task.branch) + '`'}")
        if last:
            lines.append(f"last: {last.reason} ({last.actor}, {last.created_at:%Y-%m-%d %H:%M} UTC)")
        return CommandResult("\n".join(lines), task)

    async def _plan(self, call: Invocation) -> CommandResult:
        task, wanted = call.task, call.args.get("plan_version")
        plan, version = task.plan, task.plan_version
        if wanted is not None and wanted != task.plan_version:
            plan, version = await self._earlier_plan(task, wanted), wanted
        if not plan:
            return CommandResult(f"{task.key} has no plan{f' v{wanted}' if wanted else ''} yet ({task.status}).", task)
        return CommandResult(render_plan(task.key, version, plan), task)

    async def _earlier_plan(self, task: Task, version: int) -> dict[str, Any] | None:
        earlier = {posted.version: posted.plan for posted in plan_versions(await self.store.events(task.id))}
        return earlier.get(version)

    async def _diff(self, call: Invocation) -> CommandResult:
        task = call.task
        diff = task.context.get("diff")
        if not diff:
            step = "the executor has not made a verified change yet" if task.status != TaskStatus.COMPLETED else \
                "no change was recorded"
            return CommandResult(f"{task.key} ({task.status}): {step}; plan v{task.plan_version} is on "
                                 f"`{task.branch or 'no branch yet'}`.", task)
        return CommandResult(f"{task.key} changes (verified, on `{task.branch}`):\n```diff\n{diff}```", task)

    async def _evidence(self, call: Invocation) -> CommandResult:
        task = call.task
        evidence = task.context.get("evidence") or (task.context.get("pushing") or {}).get("evidence")
        rerun = task.context.get("rerun")
        if not evidence and not rerun:
            return CommandResult(f"{task.key} ({task.status}) has no test evidence yet: the executor records it "
                                 "once the new test fails without the fix and passes with it.", task)
        return CommandResult(render_evidence(task.key, evidence, rerun), task)

    async def _explain(self, call: Invocation) -> CommandResult:
        task, question = call.task, str(call.args.get("question") or "").strip()
        if not task.plan:
            return CommandResult(f"{task.key} has no plan yet ({task.status}): nothing to explain.", task)
        lines = [render_plan(task.key, task.plan_version, task.plan)]
        if answered := task.context.get("answer"):
            lines.append(render_answer(answered))
        if question:
            task = await self._ask(call, question)
            lines.append(f"\nYour question: _{question}_\nThe planner is reading the code to answer it; the answer "
                         f"is posted {where_answers_go(task)} and shown by `explain {task.key}`.")
        return CommandResult("\n".join(lines), task)

    async def _ask(self, call: Invocation, question: str) -> Task:
        """A question starts a model session on the task's checkout: it takes the submit scope."""
        await self._authorize(call, Scope.SUBMIT, "explain with a question")
        if call.task.status not in EXPLAIN.states:
            raise Refused(f"{call.task.key} is {call.task.status}: its planner no longer answers questions")
        return await self.store.change(call.task.id, actor=call.principal.actor, reason=QUESTION_ASKED,
                                       allowed=EXPLAIN.states, changes={}, data={"question": question},
                                       side_job=EXPLAIN)

    async def _cost(self, call: Invocation) -> CommandResult:
        task = call.task
        sessions = [e for e in await self.store.events(task.id) if "cost_usd" in e.data]
        turns = sum(int(e.data.get("turns") or 0) for e in sessions)
        return CommandResult(f"{task.key} has cost ${task.cost_usd:.4f} ({task.tokens} tokens, {len(sessions)} "
                             f"session(s), {turns} turns) over {task.attempts} attempt(s).", task)

    async def _logs(self, call: Invocation) -> CommandResult:
        """The agents' sessions on the task in a few lines, and where to read their messages."""
        task = call.task
        sessions = await self.store.task_sessions(task.id)
        if not sessions:
            return CommandResult(f"{task.key} has no agent session yet ({task.status}).", task)
        wanted = call.args.get("session")
        if wanted is not None and not 1 <= int(wanted) <= len(sessions):
            return CommandResult(f"{task.key} has {len(sessions)} session(s): name one from 1 to {len(sessions)}.", task)
        number = int(wanted or len(sessions))
        chosen = sessions[number - 1]
        lines = [f"**{task.key}** ({task.status}): {len(sessions)} agent session(s)"]
        shown = range(max(1, len(sessions) - SESSIONS_SHOWN + 1), len(sessions) + 1)
        if number not in shown:
            shown = range(number, number + 1)
        lines += [f"{'**' if n == number else ''}{n}. {describe_session(sessions[n - 1])}{'**' if n == number else ''}"
                  for n in shown]
        if chosen.status == SessionStatus.RUNNING and (last := await self.store.last_messages(chosen.id, 1)):
            lines.append(f"Session {number} is at: `{describe_message(last[0], 100)}`")
        lines.append(self._where_transcripts_are(task, chosen, number))
        return CommandResult("\n".join(lines), task)

    def _where_transcripts_are(self, task: Task, session: SessionRecord, number: int) -> str:
        command = f"`fixfleet logs {task.key} --session {number}`"
        public_url = self.approvals.settings.public_url
        if public_url:
            return (f"Its messages: {public_url.rstrip('/')}/ui/tasks/{task.key}?session={session.id} "
                    f"(or {command}).")
        return f"Its messages: the console (/ui/ on fixfleet's address) or {command}."

    async def _queue(self, principal: Principal) -> str:
        tasks = await self.store.list_tasks(statuses=WAITING_OR_RUNNING, limit=1000)
        if principal.where is not None:  # asked on a forge's thread: only that repository's tasks
            tasks = [t for t in tasks if self._repo_name(t) == principal.where.repo.name]
        tasks.sort(key=lambda t: (t.priority.rank, t.id))
        if not tasks:
            return "No task is waiting or running."
        rows = [f"{t.key:<8} {t.priority:<8} {t.status:<17} {t.title[:60]}" for t in tasks[:QUEUE_SHOWN]]
        more = f"\n... and {len(tasks) - QUEUE_SHOWN} more" if len(tasks) > QUEUE_SHOWN else ""
        return f"{len(tasks)} task(s) waiting or running, by priority:\n```\n" + "\n".join(rows) + f"\n```{more}"

    def _repo_name(self, task: Task) -> str | None:
        repo = self.approvals.forges.for_repo(task.repo).repo_of(task.repo)
        return repo.name if repo else None


Handler = Callable[[Commands, Invocation], Awaitable[CommandResult]]
DECISIONS: dict[str, Handler] = {"approve": Commands._approve, "reject": Commands._reject, "revise": Commands._revise}
HANDLERS: dict[str, Handler] = {
    "retry": Commands._retry, "rerun-tests": Commands._rerun_tests, "cancel": Commands._cancel,
    "pause": Commands._pause, "resume": Commands._resume, "priority": Commands._priority, "assign": Commands._assign,
    "status": Commands._status, "plan": Commands._plan, "diff": Commands._diff, "evidence": Commands._evidence,
    "explain": Commands._explain, "cost": Commands._cost, "logs": Commands._logs,
}
RUNNING = {TaskStatus.PLANNING, TaskStatus.EXECUTING}
WAITING = {TaskStatus.RECEIVED, TaskStatus.REVISING, TaskStatus.APPROVED}


def owner_name(user: str, principal: Principal) -> str:
    """`me` is whoever asks; a GitHub login loses its @."""
    if user.lower() == "me":
        return principal.name if principal.kind == "github" else principal.actor
    return user.lstrip("@")


def display_owner(owner: str) -> str:
    return owner if ":" in owner else f"@{owner}"


def render_plan(key: str, version: int, plan: dict[str, Any]) -> str:
    files = ", ".join(f"`{f}`" if isinstance(f, str) else f"`{f.get('path', f)}`" for f in plan.get("files", [])[:20])
    lines = [f"**{key} plan v{version}**", f"Root cause: {plan.get('root_cause', '?')}"]
    for label, key_ in (("Approach", "approach"), ("Why this fixes it", "rationale"), ("Test", "test_command")):
        if plan.get(key_):
            lines.append(f"{label}: {plan[key_]}")
    if files:
        lines.append(f"Files: {files}")
    lines.append(f"Risk {plan.get('risk', '?')}, confidence {plan.get('confidence', '?')}")
    return "\n".join(lines)


def render_answer(answer: dict[str, Any]) -> str:
    asked = "\n".join(f"> {q}" for q in answer.get("questions") or [])
    return f"\n**The planner's last answer** ({answer.get('at', '?')}):\n{asked}\n\n{answer.get('answer', '')}"


def where_answers_go(task: Task) -> str:
    places = [name for name, present in (("on the pull request", task.external_ids.get(PULL_KEY)),
                                         ("in the Slack thread", task.context.get(PLAN_MESSAGE))) if present]
    return " and ".join(places) or "on the task"


def render_evidence(key: str, evidence: dict[str, Any] | None, rerun: dict[str, Any] | None) -> str:
    lines = [f"**{key} test evidence**"]
    if evidence:
        for step in ("red", "green", "suite"):
            run = evidence.get(step) or {}
            lines.append(f"{step.upper()}: exit {run.get('exit_code', '?')} in {run.get('seconds', '?')} s: "
                         f"`{run.get('command', '')}`")
        for label, found in (("failing without the fix, passing with it (fail_to_pass)", proven(evidence)),
                             ("breaking what passed before (new_failures)", evidence.get("new_failures")),
                             ("failing on the base commit already (preexisting_failures)",
                              evidence.get("preexisting_failures")),
                             ("flaky", evidence.get("flaky"))):
            if found:
                lines.append(f"{label}: {json.dumps(found)}")
        if evidence.get("baseline"):
            lines.append(f"compared with the base run of `{str(evidence['baseline'].get('sha', ''))[:12]}` "
                         f"({evidence['baseline'].get('tests', '?')} tests)")
    if rerun:
        lines.append(f"suite rerun at {rerun.get('at', '?')} on `{str(rerun.get('sha', ''))[:12]}`: "
                     f"exit {rerun.get('exit_code', '?')} in {rerun.get('seconds', '?')} s")
    return "\n".join(lines)
