"""The task API: bearer tokens from FIXFLEET_API_TOKENS, each with scopes read, submit, approve."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from fixfleet.approvals import Decision, Principal
from fixfleet.models import LOOKUP_EXTERNAL_KEYS, NewTask, Source, TaskStatus, check_external_id
from fixfleet.repos import validate_repo
from fixfleet.store import Delivery
from serve_app.context import AppContext, get_ctx
from serve_app.schemas import (
    ApproveIn,
    ErrorOut,
    EventOut,
    ReasonIn,
    ReviseIn,
    TaskIn,
    TaskOut,
    TaskPage,
    WhoAmIOut,
)
from serve_app.tokens import ApiToken, Scope, find_token

router = APIRouter(prefix="/tasks", tags=["tasks"])
tokens_router = APIRouter(tags=["tasks"])
ERRORS = {code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422)}
MAX_EXTERNAL_FILTERS = 100


def caller(scope: Scope | None):  # noqa: ANN201 - a FastAPI dependency factory
    """The token presented, if valid and (when `scope` is given) holding that scope."""
    def check(
        ctx: AppContext = Depends(get_ctx),
        authorization: Annotated[str | None, Header(description="Bearer <token>")] = None,
    ) -> ApiToken:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise HTTPException(401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
        token = find_token(ctx.tokens, presented.strip())
        if token is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        if scope is not None and scope not in token.scopes:
            raise HTTPException(403, f"the token {token.name!r} lacks the {scope} scope")
        return token

    return check


def principal(token: ApiToken) -> Principal:
    return Principal(kind="api", name=token.name, scopes=frozenset(token.scopes))


@router.post("", status_code=202, response_model=TaskOut, responses=ERRORS)
async def submit(
    task_in: TaskIn,
    response: Response,
    token: ApiToken = Depends(caller("submit")),
    ctx: AppContext = Depends(get_ctx),
    idempotency_key: Annotated[str | None, Header(max_length=200, description="Retries with the same key make one task")] = None,
) -> TaskOut:
    validate_repo(task_in.repo, ctx.settings)
    new = NewTask(source=Source.API, **task_in.model_dump(), context={"initiator": f"api:{token.name}"})
    delivery = Delivery("api", f"{token.name}:{idempotency_key}") if idempotency_key else None
    task, created = await ctx.services.store.create_task(new, delivery=delivery, actor=f"api:{token.name}")
    ctx.metrics.count("api_calls", "submit")
    if not created:
        response.status_code = 200
    return TaskOut.of(task)


@tokens_router.get("/whoami", response_model=WhoAmIOut, responses=ERRORS)
async def whoami(token: ApiToken = Depends(caller(None))) -> WhoAmIOut:
    """The name and scopes of the token presented: a client can refuse early what it may not do."""
    return WhoAmIOut(name=token.name, scopes=list(token.scopes))


def external_filters(
    external: Annotated[list[str] | None, Query(
        description=f"Only tasks carrying this external id, as key:id (e.g. sentry_issue:123, jira:OPS-7); "
                    f"repeat for any of several, at most {MAX_EXTERNAL_FILTERS}")] = None,
) -> list[tuple[str, str]] | None:
    if external is None:
        return None
    if len(external) > MAX_EXTERNAL_FILTERS:
        raise HTTPException(422, f"at most {MAX_EXTERNAL_FILTERS} external filters per request")
    pairs = []
    for item in external:
        key, colon, value = item.partition(":")
        try:
            if not colon:
                raise ValueError("write it as key:id, e.g. sentry_issue:123")
            check_external_id(key, value, keys=LOOKUP_EXTERNAL_KEYS)
        except ValueError as exc:
            raise HTTPException(422, f"external={item[:60]!r}: {exc}") from None
        pairs.append((key, value))
    return pairs


@router.get("", response_model=TaskPage, responses=ERRORS)
async def list_tasks(
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    external: list[tuple[str, str]] | None = Depends(external_filters),
    _: ApiToken = Depends(caller("read")),
    ctx: AppContext = Depends(get_ctx),
) -> TaskPage:
    tasks = await ctx.services.store.list_tasks(statuses=status, external=external, limit=limit + 1, offset=offset)
    more = len(tasks) > limit
    return TaskPage(items=[TaskOut.of(t) for t in tasks[:limit]], limit=limit, offset=offset,
                    next_offset=offset + limit if more else None)


@router.get("/{ref}", response_model=TaskOut, responses=ERRORS)
async def get_task(ref: str, _: ApiToken = Depends(caller("read")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    return TaskOut.of(await ctx.services.store.get_task(ref))


@router.get("/{ref}/events", response_model=list[EventOut], responses=ERRORS)
async def task_events(ref: str, _: ApiToken = Depends(caller("read")), ctx: AppContext = Depends(get_ctx)) -> list[EventOut]:
    return [EventOut.of(e) for e in await ctx.services.store.events(ref)]


@router.post("/{ref}/approve", response_model=TaskOut, responses=ERRORS)
async def approve(ref: str, body: ApproveIn, token: ApiToken = Depends(caller("approve")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    return TaskOut.of(await ctx.approvals.decide(principal(token), ref, Decision.APPROVE, plan_version=body.plan_version,
                                                 note=body.note))


@router.post("/{ref}/reject", response_model=TaskOut, responses=ERRORS)
async def reject(ref: str, body: ReasonIn, token: ApiToken = Depends(caller("approve")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    return TaskOut.of(await ctx.approvals.decide(principal(token), ref, Decision.REJECT, feedback=body.reason))


@router.post("/{ref}/revise", response_model=TaskOut, responses=ERRORS)
async def revise(ref: str, body: ReviseIn, token: ApiToken = Depends(caller("approve")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    return TaskOut.of(await ctx.approvals.decide(principal(token), ref, Decision.REVISE, feedback=body.feedback))


@router.post("/{ref}/cancel", response_model=TaskOut, responses=ERRORS)
async def cancel(ref: str, body: ReasonIn, token: ApiToken = Depends(caller("submit")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    task = await ctx.services.store.transition(ref, TaskStatus.CANCELLED, actor=f"api:{token.name}", reason=body.reason or "cancelled")
    return TaskOut.of(task)


@router.post("/{ref}/retry", response_model=TaskOut, responses=ERRORS)
async def retry(ref: str, token: ApiToken = Depends(caller("submit")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    return TaskOut.of(await ctx.services.store.retry(ref, actor=f"api:{token.name}"))
