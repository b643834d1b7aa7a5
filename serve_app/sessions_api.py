"""The records of the agents' Claude sessions (fixfleet/sessions.py) on the task API, read scope:

    GET /tasks/{ref}/sessions             the task's sessions, oldest first
    GET /sessions/{id}?after=N&limit=M    one session and its messages numbered above N (a page)
    GET /sessions/{id}/stream?after=N     server-sent events while it runs: `session` (the row, first),
                                          `message` (id: its number), `end` (the ended row, last);
                                          a reconnecting client's Last-Event-ID resumes after it
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from fixfleet.sessions import SessionMessage, SessionRecord
from fixfleet.store import Store
from fixfleet.store.sessions import MAX_PAGE
from serve_app.context import AppContext, get_ctx
from serve_app.schemas import SessionPage
from serve_app.tasks_api import ERRORS, caller
from serve_app.tokens import ApiToken

router = APIRouter(tags=["sessions"])
SessionId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the session's id (from /tasks/{ref}/sessions)")]
After = Annotated[int, Query(ge=0, le=2**31 - 1, description="only messages numbered above this (0: from the first)")]
POLL_S = 0.5  # how often a stream looks for new messages
KEEPALIVE_POLLS = 30  # a comment after this many quiet polls (15 s): proxies keep the stream open


@router.get("/tasks/{ref}/sessions", response_model=list[SessionRecord], responses=ERRORS)
async def task_sessions(ref: str, _: ApiToken = Depends(caller("read")),
                        ctx: AppContext = Depends(get_ctx)) -> list[SessionRecord]:
    """The task's Claude sessions (planner, executor, answers), oldest first, with their outcome."""
    return await ctx.services.store.task_sessions(ref)


@router.get("/sessions/{session_id}", response_model=SessionPage, responses=ERRORS)
async def session_page(session_id: SessionId, after: After = 0,
                       limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 500,
                       _: ApiToken = Depends(caller("read")), ctx: AppContext = Depends(get_ctx)) -> Response:
    """The session and up to `limit` of its messages numbered above `after`, in order. Poll with
    `after=next_after` for what came since; `more` says another page is already there."""
    store = ctx.services.store
    session = await store.get_session(session_id)  # before the messages: a page is never newer than its row
    messages = await store.session_messages(session_id, after=after, limit=limit + 1)
    page = SessionPage(session=session, messages=messages[:limit], more=len(messages) > limit,
                       next_after=messages[:limit][-1].seq if messages else after)
    # Serialized here: FastAPI would validate the 2,000 messages of a page again on the way out.
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/sessions/{session_id}/stream", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}})
async def session_stream(session_id: SessionId, after: After = 0,
                         last_event_id: Annotated[int | None, Header(ge=0, le=2**31 - 1)] = None,
                         _: ApiToken = Depends(caller("read")), ctx: AppContext = Depends(get_ctx)) -> StreamingResponse:
    """The session live, as server-sent events, until it ends (a session that ended already is
    sent whole and the stream closes)."""
    store = ctx.services.store
    session = await store.get_session(session_id)  # an unknown session is a 404, not an empty stream
    start = max(after, last_event_id or 0)
    return StreamingResponse(_events(store, session, start), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(store: Store, session: SessionRecord, after: int) -> AsyncIterator[str]:
    yield _event("session", session)
    quiet = 0
    async for item in store.follow_session(session.id, after=after, poll_s=POLL_S):
        if isinstance(item, SessionMessage):
            quiet = 0
            yield _event("message", item, event_id=item.seq)
        elif isinstance(item, SessionRecord):
            yield _event("end", item)
        elif (quiet := quiet + 1) % KEEPALIVE_POLLS == 0:
            yield ": still running\n\n"


def _event(name: str, model: BaseModel, event_id: int | None = None) -> str:
    data = json.dumps(model.model_dump(mode="json"), ensure_ascii=False)
    return f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "") + f"data: {data}\n\n"
