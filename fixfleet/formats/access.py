"""Tolerant access to untrusted JSON: a missing key, a null or an unexpected type gives None or an
empty value, never an exception."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


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


def first_match(pattern: re.Pattern[str], text: Any) -> str | None:
    match = pattern.search(text) if isinstance(text, str) else None
    return match[1] if match else None
