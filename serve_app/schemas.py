"""Request and response models of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations


from pydantic import BaseModel, Field, field_validator

from fixfleet.models import (
    Priority,
    Task,
    TaskEvent,
    TaskEventView,
    TaskView,
    check_external_id,
)
from fixfleet.sessions import SessionMessage, SessionRecord


class ErrorOut(BaseModel):
    detail: str


# Not github_issue: a task tied to a GitHub thread takes that thread's comments and labels, and a
# submit token must not be able to put its task behind someone else's issue.
SUBMITTABLE_EXTERNAL_KEYS = ("sentry_issue", "jira")


class TaskIn(BaseModel):
    repo: str = Field(min_length=1, max_length=2000, description="git URL: https://, ssh:// or file://")
    title: str = Field(min_length=1, max_length=500)
    body: str = Field("", max_length=200_000)
    priority: Priority = Priority.NORMAL
    external_ids: dict[str, str] = Field(
        default_factory=dict, max_length=len(SUBMITTABLE_EXTERNAL_KEYS),
        description="What this task is about elsewhere: sentry_issue (an issue id), jira (an issue key). "
                    "Alerts and tickets for them then find this task.")

    @field_validator("external_ids")
    @classmethod
    def _known_external_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for key, external_id in value.items():
            check_external_id(key, external_id, keys=SUBMITTABLE_EXTERNAL_KEYS)
        return value


class TaskOut(TaskView):

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        return cls.model_validate(task.model_dump())


class TaskPage(BaseModel):
    items: list[TaskOut]
    limit: int
    offset: int
    next_offset: int | None


class EventOut(TaskEventView):

    @classmethod
    def of(cls, event: TaskEvent) -> EventOut:
        return cls.model_validate(event.model_dump())


class SessionPage(BaseModel):
    session: SessionRecord = Field(description="the session as it was when the page was read")
    messages: list[SessionMessage] = Field(description="in order, numbered above `after`")
    next_after: int = Field(description="pass as `after` to get what came since")
    more: bool = Field(description="another page is stored already: ask again at once")


class ApproveIn(BaseModel):
    plan_version: int = Field(ge=0, description="the plan version being approved; refused if the plan changed")
    note: str = Field("", max_length=500, description="why, for the audit trail (e.g. a bulk approval's rule)")


class WhoAmIOut(BaseModel):
    name: str
    scopes: list[str]


class ReasonIn(BaseModel):
    reason: str = Field("", max_length=10_000)


class PriorityIn(BaseModel):
    level: Priority


class AssignIn(BaseModel):
    user: str = Field(min_length=1, max_length=100, pattern=r"^@?[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$|^me$",
                      description="a GitHub login (octocat or @octocat), or `me` (the token's name)")


class CommandIn(BaseModel):
    text: str = Field(min_length=1, max_length=10_000, description="a command as written in chat: `pause FF-12 why`")


class CommandOut(BaseModel):
    text: str = Field(description="the answer, as GitHub and Slack would show it (Markdown)")
    task: TaskOut | None = None


class ReviseIn(BaseModel):
    feedback: str = Field(min_length=1, max_length=50_000)


class QuestionIn(BaseModel):
    question: str = Field(min_length=1, max_length=10_000, description="a question about the plan or the fix")


class WebhookOut(BaseModel):
    status: str = Field(description="created, duplicate, attached, command, outcome, ignored or pong")
    task: str | None = None
    detail: str | None = None
    text: str | None = Field(None, description="a reply to show the person (Slack displays it)")


class CheckOut(BaseModel):
    status: str
    detail: str | None = None


class HealthOut(BaseModel):
    status: str
    checks: dict[str, CheckOut]
