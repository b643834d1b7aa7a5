"""From a verified webhook payload to a typed event: a task to make, a command to read, a Slack
button, or a reasoned refusal.

Every `parse_*` takes JSON that has already passed its signature check and returns one of
`TaskRequest`, `CommandRequest`, `SlackAction`, `Ignored` or `Ping`. Odd-but-valid JSON (missing
keys, nulls, unexpected types) never raises: it becomes `Ignored` with a reason worth logging.
Only a payload that is not even a JSON object raises `ParseError` (the app answers 400/422).

Slack buttons carry their target in the `value` of the button, formatted by
`slack_action_value()`: `"<task key>:v<plan version>"`, e.g. `"FF-12:v2"`; the version names
the plan the human saw, so a click on an outdated message is refused as stale. `"FF-12"`
alone (no version) is accepted and yields `plan_version=None`.
"""

from __future__ import annotations

from datetime import datetime

import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fixfleet.models import NewTask, Priority, Source

if TYPE_CHECKING:
    from fixfleet.config import Settings

MAX_FRAMES = 50  # per exception; the most recent ones, where the error happened
MAX_CONTEXT_LINE = 500  # minified JS puts a whole bundle on one "line"
MAX_TITLE = 500  # NewTask.title's limit


class ParseError(ValueError):
    """The body is structurally unusable (not a JSON object): the app answers 400/422."""


# --- the typed results --------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskRequest(_Event):
    """Make a task, unless `dedupe` names an open task already: then attach to that one."""

    new_task: NewTask
    dedupe: tuple[str, str] | None = None  # (external id key, value), e.g. ("sentry_issue", "42")


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

    @property
    def github_issue_ref(self) -> tuple[str, str] | None:
        """("github_issue", "owner/name#n"): finds the task made from the issue commented on."""
        if self.source != Source.GITHUB or not self.repo_full_name or self.issue_number is None:
            return None
        return ("github_issue", f"{self.repo_full_name}#{self.issue_number}")


class SlackAction(_Event):
    action: Literal["approve", "reject"]
    task_key: str
    plan_version: int | None
    user_id: str
    user_name: str | None = None
    response_url: str | None = None


class Ignored(_Event):
    reason: str


class Ping(_Event):
    """A source checking that the endpoint is alive (GitHub `ping`, Slack `ssl_check`)."""


ParsedEvent = TaskRequest | CommandRequest | SlackAction | Ignored | Ping


# --- tolerant access to untrusted JSON ----------------------------------------------------


def _require_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ParseError(f"expected a JSON object, got {type(payload).__name__}")
    return payload


def _dig(data: Any, *path: str | int) -> Any:
    """`_dig(p, "issue", "user", "login")`, or None as soon as a step is missing or mistyped."""
    for step in path:
        if isinstance(step, int) and isinstance(data, list) and -len(data) <= step < len(data):
            data = data[step]
        elif isinstance(step, str) and isinstance(data, Mapping):
            data = data.get(step)
        else:
            return None
    return data


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    """A string, or an integer id as a string; None for anything else (including bools)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _title(text: str | None, fallback: str) -> str:
    """One line, within NewTask's limit; never empty."""
    line = " ".join((text or "").split())
    if len(line) > MAX_TITLE:
        line = line[: MAX_TITLE - 1] + "…"
    return line or fallback


def _task_request(dedupe: tuple[str, str] | None, **fields: Any) -> TaskRequest | Ignored:
    try:
        return TaskRequest(new_task=NewTask(**fields), dedupe=dedupe)
    except ValidationError as exc:  # e.g. an empty repository URL from a mapping
        first = exc.errors()[0]
        return Ignored(reason=f"cannot make a task: {'.'.join(map(str, first['loc']))}: {first['msg']}")


# --- GitHub -------------------------------------------------------------------------------

