"""The FastAPI application: every HTTP endpoint of fixfleet, built in one place.

`create_app()` is what both Ray Serve (serve_app/deployment.py) and plain uvicorn run.
Bad input is answered with a 4xx and a reason, never a 500; Postgres or Redis unreachable with a
503 and Retry-After (serve_app/errors.py), so senders deliver again instead of losing the event.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fixfleet.approvals import Refused, StaleApproval
from fixfleet.config import Settings
from fixfleet.integrations.http import IntegrationError
from fixfleet.repos import InvalidRepo
from fixfleet.store import (
    IllegalTransition,
    SessionNotFound,
    StaleVersion,
    TaskNotFound,
)
from serve_app import ops, sessions_api, tasks_api, webhooks
from serve_app.console.mount import mount_console
from serve_app.context import lifespan_for
from serve_app.errors import (
    OPENAPI_503,
    UNAVAILABLE,
    invalid_request,
    one_error_shape,
    unavailable,
)
from serve_app.schemas import ErrorOut

ERROR_STATUS = {StaleApproval: 409, TaskNotFound: 404, SessionNotFound: 404, IllegalTransition: 409, StaleVersion: 409, Refused: 403, InvalidRepo: 422,
                IntegrationError: 502}


def create_app(settings: Settings | None = None, *, singletons: bool = True) -> FastAPI:
    """`singletons`: also run the platform's once-only jobs here (uvicorn, tests); the Serve
    application runs them in its Relay deployment (serve_app/context.py's app_context)."""
    app = FastAPI(
        title="fixfleet",
        version="0.1.0",
        description="Production errors and tickets in, tested pull requests out.",
        lifespan=lifespan_for(settings, singletons=singletons),
    )
    outage = {503: {"model": ErrorOut, **OPENAPI_503}}  # any route may meet an outage: documented on each
    for router in (webhooks.router, tasks_api.router, tasks_api.tokens_router, sessions_api.router, ops.router):
        app.include_router(router, responses=outage)
    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, _answer_with(status))
    for error in UNAVAILABLE:
        app.add_exception_handler(error, unavailable)
    app.add_exception_handler(RequestValidationError, invalid_request)
    mount_console(app)  # the web console at /ui/ (after the API's error answers: it keeps them outside /ui)
    _document_one_error_shape(app)
    return app


def _document_one_error_shape(app: FastAPI) -> None:
    """/openapi.json says what invalid_request answers: 422 is an ErrorOut like every other error."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = one_error_shape(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign] - FastAPI's documented way to change the document


def _answer_with(status: int):
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler
