"""A lock across processes (agents on one node share caches), waited for without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path


@contextlib.asynccontextmanager
async def file_lock(path: Path, *, poll_s: float = 0.2) -> AsyncIterator[None]:
    """An exclusive flock on `path` (created if needed), released when the block ends or the
    process dies."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(poll_s)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
