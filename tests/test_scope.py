"""The approved scope: what of a change the plan a human approved covers (fixfleet/workspace/scope.py)."""

from __future__ import annotations

import pytest

from fixfleet.workspace.changes import ChangeSet, FileChange
from fixfleet.workspace.scope import PlanScope, ScopeRefused, check_scope, is_test_infrastructure

PLAN = {"affected_files": [{"path": "src/calc.py", "reason": "the bug"}],
        "tests_to_add": [{"path": "tests/test_calc.py::test_add", "description": "adds"}]}


def of(*paths: str, content: str | None = "x\n") -> ChangeSet:
    return ChangeSet(base_sha="0" * 40, files=[FileChange(path=p, content=content.encode() if content else None)
                                               for p in paths])


def test_the_plan_names_its_files_and_its_tests() -> None:
    scope = PlanScope.from_plan(PLAN)
    assert scope.files == ["src/calc.py"] and scope.tests == ["tests/test_calc.py"]
    assert PlanScope.from_plan(None) == PlanScope()


def test_planned_files_and_tests_are_in_scope_and_others_are_reported() -> None:
    report = check_scope(of("src/calc.py", "tests/test_calc.py", "tests/test_new.py", "src/other.py"),
                         PlanScope.from_plan(PLAN), {"tests/test_calc.py", "tests/test_new.py"})
    assert report.outside_plan == ["src/other.py"] and report.test_infrastructure == []


@pytest.mark.parametrize("path", ["PLAN.md", ".fixfleet.yml"])
def test_the_plan_and_the_repository_config_are_never_the_executors(path: str) -> None:
    with pytest.raises(ScopeRefused, match=path.replace(".", r"\.")):
        check_scope(of("src/calc.py", path), PlanScope(files=["src/calc.py", path]))


@pytest.mark.parametrize("path", ["conftest.py", "tests/conftest.py", "pytest.ini", ".pytest.ini", "pytest.toml",
                                  ".pytest.toml", "tox.ini", "setup.cfg",
                                  "pyproject.toml", "requirements-dev.txt", "requirements/ci.txt", "uv.lock",
                                  "package.json", "jest.config.js", "vitest.config.ts", "vite.config.mjs",
                                  ".mocharc.yml", "src/evil.pth", "sitecustomize.py", ".github/workflows/ci.yml",
                                  "noxfile.py"])
def test_test_infrastructure_outside_the_plan_is_refused_and_inside_it_is_named(path: str) -> None:
    assert is_test_infrastructure(path)
    with pytest.raises(ScopeRefused, match="outside the approved plan"):
        check_scope(of("src/calc.py", path), PlanScope.from_plan(PLAN))
    planned = PlanScope(files=["src/calc.py", path])
    assert check_scope(of("src/calc.py", path), planned).test_infrastructure == [path]


def test_a_test_module_declaring_plugins_is_infrastructure() -> None:
    declared = of("tests/test_x.py", content="pytest_plugins = ['evil']\n\ndef test_x():\n    pass\n")
    with pytest.raises(ScopeRefused):
        check_scope(declared, PlanScope.from_plan(PLAN), {"tests/test_x.py"})
    assert not is_test_infrastructure("tests/test_x.py", b"def test_x():\n    pass\n")


def test_deleting_a_test_needs_the_plan() -> None:
    with pytest.raises(ScopeRefused, match="deletes the test file tests/test_old.py"):
        check_scope(of("tests/test_old.py", content=None), PlanScope.from_plan(PLAN))
    planned = PlanScope(files=["tests/test_old.py"])
    assert check_scope(of("tests/test_old.py", content=None), planned).deleted_tests == ["tests/test_old.py"]


def test_without_a_plan_nothing_is_approved() -> None:
    with pytest.raises(ScopeRefused):
        check_scope(of("src/calc.py", "conftest.py"), None)
    assert check_scope(of("src/calc.py", "tests/test_calc.py"), None).outside_plan == []
