"""The tracker seam: an issue tracker a task came from or is linked to (Jira; Sentry-like error
trackers next), told how the task goes.

A task names its issue in one external id (`key`). Every write is idempotent (a comment is made
once per marker), so a step retried after a crash says nothing twice. Steps still to come take
one method each here: a remote link to the pull request, resolving an error in the next release,
moving the issue on when the pull request is merged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import ClassVar

from fixfleet.models import Task


class Stage(StrEnum):
    """Where a task's issue stands, in the platform's words; each tracker maps it to its own."""

    IN_REVIEW = "in review"  # a tested fix waits for review


class Tracker(ABC):
    key: ClassVar[str]  # the task's external id holding the issue's id on this tracker

    def issue_of(self, task: Task) -> str | None:
        return task.external_ids.get(self.key)

    @abstractmethod
    async def comment(self, issue: str, text: str, *, marker: str) -> None:
        """Comment `text` on the issue once per `marker`."""

    @abstractmethod
    async def move(self, issue: str, stage: Stage) -> None:
        """Move the issue to `stage` (nothing when it is there already)."""
