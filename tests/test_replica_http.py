"""The ingress replicas' HTTP server: webhooks run to their end, everything else as Serve does it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.serve._private.http_util import (
    parse_disconnect_disabled_header,
    parse_request_timeout_header,
    validate_http_proxy_callback_return,
)

from fixfleet.platform import SERVE_NODE_ENV
from serve_app import replica_http, webhooks


def headers_seen_by_serve(path: str) -> dict[bytes, bytes]:
    """The headers Serve's direct-ingress handler reads, after the callback's middlewares ran."""
    seen: dict[str, Any] = {}

    async def serve_handler(scope, receive, send) -> None:  # stands where Serve's _direct_ingress_asgi is
        seen.update(scope)

    app = serve_handler
    for middleware in reversed(replica_http.middlewares()):
        app = middleware.cls(app, *middleware.args, **middleware.kwargs)
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(app(scope, None, None))
    return dict(seen["headers"])


def test_serve_neither_cancels_nor_times_out_any_webhook_route_of_the_app() -> None:
    paths = [route.path for route in webhooks.router.routes]
    assert len(paths) >= 6
    for path in paths:
        headers = headers_seen_by_serve(path)
        assert parse_disconnect_disabled_header(headers) is True, path
        assert parse_request_timeout_header(headers, default_timeout_s=30.0) is None, path
        assert headers[b"content-type"] == b"application/json"  # the sender's own headers are kept


@pytest.mark.parametrize("path", ["/api/tasks", "/ui/", "/health", "/webhooksx"])
def test_other_requests_keep_serve_s_disconnect_and_timeout_handling(path: str) -> None:
    headers = headers_seen_by_serve(path)
    assert parse_disconnect_disabled_header(headers) is False
    assert parse_request_timeout_header(headers, default_timeout_s=30.0) == 30.0


def test_every_ingress_node_loads_the_callback_and_serve_accepts_it() -> None:
    module, _, name = SERVE_NODE_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].partition(":")
    assert (module, name) == (replica_http.__name__, replica_http.middlewares.__name__)
    assert validate_http_proxy_callback_return(replica_http.middlewares())
