"""Slack: Approve/Reject buttons (interactions), slash commands, and the Events API (messages and
@-mentions of the app that hold commands). A button's `value` names the task and the plan version
the human saw (fixfleet/formats/slack.py): a click on an outdated message is refused as stale."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fixfleet.formats.access import as_list, as_str, dig, obj
from fixfleet.formats.slack import parse_slack_action_value
from fixfleet.intake.access import require_object
from fixfleet.intake.events import CommandRequest, Ignored, ParseError, Ping, SlackAction, UrlVerification
from fixfleet.models import Source

_TASK_KEY = re.compile(r"\bFF-(\d+)\b", re.I)


def parse_slack_interaction(payload: Any) -> SlackAction | Ignored:
    """The JSON inside the `payload=` form field of an interaction (decoded after verifying)."""
    payload = require_object(payload)
    if payload.get("type") != "block_actions":
        return Ignored(reason=f"Slack interaction {payload.get('type')!r}: only block_actions are handled")
    user_id = as_str(dig(payload, "user", "id"))
    if not user_id:
        return Ignored(reason="Slack interaction without user.id")
    for action in as_list(payload.get("actions")):
        action_id = dig(action, "action_id")
        if action_id not in ("approve", "reject"):
            continue
        target = parse_slack_action_value(dig(action, "value"))
        if target is None:
            return Ignored(reason=f"button value {dig(action, 'value')!r} is not like 'FF-12:v2'")
        return SlackAction(
            action=action_id,
            task_key=target[0],
            plan_version=target[1],
            user_id=user_id,
            user_name=as_str(dig(payload, "user", "username")) or as_str(dig(payload, "user", "name")),
            response_url=as_str(payload.get("response_url")),
        )
    return Ignored(reason="no approve or reject action in this Slack interaction")


def parse_slack_command(form: Mapping[str, str]) -> CommandRequest | Ping:
    """A slash command (`/fixfleet status FF-12`); `text` keeps the command so the command
    parser reads it like any other. Slack's `ssl_check` probe yields Ping."""
    if not isinstance(form, Mapping):
        raise ParseError(f"expected form fields, got {type(form).__name__}")
    if form.get("ssl_check"):
        return Ping()
    user_id = as_str(form.get("user_id"))
    if not user_id:
        raise ParseError("slash command without user_id")
    command = as_str(form.get("command")) or "/fixfleet"
    text = f"{command} {as_str(form.get('text')) or ''}".strip()
    key = _TASK_KEY.search(text)
    return CommandRequest(
        source=Source.SLACK,
        text=text,
        author=as_str(form.get("user_name")) or user_id,
        author_id=user_id,
        task_key=f"FF-{int(key[1])}" if key else None,
        response_url=as_str(form.get("response_url")),
    )


_USER_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


def parse_slack_event(payload: Any) -> CommandRequest | UrlVerification | Ignored:
    """An Events API callback: `url_verification`, or a channel message / app mention whose text
    may hold commands. The app's own and other bots' messages, edits and joins are ignored."""
    payload = require_object(payload)
    kind = payload.get("type")
    if kind == "url_verification":
        challenge = as_str(payload.get("challenge"))
        if not challenge:
            raise ParseError("url_verification without a challenge")
        return UrlVerification(challenge=challenge)
    if kind != "event_callback":
        return Ignored(reason=f"Slack event envelope {kind!r} is not one fixfleet acts on")
    event = obj(payload.get("event"))
    if event.get("type") not in ("message", "app_mention"):
        return Ignored(reason=f"Slack event {event.get('type')!r} is not one fixfleet acts on")
    if event.get("bot_id") or event.get("subtype"):
        return Ignored(reason="a bot's message or a message change, not a person's command")
    user, text, channel = as_str(event.get("user")), as_str(event.get("text")), as_str(event.get("channel"))
    if not user or not text or not channel:
        return Ignored(reason="Slack message without user, text or channel")
    # "<@U0APP> approve FF-12" reads as "@agent approve FF-12" for the command parser.
    text = _USER_MENTION.sub("@agent", text) if event.get("type") == "app_mention" else text
    key = _TASK_KEY.search(text)
    return CommandRequest(source=Source.SLACK, text=text, author=user, author_id=user,
                          task_key=f"FF-{int(key[1])}" if key else None, slack_channel=channel,
                          slack_thread_ts=as_str(event.get("thread_ts")) or as_str(event.get("ts")))
