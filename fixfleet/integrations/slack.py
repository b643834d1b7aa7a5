"""Slack Web API: the plan message with Approve / Reject buttons, its updates, and messages in a
channel or thread; and Slack as the platform's Notifier (`SlackNotifier`).

Slack answers HTTP 200 with `{"ok": false, "error": "..."}` when a call fails: that becomes a
SlackError carrying the code (SlackAuthError for credential problems). Rate limits come as HTTP
429 with Retry-After, which the shared `request()` honours.
"""

from __future__ import annotations

from typing import Any, Unpack

from pydantic import SecretStr

from fixfleet.formats.slack import slack_action_value
from fixfleet.integrations.base import (
    ApiClient,
    AuthenticationError,
    ClientOptions,
    NotFoundError,
    RateLimitedError,
    RejectedError,
    secret_value,
)
from fixfleet.integrations.notifier import ChatThread, Notifier
from fixfleet.models import Task

SLACK_API_URL = "https://slack.com/api"
PLAN_MESSAGE = "slack_ts"  # the task context's key for its plan message (its ts in the configured channel)
MAX_SECTION_TEXT = 3000
MAX_REPLY_TEXT = 3900  # Slack cuts a message's text at 4,000 characters
AUTH_ERRORS = {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired",
               "missing_scope", "not_allowed_token_type", "no_permission"}
NOT_FOUND_ERRORS = {"channel_not_found", "message_not_found", "not_in_channel", "thread_not_found"}


class SlackError(RejectedError):
    """Slack said `ok: false`; `error` is Slack's code (e.g. channel_not_found, invalid_blocks)."""

    def __init__(self, service: str, message: str, status: int | None = None, error: str = "unknown") -> None:
        super().__init__(service, message, status)
        self.error = error


class SlackAuthError(SlackError, AuthenticationError):
    pass


class SlackNotFoundError(SlackError, NotFoundError):
    pass


class SlackRateLimitedError(SlackError, RateLimitedError):
    pass


