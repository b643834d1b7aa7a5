"""What every route needs, opened once per process (replica) in the app's lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from fastapi import FastAPI, Request

from actors.credentials import TokenManager
from fixfleet.approvals import Approvals
from fixfleet.commands.handlers import Commands
from fixfleet.commands.notices import ForgeOwnerNotice
from fixfleet.config import Settings, load_settings
from fixfleet.loops import Loops
from fixfleet.metrics import Metrics
from fixfleet.outbox import OutboxRelay
from fixfleet.providers import Providers, connect
from fixfleet.redact import Redactor, redact_logs
from fixfleet.services import Services, open_services
from fixfleet.session_upkeep import run_session_upkeep
from serve_app.tokens import ApiToken, load_tokens

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    settings: Settings
    services: Services
    providers: Providers  # the forges and the chat commands are answered on
    approvals: Approvals
    tokens: list[ApiToken]
    metrics: Metrics
    credentials: TokenManager
    commands: Commands
    loops: Loops  # what became of pull requests; closing a rejected task's PR


@asynccontextmanager
async def app_context(settings: Settings, *, singletons: bool = True) -> AsyncIterator[AppContext]:
    """What the routes need, and the outbox relay for what this process commits (woken directly:
    no NOTIFY per commit, no other process in a webhook's path to its queue). `singletons`: also
    the jobs a platform runs once (the reconciler, the session upkeep, closing the loops), and the
    relay hears every process's commits (plain uvicorn, tests); in the Serve application the Relay
    deployment runs them."""
    tokens = load_tokens(settings.api_tokens)
    if settings.jira_webhook_secret is None and settings.jira_allow_unsigned:
        log.warning("FIXFLEET_JIRA_ALLOW_UNSIGNED=true: Jira webhooks are accepted unsigned, from anyone who can "
                    "reach /webhooks/jira (narrow it with FIXFLEET_JIRA_IP_ALLOWLIST)")
    async with open_services(settings, pool_size=20) as services:
        redactor = Redactor.from_settings(settings)
        redact_logs(redactor)
        providers = connect(settings, redactor)
        approvals = Approvals(services.store, settings, providers.forges)
        loops = Loops(settings, services.store, providers)
        ctx = AppContext(
            settings=settings,
            services=services,
            providers=providers,
            approvals=approvals,
            commands=Commands(services.store, approvals, notice=ForgeOwnerNotice(providers.forges),
                              on_decision=loops.decided_soon),
            loops=loops,
            tokens=tokens,
            metrics=Metrics(),
            credentials=TokenManager(settings),
        )
        stop = asyncio.Event()
        relay = OutboxRelay(services.store, services.queues, poll_s=settings.outbox_poll_s, listen=singletons,
                            reconcile_every_s=settings.reconcile_s if singletons else None,
                            claimed_stale_s=settings.claimed_stale_s)
        background = [asyncio.create_task(ctx.metrics.flush_every(services.redis, stop)),
                      asyncio.create_task(relay.run(stop))]
        if singletons:
            background.append(asyncio.create_task(run_session_upkeep(services.store, settings, stop)))
            background.append(asyncio.create_task(loops.run(stop)))
        try:
            yield ctx
        finally:
            stop.set()
            for task in background:
                with suppress(Exception):
                    await asyncio.wait_for(task, 5)
            await providers.aclose()


# Python collects its youngest generation every 700 container allocations (net) by default, and a
# webhook's parsing, validation and SQL allocate far more, so collections ran all the time, each
# promoting a request's live objects towards the generations full collections walk. Every 10,000
# lets most of a request's garbage die by reference count first: under bench/ingress.py's load the
# collector's share of an ingress process's CPU fell from 3.9% (Serve replica) and 2.5% (uvicorn
# worker) to too little for perf to sample.
YOUNG_COLLECTION_EVERY = 10_000


def lifespan_for(settings: Settings | None, *, singletons: bool = True):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with app_context(settings or load_settings(), singletons=singletons) as ctx:
            app.state.ctx = ctx
            # What the app holds once it is up lives as long as it does: Python's full collections
            # then walk only what requests made. Walking the whole heap took 100-300 ms on a busy
            # machine, every few transcript pages (each makes some 20,000 objects). Garbage is
            # collected first (never frozen), and the app's objects thawed when it stops (tests
            # run many apps in one process).
            gc.collect()
            gc.freeze()
            thresholds = gc.get_threshold()
            gc.set_threshold(YOUNG_COLLECTION_EVERY, *thresholds[1:])
            try:
                yield
            finally:
                gc.set_threshold(*thresholds)
                gc.unfreeze()

    return lifespan


async def get_ctx(request: Request) -> AppContext:
    # async on purpose, like every dependency of the app: FastAPI runs a plain `def` dependency in
    # a worker thread, and on a Serve replica's loop (no root task for anyio to find) each request
    # started and stopped a thread of its own for it (profiled: ~1/4 of the replica's CPU).
    return request.app.state.ctx
