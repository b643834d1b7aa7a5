"""JSON log lines for the platform's processes in Ray (ingress, agents, relay).

One object per line: time, level, component (ingress, planner, executor, relay), agent (the
replica's agent name), task (its key) and repository while a task is in hand, logger and
message. The task and repository come from context variables that the agent loop sets around
each task, so every line logged during that task carries them, from whichever module. Records
are redacted where they are made (fixfleet/redact.py); this only lays them out.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar
from datetime import UTC, datetime
from typing import TextIO

_component: ContextVar[str | None] = ContextVar("component", default=None)
_agent: ContextVar[str | None] = ContextVar("agent", default=None)
_task: ContextVar[str | None] = ContextVar("task", default=None)
_repo: ContextVar[str | None] = ContextVar("repo", default=None)
_process = {"component": None, "agent": None}  # this process's defaults, for threads and new tasks alike


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": _component.get() or _process["component"],
            "agent": _agent.get() or _process["agent"],
            "task": _task.get(),
            "repo": _repo.get(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            line["error"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(component: str, *, agent: str | None = None, level: int = logging.INFO,
              stream: TextIO | None = None) -> None:
    """This process logs JSON lines to its original stderr: Ray keeps it in the worker's log file
    (worker-*.err; the dashboard shows it with the replica's actor). Not `sys.stderr`: Serve may
    have replaced it with a stream into its own buffered logger."""
    _process.update(component=component, agent=agent)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "fixfleet_json", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.__stderr__)
    handler.setFormatter(JsonFormatter())
    handler.fixfleet_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


@contextmanager
def task_context(task: str | None = None, repo: str | None = None) -> Iterator[None]:
    """Lines logged inside carry this task (and repository); `bind_task` may refine them."""
    tokens = (_task.set(task), _repo.set(repo))
    try:
        yield
    finally:
        _task.reset(tokens[0])
        _repo.reset(tokens[1])


def adopt_binding(context: Context) -> None:
    """Take over the task and repository a child asyncio task bound in its own `context`, so the
    lines logged after it (its end, its failure) still name them."""
    for var in (_task, _repo):
        if context.get(var) is not None:
            var.set(context[var])


def bind_task(task: str, repo: str) -> None:
    """Name the task in hand once it is known (inside `task_context`)."""
    _task.set(task)
    _repo.set(repo)
