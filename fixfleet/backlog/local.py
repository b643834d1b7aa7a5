"""A backlog to try on this machine, offline: the platform started here with the scripted model
(fixfleet/replay), two small sample repositories with a real bug each, and a Sentry export of
unresolved issues spread over them. What the notebook uses when it is given no fixfleet URL."""

from __future__ import annotations

import csv
import json
import secrets
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fixfleet.config import load_settings
from fixfleet.demo import SUITE_COMMAND, make_sample_repo
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.ports import free_port

PROJECTS = ("billing", "reports")  # Sentry project slugs, one sample repository each
SENTRY_HEADER = ["issue", "title", "project", "level", "count", "count_unique_user", "last_seen", "issue.id"]


@dataclass
class LocalBacklog:
    url: str
    token: str  # read, submit and approve
    csv_path: Path
    repos: dict[str, str]  # Sentry project -> repository URL


@contextmanager
def local_platform(*, issues: int = 6, executors: int = 3, progress: Callable[[str], None] = print,
                   http_port: int | None = None) -> Iterator[LocalBacklog]:
    """Start the platform here (Ray, the application, Postgres and Redis from DATABASE_URL /
    REDIS_URL or embedded) with the executor pool between 1 and `executors`, and write a backlog of
    `issues` Sentry issues; everything stops when the block ends."""
    from fixfleet.replay import ReplayServer

    root = Path(tempfile.mkdtemp(prefix="fixfleet-backlog-"))
    repos = {project: f"file://{_sample_repo(root, project)}" for project in PROJECTS}
    token = secrets.token_hex(16)
    models = [ReplayServer("demo_planner").start(), ReplayServer("demo_executor").start()]
    options = PlatformOptions(http_port=http_port or free_port(), executors=executors,
                              env=_env(root, repos, token),
                              planner_overrides={"anthropic_base_url": models[0].url},
                              executor_overrides={"anthropic_base_url": models[1].url})
    # A small machine: the pool starts at one executor and grows with the queue, an executor for
    # each task waiting (a backlog of a few tasks rarely queues two per executor).
    settings = load_settings().model_copy(update={"executors_min": 1, "tasks_per_executor": 1})
    keeper = PlatformThread(Platform(settings, options), progress)
    try:
        url = keeper.start_platform()
        yield LocalBacklog(url, token, write_sentry_export(root / "sentry-issues.csv", issues), repos)
    finally:
        progress("stopping the platform")
        keeper.stop_platform()
        for model in models:
            model.stop()


class PlatformThread(threading.Thread):
    """Starts the platform, keeps it, and stops it, in a thread of its own: the platform starts
    and stops with `asyncio.run`, which a notebook's running event loop forbids in its thread; and
    the thread must live as long as the platform, because Ray's node processes die with the
    thread that started them (PR_SET_PDEATHSIG)."""

    def __init__(self, platform: Platform, progress: Callable[[str], None]) -> None:
        super().__init__(name="fixfleet-local-platform", daemon=True)
        self.platform, self.progress = platform, progress
        self.started: Future[str] = Future()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.platform.start(progress=self.progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of start_platform
            self.started.set_exception(exc)
            return
        self.started.set_result(self.platform.url)
        self.stopping.wait()
        try:
            self.platform.stop()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of stop_platform
            self.error = exc

    def start_platform(self) -> str:
        self.start()
        return self.started.result()

    def stop_platform(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join()
        if self.error is not None:
            raise self.error


def _sample_repo(root: Path, project: str) -> Path:
    """The demo's statskit (mean([]) divides by zero) behind a bare remote named for the project."""
    remote = make_sample_repo(root / project)
    return remote.rename(root / f"{project}.git")


def _env(root: Path, repos: dict[str, str], token: str) -> dict[str, str]:
    (root / "no-mcp.json").write_text('{"mcpServers": {}}')
    return {
        "FIXFLEET_API_TOKENS": json.dumps([{"name": "notebook", "token": token,
                                            "scopes": ["read", "submit", "approve"]}]),
        "FIXFLEET_SENTRY_PROJECT_REPOS": json.dumps(repos),
        "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]),
        "FIXFLEET_REPO_ALLOWLIST": json.dumps(list(repos.values())),
        "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"),
        "FIXFLEET_SUITE_COMMAND": SUITE_COMMAND,
        "ANTHROPIC_API_KEY": "offline-backlog-key",
        "FIXFLEET_TASKS_PER_EXECUTOR": "1",  # an executor more for each task waiting: the pool visibly grows
        "FIXFLEET_SCALE_DOWN_AFTER_S": "15",  # the pool shrinks soon after the queue empties
    }


def write_sentry_export(path: Path, issues: int) -> Path:
    """Sentry's Discover export of unresolved issues (its own column names), spread over the
    projects; fresh issue ids each time, so a second run is a second backlog."""
    base = uuid.uuid4().int % 10**9 * 100
    levels = ("fatal", "error", "error", "warning")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SENTRY_HEADER)
        for n in range(issues):
            project = PROJECTS[n % len(PROJECTS)]
            writer.writerow([f"{project.upper()}-{n + 1:X}", "ZeroDivisionError: division by zero", project,
                             levels[n % len(levels)], 1000 - 100 * n, 50 - 5 * n, "2026-11-29T10:00:00+00:00",
                             base + n])
    return path
