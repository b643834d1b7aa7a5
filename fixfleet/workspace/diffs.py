"""A change as a unified diff, for people: the `diff` command and the audit trail show it."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from fixfleet.workspace.changes import ChangeSet

MAX_DIFF_CHARS = 60_000  # a chat message or comment holds about this much


def unified_diff(change: ChangeSet, base: Mapping[str, bytes], *, limit: int = MAX_DIFF_CHARS) -> str:
    """`git diff`-style text of `change` against the `base` contents of its paths (absent: a new
    file); binary files are named, not shown; cut at `limit` characters with a note."""
    parts = []
    for file in sorted(change.files, key=lambda f: f.path):
        before, after = base.get(file.path), file.content
        if _binary(before) or _binary(after):
            parts.append(f"Binary file {file.path} changed\n")
            continue
        old = (before or b"").decode("utf-8", "replace").splitlines(keepends=True)
        new = (after or b"").decode("utf-8", "replace").splitlines(keepends=True)
        source = f"a/{file.path}" if before is not None else "/dev/null"
        target = f"b/{file.path}" if after is not None else "/dev/null"
        lines = difflib.unified_diff(old, new, source, target)
        parts.append("".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                             for line in lines))
    text = "".join(parts)
    if len(text) > limit:
        return text[:limit] + f"\n... {len(text) - limit} more characters not shown\n"
    return text


def _binary(content: bytes | None) -> bool:
    return content is not None and b"\0" in content[:8000]
