"""The console's pages (GET): the task list, a task, a session's transcript, the pool.

Pages that change while someone looks at them poll a fragment (htmx, every few seconds) that
carries a fingerprint of what the page shows: unchanged, the answer is 204 and nothing moves
(focus and scroll stay); changed, the region is drawn again.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field, ValidationError

from fixfleet.models import Priority, Source, Task, TaskStatus
from fixfleet.overview import gather
from fixfleet.store import TaskFilter
from serve_app.console import views
from serve_app.console.auth import Viewer, sessions, viewer
from serve_app.console.recorded import RecordedSessions
from serve_app.console.render import environment
from serve_app.console.transcript_html import message_list
from serve_app.console.transcripts import SESSION_ID, SessionInfo, SessionReader
from serve_app.context import AppContext, get_ctx
from serve_app.errors import validation_reason

router = APIRouter(prefix="/ui", include_in_schema=False)
TEMPLATES = environment()
TEMPLATES.globals["message_list"] = message_list  # a transcript's list items, drawn in Python (transcript_html.py)
PAGE_SIZE = 50
TRANSCRIPT_PAGE = 2000  # messages on one transcript page
MAX_BLOCK_CHARS = 20_000  # text longer than this (a whole file read) is cut on the transcript page
INLINE_CHARS = 600  # a folded block (tool call, result, thinking) longer than this is fetched when opened
BLOCK_LIMIT = 500_000  # a block read on its own, at most


def recorded_sessions(ctx: AppContext) -> SessionReader:
    """The agents' sessions as the console reads them: their records in the store."""
    return RecordedSessions(ctx.services.store)


def render(name: str, *, status: int = 200, headers: dict[str, str] | None = None, **values: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**values), status_code=status, headers=headers)


async def page(ctx: AppContext, who: Viewer, name: str, **values: Any) -> HTMLResponse:
    """A whole page: the viewer, and the outcome of their last form if any."""
    flash = await sessions(ctx).take_flash(who)
    return render(name, viewer=who, flash=flash, **values)


# --- the task list ------------------------------------------------------------------------------


class ListQuery(BaseModel):
    status: TaskStatus | None = None
    repo: str | None = Field(None, max_length=2000)
    source: Source | None = None
    priority: Priority | None = None
    q: str | None = Field(None, max_length=200)
    offset: int = Field(0, ge=0, le=10_000_000)

    @classmethod
    def of(cls, request: Request) -> ListQuery:
        given = {k: v.strip() for k, v in request.query_params.items() if k in cls.model_fields and v.strip()}
        return cls.model_validate(given)

    def filter(self) -> TaskFilter:
        return TaskFilter(statuses=(self.status,) if self.status else None, repo=self.repo,
                          source=self.source.value if self.source else None,
                          priorities=(self.priority.value,) if self.priority else None, text=self.q)

    def query(self, **changes: Any) -> str:
        values = self.model_dump(mode="json") | changes
        return urlencode({k: v for k, v in values.items() if v not in (None, "", 0)})


class BadQuery(Exception):
    """A page was asked for with parameters it does not take; the message says which."""


def list_query(request: Request) -> ListQuery:
    try:
        return ListQuery.of(request)
    except ValidationError as exc:
        raise BadQuery(validation_reason(exc.errors())) from None


async def task_rows(ctx: AppContext, query: ListQuery) -> tuple[list[Any], bool, str]:
    rows = await ctx.services.store.list_views(query.filter(), limit=PAGE_SIZE + 1, offset=query.offset)
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    stamp = views.fingerprint(query.offset, [(t.id, t.version, t.updated_at, t.cost_usd, t.tokens, t.pr_url)
                                             for t in rows])
    return rows, more, stamp


@router.get("/", response_class=HTMLResponse)
async def task_list(request: Request, who: Viewer = Depends(viewer), ctx: AppContext = Depends(get_ctx)) -> HTMLResponse:
    query = list_query(request)
    (rows, more, stamp), repos = await asyncio.gather(task_rows(ctx, query), ctx.services.store.repos())
    return await page(ctx, who, "tasks.html", rows=rows, more=more, stamp=stamp, query=query, repos=repos,
                      statuses=list(TaskStatus), sources=list(Source), priorities=list(Priority), page_size=PAGE_SIZE)


@router.get("/tasks/rows", response_class=HTMLResponse)
async def task_list_rows(request: Request, since: str = "", _: Viewer = Depends(viewer),
                         ctx: AppContext = Depends(get_ctx)) -> Response:
    query = list_query(request)
    rows, _more, stamp = await task_rows(ctx, query)
    if stamp == since:
        return Response(status_code=204)
    return render("_rows.html", rows=rows, stamp=stamp, query=query)


# --- a task -------------------------------------------------------------------------------------


async def task_view(ctx: AppContext, who: Viewer, key: str) -> dict[str, Any]:
    store = ctx.services.store
    task = await store.get_task(key)
    events, found = await asyncio.gather(store.events(task.id), recorded_sessions(ctx).sessions_of(task.id))
    scopes = {spec.name: str(spec.scope) for spec in ctx.commands.specs.commands}
    return {"task": task, "events": events, "sessions": found,
            "plans": views.plans(task, events), "evidence": views.evidence_of(task),
            "diff": views.diff_lines(task.context.get("diff")), "answer": task.context.get("answer"),
            "timeline": views.timeline(events), "actions": views.offered(task, who, scopes),
            "steps": views.EVIDENCE_STEPS, "priorities": views.PRIORITIES,
            "live": views.task_fingerprint(task, events, found), "acts": views.actions_fingerprint(task, who)}


