"""Closing the loops with the systems around a task once people or the forge have decided:

- what became of a COMPLETED task's pull request (merged by whom and when, closed unmerged,
  reopened), from a `pull_request` webhook or the periodic check for installs without webhooks,
  recorded on the task with its audit row;
- a merged fix told: the trackers (Jira moved by its MERGED mapping, Sentry resolved in the
  next release with a comment linking the pull request) and the chat's thread;
- a rejected or cancelled task's draft pull request closed with the reason, its `fixfleet/*`
  branch deleted (FIXFLEET_KEEP_CLOSED_BRANCHES keeps it; on a plain git remote, where the
  branch is the whole publication, git deletes it), the trackers commented and moved, the chat's
  plan message replaced by the decision.

Every step is idempotent and marked done in the task's context only when the forge step went
through, so the sweep (`run`) finishes what a crash or an outage left; an integration that is
down is logged once per kind of failure and never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from fixfleet.config import Settings
from fixfleet.forges.base import ForgeError, PullState
from fixfleet.forge_refs import PULL_KEY
from fixfleet.integrations.tracker import MERGED, quietly
from fixfleet.logs import log_once
from fixfleet.models import ENDED_UNFINISHED, PullOutcome, Task, TaskStatus
from fixfleet.providers import Providers
from fixfleet.store import Store
from fixfleet.workspace.branches import delete_remote_branch
from fixfleet.workspace.git import Git, GitCredentials

log = logging.getLogger(__name__)
ACTOR = "fixfleet:loops"
MERGE_TELL_LOCKS = 0x666978_6d00000000  # + a task id: one advisory lock per task telling its merge
SWEEP_S = 15.0  # how often ended tasks' pull requests and untold merges are looked for
ENDED_WITHIN_S = 7 * 86400.0  # ended tasks older than this are left alone (retention purges them)
CHECKS_PER_SWEEP = 20


class Loops:
    def __init__(self, settings: Settings, store: Store, providers: Providers) -> None:
        self.settings, self.store, self.providers = settings, store, providers
        self.git = Git(GitCredentials(settings.github_token), network_timeout_s=120)  # as the agents push
        self._jobs: set[asyncio.Task[None]] = set()

    # --- what became of the pull request ----------------------------------------------------

    async def pull_changed(self, where: str, state: PullState, *, actor: str = "webhook:github") -> Task | None:
        """A pull request was closed or reopened: record the outcome on its task, found by the pull
        request itself (never by a branch name: anyone can open a PR from a branch called
        `fixfleet/FF-12`); None when it is no task's, the task is not COMPLETED (an audit note
        then) or nothing changed."""
        task = await self.store.find_task(external_key=PULL_KEY, external_id=where, open_only=False)
        if task is None:
            return None
        if task.status != TaskStatus.COMPLETED:
            await self.store.record_event(task.id, actor=actor, reason=f"pull request {where} {state.outcome.value}"
                                          f"{' by ' + state.by if state.by else ''} while the task is {task.status}",
                                          data={"outcome": state.outcome.value, "by": state.by})
            return None
        return await self.store.record_outcome(task.id, state.outcome, by=state.by, at=state.at, actor=actor,
                                               data={"pull": where})

    async def check_outcomes(self, *, limit: int = CHECKS_PER_SWEEP) -> int:
        """Ask the forge about completed tasks' pull requests not checked within
        FIXFLEET_OUTCOME_CHECK_S; returns how many outcomes changed."""
        if not self.settings.outcome_check_s:
            return 0
        changed = 0
        for task in await self.store.outcomes_to_check(older_than_s=self.settings.outcome_check_s, limit=limit):
            forge = self.providers.forges.for_repo(task.repo)
            pull = forge.pull_of(task)
            if pull is None:  # a plain git remote: no pull request to ask about
                await self.store.outcome_checked(task.id, still_open=False)
                continue
            try:
                state = await forge.pull_state(pull)
            except Exception as exc:
                log_once(log, ("outcome-check", forge.kind, type(exc).__name__),
                         "could not ask %s about %s (%s): %s; retried later", forge.kind, pull, task.key, exc)
                await self.store.outcome_checked(task.id, still_open=False)
                continue
            if state.outcome == PullOutcome.OPEN and task.outcome != PullOutcome.CLOSED:
                await self.store.outcome_checked(task.id)  # still open: nothing happened
                continue
            if await self.store.record_outcome(task.id, state.outcome, by=state.by, at=state.at,
                                               actor="fixfleet:outcome-check", data={"pull": str(pull)}):
                changed += 1
            else:
                await self.store.outcome_checked(task.id)
        return changed

    # --- telling the others ------------------------------------------------------------------

    async def tell_merged(self, task: Task) -> None:
        """A merged fix: the trackers moved (MERGED) and marked fixed (Sentry: resolved in the next
        release unless FIXFLEET_SENTRY_RESOLVE_ON_MERGE=false), a reply in the chat's thread. Once:
        the webhook's call and the sweep's may meet, so one holds the task's lock and the other
        finds it told (or busy, and the next sweep looks again)."""
        async with self.store.try_lock(MERGE_TELL_LOCKS + task.id) as mine:
            if not mine:
                return
            current = await self.store.get_task(task.id)
            if current.context.get("merge_told_at"):
                return
            await self._tell_merged(current)

    async def _tell_merged(self, task: Task) -> None:
        link = task.pr_url or str(self.providers.forges.for_repo(task.repo).pull_of(task) or task.branch or "")
        who = f" by {task.outcome_by}" if task.outcome_by else ""
        text = f"{task.key}: the fix was merged{who}: {link}"
        for tracker in self.providers.trackers:
            if issue := tracker.issue_of(task):
                await self._attempt(tracker.key, "move", tracker.move(issue, MERGED))
                if tracker.key != "sentry_issue" or self.settings.sentry_resolve_on_merge:
                    await self._attempt(tracker.key, "fixed", tracker.fixed(issue, text, marker=f"{task.key}-merged"))
        if self.providers.notifier:
            await self._attempt("slack", "reply", self.providers.notifier.task_reply(task, text))
        await self.store.update_fields(task.id, context={"merge_told_at": _now()})

    async def close_ended(self, task: Task) -> bool:
        """A REJECTED or CANCELLED task: its draft pull request closed with the reason and its branch
        deleted (without a pull request, the branch alone), the trackers commented
        (and moved by the state's mapping), the chat's plan message replaced by the decision. True
        when the forge's part is done (or there was none)."""
        if task.status not in ENDED_UNFINISHED or task.context.get("pull_closed_at"):
            return True
        decision = await self._decision(task)
        forge = self.providers.forges.for_repo(task.repo)
        closed = True
        if pull := forge.pull_of(task):
            closed = await self._attempt(forge.kind, "close", forge.close_pull(
                pull, f"{task.key} was {decision}. fixfleet closed this draft pull request"
                + ("." if self.settings.keep_closed_branches else " and deleted its branch."),
                marker=f"{task.key}-closed", delete_branch=not self.settings.keep_closed_branches))
        elif task.branch and not self.settings.keep_closed_branches:
            # No pull request: on a plain git remote the pushed branch was the publication (git
            # deletes it, as git pushed it); on GitHub the task ended between the push of its plan
            # and the opening of its pull request (the API deletes it).
            closed = await self._attempt(forge.kind, "delete-branch", (
                delete_remote_branch(self.git, task.repo, task.branch) if forge.pull_key is None
                else forge.delete_branch(task.repo, task.branch)))
        for tracker in self.providers.trackers:
            if issue := tracker.issue_of(task):
                await self._attempt(tracker.key, "comment", tracker.comment(
                    issue, f"fixfleet: {task.key} was {decision}.", marker=f"{task.key}-{task.status.lower()}"))
                await self._attempt(tracker.key, "move", tracker.move(issue, task.status.value))
        if self.providers.notifier:
            await self._attempt("slack", "update", self.providers.notifier.task_changed(task, f"{task.key} {decision}"))
        if closed:
            await self.store.update_fields(task.id, context={"pull_closed_at": _now()})
        return closed

    async def decided(self, task: Task) -> None:
        """A person decided (the Commands hook; approve, revise, reject, cancel): the chat's plan
        message says so instead of offering its buttons, and an ended task's loops are closed.
        Never fails the command: the sweep finishes an ended task's part."""
        try:
            if task.status in ENDED_UNFINISHED:
                await self.close_ended(task)
            elif task.status in DECISIONS and self.providers.notifier:
                await self._attempt("slack", "update", self.providers.notifier.task_changed(
                    task, f"{task.key} {await self._decision(task)}"))
        except Exception as exc:
            log_once(log, ("decided", type(exc).__name__), "telling %s's decision: %s", task.key, exc)

    async def decided_soon(self, task: Task) -> None:
        """The same, after the caller has answered (the ingress: GitHub and Slack want a quick answer)."""
        job = asyncio.get_running_loop().create_task(self.decided(task))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _decision(self, task: Task) -> str:
        """"rejected by @alice, 14:02: the reason", from the audit row that moved the task."""
        events = [e for e in await self.store.events(task.id) if e.to_status == task.status]
        word = DECISIONS.get(task.status, task.status.lower())
        if not events:
            return word
        last = events[-1]
        reason = f": {last.reason}" if last.reason and last.reason.lower() not in DECISIONS.values() else ""
        return f"{word} by {who(last.actor)}, {last.created_at:%H:%M} UTC{reason}"[:600]

    # --- the sweep ----------------------------------------------------------------------------

    async def sweep(self) -> None:
        """One pass: ended tasks' pull requests closed, outcomes checked, merges told."""
        for task in await self.store.ended_unclosed(PULL_KEY, within_s=ENDED_WITHIN_S):
            await self.close_ended(task)
        await self.check_outcomes()
        for task in await self.store.merged_untold():
            await self.tell_merged(task)

    async def run(self, stop: asyncio.Event, every_s: float = SWEEP_S) -> None:
        """Sweep until stopped; an outage of the store pauses it, never ends it."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception as exc:
                log_once(log, ("sweep", type(exc).__name__), "closing the loops: %s; retrying", exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    @staticmethod
    async def _attempt(service: str, step: str, call: Any) -> bool:
        """One integration step (a ForgeError: the forge has no such thing, a plain git remote)."""
        return await quietly(log, service, step, call, nothing_to_do=(ForgeError,))


DECISIONS = {TaskStatus.APPROVED: "approved", TaskStatus.REVISING: "sent back for revision",
             TaskStatus.REJECTED: "rejected", TaskStatus.CANCELLED: "cancelled"}


def who(actor: str) -> str:
    """An audit row's actor as people know them: `slack:U123` -> <@U123> (Slack shows the name),
    `github:alice` -> @alice, `api:lead` -> lead."""
    kind, _, name = actor.partition(":")
    if not name:
        return actor
    return f"<@{name}>" if kind == "slack" else f"@{name}" if kind == "github" else name


def _now() -> str:
    return datetime.now(UTC).isoformat()