_PRIORITY_LABEL = re.compile(r"^(?:priority|prio)?[\s:/_-]*(critical|urgent|high|medium|normal|low|p[0-3])$", re.I)
_PRIORITY_WORD = {
    "critical": Priority.CRITICAL, "urgent": Priority.CRITICAL, "p0": Priority.CRITICAL,
    "high": Priority.HIGH, "p1": Priority.HIGH,
    "medium": Priority.NORMAL, "normal": Priority.NORMAL, "p2": Priority.NORMAL,
    "low": Priority.LOW, "p3": Priority.LOW,
}
# fixfleet's branches are `fixfleet/<task>`; both `fixfleet/12` and `fixfleet/FF-12` name FF-12.
_TASK_BRANCH = re.compile(r"^fixfleet/(?:ff-)?(\d+)(?:$|[^\d])", re.I)


def parse_github(event: str, payload: Any, settings: Settings) -> TaskRequest | CommandRequest | Ignored | Ping:
    """`event` is the `X-GitHub-Event` header."""
    payload = _require_object(payload)
    if event == "ping":
        return Ping()
    handler = _GITHUB_HANDLERS.get(event)
    if handler is None:
        return Ignored(reason=f"GitHub event {event!r} is not one fixfleet acts on")
    return handler(payload, settings)


def _label_names(issue: dict[str, Any]) -> list[str]:
    return [name for label in _list(issue.get("labels")) if (name := _str(_dig(label, "name")))]


def _same_label(a: str | None, b: str) -> bool:
    return a is not None and a.casefold() == b.casefold()  # GitHub labels are case-insensitive


def _priority_from_labels(names: list[str]) -> Priority:
    found = [_PRIORITY_WORD[m[1].lower()] for name in names if (m := _PRIORITY_LABEL.match(name.strip()))]
    return min(found, key=lambda p: p.rank) if found else Priority.NORMAL


def _github_issue(payload: dict[str, Any], settings: Settings) -> TaskRequest | Ignored:
    action = _str(payload.get("action"))
    issue = _obj(payload.get("issue"))
    wanted = settings.github_label
    if action not in ("opened", "labeled"):
        return Ignored(reason=f"issues.{action}: only opened or labeled issues become tasks")
    if not issue:
        return Ignored(reason="issues event without an issue")
    if issue.get("pull_request"):
        return Ignored(reason="a label on a pull request does not make a task")
    if action == "labeled" and not _same_label(_str(_dig(payload, "label", "name")), wanted):
        return Ignored(reason=f"label {_dig(payload, 'label', 'name')!r} is not {wanted!r}")
    if action == "opened" and not any(_same_label(n, wanted) for n in _label_names(issue)):
        return Ignored(reason=f"issue opened without the {wanted!r} label")
    if issue.get("state") == "closed":
        return Ignored(reason="the issue is closed")
    return _github_issue_task(payload, issue)


def _github_issue_task(payload: dict[str, Any], issue: dict[str, Any]) -> TaskRequest | Ignored:
    repo = _str(_dig(payload, "repository", "clone_url"))
    full_name = _str(_dig(payload, "repository", "full_name"))
    number = _int(issue.get("number"))
    if not repo or not full_name or number is None:
        return Ignored(reason="issues event without repository.clone_url, repository.full_name or issue.number")
    ref = f"{full_name}#{number}"
    labels = _label_names(issue)
    context = {
        "web_url": _str(issue.get("html_url")),
        "labels": labels,
        "author": _str(_dig(issue, "user", "login")),
        "repo_full_name": full_name,
        "issue_number": number,
    }
    # GitHub sends both `opened` and `labeled` for an issue created with the label: dedupe.
    return _task_request(
        ("github_issue", ref),
        source=Source.GITHUB,
        repo=repo,
        title=_title(_str(issue.get("title")), f"GitHub issue {ref}"),
        body=_str(issue.get("body")) or "",
        priority=_priority_from_labels(labels),
        external_ids={"github_issue": ref},
        context=context,
    )


def _is_own_or_bot(payload: dict[str, Any], user: dict[str, Any], settings: Settings) -> bool:
    login = _str(user.get("login"))
    return (
        _dig(payload, "sender", "type") == "Bot"
        or user.get("type") == "Bot"
        or (login is not None and login.casefold() == settings.github_bot_login.casefold())
    )


def _task_key_from_branch(ref: Any) -> str | None:
    match = _TASK_BRANCH.match(ref) if isinstance(ref, str) else None
    return f"FF-{int(match[1])}" if match else None


