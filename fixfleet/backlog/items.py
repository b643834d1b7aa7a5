"""One backlog item, whatever it came from (a CSV export, a JQL search, a Sentry project): the
typed record every later step reads, and how it finds its repository."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fixfleet.config import Settings
from fixfleet.intake.access import one_line
from fixfleet.models import Priority

MAX_BODY = 200_000  # the task API's limit on a body

# The external id each source gives a task (the webhooks use the same keys).
EXTERNAL_KEY = {"sentry": "sentry_issue", "jira": "jira"}


class BacklogItem(BaseModel):
    """A Sentry issue or a Jira ticket that may become a task."""

    model_config = ConfigDict(frozen=True)

    source: Literal["sentry", "jira"]
    external_id: str = Field(description="Sentry issue id (numeric) or Jira issue key")
    title: str
    body: str = Field("", description="description, culprit, stack trace when the source has one")
    project: str | None = Field(None, description="Sentry project slug or Jira project key")
    repository: str | None = Field(None, description="where the fix goes: mapped from the project")
    priority: Priority = Priority.NORMAL
    count: int | None = Field(None, description="events (Sentry)")
    users: int | None = Field(None, description="users affected (Sentry)")
    status: str | None = None
    resolved: bool = Field(False, description="done in Jira, resolved in Sentry: nothing to fix")
    url: str | None = None
    line: int | None = Field(None, description="the line of the CSV export it came from")
    linked: dict[str, str] = Field(default_factory=dict, description="other external ids, e.g. a ticket's Sentry issue")

    @property
    def external_key(self) -> str:
        return EXTERNAL_KEY[self.source]

    @property
    def external_ids(self) -> dict[str, str]:
        return {**self.linked, self.external_key: self.external_id}

    @property
    def ref(self) -> str:
        """`sentry:123`, `jira:OPS-7`: how messages and tables name it."""
        return f"{self.source}:{self.external_id}"

    @property
    def idempotency_key(self) -> str:
        """The same item always asks for the same task: a re-run after an interruption gets the
        task the first run made instead of a second one."""
        return f"backlog:{self.external_key}:{self.external_id}"

    @property
    def order(self) -> tuple[int, int, int]:
        """Sort key: priority first, then the most events and users."""
        return self.priority.rank, -(self.count or 0), -(self.users or 0)

    def task_body(self) -> str:
        """The body sent with the task: the item's text, then where it came from."""
        facts = [f"{self.source} {self.external_id}"]
        facts += [f"{self.count} events"] if self.count is not None else []
        facts += [f"{self.users} users"] if self.users is not None else []
        footer = f"\n\nBacklog: {', '.join(facts)}" + (f"\n{self.url}" if self.url else "")
        return self.body[: MAX_BODY - len(footer)] + footer


def make_item(**fields: object) -> BacklogItem:
    """A BacklogItem with its title made one line (as tasks want it), never empty."""
    title = one_line(fields.pop("title", None), f"{fields['source']} {fields['external_id']}")  # type: ignore[arg-type]
    return BacklogItem(title=title, **fields)  # type: ignore[arg-type]


def repository_for(source: str, project: str | None, *, repos: Mapping[str, str] | None = None,
                   settings: Settings | None = None) -> str | None:
    """`repos` (project -> repository URL) first, then FIXFLEET_SENTRY_PROJECT_REPOS or
    FIXFLEET_JIRA_PROJECT_REPOS, then FIXFLEET_DEFAULT_REPO: the webhooks' own rule."""
    if project and repos and project in repos:
        return repos[project]
    if settings is None:
        return None
    configured = settings.sentry_project_repos if source == "sentry" else settings.jira_project_repos
    return (configured.get(project) if project else None) or settings.default_repo


def with_repositories(items: list[BacklogItem], *, repos: Mapping[str, str] | None = None,
                      settings: Settings | None = None) -> list[BacklogItem]:
    """The items with their repository mapped (again): change `repos` after loading without reloading."""
    return [item.model_copy(update={"repository": repository_for(item.source, item.project, repos=repos,
                                                                 settings=settings)}) for item in items]
