"""Sentry events as fixfleet reads them: each exception with its stack frames, oldest call first.

One normaliser for both spellings: the webhook payload's (snake_case: `abs_path`, `lineno`,
`in_app`, `context_line`, exceptions under `exception.values`) and the REST API's (camelCase:
`absPath`, `lineNo`, `inApp`, `context` as [[lineno, line], ...], exceptions under `entries`).
"""

from __future__ import annotations

from typing import Any

from fixfleet.formats.access import as_int, as_list, as_str, obj

MAX_FRAMES = 50  # per exception; the most recent ones, where the error happened
MAX_CONTEXT_LINE = 500  # minified JS puts a whole bundle on one "line"


def normalize_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """One frame, in either spelling, as fixfleet's frame dict: filename, abs_path, function,
    lineno, in_app, context_line."""
    lineno = as_int(frame.get("lineno", frame.get("lineNo")))
    line = as_str(frame.get("context_line"))
    if line is None:
        for entry in as_list(frame.get("context")):  # [[lineno, source line], ...] around the frame's line
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and as_int(entry[0]) == lineno:
                line = as_str(entry[1])
                break
    return {
        "filename": as_str(frame.get("filename")),
        "abs_path": as_str(frame.get("abs_path", frame.get("absPath"))),
        "function": as_str(frame.get("function")),
        "lineno": lineno,
        "in_app": frame.get("in_app", frame.get("inApp")) is True,
        "context_line": line[:MAX_CONTEXT_LINE] if line else None,
    }


def event_exceptions(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Each exception of an event (API `entries` or payload `exception.values`) as type, value and
    frames, oldest call first, at most MAX_FRAMES each (the most recent)."""
    values: list[Any] = []
    for entry in as_list(event.get("entries")):
        if isinstance(entry, dict) and entry.get("type") == "exception":
            values.extend(as_list(obj(entry.get("data")).get("values")))
    if not values:
        values = as_list(obj(event.get("exception")).get("values"))
    found = [{"type": as_str(value.get("type")), "value": as_str(value.get("value")),
              "frames": _frames(obj(value.get("stacktrace")))} for value in map(obj, values)]
    if not found:  # a message event with an attached stack trace
        for entry in as_list(event.get("entries")):
            if isinstance(entry, dict) and entry.get("type") == "stacktrace":
                found.append({"type": None, "value": as_str(event.get("message")),
                              "frames": _frames(obj(entry.get("data")))})
    return found


def _frames(stacktrace: dict[str, Any]) -> list[dict[str, Any]]:
    frames = [normalize_frame(frame) for frame in as_list(stacktrace.get("frames")) if isinstance(frame, dict)]
    return frames[-MAX_FRAMES:]
