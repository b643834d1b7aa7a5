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
import threading
import time
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
LOUD_EVERY_S = 3600.0  # log_once: the same failure is warned about again after this long
_said: dict[tuple[str, ...], list[float]] = {}  # key -> [when last warned, how many quiet since]
_said_lock = threading.Lock()
_clock = time.monotonic


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


def log_once(logger: logging.Logger, key: tuple[str, ...], message: str, *args: object) -> None:
    """Warn once for `key` (an integration's failure of one kind): the same again within
    LOUD_EVERY_S goes to debug, so an outage that fails every call says so once, and one that
    comes back hours later is told again (with how many went quiet meanwhile)."""
    now = _clock()
    with _said_lock:
        seen = _said.get(key)
        loud = seen is None or now - seen[0] >= LOUD_EVERY_S
        quiet = int(seen[1]) if seen and loud else 0
        if loud:
            _said[key] = [now, 0]
        else:
            seen[1] += 1  # type: ignore[index]
    if not loud:
        logger.debug(message, *args)
    elif quiet:
        logger.warning(message + " (%d more like it since the last warning)", *args, quiet)
    else:
        logger.warning(message, *args)


def reset_log_once() -> None:
    with _said_lock:
        _said.clear()
