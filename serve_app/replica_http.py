"""What the HTTP server of each ingress replica does around a webhook, before the app sees it.

Serve runs this module's `middlewares` on every replica's own uvicorn server when the node's
environment names it (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, fixfleet/platform.py's
SERVE_NODE_ENV and the RayService's pods): Serve's documented per-request opt-outs, asked for
webhooks only.

A webhook runs to its end once it has begun: its sender hanging up, or Serve's request timeout,
would cancel the handler between the signature check and the commit of its delivery, which the
sender then redelivers anyway (the delivery id makes the second one a duplicate, answered as
such). Its time is bounded by the store's own limits (fixfleet/services.py: connect and command
timeouts) instead. Serve then also skips the tasks it runs per request to watch for both (a task
relaying the request's body, one more around the app's call, a wait on the two): measured on
bench/ingress.py, a few per cent of a replica's CPU per webhook.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

WEBHOOKS = "/webhooks/"
UNINTERRUPTED = (
    (b"x-request-disconnect-disabled", b"?1"),  # no cancelling when the client disconnects
    (b"x-request-timeout-seconds", b"0"),  # 0 or less: no Serve timeout for this request
)


class UninterruptedWebhooks:
    """Pure ASGI (no Starlette request object): it only appends two headers to a webhook's scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(WEBHOOKS):
            scope["headers"] = [*scope["headers"], *UNINTERRUPTED]
        await self.app(scope, receive, send)


def middlewares() -> list[Middleware]:
    """RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH's callback: Starlette middlewares for the server."""
    return [Middleware(UninterruptedWebhooks)]
