"""Telling the outside world: the pull request on the task's forge, the trackers' issues (Jira),
the chat (Slack), each through its seam (fixfleet/forges, fixfleet/integrations).

Every step is idempotent (existing PRs and marked comments are updated, not duplicated), so
an agent that takes over a task after a crash does not say anything twice. Only the pull request
itself (opened, its body, ready for review) is the task's path: comments, labels, reviewers, the
trackers and the chat are told through `quietly`, so an outage of any of them is logged once and
never fails the task. Trackers and the
chat are optional: unconfigured means skipped (fixfleet/providers.py says so once in the log).
The forge is GitHub when the repository is on GitHub and a token is set; otherwise a plain git
remote, where the pushed branch is the whole publication and approvals come from Slack, the
API or the CLI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fixfleet.config import Settings
from fixfleet.forges.base import Forge, PullRequest
from fixfleet.forge_refs import ISSUE_KEY, ForgeRef
from fixfleet.integrations.tracker import quietly
from fixfleet.logs import log_once
from fixfleet.models import Task
from fixfleet.plan_doc import SANDBOX_OFF, render_evidence
from fixfleet.providers import Providers, connect
from fixfleet.redact import Redactor
from fixfleet.store import Store

log = logging.getLogger(__name__)
STATE_LABEL = "fixfleet: "  # the PR's label saying where its task is: "fixfleet: awaiting approval", ...


@dataclass(frozen=True)
class PlanPublished:
    """Where the plan was published: the caller records it with the task's next transition."""

    pr_url: str | None = None
    external_ids: dict[str, str] = field(default_factory=dict)  # the pull request's, when one was opened
    context: dict[str, Any] = field(default_factory=dict)  # what finds the chat's plan message again


