"""What bench.realbugs reads from a task's events: the evidence as the platform writes it now
(fail_to_pass, new_failures, preexisting_failures, flaky) and as it wrote it before (red_to_green)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.upstream_bugs import Bug
from tests.upstream_bugs import Outcome, outcome_of, summary

BUG = Bug("widgets-1", {"name": "widgets-1"}, Path("."))


def _run(exit_code: int) -> dict[str, Any]:
    return {"command": "pytest", "exit_code": exit_code, "seconds": 1.0, "output_tail": ""}


def _events(evidence: dict[str, Any], final: str = "COMPLETED") -> list[dict[str, Any]]:
    at = "2026-12-04T10:00:{:02d}+00:00"
    return [{"created_at": at.format(0), "to_status": "EXECUTING", "reason": "executing", "data": {}},
            {"created_at": at.format(3), "to_status": None, "reason": "executor session: success",
             "data": {"seconds": 1.0}},
            {"created_at": at.format(9), "to_status": final, "reason": "pushed" if final == "COMPLETED" else
             "verification failed: the full test suite fails with the change", "data": {"evidence": evidence}}]


def test_evidence_written_before_fail_to_pass_is_read_through_red_to_green() -> None:
    evidence = {"red": _run(1), "green": _run(0), "suite": _run(0), "red_to_green": ["tests/test_size.py::test_size"]}

    outcome = outcome_of(BUG, {"status": "COMPLETED"}, _events(evidence))

    assert outcome.fail_to_pass == ["tests/test_size.py::test_size"]
    assert outcome.new_failures == [] and outcome.evidence_ok
    assert outcome.overhead_s == 8.0  # nine seconds executing, one of them inside the session


def test_a_failing_suite_in_old_evidence_counts_as_a_new_failure() -> None:
    evidence = {"red": _run(1), "green": _run(0), "suite": _run(1), "red_to_green": ["t"]}

    outcome = outcome_of(BUG, {"status": "FAILED"}, _events(evidence, final="FAILED"))

    assert outcome.new_failures == ["(the suite exited 1)"] and not outcome.evidence_ok


def test_evidence_with_base_results_keeps_preexisting_and_flaky_apart_from_new_failures() -> None:
    evidence = {"red": _run(1), "green": _run(0), "suite": _run(1), "red_to_green": ["old"],
                "fail_to_pass": ["tests/test_frames.py::test_text_fragmented"], "new_failures": [],
                "preexisting_failures": ["tests.sync.test_client"], "flaky": {"tests/test_conn.py::test_keepalive": 2},
                "cross_check": {"method": "direct call, without the runner", "agreed": True}}

    outcome = outcome_of(BUG, {"status": "COMPLETED"}, _events(evidence))

    assert outcome.fail_to_pass == ["tests/test_frames.py::test_text_fragmented"]  # not the old field
    assert outcome.evidence_ok  # the suite failed, but by nothing the change brought
    assert outcome.preexisting_failures == ["tests.sync.test_client"]
    assert outcome.flaky == ["tests/test_conn.py::test_keepalive"]
    assert outcome.cross_check == "direct call, without the runner"
    figures = summary([outcome, Outcome("other", "FAILED", reason="GREEN check failed")], missing=1)
    assert figures | {"overhead_p50_s": None} == {
        "bugs": 2, "completed": 1, "evidence_ok": 1, "missing": 1, "preexisting": 1, "flaky": 1,
        "cross_check": {"direct call, without the runner": 1}, "env_cold_s": None, "env_warm_s": None,
        "overhead_p50_s": None}