def _github_command(
    payload: dict[str, Any],
    settings: Settings,
    *,
    item: dict[str, Any],
    text: Any,
    number: Any,
    is_pull_request: bool,
    pr_url: Any = None,
    head_ref: Any = None,
    edited: bool = False,
) -> CommandRequest | Ignored:
    """Shared by issue comments, review comments and reviews: `item` is the comment or review."""
    user = _obj(item.get("user")) or _obj(payload.get("sender"))
    if _is_own_or_bot(payload, user, settings):
        return Ignored(reason="our own comment")  # or another bot's: no loops between bots
    author = _str(user.get("login"))
    if not author:
        return Ignored(reason="comment without an author")
    if not isinstance(text, str) or not text.strip():
        return Ignored(reason="empty comment: no command to read")
    return CommandRequest(
        source=Source.GITHUB,
        text=text,
        author=author,
        author_id=_str(user.get("id")),
        repo=_str(_dig(payload, "repository", "clone_url")),
        repo_full_name=_str(_dig(payload, "repository", "full_name")),
        issue_number=_int(number),
        is_pull_request=is_pull_request,
        comment_id=_str(item.get("id")),
        comment_url=_str(item.get("html_url")),
        task_key=_task_key_from_branch(head_ref),
        pr_url=_str(pr_url) if is_pull_request else None,
        edited=edited,
        created_at=_timestamp(item.get("submitted_at") or item.get("created_at")),
    )


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _github_issue_comment(payload: dict[str, Any], settings: Settings) -> CommandRequest | Ignored:
    action = _str(payload.get("action"))
    if action not in ("created", "edited"):
        return Ignored(reason=f"issue_comment.{action}: only created or edited comments are read")
    issue = _obj(payload.get("issue"))
    pull = _obj(issue.get("pull_request"))  # present when the "issue" is a pull request
    return _github_command(
        payload, settings,
        item=_obj(payload.get("comment")),
        text=_dig(payload, "comment", "body"),
        number=issue.get("number"),
        is_pull_request=bool(issue.get("pull_request")),
        pr_url=pull.get("html_url") or issue.get("html_url"),
        edited=action == "edited",
    )


def _github_review_comment(payload: dict[str, Any], settings: Settings) -> CommandRequest | Ignored:
    action = _str(payload.get("action"))
    if action != "created":
        return Ignored(reason=f"pull_request_review_comment.{action}: only created comments are read")
    pull = _obj(payload.get("pull_request"))
    return _github_command(
        payload, settings,
        item=_obj(payload.get("comment")),
        text=_dig(payload, "comment", "body"),
        number=pull.get("number"),
        is_pull_request=True,
        pr_url=pull.get("html_url"),
        head_ref=_dig(pull, "head", "ref"),
    )


def _github_review(payload: dict[str, Any], settings: Settings) -> CommandRequest | Ignored:
    action = _str(payload.get("action"))
    if action != "submitted":
        return Ignored(reason=f"pull_request_review.{action}: only submitted reviews are read")
    pull = _obj(payload.get("pull_request"))
    return _github_command(
        payload, settings,
        item=_obj(payload.get("review")),
        text=_review_text(_obj(payload.get("review"))),
        number=pull.get("number"),
        is_pull_request=True,
        pr_url=pull.get("html_url"),
        head_ref=_dig(pull, "head", "ref"),
    )


def _review_text(review: dict[str, Any]) -> Any:
    """A review that requests changes is feedback on the plan: it reads as `@agent revise …`
    unless it already holds a command. The body is null for a bare approval: nothing to read."""
    body = review.get("body")
    if review.get("state") != "changes_requested" or not isinstance(body, str) or not body.strip():
        return body
    from fixfleet.commands import parse_commands  # late: the command language is optional here

    if parse_commands(body):
        return body
    return "@agent revise " + " ".join(body.split())


_GITHUB_HANDLERS = {
    "issues": _github_issue,
    "issue_comment": _github_issue_comment,
    "pull_request_review_comment": _github_review_comment,
    "pull_request_review": _github_review,
}


# --- Sentry -------------------------------------------------------------------------------

