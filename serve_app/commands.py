"""Commands in comments and Slack: find the task, check who asks, act, and answer politely.

Replies to GitHub comments are sent after the webhook has been answered (a background task):
GitHub wants a quick answer and the reply is not part of the durable record; the decision
itself and every refusal are recorded as task events.
"""

from __future__ import annotations

import logging

from fastapi import BackgroundTasks

from fixfleet.approvals import Decision, Principal, Refused
from fixfleet.commands import ParsedCommand, help_text, parse_commands, unknown_reply
from fixfleet.intake import CommandRequest, SlackAction
from fixfleet.models import Task
from fixfleet.store import StoreError, TaskNotFound
from serve_app.context import AppContext
from serve_app.schemas import WebhookOut

log = logging.getLogger(__name__)
DECISIONS = {"approve": Decision.APPROVE, "reject": Decision.REJECT, "revise": Decision.REVISE}
ANSWERED_FROM_THE_TASK = {"status", "plan", "cost", "logs", "explain"}


class CommandHandler:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.store = ctx.services.store

    async def comment(self, event: CommandRequest, background: BackgroundTasks) -> WebhookOut:
        commands = parse_commands(event.text)
        if not commands:
            return WebhookOut(status="ignored", detail="no command in this comment")
        replies = [await self._run(command, event) for command in commands]
        text = "\n\n".join(r for r in replies if r)
        if text:
            self._reply(event, text, background)
        return WebhookOut(status="command", detail=", ".join(c.name for c in commands), text=text or None)

    async def slack_action(self, action: SlackAction, background: BackgroundTasks) -> WebhookOut:
        principal = Principal(kind="slack", name=action.user_id)
        decision = Decision.APPROVE if action.action == "approve" else Decision.REJECT
        text = await self._decide(principal, action.task_key, decision, plan_version=action.plan_version)
        return WebhookOut(status="command", task=action.task_key, detail=action.action, text=text)

    async def _run(self, command: ParsedCommand, event: CommandRequest) -> str:
        if command.spec is None:
            return unknown_reply(command)
        if command.error:
            return f"`{command.name}`: {command.error}"
        name = command.spec.name
        if name == "help":
            return help_text(command.args.get("command") or None)
        task = await self._task_for(command, event)
        if task is None:
            return f"I could not tell which task `{name}` is for: name it, e.g. `@agent {name} FF-12`."
        if name in DECISIONS:
            principal = self._principal(event)
            feedback = str(command.args.get("feedback") or command.args.get("text") or command.args.get("reason") or "")
            version = command.args.get("plan_version")
            return await self._decide(principal, task.key, DECISIONS[name], plan_version=version, feedback=feedback,
                                      seen_at=event.created_at)
        if name in ANSWERED_FROM_THE_TASK:
            return describe(task, name)
        return f"`{name}` is understood but not available yet; the task is {task.key} ({task.status})."

    async def _decide(self, principal: Principal, key: str, decision: Decision, **kwargs) -> str:  # noqa: ANN003
        try:
            task = await self.ctx.approvals.decide(principal, key, decision, **kwargs)
        except Refused as refusal:
            return f"Sorry, I can't {decision} {key}: {refusal}."
        except StoreError as exc:
            return f"Sorry, I can't {decision} {key}: {exc}."
        return f"{task.key} is now {task.status} ({decision}d by {principal.name})."

    def _principal(self, event: CommandRequest) -> Principal:
        if event.source == "slack":
            return Principal(kind="slack", name=event.author_id or event.author)
        return Principal(kind="github", name=event.author, where=event.where)

    async def _task_for(self, command: ParsedCommand, event: CommandRequest) -> Task | None:
        key = command.task_key or event.task_key
        if key:
            try:
                return await self.store.get_task(key)
            except TaskNotFound:
                return None
        if event.where:
            for external_key in ("github_pr", "github_issue"):
                task = await self.store.find_task(external_key=external_key, external_id=event.where, open_only=False)
                if task is not None:
                    return task
        return None

    def _reply(self, event: CommandRequest, text: str, background: BackgroundTasks) -> None:
        """Answer where the command was given: the GitHub thread, or the Slack message's thread
        (a slash command's answer is the HTTP response itself)."""
        github, slack = self.ctx.github, self.ctx.slack
        if event.source == "github" and github and event.repo_full_name and event.issue_number is not None:
            send = github.comment(event.repo_full_name, event.issue_number, text)
        elif event.source == "slack" and slack and event.slack_channel:
            send = slack.post_message(event.slack_channel, text, thread_ts=event.slack_thread_ts)
        else:
            return

        async def deliver() -> None:
            try:
                await send
            except Exception as exc:  # a lost reply must not fail the webhook that was already answered
                log.warning("could not reply to a %s command: %s", event.source, type(exc).__name__)

        background.add_task(deliver)


def describe(task: Task, what: str) -> str:
    if what == "cost":
        return f"{task.key} has cost ${task.cost_usd:.4f} ({task.tokens} tokens) over {task.attempts} attempts."
    if what in ("plan", "explain") and task.plan:
        plan = task.plan
        return f"{task.key} plan v{task.plan_version}: {plan.get('root_cause', '')}\nrisk {plan.get('risk', '?')}, confidence {plan.get('confidence', '?')}"
    pr = f", PR {task.pr_url}" if task.pr_url else ""
    return f"{task.key} is {task.status} (plan v{task.plan_version}{pr})."


