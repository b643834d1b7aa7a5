"""The only path from the sandbox to the Messages API, adding the real key on the way.

The CLI inside the sandbox holds a per-session dummy key and reaches this proxy (a Unix socket,
bridged to 127.0.0.1 by socat); the proxy swaps the dummy for the real credential, which so
never enters the sandbox, and streams the answer back as it arrives. It forwards exactly the
endpoints the CLI needs (ENDPOINTS), judged on the path as upstream would resolve it and sent
by its canonical form; anything else is answered here (403, 400 for a target that is not a
path) and never reaches upstream. A plain asyncio object: start it on the event loop that
should serve it (`async with`, or `start()` / `close()`).
"""

from __future__ import annotations

import inspect
import logging
import posixpath
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, Self
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from fixfleet.workspace.egress import (
    HOP_BY_HOP,
    named_by_connection,
    prepare_socket_path,
)

log = logging.getLogger(__name__)

CredentialKind = Literal["api_key", "oauth_token"]
Credential = tuple[CredentialKind, str]
ANTHROPIC_API = "https://api.anthropic.com"
OAUTH_BETA = "oauth-2025-04-20"
SESSION_KEY_PREFIX = "sk-ant-fixfleet-session-"
MAX_MODEL_REQUEST_BYTES = 64 * 1024 * 1024  # long contexts; aiohttp's default 1 MiB is too small
# What the CLI needs, and nothing else: files, batches, admin and organisation endpoints would
# spend or read the platform's account with its real key.
ENDPOINTS = frozenset({("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("GET", "/v1/models")})
MAX_DECODINGS = 4
_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")  # RFC 3986 query characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

def api_error(status: int, kind: str, message: str) -> web.Response:
    """An error exactly as the Messages API words it, so the CLI reports it sensibly."""
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}},
                             status=status)


def upstream_headers(incoming: MultiMapping[str], kind: CredentialKind, secret: str) -> CIMultiDict[str]:
    """The client's headers minus its (dummy) auth and hop-by-hop ones, plus the real credential."""
    connection = named_by_connection(incoming.getall("connection", []))
    drop = HOP_BY_HOP | connection | {"host", "content-length", "x-api-key", "authorization",
                                      "accept-encoding"}
    headers = CIMultiDict((name, value) for name, value in incoming.items() if name.lower() not in drop)
    headers["accept-encoding"] = "identity"  # bytes pass through untouched, nothing to re-encode
    if kind == "api_key":
        headers["x-api-key"] = secret
        return headers
    headers["authorization"] = f"Bearer {secret}"
    betas = [beta.strip() for value in headers.popall("anthropic-beta", [])
             for beta in value.split(",") if beta.strip()]
    headers["anthropic-beta"] = ",".join(betas + ([OAUTH_BETA] if OAUTH_BETA not in betas else []))
    return headers


def response_headers(incoming: MultiMapping[str]) -> CIMultiDict[str]:
    """Upstream's headers for the client. Content-Encoding passes through with the raw bytes."""
    connection = named_by_connection(incoming.getall("connection", []))
    drop = HOP_BY_HOP | connection | {"content-length"}
    return CIMultiDict((name, value) for name, value in incoming.items() if name.lower() not in drop)


