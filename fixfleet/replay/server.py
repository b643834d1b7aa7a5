"""A local stand-in for the Anthropic Messages API that replays a scenario.

The real claude CLI talks to it through `ANTHROPIC_BASE_URL`. It answers `POST /v1/messages`
streamed (SSE, the same events as the real API) or as plain JSON, `count_tokens`, and the
CLI's side requests (titles, summaries) without consuming scenario turns. Every request is
recorded so tests can assert what the CLI sent.

    with ReplayServer("executor_tdd", variables={"worktree": str(tree)}) as server:
        env["ANTHROPIC_BASE_URL"] = server.url
        ...
        assert server.main_requests()[-1].branch == "passed"
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from fixfleet.replay.scenario import Block, Choice, ErrorSpec, Scenario, Usage, choose, fill

# Error bodies exactly as the API sends them: {"type": "error", "error": {type, message}}.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {429: "Rate limited", 500: "Internal server error", 529: "Overloaded"}
TEXT_CHUNK = 48  # characters per text_delta / input_json_delta, like a real stream


class RecordedRequest(BaseModel):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    received_at: float  # time.monotonic(), comparable with the caller's clock
    kind: str  # main | side | count_tokens | other
    turn_index: int | None = None
    turn_name: str | None = None
    branch: str | None = None
    status: int = 200
    failure: str | None = None  # the injected error, if this attempt got one

    def text(self) -> str:
        """The whole request as one string, for "does X appear anywhere" assertions."""
        return json.dumps({"headers": self.headers, "body": self.body, "query": self.query})


class ReplayServer:
    def __init__(
        self,
        scenario: Scenario | str | Path | dict[str, Any],
        host: str = "127.0.0.1",
        port: int = 0,
        variables: dict[str, str] | None = None,
        record_path: Path | None = None,
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else Scenario.load(scenario)
        self.host, self.port = host, port
        self.variables = dict(variables or {})
        self.record_path = record_path
        self.requests: list[RecordedRequest] = []
        self._failures_served: dict[int, int] = defaultdict(int)  # turn index -> count
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ReplayServer:
        """Serve from a background thread with its own event loop; returns once listening."""
        self._thread = threading.Thread(target=self._serve, name="replay-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = self._loop = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:  # reported to start()'s caller
            self._start_error = error
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        app = build_app(self)
        # A short shutdown timeout: a stalled request must not hold stop() for long.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False,
                                     access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()  # wakes every stall
        await self._runner.cleanup()

    async def start_async(self) -> ReplayServer:
        """Serve on the caller's own event loop (foreground mode, `python -m fixfleet.replay`)."""
        await self._startup()
        return self

    async def stop_async(self) -> None:
        await self._shutdown()

    # -- queries for tests -------------------------------------------------------------------

    def main_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "main"]

    def branches(self) -> list[str]:
        """Branches taken by successful main requests, in order."""
        return [r.branch for r in self.main_requests() if r.branch and r.failure is None]

    def first_request_at(self) -> float | None:
        return self.requests[0].received_at if self.requests else None

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._failures_served.clear()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> RecordedRequest | None:
        """Block until a recorded request satisfies `predicate` (for thread-side tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for request in list(self.requests):
                if predicate(request):
                    return request
            time.sleep(0.02)
        return None

    # -- internals used by the handlers ------------------------------------------------------

    def _record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)
        if self.record_path is not None:
            with self.record_path.open("a") as out:
                out.write(entry.model_dump_json() + "\n")

    def _should_fail(self, choice: Choice) -> ErrorSpec | None:
        """The turn's error, while it has been served fewer than `times` times."""
        error = choice.error
        if error is None:
            return None
        with self._lock:
            if self._failures_served[choice.turn_index] >= error.times:
                return None
            self._failures_served[choice.turn_index] += 1
        return error


# -- HTTP --------------------------------------------------------------------------------------


def build_app(server: ReplayServer) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/messages", partial(handle_messages, server))
    app.router.add_post("/v1/messages/count_tokens", partial(handle_count_tokens, server))
    app.router.add_get("/v1/models", partial(handle_models, server))
    app.router.add_route("*", "/{tail:.*}", partial(handle_unknown, server))
    return app


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def _recorded(request: web.Request, body: Any, kind: str) -> RecordedRequest:
    return RecordedRequest(
        method=request.method, path=request.path, query=dict(request.query),
        headers=dict(request.headers), body=body, received_at=time.monotonic(), kind=kind,
    )


def error_response(status: int, message: str | None = None,
                   retry_after: float | None = None) -> web.Response:
    kind = ERROR_TYPES.get(status, "api_error")
    headers = {"request-id": _id("req"), "x-should-retry": "true" if status >= 429 else "false"}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    body = {"type": "error", "error": {"type": kind,
                                       "message": message or ERROR_MESSAGES.get(status, kind)}}
    return web.json_response(body, status=status, headers=headers)


async def handle_unknown(server: ReplayServer, request: web.Request) -> web.Response:
    entry = _recorded(request, await _read_json(request), "other")
    entry.status = 404
    server._record(entry)
    return error_response(404, f"{request.method} {request.path} is not served by the replay")


async def handle_models(server: ReplayServer, request: web.Request) -> web.Response:
    server._record(_recorded(request, None, "other"))
    model = server.scenario.model or "claude-sonnet-4-5"
    return web.json_response({"data": [{"type": "model", "id": model, "display_name": model,
                                        "created_at": "2025-01-01T00:00:00Z"}],
                              "has_more": False, "first_id": model, "last_id": model})


