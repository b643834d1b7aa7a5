"""Telling the outside world: the PR on the forge, the Jira ticket, the Slack channel.

Every step is idempotent (existing PRs and marked comments are updated, not duplicated), so
an agent that takes over a task after a crash does not say anything twice. Jira and Slack
are optional: unconfigured means skipped (the registry says so once in the log). The forge
is GitHub when the repository is on GitHub and a token is set; otherwise a plain git remote,
where the pushed branch is the whole publication and approvals come from Slack, the API or
the CLI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fixfleet.config import Settings
from fixfleet.integrations.registry import from_settings
from fixfleet.models import Task
from fixfleet.plan_doc import SANDBOX_OFF, render_evidence
from fixfleet.repos import github_name, github_ref
from fixfleet.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanPublished:
    """Where the plan was published: the caller records it with the task's next transition."""

    pr_url: str | None = None
    external_ids: dict[str, str] = field(default_factory=dict)  # github_pr, when a PR was opened
    context: dict[str, Any] = field(default_factory=dict)  # slack_ts, when Slack was told


class Publisher:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.clients = from_settings(settings, sentry_api_url=settings.sentry_api_url, slack_api_url=settings.slack_api_url)

    async def aclose(self) -> None:
        await self.clients.aclose()

    async def plan_ready(self, task: Task, plan: dict[str, Any], version: int, branch: str) -> PlanPublished:
        """Draft PR with the plan, Jira comment, Slack message with Approve / Reject."""
        summary = f"Plan v{version} for {task.key}: {plan.get('root_cause', '')[:300]}"
        pr_url, pr_ref = await self._draft_pull(task, branch, version, plan)
        link = pr_url or f"branch `{branch}`"
        jira_key = task.external_ids.get("jira")
        if self.clients.jira and jira_key:
            await self.clients.jira.add_comment(jira_key, f"fixfleet planned a fix ({link}).\n\n{summary}", marker=f"{task.key}-plan-v{version}")
        context = {}
        if self.clients.slack and self.settings.slack_channel:
            ts = await self.clients.slack.post_plan(self.settings.slack_channel, task.key, version, task.title, summary, pr_url)
            context["slack_ts"] = ts
        return PlanPublished(pr_url, {"github_pr": pr_ref} if pr_ref else {}, context)

    async def fix_ready(self, task: Task, evidence: dict[str, Any], commits: list[str], cost_usd: float) -> str | None:
        body = render_evidence(task, evidence, commits=commits, cost_usd=cost_usd)
        repo = github_name(task.repo, self.settings)
        if self.clients.github and repo and task.external_ids.get("github_pr"):
            number = int(task.external_ids["github_pr"].rsplit("#", 1)[1])  # "[host/]owner/name#n"
            pull = await self.clients.github.update_pull(repo, number, body=body)
            await self.clients.github.mark_ready(repo, pull)
            await self.clients.github.upsert_comment(repo, number, f"{task.key}-done", f"{task.key}: tests pass; the PR is ready for review.")
        jira_key = task.external_ids.get("jira")
        if self.clients.jira and jira_key:
            await self.clients.jira.add_comment(jira_key, f"fixfleet pushed a tested fix for {task.key}: {task.pr_url or task.branch}", marker=f"{task.key}-done")
            await self._transition_jira(jira_key, "In Review")
        await self._slack_update(task, f"{task.key} fixed and tested: {task.pr_url or task.branch}")
        return task.pr_url

    async def tests_rerun(self, task: Task, sha: str, verdict: str, run: dict[str, Any]) -> None:
        """The suite's result on the PR (one comment, updated by each rerun) and in Slack."""
        text = (f"{task.key}: the test suite {verdict} on `{sha[:12]}` ({run.get('seconds', '?')} s, "
                f"`{run.get('command', '')}`).\n\n```\n{str(run.get('output_tail', ''))[-3000:]}\n```")
        repo = github_name(task.repo, self.settings)
        if self.clients.github and repo and task.external_ids.get("github_pr"):
            number = int(task.external_ids["github_pr"].rsplit("#", 1)[1])
            await self.clients.github.upsert_comment(repo, number, f"{task.key}-rerun", text)
        await self._slack_update(task, f"{task.key}: the test suite {verdict} on {task.pr_url or task.branch}")

    async def question_answered(self, task: Task, questions: list[str], answer: str, asked_at: str) -> None:
        """The planner's answer, quoting the question(s), where the task is discussed: a PR comment
        and a reply in the task's Slack thread (one each per question asked, however often sent)."""
        quoted = "\n".join(f"> {q}" for q in questions)
        text = f"{task.key}: the planner's answer\n\n{quoted}\n\n{answer}"
        repo = github_name(task.repo, self.settings)
        if self.clients.github and repo and task.external_ids.get("github_pr"):
            number = int(task.external_ids["github_pr"].rsplit("#", 1)[1])
            marker = f"{task.key}-answer-{''.join(filter(str.isdigit, asked_at))}"  # one comment per question asked
            await self.clients.github.upsert_comment(repo, number, marker, text)
        ts = task.context.get("slack_ts")
        if self.clients.slack and self.settings.slack_channel and ts:
            await self.clients.slack.post_message(self.settings.slack_channel, text[:3900], thread_ts=ts)

    async def task_failed(self, task_id: int, reason: str) -> None:
        task = await self.store.get_task(task_id)
        text = f"fixfleet gave up on {task.key}: {reason[:500]}"
        repo = github_name(task.repo, self.settings)
        if self.clients.github and repo and task.external_ids.get("github_pr"):
            number = int(task.external_ids["github_pr"].rsplit("#", 1)[1])  # "[host/]owner/name#n"
            await self.clients.github.upsert_comment(repo, number, f"{task.key}-failed", text)
        if self.clients.jira and task.external_ids.get("jira"):
            await self.clients.jira.add_comment(task.external_ids["jira"], text, marker=f"{task.key}-failed")
        await self._slack_update(task, text)

    async def _draft_pull(self, task: Task, branch: str, version: int,
                          plan: dict[str, Any]) -> tuple[str | None, str | None]:
        """(the PR's URL, its "[host/]owner/name#n" reference), or Nones on a plain git remote."""
        repo = github_name(task.repo, self.settings)
        github = self.clients.github
        if github is None or repo is None:
            return None, None  # a plain git remote: the pushed branch is the publication
        base = await github.default_branch(repo)
        title = f"fixfleet {task.key}: {task.title}"[:250]
        body = f"Plan v{version}: see `PLAN.md` on this branch.\n\n**Root cause:** {plan.get('root_cause', '')}\n\nApprove with `@agent approve`."
        if not self.settings.sandbox_enabled:
            body = f"{SANDBOX_OFF}\n\n{body}"
        pull = await github.create_pull(repo, branch, base, title, body, draft=True)
        await github.update_pull(repo, pull["number"], body=body)
        return pull.get("html_url"), github_ref(self.settings, repo, pull["number"])

    async def _transition_jira(self, key: str, name: str) -> None:
        try:
            await self.clients.jira.transition(key, name)
        except Exception as exc:  # workflows differ between Jira sites; the comment already went out
            log.warning("jira %s: no transition %r (%s)", key, name, exc, exc_info=True)

    async def _slack_update(self, task: Task, text: str) -> None:
        ts = task.context.get("slack_ts")
        if self.clients.slack and self.settings.slack_channel and ts:
            await self.clients.slack.update(self.settings.slack_channel, ts, text)
