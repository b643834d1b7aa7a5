"""The same functions without `await`, for scripts and for notebooks that prefer them.

Inside Jupyter an event loop is already running, so `asyncio.run` is not allowed there: each call
here runs its coroutine to the end in a worker thread with a loop of its own, and blocks until
then (Ctrl-C / "interrupt kernel" stops waiting; run again to resume). In a notebook, `await
fixfleet.backlog.submit(...)` works directly too, and keeps the kernel responsive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fixfleet.backlog.api import TaskApi
from fixfleet.backlog.items import BacklogItem
from fixfleet.backlog.preview import Plan
from fixfleet.backlog.preview import preview as preview_async
from fixfleet.backlog.runner import RunResult
from fixfleet.backlog.runner import submit as submit_async
from fixfleet.backlog.sources import load_jira as load_jira_async
from fixfleet.backlog.sources import load_sentry as load_sentry_async

T = TypeVar("T")


def run_blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end, whether or not this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1, thread_name_prefix="fixfleet-backlog") as pool:
        return pool.submit(asyncio.run, work).result()


async def _closing(api: TaskApi | None, work: Coroutine[Any, Any, T]) -> T:
    """The API client's connections belong to this call's loop: let them go when it ends."""
    try:
        return await work
    finally:
        if api is not None:
            await api.aclose()


def preview(items: list[BacklogItem], api: TaskApi | None = None, **options: Any) -> Plan:
    return run_blocking(_closing(api, preview_async(items, api, **options)))


def submit(plan: Plan, api: TaskApi, **options: Any) -> RunResult:
    return run_blocking(_closing(api, submit_async(plan, api, **options)))


def load_jira(jql: str, **options: Any) -> list[BacklogItem]:
    return run_blocking(load_jira_async(jql, **options))


def load_sentry(organization: str, project: str, **options: Any) -> list[BacklogItem]:
    return run_blocking(load_sentry_async(organization, project, **options))
