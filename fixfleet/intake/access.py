"""Tolerant access to untrusted JSON: a missing key, a null or an unexpected type gives None or
an empty value, never an exception; only a body that is not a JSON object is a ParseError."""

from __future__ import annotations

from collections.abc import Mapping
import re
from typing import Any

from pydantic import ValidationError

from fixfleet.intake.events import MAX_TITLE, Ignored, ParseError, TaskRequest
from fixfleet.models import NewTask


def require_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ParseError(f"expected a JSON object, got {type(payload).__name__}")
    return payload


def dig(data: Any, *path: str | int) -> Any:
    """`dig(p, "issue", "user", "login")`, or None as soon as a step is missing or mistyped."""
    for step in path:
        if isinstance(step, int) and isinstance(data, list) and -len(data) <= step < len(data):
            data = data[step]
        elif isinstance(step, str) and isinstance(data, Mapping):
            data = data.get(step)
        else:
            return None
    return data


def obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str | None:
    """A string, or an integer id as a string; None for anything else (including bools)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def as_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def one_line(text: str | None, fallback: str) -> str:
    """One line, within NewTask's limit; never empty."""
    line = " ".join((text or "").split())
    if len(line) > MAX_TITLE:
        line = line[: MAX_TITLE - 1] + "…"
    return line or fallback


def task_request(**fields: Any) -> TaskRequest | Ignored:
    try:
        return TaskRequest(new_task=NewTask(**fields))
    except ValidationError as exc:  # e.g. an empty repository URL from a mapping
        first = exc.errors()[0]
        return Ignored(reason=f"cannot make a task: {'.'.join(map(str, first['loc']))}: {first['msg']}")


def first_match(pattern: re.Pattern[str], text: Any) -> str | None:
    match = pattern.search(text) if isinstance(text, str) else None
    return match[1] if match else None
