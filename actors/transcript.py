"""What the claude-agent-sdk's messages become in a session's record (fixfleet/sessions.py): one
message per content block (the assistant's text, each tool call with its input, each tool
result), each redacted by the session's redactor and then cut to the recording limit.

Redaction comes first, on the whole text: a secret straddling the cut is still replaced whole.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

from fixfleet.redact import Redactor
from fixfleet.sessions import MessageBody, MessageKind


class Transcriber:
    """Turns SDK messages into redacted, clipped message bodies for the recorder."""

    def __init__(self, redactor: Redactor, limit: int) -> None:
        self.redactor, self.limit = redactor, limit

    def prompt(self, text: str) -> MessageBody:
        return self._body(MessageKind.PROMPT, text)

    def bodies(self, message: Any) -> list[MessageBody]:
        if isinstance(message, AssistantMessage):
            bodies = [self._block(block) for block in message.content]
            if message.error:
                bodies.append(self._body(MessageKind.SYSTEM, message.error, name="assistant_error", is_error=True))
            return bodies
        if isinstance(message, UserMessage):
            if isinstance(message.content, str):
                return [self._body(MessageKind.USER, message.content)]
            return [self._block(block) for block in message.content]
        if isinstance(message, SystemMessage):
            return [self._body(MessageKind.SYSTEM, _json(message.data), name=message.subtype)]
        if isinstance(message, ResultMessage):
            words = message.result or "; ".join(str(e) for e in message.errors or []) or ""
            return [self._body(MessageKind.RESULT, words, name=message.subtype, is_error=message.is_error)]
        fields = dataclasses.asdict(message) if dataclasses.is_dataclass(message) else {"value": repr(message)}
        return [self._body(MessageKind.SYSTEM, _json(fields), name=type(message).__name__)]

    def _block(self, block: Any) -> MessageBody:
        if isinstance(block, TextBlock):
            return self._body(MessageKind.TEXT, block.text)
        if isinstance(block, ThinkingBlock):
            return self._body(MessageKind.THINKING, block.thinking)
        if isinstance(block, ToolUseBlock):
            return self._body(MessageKind.TOOL_USE, _json(block.input), name=block.name, tool_use_id=block.id)
        if isinstance(block, ToolResultBlock):
            return self._body(MessageKind.TOOL_RESULT, result_text(block.content), tool_use_id=block.tool_use_id,
                              is_error=bool(block.is_error))
        # A server-side tool (web search) and its result: the same two kinds, named by the block.
        fields = dataclasses.asdict(block) if dataclasses.is_dataclass(block) else {"value": repr(block)}
        kind = MessageKind.TOOL_USE if "input" in fields else MessageKind.TOOL_RESULT
        return self._body(kind, _json(fields.get("input", fields.get("content", fields))),
                          name=fields.get("name"), tool_use_id=fields.get("id") or fields.get("tool_use_id"))

    def _body(self, kind: MessageKind, text: str, **fields: Any) -> MessageBody:
        return MessageBody.clipped(kind, self.redactor.text(text), self.limit, **fields)


def result_text(content: str | list[dict[str, Any]] | None) -> str:
    """A tool result's words: its text parts joined; anything else (an image) named, not inlined."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        else:
            parts.append(f"[{part.get('type', 'part') if isinstance(part, dict) else 'part'}]")
    return "\n".join(parts)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
