"""What the chaos tests share: private Redis and Postgres servers a test may kill and start again,
signed webhooks as their senders make them, a concurrent sender, and the one JSON line of figures.

The servers are private (a free port, a temporary directory) so that killing them touches
nothing else on the machine: never the shared Redis on 6379 or the shared Postgres on 5432.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from fixfleet.config import Settings
from fixfleet.ports import free_port
from fixfleet.intake.signatures import sentry_headers, sign_github
from tests.corpus import CORPUS
from tests.slate import TABLES

GITHUB_SECRET, SENTRY_SECRET = "chaos-github-secret", "chaos-sentry-secret"
REPO = "https://github.com/acme/api.git"
TOKEN = "chaos-token"  # every scope: the suite approves plans through the task API like a person would


# --- private servers ---------------------------------------------------------------------------


def _wait_until(ready: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout_s:.0f} s")
        time.sleep(0.05)


def _end(process: subprocess.Popen | None, first: signal.Signals) -> None:
    """Stop a server this suite started (its own process group), then make sure it is gone."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(first)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its group: a postmaster's backends too
        process.wait(timeout=15)


class PrivateRedis:
    """A redis-server with no persistence: killed and started again, it comes back EMPTY."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        _wait_until(self._answers, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """kill -9: no shutdown, no save; whatever it held is gone."""
        _end(self.process, signal.SIGKILL)
        self.process = None

    def _answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited")
        try:
            with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False


def _postgres_bin(name: str) -> str:
    """The server's tools sit beside the `postgres` binary (pg_isready is not linked into /usr/local/bin)."""
    return str(Path(os.path.realpath(shutil.which("postgres") or "/usr/local/bin/postgres")).parent / name)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """initdb and postgres refuse to run as root: as root, run them as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists for the server")


class PrivatePostgres:
    """A Postgres cluster in a temporary directory, on a free port, stopped and started at will."""

    def __init__(self) -> None:
        self.user = _unprivileged_user()
        self.dir = Path(tempfile.mkdtemp(prefix="fixfleet-chaos-pg-"))  # not under pytest's 0700 root-only tmp
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen | None = None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)

    def _as_user(self) -> dict[str, Any]:
        return {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def init(self) -> None:
        subprocess.run([_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=self.dir, **self._as_user())

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - the server writes to it for its whole life
        self.process = subprocess.Popen(
            [_postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=log, stderr=log, cwd=self.dir, start_new_session=True, **self._as_user(),
        )
        log.close()
        _wait_until(self._accepts, f"postgres on port {self.port}")

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT): every connection dropped at once, no checkpoint, as in a crash."""
        _end(self.process, signal.SIGQUIT)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accepts(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"postgres exited; see {self.dir / 'server.log'}")
        ready = subprocess.run([_postgres_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                               check=False)
        return ready.returncode == 0


# --- the application's settings and a clean database ------------------------------------------


def chaos_settings(database_url: str, redis_url: str, home: Path, **overrides: Any) -> Settings:
    """Secrets, a repository and a token with every scope; fast leases and retries for tests."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "home": home,
        "github_webhook_secret": GITHUB_SECRET,
        "sentry_client_secret": SENTRY_SECRET,
        "api_tokens": json.dumps([{"name": "chaos", "token": TOKEN, "scopes": ["read", "submit", "approve"]}]),
        "default_repo": REPO,
        "repo_allowlist": ["https://github.com/acme/*"],
        "lease_s": 1.0,
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
        "max_attempts": 5,
        "outbox_poll_s": 0.1,
        **overrides,
    }
    return Settings.model_validate(values)


async def empty_tables(database_url: str) -> None:
    """The database is one per pytest session: each test starts on empty tables."""
    conn = await asyncpg.connect(database_url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('tasks') IS NOT NULL")
        if exists:
            await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


# --- webhooks as their senders make them ------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    """One signed delivery: redelivering it sends these same bytes and delivery id again."""

    path: str
    body: bytes
    headers: dict[str, str]
    delivery: str  # the sender's delivery id
    thing: str  # the external thing it is about (sentry_issue:N, github_issue:o/r#N): one task each


@cache
def _corpus(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / name).read_text())


def sentry_alert(issue_id: int, delivery: str) -> Webhook:
    payload = copy.deepcopy(_corpus("sentry-webhooks/event_alert.triggered.json"))
    payload["data"]["event"]["issue_id"] = str(issue_id)
    body = json.dumps(payload).encode()
    return Webhook("/webhooks/sentry", body, sentry_headers(SENTRY_SECRET, body, delivery), delivery,
                   f"sentry_issue:{issue_id}")


def github_issue(number: int, delivery: str, action: str = "opened") -> Webhook:
    """issues.opened with the fixfleet label, or issues.labeled fixfleet: GitHub sends both for an
    issue created with the label, each with its own delivery id."""
    payload = copy.deepcopy(_corpus(f"github-webhooks/issues.{action}.payload.json"))
    payload["repository"].update(full_name="acme/api", clone_url=REPO, html_url="https://github.com/acme/api")
    payload["issue"].update(number=number, state="open", labels=[{"name": "fixfleet"}], title=f"Crash number {number}")
    if action == "labeled":
        payload["label"] = {"name": "fixfleet"}
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "issues", "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": sign_github(GITHUB_SECRET, body)}
    return Webhook("/webhooks/github", body, headers, delivery, f"github_issue:acme/api#{number}")


# --- sending ------------------------------------------------------------------------------------


@dataclass
class Answer:
    webhook: Webhook
    status: int  # 0: no HTTP answer at all (connection refused, timed out)
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None
    error: str | None = None  # why there was no HTTP answer

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def task(self) -> str | None:
        return self.body.get("task") if self.accepted else None


def client(url: str, concurrency: int) -> httpx.AsyncClient:
    # An idle connection is dropped before uvicorn's own keep-alive timeout (5 s) can close it under
    # a request just being sent on it (the client would see a ReadError: no answer at all).
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(30.0))


async def send(http: httpx.AsyncClient, webhook: Webhook) -> Answer:
    try:
        response = await http.post(webhook.path, content=webhook.body, headers=webhook.headers)
    except httpx.TransportError as exc:
        return Answer(webhook, 0, error=f"{type(exc).__name__}: {exc}")
    try:
        body = response.json()
    except ValueError:
        body = {"raw": response.text[:200]}
    return Answer(webhook, response.status_code, body if isinstance(body, dict) else {}, response.headers.get("retry-after"))


async def send_all(http: httpx.AsyncClient, webhooks: Iterable[Webhook], concurrency: int,
                   on_answer: Callable[[Answer], Awaitable[None]] | None = None) -> list[Answer]:
    """Every webhook sent, at most `concurrency` at once; answers in the order they were sent."""
    gate = asyncio.Semaphore(concurrency)

    async def one(webhook: Webhook) -> Answer:
        async with gate:
            answer = await send(http, webhook)
        if on_answer is not None:
            await on_answer(answer)
        return answer

    return list(await asyncio.gather(*(one(w) for w in webhooks)))


# --- figures ------------------------------------------------------------------------------------


def report(test: str, **figures: Any) -> dict[str, Any]:
    """The test's figures as one JSON line on stdout (pytest -s shows it)."""
    line = {"test": test, **figures}
    print(json.dumps(line, sort_keys=False, default=str))
    return line


def status_counts(answers: Iterable[Answer]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in answers:
        counts[str(answer.status)] = counts.get(str(answer.status), 0) + 1
    return dict(sorted(counts.items()))
