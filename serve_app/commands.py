"""Commands in comments and Slack: find the task, check who asks, act, and answer politely.

Replies to GitHub comments are sent after the webhook has been answered (a background task):
GitHub wants a quick answer and the reply is not part of the durable record; the decision
itself and every refusal are recorded as task events.
"""

from __future__ import annotations

import logging
from datetime import datetime

from fastapi import BackgroundTasks

from fixfleet.approvals import Principal, Refused
from fixfleet.commands import ParsedCommand, parse_commands, unknown_reply
from fixfleet.commands.handlers import Commands, NeedsTask
from fixfleet.forge_refs import ISSUE_KEY, PULL_KEY
from fixfleet.intake import CommandRequest, SlackAction
from fixfleet.integrations.notifier import ChatThread
from fixfleet.models import Task
from fixfleet.store import StoreError, TaskNotFound
from serve_app.context import AppContext
from serve_app.schemas import WebhookOut

log = logging.getLogger(__name__)


class ChatCommands:
    """The chat side of the commands: reads them out of a comment or a Slack message, finds the
    task and who asks, hands each to the one handler (`Commands`), and answers in the thread."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.store = ctx.services.store
        self.commands: Commands = ctx.commands

    async def comment(self, event: CommandRequest, background: BackgroundTasks) -> WebhookOut:
        commands = parse_commands(event.text)
        if not commands:
            return WebhookOut(status="ignored", detail="no command in this comment")
        self._acknowledge(event, background)
        replies = [await self._run(command, event) for command in commands]
        text = "\n\n".join(r for r in replies if r)
        if text:
            self._reply(event, text, background)
        return WebhookOut(status="command", detail=", ".join(c.name for c in commands), text=text or None)

    async def slack_action(self, action: SlackAction, background: BackgroundTasks) -> WebhookOut:
        principal = Principal(kind="slack", name=action.user_id)
        text = await self._answer(principal, action.action, action.task_key, {"plan_version": action.plan_version})
        return WebhookOut(status="command", task=action.task_key, detail=action.action, text=text)

    async def _run(self, command: ParsedCommand, event: CommandRequest) -> str:
        if command.spec is None:
            return unknown_reply(command)
        if command.error:
            return f"`{command.name}`: {command.error}"
        name = command.spec.name
        task = None if name in ("help", "queue") else await self._task_for(command, event)
        if task is None and name not in ("help", "queue"):
            return f"I could not tell which task `{name}` is for: name it, e.g. `@agent {name} FF-12`."
        return await self._answer(self._principal(event), name, task.key if task else None, command.args,
                                  seen_at=event.created_at)

    async def _answer(self, principal: Principal, name: str, key: str | None, args: dict,
                      seen_at: datetime | None = None) -> str:
        """The command's answer, or a polite line saying why it was refused."""
        try:
            return (await self.commands.run(principal, name, task_ref=key, args=args, seen_at=seen_at)).text
        except (Refused, StoreError, NeedsTask) as refusal:
            return f"Sorry, I can't {name} {key or ''}: {refusal}.".replace(" :", ":")

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
        if event.where is not None:
            for external_key in (PULL_KEY, ISSUE_KEY):
                task = await self.store.find_task(external_key=external_key, external_id=str(event.where),
                                                  open_only=False)
                if task is not None:
                    return task
        return None

    def _acknowledge(self, event: CommandRequest, background: BackgroundTasks) -> None:
        """A +1 reaction on the GitHub comment that held commands, after the answer (best effort)."""
        forge = self.ctx.providers.forges.of_kind(event.source)
        if forge is None or event.where is None or not event.comment_id or event.edited:
            return
        where, comment_id = event.where, event.comment_id

        async def react() -> None:
            try:
                await forge.acknowledge(where, comment_id)
            except Exception as exc:
                log.warning("could not acknowledge a %s command: %s", event.source, type(exc).__name__)

        background.add_task(react)

    def _reply(self, event: CommandRequest, text: str, background: BackgroundTasks) -> None:
        """Answer where the command was given: the GitHub thread, or the Slack message's thread
        (a slash command's answer is the HTTP response itself)."""
        providers = self.ctx.providers
        forge = providers.forges.of_kind(event.source)
        if forge is not None and event.where is not None:
            send = forge.comment(event.where, text)
        elif event.source == "slack" and providers.notifier and event.slack_channel:
            send = providers.notifier.answer(ChatThread(channel=event.slack_channel, thread=event.slack_thread_ts), text)
        else:
            return

        async def deliver() -> None:
            try:
                await send
            except Exception as exc:  # a lost reply must not fail the webhook that was already answered
                log.warning("could not reply to a %s command: %s", event.source, type(exc).__name__, exc_info=True)

        background.add_task(deliver)
