"""PLAN.md and the PR body: written by the platform from the planner's structured plan."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fixfleet.models import Task, TaskEvent, TaskStatus

SANDBOX_OFF = ("> **Warning: FIXFLEET_SANDBOX=off.** The agent and the repository's tests ran without the "
               "sandbox, with the platform's own rights. Only for trusted local experiments.")


def render_plan(task: Task, plan: dict[str, Any], version: int, *, setup: str = "", sandboxed: bool = True) -> str:
    files = "\n".join(f"- `{f['path']}`: {f.get('reason', '')}" for f in plan.get("affected_files", []))
    steps = "\n".join(f"{n}. {step}" for n, step in enumerate(plan.get("steps", []), start=1))
    tests = "\n".join(f"- `{t['path']}`: {t.get('description', '')}" for t in plan.get("tests_to_add", []))
    warning = "" if sandboxed else f"\n{SANDBOX_OFF}\n"
    return f"""# Plan for {task.key}: {task.title}

Plan version: **v{version}** · confidence {plan.get('confidence', '?')} · risk **{plan.get('risk', '?')}**

## Root cause
{plan.get('root_cause', '')}

## Affected files
{files}

## Steps
{steps}

## Tests to add
{tests}

## Test command
`{plan.get('test_command', '')}` (the agent's suggestion; the platform derives what it runs)

## Environment
```
{setup or 'not recorded'}
```
{warning}---
Approve with `@agent approve`, ask for changes with `@agent revise <feedback>`.
"""


def render_evidence(task: Task, evidence: dict[str, Any], *, commits: list[str], cost_usd: float) -> str:
    def block(name: str, run: dict[str, Any]) -> str:
        return f"### {name}: `{run['command']}` → exit {run['exit_code']}\n```\n{run['output_tail'][-1200:]}\n```"

    red_to_green = "\n".join(f"- `{test}`" for test in evidence.get("red_to_green", []))
    parts = [
        f"## fixfleet evidence for {task.key}",
        *([] if evidence.get("sandboxed", True) else [SANDBOX_OFF]),
        f"Tests that failed without the fix and pass with it:\n{red_to_green or '- (none reported)'}",
        block("RED (new tests, base code)", evidence["red"]),
        block("GREEN (new tests, with the fix)", evidence["green"]),
        block("Full suite", evidence["suite"]),
        f"### Environment\n```\n{evidence.get('setup', 'not recorded')}\n```",
    ]
    if evidence.get("agent_test_command"):
        parts.append(f"The agent suggested `{evidence['agent_test_command']}`; the platform ran the commands above.")
    return "\n\n".join([*parts, "Commits: " + ", ".join(f"`{c[:10]}`" for c in commits), f"Cost: ${cost_usd:.4f}"])


@dataclass(frozen=True)
class PlanVersion:
    """A plan as it was posted: the audit row that moved the task to AWAITING_APPROVAL keeps it."""

    version: int
    plan: dict[str, Any]
    setup: str
    posted_at: datetime
    posted_by: str


def plan_versions(events: Iterable[TaskEvent]) -> list[PlanVersion]:
    """Every plan version a task has had, oldest first (a version posted twice: the last)."""
    found: dict[int, PlanVersion] = {}
    for event in events:
        data = event.data
        if event.to_status == TaskStatus.AWAITING_APPROVAL and isinstance(data.get("plan"), dict) \
                and isinstance(data.get("plan_version"), int):
            found[data["plan_version"]] = PlanVersion(data["plan_version"], data["plan"], str(data.get("setup") or ""),
                                                      event.created_at, event.actor)
    return [found[version] for version in sorted(found)]
