"""Telling the outside world: the pull request on the task's forge, the trackers' issues (Jira),
the chat (Slack), each through its seam (fixfleet/forges, fixfleet/integrations).

Every step is idempotent (existing PRs and marked comments are updated, not duplicated), so
an agent that takes over a task after a crash does not say anything twice. Trackers and the
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
from fixfleet.integrations.tracker import Tracker
from fixfleet.models import Task
from fixfleet.plan_doc import SANDBOX_OFF, render_evidence
from fixfleet.providers import connect
from fixfleet.redact import Redactor
from fixfleet.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanPublished:
    """Where the plan was published: the caller records it with the task's next transition."""

    pr_url: str | None = None
    external_ids: dict[str, str] = field(default_factory=dict)  # the pull request's, when one was opened
    context: dict[str, Any] = field(default_factory=dict)  # what finds the chat's plan message again


class Publisher:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.providers = connect(settings, Redactor.from_settings(settings))
        self.forges, self.trackers = self.providers.forges, self.providers.trackers
        self.notifier = self.providers.notifier

    async def aclose(self) -> None:
        await self.providers.aclose()

    async def plan_ready(self, task: Task, plan: dict[str, Any], version: int, branch: str) -> PlanPublished:
        """Draft PR with the plan, a comment on the tracker's issue, the chat's message with Approve / Reject."""
        summary = f"Plan v{version} for {task.key}: {plan.get('root_cause', '')[:300]}"
        forge = self.forges.for_repo(task.repo)
        pull = await self._draft_pull(forge, task, branch, version, plan)
        pr_url = pull.url if pull else None
        link = pr_url or f"branch `{branch}`"
        await self._tell_trackers(task, f"fixfleet planned a fix ({link}).\n\n{summary}", f"{task.key}-plan-v{version}")
        context = await self.notifier.plan_ready(task, version, summary, pr_url) if self.notifier else {}
        external_ids = {forge.pull_key: str(pull.ref)} if pull and forge.pull_key else {}
        return PlanPublished(pr_url, external_ids, context)

    async def fix_ready(self, task: Task, evidence: dict[str, Any], commits: list[str], cost_usd: float) -> str | None:
        body = render_evidence(task, evidence, commits=commits, cost_usd=cost_usd)
        forge = self.forges.for_repo(task.repo)
        if pull := forge.pull_of(task):
            await forge.update_pull(pull, body=body, ready=True)
            await forge.upsert_comment(pull, f"{task.key}-done", f"{task.key}: tests pass; the PR is ready for review.")
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
            await forge.upsert_comment(pull, f"{task.key}-rerun", text)
        await self._chat_update(task, f"{task.key}: the test suite {verdict} on {task.pr_url or task.branch}")

    async def question_answered(self, task: Task, questions: list[str], answer: str, asked_at: str) -> None:
        """The planner's answer, quoting the question(s), where the task is discussed: a PR comment
        and a reply in the task's chat thread (one each per question asked, however often sent)."""
        quoted = "\n".join(f"> {q}" for q in questions)
        text = f"{task.key}: the planner's answer\n\n{quoted}\n\n{answer}"
        forge = self.forges.for_repo(task.repo)
        if pull := forge.pull_of(task):
            marker = f"{task.key}-answer-{''.join(filter(str.isdigit, asked_at))}"  # one comment per question asked
            await forge.upsert_comment(pull, marker, text)
        if self.notifier:
            await self.notifier.task_reply(task, text)

    async def task_failed(self, task_id: int, reason: str) -> None:
        task = await self.store.get_task(task_id)
        text = f"fixfleet gave up on {task.key}: {reason[:500]}"
        forge = self.forges.for_repo(task.repo)
        if pull := forge.pull_of(task):
            await forge.upsert_comment(pull, f"{task.key}-failed", text)
        await self._tell_trackers(task, text, f"{task.key}-failed")
        await self._chat_update(task, text)

    async def _draft_pull(self, forge: Forge, task: Task, branch: str, version: int,
                          plan: dict[str, Any]) -> PullRequest | None:
        """The plan's draft pull request; None on a plain git remote (the pushed branch is the publication)."""
        title = f"fixfleet {task.key}: {task.title}"[:250]
        body = f"Plan v{version}: see `PLAN.md` on this branch.\n\n**Root cause:** {plan.get('root_cause', '')}\n\nApprove with `@agent approve`."
        if not self.settings.sandbox_enabled:
            body = f"{SANDBOX_OFF}\n\n{body}"
        return await forge.open_pull(task.repo, branch, title, body, draft=True)

    async def _tell_trackers(self, task: Task, text: str, marker: str, *, move_to: str | None = None) -> None:
        for tracker in self.trackers:
            if issue := tracker.issue_of(task):
                await tracker.comment(issue, text, marker=marker)
                if move_to is not None:
                    await self._move(tracker, issue, move_to)

    @staticmethod
    async def _move(tracker: Tracker, issue: str, stage: str) -> None:
        try:
            await tracker.move(issue, stage)
        except Exception as exc:  # workflows differ between sites; the comment already went out
            log.warning("%s %s: not moved to %r (%s)", tracker.key, issue, str(stage), exc, exc_info=True)

    async def _chat_update(self, task: Task, text: str) -> None:
        if self.notifier:
            await self.notifier.task_changed(task, text)
