"""Recording one session in the store as it runs, without ever making the session wait.

    recorder = SessionRecorder(store, NewSession(...))
    await recorder.open()                  # the session's row, before the CLI starts
    recorder.add(bodies)                   # from the SDK loop: never blocks, never raises
    await recorder.close(SessionEnd(...))  # what is left is written, then the outcome

`add` numbers the messages and puts them in a bounded buffer; a background writer sends them in
batches (every `flush_s`, or at once when `batch` are waiting), one round trip per batch. While
nothing happens it still tells the store every `beat_s` that the session is alive, so a session
whose agent died (kill -9, a lost node) is found silent and marked cut short by the upkeep.

A store that is away fails nothing: batches wait in the buffer and go when it is back. A buffer
that fills up drops the newest messages (their numbers leave a gap) and the session's row counts
them in `dropped`; so do messages still waiting when `close` runs out of time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from itertools import islice
from typing import Protocol

from fixfleet.sessions import (
    MessageBody,
    NewSession,
    SessionEnd,
    SessionMessage,
    SessionRecord,
)
from fixfleet.worker import cancel_and_wait

log = logging.getLogger(__name__)


class SessionSink(Protocol):
    """Where sessions are recorded: fixfleet.store.Store (fixfleet/store/sessions.py)."""

    async def start_session(self, new: NewSession) -> SessionRecord: ...

    async def append_messages(self, session_id: int, messages: Sequence[SessionMessage]) -> int: ...

    async def end_session(self, session_id: int, end: SessionEnd) -> SessionRecord: ...


class SessionRecorder:
    def __init__(self, sink: SessionSink, new: NewSession, *, flush_s: float = 0.2, batch: int = 200,
                 buffer_max: int = 2000, beat_s: float = 5.0, retry_max_s: float = 5.0) -> None:
        self.sink, self.new = sink, new
        self.flush_s, self.batch, self.buffer_max, self.beat_s, self.retry_max_s = (
            flush_s, batch, buffer_max, beat_s, retry_max_s)
        self.record: SessionRecord | None = None  # the row, once the store has made it
        self.dropped = 0
        self.written = 0
        self._seq = 0
        self._buffer: deque[SessionMessage] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._failing_since: float | None = None

    @property
    def record_id(self) -> int | None:
        return self.record.id if self.record else None

    async def open(self, timeout_s: float = 5.0) -> None:
        """Make the session's row (a kill from now on leaves it) and start the writer. A store
        that does not answer within `timeout_s` does not hold the session up: the writer makes
        the row later, with the messages waiting for it."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._write()
        self._writer = asyncio.create_task(self._write_loop(), name=f"recorder-{self.new.cli_session_id}")

    def add(self, bodies: Iterable[MessageBody]) -> None:
        """Number the messages and queue them for writing: for the SDK loop, which must never wait."""
        at = datetime.now(UTC)
        for body in bodies:
            self._seq += 1
            if len(self._buffer) >= self.buffer_max:
                self.dropped += 1
                continue
            self._buffer.append(SessionMessage(seq=self._seq, at=at, **dict(body)))
        if len(self._buffer) >= self.batch and self._failing_since is None:  # a failing store keeps its pace
            self._wake.set()

    async def close(self, end: SessionEnd, timeout_s: float = 10.0) -> SessionRecord | None:
        """Write what is waiting, then how the session ended, within `timeout_s`: what the store
        did not take by then is dropped (and counted, if the store takes the ending). Returns the
        ended row, or None when the store never recorded the session."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        if self._writer is not None:
            done, _ = await asyncio.wait({self._writer}, timeout=max(0.1, timeout_s - 2))
            if not done:  # a writer stuck in a store call: a cancellation lost there must not hold the close
                await cancel_and_wait(self._writer)
        self.dropped += len(self._buffer)
        self._buffer.clear()
        if self.record is None:
            log.warning("session %s was not recorded: the store did not answer", self.new.cli_session_id)
            return None
        try:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                self.record = await self.sink.end_session(self.record.id, end.model_copy(update={"dropped": self.dropped}))
        except Exception as exc:  # noqa: BLE001 - the row stays "running": the upkeep marks it cut short later
            log.warning("session %s: its ending was not recorded (%s)", self.record.id, _reason(exc))
        if self.dropped:
            log.warning("session %s: %d message(s) were not recorded", self.record.id, self.dropped)
        return self.record

    # --- the writer ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        last_word, pause = time.monotonic(), self.flush_s
        while not (self._closing and not self._buffer):
            if not self._closing:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
                self._wake.clear()
            elif pause > self.flush_s:
                await asyncio.sleep(pause)  # closing, and the store is away: keep trying until close gives up
            if not self._buffer and time.monotonic() - last_word < self.beat_s:
                continue
            if await self._write():
                last_word, pause = time.monotonic(), self.flush_s
            else:
                pause = min(self.retry_max_s, pause * 2)

    async def _write(self) -> bool:
        """Send what waits, batch by batch (or only a sign of life); False when the store did not
        take it: it stays in the buffer for the next try."""
        try:
            if self.record is None:
                self.record = await self.sink.start_session(self.new)
            sent_any = False
            while self._buffer or not sent_any:
                batch = list(islice(self._buffer, self.batch))
                self.written += await self.sink.append_messages(self.record.id, batch)
                for _ in batch:
                    self._buffer.popleft()
                sent_any = True
        except Exception as exc:  # noqa: BLE001 - whatever the store's trouble, the session goes on
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("session %s: the store does not take its records (%s); they wait in memory",
                            self.new.cli_session_id, _reason(exc))
            return False
        if self._failing_since is not None:
            log.info("session %s: the store takes its records again after %.1f s", self.new.cli_session_id,
                     time.monotonic() - self._failing_since)
            self._failing_since = None
        return True


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
