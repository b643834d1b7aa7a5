"""The `value` of fixfleet's Approve / Reject buttons in Slack: written by the Slack client with
the plan message, read back by the webhook when someone clicks.

`"<task key>:v<plan version>"`, e.g. `"FF-12:v2"`; the version names the plan the human saw, so a
click on an outdated message is refused as stale. `"FF-12"` alone has no version.
"""

from __future__ import annotations

import re
from typing import Any

_ACTION_VALUE = re.compile(r"^\s*(FF-\d+)(?::v(\d+))?\s*$", re.IGNORECASE)


def slack_action_value(task_key: str, plan_version: int | None) -> str:
    """The `value` of an Approve/Reject button: `FF-12:v2` (or `FF-12` without a version)."""
    return task_key if plan_version is None else f"{task_key}:v{plan_version}"


def parse_slack_action_value(value: Any) -> tuple[str, int | None] | None:
    match = _ACTION_VALUE.match(value) if isinstance(value, str) else None
    if not match:
        return None
    return match[1].upper(), int(match[2]) if match[2] is not None else None