class Publisher:
    def __init__(self, settings: Settings, store: Store, providers: Providers | None = None) -> None:
        """`providers`: the clients to use (default: built from the settings)."""
        self.settings, self.store = settings, store
        self.providers = providers or connect(settings, Redactor.from_settings(settings))
        self.forges, self.trackers = self.providers.forges, self.providers.trackers
        self.notifier = self.providers.notifier

    async def aclose(self) -> None:
        await self.providers.aclose()

    async def plan_ready(self, task: Task, plan: dict[str, Any], version: int, branch: str) -> PlanPublished:
        """Draft PR with the plan (labelled; a revised plan announced on it), the trackers' analysis
        (one comment kept current per plan version, a link to the PR, the `fixfleet` label), the
        chat's message with Approve / Reject (a revised plan: a reply in its thread too)."""
        summary = f"Plan v{version} for {task.key}: {plan.get('root_cause', '')[:300]}"
        forge = self.forges.for_repo(task.repo)
        pull = await self._draft_pull(forge, task, branch, version, plan)
        pr_url = pull.url if pull else None
        if pull:
            await quietly(log, forge.kind, "labels", forge.add_labels(pull.ref, ["fixfleet", f"priority: {task.priority}"]))
            await self._state_label(forge, pull.ref, "awaiting approval")
            if version > 1:
                await quietly(log, forge.kind, "comment", forge.upsert_comment(
                    pull.ref, f"{task.key}-plan-v{version}", revised_text(task, plan, version)))
        await self._tell_analysis(task, plan, version, pr_url or f"branch `{branch}`", pr_url)
        context = await self._plan_message(task, version, summary, pr_url)
        if self.notifier and version > 1:
            await quietly(log, "slack", "reply", self.notifier.task_reply(
                task.model_copy(update={"context": task.context | context}), revised_text(task, plan, version)))
        external_ids = {forge.pull_key: str(pull.ref)} if pull and forge.pull_key else {}
        return PlanPublished(pr_url, external_ids, context)

    async def _plan_message(self, task: Task, version: int, summary: str, pr_url: str | None) -> dict[str, Any]:
        """The chat's plan message with Approve / Reject; {} when there is no chat or it is down (logged once)."""
        if not self.notifier:
            return {}
        try:
            return await self.notifier.plan_ready(task, version, summary, pr_url)
        except Exception as exc:
            log_once(log, ("slack", "plan", type(exc).__name__), "slack plan message failed: %s: %s",
                     type(exc).__name__, exc)
            return {}

    async def fetch_context(self, task: Task) -> Task:
        """Context before planning, stored with the task (redacted by the store) for the planner's
        prompt: Sentry's latest event for a task without a stack trace, the Jira ticket's text."""
        task = await self._jira_ticket(task)
        return await self._sentry_event(task)

    async def _jira_ticket(self, task: Task) -> Task:
        """A Jira task's ticket: description, comments, components, linked Sentry issues. Jira down:
        planning goes on, and the prompt says so."""
        key = task.external_ids.get("jira")
        if not key or self.providers.jira is None or task.context.get("jira_ticket"):
            return task
        try:
            found: dict[str, Any] = {"jira_ticket": await self.providers.jira.ticket_context(key), "jira_ticket_error": None}
        except Exception as exc:
            log_once(log, ("jira", "ticket", type(exc).__name__), "jira: ticket %s could not be read (%s: %s); planning "
                     "goes on without it", key, type(exc).__name__, exc)
            found = {"jira_ticket_error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return await self.store.update_fields(task.id, context=found)

    async def _sentry_event(self, task: Task) -> Task:
        """A Sentry task without a stack trace (`needs_event_fetch`) gets the issue's latest event.
        Sentry down or not configured: planning goes on, and the prompt says the trace could not be fetched."""
        issue = task.external_ids.get("sentry_issue")
        if not task.context.get("needs_event_fetch") or not issue or "sentry_event" in task.context:
            return task
        sentry = self.providers.sentry
        try:
            if sentry is None:
                raise RuntimeError("Sentry is not configured (SENTRY_AUTH_TOKEN)")
            found: dict[str, Any] = {"sentry_event": await sentry.event_context(issue), "sentry_event_error": None}
            found["frames"] = [f for exc in found["sentry_event"]["exceptions"] for f in exc["frames"]]
        except Exception as exc:
            log_once(log, ("sentry", "event", type(exc).__name__), "sentry: the latest event of issue %s could not be "
                     "fetched (%s: %s); planning goes on without it", issue, type(exc).__name__, exc)
            found = {"sentry_event_error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        await self.store.record_event(task.id, actor="fixfleet:context", reason="Sentry's latest event fetched"
                                      if "sentry_event" in found else "Sentry's latest event could not be fetched",
                                      data={"error": found.get("sentry_event_error")})
        return await self.store.update_fields(task.id, context=found)

    async def _tell_analysis(self, task: Task, plan: dict[str, Any], version: int, where: str, pr_url: str | None) -> None:
        """The trackers' side of a plan: the analysis comment (updated per version), the link, the label."""
        text = analysis_text(task, plan, version, where)
        for tracker in self.trackers:
            if issue := tracker.issue_of(task):
                await quietly(log, tracker.key, "comment", tracker.upsert_comment(issue, text, marker=f"{task.key}-analysis"))
                if pr_url:
                    await quietly(log, tracker.key, "link", tracker.link(issue, pr_url, f"fixfleet {task.key}: {task.title}"))
                await quietly(log, tracker.key, "label", tracker.label(issue, "fixfleet"))
                await quietly(log, tracker.key, "move", tracker.move(issue, "AWAITING_APPROVAL"))

    async def task_started(self, task: Task, step: str) -> None:
        """A step began (PLANNING, EXECUTING): the PR's state label, the trackers moved by their
        mapping; never fatal."""
        forge = self.forges.for_repo(task.repo)
        if step == "EXECUTING" and (pull := forge.pull_of(task)):
            await self._state_label(forge, pull, "fixing")
        for tracker in self.trackers:
            if issue := tracker.issue_of(task):
                await quietly(log, tracker.key, "move", tracker.move(issue, step))

    async def _state_label(self, forge: Forge, pull: ForgeRef, state: str) -> None:
        """The PR's `fixfleet: <state>` label, replacing the one before."""
        await quietly(log, forge.kind, "labels", forge.set_state_label(pull, f"{STATE_LABEL}{state}", prefix=STATE_LABEL))

    async def fix_ready(self, task: Task, evidence: dict[str, Any], commits: list[str], cost_usd: float) -> str | None:
        body = render_evidence(task, evidence, commits=commits, cost_usd=cost_usd)
        forge = self.forges.for_repo(task.repo)
        if pull := forge.pull_of(task):
            await forge.update_pull(pull, body=body, ready=True)
            await self._state_label(forge, pull, "ready for review")
            users, teams = reviewers_of(task, self.settings.github_bot_login)
            await quietly(log, forge.kind, "reviewers", forge.request_reviewers(pull, users, teams))
            await quietly(log, forge.kind, "comment", forge.upsert_comment(
                pull, f"{task.key}-done", f"{task.key}: tests pass; the PR is ready for review."))
        where = task.pr_url or task.branch
        await self._tell_trackers(task, f"fixfleet pushed a tested fix for {task.key}: {where}", f"{task.key}-done",
                                  move_to="COMPLETED")
        await self._chat_update(task, f"{task.key} fixed and tested: {where}")
        return task.pr_url

    async def tests_rerun(self, task: Task, sha: str, verdict: str, run: dict[str, Any]) -> None:
        """The suite's result on the PR (one comment, updated by each rerun) and in the chat."""
        text = (f"{task.key}: the test suite {verdict} on `{sha[:12]}` ({run.get('seconds', '?')} s, "
                f"`{run.get('command', '')}`).\n\n```\n{str(run.get('output_tail', ''))[-3000:]}\n```")
        forge = self.forges.for_repo(task.repo)
        if pull := forge.pull_of(task):
            await quietly(log, forge.kind, "comment", forge.upsert_comment(pull, f"{task.key}-rerun", text))
        await self._chat_update(task, f"{task.key}: the test suite {verdict} on {task.pr_url or task.branch}")

    async def question_answered(self, task: Task, questions: list[str], answer: str, asked_at: str) -> list[str]:
        """The planner's answer, quoting the question(s), where the task is discussed: a PR comment
        and a reply in the task's chat thread (one each per question asked, however often sent).
        Returns where it could not be posted (each failure logged once, as for every step)."""
        quoted = "\n".join(f"> {q}" for q in questions)
        text = f"{task.key}: the planner's answer\n\n{quoted}\n\n{answer}"
        forge = self.forges.for_repo(task.repo)
        missed = []
        if pull := forge.pull_of(task):
            marker = f"{task.key}-answer-{''.join(filter(str.isdigit, asked_at))}"  # one comment per question asked
            if not await quietly(log, forge.kind, "answer", forge.upsert_comment(pull, marker, text)):
                missed.append("the pull request")
        if self.notifier and not await quietly(log, "slack", "answer", self.notifier.task_reply(task, text)):
            missed.append("the chat thread")
        return missed

    async def task_failed(self, task_id: int, reason: str) -> None:
        task = await self.store.get_task(task_id)
        text = f"fixfleet gave up on {task.key}: {reason[:500]}"
        forge = self.forges.for_repo(task.repo)
        if pull := forge.pull_of(task):
            await quietly(log, forge.kind, "comment", forge.upsert_comment(pull, f"{task.key}-failed", text))
            await self._state_label(forge, pull, "failed")
        await self._tell_trackers(task, text, f"{task.key}-failed", move_to="FAILED")
        await self._chat_update(task, text)

    async def _draft_pull(self, forge: Forge, task: Task, branch: str, version: int,
                          plan: dict[str, Any]) -> PullRequest | None:
        """The plan's draft pull request; None on a plain git remote (the pushed branch is the publication)."""
        title = f"fixfleet {task.key}: {task.title}"[:250]
        body = f"Plan v{version}: see `PLAN.md` on this branch.\n\n**Root cause:** {plan.get('root_cause', '')}\n\nApprove with `@agent approve`."
        if fixes := fixes_line(forge, task):
            body = f"{body}\n\n{fixes}"
        if not self.settings.sandbox_enabled:
            body = f"{SANDBOX_OFF}\n\n{body}"
        return await forge.open_pull(task.repo, branch, title, body, draft=True)

    async def _tell_trackers(self, task: Task, text: str, marker: str, *, move_to: str | None = None) -> None:
        for tracker in self.trackers:
            if issue := tracker.issue_of(task):
                await quietly(log, tracker.key, "comment", tracker.comment(issue, text, marker=marker))
                if move_to is not None:
                    await quietly(log, tracker.key, "move", tracker.move(issue, move_to))

    async def _chat_update(self, task: Task, text: str) -> None:
        """The plan message says where the task is now, and its thread tells the stage."""
        if self.notifier:
            await quietly(log, "slack", "update", self.notifier.task_changed(task, text))
            await quietly(log, "slack", "reply", self.notifier.task_reply(task, text))


def fixes_line(forge: Forge, task: Task) -> str | None:
    """"Fixes #7" (GitHub closes the issue on merge) for a task asked for on an issue of the same
    repository ("Fixes owner/name#7" for another one on the same host)."""
    issue = task.external_ids.get(ISSUE_KEY)
    repo = forge.repo_of(task.repo)
    try:
        ref = ForgeRef.parse(issue) if issue else None
    except ValueError:
        return None
    if ref is None or repo is None:
        return None
    if ref.repo.name.lower() == repo.name.lower():
        return f"Fixes #{ref.number}"
    return f"Fixes {ref.repo.name}#{ref.number}" if ref.repo.host == repo.host else None


def revised_text(task: Task, plan: dict[str, Any], version: int) -> str:
    """What a revised plan changed since the last version: root cause and files, old and new."""
    before = task.plan or {}
    lines = [f"{task.key}: plan v{version} is ready (revised from v{version - 1}); see `PLAN.md`."]
    if before.get("root_cause") != plan.get("root_cause"):
        lines.append(f"\n**Root cause (v{version}):** {plan.get('root_cause', '')}")
    old = {f.get("path") for f in before.get("affected_files", []) if isinstance(f, dict)}
    new = {f.get("path") for f in plan.get("affected_files", []) if isinstance(f, dict)}
    if added := sorted(p for p in new - old if p):
        lines.append("Files added: " + ", ".join(f"`{p}`" for p in added))
    if dropped := sorted(p for p in old - new if p):
        lines.append("Files dropped: " + ", ".join(f"`{p}`" for p in dropped))
    if len(lines) == 1:
        lines.append("Same root cause and files; the steps changed.")
    return "\n".join(lines)


def analysis_text(task: Task, plan: dict[str, Any], version: int, where: str) -> str:
    """The trackers' analysis comment: root cause, affected files, confidence, the plan and the PR."""
    files = "\n".join(f"- {f.get('path')}: {f.get('reason', '')}" for f in plan.get("affected_files", [])
                      if isinstance(f, dict)) or "- (none named)"
    return (f"fixfleet analysis of {task.key}, plan v{version} ({where}; the plan is PLAN.md there)\n\n"
            f"Root cause: {plan.get('root_cause', '')}\n\nAffected files:\n{files}\n\n"
            f"Confidence: {plan.get('confidence', '?')} · risk: {plan.get('risk', '?')}")


def reviewers_of(task: Task, bot_login: str) -> tuple[list[str], list[str]]:
    """Who reviews the fix: the owners (CODEOWNERS) of the files its plan touches, and the task's
    owner when that is a GitHub login; never fixfleet itself."""
    found = task.context.get("reviewers") or {}
    users = [u for u in found.get("users") or [] if isinstance(u, str)]
    if task.owner and ":" not in task.owner and task.owner not in users:
        users.append(task.owner)
    users = [u for u in users if u.casefold() != bot_login.casefold()]
    return users, [t for t in found.get("teams") or [] if isinstance(t, str)]
