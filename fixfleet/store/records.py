"""What the store reads and writes besides tasks: deliveries, outbox rows, task states, and
the conversions between Postgres rows and models."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from fixfleet.models import WORK, NewTask, Task, TaskStatus
from fixfleet.pgtext import storable, storable_json
from fixfleet.store.errors import TaskNotFound


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery: seen once per (source, delivery id)."""

    source: str
    delivery_id: str


@dataclass(frozen=True)
class OutboxItem:
    id: int
    task_id: int
    queue: str
    priority: str
    version: int | None = None  # the task's version it was queued at (None: rows from before 0002)
    action: str = WORK


@dataclass(frozen=True)
class Creation:
    """One create_task call waiting for its batch."""

    new: NewTask
    delivery: Delivery | None
    actor: str

    @property
    def delivery_key(self) -> tuple[str, str] | None:
        return (self.delivery.source, self.delivery.delivery_id) if self.delivery else None

    def row(self) -> tuple[Any, ...]:
        """The values of CREATE_TASKS' per-task arrays."""
        new = self.new
        return (
            new.source.value,
            new.external_ids,
            new.repo,
            new.title,
            new.body,
            new.priority.value,
            new.context,
            self.actor,
            {"source": new.source.value},
        )


@dataclass(frozen=True)
class TaskState:
    id: int
    status: TaskStatus
    priority: str
    seconds_since_update: float
    version: int | None = None


async def init_connection(conn: asyncpg.Connection) -> None:
    for codec in ("json", "jsonb"):
        await conn.set_type_codec(codec, encoder=storable_json, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("text", encoder=storable, decoder=str, schema="pg_catalog", format="text")


def task_from_row(row: asyncpg.Record) -> Task:
    data = dict(row)
    data["cost_usd"] = float(data["cost_usd"])
    return Task.model_validate(data)


MAX_ID = 2**63 - 1


def parse_ref(ref: int | str) -> int:
    """A task is named by its id (`12`) or its key (`FF-12`, any case)."""
    text = str(ref).strip()
    if text.upper().startswith("FF-"):
        text = text[3:]
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:  # ² is a digit to isdigit(), not to int()
        raise TaskNotFound(ref)
    return int(text)


def columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows turned into one list per column: the arrays an unnest($1, $2, ...) takes (text made
    storable here: a text[] argument's elements do not go through the text codec)."""
    return [[storable(v) if isinstance(v, str) else v for v in column] for column in zip(*rows, strict=True)]
