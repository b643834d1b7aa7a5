"""PLAN.md and the PR body: written by the platform from the planner's structured plan."""

from __future__ import annotations

from typing import Any

from fixfleet.models import Task


def render_plan(task: Task, plan: dict[str, Any], version: int) -> str:
    files = "\n".join(f"- `{f['path']}`: {f.get('reason', '')}" for f in plan.get("affected_files", []))
    steps = "\n".join(f"{n}. {step}" for n, step in enumerate(plan.get("steps", []), start=1))
    tests = "\n".join(f"- `{t['path']}`: {t.get('description', '')}" for t in plan.get("tests_to_add", []))
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
`{plan.get('test_command', '')}`

---
Approve with `@agent approve`, ask for changes with `@agent revise <feedback>`.
"""


def render_evidence(task: Task, evidence: dict[str, Any], *, commits: list[str], cost_usd: float) -> str:
    def block(name: str, run: dict[str, Any]) -> str:
        return f"### {name}: `{run['command']}` → exit {run['exit_code']}\n```\n{run['output_tail'][-1200:]}\n```"

    return "\n\n".join([
        f"## fixfleet evidence for {task.key}",
        block("RED (new tests, base code)", evidence["red"]),
        block("GREEN (new tests, with the fix)", evidence["green"]),
        block("Full suite", evidence["suite"]),
        "Commits: " + ", ".join(f"`{c[:10]}`" for c in commits),
        f"Cost: ${cost_usd:.4f}",
    ])
