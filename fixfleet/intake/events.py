"""The typed results of reading a webhook: a task to make, a command to read, a Slack button,
a reasoned refusal, or a liveness probe."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from fixfleet.forges.base import PullState
from fixfleet.forge_refs import ForgeRef
from fixfleet.models import NewTask, Source

MAX_TITLE = 500  # NewTask.title's limit


class ParseError(ValueError):
    """The body is structurally unusable (not a JSON object): the app answers 400/422."""


# --- the typed results --------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskRequest(_Event):
    """Make a task; while a task about the same external thing (its external ids) is open, the
    store returns that one instead and the alert is counted on it."""

    new_task: NewTask


class CommandRequest(_Event):
    """A comment or slash command that may hold commands; the command parser reads `text`."""

    source: Source
    text: str
    author: str  # GitHub login / Slack user name
    author_id: str | None = None
    repo: str | None = None  # clone URL
    repo_full_name: str | None = None  # owner/name
    issue_number: int | None = None  # issue or pull request number
    is_pull_request: bool = False
    comment_id: str | None = None
    comment_url: str | None = None
    task_key: str | None = None  # known when the PR branch is fixfleet's, or named in a slash command
    pr_url: str | None = None  # the PR's web URL: how a comment on a fixfleet PR finds its task
    edited: bool = False  # an edited comment: the app may choose not to re-run side effects
    response_url: str | None = None  # Slack: where to post a delayed answer
    created_at: datetime | None = None  # when the comment was written: an approval older than the plan is stale
    # Where the comment was made: the pull request or issue. A command acts only on the task
    # whose pull request or issue this is.
    where: ForgeRef | None = None
    slack_channel: str | None = None  # Slack Events API: where to answer, in the message's thread
    slack_thread_ts: str | None = None


class PullRequestChanged(_Event):
    """A pull request was closed (merged or not) or reopened: the outcome of the task whose pull
    request it is."""

    where: ForgeRef
    state: PullState
    sender: str | None = None  # who closed or reopened it


class SlackAction(_Event):
    action: Literal["approve", "reject"]
    task_key: str
    plan_version: int | None
    user_id: str
    user_name: str | None = None
    response_url: str | None = None


class UrlVerification(_Event):
    """Slack checking a new Events API URL: answer its challenge."""

    challenge: str


class Ignored(_Event):
    reason: str


class Ping(_Event):
    """A source checking that the endpoint is alive (GitHub `ping`, Slack `ssl_check`)."""


ParsedEvent = TaskRequest | CommandRequest | PullRequestChanged | SlackAction | UrlVerification | Ignored | Ping
