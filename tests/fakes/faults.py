"""A FakeService that can be told to fail: `fail_next(path_regex, status, retry_after)`.

Injected failures are answered before the auth check and the routes (as a gateway or rate
limiter in front of the real API would), and the call is still recorded. State changes happen
under one lock, so concurrent requests see a consistent fake.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.base import Call, FakeService, Reply
from tests.fakes.published import PublishedApi


@dataclass
class Fault:
    pattern: re.Pattern[str]
    status: int
    retry_after: float | None = None
    remaining: int | None = 1  # None: forever
    method: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0


class FakeAPI(FakeService):
    published_api: str | None = None  # tests/fakes/apis/<name>.json: what every request is checked against

    def __init__(self) -> None:
        super().__init__()
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self.crashes: list[Exception] = []
        self.unpublished: list[str] = []  # requests refused for not being in the provider's published API
        self.published = PublishedApi.load(self.published_api) if self.published_api else None

    def check_published(self, call: Call) -> Reply | None:
        """404 (no such operation) or 422 (a body the schema refuses) for a request the provider does
        not publish; recorded in `unpublished` too."""
        if self.published is None:
            return None
        problem = self.published.check(call.method, call.path, call.body)
        if problem is None:
            return None
        self.unpublished.append(problem)
        return Reply(422 if "body breaks" in problem else 404, {"message": problem})

    def __exit__(self, *exc: object) -> None:
        """Stop; a request the provider does not publish fails the test even where the client
        took the refusal quietly (a 404 read as "none")."""
        self.stop()
        if self.unpublished and exc[0] is None:
            raise AssertionError(f"requests not in the published API: {self.unpublished}")

    def stop(self) -> None:
        """Like FakeService.stop, without waiting out serve_forever's 0.5 s poll: a connection
        wakes it as soon as the shutdown is asked for."""
        server = self._server
        if server is None:
            return
        stopping = threading.Thread(target=server.shutdown, daemon=True)
        stopping.start()
        while stopping.is_alive():
            try:
                socket.create_connection(server.server_address[:2], timeout=1).close()
            except OSError:
                pass
            stopping.join(0.02)
        server.server_close()
        self._server = None

    def fail_next(
        self,
        path_regex: str,
        status: int = 500,
        retry_after: float | None = None,
        *,
        times: int | None = 1,
        method: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """The next `times` calls whose path matches `path_regex` (re.search) answer `status`
        (with Retry-After when given); `times=None` fails for ever."""
        fault = Fault(re.compile(path_regex), status, retry_after, times, method,
                      body if body is not None else {"message": f"injected {status}"}, dict(headers or {}))
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def calls_to(self, path_regex: str, method: str | None = None) -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if pattern.search(c.path) and (method is None or c.method == method)]

    def _injected(self, call: Call) -> Reply | None:
        for fault in self.faults:
            if fault.remaining == 0 or (fault.method and fault.method != call.method):
                continue
            if fault.pattern.search(call.path):
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                headers = dict(fault.headers)
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                return Reply(fault.status, fault.body, headers)
        return None

    def unauthorized(self, call: Call) -> Reply:
        """The answer to a call with a missing or wrong credential (each API words it its own way)."""
        return Reply(401, {"message": "Bad credentials"})

    def dispatch(self, call: Call) -> Reply:
        with self.lock:
            injected = self._injected(call)
            if injected is not None:
                return injected
            if (refused := self.check_published(call)) is not None:
                return refused
            if not self.authorized(call):
                return self.unauthorized(call)
            try:
                return super().dispatch(call)
            except Exception as exc:  # a bug in the fake: answer (and keep) it rather than drop the connection
                self.crashes.append(exc)
                return Reply(500, {"message": f"the fake crashed: {exc!r}"})
