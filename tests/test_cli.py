"""The `fixfleet` command as a user runs it: real processes, real Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis.asyncio import Redis

from fixfleet.embedded import EmbeddedServers
from fixfleet.store import Store

pytestmark = pytest.mark.usefixtures("store")  # a clean database for each test


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fixfleet.cli", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FIXFLEET_")}
    return clean | {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FIXFLEET_HOME": str(tmp_path / "home")}


def test_submit_status_and_lifecycle(env: dict[str, str], tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text("Traceback: ZeroDivisionError in stats.mean")
    submitted = run(["submit", "file:///srv/repo.git", "--title", "mean() crashes", "--body-file", str(body), "-p", "high"], env)
    assert submitted.returncode == 0, submitted.stderr
    key = submitted.stdout.strip()
    assert key.startswith("FF-")

    listed = json.loads(run(["tasks", "--json", "--status", "RECEIVED"], env).stdout)
    assert [(t["key"], t["priority"], t["body"]) for t in listed] == [(key, "high", body.read_text())]

    refused = run(["approve", key, "--as", "alice"], env)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error:") and "RECEIVED" in refused.stderr
    assert "Traceback" not in refused.stderr

    cancelled = json.loads(run(["cancel", key, "--as", "bob", "--reason", "duplicate", "--json"], env).stdout)
    assert cancelled["status"] == "CANCELLED"
    shown = json.loads(run(["status", key, "--json"], env).stdout)
    # the refused approval is part of the audit trail, as from every channel
    assert [(e["to_status"], e["actor"]) for e in shown["events"]] == [
        ("RECEIVED", "cli"), (None, "cli:alice"), ("CANCELLED", "cli:bob")]


async def test_approve_and_retry_move_the_task(env: dict[str, str], store: Store) -> None:
    key = run(["submit", "file:///srv/repo.git", "-t", "boom"], env).stdout.strip()
    for status in ("PLANNING", "AWAITING_APPROVAL"):
        await store.transition(key, status, actor="planner")
    await store.update_fields(key, plan_version=2)
    stale = run(["approve", key, "--as", "alice", "--plan-version", "1"], env)
    assert stale.returncode == 1 and "v2" in stale.stderr
    approved = json.loads(run(["approve", key, "--as", "alice", "--plan-version", "2", "--json"], env).stdout)
    assert approved["status"] == "APPROVED"
    await store.transition(key, "EXECUTING", actor="executor")
    await store.transition(key, "FAILED", actor="executor", reason="suite broke")
    retried = json.loads(run(["retry", key, "--json"], env).stdout)
    assert retried["status"] == "APPROVED"  # the approved plan is executed again, not re-planned


def run_at_once(calls: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess]:
    """Independent invocations side by side: a process's start-up is most of its time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: run(*call), calls))


def test_bad_input_is_one_clear_line(env: dict[str, str]) -> None:
    refused_repos = [("not-a-url", "scheme"), ("https://github.com/acme/app.git --upload-pack=x", "spaces"),
                     ("https://bob:pw@github.com/acme/app.git", "credentials")]
    unknown, bad_priority, outside, missing, down, bad_setting, not_json, *refused = run_at_once([
        (["status", "FF-424242"], env),
        (["submit", "file:///r", "-t", "x", "-p", "urgent"], env),
        (["submit", "https://gitlab.example/acme/app.git", "-t", "x"],
         env | {"FIXFLEET_REPO_ALLOWLIST": '["https://github.com/acme/*"]'}),
        (["submit", "file:///r", "-t", "x", "--body-file", "/nonexistent/body"], env),
        (["tasks"], env | {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}),
        (["tasks"], env | {"FIXFLEET_MAX_TURNS": "lots"}),
        (["tasks"], env | {"FIXFLEET_REPO_ALLOWLIST": "*"}),  # a list setting that is not JSON
        *((["submit", repo, "-t", "x"], env) for repo, _ in refused_repos)])
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: no task FF-424242"
    assert bad_priority.returncode == 2 and "urgent" in bad_priority.stderr
    for answer, (_, reason) in zip(refused, refused_repos, strict=True):
        assert answer.returncode == 1 and reason in answer.stderr and "Traceback" not in answer.stderr, answer.stderr
    assert outside.returncode == 1 and "FIXFLEET_REPO_ALLOWLIST" in outside.stderr
    assert json.loads(run(["tasks", "--json"], env).stdout) == []  # nothing refused was stored
    assert missing.returncode == 1 and "cannot read --body-file" in missing.stderr
    assert down.returncode == 1 and "DATABASE_URL" in down.stderr and "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    assert bad_setting.returncode == 1 and "FIXFLEET_MAX_TURNS" in bad_setting.stderr
    assert not_json.returncode == 1 and "Traceback" not in not_json.stderr
    assert not_json.stderr.strip().splitlines() == [
        "error: FIXFLEET_REPO_ALLOWLIST is not valid JSON: give a JSON list or object, "
        "e.g. FIXFLEET_REPO_ALLOWLIST='[\"https://github.com/acme/*\"]'"]