def escape(text: str) -> str:
    """Slack's three control characters in mrkdwn / plain text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _link(url: str, label: str) -> str:
    return f"<{url.replace('|', '%7C').replace('>', '%3E')}|{label}>"


def plan_blocks(task_key: str, plan_version: int | None, title: str, summary: str, pr_url: str | None,
                task_url: str | None = None) -> list[dict[str, Any]]:
    """A section with the plan and an actions block with Approve (primary) and Reject buttons
    whose value is `slack_action_value(task_key, plan_version)`, as the ingress parses it."""
    value = slack_action_value(task_key, plan_version)
    version = f" · plan v{plan_version}" if plan_version is not None else ""
    head = f"*{escape(task_key)}{version}: {escape(title)}*"
    links = [_link(url, label) for url, label in ((pr_url, "Pull request"), (task_url, "Task page")) if url]
    link = "\n" + " · ".join(links) if links else ""
    room = MAX_SECTION_TEXT - len(head) - len(link) - 1
    text = head + ("\n" + _clip(escape(summary.strip()), max(room, 0)) if summary.strip() and room > 1 else "") + link
    return [
        {"type": "section", "block_id": "plan", "text": {"type": "mrkdwn", "text": _clip(text, MAX_SECTION_TEXT)}},
        {
            "type": "actions",
            "block_id": "decision",
            "elements": [
                {
                    "type": "button", "action_id": "approve", "style": "primary", "value": value,
                    "text": {"type": "plain_text", "text": "Approve"},
                },
                {
                    "type": "button", "action_id": "reject", "style": "danger", "value": value,
                    "text": {"type": "plain_text", "text": "Reject"},
                    "confirm": {
                        "title": {"type": "plain_text", "text": "Reject this plan?"},
                        "text": {"type": "plain_text", "text": _clip(f"{task_key} will not be fixed by fixfleet.", 300)},
                        "confirm": {"type": "plain_text", "text": "Reject"},
                        "deny": {"type": "plain_text", "text": "Cancel"},
                    },
                },
            ],
        },
    ]


class SlackClient(ApiClient):
    service = "slack"

    def __init__(
        self,
        bot_token: SecretStr | str,
        api_url: str = SLACK_API_URL,
        **retry: Unpack[ClientOptions],
    ) -> None:
        plain = secret_value(bot_token) or ""
        super().__init__(
            base_url=api_url, headers={"Authorization": f"Bearer {plain}"}, secrets=[plain], **retry,
        )

    async def api(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Call a Web API method with a JSON body; `ok: false` raises a SlackError."""
        response = await self._call("POST", f"/{method}", json=payload,
                                    headers={"Content-Type": "application/json; charset=utf-8"})
        data = self._json(response)
        if not isinstance(data, dict) or not data.get("ok"):
            error = str(data.get("error") if isinstance(data, dict) else "not_an_object")
            cls = (
                SlackAuthError if error in AUTH_ERRORS
                else SlackNotFoundError if error in NOT_FOUND_ERRORS
                else SlackRateLimitedError if error == "ratelimited"
                else SlackError
            )
            raise cls(self.service, f"{method}: {error}", response.status_code, error=error)
        return data

    async def post_message(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
                           *, thread_ts: str | None = None) -> dict[str, Any]:
        """chat.postMessage; returns Slack's answer (`channel` is the channel's id, `ts` the message's)."""
        payload: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if blocks is not None:
            payload["blocks"] = blocks
        if thread_ts:
            payload["thread_ts"] = thread_ts
        return await self.api("chat.postMessage", payload)

    async def post_plan(self, channel: str, task_key: str, plan_version: int | None, title: str,
                        summary: str, pr_url: str | None, task_url: str | None = None) -> str:
        """The plan message with Approve / Reject; returns its `ts` (keep it to update the message)."""
        version = f" v{plan_version}" if plan_version is not None else ""
        fallback = f"{task_key}: plan{version} awaits approval: {title}"
        answer = await self.post_message(channel, fallback, plan_blocks(task_key, plan_version, title, summary, pr_url, task_url))
        return str(answer["ts"])

    async def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """chat.update. Without `blocks` the message becomes `text` alone (its buttons go);
        `channel` must be the channel's id (as `post_message` answers), not its name."""
        payload: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks is not None:
            payload["blocks"] = blocks
        return await self.api("chat.update", payload)


class SlackNotifier(Notifier):
    """Slack as the platform's chat: plan messages go to `channel` (FIXFLEET_SLACK_CHANNEL; none:
    plans are not posted), command answers wherever the command was given."""

    def __init__(self, client: SlackClient, channel: str | None, public_url: str | None = None) -> None:
        """`public_url` (FIXFLEET_PUBLIC_URL): where people reach fixfleet; messages link the task's page."""
        self.client, self.channel, self.public_url = client, channel, public_url

    def task_url(self, task: Task) -> str | None:
        return f"{self.public_url.rstrip('/')}/ui/tasks/{task.key}" if self.public_url else None

    async def plan_ready(self, task: Task, version: int, summary: str, link: str | None) -> dict[str, Any]:
        if not self.channel:
            return {}
        return {PLAN_MESSAGE: await self.client.post_plan(self.channel, task.key, version, task.title, summary, link,
                                                          self.task_url(task))}

    async def task_changed(self, task: Task, text: str) -> None:
        """The plan message becomes `text`: its blocks are replaced (Slack keeps a message's old
        blocks, buttons included, when an update names none), so Approve / Reject go."""
        if self.channel and (ts := task.context.get(PLAN_MESSAGE)):
            page = f"\n{_link(url, 'Task page')}" if (url := self.task_url(task)) else ""
            blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_SECTION_TEXT - len(page)] + page}}]
            await self.client.update(self.channel, ts, text, blocks)

    async def task_reply(self, task: Task, text: str) -> None:
        if self.channel and (ts := task.context.get(PLAN_MESSAGE)):
            await self.client.post_message(self.channel, text[:MAX_REPLY_TEXT], thread_ts=ts)

    async def answer(self, where: ChatThread, text: str) -> None:
        await self.client.post_message(where.channel, text, thread_ts=where.thread)
