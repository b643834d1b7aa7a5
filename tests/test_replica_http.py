"""The ingress replicas' HTTP server: webhooks straight to the replica's app, everything else to Serve."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from ray.serve._private.http_util import (
    parse_disconnect_disabled_header,
    parse_request_timeout_header,
    validate_http_proxy_callback_return,
)

from fixfleet.platform import SERVE_NODE_ENV
from serve_app import replica_http, webhooks

WEBHOOK_PATHS = [route.path for route in webhooks.router.routes]
OTHER_PATHS = ["/api/tasks", "/ui/", "/health", "/-/healthz", "/webhooksx"]


class Recorder:
    """Stands where an ASGI app is called: records the scope it was given and answers 200."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(dict(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def replica_app() -> Iterator[Recorder]:
    """This process is an ingress replica whose app is a recorder (serve_app/deployment.py's
    ingress_app registers the real one in each replica)."""
    app = Recorder()
    replica_http.serve_webhooks_with(app)
    yield app
    replica_http.serve_webhooks_with(None)


def server_call(path: str) -> tuple[Recorder, list[dict[str, Any]]]:
    """One request through the callback's middlewares into a stand-in for Serve's handler
    (_direct_ingress_asgi); returns that stand-in and the messages the client was sent."""
    serve_handler, sent = Recorder(), []
    app = serve_handler
    for middleware in reversed(replica_http.middlewares()):
        app = middleware.cls(app, *middleware.args, **middleware.kwargs)
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")]}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, None, send))
    return serve_handler, sent


def test_in_an_ingress_replica_every_webhook_route_goes_to_the_app_and_not_through_serve(
        replica_app: Recorder) -> None:
    assert len(WEBHOOK_PATHS) >= 6
    for path in WEBHOOK_PATHS:
        serve_handler, sent = server_call(path)
        assert serve_handler.scopes == [], path
        assert replica_app.scopes[-1]["path"] == path
        assert replica_app.scopes[-1]["headers"] == [(b"content-type", b"application/json")]  # as sent
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]  # the app's answer
    assert len(replica_app.scopes) == len(WEBHOOK_PATHS)


@pytest.mark.parametrize("path", OTHER_PATHS)
def test_everything_else_takes_serve_s_path_with_serve_s_disconnect_and_timeout_handling(
        replica_app: Recorder, path: str) -> None:
    serve_handler, _ = server_call(path)
    assert replica_app.scopes == []
    headers = dict(serve_handler.scopes[0]["headers"])
    assert parse_disconnect_disabled_header(headers) is False
    assert parse_request_timeout_header(headers, default_timeout_s=30.0) == 30.0


def test_where_no_replica_app_is_serve_neither_cancels_nor_times_out_a_webhook() -> None:
    """Serve's proxy actor loads the callback too (HAProxy's fallback when no replica is up)."""
    for path in WEBHOOK_PATHS:
        serve_handler, _ = server_call(path)
        headers = dict(serve_handler.scopes[0]["headers"])
        assert parse_disconnect_disabled_header(headers) is True, path
        assert parse_request_timeout_header(headers, default_timeout_s=30.0) is None, path
        assert headers[b"content-type"] == b"application/json"  # the sender's own headers are kept


def test_every_ingress_node_loads_the_callback_and_serve_accepts_it() -> None:
    module, _, name = SERVE_NODE_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].partition(":")
    assert (module, name) == (replica_http.__name__, replica_http.middlewares.__name__)
    assert validate_http_proxy_callback_return(replica_http.middlewares())
