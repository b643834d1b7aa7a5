"""The task API: bearer tokens from FIXFLEET_API_TOKENS, each with scopes read, submit, approve."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from fixfleet.approvals import Decision, Principal, Scope
from fixfleet.commands import parse_invocation, unknown_reply
from fixfleet.commands.handlers import NeedsTask
from fixfleet.models import (
    LOOKUP_EXTERNAL_KEYS,
    NewTask,
    Source,
    TaskStatus,
    check_external_id,
)
from fixfleet.repos import validate_repo
from fixfleet.store import Delivery, Outcome, Refusal
from serve_app.context import AppContext, get_ctx
from serve_app.schemas import (
    ApproveIn,
    AssignIn,
    CommandIn,
    CommandOut,
    ErrorOut,
    EventOut,
    PriorityIn,
    ReasonIn,
    ReviseIn,
    TaskIn,
    TaskOut,
    TaskPage,
    WhoAmIOut,
)
from serve_app.tokens import ApiToken, find_token

router = APIRouter(prefix="/tasks", tags=["tasks"])
tokens_router = APIRouter(tags=["tasks"])
commands_router = tokens_router  # routes outside /tasks: /whoami, /queue, /commands
ERRORS = {code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422)}
MAX_EXTERNAL_FILTERS = 100


def caller(scope: Scope | None):
    """The token presented, if valid and (when `scope` is given) holding that scope."""
    async def check(  # async: a plain def would run in a worker thread (see get_ctx)
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
    task, outcome = await ctx.services.store.create_or_find(new, delivery=delivery, actor=f"api:{token.name}")
    ctx.metrics.count("api_calls", "submit")
    if outcome is not Outcome.CREATED:  # the same Idempotency-Key again, or an open task about the same thing
        response.status_code = 200
    return TaskOut.of(task)


@tokens_router.get("/whoami", response_model=WhoAmIOut, responses=ERRORS)
async def whoami(token: ApiToken = Depends(caller(None))) -> WhoAmIOut:
    """The name and scopes of the token presented: a client can refuse early what it may not do."""
    return WhoAmIOut(name=token.name, scopes=list(token.scopes))


async def external_filters(  # async: no worker thread (see get_ctx)
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
    task = await ctx.approvals.decide(principal(token), ref, Decision.APPROVE, plan_version=body.plan_version,
                                      note=body.note)
    await ctx.loops.decided_soon(task)  # the chat's buttons replaced by the decision
    return TaskOut.of(task)


@router.post("/{ref}/reject", response_model=TaskOut, responses=ERRORS)
async def reject(ref: str, body: ReasonIn, token: ApiToken = Depends(caller("approve")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    task = await ctx.approvals.decide(principal(token), ref, Decision.REJECT, feedback=body.reason)
    await ctx.loops.decided_soon(task)  # its draft pull request closed, the trackers and the chat told
    return TaskOut.of(task)


@router.post("/{ref}/revise", response_model=TaskOut, responses=ERRORS)
async def revise(ref: str, body: ReviseIn, token: ApiToken = Depends(caller("approve")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    task = await ctx.approvals.decide(principal(token), ref, Decision.REVISE, feedback=body.feedback)
    await ctx.loops.decided_soon(task)
    return TaskOut.of(task)


async def run_command(ctx: AppContext, token: ApiToken, name: str, ref: str | None, **args: Any) -> CommandOut:
    """A command through the one handler every channel uses (fixfleet/commands/handlers.py)."""
    try:
        result = await ctx.commands.run(principal(token), name, task_ref=ref, args=args)
    except Refusal as refusal:
        raise HTTPException(409, str(refusal)) from None
    except NeedsTask as exc:
        raise HTTPException(422, str(exc)) from None
    ctx.metrics.count("api_calls", name)
    return CommandOut(text=result.text, task=TaskOut.of(result.task) if result.task else None)


@router.post("/{ref}/cancel", response_model=TaskOut, responses=ERRORS)
async def cancel(ref: str, body: ReasonIn, token: ApiToken = Depends(caller("submit")),
                 ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    """Stop the task for good; an agent working on it is stopped within seconds and pushes nothing."""
    return (await run_command(ctx, token, "cancel", ref, reason=body.reason)).task


@router.post("/{ref}/pause", response_model=TaskOut, responses=ERRORS)
async def pause(ref: str, body: ReasonIn, token: ApiToken = Depends(caller("submit")),
                ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    """Hold the task (an agent working on it is stopped) until `resume`."""
    return (await run_command(ctx, token, "pause", ref, reason=body.reason)).task


@router.post("/{ref}/resume", response_model=TaskOut, responses=ERRORS)
async def resume(ref: str, token: ApiToken = Depends(caller("submit")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    """Continue a paused task from what is durable (its pushed plan branch, its approved plan)."""
    return (await run_command(ctx, token, "resume", ref)).task


@router.post("/{ref}/retry", response_model=TaskOut, responses=ERRORS)
async def retry(ref: str, token: ApiToken = Depends(caller("submit")), ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    """Run a failed task again from its last good step."""
    return (await run_command(ctx, token, "retry", ref)).task


@router.post("/{ref}/rerun-tests", response_model=TaskOut, responses=ERRORS)
async def rerun_tests(ref: str, token: ApiToken = Depends(caller("submit")),
                      ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    """Run the test suite again on the task's branch; the result is recorded and posted."""
    return (await run_command(ctx, token, "rerun-tests", ref)).task