async def handle_count_tokens(server: ReplayServer, request: web.Request) -> web.Response:
    body = await _read_json(request)
    server._record(_recorded(request, body, "count_tokens"))
    # A rough estimate is all the CLI needs (context-window bookkeeping).
    return web.json_response({"input_tokens": max(1, len(json.dumps(body)) // 4)})


def is_side_request(body: dict[str, Any]) -> bool:
    """The CLI's own small-model calls (session titles, summaries, topic checks).

    The agent loop always sends its tool list; side requests carry none and usually ask a
    small model. They get a short text and never consume a scenario turn.
    """
    return not body.get("tools")


async def handle_messages(server: ReplayServer, request: web.Request) -> web.StreamResponse:
    body = await _read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        entry = _recorded(request, body, "other")
        entry.status = 400
        server._record(entry)
        return error_response(400, "messages: field required")
    if is_side_request(body):
        server._record(_recorded(request, body, "side"))
        side = Choice(turn_index=-1, turn_name="side", branch=None,
                      content=[Block(text=server.scenario.side_text)],
                      usage=Usage(input_tokens=50, output_tokens=8), stop_reason="end_turn",
                      error=None, delay_s=0.0)
        return await answer(server, request, body, side, None)
    choice = choose(server.scenario, body["messages"])
    failure = server._should_fail(choice)
    entry = _recorded(request, body, "main")
    entry.turn_index, entry.turn_name = choice.turn_index, choice.turn_name
    entry.branch = choice.branch
    if failure is not None:
        entry.failure = failure.kind if failure.kind != "status" else str(failure.status)
        entry.status = failure.status if failure.kind == "status" else 200
    server._record(entry)
    return await answer(server, request, body, choice, failure)


async def answer(server: ReplayServer, request: web.Request, body: dict[str, Any],
                 choice: Choice, failure: ErrorSpec | None) -> web.StreamResponse:
    if failure is not None and failure.kind == "status":
        return error_response(failure.status, failure.message, failure.retry_after)
    if failure is not None and failure.kind == "stall" and failure.after_events == 0:
        await _stall(server, failure.seconds)  # not even the headers
        _drop_connection(request)
        return web.Response(status=500)  # never reaches the client: the socket is gone
    message = build_message(server, body, choice)
    if not body.get("stream"):
        return web.json_response(message, headers={"request-id": _id("req")})
    return await stream_message(server, request, message, choice, failure)


_WORKING_DIRECTORY = re.compile(r"[Ww]orking directory: ([^\s\"\\]+)")


def request_variables(server: ReplayServer, body: dict[str, Any]) -> dict[str, str]:
    """The server's variables plus `{cwd}`: the session's working directory, as the CLI states
    it in its prompt ("Primary working directory: …"), so one scenario serves any worktree."""
    found = _WORKING_DIRECTORY.search(json.dumps(body.get("messages", [])[:2]) + json.dumps(body.get("system")))
    return ({"cwd": found.group(1)} if found else {}) | server.variables


def build_message(server: ReplayServer, body: dict[str, Any], choice: Choice) -> dict[str, Any]:
    content = []
    variables = request_variables(server, body)
    for block in choice.content:
        if block.text is not None:
            content.append({"type": "text", "text": fill(block.text, variables)})
        else:
            assert block.tool_use is not None
            content.append({
                "type": "tool_use", "id": block.tool_use.id or _id("toolu"),
                "name": block.tool_use.name, "input": fill(block.tool_use.input, variables),
            })
    return {
        "id": _id("msg"), "type": "message", "role": "assistant",
        "model": server.scenario.model or body.get("model") or "claude-sonnet-4-5",
        "content": content, "stop_reason": choice.stop_reason, "stop_sequence": None,
        "usage": choice.usage.model_dump(),
    }


def sse_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence of the real streaming API for one complete message."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**usage, "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening, deltas = {"type": "text", "text": ""}, [
                {"type": "text_delta", "text": part} for part in _chunks(block["text"])]
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": part}
                      for part in _chunks(json.dumps(block["input"]))]
        events.append(("content_block_start",
                       {"type": "content_block_start", "index": index, "content_block": opening}))
        events += [("content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta})
                   for delta in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


async def stream_message(server: ReplayServer, request: web.Request, message: dict[str, Any],
                         choice: Choice, failure: ErrorSpec | None) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "content-type": "text/event-stream", "cache-control": "no-cache",
        "request-id": _id("req"),
    })
    await response.prepare(request)
    try:
        for sent, (event, data) in enumerate(sse_events(message)):
            if failure is not None and sent == failure.after_events:
                if failure.kind == "stall":
                    await _stall(server, failure.seconds)
                _drop_connection(request)  # a stream cut mid-way (or after the stall)
                return response
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            if choice.delay_s:
                await asyncio.sleep(choice.delay_s)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away (a killed CLI): nothing to finish
    return response


async def _stall(server: ReplayServer, seconds: float) -> None:
    """Send nothing for `seconds`, but wake at once when the server stops."""
    assert server._stopping is not None
    try:
        await asyncio.wait_for(server._stopping.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _drop_connection(request: web.Request) -> None:
    """Close the socket under the response: the client sees a truncated stream."""
    if request.transport is not None:
        request.transport.abort()


def _chunks(text: str) -> list[str]:
    return [text[i:i + TEXT_CHUNK] for i in range(0, len(text), TEXT_CHUNK)] or [""]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"

