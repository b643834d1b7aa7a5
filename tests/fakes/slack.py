"""Slack Web API stand-in: chat.postMessage, chat.update and response_url hooks.

Like Slack, it answers HTTP 200 with `{"ok": false, "error": ...}` for every failure, a bad or
missing token included (`invalid_auth` / `not_authed`); rate limits are HTTP 429 with Retry-After
(inject them with `fail_next`). Blocks are checked against Block Kit's rules that matter here.
"""

from __future__ import annotations

import itertools
import re
import secrets
from typing import Any

from tests.fakes.base import Call, Reply
from tests.fakes.faults import FakeAPI

TEXT_TYPES = {"plain_text", "mrkdwn"}
BLOCK_TYPES = {"section", "actions", "context", "divider", "header", "image", "input", "rich_text"}


def _text_problem(obj: Any, limit: int, *, plain_only: bool = False) -> str | None:
    if not isinstance(obj, dict) or obj.get("type") not in ({"plain_text"} if plain_only else TEXT_TYPES):
        return "a text object needs type plain_text" + ("" if plain_only else " or mrkdwn")
    if not isinstance(obj.get("text"), str) or not obj["text"] or len(obj["text"]) > limit:
        return f"text must be 1..{limit} characters"
    return None


def blocks_problem(blocks: Any) -> str | None:
    """Why Slack would answer `invalid_blocks`, or None."""
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "blocks must be a list of at most 50 blocks"
    block_ids: set[str] = set()
    action_ids: set[str] = set()
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            return f"unknown block {block!r:.80}"
        if "block_id" in block:
            if not isinstance(block["block_id"], str) or len(block["block_id"]) > 255 or block["block_id"] in block_ids:
                return "block_id must be a unique string of at most 255 characters"
            block_ids.add(block["block_id"])
        kind = block["type"]
        if kind == "section":
            if "text" not in block and "fields" not in block:
                return "a section needs text or fields"
            if "text" in block and (problem := _text_problem(block["text"], 3000)):
                return f"section: {problem}"
        elif kind == "header" and (problem := _text_problem(block.get("text"), 150, plain_only=True)):
            return f"header: {problem}"
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                return "actions need 1..25 elements"
            for element in elements:
                if not isinstance(element, dict) or element.get("type") != "button":
                    continue  # the fake checks buttons only
                if problem := _text_problem(element.get("text"), 75, plain_only=True):
                    return f"button: {problem}"
                action_id = element.get("action_id")
                if not isinstance(action_id, str) or len(action_id) > 255 or action_id in action_ids:
                    return "action_id must be a unique string of at most 255 characters"
                action_ids.add(action_id)
                if "value" in element and (not isinstance(element["value"], str) or len(element["value"]) > 2000):
                    return "button value must be a string of at most 2000 characters"
                if element.get("style") not in (None, "primary", "danger"):
                    return "button style must be primary or danger"
                confirm = element.get("confirm")
                if confirm is not None and (not isinstance(confirm, dict) or any(
                        _text_problem(confirm.get(key), 300 if key == "text" else 100, plain_only=key != "text")
                        for key in ("title", "text", "confirm", "deny"))):
                    return "confirm needs title, text, confirm and deny text objects"
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                return "context needs 1..10 elements"
    return None


class FakeSlack(FakeAPI):
    published_api = "slack"

    def __init__(self, token: str, channels: tuple[str, ...] = ("C0PLANS",)) -> None:
        super().__init__()
        self.token = token
        self.channels = set(channels)
        self.messages: list[dict[str, Any]] = []  # {"channel", "ts", "text", "blocks", "edits"}
        self.responses: list[dict[str, Any]] = []  # bodies posted to response_urls, with their path
        self._ts = itertools.count(1)
        self.route("POST", r"/api/chat\.postMessage", self._post_message)
        self.route("POST", r"/api/chat\.update", self._update)
        self.route("POST", r"/actions/(?P<rest>[\w/]+)", self._response_url)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def response_url(self) -> str:
        """A fresh response_url like the one in an interaction payload."""
        return f"{self.url}/actions/T0FIXFLEET/{next(self._ts)}/{secrets.token_hex(12)}"

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages if m["channel"] == channel and m["ts"] == ts), None)

    def authorized(self, call: Call) -> bool:
        return True  # Slack answers 200 with ok: false; see dispatch

    def dispatch(self, call: Call) -> Reply:
        with self.lock:
            injected = self._injected(call)
            if injected is not None:
                return injected
            if (refused := self.check_published(call)) is not None:
                return refused
            if call.path.startswith("/api/"):
                auth = call.headers.get("authorization")
                if not auth:
                    return self._error("not_authed")
                if auth != f"Bearer {self.token}":
                    return self._error("invalid_auth")
                if not call.headers.get("content-type", "").startswith("application/json") or not isinstance(call.body, dict):
                    return self._error("invalid_arguments")
                for method, pattern, handler in self.routes:
                    if method == call.method and (match := pattern.match(call.path)):
                        return handler(call, match)
                return self._error("unknown_method")
            return super(FakeAPI, self).dispatch(call)

    @staticmethod
    def _error(code: str) -> Reply:
        return Reply(200, {"ok": False, "error": code})

    def _check_content(self, body: dict[str, Any], *, required: bool) -> str | None:
        if "blocks" in body and (problem := blocks_problem(body["blocks"])):
            return problem
        if required and not body.get("text") and not body.get("blocks"):
            return "no_text"
        if "text" in body and not isinstance(body["text"], str):
            return "invalid_arguments"
        return None

    def _post_message(self, call: Call, m: re.Match) -> Reply:
        body = call.body
        if body.get("channel") not in self.channels:
            return self._error("channel_not_found")
        problem = self._check_content(body, required=True)
        if problem:
            return self._error("no_text" if problem == "no_text" else "invalid_blocks")
        ts = f"1700000000.{next(self._ts):06d}"
        message = {"channel": body["channel"], "ts": ts, "text": body.get("text", ""),
                   "blocks": body.get("blocks", []), "edits": 0, "thread_ts": body.get("thread_ts")}
        self.messages.append(message)
        return Reply(200, {"ok": True, "channel": body["channel"], "ts": ts,
                           "message": {"type": "message", "text": message["text"], "blocks": message["blocks"], "ts": ts}})

    def _update(self, call: Call, m: re.Match) -> Reply:
        body = call.body
        if body.get("channel") not in self.channels:
            return self._error("channel_not_found")
        message = self.message(body["channel"], body.get("ts"))
        if message is None:
            return self._error("message_not_found")
        problem = self._check_content(body, required=True)
        if problem:
            return self._error("no_text" if problem == "no_text" else "invalid_blocks")
        if "blocks" in body:
            message["blocks"] = body["blocks"]
        elif "text" in body:
            message["blocks"] = []  # text without blocks: Slack drops the old blocks
        if "text" in body:
            message["text"] = body["text"]
        message["edits"] += 1
        return Reply(200, {"ok": True, "channel": message["channel"], "ts": message["ts"], "text": message["text"]})

    def _response_url(self, call: Call, m: re.Match) -> Reply:
        if not isinstance(call.body, dict) or not isinstance(call.body.get("text"), str):
            return Reply(400, "invalid_payload")
        self.responses.append({"path": call.path, "authorization": call.headers.get("authorization"), **call.body})
        return Reply(200, "ok")