@router.post("/{ref}/priority", response_model=TaskOut, responses=ERRORS)
async def priority(ref: str, body: PriorityIn, token: ApiToken = Depends(caller("submit")),
                   ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    """Change the task's priority; a waiting task is re-queued at its new place."""
    return (await run_command(ctx, token, "priority", ref, level=body.level.value)).task


@router.post("/{ref}/assign", response_model=TaskOut, responses=ERRORS)
async def assign(ref: str, body: AssignIn, token: ApiToken = Depends(caller("submit")),
                 ctx: AppContext = Depends(get_ctx)) -> TaskOut:
    """Make someone the task's owner (a GitHub login); they are told where it lives."""
    return (await run_command(ctx, token, "assign", ref, user=body.user)).task


@router.get("/{ref}/diff", response_model=CommandOut, responses=ERRORS)
async def diff(ref: str, token: ApiToken = Depends(caller("read")), ctx: AppContext = Depends(get_ctx)) -> CommandOut:
    """The verified change the executor made, as a unified diff (in `text`)."""
    return await run_command(ctx, token, "diff", ref)


@router.get("/{ref}/evidence", response_model=CommandOut, responses=ERRORS)
async def evidence(ref: str, token: ApiToken = Depends(caller("read")),
                   ctx: AppContext = Depends(get_ctx)) -> CommandOut:
    """The test evidence: the new test failing without the fix and passing with it, the suite."""
    return await run_command(ctx, token, "evidence", ref)


@commands_router.get("/queue", response_model=CommandOut, responses=ERRORS)
async def queue(token: ApiToken = Depends(caller("read")), ctx: AppContext = Depends(get_ctx)) -> CommandOut:
    """The tasks waiting and running, by priority."""
    return await run_command(ctx, token, "queue", None)


@commands_router.post("/commands", response_model=CommandOut, responses=ERRORS)
async def command(body: CommandIn, token: ApiToken = Depends(caller(None)), ctx: AppContext = Depends(get_ctx)) -> CommandOut:
    """Any command as people write it in chat (`pause FF-12 release freeze`): the same meaning and
    the same scope checks as in a GitHub comment or Slack; the token's scopes decide."""
    parsed = parse_invocation(body.text)
    if parsed.spec is None:
        raise HTTPException(422, unknown_reply(parsed))
    if parsed.error:
        raise HTTPException(422, f"{parsed.name}: {parsed.error}")
    return await run_command(ctx, token, parsed.spec.name, parsed.task_key, **parsed.args)
