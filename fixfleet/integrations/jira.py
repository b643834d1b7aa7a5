"""Jira Cloud REST v3: search issues, comment once per step (ADF bodies), move an issue through its
workflow; and Jira as a task's Tracker (`JiraTracker`).

Comments carry a small marker paragraph (`[fixfleet:<marker>]`, grey) because ADF has no hidden
nodes; `add_comment` skips the write when a comment with that marker is already there, so a retried
step comments once.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any, Unpack
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from fixfleet.formats.adf import adf_to_text
from fixfleet.integrations.base import (
    ApiClient,
    ClientOptions,
    RejectedError,
    secret_value,
)
from fixfleet.integrations.tracker import Tracker
from fixfleet.logs import log_once

log = logging.getLogger(__name__)
MAX_COMMENT_PAGES = 40
MAX_SEARCH_PAGES = 200  # 20,000 issues at 100 a page: a backlog, not a data export
SEARCH_FIELDS = ["summary", "description", "priority", "project", "status", "issuetype", "labels"]
MARKER_COLOR = "#97a0af"
_MARKER = re.compile(r"^[\w.:/-]+$")
_URL = re.compile(r"https?://[^\s<>\"')\]]+")
_FENCE = re.compile(r"^```\s*([\w+#.-]*)\s*$")
_BULLET = re.compile(r"^\s*[-*] +(.*)$")


class TransitionNotFoundError(RejectedError):
    """No transition of that name from the issue's current status; `available` lists the names."""

    def __init__(self, service: str, message: str, available: list[str]) -> None:
        super().__init__(service, message, None)
        self.available = available


def marker_text(marker: str) -> str:
    if not _MARKER.match(marker):
        raise ValueError(f"marker {marker!r}: use letters, digits and . _ : / -")
    return f"[fixfleet:{marker}]"


# --- plain text -> Atlassian Document Format -------------------------------------------------


def _inline(text: str) -> list[dict[str, Any]]:
    """Text nodes for one line, URLs as links; never an empty text node (Jira rejects those)."""
    nodes: list[dict[str, Any]] = []
    position = 0
    for match in _URL.finditer(text):
        if match.start() > position:
            nodes.append({"type": "text", "text": text[position:match.start()]})
        url = match.group(0).rstrip(".,;:")
        nodes.append({"type": "text", "text": url, "marks": [{"type": "link", "attrs": {"href": url}}]})
        position = match.start() + len(url)
    if position < len(text):
        nodes.append({"type": "text", "text": text[position:]})
    return nodes


def _paragraph(lines: list[str]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for index, line in enumerate(lines):
        if index:
            content.append({"type": "hardBreak"})
        content.extend(_inline(line))
    return {"type": "paragraph", "content": content}


def text_to_adf(text: str, *, marker: str | None = None) -> dict[str, Any]:
    """A plain-text (light markdown) comment as an ADF document: blank lines split paragraphs,
    ``` fences make code blocks, `- ` lines make bullet lists, URLs become links."""
    blocks: list[dict[str, Any]] = []
    paragraph: list[str] = []
    bullets: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(_paragraph(paragraph))
            paragraph.clear()
        if bullets:
            items = [{"type": "listItem", "content": [_paragraph([item])]} for item in bullets if item.strip()]
            if items:
                blocks.append({"type": "bulletList", "content": items})
            bullets.clear()

    lines = text.replace("\r\n", "\n").split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line.strip())
        if fence:
            flush()
            code: list[str] = []
            index += 1
            while index < len(lines) and lines[index].strip() != "```":
                code.append(lines[index])
                index += 1
            node: dict[str, Any] = {"type": "codeBlock"}
            if fence.group(1):
                node["attrs"] = {"language": fence.group(1)}
            if "\n".join(code):
                node["content"] = [{"type": "text", "text": "\n".join(code)}]
            blocks.append(node)
        elif not line.strip():
            flush()
        elif bullet := _BULLET.match(line):
            if paragraph:
                flush()
            bullets.append(bullet.group(1))
        else:
            if bullets:
                flush()
            paragraph.append(line.rstrip())
        index += 1
    flush()
    if marker is not None:
        blocks.append({"type": "paragraph", "content": [{
            "type": "text", "text": marker_text(marker),
            "marks": [{"type": "textColor", "attrs": {"color": MARKER_COLOR}}],
        }]})
    return {"type": "doc", "version": 1, "content": blocks}


