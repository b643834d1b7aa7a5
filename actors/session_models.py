"""Typed inputs and outputs of one Claude Code session (see actors/session.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fixfleet.config import Settings
from fixfleet.errors import PermanentError
from fixfleet.sessions import SessionOwner

Role = Literal["planner", "executor"]
Subtype = Literal[
    "success", "error_max_turns", "error_max_budget_usd", "timeout", "error_during_execution"
]


class SessionLimits(BaseModel):
    max_turns: int = Field(ge=1)
    max_budget_usd: float = Field(gt=0)
    timeout_s: float = Field(gt=0)

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionLimits:
        return cls(max_turns=settings.max_turns, max_budget_usd=settings.max_budget_usd,
                   timeout_s=settings.session_timeout_s)


class SessionRequest(BaseModel):
    role: Role
    worktree: Path
    prompt: str = Field(min_length=1)
    context: dict[str, Any] = Field(default_factory=dict)  # task facts shown to the agent
    limits: SessionLimits | None = None  # None: the Settings defaults
    # The role's structured-output tool must have been called for the session to succeed.
    require_structured_output: bool = True
    # "work": the role's own output (a plan, a report); "answer": a reviewer's question answered.
    purpose: Literal["work", "answer"] = "work"
    owner: SessionOwner | None = None  # the task it works for: the session is recorded in the store

    @property
    def output_tool(self) -> tuple[str, type[_Output], str]:
        return ANSWER_TOOL if self.purpose == "answer" else OUTPUT_TOOLS[self.role]


class Denial(BaseModel):
    tool: str
    input_summary: str  # short and redacted
    reason: str  # what the agent was told
    tool_use_id: str | None = None


class SessionResult(BaseModel):
    outcome: Literal["success", "error"]
    subtype: Subtype
    turns: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    session_id: str
    duration_s: float
    structured_output: dict[str, Any] | None = None
    denials: list[Denial] = Field(default_factory=list)
    error: str | None = None
    # The failure would recur on another attempt: the structured output never passed validation
    # (an invalid plan or report), or the model API refused the credential (HTTP 401/403).
    permanent: bool = False
    transcript_path: Path | None = None  # the JSONL file, with FIXFLEET_SESSION_JSONL (debugging)
    record_id: int | None = None  # the session's row in the store, when recorded
    skills: list[str] = Field(default_factory=list)  # as listed by the CLI's init message


class SessionFailedForGood(PermanentError):
    """A session failure that another attempt would repeat (`SessionResult.permanent`): the task
    fails at once with this reason instead of being retried."""


# -- structured outputs: the tools through which the agents hand back their work -------------


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _relative_path(value: str) -> str:
    """Paths are relative to the repository root and stay inside it."""
    path = Path(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be a path relative to the repository root")
    return value


class AffectedFile(_Output):
    path: str = Field(min_length=1, description="file to change, relative to the repository root")
    reason: str = Field(min_length=1, description="why this file is involved")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return _relative_path(value)


class TestToAdd(_Output):
    __test__ = False  # a plan field, not a pytest class
    path: str = Field(min_length=1, description="test file (relative), optionally ::test_name")
    description: str = Field(min_length=1, description="what it asserts; fails before the fix")


class PlanOutput(_Output):
    """What the planner submits through `submit_plan`."""

    repository: str = Field(min_length=1, description="owner/name of the repository to change")
    confidence: float = Field(ge=0, le=1, description="0..1: how sure you are of the root cause")
    affected_files: list[AffectedFile] = Field(
        min_length=1, description="files to change, relative to the repository root, with why")
    root_cause: str = Field(min_length=10, description="why the bug happens, citing the code")
    steps: list[str] = Field(min_length=1, description="ordered changes to make")
    tests_to_add: list[TestToAdd] = Field(
        min_length=1, description="tests that fail before the fix and pass after")
    test_command: str = Field(min_length=1, description="command that runs the relevant tests")
    risk: Literal["low", "medium", "high"]

    @field_validator("steps")
    @classmethod
    def _no_blank(cls, items: list[str]) -> list[str]:
        if any(not item.strip() for item in items):
            raise ValueError("entries must not be blank")
        return items


class ExecutionReport(_Output):
    """What the executor reports through `report_result`."""

    files_changed: list[str] = Field(min_length=1, description="files you changed (relative)")
    tests_added: list[str] = Field(min_length=1, description="test files or test ids you added")
    test_command: str = Field(min_length=1, description="command that runs the new tests")
    summary: str = Field(min_length=10, description="what was wrong and what you changed")

    @field_validator("files_changed")
    @classmethod
    def _relative(cls, files: list[str]) -> list[str]:
        return [_relative_path(f) for f in files]


class AnswerOutput(_Output):
    """What the planner hands back through `answer_question`."""

    answer: str = Field(min_length=10, max_length=20000,
                        description="the answer, in Markdown, citing the code (path:line) it rests on")
    files: list[str] = Field(default_factory=list, description="files the answer cites (relative)")

    @field_validator("files")
    @classmethod
    def _relative(cls, files: list[str]) -> list[str]:
        return [_relative_path(f) for f in files]


ANSWER_TOOL = ("answer_question", AnswerOutput,
               "Hand back your answer to the reviewer's question(s). If it is rejected, fix what the error says "
               "and call it again.")
OUTPUT_TOOLS: dict[Role, tuple[str, type[_Output], str]] = {
    "planner": ("submit_plan", PlanOutput,
                "Submit your plan (the only way to hand it back). Call it once you know the "
                "root cause; if it is rejected, fix what the error says and call it again."),
    "executor": ("report_result", ExecutionReport,
                 "Report the finished change after the tests pass. If it is rejected, fix "
                 "what the error says and call it again."),
}
