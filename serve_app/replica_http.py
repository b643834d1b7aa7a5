"""What the HTTP server of each ingress replica does with a webhook before Serve's request path.

Serve runs this module's `middlewares` on every replica's own uvicorn server (and on its proxy
actor) when the node's environment names it (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH,
fixfleet/platform.py's SERVE_NODE_ENV and the RayService's pods).

In an ingress replica, a webhook goes straight to the app that replica built (`serve_webhooks_with`,
called by serve_app/deployment.py's `ingress_app`), not through Serve's per-request path: request
metadata, two request ids, route and header matching, the ongoing-request accounting and Serve's
request metrics cost a replica ~0.2 ms of CPU per webhook, a quarter of what the webhook itself
costs (bench/ingress.py: Serve ÷ uvicorn 0.78 with them, ~0.9 without). Nothing a webhook needs
is lost:
- a replica's server starts only once its app has started, so a webhook always finds it;
- when a replica stops, Serve stops its server gracefully before the app's lifespan ends, and
  uvicorn lets every request in flight finish (within graceful_shutdown_timeout_s): an accepted
  webhook is still answered, and a 2xx is still a committed row;
- HAProxy's routing and health checks (/-/healthz) still go through Serve;
- the app counts webhooks itself (fixfleet_webhooks in /metrics); its Postgres pool bounds how
  many write at once, where Serve's max_ongoing_requests would have queued them.
Given up for webhooks: Serve's request metrics and its x-request-id answer header, and counting
toward an ingress autoscaling policy (the ingress runs a fixed number of replicas). Serve's
per-request timeout and disconnect handling would only have cancelled a webhook halfway (its
sender redelivers; the delivery id makes the second one a duplicate): its time is bounded by the
store's own limits (fixfleet/services.py). The route prefix is "/" (cluster/serve_config.yaml).

Elsewhere (Serve's proxy actor, the fallback when no replica is up), webhooks take Serve's path
with Serve's own opt-outs of both for them.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

WEBHOOKS = "/webhooks/"
UNINTERRUPTED = (
    (b"x-request-disconnect-disabled", b"?1"),  # no cancelling when the client disconnects
    (b"x-request-timeout-seconds", b"0"),  # 0 or less: no Serve timeout for this request
)

_replica_app: ASGIApp | None = None  # the app of the ingress replica this process is, once built


def serve_webhooks_with(app: ASGIApp | None) -> None:
    """This process is an ingress replica and `app` its app (None: no longer)."""
    global _replica_app
    _replica_app = app


class WebhooksToTheApp:
    """Pure ASGI (no Starlette request object): routes a webhook, leaves everything else to Serve."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app  # Serve's handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(WEBHOOKS):
            if _replica_app is not None:
                return await _replica_app(scope, receive, send)
            scope["headers"] = [*scope["headers"], *UNINTERRUPTED]
        await self.app(scope, receive, send)


def middlewares() -> list[Middleware]:
    """RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH's callback: Starlette middlewares for the server."""
    return [Middleware(WebhooksToTheApp)]
