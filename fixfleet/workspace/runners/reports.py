"""What the runners' reports become: one TestReport of TestCases, whatever the runner; and the
helpers every runner shares to read JUnit XML and JSON reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field

HELPERS_DIR = Path(__file__).parents[1] / "sandbox_helpers"
HELPERS_MOUNT = "/opt/fixfleet/helpers"   # where the sandbox mounts HELPERS_DIR
WORKSPACE_MOUNT = "/workspace"            # where the sandbox mounts the repository (the cwd)
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

    def failed(self) -> list[TestCase]:
        return [t for t in self.tests if t.outcome in ("failed", "error")]

    def passed(self) -> list[TestCase]:
        return [t for t in self.tests if t.outcome == "passed"]

    def collection_errors(self) -> list[TestCase]:
        return [t for t in self.tests if t.phase == "collection"]


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
    with exit code 0 and empty output.
    """

    name: str

    def collect_argv(self, files: list[str], out_dir: str) -> list[str]: ...
    def parse_collected(self, files: list[str], exit_code: int, output: str, out_dir: Path) -> Collected: ...
    def run_argv(self, files: list[str], out_dir: str) -> list[str]: ...
    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport: ...
    def suite_argv(self, out_dir: str) -> list[str]: ...


# ---------------------------------------------------------------- shared helpers

def short(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tail(output: str, lines: int = 15) -> str:
    return short("\n".join((output or "").strip().splitlines()[-lines:]))


def files_after_dashes(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1:] if "--" in argv else []


def out_path(out_dir: str, name: str) -> str:
    return f"{out_dir.rstrip('/')}/{name}"


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


def read_xml(path: Path) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None


def read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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


def junit_message(element: ET.Element) -> str:
    """The `E   ` lines of a pytest traceback, else the message attribute, else the text."""
    text = element.text or ""
    e_lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    message = element.get("message") or ""
    if e_lines and (message in ("", "collection failure") or message.startswith("failed on")):
        return short("\n".join(e_lines))
    return short(message or text)


# ---------------------------------------------------------------- pytest

def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def path_suffixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]
