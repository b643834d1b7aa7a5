"""Jira webhooks: a ticket that matches the configured projects, labels or a Sentry link
becomes a task; its description (wiki markup or Atlassian Document Format) becomes text."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fixfleet.formats.access import as_list, as_str, dig, obj
from fixfleet.formats.adf import adf_to_text
from fixfleet.intake.access import one_line, require_object, task_request
from fixfleet.intake.events import Ignored, TaskRequest
from fixfleet.models import Priority, Source

if TYPE_CHECKING:
    from fixfleet.config import Settings

_JIRA_PRIORITY = {
    "highest": Priority.CRITICAL, "blocker": Priority.CRITICAL, "critical": Priority.CRITICAL,
    "high": Priority.HIGH, "major": Priority.HIGH,
    "medium": Priority.NORMAL,
    "low": Priority.LOW, "lowest": Priority.LOW, "minor": Priority.LOW, "trivial": Priority.LOW,
}
# A link to a Sentry issue, on sentry.io or a self-hosted host whose name says sentry.
_SENTRY_LINK = re.compile(r"https?://[\w.-]*sentry[\w.-]*(?::\d+)?/\S*?issues/(\d+)", re.I)
_JIRA_EVENTS = {"jira:issue_created": "created", "jira:issue_updated": "updated"}


def parse_jira(payload: Any, settings: Settings) -> TaskRequest | Ignored:
    payload = require_object(payload)
    event = as_str(payload.get("webhookEvent"))
    if event not in _JIRA_EVENTS:
        return Ignored(reason=f"Jira event {event!r}: only jira:issue_created and jira:issue_updated make tasks")
    issue = obj(payload.get("issue"))
    fields = obj(issue.get("fields"))
    key = as_str(issue.get("key"))
    if not key:
        return Ignored(reason="Jira payload without issue.key")
    if dig(fields, "status", "statusCategory", "key") == "done":
        return Ignored(reason=f"{key} is done")
    description = adf_to_text(fields.get("description"))
    matched_by = _jira_match(fields, description, settings)
    if matched_by is None:
        return Ignored(
            reason=f"{key} matches no filter: its project is not in FIXFLEET_JIRA_PROJECTS, it has no label "
            "of FIXFLEET_JIRA_LABELS and the Sentry integration did not create it"
        )
    return _jira_task(
        payload, issue, key, description, event=_JIRA_EVENTS[event], matched_by=matched_by, settings=settings
    )


def jira_priority(name: Any) -> Priority:
    """A Jira priority name (Highest, Blocker, High, Medium, Low, ...) as a task priority; normal if unknown."""
    return _JIRA_PRIORITY.get(name.strip().casefold() if isinstance(name, str) else "", Priority.NORMAL)


def sentry_issue_links(text: str) -> list[str]:
    """The Sentry issue ids a text links to, sorted, each once."""
    return sorted(set(_SENTRY_LINK.findall(text)))


def _jira_project(fields: dict[str, Any], key: str) -> str:
    return as_str(dig(fields, "project", "key")) or key.rsplit("-", 1)[0]


def _jira_match(fields: dict[str, Any], description: str, settings: Settings) -> str | None:
    """Which filter lets this ticket in ("project", "label", "sentry"), or None."""
    project = as_str(dig(fields, "project", "key"))
    if project and project.upper() in {p.upper() for p in settings.jira_projects}:
        return "project"
    wanted = {label.casefold() for label in settings.jira_labels}
    if any(isinstance(label, str) and label.casefold() in wanted for label in as_list(fields.get("labels"))):
        return "label"
    if _created_by_sentry(fields) or _SENTRY_LINK.search(description):
        return "sentry"
    return None


def _created_by_sentry(fields: dict[str, Any]) -> bool:
    # Sentry's Jira integration acts as an app user whose display name is "Sentry".
    people = [obj(fields.get("reporter")), obj(fields.get("creator"))]
    return any("sentry" in (as_str(p.get("displayName")) or "").casefold() for p in people)


def _jira_web_url(issue: dict[str, Any], key: str) -> str | None:
    """`https://x.atlassian.net/rest/api/2/issue/10019` -> `https://x.atlassian.net/browse/KEY`."""
    api_url = as_str(issue.get("self"))
    if not api_url or "/rest/api/" not in api_url:
        return None
    return api_url.split("/rest/api/", 1)[0] + f"/browse/{key}"


def _jira_task(
    payload: dict[str, Any],
    issue: dict[str, Any],
    key: str,
    description: str,
    *,
    event: str,
    matched_by: str,
    settings: Settings,
) -> TaskRequest | Ignored:
    fields = obj(issue.get("fields"))
    project = _jira_project(fields, key)
    repo = settings.jira_project_repos.get(project) or settings.default_repo
    if not repo:
        return Ignored(
            reason=f"no repository mapped for jira project {project}; "
            "set FIXFLEET_JIRA_PROJECT_REPOS (or FIXFLEET_DEFAULT_REPO)"
        )
    sentry_issues = sentry_issue_links(description)
    external_ids = {"jira": key}
    if len(sentry_issues) == 1:  # a later alert for that Sentry issue then finds this task
        external_ids["sentry_issue"] = sentry_issues[0]
    context = {
        "jira_key": key,
        "jira_project": project,
        "jira_event": event,
        "matched_by": matched_by,
        "labels": [label for label in as_list(fields.get("labels")) if isinstance(label, str)],
        "issue_type": as_str(dig(fields, "issuetype", "name")),
        "status": as_str(dig(fields, "status", "name")),
        "reporter": as_str(dig(fields, "reporter", "displayName")),
        "web_url": _jira_web_url(issue, key),
        "changed_fields": [f for i in as_list(dig(payload, "changelog", "items")) if (f := as_str(dig(i, "field")))],
        "sentry_issues": sentry_issues,
    }
    return task_request(
        source=Source.JIRA,
        repo=repo,
        title=one_line(as_str(fields.get("summary")), key),
        body=description,
        priority=jira_priority(as_str(dig(fields, "priority", "name"))),
        external_ids=external_ids,
        context=context,
    )
