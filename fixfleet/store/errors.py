"""The store's typed errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fixfleet.models import Task, TaskStatus


class StoreError(Exception):
    """Base of the store's typed errors."""


class TaskNotFound(StoreError):
    def __init__(self, ref: object) -> None:
        super().__init__(f"no task {ref}")
        self.ref = ref


class IllegalTransition(StoreError):
    def __init__(self, task: Task, target: TaskStatus, *, detail: str = "") -> None:
        super().__init__(detail or f"{task.key} is {task.status}: it cannot become {target}")
        self.task, self.target = task, target


class Refusal(StoreError):
    """A change the task's state does not allow now (answered 409); the message says why."""


class StaleVersion(StoreError):
    def __init__(self, task: Task, expected: int) -> None:
        super().__init__(f"{task.key} is at version {task.version}, not {expected}: it changed meanwhile")
        self.task, self.expected = task, expected