def test_config_masks_every_secret(env: dict[str, str]) -> None:
    secrets = {
        "GITHUB_TOKEN": "ghp_canary123",
        "FIXFLEET_GITHUB_WEBHOOK_SECRET": "hook-canary",
        "ANTHROPIC_API_KEY": "sk-ant-canary",
        "SLACK_BOT_TOKEN": "xoxb-canary",
    }
    shown = run(["config", "--json"], env | secrets | {"DATABASE_URL": "postgresql://u:pw-canary@db/x"})
    assert shown.returncode == 0
    assert "canary" not in shown.stdout
    config = json.loads(shown.stdout)
    assert config["github_token"] == "**********" and config["database_url"] == "postgresql://u:****@db/x"
    assert config["home"] == env["FIXFLEET_HOME"]


@pytest.mark.e2e  # a fresh home's initdb: about 20 s, the default suite's ceiling
def test_embedded_default_round_trip(tmp_path: Path) -> None:
    """No DATABASE_URL or REDIS_URL: private servers start under FIXFLEET_HOME and serve the CLI."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("FIXFLEET_")}
    env["FIXFLEET_HOME"] = str(tmp_path / "ff")
    submitted = run(["submit", "file:///srv/repo.git", "-t", "embedded works", "--json"], env)
    assert submitted.returncode == 0, submitted.stderr
    key = json.loads(submitted.stdout)["key"]
    shown = run(["status", key, "--json"], env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["task"]["title"] == "embedded works"
    assert (tmp_path / "ff" / "postgres").is_dir()
    assert_the_embedded_servers_want_their_password(tmp_path / "ff")


def assert_the_embedded_servers_want_their_password(home: Path) -> None:
    """Another process on the machine (a repository's test, say) reaches the sockets but not the data."""
    import asyncpg
    import redis

    secrets = home / "secrets"
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in secrets.iterdir())
    servers = EmbeddedServers(home)
    try:
        database, cache = servers.postgres_url(), servers.redis_url()
        without = database.replace(f":{servers.password('postgres')}@", ":@")
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(asyncpg.connect(without))
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=cache.rsplit("@", 1)[1]).ping()
        assert redis.Redis.from_url(cache).ping()
    finally:
        servers.stop()


def test_embedded_failure_says_what_to_set(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("FIXFLEET_")}
    failed = run(["tasks"], env | {"FIXFLEET_HOME": str(blocker)})
    assert failed.returncode == 1
    assert "DATABASE_URL" in failed.stderr and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


async def test_reconcile_puts_back_what_redis_lost(env: dict[str, str], redis: Redis) -> None:
    key = run(["submit", "file:///srv/repo.git", "-t", "lost in a Redis restart"], env).stdout.strip()
    streams = [k async for k in redis.scan_iter("fixfleet:planning:*")]
    assert streams and await redis.delete(*streams)
    first = run(["reconcile", "--json"], env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["requeued"] == [int(key.removeprefix("FF-"))]
    assert "none was missing" in run(["reconcile"], env).stdout


def test_up_refuses_to_run_agents_without_the_sandbox_and_says_what_to_install(env: dict[str, str], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a machine with git and python but no bubblewrap
    bin_dir.mkdir()
    for tool in ("git", "socat", "uv"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    refused = run(["up", "--http-port", "1"], env | {"PATH": str(bin_dir)})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "bubblewrap (bwrap) is not installed" in refused.stderr and "apt-get install bubblewrap" in refused.stderr
    assert "FIXFLEET_SANDBOX=off" in refused.stderr  # and the way out for a trusted experiment
