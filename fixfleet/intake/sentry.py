"""Sentry webhooks: an alert, error or new issue becomes a task with its stack trace."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fixfleet.formats.access import as_int, as_str, dig, first_match, obj
from fixfleet.formats.sentry import event_exceptions
from fixfleet.intake.access import one_line, require_object, task_request
from fixfleet.intake.events import Ignored, TaskRequest
from fixfleet.models import Priority, Source

if TYPE_CHECKING:
    from fixfleet.config import Settings

_SENTRY_LEVEL = {"fatal": Priority.CRITICAL, "error": Priority.HIGH, "warning": Priority.NORMAL}
# The event's API URL names its project: .../api/0/projects/<org>/<project slug>/events/<id>/
_SENTRY_PROJECT_IN_URL = re.compile(r"/projects/[^/]+/([^/]+)/events/")
_SENTRY_ISSUE_IN_URL = re.compile(r"/issues/(\d+)")


def parse_sentry(resource: str, payload: Any, settings: Settings) -> TaskRequest | Ignored:
    """`resource` is the `Sentry-Hook-Resource` header."""
    payload = require_object(payload)
    action = as_str(payload.get("action"))
    if resource == "event_alert":
        if action != "triggered":
            return Ignored(reason=f"event_alert.{action}: only triggered alerts make tasks")
        return _sentry_event_task(obj(dig(payload, "data", "event")), payload, settings)
    if resource == "error":
        if action != "created":
            return Ignored(reason=f"error.{action}: only created errors make tasks")
        return _sentry_event_task(obj(dig(payload, "data", "error")), payload, settings)
    if resource == "issue":
        if action != "created":
            return Ignored(reason=f"issue.{action}: only created issues make tasks")
        return _sentry_issue_task(obj(dig(payload, "data", "issue")), settings)
    return Ignored(reason=f"Sentry resource {resource!r} is not one fixfleet acts on")


def _sentry_repo(project: str | None, project_id: str | None, settings: Settings) -> str | Ignored:
    mapping = settings.sentry_project_repos
    repo = mapping.get(project or "") or mapping.get(project_id or "") or settings.default_repo
    if repo:
        return repo
    return Ignored(
        reason=f"no repository mapped for sentry project {project or project_id or '?'}; "
        "set FIXFLEET_SENTRY_PROJECT_REPOS (or FIXFLEET_DEFAULT_REPO)"
    )


def sentry_priority(level: Any) -> Priority:
    """fatal: critical, error: high, warning: normal, anything else: low."""
    return _SENTRY_LEVEL.get(level if isinstance(level, str) else "", Priority.LOW)


def sentry_body(title: str, culprit: str | None, web_url: str | None, exceptions: list[dict[str, Any]]) -> str:
    """A readable report for the planning agent: the error, where, and a Python-style trace."""
    lines = [title]
    if culprit:
        lines.append(f"Culprit: {culprit}")
    if web_url:
        lines.append(f"Sentry: {web_url}")
    for exc in exceptions:
        lines += ["", f"{exc['type'] or 'Exception'}: {exc['value'] or ''}", "Stack trace (most recent call last):"]
        for f in exc["frames"]:
            where = f["filename"] or f["abs_path"] or "?"
            marker = "" if f["in_app"] else "  [library]"
            lines.append(f'  File "{where}", line {f["lineno"] or "?"}, in {f["function"] or "?"}{marker}')
            if f["context_line"]:
                lines.append(f"    {f['context_line'].strip()}")
    return "\n".join(lines)


def _sentry_event_task(event: dict[str, Any], payload: dict[str, Any], settings: Settings) -> TaskRequest | Ignored:
    if not event:
        return Ignored(reason="Sentry payload without data.event / data.error")
    issue_id = as_str(event.get("issue_id")) or first_match(_SENTRY_ISSUE_IN_URL, event.get("issue_url"))
    if not issue_id:
        return Ignored(reason="Sentry event without an issue_id")
    project = as_str(event.get("project_slug")) or first_match(_SENTRY_PROJECT_IN_URL, event.get("url"))
    repo = _sentry_repo(project, as_str(event.get("project")), settings)
    if isinstance(repo, Ignored):
        return repo
    exceptions = event_exceptions(event)
    metadata = obj(event.get("metadata"))
    fallback = f"{metadata.get('type') or 'Error'}: {metadata.get('value') or ''}".strip(": ")
    title = one_line(as_str(event.get("title")) or fallback, f"Sentry issue {issue_id}")
    culprit, web_url = as_str(event.get("culprit")), as_str(event.get("web_url"))
    context = {
        "sentry_project": project,
        "culprit": culprit,
        "level": as_str(event.get("level")),
        "platform": as_str(event.get("platform")),
        "event_id": as_str(event.get("event_id")),
        "last_seen": as_str(event.get("datetime")),
        "web_url": web_url,
        "issue_url": as_str(event.get("issue_url")),
        "release": as_str(event.get("release")),
        "triggered_rule": as_str(dig(payload, "data", "triggered_rule")),
        "exceptions": [{"type": e["type"], "value": e["value"]} for e in exceptions],
        "frames": [frame for e in exceptions for frame in e["frames"]],
        "needs_event_fetch": not exceptions,  # a message event has no trace: fetch the latest event
    }
    return task_request(
        source=Source.SENTRY,
        repo=repo,
        title=title,
        body=sentry_body(title, culprit, web_url, exceptions),
        priority=sentry_priority(event.get("level")),
        external_ids={"sentry_issue": issue_id},
        context=context,
    )


def _sentry_issue_task(issue: dict[str, Any], settings: Settings) -> TaskRequest | Ignored:
    issue_id = as_str(issue.get("id"))
    if not issue_id:
        return Ignored(reason="Sentry issue payload without data.issue.id")
    project = as_str(dig(issue, "project", "slug"))
    repo = _sentry_repo(project, as_str(dig(issue, "project", "id")), settings)
    if isinstance(repo, Ignored):
        return repo
    title = one_line(as_str(issue.get("title")), f"Sentry issue {issue_id}")
    culprit, web_url = as_str(issue.get("culprit")), as_str(issue.get("permalink"))
    context = {
        "sentry_project": project,
        "short_id": as_str(issue.get("shortId")),
        "culprit": culprit,
        "level": as_str(issue.get("level")),
        "platform": as_str(issue.get("platform")),
        "first_seen": as_str(issue.get("firstSeen")),
        "last_seen": as_str(issue.get("lastSeen")),
        "web_url": web_url,
        "frames": [],
        "needs_event_fetch": True,  # the issue resource carries no stack trace
    }
    count = as_int(issue.get("count"))
    if count is not None:  # absent rather than None: the app adds to it when alerts attach
        context["event_count"] = count
    return task_request(
        source=Source.SENTRY,
        repo=repo,
        title=title,
        body=sentry_body(title, culprit, web_url, []),
        priority=sentry_priority(issue.get("level")),
        external_ids={"sentry_issue": issue_id},
        context=context,
    )
