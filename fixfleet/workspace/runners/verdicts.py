"""RED, GREEN and the suite, judged from the reports against the base commit's own results
(SWE-bench's FAIL_TO_PASS and PASS_TO_PASS), never from exit codes alone.

- RED: tests of the change's test files that fail in their body on the base code (not by an
  import error, not in a fixture) and that did not already fail there before the change: a
  pre-existing failure of an unchanged test is listed, not counted;
- GREEN: each RED test passes with the fix, and no other test of those files fails that did not
  fail before;
- suite: no test that passed on the base commit (or is new) fails with the change.
A test whose outcome flips when it is run again is flaky: it neither proves nor blocks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from fixfleet.workspace.runners.reports import TestCase, TestReport, Verdict

FAILING = ("failed", "error")


def in_files(test: TestCase, files: Collection[str]) -> bool:
    # a runner that cannot say which file a test came from ran only `files` anyway
    return test.file is None or test.file in files


def failing(report: TestReport, files: Collection[str] | None = None) -> list[str]:
    """Every test that failed or errored, in any phase (collection included)."""
    return [t.id for t in report.tests if t.outcome in FAILING and (files is None or in_files(t, files))]


def failing_in_body(report: TestReport, files: Collection[str]) -> list[str]:
    """The tests of `files` that failed in their own body: what can prove a bug."""
    return [t.id for t in report.tests if in_files(t, files) and t.phase == "call" and t.outcome in FAILING]


def red_verdict(report: TestReport, files: Collection[str], *, preexisting: Collection[str] = (),
                flaky: Collection[str] = ()) -> Verdict:
    """RED: at least one test of `files` fails in its body on the base code, every file loads,
    and the failure is neither pre-existing nor flaky."""
    broken = report.collection_errors()  # any file of the run (vitest's file arguments are filters)
    if broken:
        where = ", ".join(sorted({t.file or t.id for t in broken}))
        return Verdict(ok=False, reason=f"collection error in {where}: {broken[0].message}")
    red = [i for i in failing_in_body(report, files) if i not in preexisting and i not in flaky]
    if red:
        return Verdict(ok=True, reason=f"{len(red)} test(s) fail on the base code", test_ids=red)
    ours = [t for t in report.tests if in_files(t, files)]
    if not ours:
        return Verdict(ok=False, reason=f"no test from {', '.join(sorted(files))} ran (exit {report.exit_code})")
    counts = {o: sum(t.outcome == o for t in ours) for o in ("passed", "skipped", "error")}
    excused = [f"{i} (already failing on the base commit)" for i in failing_in_body(report, files) if i in preexisting]
    excused += [f"{i} (flaky: it passed when run again)" for i in failing_in_body(report, files) if i in flaky]
    setup = [t for t in ours if t.outcome == "error"]
    detail = f"; setup/teardown errors do not count: {setup[0].id}: {setup[0].message}" if setup else ""
    detail += f"; failures that prove nothing: {', '.join(excused)}" if excused else ""
    return Verdict(ok=False, reason=f"no test failed on the base code ({counts['passed']} passed, "
                                    f"{counts['skipped']} skipped, {counts['error']} errors){detail}")


def green_verdict(report: TestReport, red_ids: Collection[str], files: Collection[str], *,
                  excused: Collection[str] = ()) -> Verdict:
    """GREEN: every RED test is present and passed, and no other test of `files` fails unless
    `excused` (pre-existing or flaky). Read from the report, not the exit code: a coverage minimum
    in the repository's addopts fails any run of a few files even when all of them pass."""
    by_id = {t.id: t for t in report.tests}
    missing = [i for i in red_ids if i not in by_id]
    not_passed = [i for i in red_ids if i in by_id and by_id[i].outcome != "passed"]
    passed = [i for i in red_ids if i in by_id and by_id[i].outcome == "passed"]
    problems = []
    if missing:
        problems.append(f"red tests missing from the run: {', '.join(missing)}")
    if not_passed:
        problems.append("red tests not passing: " + ", ".join(f"{i} ({by_id[i].outcome}: {by_id[i].message})"
                                                               for i in not_passed))
    others = [t for t in report.tests if t.outcome in FAILING and t.id not in red_ids and t.id not in excused
              and (in_files(t, files) or not t.file)]
    if others:
        problems.append("other tests fail with the fix: " + ", ".join(f"{t.id} ({t.message})" for t in others[:5]))
    if problems:
        return Verdict(ok=False, reason="; ".join(problems), test_ids=passed)
    return Verdict(ok=True, reason=f"{len(passed)} red test(s) pass with the fix", test_ids=passed)


def new_failures(report: TestReport, baseline: Mapping[str, str] | None, *, excused: Collection[str] = ()) -> list[str]:
    """Tests failing with the change that did not fail on the base commit: passed there, or
    did not exist. With no baseline (the suite was not run on the base), every failure is new."""
    return [i for i in failing(report) if i not in excused
            and (baseline is None or baseline.get(i) not in FAILING)]


def preexisting_failures(failures: Collection[str], baseline: Mapping[str, str] | None,
                         edited: Collection[str] | None = None) -> list[str]:
    """The failures that also failed on the base commit, of tests the change did not add or edit
    (`edited`: their ids; None: unknown, judged by the base run alone)."""
    if not baseline:
        return []
    return sorted(i for i in failures if baseline.get(i) in FAILING and (edited is None or i not in edited))
