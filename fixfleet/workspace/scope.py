"""The approved scope: what of a change a human approved, and what no plan approves silently.

The executor carries out a plan a human approved (its `affected_files` and `tests_to_add`). The
change it hands back is compared with that plan before anything of it runs:

- `PLAN.md` is the approved plan itself: the executor never changes it (refused);
- test infrastructure decides how tests run and what they report, and the environment they run
  in: conftest files, pytest/tox/nox/setup.cfg/pyproject configuration, dependency and lock
  files, `*.pth`/`sitecustomize.py`, jest/vitest/mocha/vite configuration, package.json, CI
  workflows, a test module declaring `pytest_plugins`. A change to one is refused unless the plan
  names the file; then it is approved knowingly and named in the evidence and on the PR;
- deleting a test file is refused unless the plan names it;
- any other source file the plan does not name is reported as outside the approved plan (the
  reviewer sees it on the PR), not refused;
- new tests, the plan's tests and test support files are in scope.
Without a plan (a check run outside a task) nothing is approved: infrastructure is refused.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, Field

from fixfleet.workspace.changes import ChangeSet
from fixfleet.workspace.repo_config import CONFIG_FILE, SPEC_FILES

PLAN_FILE = "PLAN.md"
INFRA_NAMES = {"conftest.py", "pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "tox.ini", "setup.cfg",
               "noxfile.py", "sitecustomize.py", "usercustomize.py", "package.json", ".gitlab-ci.yml", "tsconfig.json",
               ".babelrc", ".nycrc", ".c8rc", ".c8rc.json", ".nycrc.json", "karma.conf.js"}
INFRA_PATTERNS = (re.compile(r"(^|/)(jest|vitest|vite|babel|ava|playwright)\.(config|workspace)\.[cm]?[jt]s(on)?$"),
                  re.compile(r"(^|/)\.mocharc(\.[a-z]+)?$"),
                  re.compile(r"\.pth$"),
                  re.compile(r"(^|/)requirements/[^/]+\.(txt|in)$|(^|/)[^/]*requirements[^/]*\.(txt|in)$"),
                  re.compile(r"^\.github/workflows/"),
                  re.compile(r"^\.circleci/"))
TEST_FILE = re.compile(r"(^|/)(tests?|__tests__|specs?)/|(^|/)test_[^/]*\.py$|_test\.py$|\.(test|spec)\.[cm]?[jt]sx?$")
DECLARES_PLUGINS = re.compile(rb"^\s*pytest_plugins\s*=", re.M)


class ScopeRefused(ValueError):
    """The change goes where the approved plan does not; the message says which file and why."""


class PlanScope(BaseModel):
    """The files an approved plan names: what the human saw and approved."""

    files: list[str] = Field(default_factory=list)  # affected_files
    tests: list[str] = Field(default_factory=list)  # tests_to_add, without ::names

    @classmethod
    def from_plan(cls, plan: dict[str, Any] | None) -> PlanScope:
        plan = plan or {}
        files = [str(f.get("path", "")) for f in plan.get("affected_files") or [] if isinstance(f, dict)]
        tests = [str(t.get("path", "")).split("::", 1)[0] for t in plan.get("tests_to_add") or [] if isinstance(t, dict)]
        return cls(files=[f for f in files if f], tests=[t for t in tests if t])

    def names(self, path: str) -> bool:
        return path in self.files or path in self.tests


class ScopeReport(BaseModel):
    """What the evidence and the PR say about the change's reach."""

    outside_plan: list[str] = Field(default_factory=list)  # source files the plan did not name
    test_infrastructure: list[str] = Field(default_factory=list)  # changed, as the plan said
    deleted_tests: list[str] = Field(default_factory=list)  # deleted, as the plan said


def is_test_infrastructure(path: str, content: bytes | None = None) -> bool:
    name = PurePosixPath(path).name
    if path in SPEC_FILES or name in INFRA_NAMES or any(p.search(path) for p in INFRA_PATTERNS):
        return True
    return path.endswith(".py") and content is not None and bool(DECLARES_PLUGINS.search(content))


def looks_like_test(path: str) -> bool:
    return bool(TEST_FILE.search(path))


def check_scope(change: ChangeSet, plan: PlanScope | None, tests: set[str] = frozenset()) -> ScopeReport:
    """Refuse what no plan approved (ScopeRefused), report what the plan did not name.
    `tests`: the changed files the repository's runner collects as tests."""
    report = ScopeReport()
    planned = plan or PlanScope()
    for file in change.files:
        path = file.path
        if path == PLAN_FILE:
            raise ScopeRefused(f"the change edits {PLAN_FILE}: that is the plan a human approved; the executor "
                               "carries it out and never rewrites it")
        if path == CONFIG_FILE:
            raise ScopeRefused(f"the change edits {CONFIG_FILE}: how the repository is set up and tested is "
                               "not the agent's to change")
        if is_test_infrastructure(path, file.content):
            if not planned.names(path):
                raise ScopeRefused(f"the change edits {path}, which decides how the tests run or what they report; "
                                   "it is outside the approved plan (the planner must name it in the plan for a "
                                   "human to approve)")
            report.test_infrastructure.append(path)
        elif file.content is None and (path in tests or looks_like_test(path)):
            if not planned.names(path):
                raise ScopeRefused(f"the change deletes the test file {path}, which the approved plan does not name")
            report.deleted_tests.append(path)
        elif path not in tests and not looks_like_test(path) and plan is not None and not planned.names(path):
            report.outside_plan.append(path)
    return report
