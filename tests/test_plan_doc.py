"""PLAN.md and the PR body say which setup was used, and say loudly when the sandbox was off."""

from __future__ import annotations

from datetime import UTC, datetime

from fixfleet.models import Priority, Source, Task, TaskStatus
from fixfleet.plan_doc import SANDBOX_OFF, render_evidence, render_plan

TASK = Task(id=1, key="FF-1", source=Source.API, external_ids={}, repo="https://github.com/acme/api.git",
            title="mean() crashes", body="", priority=Priority.NORMAL, status=TaskStatus.PLANNING, version=1,
            attempts=1, plan=None, plan_version=0, branch="fixfleet/FF-1", pr_url=None, context={}, cost_usd=0.0,
            tokens=0, created_at=datetime.now(UTC), updated_at=datetime.now(UTC))
PLAN = {"root_cause": "divides by zero", "affected_files": [{"path": "m.py", "reason": "r"}], "steps": ["fix"],
        "tests_to_add": [{"path": "t.py", "description": "d"}], "test_command": "pytest", "confidence": 0.9,
        "risk": "low"}
RUN = {"command": "python -m pytest t.py", "exit_code": 0, "output_tail": "1 passed"}
EVIDENCE = {"red": RUN | {"exit_code": 1}, "green": RUN, "suite": RUN, "red_to_green": ["t.py::test_a"],
            "setup": "python environment (detected): installs requirements.txt", "sandboxed": True}


def test_the_plan_says_how_the_repository_was_set_up_and_warns_when_unsandboxed() -> None:
    plan = render_plan(TASK, PLAN, 1, setup="python environment (detected): installs requirements.txt")
    assert "installs requirements.txt" in plan and SANDBOX_OFF not in plan
    assert SANDBOX_OFF in render_plan(TASK, PLAN, 1, setup="x", sandboxed=False)


def test_the_pr_body_names_the_tests_that_went_red_to_green_and_warns_when_unsandboxed() -> None:
    body = render_evidence(TASK, EVIDENCE, commits=["a" * 40], cost_usd=0.1)
    assert "`t.py::test_a`" in body and "installs requirements.txt" in body and SANDBOX_OFF not in body
    assert SANDBOX_OFF in render_evidence(TASK, EVIDENCE | {"sandboxed": False}, commits=[], cost_usd=0.0)