_SENTRY_LEVEL = {"fatal": Priority.CRITICAL, "error": Priority.HIGH, "warning": Priority.NORMAL}
# The event's API URL names its project: .../api/0/projects/<org>/<project slug>/events/<id>/
_SENTRY_PROJECT_IN_URL = re.compile(r"/projects/[^/]+/([^/]+)/events/")
_SENTRY_ISSUE_IN_URL = re.compile(r"/issues/(\d+)")


def parse_sentry(resource: str, payload: Any, settings: Settings) -> TaskRequest | Ignored:
    """`resource` is the `Sentry-Hook-Resource` header."""
    payload = _require_object(payload)
    action = _str(payload.get("action"))
    if resource == "event_alert":
        if action != "triggered":
            return Ignored(reason=f"event_alert.{action}: only triggered alerts make tasks")
        return _sentry_event_task(_obj(_dig(payload, "data", "event")), payload, settings)
    if resource == "error":
        if action != "created":
            return Ignored(reason=f"error.{action}: only created errors make tasks")
        return _sentry_event_task(_obj(_dig(payload, "data", "error")), payload, settings)
    if resource == "issue":
        if action != "created":
            return Ignored(reason=f"issue.{action}: only created issues make tasks")
        return _sentry_issue_task(_obj(_dig(payload, "data", "issue")), settings)
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


def _sentry_priority(level: Any) -> Priority:
    return _SENTRY_LEVEL.get(level if isinstance(level, str) else "", Priority.LOW)


def _sentry_frame(frame: dict[str, Any]) -> dict[str, Any]:
    line = _str(frame.get("context_line"))
    return {
        "filename": _str(frame.get("filename")),
        "abs_path": _str(frame.get("abs_path")),
        "function": _str(frame.get("function")),
        "lineno": _int(frame.get("lineno")),
        "in_app": frame.get("in_app") is True,
        "context_line": line[:MAX_CONTEXT_LINE] if line else None,
    }


