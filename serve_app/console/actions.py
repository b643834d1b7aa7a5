"""The console's actions on a task: a form post carried out by the one command handler.

`POST /ui/tasks/{key}/do/{command}`: the session's CSRF token is checked first; then the form's
fields are read with the task API's own request models and the command runs through
`Commands.run` with the token's principal, so the scope checks, the audit rows and the plan
version guard are the ones every channel gets. The outcome (or the refusal, in the handler's
words) is shown on the task page the browser is sent back to.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ValidationError

from fixfleet.approvals import Refused
from fixfleet.commands.handlers import NeedsTask
from fixfleet.store import StoreError, TaskNotFound
from serve_app.console.auth import Viewer, check_csrf, sessions, viewer
from serve_app.console.views import BY_NAME
from serve_app.context import AppContext, get_ctx
from serve_app.errors import validation_reason
from serve_app.schemas import ApproveIn, AssignIn, PriorityIn, QuestionIn, ReasonIn, ReviseIn

router = APIRouter(prefix="/ui", include_in_schema=False)

# command -> the request model its form is read with (the task API's), and the handler's args from it
FORMS: dict[str, tuple[type[BaseModel] | None, Any]] = {
    "approve": (ApproveIn, lambda f: {"plan_version": f.plan_version}),
    "reject": (ReasonIn, lambda f: {"reason": f.reason}),
    "revise": (ReviseIn, lambda f: {"feedback": f.feedback}),
    "cancel": (ReasonIn, lambda f: {"reason": f.reason}),
    "pause": (ReasonIn, lambda f: {"reason": f.reason}),
    "resume": (None, lambda _: {}),
    "retry": (None, lambda _: {}),
    "rerun-tests": (None, lambda _: {}),
    "priority": (PriorityIn, lambda f: {"level": f.level.value}),
    "assign": (AssignIn, lambda f: {"user": f.user}),
    "explain": (QuestionIn, lambda f: {"question": f.question}),
}
assert set(FORMS) == set(BY_NAME), "every action the pages offer has a form, and no other"


class UnknownAction(LookupError):
    pass


@router.post("/tasks/{key}/do/{command}")
async def act(key: str, command: str, request: Request, who: Viewer = Depends(viewer),
              ctx: AppContext = Depends(get_ctx)) -> RedirectResponse:
    form = await request.form()
    check_csrf(request, who.csrf, _text(form.get("csrf")))
    if command not in FORMS:
        raise UnknownAction(f"there is no action {command[:40]!r}")
    task = await ctx.services.store.get_task(key)  # TaskNotFound: 404
    kind, text = await _run(ctx, who, command, task.key, {k: v for k, v in form.items() if k != "csrf"})
    await sessions(ctx).flash(who, kind, text)
    return RedirectResponse(f"/ui/tasks/{task.key}", status_code=303)


async def _run(ctx: AppContext, who: Viewer, command: str, key: str, fields: dict[str, Any]) -> tuple[str, str]:
    model, to_args = FORMS[command]
    try:
        args = to_args(model.model_validate({k: _text(v) for k, v in fields.items()}) if model else None)
    except ValidationError as exc:
        return "error", f"{command}: {validation_reason(exc.errors())}"
    try:
        result = await ctx.commands.run(who.principal, command, task_ref=key, args=args)
    except TaskNotFound:
        raise
    except (Refused, StoreError, NeedsTask) as refusal:  # the handler's own words; refusals are audited there
        return "error", f"{command} refused: {refusal}"
    ctx.metrics.count("api_calls", f"console:{command}")
    return "ok", result.text


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
