"""Scenario files for the scripted model server.

A scenario is an ordered list of assistant turns. The server picks the turn from the request
itself (how many assistant messages the conversation already holds), so it keeps no session
state and a retried request gets the same answer. A turn may branch on the last tool result
in the request, and may fail on purpose (HTTP error, cut stream, stall) a number of times
before it succeeds.

    name: executor-tdd
    usage: {input_tokens: 1200, output_tokens: 80}     # default for every turn
    turns:
      - content:
          - text: "Writing the failing test first."
          - tool_use: {name: Write, input: {file_path: "{worktree}/test_x.py", content: "..."}}
      - branch:                                         # on the last tool_result
          - name: failed
            when: {regex: "failed", is_error: false}
            content: [{text: "The test fails as expected."}]
          - name: passed                                # no `when`: the default
            content: [{text: "Unexpected pass."}]
        error: {kind: status, status: 529, times: 1}    # first attempt 529, then the content
    conversations:                                      # other sessions of the same agent,
      - prompt: "^A reviewer asks"                      # chosen by their first user message
        turns: [{content: [{text: "Because ..."}]}]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Strict):
    input_tokens: int = 100
    output_tokens: int = 40
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class ToolUse(_Strict):
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None  # generated when absent


class Block(_Strict):
    """One content block: exactly one of `text` or `tool_use`."""

    text: str | None = None
    tool_use: ToolUse | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Block:
        if (self.text is None) == (self.tool_use is None):
            raise ValueError("a content block holds exactly one of `text` or `tool_use`")
        return self


class When(_Strict):
    """Conditions on the last tool_result of the request; all given ones must hold."""

    regex: str | None = None  # searched in the tool result's text
    is_error: bool | None = None
    absent: bool | None = None  # true: only when the request carries no tool_result

    def matches(self, result: ToolResult | None) -> bool:
        if self.absent is not None:
            return (result is None) == self.absent
        if result is None:
            return False
        if self.is_error is not None and result.is_error != self.is_error:
            return False
        if self.regex is not None and not re.search(self.regex, result.text, re.MULTILINE):
            return False
        return True


class Case(_Strict):
    name: str
    when: When | None = None  # None: the default case
    content: list[Block]
    stop_reason: str | None = None


class ErrorSpec(_Strict):
    """A failure the turn produces before it succeeds.

    kind=status: an HTTP error with the API's error body (429, 529, 500, ...);
    kind=cut: the stream starts, then the connection drops after `after_events` events;
    kind=stall: the request is accepted, then nothing more is sent for `seconds`
    (after `after_events` events; 0 means not even the response headers).
    """

    kind: Literal["status", "cut", "stall"] = "status"
    status: int = 529
    retry_after: float | None = None
    message: str | None = None
    after_events: int = 0
    seconds: float = 3600.0
    times: int = Field(1, ge=1)


class Turn(_Strict):
    name: str | None = None
    content: list[Block] | None = None
    branch: list[Case] | None = None
    usage: Usage | None = None
    stop_reason: str | None = None  # default: tool_use when the content holds one, else end_turn
    error: ErrorSpec | None = None
    delay_s: float = 0.0  # pause between streamed events, to look like a real model

    @model_validator(mode="after")
    def _content_or_branch(self) -> Turn:
        if (self.content is None) == (self.branch is None):
            raise ValueError("a turn has either `content` or `branch`")
        return self


class Conversation(_Strict):
    """Another kind of session the same agent runs (its planner answering a question): played
    instead of the scenario's own turns when the session's first user message matches `prompt`."""

    prompt: str  # a regular expression, searched in the first user message
    turns: list[Turn]
    final_text: str = "Done."


class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    model: str | None = None  # answered model name; default: the one requested
    usage: Usage = Field(default_factory=Usage)
    turns: list[Turn] = Field(default_factory=list)
    final_text: str = "Done."  # answer once every turn has been played
    side_text: str = "Fixing a bug"  # answer to the CLI's side requests (titles, summaries)
    conversations: list[Conversation] = Field(default_factory=list)

    def for_prompt(self, first_message: str) -> tuple[list[Turn], str]:
        """(turns, final text) of the conversation this session plays."""
        for conversation in self.conversations:
            if re.search(conversation.prompt, first_message):
                return conversation.turns, conversation.final_text
        return self.turns, self.final_text

    @classmethod
    def load(cls, source: str | Path | dict[str, Any]) -> Scenario:
        """From a dict, a YAML file, or the name of a bundled scenario (`executor_tdd`)."""
        if isinstance(source, dict):
            return cls.model_validate(source)
        path = Path(source)
        if not path.exists() and not path.suffix:
            path = SCENARIO_DIR / f"{source}.yaml"
        return cls.model_validate(yaml.safe_load(path.read_text()))


class ToolResult(BaseModel):
    tool_use_id: str | None
    text: str
    is_error: bool


class Choice(BaseModel):
    """What the server answers to one main-loop request."""

    turn_index: int  # -1: past the last turn
    turn_name: str | None
    branch: str | None
    content: list[Block]
    usage: Usage
    stop_reason: str
    error: ErrorSpec | None
    delay_s: float


def count_assistant_turns(messages: list[dict[str, Any]]) -> int:
    """Assistant messages already in the conversation = turns already played."""
    return sum(1 for message in messages if message.get("role") == "assistant")


def last_tool_result(messages: list[dict[str, Any]]) -> ToolResult | None:
    """The last tool_result block of the last user message, if it has any."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        if not results:
            return None
        last = results[-1]
        return ToolResult(
            tool_use_id=last.get("tool_use_id"),
            text=tool_result_text(last.get("content")),
            is_error=bool(last.get("is_error", False)),
        )
    return None


def tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") for part in content if isinstance(part, dict)
        )
    return ""


def first_user_text(messages: list[dict[str, Any]]) -> str:
    first = next((m for m in messages if m.get("role") == "user"), None)
    return tool_result_text(first.get("content")) if first else ""


def choose(scenario: Scenario, messages: list[dict[str, Any]]) -> Choice:
    index = count_assistant_turns(messages)
    turns, final_text = scenario.for_prompt(first_user_text(messages))
    if index >= len(turns):
        return Choice(
            turn_index=-1, turn_name="final", branch=None,
            content=[Block(text=final_text)], usage=scenario.usage,
            stop_reason="end_turn", error=None, delay_s=0.0,
        )
    turn = turns[index]
    content, branch, stop_reason = turn.content, None, turn.stop_reason
    if turn.branch is not None:
        case = _pick_case(turn.branch, last_tool_result(messages))
        content, branch = case.content, case.name
        stop_reason = case.stop_reason or stop_reason
    assert content is not None
    if stop_reason is None:
        stop_reason = "tool_use" if any(b.tool_use for b in content) else "end_turn"
    return Choice(
        turn_index=index, turn_name=turn.name, branch=branch, content=content,
        usage=turn.usage or scenario.usage, stop_reason=stop_reason,
        error=turn.error, delay_s=turn.delay_s,
    )


def _pick_case(cases: list[Case], result: ToolResult | None) -> Case:
    for case in cases:
        if case.when is not None and case.when.matches(result):
            return case
    defaults = [case for case in cases if case.when is None]
    if defaults:
        return defaults[0]
    raise LookupError(f"no branch matches the last tool result: {result!r}")


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(value: Any, variables: dict[str, str]) -> Any:
    """Replace `{name}` for the known variables only, so code braces survive untouched."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: str(variables.get(m[1], m[0])), value)
    if isinstance(value, list):
        return [fill(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, variables) for key, item in value.items()}
    return value
