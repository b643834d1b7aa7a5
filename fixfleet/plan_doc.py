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

    parts = [
        f"## fixfleet evidence for {task.key}",
        *([] if evidence.get("sandboxed", True) else [SANDBOX_OFF]),
        "Tests that failed without the fix and pass with it (fail_to_pass):\n"
        + (_listed(proven(evidence)) or "- (none reported)"),
        *_judgement(evidence),
        block("RED (new tests, base code)", evidence["red"]),
        block("GREEN (new tests, with the fix)", evidence["green"]),
        block("Full suite", evidence["suite"]),
        f"### Environment\n```\n{evidence.get('setup', 'not recorded')}\n```",
    ]
    if evidence.get("agent_test_command"):
        parts.append(f"The agent suggested `{evidence['agent_test_command']}`; the platform ran the commands above.")
    return "\n\n".join([*parts, "Commits: " + ", ".join(f"`{c[:10]}`" for c in commits), f"Cost: ${cost_usd:.4f}"])


def proven(evidence: dict[str, Any]) -> list[str]:
    """The RED->GREEN tests (`red_to_green` in evidence recorded before the base-aware judgement)."""
    return list(evidence.get("fail_to_pass", evidence.get("red_to_green", [])))


def _listed(items: list[str], limit: int = 20) -> str:
    more = f"\n- … and {len(items) - limit} more" if len(items) > limit else ""
    return "\n".join(f"- `{item}`" for item in items[:limit]) + more


def _judgement(evidence: dict[str, Any]) -> list[str]:
    """What the proof was judged against, what it excused, how it was cross-checked, what of the
    change the approved plan did not name."""
    parts = []
    baseline = evidence.get("baseline")
    if baseline:
        parts.append(f"Compared with the suite on the base commit `{str(baseline.get('sha', ''))[:10]}` "
                     f"({baseline.get('tests', '?')} tests, {len(baseline.get('failing') or [])} already failing).")
    if evidence.get("preexisting_failures"):
        parts.append("Failing on the base commit already, not caused by this change (preexisting_failures):\n"
                     + _listed(evidence["preexisting_failures"]))
    if evidence.get("flaky"):
        parts.append("Flaky (flipped when run again; they neither prove nor block):\n" + _listed(evidence["flaky"]))
    if evidence.get("new_failures"):
        parts.append("Tests this change breaks (new_failures):\n" + _listed(evidence["new_failures"]))
    check = evidence.get("cross_check") or {}
    if check:
        unchecked = f"; not checked this way: {', '.join(check['unchecked'])}" if check.get("unchecked") else ""
        parts.append(f"Cross-check: {check.get('method', '?')}{unchecked}.")
    scope = evidence.get("scope") or {}
    if scope.get("test_infrastructure"):
        parts.append("**Test infrastructure changed, as the approved plan names it:**\n"
                     + _listed(scope["test_infrastructure"]))
    if scope.get("outside_plan"):
        parts.append("**Outside the approved plan** (changed, though the plan does not name them):\n"
                     + _listed(scope["outside_plan"]))
    return parts
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
