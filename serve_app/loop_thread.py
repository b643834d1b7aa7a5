"""An event loop of asyncio's own, on a thread of its own, for an agent replica's work.

Ray installs uvloop in its workers, and Serve runs a replica's code on a uvloop loop. uvloop
starts a subprocess (git, the sandbox, the claude CLI: an agent starts many) with libuv's fork
and waits on the loop's thread until the child has exec'd; in a Ray worker, with its many
threads, that wait held an agent's loop (py-spy during a CI run: a planner's loop thread inside
create_subprocess_exec in every dump over 8 s; in one e2e run an executor's heartbeat, due every
1.3 s, stopped for minutes and its task stuck). asyncio's own loop starts a child with CPython's
_posixsubprocess (vfork, then exec, no Python in between) and watches it from a thread.

The replica's methods, on Serve's loop, hand the agent's coroutines over with `run`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        # uvloop's policy (Ray's) watches no child processes; asyncio's default one does. Only
        # loops made from now on use it: Serve's own loops in this process stay as they are.
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on this loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def close(self, timeout_s: float = 10.0) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
