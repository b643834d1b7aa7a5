"""Jira Cloud REST v3 stand-in: issues, ADF comments, a small workflow with transitions, JQL search.

Basic auth (email:API token) or 401; comment bodies must be ADF documents (a v2-style string is
refused as Jira Cloud v3 refuses it); a transition id must be one available from the status.
Search is the enhanced `GET/POST /rest/api/3/search/jql` (`nextPageToken`, `isLast`, only the
ids unless `fields` are asked for) over a small JQL subset: `project = K`, `project in (A, B)`,
`status`, `statusCategory`, `labels` with `=` / `!=`, joined by AND, an ORDER BY ignored; other
JQL is a 400 as Jira answers it.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Callable
from typing import Any

from tests.fakes.base import Call, Reply
from tests.fakes.faults import FakeAPI

API = "/rest/api/3"
ISSUE = rf"{API}/issue/(?P<key>[A-Z][A-Z0-9_]*-\d+)"
STATUS_CATEGORY = {"To Do": "new", "In Progress": "indeterminate", "In Review": "indeterminate", "Done": "done"}
CATEGORY_NAMES = {"to do": "new", "in progress": "indeterminate", "done": "done"}  # JQL statusCategory names
_JQL_CLAUSE = re.compile(r'^\s*(\w+)\s*(!=|=|not in|in)\s*(\([^)]*\)|"[^"]*"|\S+)\s*$', re.I)
# (id, transition name, target status): the names differ from the statuses on purpose.
WORKFLOW = [("11", "Back to To Do", "To Do"), ("21", "Start Progress", "In Progress"),
            ("31", "Ready for Review", "In Review"), ("41", "Done", "Done")]
ADF_NODES = {"doc", "paragraph", "text", "hardBreak", "codeBlock", "bulletList", "orderedList", "listItem",
             "heading", "rule", "blockquote", "panel", "mention", "emoji", "inlineCard", "table", "tableRow",
             "tableCell", "tableHeader", "mediaSingle", "media", "expand", "status", "date"}
ADF_MARKS = {"strong", "em", "code", "link", "strike", "underline", "textColor", "subsup"}


def _errors(status: int, *messages: str, **fields: str) -> Reply:
    return Reply(status, {"errorMessages": list(messages), "errors": fields})


def adf_problem(node: Any, path: str = "body") -> str | None:
    """Why `node` is not a valid ADF node (roughly Jira's checks), or None."""
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        return f"{path}: a node must be an object with a type"
    kind = node["type"]
    if kind not in ADF_NODES:
        return f"{path}: unknown node type {kind!r}"
    if kind == "text":
        if not isinstance(node.get("text"), str) or not node["text"]:
            return f"{path}: a text node needs non-empty text"
        for mark in node.get("marks") or []:
            if not isinstance(mark, dict) or mark.get("type") not in ADF_MARKS:
                return f"{path}: invalid mark {mark!r}"
    content = node.get("content")
    if content is not None:
        if not isinstance(content, list):
            return f"{path}.content must be a list"
        for index, child in enumerate(content):
            if (problem := adf_problem(child, f"{path}.content[{index}]")) is not None:
                return problem
    return None


# --- JQL search -------------------------------------------------------------------------------


def _jql_values(raw: str) -> set[str]:
    raw = raw.strip()
    items = raw[1:-1].split(",") if raw.startswith("(") else [raw]
    return {item.strip().strip('"').casefold() for item in items if item.strip()}


def _jql_field(issue: dict[str, Any], field: str) -> set[str]:
    fields = issue["fields"]
    if field == "project":
        return {fields["project"]["key"].casefold()}
    if field == "status":
        return {fields["status"]["name"].casefold()}
    if field == "statuscategory":
        return {fields["status"]["statusCategory"]["key"]}
    return {label.casefold() for label in fields.get("labels") or []}


def jql_matcher(jql: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for the supported JQL subset; ValueError names what is not supported."""
    where = re.split(r"\border\s+by\b", jql, maxsplit=1, flags=re.I)[0]
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for clause in filter(str.strip, re.split(r"\s+and\s+", where, flags=re.I)):
        match = _JQL_CLAUSE.match(clause)
        field = match[1].casefold() if match else ""
        if not match or field not in ("project", "status", "statuscategory", "labels"):
            raise ValueError(f"Error in the JQL Query: the fake does not understand {clause.strip()!r}.")
        wanted = _jql_values(match[3])
        if field == "statuscategory":
            wanted = {CATEGORY_NAMES.get(v, v) for v in wanted}
        negate = match[2].casefold() in ("!=", "not in")
        tests.append(lambda issue, f=field, w=wanted, n=negate: bool(_jql_field(issue, f) & w) != n)
    return lambda issue: all(test(issue) for test in tests)


class FakeJira(FakeAPI):
    published_api = "jira"

    def __init__(self, email: str, token: str) -> None:
        super().__init__()
        self.email, self.token = email, token
        self.issues: dict[str, dict[str, Any]] = {}
        self.issue_comments: dict[str, list[dict[str, Any]]] = {}
        self.transition_log: list[tuple[str, str, str]] = []  # (key, from status, to status)
        self.remote_links: dict[str, list[dict[str, Any]]] = {}  # issue key -> its remote links
        self.comment_page_size = 50  # Jira's maxResults cap is larger; tests shrink it to page
        self.search_page_size = 100  # Jira caps a page of issues with fields at 100; tests shrink it
        self._ids = itertools.count(10000)
        self.route("GET", ISSUE, self._get_issue)
        self.route("GET", rf"{ISSUE}/comment", self._list_comments)
        self.route("POST", rf"{ISSUE}/comment", self._add_comment)
        self.route("GET", rf"{ISSUE}/transitions", self._list_transitions)
        self.route("POST", rf"{ISSUE}/transitions", self._transition)
        self.route("PUT", rf"{ISSUE}/comment/(?P<id>\d+)", self._edit_comment)
        self.route("POST", rf"{ISSUE}/remotelink", self._remote_link)
        self.route("GET", rf"{ISSUE}/remotelink", self._list_remote_links)
        self.route("PUT", ISSUE, self._edit_issue)
        self.route("GET", rf"{API}/search/jql", self._search)
        self.route("POST", rf"{API}/search/jql", self._search)

    def authorized(self, call: Call) -> bool:
        expected = base64.b64encode(f"{self.email}:{self.token}".encode()).decode()
        return call.headers.get("authorization") == f"Basic {expected}"

    def unauthorized(self, call: Call) -> Reply:
        return Reply(401, {"errorMessages": ["Client must be authenticated to access this resource."]})

    # --- test set-up ----------------------------------------------------------------------------

    def add_issue(self, key: str, summary: str = "Something is broken", status: str = "To Do",
                  description: str = "It fails.", *, priority: str = "High",
                  labels: tuple[str, ...] = ("fixfleet",)) -> dict[str, Any]:
        issue_id = str(next(self._ids))
        issue = {
            "id": issue_id, "key": key, "self": f"{self.url}{API}/issue/{issue_id}",
            "fields": {
                "summary": summary,
                "description": {"type": "doc", "version": 1, "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": description}]}]},
                "project": {"key": key.rsplit("-", 1)[0]},
                "issuetype": {"name": "Bug"}, "labels": list(labels), "priority": {"name": priority},
            },
        }
        self.issues[key] = issue
        self.issue_comments[key] = []
        self._set_status(issue, status)
        return issue

    def status(self, key: str) -> str:
        return self.issues[key]["fields"]["status"]["name"]

    def comments(self, key: str) -> list[dict[str, Any]]:
        return self.issue_comments[key]

    @staticmethod
    def _set_status(issue: dict[str, Any], status: str) -> None:
        issue["fields"]["status"] = {"name": status, "statusCategory": {"key": STATUS_CATEGORY[status]}}

    def _issue(self, m: re.Match) -> dict[str, Any] | None:
        return self.issues.get(m["key"])

    @staticmethod
    def _missing() -> Reply:
        return _errors(404, "Issue does not exist or you do not have permission to see it.")

    # --- routes ---------------------------------------------------------------------------------

    def _get_issue(self, call: Call, m: re.Match) -> Reply:
        issue = self._issue(m)
        if issue is None:
            return self._missing()
        wanted = (call.query.get("fields") or [""])[0]
        if wanted:
            names = set(wanted.split(","))
            issue = {**issue, "fields": {k: v for k, v in issue["fields"].items() if k in names}}
        return Reply(200, issue)

    def _list_comments(self, call: Call, m: re.Match) -> Reply:
        if self._issue(m) is None:
            return self._missing()
        found = self.issue_comments[m["key"]]
        start = int((call.query.get("startAt") or ["0"])[0])
        size = min(int((call.query.get("maxResults") or ["50"])[0]), self.comment_page_size)
        return Reply(200, {"startAt": start, "maxResults": size, "total": len(found),
                           "comments": found[start:start + size]})

    def _add_comment(self, call: Call, m: re.Match) -> Reply:
        if self._issue(m) is None:
            return self._missing()
        body = call.body.get("body") if isinstance(call.body, dict) else None
        if isinstance(body, str):
            return _errors(400, comment="Operation value must be an Atlassian Document (see the Atlassian Document Format)")
        if not isinstance(body, dict) or body.get("type") != "doc" or body.get("version") != 1 \
                or not isinstance(body.get("content"), list) or not body["content"]:
            return _errors(400, comment="Comment body is not valid!")
        if (problem := adf_problem(body)) is not None:
            return _errors(400, "INVALID_INPUT", comment=problem)
        cid = str(next(self._ids))
        comment = {"id": cid, "self": f"{self.url}{API}/issue/{m['key']}/comment/{cid}", "body": body,
                   "author": {"displayName": "fixfleet", "emailAddress": self.email},
                   "created": "2024-01-01T00:00:00.000+0000"}
        self.issue_comments[m["key"]].append(comment)
        return Reply(201, comment)

    def _edit_comment(self, call: Call, m: re.Match) -> Reply:
        if self._issue(m) is None:
            return self._missing()
        body = call.body.get("body") if isinstance(call.body, dict) else None
        if not isinstance(body, dict) or body.get("type") != "doc" or adf_problem(body) is not None:
            return _errors(400, comment="Comment body is not valid!")
        for comment in self.issue_comments[m["key"]]:
            if comment["id"] == m["id"]:
                comment["body"] = body
                comment["updated"] = "2024-01-01T00:00:01.000+0000"
                return Reply(200, comment)
        return _errors(404, "Can not find a comment for the id")

    def _remote_link(self, call: Call, m: re.Match) -> Reply:
        """Jira's create-or-update: a link with the same globalId is updated, not added."""
        if self._issue(m) is None:
            return self._missing()
        body = call.body if isinstance(call.body, dict) else {}
        target = body.get("object")
        if not isinstance(target, dict) or not isinstance(target.get("url"), str) or not isinstance(target.get("title"), str):
            return _errors(400, object="'object' with 'url' and 'title' is required")
        links = self.remote_links.setdefault(m["key"], [])
        for index, link in enumerate(links):
            if body.get("globalId") and link.get("globalId") == body["globalId"]:
                links[index] = {**body, "id": link["id"]}
                return Reply(200, {"id": link["id"], "self": f"{self.url}{API}/issue/{m['key']}/remotelink/{link['id']}"})
        link_id = next(self._ids)
        links.append({**body, "id": link_id})
        return Reply(201, {"id": link_id, "self": f"{self.url}{API}/issue/{m['key']}/remotelink/{link_id}"})

    def _list_remote_links(self, call: Call, m: re.Match) -> Reply:
        if self._issue(m) is None:
            return self._missing()
        return Reply(200, self.remote_links.get(m["key"], []))

    def _edit_issue(self, call: Call, m: re.Match) -> Reply:
        issue = self._issue(m)
        if issue is None:
            return self._missing()
        update = call.body.get("update") if isinstance(call.body, dict) else None
        if not isinstance(update, dict) or set(update) - {"labels"}:
            return _errors(400, "the fake edits labels only")
        for operation in update.get("labels", []):
            if not isinstance(operation, dict) or set(operation) - {"add", "remove", "set"}:
                return _errors(400, labels="Field 'labels' operations: add, remove or set")
            if "add" in operation and operation["add"] not in issue["fields"]["labels"]:
                issue["fields"]["labels"].append(operation["add"])
        return Reply(204)

    def _available(self, issue: dict[str, Any]) -> list[dict[str, Any]]:
        current = issue["fields"]["status"]["name"]
        return [{"id": tid, "name": name, "hasScreen": False, "isGlobal": True,
                 "to": {"name": to, "statusCategory": {"key": STATUS_CATEGORY[to]}}}
                for tid, name, to in WORKFLOW if to != current]

    def _list_transitions(self, call: Call, m: re.Match) -> Reply:
        issue = self._issue(m)
        return Reply(200, {"expand": "transitions", "transitions": self._available(issue)}) if issue else self._missing()

    def _transition(self, call: Call, m: re.Match) -> Reply:
        issue = self._issue(m)
        if issue is None:
            return self._missing()
        wanted = call.body.get("transition") if isinstance(call.body, dict) else None
        tid = wanted.get("id") if isinstance(wanted, dict) else None
        if not isinstance(tid, str):
            return _errors(400, "Missing transition id.")
        chosen = next((t for t in self._available(issue) if t["id"] == tid), None)
        if chosen is None:
            return _errors(400, f"Transition id '{tid}' is not valid for this issue.")
        before = issue["fields"]["status"]["name"]
        self._set_status(issue, chosen["to"]["name"])
        self.transition_log.append((m["key"], before, chosen["to"]["name"]))
        return Reply(204)

    def _search(self, call: Call, m: re.Match) -> Reply:
        params = call.body if call.method == "POST" and isinstance(call.body, dict) else \
            {k: v[0] for k, v in call.query.items()}
        fields = params.get("fields") or []
        fields = fields.split(",") if isinstance(fields, str) else fields
        try:
            matches = jql_matcher(str(params.get("jql") or ""))
        except ValueError as exc:
            return _errors(400, str(exc))
        start = int(base64.b64decode(params["nextPageToken"]).decode()) if params.get("nextPageToken") else 0
        size = min(int(params.get("maxResults") or 50), self.search_page_size)
        hits = [issue for issue in self.issues.values() if matches(issue)]
        page = [{"expand": "", "id": i["id"], "self": i["self"], "key": i["key"],
                 **({"fields": {k: v for k, v in i["fields"].items() if k in fields}} if fields else {})}
                for i in hits[start:start + size]]
        last = start + size >= len(hits)
        answer: dict[str, Any] = {"issues": page, "isLast": last}
        if not last:
            answer["nextPageToken"] = base64.b64encode(str(start + size).encode()).decode()
        return Reply(200, answer)
