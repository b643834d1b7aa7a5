"""Backlogs from CSV exports: Sentry's (Discover's "Export All" of an errors query, whose header is
the query's columns: `issue.id`, `issue`, `title`, `project`, `level`, `count` for count(),
`count_unique_user` for count_unique(user), `last_seen`, ...) and Jira's ("Export CSV (all
fields)": `Summary`, `Issue key`, `Issue id`, `Issue Type`, `Status`, `Project key`, `Priority`,
`Description`, a repeated `Labels`, ...). Title-case spellings ("Issue ID", "Short ID", "Count",
"Users", "Permalink") are read too, as other tools write them.

A file that is neither, or lacks a column the items need, is refused with the columns missing
and the columns found.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from pathlib import Path

from fixfleet.backlog.items import BacklogItem, make_item, repository_for
from fixfleet.config import Settings, load_settings
from fixfleet.intake.jira import jira_priority, sentry_issue_links
from fixfleet.intake.sentry import sentry_priority
from fixfleet.models import Priority

FIELD_LIMIT = 16 * 1024 * 1024  # a Jira description can be long; csv's default limit is 128 KiB

# Column -> the header spellings that mean it, compared case-insensitively.
SENTRY_COLUMNS = {
    "id": ("issue.id", "issue id", "id", "group id"),
    "short_id": ("issue", "short id", "shortid"),
    "title": ("title",),
    "project": ("project", "project.name", "project slug"),
    "level": ("level",),
    "count": ("count", "count()", "events", "times_seen"),
    "users": ("count_unique_user", "count_unique(user)", "users", "user count", "usercount"),
    "culprit": ("culprit", "transaction"),
    "message": ("message",),
    "status": ("status", "issue.status"),
    "permalink": ("permalink", "link", "url"),
    "first_seen": ("first_seen", "first_seen()", "first seen", "firstseen"),
    "last_seen": ("last_seen", "last_seen()", "last seen", "lastseen"),
}
JIRA_COLUMNS = {
    "key": ("issue key", "key"),
    "id": ("issue id",),
    "summary": ("summary",),
    "project": ("project key",),
    "type": ("issue type",),
    "status": ("status",),
    "status_category": ("status category",),
    "resolution": ("resolution",),
    "priority": ("priority",),
    "description": ("description",),
    "labels": ("labels",),
}
_SENTRY_ISSUE_URL = re.compile(r"/issues/(\d+)")


class BacklogFormatError(ValueError):
    """The file is not an export fixfleet reads, or lacks what it needs; the message says what."""


def read_csv(path: str | Path, *, repos: Mapping[str, str] | None = None,
             settings: Settings | None = None) -> list[BacklogItem]:
    """The items of a Sentry or Jira CSV export, repositories mapped (see `repository_for`)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # Excel and Jira write a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise BacklogFormatError(f"cannot read {path}: {exc}") from None
    return parse_csv(text, name=str(path), repos=repos, settings=settings)


def parse_csv(text: str, *, name: str = "the CSV", repos: Mapping[str, str] | None = None,
              settings: Settings | None = None) -> list[BacklogItem]:
    header, rows = _table(text, name)
    settings = settings if settings is not None else load_settings()
    columns = _columns(header)
    if _has(columns, JIRA_COLUMNS["key"]):
        items = _jira_items(name, header, columns, rows)
    elif _has(columns, SENTRY_COLUMNS["title"]) and _has(columns, SENTRY_COLUMNS["id"] + SENTRY_COLUMNS["short_id"]
                                                        + SENTRY_COLUMNS["permalink"]):
        items = _sentry_items(name, header, columns, rows)
    else:
        raise BacklogFormatError(
            f"{name} is neither a Sentry nor a Jira CSV export: Jira's has Summary and Issue key, Sentry's has "
            f"title and issue.id (or Issue ID, or Permalink); found: {_found(header)}")
    return [item.model_copy(update={"repository": repository_for(item.source, item.project, repos=repos,
                                                                 settings=settings)}) for item in items]


# --- reading the table -------------------------------------------------------------------------


