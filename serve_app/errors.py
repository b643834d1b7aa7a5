"""Answers for a dependency that does not answer: 503 with Retry-After, never a 500.

Postgres is the truth: while it is unreachable nothing can be stored, so a webhook must not be
acknowledged. 503 with Retry-After is what GitHub, Sentry and Jira (and the task API's clients)
treat as "deliver again later"; the redelivery is then accepted once (deliveries are unique).
Redis unreachable is answered the same way by the few routes that need it (/metrics).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

import asyncpg
from fastapi import Request
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fixfleet.services import ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # long enough for a restart or a failover to finish, short enough for senders to keep trying
LOG_EVERY_S = 10.0  # under an outage every request fails the same way: one log line now and then says it

# Exception type -> the dependency it means. An OSError here is a connection refused, reset or
# timed out (TimeoutError is one), a missing Unix socket, an unknown host: the app itself does
# no file I/O on a request, so every OSError it meets comes from reaching a service.
UNAVAILABLE: dict[type[Exception], str] = {
    asyncpg.PostgresConnectionError: "Postgres",  # lost mid-query, refused by the server
    asyncpg.exceptions.OperatorInterventionError: "Postgres",  # shutting down, starting up, crash recovery
    asyncpg.exceptions.TooManyConnectionsError: "Postgres",
    asyncpg.InterfaceError: "Postgres",  # only "connection is closed" / "pool is closing", see below
    RedisConnectionError: "Redis",
    RedisTimeoutError: "Redis",
    ServiceUnavailable: "a service fixfleet needs",
    OSError: "a service fixfleet needs",
}

DRIVERS = {"asyncpg": "Postgres", "redis": "Redis"}

OPENAPI_503 = {
    "description": "Postgres or Redis is unreachable: nothing was acknowledged; send it again after Retry-After",
    "headers": {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}},
}

_last_logged = 0.0


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A Starlette exception handler for every type in UNAVAILABLE."""
    if isinstance(exc, asyncpg.InterfaceError) and not _about_a_closed_connection(exc):
        raise exc  # a misuse of the driver is a bug: let it be the 500 it is, with its traceback
    service = _service_of(exc)
    _log_now_and_then(request, service, exc)
    detail = f"{service} is unavailable ({type(exc).__name__}); try again in {RETRY_AFTER_S} s"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _about_a_closed_connection(exc: asyncpg.InterfaceError) -> bool:
    text = str(exc).lower()
    return "closed" in text or "closing" in text


def _service_of(exc: Exception) -> str:
    for kind, service in UNAVAILABLE.items():
        if isinstance(exc, kind) and kind is not OSError:
            return service
    return _driver_in(exc.__traceback__) or "a service fixfleet needs"


def _driver_in(trace: TracebackType | None) -> str | None:
    """Which driver a plain OSError (a refused connection, say) came out of, from its traceback."""
    found = None
    while trace is not None:
        module = trace.tb_frame.f_globals.get("__name__", "")
        found = DRIVERS.get(module.split(".")[0], found)
        trace = trace.tb_next
    return found


def _log_now_and_then(request: Request, service: str, exc: Exception) -> None:
    global _last_logged
    now = time.monotonic()
    if now - _last_logged >= LOG_EVERY_S:
        _last_logged = now
        log.warning("%s %s answered 503: %s is unavailable (%s: %s)", request.method, request.url.path, service,
                    type(exc).__name__, exc)
