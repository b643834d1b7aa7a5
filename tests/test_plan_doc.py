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
EVIDENCE = {"red": RUN | {"exit_code": 1}, "green": RUN, "suite": RUN, "fail_to_pass": ["t.py::test_a"],
            "setup": "python environment (detected): installs requirements.txt", "sandboxed": True}


def test_the_plan_says_how_the_repository_was_set_up_and_warns_when_unsandboxed() -> None:
    plan = render_plan(TASK, PLAN, 1, setup="python environment (detected): installs requirements.txt")
    assert "installs requirements.txt" in plan and SANDBOX_OFF not in plan
    assert SANDBOX_OFF in render_plan(TASK, PLAN, 1, setup="x", sandboxed=False)


def test_the_pr_body_names_the_tests_that_went_red_to_green_and_warns_when_unsandboxed() -> None:
    body = render_evidence(TASK, EVIDENCE, commits=["a" * 40], cost_usd=0.1)
    assert "`t.py::test_a`" in body and "installs requirements.txt" in body and SANDBOX_OFF not in body
    assert SANDBOX_OFF in render_evidence(TASK, EVIDENCE | {"sandboxed": False}, commits=[], cost_usd=0.0)


def test_the_pr_body_says_what_the_proof_was_judged_against_and_what_the_plan_did_not_name() -> None:
    judged = EVIDENCE | {
        "baseline": {"sha": "b" * 40, "tests": 120, "failing": ["t.py::test_old"]},
        "preexisting_failures": ["t.py::test_old"], "flaky": ["t.py::test_timing"],
        "cross_check": {"method": "direct call, without the runner", "unchecked": {"t.py::test_b": "uses fixtures"}},
        "scope": {"outside_plan": ["util.py"], "test_infrastructure": ["conftest.py"]}}
    body = render_evidence(TASK, judged, commits=[], cost_usd=0.0)
    assert "base commit `bbbbbbbbbb` (120 tests, 1 already failing)" in body
    assert "not caused by this change (preexisting_failures):\n- `t.py::test_old`" in body
    assert "Flaky" in body and "`t.py::test_timing`" in body
    assert "Cross-check: direct call, without the runner; not checked this way: t.py::test_b" in body
    assert "as the approved plan names it:**\n- `conftest.py`" in body
    assert "**Outside the approved plan**" in body and "- `util.py`" in body


def test_evidence_recorded_before_the_base_aware_proof_still_shows_its_tests() -> None:
    old = {k: v for k, v in EVIDENCE.items() if k != "fail_to_pass"} | {"red_to_green": ["t.py::test_a"]}
    assert "`t.py::test_a`" in render_evidence(TASK, old, commits=[], cost_usd=0.0)
