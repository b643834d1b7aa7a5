"""What the runners' reports become: one TestReport of TestCases, whatever the runner; and the
helpers every runner shares to read the reports that reach the report channel (JUnit XML, JSON,
JSON lines).

Every report arrives on the run's report channel (fixfleet/workspace/sandbox.py: a FIFO the
platform reads, at REPORT_PATH inside), never as a file the tests could rewrite. A channel holding
more than the one report its reporter writes (a second document, junk around it) was written by
something else as well: `ForgedReport`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from fixfleet.workspace.sandbox import REPORT_PATH

HELPERS_DIR = Path(__file__).parents[1] / "sandbox_helpers"
HELPERS_MOUNT = "/opt/fixfleet/helpers"   # where the sandbox mounts HELPERS_DIR
WORKSPACE_MOUNT = "/workspace"            # where the sandbox mounts the repository (the cwd)
CHANNEL = REPORT_PATH                     # the report channel (a FIFO the platform reads), for reporters
MESSAGE_LIMIT = 500
SESSION_ID = "<session>"                  # id of a failure no single test or file can own
JS_EXTENSIONS = ("js", "mjs", "cjs", "ts")

Outcome = Literal["passed", "failed", "error", "skipped"]
Phase = Literal["collection", "setup", "call", "teardown"]


class TestCase(BaseModel):
    """One test in a report."""

    __test__ = False  # not a pytest test class
    id: str
    file: str | None = None
    outcome: Outcome
    phase: Phase = "call"
    message: str = ""


class TestReport(BaseModel):
    """A run's parsed report; `output_tail` is filled by the caller."""

    __test__ = False
    runner: str
    argv: list[str]
    exit_code: int
    tests: list[TestCase] = Field(default_factory=list)
    output_tail: str = ""
    complete: bool = True  # False: the reporter saw the session begin but never end (the process was stopped)

    def failed(self) -> list[TestCase]:
        return [t for t in self.tests if t.outcome in ("failed", "error")]

    def passed(self) -> list[TestCase]:
        return [t for t in self.tests if t.outcome == "passed"]

    def collection_errors(self) -> list[TestCase]:
        return [t for t in self.tests if t.phase == "collection"]


class ForgedReport(ValueError):
    """The report channel holds what no honest run of the platform's reporter writes."""


class Collected(BaseModel):
    """For each given file the test ids the runner collects ([] = not a test file)."""

    tests_by_file: dict[str, list[str]] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)


class Verdict(BaseModel):
    ok: bool
    reason: str
    test_ids: list[str] = Field(default_factory=list)


class TestRunner(Protocol):
    """Argv builders and report parsers of one test runner.

    `collect_argv` returns [] when collection needs no process: then call `parse_collected`
    with exit code 0, empty output and an empty report. Every command's report is read from the
    report channel; the parsers raise ForgedReport when it holds more than the reporter wrote.
    """

    name: str

    def collect_argv(self, files: list[str]) -> list[str]: ...
    def parse_collected(self, files: list[str], exit_code: int, output: str, report: bytes) -> Collected: ...
    def run_argv(self, files: list[str]) -> list[str]: ...
    def parse_run(self, argv: list[str], exit_code: int, output: str, report: bytes) -> TestReport: ...
    def suite_argv(self) -> list[str]: ...
    def env(self) -> dict[str, str]: ...  # what the runner's commands need set in the sandbox


# ---------------------------------------------------------------- shared helpers

def short(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tail(output: str, lines: int = 15) -> str:
    return short("\n".join((output or "").strip().splitlines()[-lines:]))


def files_after_dashes(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1:] if "--" in argv else []


# Worst first: one entry per id survives (pytest writes a second testcase for a teardown error).
SEVERITY = {("error", "collection"): 6, ("failed", "call"): 5, ("error", "call"): 5,
             ("failed", "setup"): 4, ("error", "setup"): 4, ("failed", "teardown"): 3,
             ("error", "teardown"): 3, ("failed", "collection"): 6}


def rank(test: TestCase) -> int:
    return SEVERITY.get((test.outcome, test.phase), 1 if test.outcome == "skipped" else 0)


def merge(tests: list[TestCase]) -> list[TestCase]:
    merged: dict[str, TestCase] = {}
    for test in tests:
        if test.id not in merged or rank(test) > rank(merged[test.id]):
            merged[test.id] = test
    return list(merged.values())


def report_missing(runner: str, argv: list[str], exit_code: int, output: str) -> TestReport:
    """A run that left no report: a non-zero exit means nothing could even be loaded."""
    tests = []
    if exit_code != 0:
        message = tail(output) or f"{runner} exited {exit_code} without writing its report"
        tests = [TestCase(id=SESSION_ID, outcome="error", phase="collection", message=message)]
    return TestReport(runner=runner, argv=argv, exit_code=exit_code, tests=tests)


def xml_document(report: bytes) -> ET.Element | None:
    """The one XML document on the channel; None when nothing came; ForgedReport for more."""
    if not report.strip():
        return None
    try:
        return ET.fromstring(report)
    except ET.ParseError as error:
        raise ForgedReport(f"the report is not one XML document ({error})") from None


def json_document(report: bytes) -> object | None:
    """The one JSON document on the channel; None when nothing came; ForgedReport for more."""
    text = report.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError as error:
        raise ForgedReport(f"the report is not JSON ({error})") from None
    if text[end:].strip():
        raise ForgedReport("the report channel holds more than one report")
    return value


def json_lines(report: bytes) -> list[dict]:
    records = []
    for number, line in enumerate(report.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ForgedReport(f"line {number} of the report is not one of the reporter's records") from None
        if not isinstance(record, dict):
            raise ForgedReport(f"line {number} of the report is not one of the reporter's records")
        records.append(record)
    return records


def suffix_match(path: str, files: list[str]) -> str | None:
    """The given file `path` names: itself, or absolute, or relative to a runner root below
    the repository's (pytest's rootdir, vitest's root)."""
    path = path.replace("\\", "/")
    if path in files:
        return path
    if path.startswith("/"):
        candidates = [f for f in files if path.endswith("/" + f)]
    else:
        candidates = [f for f in files if f.endswith("/" + path)]
    return max(candidates, key=len) if candidates else None


def relative(path: str, files: list[str], workspace: str) -> str:
    """Repository-relative form of a path from a JS report."""
    rel = path.removeprefix(workspace.rstrip("/") + "/").removeprefix("./")
    return suffix_match(rel, files) or rel


def failure_child(case: ET.Element) -> ET.Element | None:
    for tag in ("failure", "error", "skipped"):
        child = case.find(tag)
        if child is not None:
            return child
    return None
