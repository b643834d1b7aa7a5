"""What every webhook parser needs besides tolerant JSON access (fixfleet/formats/access.py): the
one refusal for a body that is not a JSON object, a title fit for a task, and a task request that
turns an invalid task into a reasoned Ignored."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fixfleet.intake.events import MAX_TITLE, Ignored, ParseError, TaskRequest
from fixfleet.models import NewTask


def require_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ParseError(f"expected a JSON object, got {type(payload).__name__}")
    return payload


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
