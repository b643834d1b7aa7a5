"""Locks across processes (agents on one node share caches): flocks, released when the holder
closes its descriptor or dies; waited for without blocking the event loop, or taken only if free."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path


def try_flock(descriptor: int) -> bool:
    """Take the exclusive flock on an open descriptor if nobody holds it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.asynccontextmanager
async def file_lock(path: Path, *, poll_s: float = 0.2) -> AsyncIterator[None]:
    """An exclusive flock on `path` (created if needed), held for the block."""
    descriptor = _open(path)
    try:
        while not try_flock(descriptor):
            await asyncio.sleep(poll_s)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


@contextlib.contextmanager
def held_if_free(path: Path) -> Iterator[bool]:
    """The flock on `path` for the block if it is free now (True), else nothing (False)."""
    descriptor = _open(path)
    try:
        yield try_flock(descriptor)
    finally:
        os.close(descriptor)
