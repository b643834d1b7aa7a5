"""A repository's CODEOWNERS (GitHub's format), read to ask the owners of the files a plan
touches to review its pull request. Patterns follow GitHub's rules closely enough for that: the
last matching line wins; `/x` is anchored at the root, `x/` is a directory, `*` stays within a
path segment, `**` crosses them, a pattern without a slash matches at any depth."""

from __future__ import annotations

import re
from pathlib import Path

LOCATIONS = (".github/CODEOWNERS", "CODEOWNERS", "docs/CODEOWNERS")  # where GitHub looks, in its order
MAX_BYTES = 3 * 1024 * 1024  # GitHub ignores larger files


def read_codeowners(root: Path) -> str:
    """The CODEOWNERS text of the checkout at `root` ("" when it has none or it is too large)."""
    for location in LOCATIONS:
        path = root / location
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_BYTES:
            return path.read_text(errors="replace")
    return ""


def _regex(pattern: str) -> re.Pattern[str]:
    anchored = pattern.startswith("/") or "/" in pattern.rstrip("/")
    body = pattern.strip("/")
    parts = re.split(r"(\*\*|\*|\?)", body)
    text = "".join({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(p, re.escape(p)) for p in parts)
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(f"{prefix}{text}(?:/.*)?")


def owners_for(codeowners: str, paths: list[str]) -> tuple[list[str], list[str]]:
    """(users, teams) owning any of `paths`: `@login` and `@org/team` (e-mail owners are skipped)."""
    rules = []
    for line in codeowners.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 1:
            rules.append((_regex(words[0]), [w for w in words[1:] if w.startswith("@")]))
    users: list[str] = []
    teams: list[str] = []
    for path in paths:
        owners = next((found for pattern, found in reversed(rules) if pattern.fullmatch(path.lstrip("/"))), [])
        for owner in owners:
            name = owner[1:]
            bucket = teams if "/" in name else users
            if name not in bucket:
                bucket.append(name)
    return users, teams
