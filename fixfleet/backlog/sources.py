"""Backlogs from the source's own API, through fixfleet's integration clients: a Jira JQL search,
or a Sentry project's unresolved issues (with each one's latest stack trace, which the issue list
does not carry)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fixfleet.backlog.items import BacklogItem, make_item, repository_for
from fixfleet.config import Settings, load_settings
from fixfleet.integrations.jira import JiraClient
from fixfleet.integrations.sentry import SentryClient
from fixfleet.formats.access import as_int, as_str, dig
from fixfleet.formats.adf import adf_to_text
from fixfleet.intake.jira import jira_priority, sentry_issue_links
from fixfleet.intake.sentry import sentry_body, sentry_priority
from fixfleet.providers import REQUIRED, connect
from fixfleet.redact import Redactor


class SourceNotConfigured(RuntimeError):
    """No client was given and the settings name no credentials for the source."""


async def load_jira(jql: str, *, client: JiraClient | None = None, settings: Settings | None = None,
                    repos: Mapping[str, str] | None = None, limit: int | None = None) -> list[BacklogItem]:
    """The tickets a JQL query finds (e.g. `project = OPS AND statusCategory != Done`)."""
    settings = settings if settings is not None else load_settings()
    async with _client("jira", client, settings) as jira:
        issues = await jira.search(jql, limit=limit)
    return [_jira_item(issue, jira.browse_url(str(issue.get("key"))), repos, settings) for issue in issues
            if as_str(issue.get("key"))]


async def load_sentry(organization: str, project: str, *, query: str = "is:unresolved",
                      client: SentryClient | None = None, settings: Settings | None = None,
                      repos: Mapping[str, str] | None = None, limit: int | None = None,
                      stack_traces: bool = True, concurrency: int = 4) -> list[BacklogItem]:
    """A Sentry project's issues matching `query` (its unresolved ones by default). With
    `stack_traces`, each issue's latest event is fetched (`concurrency` at a time) for its trace."""
    settings = settings if settings is not None else load_settings()
    async with _client("sentry", client, settings) as sentry:
        issues = await sentry.project_issues(organization, project, query=query, limit=limit)
        traces = await _latest_exceptions(sentry, organization, issues, concurrency) if stack_traces else {}
    return [_sentry_item(issue, traces.get(str(issue.get("id")), []), repos, settings) for issue in issues
            if as_str(issue.get("id"))]


@asynccontextmanager
async def _client(service: str, given: Any, settings: Settings) -> AsyncIterator[Any]:
    """The client given, or the one the settings configure (closed after)."""
    if given is not None:
        yield given
        return
    async with connect(settings, Redactor.from_settings(settings)) as providers:
        made = getattr(providers, service)
        if made is None:
            raise SourceNotConfigured(f"{service} is not configured: set {', '.join(REQUIRED[service])} or pass client=")
        yield made


async def _latest_exceptions(sentry: SentryClient, organization: str, issues: list[dict[str, Any]],
                             concurrency: int) -> dict[str, list[dict[str, Any]]]:
    gate = asyncio.Semaphore(max(concurrency, 1))

    async def one(issue_id: str) -> tuple[str, list[dict[str, Any]]]:
        async with gate:
            return issue_id, (await sentry.latest_event_details(issue_id, organization))["exceptions"]

    ids = [str(i["id"]) for i in issues if as_str(i.get("id"))]
    return dict(await asyncio.gather(*(one(issue_id) for issue_id in ids)))


def _sentry_item(issue: dict[str, Any], exceptions: list[dict[str, Any]], repos: Mapping[str, str] | None,
                 settings: Settings) -> BacklogItem:
    title, culprit, url = as_str(issue.get("title")), as_str(issue.get("culprit")), as_str(issue.get("permalink"))
    project = as_str(dig(issue, "project", "slug"))
    status = as_str(issue.get("status"))
    return make_item(
        source="sentry", external_id=str(issue["id"]), title=title,
        body=sentry_body(title or "", culprit, url, exceptions), project=project,
        repository=repository_for("sentry", project, repos=repos, settings=settings),
        priority=sentry_priority(issue.get("level")), count=as_int(issue.get("count")),
        users=as_int(issue.get("userCount")), status=status, resolved=status in ("resolved", "ignored"), url=url,
    )


def _jira_item(issue: dict[str, Any], url: str, repos: Mapping[str, str] | None, settings: Settings) -> BacklogItem:
    fields = issue.get("fields") if isinstance(issue.get("fields"), dict) else {}
    key = str(issue["key"])
    description = adf_to_text(fields.get("description"))
    project = as_str(dig(fields, "project", "key")) or key.rsplit("-", 1)[0]
    links = sentry_issue_links(description)
    return make_item(
        source="jira", external_id=key, title=as_str(fields.get("summary")), body=description, project=project,
        repository=repository_for("jira", project, repos=repos, settings=settings),
        priority=jira_priority(dig(fields, "priority", "name")), status=as_str(dig(fields, "status", "name")),
        resolved=dig(fields, "status", "statusCategory", "key") == "done", url=url,
        linked={"sentry_issue": links[0]} if len(links) == 1 else {},
    )