def _table(text: str, name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and each non-empty row with its line number (rows may span lines)."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    reader = csv.reader(io.StringIO(text))
    try:
        header = [cell.strip() for cell in next(reader)]
        rows = []
        line = reader.line_num + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((line, row))
            line = reader.line_num + 1
    except StopIteration:
        raise BacklogFormatError(f"{name} is empty") from None
    except csv.Error as exc:
        raise BacklogFormatError(f"{name} is not valid CSV (line {reader.line_num}): {exc}") from None
    return header, rows


def _columns(header: list[str]) -> dict[str, list[int]]:
    """Header name (lower case) -> its positions: Jira repeats Labels, Comment, Component/s, ..."""
    found: dict[str, list[int]] = {}
    for index, column in enumerate(header):
        found.setdefault(column.casefold(), []).append(index)
    return found


def _has(columns: dict[str, list[int]], spellings: tuple[str, ...]) -> bool:
    return any(s in columns for s in spellings)


def _found(header: list[str]) -> str:
    shown = ", ".join(dict.fromkeys(h for h in header if h))
    return shown[:600] + ("…" if len(shown) > 600 else "") or "no columns"


def _cells(row: list[str], columns: dict[str, list[int]], spellings: tuple[str, ...]) -> list[str]:
    """Every non-empty value of the first spelling the header has (all of a repeated column)."""
    for spelling in spellings:
        if spelling in columns:
            return [row[i].strip() for i in columns[spelling] if i < len(row) and row[i].strip()]
    return []


def _cell(row: list[str], columns: dict[str, list[int]], spellings: tuple[str, ...]) -> str | None:
    values = _cells(row, columns, spellings)
    return values[0] if values else None


def _number(value: str | None) -> int | None:
    text = (value or "").replace(",", "").replace("_", "").strip()
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def _require(name: str, kind: str, header: list[str], columns: dict[str, list[int]],
             needed: dict[str, tuple[str, ...]]) -> None:
    missing = [spellings[0] for spellings in needed.values() if not _has(columns, spellings)]
    if missing:
        raise BacklogFormatError(f"{name} looks like a {kind} CSV export but lacks the column(s) "
                                 f"{', '.join(missing)}; found: {_found(header)}")


def _bad_rows(name: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise BacklogFormatError(f"{name}: {'; '.join(problems[:5])}{more}")


# --- Sentry ------------------------------------------------------------------------------------


def _sentry_items(name: str, header: list[str], columns: dict[str, list[int]],
                  rows: list[tuple[int, list[str]]]) -> list[BacklogItem]:
    if not _has(columns, SENTRY_COLUMNS["id"] + SENTRY_COLUMNS["permalink"]):
        # Tasks made by Sentry alerts carry the numeric id: a short id alone cannot be matched.
        raise BacklogFormatError(
            f"{name} names issues only by their short id: add the issue.id column to the query before "
            f"exporting (or Permalink); found: {_found(header)}")
    _require(name, "Sentry", header, columns, {"project": SENTRY_COLUMNS["project"]})
    items, problems = [], []
    for line, row in rows:
        get = lambda column: _cell(row, columns, SENTRY_COLUMNS[column])  # noqa: E731
        issue_id = get("id") or _issue_in_url(get("permalink"))
        if not issue_id or not issue_id.isdigit():
            problems.append(f"line {line}: no numeric issue id ({issue_id or 'empty'})")
            continue
        items.append(_sentry_row(issue_id, line, get))
    _bad_rows(name, problems)
    return items


def _issue_in_url(url: str | None) -> str | None:
    match = _SENTRY_ISSUE_URL.search(url or "")
    return match[1] if match else None


def _sentry_row(issue_id: str, line: int, get) -> BacklogItem:  # noqa: ANN001 - a column getter
    title, culprit, level = get("title") or get("message"), get("culprit"), get("level")
    seen = [f"{label}: {value}" for label, value in (("First seen", get("first_seen")), ("Last seen", get("last_seen")))
            if value]
    body = "\n".join([title or "", *([f"Culprit: {culprit}"] if culprit else []), *seen,
                      *([f"Sentry: {get('permalink')}"] if get("permalink") else [])])
    status = get("status")
    return make_item(
        source="sentry", external_id=issue_id, title=title, body=body, project=get("project"),
        priority=sentry_priority(level.casefold()) if level else Priority.NORMAL,
        count=_number(get("count")), users=_number(get("users")), status=status,
        resolved=(status or "").casefold() in ("resolved", "ignored", "archived"),
        url=get("permalink"), line=line,
    )


# --- Jira --------------------------------------------------------------------------------------


def _jira_items(name: str, header: list[str], columns: dict[str, list[int]],
                rows: list[tuple[int, list[str]]]) -> list[BacklogItem]:
    _require(name, "Jira", header, columns, {"summary": JIRA_COLUMNS["summary"]})
    items, problems = [], []
    for line, row in rows:
        get = lambda column: _cell(row, columns, JIRA_COLUMNS[column])  # noqa: E731
        key = get("key")
        if not key or not re.fullmatch(r"[A-Z][A-Z0-9_]*-\d+", key):
            problems.append(f"line {line}: {key!r} is not a Jira issue key")
            continue
        items.append(_jira_row(key, line, get, _cells(row, columns, JIRA_COLUMNS["labels"])))
    _bad_rows(name, problems)
    return items


def _jira_row(key: str, line: int, get, labels: list[str]) -> BacklogItem:  # noqa: ANN001 - a column getter
    description = get("description") or ""
    links = sentry_issue_links(description)
    status, category, resolution = get("status"), get("status_category"), get("resolution")
    resolved = (category or "").casefold() == "done" or (
        category is None and bool(resolution) and resolution.casefold() not in ("unresolved", "none"))
    kind = get("type")
    body = (description + (f"\n\nIssue type: {kind}" if kind else "")
            + (f"\nLabels: {', '.join(labels)}" if labels else ""))
    return make_item(
        source="jira", external_id=key, title=get("summary"), body=body.strip(),
        project=get("project") or key.rsplit("-", 1)[0], priority=jira_priority(get("priority")),
        status=status, resolved=resolved, line=line,
        linked={"sentry_issue": links[0]} if len(links) == 1 else {},  # as the Jira webhook does
    )
