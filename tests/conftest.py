"""Shared fixtures: a private database per test run on the real Postgres, the real Redis.

DATABASE_URL / REDIS_URL name the servers; without them the embedded servers are started.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.queue import Queue
from fixfleet.scratch import create_database, drop_database, named_redis_db, redis_db_url
from fixfleet.services import make_queues
from fixfleet.store import Store
from tests.slate import empty_tables

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 set, which would fix the width of the
# CLI's rich consoles (made at import) at 80 columns; the tests give each CLI call its own width.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

# Tests commit in throwaway repositories: give git an identity on machines with none.
for _name, _value in {"GIT_AUTHOR_NAME": "fixfleet tests", "GIT_AUTHOR_EMAIL": "tests@fixfleet.invalid",
                      "GIT_COMMITTER_NAME": "fixfleet tests", "GIT_COMMITTER_EMAIL": "tests@fixfleet.invalid"}.items():
    os.environ.setdefault(_name, _value)

TEST_REDIS_DB = 13  # a database of its own so the suite never touches real data
# pytest-xdist's further workers (gw1, gw2, ...) take these, so that no two flush each other's
# data (10-12, 14, 15 are the benchmarks', test_serve's and the demo test's).
XDIST_REDIS_DBS = (9, 8, 7, 6, 5, 4, 3)


FAST_SUITE = "not (e2e or chaos or cluster or image)"  # pyproject.toml's addopts -m


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (addopts) asks here. The fast default suite: a worker per core, at most four,
    since it waits on git, the sandbox and Postgres far more than it computes (in one process it
    kept two cores 37% busy). A marked suite (`-m e2e`, ...): one process, as each of its modules
    starts whole platforms."""
    if config.option.markexpr != FAST_SUITE:
        return 0
    return min(os.cpu_count() or 1, 1 + len(XDIST_REDIS_DBS), 4)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that ran against a whole platform (tests/world.py's `world`) reports the
    platform's last log lines: the agents' side of what the test saw, kept in CI's output."""
    report = yield
    world = getattr(item, "funcargs", {}).get("world")
    if report.failed and call.when == "call" and hasattr(world, "last_log_lines"):
        try:
            report.sections.append(("the platform's last log lines", "\n".join(world.last_log_lines())))
        except Exception as exc:  # noqa: BLE001 - the report stands without them
            report.sections.append(("the platform's last log lines", f"not read: {exc!r}"))
    return report


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServers]:
    servers = EmbeddedServers(tmp_path_factory.mktemp("embedded"))
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def postgres_server_url(embedded: EmbeddedServers) -> str:
    return os.environ.get("DATABASE_URL") or embedded.postgres_url()


@pytest.fixture(scope="session")
def redis_server_url(embedded: EmbeddedServers) -> str:
    return os.environ.get("REDIS_URL") or embedded.redis_url()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    url = asyncio.run(create_database(postgres_server_url))
    yield url
    asyncio.run(drop_database(postgres_server_url, url))


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> str:
    """db 13, unless REDIS_URL names another non-zero database: runs side by side on one server
    (worktrees, CI shards) each name their own, and the suite flushes only that one. db 0 (where
    real data usually lives) is never used. The second and later xdist workers take one each of
    XDIST_REDIS_DBS."""
    named = named_redis_db(os.environ.get("REDIS_URL"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])
    return redis_db_url(redis_server_url, XDIST_REDIS_DBS[worker - 1] if worker else named or TEST_REDIS_DB)


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        home=tmp_path / "home",
        lease_s=1.0,
        retry_backoff_s=0.05,
        retry_backoff_max_s=0.2,
        max_attempts=3,
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.connect(database_url, max_size=8)
    await empty_tables(store.pool)
    yield store
    await store.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def queues(redis: Redis, settings: Settings) -> dict[str, Queue]:
    return make_queues(redis, settings)


@pytest.fixture(scope="session")
def sandbox_pytest_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding pytest, made like a repository environment, for sandboxed sessions."""
    env = tmp_path_factory.mktemp("pytest-env") / "env"
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(["uv", "venv", "--quiet", "--python", str(python), str(env)], check=True)
    subprocess.run(["uv", "pip", "install", "--quiet", "--python", str(env / "bin" / "python"), "pytest"], check=True)
    return env
