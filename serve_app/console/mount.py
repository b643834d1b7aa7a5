"""The console, served by the same application at /ui/: its routes, static files, headers, errors.

Every response under /ui carries a Content-Security-Policy that allows scripts, styles and
requests from this origin only (no inline script, no inline handler, no eval, no framing), and
pages are never cached.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fixfleet.store import TaskNotFound
from serve_app.console import actions, pages, signin
from serve_app.console.auth import CsrfRefused, SignInRequired

STATIC = Path(__file__).parent / "static"
PREFIX = "/ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class ConsoleHeaders:
    """Adds HEADERS to every response under /ui (and `no-store` to all but the static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        static = path.startswith(PREFIX + "/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def error_page(status: int, message: str, request: Request) -> HTMLResponse:
    if request.headers.get("hx-request"):  # a poll: nothing is swapped in (the page keeps what it shows)
        return HTMLResponse("", status_code=status)
    return pages.render("error.html", status=status, viewer=None, flash=None, code=status, message=message)


async def sign_in_first(request: Request, _: Exception) -> Response:
    target = f"{PREFIX}/login?next={quote(request.url.path)}"
    if request.headers.get("hx-request"):  # a poll after the session ended: the whole page goes to sign-in
        return Response(status_code=401, headers={"HX-Redirect": target})
    if request.method == "GET":
        return RedirectResponse(target, status_code=303)
    return error_page(401, "Sign in first: this console shows nothing without a session.", request)


async def csrf_refused(request: Request, exc: Exception) -> Response:
    return error_page(403, f"Refused: {exc}", request)


def _pages_or_api(app: FastAPI, error: type[Exception], status: int):
    """Under /ui an HTML page; elsewhere the answer the app gave before (the API's JSON)."""
    api = app.exception_handlers.get(error)

    async def handler(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(PREFIX + "/") or api is None:
            return error_page(status, str(exc), request)
        return await api(request, exc)

    return handler


def mount_console(app: FastAPI) -> None:
    for router in (signin.router, pages.router, actions.router):
        app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_middleware(ConsoleHeaders)
    app.add_exception_handler(SignInRequired, sign_in_first)
    app.add_exception_handler(CsrfRefused, csrf_refused)
    for error, status in ((TaskNotFound, 404), (pages.SessionNotFound, 404), (actions.UnknownAction, 404),
                          (pages.BadQuery, 422)):
        app.add_exception_handler(error, _pages_or_api(app, error, status))
