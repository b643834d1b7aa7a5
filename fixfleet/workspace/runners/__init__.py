"""Test runners for the platform's own RED/GREEN proof of an agent's change.

For each runner (pytest, unittest, node --test, mocha, jest, vitest) this module builds the argv
of the commands the sandbox runs (collect the changed files, run exactly those files, run the
suite) and parses the machine-readable reports they leave in the output directory. Nothing here
starts a process: the sandbox runs the argv, the platform hands back exit code, output and the
host view of the output directory. `red_verdict` and `green_verdict` judge the parsed reports.

Paths in argv are in-sandbox paths (`out_dir`, the helpers mount, the `/workspace` mount); test
files are repository-relative POSIX paths, always passed after `--` where the runner allows it.
Each command must get a fresh `out_dir`: a report left by an earlier command would be read as
this command's.
"""

from __future__ import annotations

from fixfleet.workspace.runners.javascript import (
    JS_RUNNERS,
    JestRunner,
    MochaRunner,
    NodeTestRunner,
    VitestRunner,
)
from fixfleet.workspace.runners.python import (
    PytestRunner,
    UnittestRunner,
)
from fixfleet.workspace.runners.reports import (
    CHANNEL,
    HELPERS_DIR,
    HELPERS_MOUNT,
    SESSION_ID,
    WORKSPACE_MOUNT,
    Collected,
    ForgedReport,
    TestCase,
    TestReport,
    TestRunner,
    Verdict,
)
from fixfleet.workspace.runners.scripts import (
    detect_js_runner,
    find_invocation,
    glob_match,
)
from fixfleet.workspace.runners.verdicts import green_verdict, red_verdict

__all__ = ["CHANNEL", "HELPERS_DIR", "HELPERS_MOUNT", "SESSION_ID", "WORKSPACE_MOUNT", "Collected", "JestRunner", "MochaRunner",
           "NodeTestRunner", "PytestRunner", "TestCase", "TestReport", "TestRunner", "UnittestRunner", "Verdict",
           "VitestRunner", "detect_js_runner", "find_invocation", "glob_match", "green_verdict", "make_runner",
           "red_verdict", "ForgedReport"]


def make_runner(name: str, *, test_script: str | None = None, python: str = "python",
                scripts: dict[str, str] | None = None, helpers_mount: str = HELPERS_MOUNT,
                workspace: str = WORKSPACE_MOUNT, patterns: list[str] | None = None) -> TestRunner:
    """A runner by name. JS runners reuse the options of `test_script` (package.json scripts.test,
    `npm run x` resolved through `scripts`); `patterns` overrides their test-file globs."""
    if name == "pytest":
        return PytestRunner(python, helpers_mount)
    if name == "unittest":
        return UnittestRunner(python, helpers_mount)
    if name in JS_RUNNERS:
        return JS_RUNNERS[name](test_script, scripts, workspace, patterns)
    raise ValueError(f"unknown test runner {name!r}")
