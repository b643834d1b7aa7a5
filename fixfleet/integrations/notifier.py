"""The notifier seam: the chat where people are told about tasks, approve plans with a button and
give commands (Slack; another chat would be one more implementation).

The plan message is the task's place in the chat: later news replaces its text, answers go to its
thread. A notifier keeps what finds the message again in the task's context (`plan_ready`
returns it). Steps still to come take one method each here (a reaction to a command, a message
that says who approved).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel, ConfigDict

from fixfleet.models import Task


class ChatThread(BaseModel):
    """Where a command was given: a channel, and the thread in it (None: the channel itself)."""

    model_config = ConfigDict(frozen=True)

    channel: str
    thread: str | None = None


class Notifier(ABC):
    @abstractmethod
    async def plan_ready(self, task: Task, version: int, summary: str, link: str | None) -> dict[str, Any]:
        """Post the plan with Approve / Reject; returns what to keep in the task's context ({}
        when there is no channel to post to)."""

    @abstractmethod
    async def task_changed(self, task: Task, text: str) -> None:
        """The task's plan message now says `text` (its buttons go); nothing when there is none."""

    @abstractmethod
    async def task_reply(self, task: Task, text: str) -> None:
        """A reply in the plan message's thread; nothing when there is no plan message."""

    @abstractmethod
    async def answer(self, where: ChatThread, text: str) -> None:
        """Answer a command where it was given."""