# --- the client ------------------------------------------------------------------------------


class JiraClient(ApiClient):
    service = "jira"

    def __init__(
        self,
        base_url: str,
        email: str,
        token: SecretStr | str,
        **retry: Unpack[ClientOptions],
    ) -> None:
        plain = secret_value(token) or ""
        basic = base64.b64encode(f"{email}:{plain}".encode()).decode()
        super().__init__(
            base_url=base_url.rstrip("/") + "/rest/api/3",
            headers={"Accept": "application/json"},
            auth=httpx.BasicAuth(email, plain),
            secrets=[plain, basic],
            **retry,
        )
        self.site_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"JiraClient({self.site_url!r})"

    def browse_url(self, key: str) -> str:
        return f"{self.site_url}/browse/{key}"

    async def get_issue(self, key: str, fields: list[str] | None = None) -> dict[str, Any]:
        params = {"fields": ",".join(fields)} if fields else None
        return self._json(await self._call("GET", f"/issue/{quote(key)}", params=params))

    async def search(self, jql: str, *, fields: list[str] | None = None, page_size: int = 100,
                     limit: int | None = None) -> list[dict[str, Any]]:
        """The issues a JQL query finds, page by page (`POST /search/jql`, `nextPageToken`), with
        `fields` (default SEARCH_FIELDS: the endpoint returns only ids unless asked)."""
        found: list[dict[str, Any]] = []
        body: dict[str, Any] = {"jql": jql, "fields": fields or SEARCH_FIELDS, "maxResults": page_size}
        for _ in range(MAX_SEARCH_PAGES):
            page = self._json(await self._call("POST", "/search/jql", json=body))
            found.extend(page.get("issues") or [])
            token = page.get("nextPageToken")
            if (limit is not None and len(found) >= limit) or not token or page.get("isLast"):
                break
            body["nextPageToken"] = token
        return found[:limit] if limit is not None else found

    async def comments(self, key: str) -> list[dict[str, Any]]:
        """Every comment of the issue (paged by startAt / maxResults / total)."""
        found: list[dict[str, Any]] = []
        for _ in range(MAX_COMMENT_PAGES):
            page = self._json(await self._call(
                "GET", f"/issue/{quote(key)}/comment", params={"startAt": len(found), "maxResults": 100}
            ))
            batch = page.get("comments") or []
            found.extend(batch)
            if not batch or len(found) >= int(page.get("total") or 0):
                break
        return found

    async def add_comment(self, key: str, text: str, marker: str) -> dict[str, Any]:
        """Comment `text` (as ADF) once per `marker`: when a comment with the marker exists, it is
        returned and nothing is written."""
        if not text.strip():
            raise ValueError("a Jira comment needs some text")
        tag = marker_text(marker)
        for comment in await self.comments(key):
            if tag in adf_to_text(comment.get("body")):
                return comment
        body = {"body": text_to_adf(text, marker=marker)}
        return self._json(await self._call("POST", f"/issue/{quote(key)}/comment", json=body))

    async def upsert_comment(self, key: str, text: str, marker: str) -> dict[str, Any]:
        """One comment per `marker`, edited in place when its text changed (PUT .../comment/{id})."""
        tag = marker_text(marker)
        body = {"body": text_to_adf(text, marker=marker)}
        for comment in await self.comments(key):
            if tag in adf_to_text(comment.get("body")):
                if comment.get("body") == body["body"]:
                    return comment
                url = f"/issue/{quote(key)}/comment/{quote(str(comment['id']))}"
                return self._json(await self._call("PUT", url, json=body))
        return self._json(await self._call("POST", f"/issue/{quote(key)}/comment", json=body))

    async def remote_link(self, key: str, url: str, title: str) -> dict[str, Any]:
        """A remote link from the issue to `url`; its globalId (the URL) makes a second call update it."""
        body = {"globalId": f"fixfleet:{url}", "application": {"type": "fixfleet", "name": "fixfleet"},
                "object": {"url": url, "title": title[:255]}}
        return self._json(await self._call("POST", f"/issue/{quote(key)}/remotelink", json=body))

    async def remote_links(self, key: str) -> list[dict[str, Any]]:
        return self._json(await self._call("GET", f"/issue/{quote(key)}/remotelink")) or []

    async def ticket_context(self, key: str) -> dict[str, Any]:
        """What the planner is shown of a ticket: its description, comments (the last 20, not
        fixfleet's own), components, labels and the Sentry issues linked to it."""
        fields = (await self.get_issue(key, fields=["description", "components", "labels"])).get("fields") or {}
        comments = [adf_to_text(c.get("body")) for c in await self.comments(key)]
        links = [str((link.get("object") or {}).get("url") or "") for link in await self.remote_links(key)]
        return {
            "description": adf_to_text(fields.get("description"))[:20000],
            "comments": [c[:4000] for c in comments if "[fixfleet:" not in c][-20:],
            "components": [str(c.get("name")) for c in fields.get("components") or [] if isinstance(c, dict)],
            "labels": list(fields.get("labels") or []),
            "sentry_links": [url for url in links if "sentry" in url],
        }

    async def add_label(self, key: str, label: str) -> None:
        """Add a label (the issue's others stay): PUT /issue/{key} with an `update` operation."""
        await self._call("PUT", f"/issue/{quote(key)}", json={"update": {"labels": [{"add": label}]}})

    async def transitions(self, key: str) -> list[dict[str, Any]]:
        return self._json(await self._call("GET", f"/issue/{quote(key)}/transitions")).get("transitions") or []

    async def transition(self, key: str, name: str) -> dict[str, Any] | None:
        """Move the issue by the transition called `name` (or leading to the status called `name`),
        case-insensitively. Returns the transition taken, None when the issue is already in that
        status; raises TransitionNotFoundError naming the available ones otherwise."""
        wanted = name.strip().casefold()
        issue = await self.get_issue(key, fields=["status"])
        status = (((issue.get("fields") or {}).get("status")) or {}).get("name") or ""
        if status.casefold() == wanted:
            return None
        available = await self.transitions(key)
        chosen = next((t for t in available if str(t.get("name", "")).casefold() == wanted), None) or next(
            (t for t in available if str((t.get("to") or {}).get("name", "")).casefold() == wanted), None
        )
        if chosen is None:
            names = [str(t.get("name")) for t in available]
            raise TransitionNotFoundError(
                self.service, f"{key} (status {status!r}) has no transition {name!r}; available: {', '.join(names) or 'none'}",
                names,
            )
        await self._call("POST", f"/issue/{quote(key)}/transitions", json={"transition": {"id": str(chosen["id"])}})
        return chosen


