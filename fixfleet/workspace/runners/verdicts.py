"""RED and GREEN, judged from the reports (not from exit codes alone)."""

from __future__ import annotations

from fixfleet.workspace.runners.reports import TestCase, TestReport, Verdict


def in_files(test: TestCase, files: list[str]) -> bool:
    # a runner that cannot say which file a test came from ran only `files` anyway
    return test.file is None or test.file in files


def red_verdict(report: TestReport, files: list[str]) -> Verdict:
    """RED: at least one test of `files` failed in its body, and every file loaded."""
    broken = report.collection_errors()
    if broken:
        where = ", ".join(sorted({t.file or t.id for t in broken}))
        return Verdict(ok=False, reason=f"collection error in {where}: {broken[0].message}")
    ours = [t for t in report.tests if in_files(t, files)]
    red = [t.id for t in ours if t.phase == "call" and t.outcome in ("failed", "error")]
    if red:
        return Verdict(ok=True, reason=f"{len(red)} test(s) fail on the base code", test_ids=red)
    if not ours:
        return Verdict(ok=False, reason=f"no test from {', '.join(files)} ran (exit {report.exit_code})")
    counts = {o: sum(t.outcome == o for t in ours) for o in ("passed", "skipped", "error")}
    setup = [t for t in ours if t.outcome == "error"]
    detail = f"; setup/teardown errors do not count: {setup[0].id}: {setup[0].message}" if setup else ""
    return Verdict(ok=False, reason=f"no test failed on the base code ({counts['passed']} passed, "
                                    f"{counts['skipped']} skipped, {counts['error']} errors){detail}")


def green_verdict(report: TestReport, red_ids: list[str]) -> Verdict:
    """GREEN: every RED test is present and passed, and no test of the run failed. Read from the
    report, not the exit code alone: a coverage minimum in the repository's addopts fails any
    run of a few files even when all of them pass (the whole suite still answers by exit code)."""
    by_id = {t.id: t for t in report.tests}
    missing = [i for i in red_ids if i not in by_id]
    not_passed = [i for i in red_ids if i in by_id and by_id[i].outcome != "passed"]
    passed = [i for i in red_ids if i in by_id and by_id[i].outcome == "passed"]
    problems = []
    if missing:
        problems.append(f"red tests missing from the run: {', '.join(missing)}")
    if not_passed:
        problems.append("red tests not passing: " + ", ".join(f"{i} ({by_id[i].outcome})" for i in not_passed))
    failing = report.failed() + report.collection_errors()
    if failing:
        problems.append(f"runner exited {report.exit_code}; {failing[0].id}: {failing[0].message}")
    if problems:
        return Verdict(ok=False, reason="; ".join(problems), test_ids=passed)
    note = f" (the runner exited {report.exit_code} with every test passing)" if report.exit_code else ""
    return Verdict(ok=True, reason=f"{len(passed)} red test(s) pass with the fix{note}", test_ids=passed)
