"""GitHub webhooks: a labelled issue becomes a task; comments and reviews carry commands."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fixfleet.forges.github import pull_state
from fixfleet.forge_refs import ISSUE_KEY, ForgeRef, ForgeRepo, host_of
from fixfleet.formats.access import as_int, as_list, as_str, dig, obj
from fixfleet.intake.access import one_line, require_object, task_request
from fixfleet.intake.events import CommandRequest, Ignored, Ping, PullRequestChanged, TaskRequest
from fixfleet.models import Priority, Source

if TYPE_CHECKING:
    from fixfleet.config import Settings

_PRIORITY_LABEL = re.compile(r"^(?:priority|prio)?[\s:/_-]*(critical|urgent|high|medium|normal|low|p[0-3])$", re.I)
_PRIORITY_WORD = {
    "critical": Priority.CRITICAL, "urgent": Priority.CRITICAL, "p0": Priority.CRITICAL,
    "high": Priority.HIGH, "p1": Priority.HIGH,
    "medium": Priority.NORMAL, "normal": Priority.NORMAL, "p2": Priority.NORMAL,
    "low": Priority.LOW, "p3": Priority.LOW,
}
# fixfleet's branches are `fixfleet/<task>`; both `fixfleet/12` and `fixfleet/FF-12` name FF-12.
_TASK_BRANCH = re.compile(r"^fixfleet/(?:ff-)?(\d+)(?:$|[^\d])", re.I)


def parse_github(event: str, payload: Any,
                 settings: Settings) -> TaskRequest | CommandRequest | PullRequestChanged | Ignored | Ping:
    """`event` is the `X-GitHub-Event` header."""
    payload = require_object(payload)
    if event == "ping":
        return Ping()
    handler = _GITHUB_HANDLERS.get(event)
    if handler is None:
        return Ignored(reason=f"GitHub event {event!r} is not one fixfleet acts on")
    return handler(payload, settings)


def _label_names(issue: dict[str, Any]) -> list[str]:
    return [name for label in as_list(issue.get("labels")) if (name := as_str(dig(label, "name")))]


def _same_label(a: str | None, b: str) -> bool:
    return a is not None and a.casefold() == b.casefold()  # GitHub labels are case-insensitive


def _priority_from_labels(names: list[str]) -> Priority:
    found = [_PRIORITY_WORD[m[1].lower()] for name in names if (m := _PRIORITY_LABEL.match(name.strip()))]
    return min(found, key=lambda p: p.rank) if found else Priority.NORMAL


def _github_issue(payload: dict[str, Any], settings: Settings) -> TaskRequest | Ignored:
    action = as_str(payload.get("action"))
    issue = obj(payload.get("issue"))
    wanted = settings.github_label
    if action not in ("opened", "labeled"):
        return Ignored(reason=f"issues.{action}: only opened or labeled issues become tasks")
    if not issue:
        return Ignored(reason="issues event without an issue")
    if issue.get("pull_request"):
        return Ignored(reason="a label on a pull request does not make a task")
    if action == "labeled" and not _same_label(as_str(dig(payload, "label", "name")), wanted):
        return Ignored(reason=f"label {dig(payload, 'label', 'name')!r} is not {wanted!r}")
    if action == "opened" and not any(_same_label(n, wanted) for n in _label_names(issue)):
        return Ignored(reason=f"issue opened without the {wanted!r} label")
    if issue.get("state") == "closed":
        return Ignored(reason="the issue is closed")
    return _github_issue_task(payload, issue)


def thread_ref(payload: dict[str, Any], number: int | None) -> ForgeRef | None:
    """The issue or pull request `number` of the payload's repository, on the host the payload
    came from (an Enterprise server's, or github.com's)."""
    full_name = as_str(dig(payload, "repository", "full_name"))
    if not full_name or number is None:
        return None
    url = as_str(dig(payload, "repository", "html_url")) or as_str(dig(payload, "repository", "clone_url")) or ""
    try:
        return ForgeRepo(host=host_of(url), name=full_name).thread(number)
    except ValidationError:
        return None


def _github_issue_task(payload: dict[str, Any], issue: dict[str, Any]) -> TaskRequest | Ignored:
    repo = as_str(dig(payload, "repository", "clone_url"))
    full_name = as_str(dig(payload, "repository", "full_name"))
    number = as_int(issue.get("number"))
    ref = thread_ref(payload, number)
    if not repo or not full_name or ref is None:
        return Ignored(reason="issues event without repository.clone_url, repository.full_name or issue.number")
    labels = _label_names(issue)
    author = as_str(dig(issue, "user", "login"))
    context = {
        "web_url": as_str(issue.get("html_url")),
        "labels": labels,
        "author": author,
        "initiator": f"github:{author}" if author else None,
        "repo_full_name": full_name,
        "issue_number": number,
    }
    # GitHub sends both `opened` and `labeled` for an issue created with the label: the store
    # keeps one open task per issue.
    return task_request(
        source=Source.GITHUB,
        repo=repo,
        title=one_line(as_str(issue.get("title")), f"GitHub issue {ref}"),
        body=as_str(issue.get("body")) or "",
        priority=_priority_from_labels(labels),
        external_ids={ISSUE_KEY: str(ref)},
        context=context,
    )


def _is_own_or_bot(payload: dict[str, Any], user: dict[str, Any], settings: Settings) -> bool:
    login = as_str(user.get("login"))
    return (
        dig(payload, "sender", "type") == "Bot"
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
    user = obj(item.get("user")) or obj(payload.get("sender"))
    if _is_own_or_bot(payload, user, settings):
        return Ignored(reason="our own comment")  # or another bot's: no loops between bots
    author = as_str(user.get("login"))
    if not author:
        return Ignored(reason="comment without an author")
    if not isinstance(text, str) or not text.strip():
        return Ignored(reason="empty comment: no command to read")
    return CommandRequest(
        source=Source.GITHUB,
        text=text,
        author=author,
        author_id=as_str(user.get("id")),
        repo=as_str(dig(payload, "repository", "clone_url")),
        repo_full_name=as_str(dig(payload, "repository", "full_name")),
        issue_number=as_int(number),
        is_pull_request=is_pull_request,
        comment_id=as_str(item.get("id")),
        comment_url=as_str(item.get("html_url")),
        task_key=_task_key_from_branch(head_ref),
        pr_url=as_str(pr_url) if is_pull_request else None,
        edited=edited,
        created_at=_timestamp(item.get("submitted_at") or item.get("created_at")),
        where=thread_ref(payload, as_int(number)),
    )


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _github_issue_comment(payload: dict[str, Any], settings: Settings) -> CommandRequest | Ignored:
    action = as_str(payload.get("action"))
    if action not in ("created", "edited"):
        return Ignored(reason=f"issue_comment.{action}: only created or edited comments are read")
    issue = obj(payload.get("issue"))
    pull = obj(issue.get("pull_request"))  # present when the "issue" is a pull request
    return _github_command(
        payload, settings,
        item=obj(payload.get("comment")),
        text=dig(payload, "comment", "body"),
        number=issue.get("number"),
        is_pull_request=bool(issue.get("pull_request")),
        pr_url=pull.get("html_url") or issue.get("html_url"),
        edited=action == "edited",
    )


def _github_review_comment(payload: dict[str, Any], settings: Settings) -> CommandRequest | Ignored:
    action = as_str(payload.get("action"))
    if action != "created":
        return Ignored(reason=f"pull_request_review_comment.{action}: only created comments are read")
    pull = obj(payload.get("pull_request"))
    return _github_command(
        payload, settings,
        item=obj(payload.get("comment")),
        text=dig(payload, "comment", "body"),
        number=pull.get("number"),
        is_pull_request=True,
        pr_url=pull.get("html_url"),
        head_ref=dig(pull, "head", "ref"),
    )


def _github_review(payload: dict[str, Any], settings: Settings) -> CommandRequest | Ignored:
    action = as_str(payload.get("action"))
    if action != "submitted":
        return Ignored(reason=f"pull_request_review.{action}: only submitted reviews are read")
    pull = obj(payload.get("pull_request"))
    review = obj(payload.get("review"))
    ours = _task_key_from_branch(dig(pull, "head", "ref")) is not None
    if not ours and review.get("state") == "changes_requested" and not _holds_command(review.get("body")):
        return Ignored(reason="a review on a pull request fixfleet did not open")
    return _github_command(
        payload, settings,
        item=review,
        text=_review_text(review) if ours else review.get("body"),
        number=pull.get("number"),
        is_pull_request=True,
        pr_url=pull.get("html_url"),
        head_ref=dig(pull, "head", "ref"),
    )


def _review_text(review: dict[str, Any]) -> Any:
    """A review that requests changes is feedback on the plan: it reads as `@agent revise …`
    unless it already holds a command. The body is null for a bare approval: nothing to read."""
    body = review.get("body")
    if review.get("state") != "changes_requested" or not isinstance(body, str) or not body.strip():
        return body
    if _holds_command(body):
        return body
    return "@agent revise " + " ".join(body.split())


def _holds_command(body: Any) -> bool:
    from fixfleet.commands import parse_commands  # late: the command language is optional here

    return isinstance(body, str) and bool(parse_commands(body))


def _github_pull_request(payload: dict[str, Any], settings: Settings) -> PullRequestChanged | Ignored:
    """`closed` (merged or not) and `reopened`: what became of a pull request fixfleet may have opened."""
    action = as_str(payload.get("action"))
    if action not in ("closed", "reopened"):
        return Ignored(reason=f"pull_request.{action}: only closed or reopened pull requests are read")
    pull = obj(payload.get("pull_request"))
    ref = thread_ref(payload, as_int(pull.get("number")))
    if ref is None:
        return Ignored(reason="pull_request event without repository.full_name or pull_request.number")
    state = pull_state(pull | ({"state": "open", "merged": False} if action == "reopened" else {}))
    sender = as_str(dig(payload, "sender", "login"))
    if state.by is None and sender and action == "closed":
        state = state.model_copy(update={"by": sender})  # closed unmerged: the sender closed it
    return PullRequestChanged(where=ref, state=state, sender=sender)


_GITHUB_HANDLERS = {
    "pull_request": _github_pull_request,
    "issues": _github_issue,
    "issue_comment": _github_issue_comment,
    "pull_request_review_comment": _github_review_comment,
    "pull_request_review": _github_review,
}
