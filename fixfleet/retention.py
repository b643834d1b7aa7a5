"""Retention: nothing on disk grows per task without a bound.

What old closed tasks leave in Postgres (the task, its audit trail, its outbox rows) and old
webhook delivery ids are deleted on a schedule, as long after as the settings say
(FIXFLEET_TASK_RETENTION_DAYS, FIXFLEET_DELIVERY_RETENTION_DAYS; 0 keeps them). Logs rotate
where they are written (fixfleet/platform.py for Ray's and the platform's, fixfleet/embedded.py
for the embedded servers'). Run once per application, in the relay deployment.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from fixfleet.config import Settings
from fixfleet.store import Store
from fixfleet.store.queueing import Purged

log = logging.getLogger(__name__)
DAY_S = 24 * 3600.0


class Retention:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings

    async def run_once(self) -> Purged:
        purged = await self.store.purge(closed_for_s=_seconds(self.settings.task_retention_days),
                                        deliveries_for_s=_seconds(self.settings.delivery_retention_days))
        if purged.tasks or purged.deliveries:
            log.info("retention: deleted %d closed task(s) older than %s days and %d webhook delivery id(s) older "
                     "than %s days", purged.tasks, self.settings.task_retention_days, purged.deliveries,
                     self.settings.delivery_retention_days)
        return purged

    async def run(self, stop: asyncio.Event) -> None:
        """Purge now, then every `retention_check_s`, until stopped; a failed pass waits for the next."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # an outage of Postgres: the next pass catches up
                log.warning("retention pass failed: %s", exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.retention_check_s)


def _seconds(days: float) -> float | None:
    return days * DAY_S if days > 0 else None