class JiraTracker(Tracker):
    """Jira as a task's tracker: comments (the analysis kept up to date per marker), a remote link
    to the pull request, the `fixfleet` label, and transitions by the operator's mapping
    (FIXFLEET_JIRA_TRANSITIONS: step -> a transition's name, or the status it leads to). A step's
    transition missing from the issue's workflow is logged once per project with the available
    ones, and never fails the task."""

    key = "jira"

    def __init__(self, client: JiraClient, transitions: dict[str, str] | None = None) -> None:
        self.client = client
        self.transitions = {step.upper(): name for step, name in (transitions or {}).items() if name}

    async def comment(self, issue: str, text: str, *, marker: str) -> None:
        await self.client.add_comment(issue, text, marker=marker)

    async def upsert_comment(self, issue: str, text: str, *, marker: str) -> None:
        await self.client.upsert_comment(issue, text, marker=marker)

    async def move(self, issue: str, step: str) -> None:
        name = self.transitions.get(step.upper())
        if not name:
            return
        try:
            await self.client.transition(issue, name)
        except TransitionNotFoundError as exc:
            project = issue.rsplit("-", 1)[0]
            log_once(log, ("jira-transition", project, step), "jira %s: no transition %r for %s (mapped in "
                     "FIXFLEET_JIRA_TRANSITIONS); available: %s", project, name, step,
                     ", ".join(exc.available) or "none")

    async def link(self, issue: str, url: str, title: str) -> None:
        await self.client.remote_link(issue, url, title)

    async def label(self, issue: str, label: str) -> None:
        await self.client.add_label(issue, label)
