"""The background upkeep of session records, run beside the outbox relay (one process at a time):

- a running session whose recorder has been silent for FIXFLEET_SESSION_SILENT_S lost its agent
  (a replica killed -9, a node gone): it is marked cut short, keeping what it wrote;
- messages of sessions that ended more than FIXFLEET_SESSION_MESSAGES_RETENTION_DAYS ago are
  removed, a batch at a time so no pass holds the table long; the session rows stay.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fixfleet.config import Settings
from fixfleet.store import Store

log = logging.getLogger(__name__)
UPKEEP_LOCK_ID = 0x6669786673  # "fixfs": one session upkeep at a time across processes
PRUNE_BATCH = 5000
MAX_BATCHES = 200  # per pass: a huge backlog is worked off over several passes


@dataclass
class UpkeepReport:
    cut_short: list[int] = field(default_factory=list)  # session ids
    pruned: int = 0  # messages removed
    skipped: bool = False  # another process was at it


async def keep_sessions(store: Store, settings: Settings, *, batch: int = PRUNE_BATCH) -> UpkeepReport:
    """One pass of the upkeep."""
    async with store.try_lock(UPKEEP_LOCK_ID) as held:
        if not held:
            return UpkeepReport(skipped=True)
        report = UpkeepReport(cut_short=await store.cut_short_silent_sessions(settings.session_silent_s))
        if settings.session_messages_retention_days > 0:
            before = datetime.now(UTC) - timedelta(days=settings.session_messages_retention_days)
            for _ in range(MAX_BATCHES):
                removed = await store.prune_messages(before, batch)
                report.pruned += removed
                if removed < batch:
                    break
                await asyncio.sleep(0)  # between batches, the relay's own queries go first
    if report.cut_short or report.pruned:
        log.info("session upkeep: %d session(s) cut short (their agent was gone) %s; %d old message(s) removed",
                 len(report.cut_short), report.cut_short, report.pruned)
    return report


async def run_session_upkeep(store: Store, settings: Settings, stop: asyncio.Event) -> None:
    """A pass every FIXFLEET_RECONCILE_S until `stop`; an outage skips passes, never ends this."""
    while not stop.is_set():
        try:
            await keep_sessions(store, settings)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            log.warning("session upkeep: %s; trying again in %ss", exc, settings.reconcile_s)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.reconcile_s)