@router.get("/tasks/{key}", response_class=HTMLResponse)
async def task_page(key: str, session: str | None = None, who: Viewer = Depends(viewer),
                    ctx: AppContext = Depends(get_ctx)) -> Response:
    """The task; `?session=<id>` (the links chat answers give) goes to that session's transcript."""
    if session is not None and SESSION_ID.fullmatch(session):
        task = await ctx.services.store.get_task(key)
        return RedirectResponse(f"/ui/tasks/{task.key}/sessions/{session}", status_code=303)
    return await page(ctx, who, "task.html", **await task_view(ctx, who, key))


@router.get("/tasks/{key}/poll", response_class=HTMLResponse)
async def task_poll(key: str, live: str = "", acts: str = "", who: Viewer = Depends(viewer),
                    ctx: AppContext = Depends(get_ctx)) -> Response:
    """The regions of the task page that changed since the page drew them (204: none)."""
    values = await task_view(ctx, who, key)
    if values["live"] == live and values["acts"] == acts:
        return Response(status_code=204)
    return render("_task_poll.html", viewer=who, redraw_live=values["live"] != live,
                  redraw_actions=values["acts"] != acts, **values)


# --- a session's transcript ---------------------------------------------------------------------


async def session_of(ctx: AppContext, task: Task, session_id: str) -> SessionInfo:
    for found in await recorded_sessions(ctx).sessions_of(task.id):
        if found.id == session_id:
            return found
    raise SessionNotFound(f"{task.key} has no session {session_id[:80]!r}")


class SessionNotFound(LookupError):
    pass


@router.get("/tasks/{key}/sessions/{session_id}", response_class=HTMLResponse)
async def transcript(key: str, session_id: str, after: int = 0, who: Viewer = Depends(viewer),
                     ctx: AppContext = Depends(get_ctx)) -> HTMLResponse:
    task = await ctx.services.store.get_task(key)
    session = await session_of(ctx, task, session_id)
    after = max(0, after)
    messages = await recorded_sessions(ctx).messages(session.id, after=after, limit=TRANSCRIPT_PAGE + 1)
    more, messages = len(messages) > TRANSCRIPT_PAGE, messages[:TRANSCRIPT_PAGE]
    last = messages[-1].seq if messages else after
    flash = await sessions(ctx).take_flash(who)
    html = await asyncio.to_thread(TEMPLATES.get_template("transcript.html").render, viewer=who, flash=flash,
                                   task=task, session=session, messages=messages, more=more, after=after, last=last,
                                   page=TRANSCRIPT_PAGE, cut=MAX_BLOCK_CHARS, inline_chars=INLINE_CHARS)
    return HTMLResponse(html)


@router.get("/tasks/{key}/sessions/{session_id}/more", response_class=HTMLResponse)
async def transcript_more(key: str, session_id: str, after: int = 0, _: Viewer = Depends(viewer),
                          ctx: AppContext = Depends(get_ctx)) -> Response:
    """Messages written since `after`, and the next poll while the session runs."""
    task = await ctx.services.store.get_task(key)
    session = await session_of(ctx, task, session_id)
    messages = await recorded_sessions(ctx).messages(session.id, after=max(0, after), limit=TRANSCRIPT_PAGE)
    if not messages and session.running:
        return Response(status_code=204)
    last = messages[-1].seq if messages else after
    return render("_messages.html", task=task, session=session, messages=messages, last=last, cut=MAX_BLOCK_CHARS,
                  inline_chars=INLINE_CHARS, poll=session.running or bool(messages), state_changed=not session.running)


@router.get("/tasks/{key}/sessions/{session_id}/blocks/{seq}/{index}", response_class=HTMLResponse)
async def transcript_block(key: str, session_id: str, seq: int, index: int, request: Request,
                           who: Viewer = Depends(viewer), ctx: AppContext = Depends(get_ctx)) -> HTMLResponse:
    """One piece of one message, whole: a folded tool result opened on the transcript page (htmx
    asks for the text alone), or a page of its own."""
    task = await ctx.services.store.get_task(key)
    session = await session_of(ctx, task, session_id)
    found = await recorded_sessions(ctx).messages(session.id, after=max(0, seq - 1), limit=1)
    if not found or found[0].seq != seq or not 0 <= index < len(found[0].blocks):
        raise SessionNotFound(f"{task.key}'s session {session.id[:40]} has no message {seq} with a part {index}")
    message, block = found[0], found[0].blocks[index]
    if request.headers.get("hx-request"):
        return render("_block_body.html", block=block, limit=BLOCK_LIMIT)
    return await page(ctx, who, "block.html", task=task, session=session, message=message, block=block, limit=BLOCK_LIMIT)


# --- the pool -----------------------------------------------------------------------------------


@router.get("/pool", response_class=HTMLResponse)
async def pool(who: Viewer = Depends(viewer), ctx: AppContext = Depends(get_ctx)) -> HTMLResponse:
    overview = await gather(ctx.services, tasks=0)
    return await page(ctx, who, "pool.html", overview=overview, dashboard=ctx.settings.ray_dashboard_url)


@router.get("/pool/live", response_class=HTMLResponse)
async def pool_live(_: Viewer = Depends(viewer), ctx: AppContext = Depends(get_ctx)) -> HTMLResponse:
    return render("_pool.html", overview=await gather(ctx.services, tasks=0))
