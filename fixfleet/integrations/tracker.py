"""The tracker seam: an issue tracker a task came from or is linked to (Jira, Sentry), told how
the task goes.

A task names its issue in one external id (`key`). Every write is idempotent (a comment is made
once per marker, or kept up to date per marker where the tracker can edit), so a step retried
after a crash says nothing twice. A tracker that lacks a step (Sentry has no transitions, Jira no
"resolved in next release") does nothing for it.

Steps are named by the task's states (`TaskStatus` values) plus MERGED and CLOSED (what became of
the pull request): `move(issue, step)` moves the issue as the operator mapped that step.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import ClassVar

from fixfleet.logs import log_once
from fixfleet.models import Task

MERGED, CLOSED = "MERGED", "CLOSED"  # steps after COMPLETED: what became of the pull request


async def quietly(logger: logging.Logger, service: str, step: str, call: Awaitable[object], *,
                  nothing_to_do: tuple[type[BaseException], ...] = ()) -> bool:
    """Run one integration step nobody waits for (a label, a transition, a comment): True when it
    went through (or raised one of `nothing_to_do`: the service has no such thing); a failure is
    logged once per service, step and kind, never raised."""
    try:
        await call
        return True
    except nothing_to_do:
        return True
    except Exception as exc:
        log_once(logger, (service, step, type(exc).__name__), "%s %s failed: %s: %s", service, step,
                 type(exc).__name__, exc)
        return False


class Tracker(ABC):
    key: ClassVar[str]  # the task's external id holding the issue's id on this tracker

    def issue_of(self, task: Task) -> str | None:
        return task.external_ids.get(self.key)

    @abstractmethod
    async def comment(self, issue: str, text: str, *, marker: str) -> None:
        """Comment `text` on the issue once per `marker`."""

    async def upsert_comment(self, issue: str, text: str, *, marker: str) -> None:
        """One comment per `marker`, kept up to date (a tracker that cannot edit comments once)."""
        await self.comment(issue, text, marker=marker)

    async def move(self, issue: str, step: str) -> None:
        """Move the issue as the operator mapped `step` (nothing when unmapped or already there)."""

    async def link(self, issue: str, url: str, title: str) -> None:
        """Link the issue to `url` (the task's pull request), once per URL."""

    async def label(self, issue: str, label: str) -> None:
        """Put `label` on the issue."""

    async def fixed(self, issue: str, text: str, *, marker: str) -> None:
        """The fix was merged: mark the issue so (Sentry: resolved in the next release) and say `text`."""
