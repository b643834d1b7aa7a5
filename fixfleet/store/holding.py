"""A claimed task held for its side effects: see `Store.holding`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from fixfleet.models import Task, TaskStatus

if TYPE_CHECKING:
    from fixfleet.store.tasks import Store


class Hold:
    """The held task and the one transition that ends the hold, on the hold's transaction."""

    def __init__(self, store: Store, conn: asyncpg.Connection, task: Task) -> None:
        self.store, self.conn, self.task = store, conn, task
        self.moved_to: TaskStatus | None = None

    async def transition(self, target: TaskStatus, *, actor: str, reason: str = "",
                         data: dict[str, Any] | None = None, changes: dict[str, Any] | None = None,
                         context: dict[str, Any] | None = None) -> Task:
        task = await self.store._transition(self.conn, self.task.id, target, actor=actor, reason=reason, data=data,
                                            expected_version=self.task.version, changes=changes, context=context)
        self.moved_to, self.task = target, task
        return task
