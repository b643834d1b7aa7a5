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
from typing import Any

from fixfleet.config import Settings
from fixfleet.integrations.registry import from_settings
from fixfleet.models import Task
from fixfleet.plan_doc import SANDBOX_OFF, render_evidence
from fixfleet.repos import github_name, github_ref
from fixfleet.store import Store

log = logging.getLogger(__name__)
class Publisher:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.clients = from_settings(settings, sentry_api_url=settings.sentry_api_url, slack_api_url=settings.slack_api_url)

    async def aclose(self) -> None:
        await self.clients.aclose()

    async def plan_ready(self, task: Task, plan: dict[str, Any], version: int, branch: str) -> str | None:
        """Draft PR with the plan, Jira comment, Slack message with Approve / Reject. Returns the PR URL."""
        summary = f"Plan v{version} for {task.key}: {plan.get('root_cause', '')[:300]}"
        pr_url = await self._draft_pull(task, branch, version, plan)
        link = pr_url or f"branch `{branch}`"
        jira_key = task.external_ids.get("jira")
        if self.clients.jira and jira_key:
            await self.clients.jira.add_comment(jira_key, f"fixfleet planned a fix ({link}).\n\n{summary}", marker=f"{task.key}-plan-v{version}")
        if self.clients.slack and self.settings.slack_channel:
            ts = await self.clients.slack.post_plan(self.settings.slack_channel, task.key, version, task.title, summary, pr_url)
            await self.store.update_fields(task.id, context=task.context | {"slack_ts": ts})
        return pr_url

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

    async def _draft_pull(self, task: Task, branch: str, version: int, plan: dict[str, Any]) -> str | None:
        repo = github_name(task.repo, self.settings)
        github = self.clients.github
        if github is None or repo is None:
            return None  # a plain git remote: the pushed branch is the publication
        base = await github.default_branch(repo)
        title = f"fixfleet {task.key}: {task.title}"[:250]
        body = f"Plan v{version}: see `PLAN.md` on this branch.\n\n**Root cause:** {plan.get('root_cause', '')}\n\nApprove with `@agent approve`."
        if not self.settings.sandbox_enabled:
            body = f"{SANDBOX_OFF}\n\n{body}"
        pull = await github.create_pull(repo, branch, base, title, body, draft=True)
        await github.update_pull(repo, pull["number"], body=body)
        external = task.external_ids | {"github_pr": github_ref(self.settings, repo, pull["number"])}
        await self.store.update_fields(task.id, external_ids=external)
        return pull.get("html_url")

    async def _transition_jira(self, key: str, name: str) -> None:
        try:
            await self.clients.jira.transition(key, name)
        except Exception as exc:  # workflows differ between Jira sites; the comment already went out
            log.warning("jira %s: no transition %r (%s)", key, name, exc)

    async def _slack_update(self, task: Task, text: str) -> None:
        ts = task.context.get("slack_ts")
        if self.clients.slack and self.settings.slack_channel and ts:
            await self.clients.slack.update(self.settings.slack_channel, ts, text)