class NotForwarded(Exception):
    """A request the proxy answers itself: `status` and the reason, nothing sent upstream."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def endpoint(method: str, target: str) -> tuple[str, str]:
    """(canonical path, raw query) of a request to forward, from its request line's target.

    Only ENDPOINTS, judged on the path as upstream would read it: percent-decoded, `\\` as `/`,
    `//` and `.`/`..` segments resolved. The canonical path is what goes upstream, never the
    path as sent. Raises NotForwarded: 400 for a target that is not an origin-form path, 403
    for anything but ENDPOINTS."""
    if not target.startswith("/"):  # absolute-form (a URL), authority-form (CONNECT), `*`
        raise NotForwarded(400, "the request target must be a path (origin-form), not a URL or an authority")
    path, _, query = target.partition("?")
    if "#" in target:
        raise NotForwarded(400, "a fragment (#) has no place in a request target")
    if not _QUERY.fullmatch(query):
        raise NotForwarded(400, "the query string holds characters a query may not")
    canonical = normalized_path(path)
    if (method, canonical) not in ENDPOINTS:
        shown = canonical if len(canonical) < 120 else canonical[:117] + "..."
        raise NotForwarded(403, f"{method} {shown} is not an endpoint the sandbox may use; only "
                                + ", ".join(f"{m} {p}" for m, p in sorted(ENDPOINTS)))
    return canonical, query


def normalized_path(path: str) -> str:
    """The path as a server would resolve it: decoded until stable, `\\` read as `/`, then
    `//`, `.` and `..` resolved (never above the root)."""
    decoded = path
    for _ in range(MAX_DECODINGS):
        try:
            again = unquote(decoded, errors="strict")
        except UnicodeDecodeError:
            raise NotForwarded(403, "the path is not UTF-8 once decoded") from None
        if again == decoded:
            break
        decoded = again
    else:
        raise NotForwarded(403, f"the path is percent-encoded more than {MAX_DECODINGS} times over")
    if _CONTROL.search(decoded):
        raise NotForwarded(403, "control characters in the path")
    normal = posixpath.normpath("/" + decoded.replace("\\", "/"))
    return re.sub("/+", "/", normal)


class ModelProxy:
    """The Messages API as the sandbox sees it: dummy session keys in, the real credential out.

        async with ModelProxy(sock, None, lambda: ("api_key", vault.key())) as proxy:
            key = proxy.add_session()  # ANTHROPIC_API_KEY=key inside the sandbox
            ...
            proxy.remove_session(key)

    `credential()` is called per request (keys rotate) and may be sync or async; it must not
    block the loop. The secret is never stored, logged or shown in repr.
    """

    def __init__(self, socket_path: Path, upstream: str | None,
                 credential: Callable[[], Credential | Awaitable[Credential]], *,
                 connect_timeout_s: float = 15, trust_env: bool = False) -> None:
        self.socket_path = Path(socket_path)
        self.upstream = URL(upstream or ANTHROPIC_API)
        self.connect_timeout_s = connect_timeout_s
        self.trust_env = trust_env  # True: honour HTTPS_PROXY on the platform side
        self.requests: dict[str, int] = {}
        self.refused: list[tuple[str, str, int]] = []  # (method, target, status) answered here, not forwarded
        self._credential = credential
        self._sessions: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        upstream = self.upstream.with_user(None).with_query(None)
        return (f"ModelProxy(socket={str(self.socket_path)!r}, upstream={str(upstream)!r}, "
                f"sessions={len(self._sessions)})")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add_session(self) -> str:
        key = SESSION_KEY_PREFIX + secrets.token_urlsafe(24)
        self._sessions.add(key)
        self.requests[key] = 0
        return key

    def remove_session(self, key: str) -> int:
        """Revoke a dummy key; returns how many requests it forwarded."""
        self._sessions.discard(key)
        return self.requests.pop(key, 0)

    async def start(self) -> ModelProxy:
        prepare_socket_path(self.socket_path)
        self._client = aiohttp.ClientSession(
            # No total timeout: a session streams for minutes. Connecting must be quick.
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s,
                                          sock_connect=self.connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=0),  # a pool cap would queue live sessions
            auto_decompress=False, trust_env=self.trust_env, skip_auto_headers=("User-Agent",))
        # Every request goes to _handle, whatever its method or target (the router would answer
        # a CONNECT or an odd target itself): one place decides what is forwarded.
        app = web.Application(client_max_size=MAX_MODEL_REQUEST_BYTES, middlewares=[self._every_request])
        # handler_cancellation: a client that goes away cancels its handler, which closes the
        # upstream stream at once instead of at its next chunk.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        log.info("model proxy listening on %s for %s", self.socket_path, self.upstream.host)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.socket_path.unlink(missing_ok=True)

    @web.middleware
    async def _every_request(self, request: web.Request, handler: object) -> web.StreamResponse:
        return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            path, query = endpoint(request.method, request.raw_path)
        except NotForwarded as refused:
            self.refused.append((request.method, request.raw_path[:200], refused.status))
            log.warning("model proxy: refused %s %r (%d): %s", request.method, request.raw_path[:200],
                        refused.status, refused.reason)
            kind = "invalid_request_error" if refused.status == 400 else "permission_error"
            return api_error(refused.status, kind, refused.reason)
        key = self._session_of(request)
        if key is None:
            log.warning("model proxy: %s %s without a session key", request.method, path)
            return api_error(401, "authentication_error",
                             "invalid x-api-key: not a session key issued by the fixfleet proxy")
        try:
            kind, secret = await self._current_credential()
        except Exception as error:  # noqa: BLE001 - its message might quote the secret: type only
            log.error("model proxy: credential() failed (%s)", type(error).__name__)
            return api_error(500, "api_error", "the platform has no usable model credential")
        headers = upstream_headers(request.headers, kind, secret)
        body = await request.read()
        target = path + (f"?{query}" if query else "")
        return await self._forward(request, target, key, headers, body)

    async def _forward(self, request: web.Request, target: str, key: str, headers: CIMultiDict[str],
                       body: bytes) -> web.StreamResponse:
        """Send the checked `target` (canonical path and query), never the path as it came."""
        assert self._client is not None
        url = URL(str(self.upstream).rstrip("/") + target, encoded=True)
        try:
            upstream = await self._client.request(request.method, url, headers=headers,
                                                  data=body or None, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("model proxy: %s unreachable (%s)", self.upstream.host, type(error).__name__)
            return api_error(502, "api_error", f"model API unreachable ({type(error).__name__})")
        if key in self.requests:
            self.requests[key] += 1
        log.debug("model proxy: %s %s -> %d", request.method, target, upstream.status)
        async with upstream:
            return await relay(request, upstream)

    def _session_of(self, request: web.Request) -> str | None:
        """The registered dummy key the request carries; None if any key it shows is unknown."""
        presented = request.headers.getall("x-api-key", [])
        for value in request.headers.getall("authorization", []):
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer":
                return None
            presented.append(token)
        presented = [key.strip() for key in presented]
        if not presented or any(key not in self._sessions for key in presented):
            return None
        return presented[0]

    async def _current_credential(self) -> Credential:
        result = self._credential()
        kind, secret = await result if inspect.isawaitable(result) else result
        secret = secret.strip()  # a key file's trailing newline would be an invalid header
        usable = secret.isascii() and secret.isprintable() and " " not in secret
        if kind not in ("api_key", "oauth_token") or not secret or not usable:
            raise ValueError("unusable credential")  # no detail: it would be the secret
        return kind, secret


async def relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Stream upstream's answer to the client chunk by chunk, as it arrives (SSE)."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=response_headers(upstream.headers))
    finished = False
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        finished = True
    except ConnectionResetError:
        log.debug("model proxy: client left mid-stream")
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("model proxy: upstream stream broke (%s)", type(error).__name__)
        if request.transport is not None:
            request.transport.abort()  # the client must see a cut stream, not a clean end
    finally:
        if not finished:
            upstream.close()  # stop reading upstream (also when the handler is cancelled)
    return response
