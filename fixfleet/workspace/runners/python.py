"""pytest and unittest: the commands that collect and run given test files, and their reports
(the platform's pytest reporter's records, the unittest helper's JSON), read from the report
channel."""

from __future__ import annotations

from fixfleet.workspace.runners.reports import (
    HELPERS_MOUNT,
    SESSION_ID,
    Collected,
    ForgedReport,
    TestCase,
    TestReport,
    json_document,
    json_lines,
    merge,
    report_missing,
    short,
    suffix_match,
    tail,
)


PLUGIN = "fixfleet_pytest"  # sandbox_helpers/fixfleet_pytest.py, on PYTHONPATH from the helpers mount
PHASES = {"setup": "setup", "call": "call", "teardown": "teardown"}


class PytestRunner:
    """`python -m pytest` with the platform's reporter loaded first; the repository's addopts stay
    in force. Results come from the reporter on the report channel, never from a file."""

    name = "pytest"

    def __init__(self, python: str = "python", helpers_mount: str = HELPERS_MOUNT):
        # -B: RED must leave no bytecode that a GREEN run of a same-size fix could reuse
        self.base = [python, "-B", "-m", "pytest", "-p", "no:cacheprovider", "-p", PLUGIN]
        self.helpers_mount = helpers_mount

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": self.helpers_mount}

    @staticmethod
    def candidates(files: list[str]) -> list[str]:
        return [f for f in files if f.endswith(".py")]

    def collect_argv(self, files: list[str]) -> list[str]:
        candidates = self.candidates(files)
        if not candidates:
            return []
        return [*self.base, "--collect-only", "-q", "--continue-on-collection-errors", "--", *candidates]

    def parse_collected(self, files: list[str], exit_code: int, output: str, report: bytes) -> Collected:
        candidates = self.candidates(files)
        collected = Collected(tests_by_file={f: [] for f in files})
        records = pytest_records(report)
        if records is None:
            reason = tail(output) or f"pytest exited {exit_code} before its collection began"
            collected.errors = {f: reason for f in candidates}
            return collected
        for record in records:
            file = suffix_match(str(record.get("file", "")), candidates)
            if file is None:
                continue
            if record["event"] == "collected":
                collected.tests_by_file[file].append(str(record.get("id")))
            elif record["event"] == "collect_error":
                collected.errors[file] = short(str(record.get("message", "")))
        return collected

    def run_argv(self, files: list[str]) -> list[str]:
        return [*self.base, "--", *files]

    def suite_argv(self) -> list[str]:
        return list(self.base)

    def parse_run(self, argv: list[str], exit_code: int, output: str, report: bytes) -> TestReport:
        records = pytest_records(report)
        if records is None:
            return report_missing(self.name, argv, exit_code, output)
        tests = []
        for record in records:
            file = str(record.get("file", "")) or None
            if record["event"] == "collect_error":
                tests.append(TestCase(id=file or SESSION_ID, file=file, outcome="error", phase="collection",
                                      message=short(str(record.get("message", "")))))
            elif record["event"] == "test":
                tests.append(_phase_case(record, file))
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=merge(tests),
                          complete=records[-1]["event"] == "end")


def _phase_case(record: dict, file: str | None) -> TestCase:
    """One phase's record as a TestCase: a failed setup or teardown is an error of that phase."""
    when = PHASES.get(str(record.get("when")), "call")
    outcome = str(record.get("outcome"))
    message = short(str(record.get("message", "")))
    if outcome == "passed" or outcome == "skipped":
        return TestCase(id=str(record["id"]), file=file, outcome=outcome, phase=when, message=message)
    return TestCase(id=str(record["id"]), file=file, outcome="failed" if when == "call" else "error",
                    phase=when, message=message)


def pytest_records(report: bytes) -> list[dict] | None:
    """The reporter's records, checked: a start, then one record per test and phase, then at most
    an end, and nothing after it. None when the reporter never started (pytest did not get that far)."""
    records = json_lines(report)
    if not records:
        return None
    if records[0].get("event") != "start":
        raise ForgedReport("the report does not begin with the platform reporter's start record")
    seen: set[tuple[str, str]] = set()
    for index, record in enumerate(records[1:], 1):
        event = record.get("event")
        if event == "start":
            raise ForgedReport("the report holds a second start record")
        if event == "end" and index != len(records) - 1:
            raise ForgedReport("the report goes on after the session's end record")
        if event == "test":
            key = (str(record.get("id")), str(record.get("when")))
            if key in seen:
                raise ForgedReport(f"the report holds two results for {key[0]} ({key[1]})")
            seen.add(key)
        elif event not in ("collected", "collect_error", "end"):
            raise ForgedReport(f"the report holds a record the platform's reporter never writes ({event!r})")
    return records


# ---------------------------------------------------------------- unittest

class UnittestRunner:
    """unittest through sandbox_helpers/unittest_report.py, which writes its JSON report on the channel."""

    name = "unittest"

    def __init__(self, python: str = "python", helpers_mount: str = HELPERS_MOUNT):
        self.base = [python, "-B", f"{helpers_mount.rstrip('/')}/unittest_report.py"]

    def env(self) -> dict[str, str]:
        return {}

    def _argv(self, mode: str, files: list[str] | None) -> list[str]:
        argv = [*self.base, f"--{mode}"]
        return argv if files is None else [*argv, "--", *files]

    def collect_argv(self, files: list[str]) -> list[str]:
        candidates = PytestRunner.candidates(files)
        return self._argv("collect", candidates) if candidates else []

    def parse_collected(self, files: list[str], exit_code: int, output: str, report: bytes) -> Collected:
        data = json_document(report)
        collected = Collected(tests_by_file={f: [] for f in files})
        if not isinstance(data, dict):
            if PytestRunner.candidates(files):
                reason = tail(output) or f"unittest helper exited {exit_code} without a report"
                collected.errors = {f: reason for f in PytestRunner.candidates(files)}
            return collected
        for file, ids in data.get("collected", {}).items():
            collected.tests_by_file[file] = list(ids)
        collected.errors = dict(data.get("errors", {}))
        return collected

    def run_argv(self, files: list[str]) -> list[str]:
        return self._argv("run", files)

    def suite_argv(self) -> list[str]:
        return self._argv("discover", None)

    def parse_run(self, argv: list[str], exit_code: int, output: str, report: bytes) -> TestReport:
        data = json_document(report)
        if not isinstance(data, dict):
            return report_missing(self.name, argv, exit_code, output)
        tests = merge([TestCase.model_validate(t) for t in data.get("tests", [])])
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=tests)


# ---------------------------------------------------------------- JavaScript: the test script