def _sentry_exceptions(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Each exception with its frames, oldest call first (Sentry's order)."""
    found = []
    for value in _list(_dig(event, "exception", "values")):
        value = _obj(value)
        frames = [_sentry_frame(f) for f in _list(_dig(value, "stacktrace", "frames")) if isinstance(f, dict)]
        found.append({
            "type": _str(value.get("type")),
            "value": _str(value.get("value")),
            "frames": frames[-MAX_FRAMES:],
        })
    return found


def _sentry_body(title: str, culprit: str | None, web_url: str | None, exceptions: list[dict[str, Any]]) -> str:
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
    issue_id = _str(event.get("issue_id")) or _first_match(_SENTRY_ISSUE_IN_URL, event.get("issue_url"))
    if not issue_id:
        return Ignored(reason="Sentry event without an issue_id")
    project = _str(event.get("project_slug")) or _first_match(_SENTRY_PROJECT_IN_URL, event.get("url"))
    repo = _sentry_repo(project, _str(event.get("project")), settings)
    if isinstance(repo, Ignored):
        return repo
    exceptions = _sentry_exceptions(event)
    metadata = _obj(event.get("metadata"))
    fallback = f"{metadata.get('type') or 'Error'}: {metadata.get('value') or ''}".strip(": ")
    title = _title(_str(event.get("title")) or fallback, f"Sentry issue {issue_id}")
    culprit, web_url = _str(event.get("culprit")), _str(event.get("web_url"))
    context = {
        "sentry_project": project,
        "culprit": culprit,
        "level": _str(event.get("level")),
        "platform": _str(event.get("platform")),
        "event_id": _str(event.get("event_id")),
        "last_seen": _str(event.get("datetime")),
        "web_url": web_url,
        "issue_url": _str(event.get("issue_url")),
        "release": _str(event.get("release")),
        "triggered_rule": _str(_dig(payload, "data", "triggered_rule")),
        "exceptions": [{"type": e["type"], "value": e["value"]} for e in exceptions],
        "frames": [frame for e in exceptions for frame in e["frames"]],
        "needs_event_fetch": not exceptions,  # a message event has no trace: fetch the latest event
    }
    return _task_request(
        ("sentry_issue", issue_id),
        source=Source.SENTRY,
        repo=repo,
        title=title,
        body=_sentry_body(title, culprit, web_url, exceptions),
        priority=_sentry_priority(event.get("level")),
        external_ids={"sentry_issue": issue_id},
        context=context,
    )


def _sentry_issue_task(issue: dict[str, Any], settings: Settings) -> TaskRequest | Ignored:
    issue_id = _str(issue.get("id"))
    if not issue_id:
        return Ignored(reason="Sentry issue payload without data.issue.id")
    project = _str(_dig(issue, "project", "slug"))
    repo = _sentry_repo(project, _str(_dig(issue, "project", "id")), settings)
    if isinstance(repo, Ignored):
        return repo
    title = _title(_str(issue.get("title")), f"Sentry issue {issue_id}")
    culprit, web_url = _str(issue.get("culprit")), _str(issue.get("permalink"))
    context = {
        "sentry_project": project,
        "short_id": _str(issue.get("shortId")),
        "culprit": culprit,
        "level": _str(issue.get("level")),
        "platform": _str(issue.get("platform")),
        "first_seen": _str(issue.get("firstSeen")),
        "last_seen": _str(issue.get("lastSeen")),
        "web_url": web_url,
        "frames": [],
        "needs_event_fetch": True,  # the issue resource carries no stack trace
    }
    count = _int(issue.get("count"))
    if count is not None:  # absent rather than None: the app adds to it when alerts attach
        context["event_count"] = count
    return _task_request(
        ("sentry_issue", issue_id),
        source=Source.SENTRY,
        repo=repo,
        title=title,
        body=_sentry_body(title, culprit, web_url, []),
        priority=_sentry_priority(issue.get("level")),
        external_ids={"sentry_issue": issue_id},
        context=context,
    )


def _first_match(pattern: re.Pattern[str], text: Any) -> str | None:
    match = pattern.search(text) if isinstance(text, str) else None
    return match[1] if match else None


# --- Jira ---------------------------------------------------------------------------------

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
    payload = _require_object(payload)
    event = _str(payload.get("webhookEvent"))
    if event not in _JIRA_EVENTS:
        return Ignored(reason=f"Jira event {event!r}: only jira:issue_created and jira:issue_updated make tasks")
    issue = _obj(payload.get("issue"))
    fields = _obj(issue.get("fields"))
    key = _str(issue.get("key"))
    if not key:
        return Ignored(reason="Jira payload without issue.key")
    if _dig(fields, "status", "statusCategory", "key") == "done":
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


def _jira_project(fields: dict[str, Any], key: str) -> str:
    return _str(_dig(fields, "project", "key")) or key.rsplit("-", 1)[0]


def _jira_match(fields: dict[str, Any], description: str, settings: Settings) -> str | None:
    """Which filter lets this ticket in ("project", "label", "sentry"), or None."""
    project = _str(_dig(fields, "project", "key"))
    if project and project.upper() in {p.upper() for p in settings.jira_projects}:
        return "project"
    wanted = {label.casefold() for label in settings.jira_labels}
    if any(isinstance(label, str) and label.casefold() in wanted for label in _list(fields.get("labels"))):
        return "label"
    if _created_by_sentry(fields) or _SENTRY_LINK.search(description):
        return "sentry"
    return None


def _created_by_sentry(fields: dict[str, Any]) -> bool:
    # Sentry's Jira integration acts as an app user whose display name is "Sentry".
    people = [_obj(fields.get("reporter")), _obj(fields.get("creator"))]
    return any("sentry" in (_str(p.get("displayName")) or "").casefold() for p in people)


def _jira_web_url(issue: dict[str, Any], key: str) -> str | None:
    """`https://x.atlassian.net/rest/api/2/issue/10019` -> `https://x.atlassian.net/browse/KEY`."""
    api_url = _str(issue.get("self"))
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
    fields = _obj(issue.get("fields"))
    project = _jira_project(fields, key)
    repo = settings.jira_project_repos.get(project) or settings.default_repo
    if not repo:
        return Ignored(
            reason=f"no repository mapped for jira project {project}; "
            "set FIXFLEET_JIRA_PROJECT_REPOS (or FIXFLEET_DEFAULT_REPO)"
        )
    sentry_issues = sorted(set(_SENTRY_LINK.findall(description)))
    external_ids = {"jira": key}
    if len(sentry_issues) == 1:  # a later alert for that Sentry issue then finds this task
        external_ids["sentry_issue"] = sentry_issues[0]
    priority_name = (_str(_dig(fields, "priority", "name")) or "").casefold()
    context = {
        "jira_key": key,
        "jira_project": project,
        "jira_event": event,
        "matched_by": matched_by,
        "labels": [label for label in _list(fields.get("labels")) if isinstance(label, str)],
        "issue_type": _str(_dig(fields, "issuetype", "name")),
        "status": _str(_dig(fields, "status", "name")),
        "reporter": _str(_dig(fields, "reporter", "displayName")),
        "web_url": _jira_web_url(issue, key),
        "changed_fields": [f for i in _list(_dig(payload, "changelog", "items")) if (f := _str(_dig(i, "field")))],
        "sentry_issues": sentry_issues,
    }
    return _task_request(
        ("jira", key),
        source=Source.JIRA,
        repo=repo,
        title=_title(_str(fields.get("summary")), key),
        body=description,
        priority=_JIRA_PRIORITY.get(priority_name, Priority.NORMAL),
        external_ids=external_ids,
        context=context,
    )


# Atlassian Document Format: which nodes end a line, and how list items are marked.
_ADF_BLOCKS = {"paragraph", "heading", "blockquote", "panel", "rule", "mediaSingle", "mediaGroup",
               "table", "tableRow", "expand", "nestedExpand", "decisionList", "taskList"}


def adf_to_text(node: Any) -> str:
    """Jira's description as plain text: wiki-markup strings pass through, ADF (Jira Cloud v3)
    documents are flattened; anything else is empty."""
    if isinstance(node, str):
        return node
    if not isinstance(node, dict):
        return ""
    lines = "".join(_adf_render(node)).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _adf_children(node: dict[str, Any], prefix: str = "") -> list[str]:
    children = [child for child in _list(node.get("content")) if isinstance(child, dict)]
    return [piece for child in children for piece in _adf_render(child, prefix)]


def _adf_render(node: dict[str, Any], prefix: str = "") -> list[str]:
    kind = _str(node.get("type"))  # a list here would make the set lookups below raise
    attrs = _obj(node.get("attrs"))
    if kind == "text":
        return [_str(node.get("text")) or ""]
    if kind == "hardBreak":
        return ["\n" + prefix]
    if kind in ("mention", "emoji", "status", "date"):
        return [_str(attrs.get("text")) or _str(attrs.get("shortName")) or _str(attrs.get("timestamp")) or ""]
    if kind in ("inlineCard", "blockCard", "embedCard"):
        return [_str(attrs.get("url")) or ""] + (["\n"] if kind != "inlineCard" else [])
    if kind == "codeBlock":
        language = _str(attrs.get("language")) or ""
        return [f"```{language}\n", *_adf_children(node), "\n```\n\n"]
    if kind in ("bulletList", "orderedList"):
        return _adf_list(node, ordered=kind == "orderedList", prefix=prefix)
    if kind == "tableCell" or kind == "tableHeader":
        return [*_adf_children(node, prefix), " | "]
    if kind in _ADF_BLOCKS:
        return [*_adf_children(node, prefix), "\n\n" if kind in ("paragraph", "heading") and not prefix else "\n"]
    return _adf_children(node, prefix)  # doc, listItem, unknown nodes: their text is what matters


def _adf_list(node: dict[str, Any], *, ordered: bool, prefix: str) -> list[str]:
    pieces: list[str] = []
    start = _int(_dig(node, "attrs", "order")) or 1
    for number, item in enumerate((i for i in _list(node.get("content")) if isinstance(i, dict)), start):
        marker = f"{number}. " if ordered else "- "
        text = "".join(_adf_children(item, prefix + "  ")).strip("\n")
        pieces.append(f"{prefix}{marker}{text}\n")
    return pieces + (["\n"] if not prefix else [])


# --- Slack --------------------------------------------------------------------------------

_ACTION_VALUE = re.compile(r"^\s*(FF-\d+)(?::v(\d+))?\s*$", re.I)
_TASK_KEY = re.compile(r"\bFF-(\d+)\b", re.I)


def slack_action_value(task_key: str, plan_version: int | None) -> str:
    """The `value` of an Approve/Reject button: `FF-12:v2` (or `FF-12` without a version)."""
    return task_key if plan_version is None else f"{task_key}:v{plan_version}"


def parse_slack_action_value(value: Any) -> tuple[str, int | None] | None:
    match = _ACTION_VALUE.match(value) if isinstance(value, str) else None
    if not match:
        return None
    return match[1].upper(), int(match[2]) if match[2] is not None else None


def parse_slack_interaction(payload: Any) -> SlackAction | Ignored:
    """The JSON inside the `payload=` form field of an interaction (decoded after verifying)."""
    payload = _require_object(payload)
    if payload.get("type") != "block_actions":
        return Ignored(reason=f"Slack interaction {payload.get('type')!r}: only block_actions are handled")
    user_id = _str(_dig(payload, "user", "id"))
    if not user_id:
        return Ignored(reason="Slack interaction without user.id")
    for action in _list(payload.get("actions")):
        action_id = _dig(action, "action_id")
        if action_id not in ("approve", "reject"):
            continue
        target = parse_slack_action_value(_dig(action, "value"))
        if target is None:
            return Ignored(reason=f"button value {_dig(action, 'value')!r} is not like 'FF-12:v2'")
        return SlackAction(
            action=action_id,
            task_key=target[0],
            plan_version=target[1],
            user_id=user_id,
            user_name=_str(_dig(payload, "user", "username")) or _str(_dig(payload, "user", "name")),
            response_url=_str(payload.get("response_url")),
        )
    return Ignored(reason="no approve or reject action in this Slack interaction")


def parse_slack_command(form: Mapping[str, str]) -> CommandRequest | Ping:
    """A slash command (`/fixfleet status FF-12`); `text` keeps the command so the command
    parser reads it like any other. Slack's `ssl_check` probe yields Ping."""
    if not isinstance(form, Mapping):
        raise ParseError(f"expected form fields, got {type(form).__name__}")
    if form.get("ssl_check"):
        return Ping()
    user_id = _str(form.get("user_id"))
    if not user_id:
        raise ParseError("slash command without user_id")
    command = _str(form.get("command")) or "/fixfleet"
    text = f"{command} {_str(form.get('text')) or ''}".strip()
    key = _TASK_KEY.search(text)
    return CommandRequest(
        source=Source.SLACK,
        text=text,
        author=_str(form.get("user_name")) or user_id,
        author_id=user_id,
        task_key=f"FF-{int(key[1])}" if key else None,
        response_url=_str(form.get("response_url")),
    )


# --- delivery ids -------------------------------------------------------------------------

_DELIVERY_HEADER = {
    "github": "x-github-delivery",
    "sentry": "request-id",
    "jira": "x-atlassian-webhook-identifier",
}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive, for plain dicts as well as Starlette's Headers."""
    for key, value in headers.items():
        if key.lower() == name and value and value.strip():
            return value.strip()
    return None


def _content_hash(payload: Any, body: bytes | None) -> str:
    if body is None:  # canonical JSON: the same content hashes the same whatever its key order
        plain = dict(payload) if isinstance(payload, Mapping) else payload
        body = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def delivery_id(source: str, headers: Mapping[str, str], payload: Any, body: bytes | None = None) -> str:
    """The id a redelivery repeats, so the app stores each delivery once (per source).

    GitHub `X-GitHub-Delivery`, Sentry `Request-ID`, Jira `X-Atlassian-Webhook-Identifier`
    (stable across Jira's retries); Slack the payload's `trigger_id`, else the action's
    `action_ts`. Without one: a hash of the raw body (or of the canonical JSON).
    """
    source = str(source)
    if source in _DELIVERY_HEADER:
        found = _header(headers, _DELIVERY_HEADER[source])
    elif source == "slack":
        found = _str(_dig(payload, "trigger_id")) or _str(_dig(payload, "actions", 0, "action_ts"))
    else:
        found = None
    return found or _content_hash(payload, body)
