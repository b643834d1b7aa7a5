"""Operations: /health (each dependency with a status; 503 and Retry-After when one is down) and /metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Response

from fixfleet.overview import heartbeats
from serve_app.context import AppContext, get_ctx
from serve_app.errors import OPENAPI_503, RETRY_AFTER_S
from serve_app.schemas import CheckOut, HealthOut

router = APIRouter(tags=["operations"])
CRITICAL = ("postgres", "redis")
PROBE_S = 2.0  # a dependency that takes longer than this to answer is down, as far as a caller can tell
HEALTH_503 = {**OPENAPI_503, "description": "Postgres or Redis is down: checks says which and why"}


async def _check(probe) -> CheckOut:
    try:
        detail = await asyncio.wait_for(probe(), PROBE_S)
        return CheckOut(status="ok", detail=detail)
    except Exception as exc:  # a health check reports every failure, it never raises
        return CheckOut(status="down", detail=f"{type(exc).__name__}: {exc}"[:300])


async def _agents(ctx: AppContext) -> CheckOut:
    try:
        beats = await asyncio.wait_for(heartbeats(ctx.services.redis), PROBE_S)
    except Exception as exc:  # redis down is reported by its own check
        return CheckOut(status="unknown", detail=str(exc)[:200])
    if not beats:
        return CheckOut(status="none", detail="no agent has reported yet")
    alive = [b for b in beats if b.state(time.time(), 3 * ctx.settings.lease_s) != "lost"]
    return CheckOut(status="ok" if alive else "stale", detail=f"{len(alive)} of {len(beats)} agents alive")


def _credentials(ctx: AppContext) -> CheckOut:
    status = ctx.credentials.status()
    if not status.get("usable"):
        return CheckOut(status="missing", detail=status.get("error"))
    left = status.get("seconds_left")
    detail = f"{status['kind']} from {status['source']}" + (f", {int(left)} s left" if left is not None else "")
    return CheckOut(status="ok", detail=detail)


def _sandbox(ctx: AppContext) -> CheckOut:
    if ctx.settings.sandbox_enabled:
        return CheckOut(status="on", detail="agents and repository code run in bubblewrap")
    return CheckOut(status="OFF", detail="FIXFLEET_SANDBOX=off: agents and repository code run WITHOUT isolation "
                                         "(trusted local experiments only)")


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut, **HEALTH_503}})
async def health(response: Response, ctx: AppContext = Depends(get_ctx)) -> HealthOut:
    services = ctx.services

    async def postgres() -> str:
        await services.store.pool.fetchval("SELECT 1")
        return "answering"

    async def redis() -> str:
        await services.redis.ping()
        return "answering"

    # Probed together: during an outage /health still answers within one probe's time.
    database, queues, agents = await asyncio.gather(_check(postgres), _check(redis), _agents(ctx))
    checks = {"postgres": database, "redis": queues, "agents": agents, "model_credentials": _credentials(ctx),
              "sandbox": _sandbox(ctx)}
    down = [name for name in CRITICAL if checks[name].status != "ok"]
    if down:  # a load balancer takes this replica out; a person sees which dependency and why
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return HealthOut(status="down" if down else "ok", checks=checks)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(ctx: AppContext = Depends(get_ctx)) -> Response:
    left = ctx.credentials.status().get("seconds_left")
    body = await ctx.metrics.render(ctx.services.store, ctx.services.queues, ctx.services.redis,
                                    lease_s=ctx.settings.lease_s, credential_seconds_left=left)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
