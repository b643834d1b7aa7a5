"""Error answers the whole app shares: a dependency that does not answer is a 503 with
Retry-After, never a 500; a request that fails validation is a 422 in the app's one error shape.

Postgres is the truth: while it is unreachable nothing can be stored, so a webhook must not be
acknowledged. 503 with Retry-After is what GitHub, Sentry and Jira (and the task API's clients)
treat as "deliver again later"; the redelivery is then accepted once (deliveries are unique).
Redis unreachable is answered the same way by the few routes that need it (/metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import asyncpg
from fastapi import Request
from fastapi.exceptions import RequestValidationError
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
MAX_REASONS = 10  # a body with a thousand bad fields needs no thousand reasons


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


# --- request validation: one error shape ---------------------------------------------------------


async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422 carries a list of errors; every other error of this API, and its document,
    says {"detail": "<reason>"} (ErrorOut): a client reads one shape."""
    return JSONResponse({"detail": validation_reason(exc.errors())}, status_code=422)


def validation_reason(errors: Sequence[Any]) -> str:
    """`body.title: String should have at least 1 character; query.limit: ...`"""
    reasons = [f"{'.'.join(str(part) for part in e.get('loc', ())) or 'request'}: {e.get('msg', 'invalid')}"
               for e in errors[:MAX_REASONS] if isinstance(e, dict)]
    more = len(errors) - MAX_REASONS
    return "; ".join(reasons + ([f"and {more} more"] if more > 0 else [])) or "the request is not valid"


VALIDATION_REFS = {"#/components/schemas/HTTPValidationError"}
ERROR_OUT = {"$ref": "#/components/schemas/ErrorOut"}
UNREADABLE_BODY = {"description": "The body could not be read (not UTF-8 JSON)",
                   "content": {"application/json": {"schema": ERROR_OUT}}}


def one_error_shape(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as the app answers errors: FastAPI's generated 422 (HTTPValidationError)
    is an ErrorOut (`invalid_request`), and an operation taking a JSON body lists the 400 FastAPI
    answers when that body cannot be decoded at all."""
    for operation in (op for item in document.get("paths", {}).values() for op in item.values()):
        responses = operation.setdefault("responses", {})
        content = responses.get("422", {}).get("content", {}).get("application/json", {})
        if content.get("schema", {}).get("$ref") in VALIDATION_REFS:
            content["schema"] = dict(ERROR_OUT)
        if "application/json" in operation.get("requestBody", {}).get("content", {}):
            responses.setdefault("400", UNREADABLE_BODY)
    schemas = document.get("components", {}).get("schemas", {})
    if "ErrorOut" in schemas:
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
    return document
