"""The agent actors' lifecycle: start, status and stop as Ray delivers them (interleaved)."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.agent import AgentActor, AgentLoop


class SlowStartLoop(AgentLoop):
    """Counts its starts and stops; starting takes a while, as opening the services does."""

    starts = 0
    stops = 0

    async def start(self) -> None:
        await asyncio.sleep(0.2)
        type(self).starts += 1

    async def stop(self) -> None:
        type(self).stops += 1

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "starts": type(self).starts}


class Actor(AgentActor):
    loop_class = SlowStartLoop


async def test_status_polls_during_a_start_do_not_start_a_second_loop() -> None:
    actor = Actor("executor-1")
    statuses = await asyncio.gather(actor.start(), actor.status(), actor.status())
    assert SlowStartLoop.starts == 1
    assert statuses[1]["starts"] == 1 and statuses[2]["starts"] == 1
    await asyncio.gather(actor.stop(), actor.stop())
    assert SlowStartLoop.stops == 1
    await actor.status()  # after Ray brings an actor back, a status poll starts it again
    assert SlowStartLoop.starts == 2
