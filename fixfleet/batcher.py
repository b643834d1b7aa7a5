"""Group commit: concurrent calls written as one batch.

While one batch is being written, the calls that arrive meanwhile wait and go out together
as the next batch. A call on its own runs at once; under load, batches grow by themselves
and one round trip and one commit serve many callers. Each caller still awaits its own
result, so nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Writes a batch; returns one result per item, in order, or an exception for an item that failed.
BatchWriter = Callable[[list[Item]], Awaitable[Sequence["Result | BaseException"]]]


class Batcher(Generic[Item, Result]):
    def __init__(self, write: BatchWriter, *, max_size: int = 200) -> None:
        self._write, self.max_size = write, max_size
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        return await future

    async def _write_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
            try:
                results = await self._write([item for item, _ in batch])
            except asyncio.CancelledError:  # shut down: no caller is left waiting forever
                for _, future in batch + self._waiting:
                    future.cancel()
                self._waiting = []
                raise
            except Exception as exc:  # the whole batch failed: every caller hears why
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                _settle(future, result)


def _settle(future: asyncio.Future, result: object) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
