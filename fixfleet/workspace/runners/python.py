"""pytest and unittest: the commands that collect and run given test files, and their reports
(pytest's JUnit XML, the unittest helper's JSON)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from fixfleet.workspace.runners.reports import (
    HELPERS_MOUNT,
    Collected,
    TestCase,
    TestReport,
    failure_child,
    files_after_dashes,
    junit_message,
    merge,
    module_of,
    out_path,
    path_suffixes,
    read_json,
    read_xml,
    report_missing,
    short,
    suffix_match,
    tail,
)


def _pytest_location(classname: str, file_attr: str, files: list[str]) -> tuple[str, list[str]]:
    """(repository-relative module file, class names) of an xunit1 classname.

    The classname is the node id's path (relative to pytest's rootdir, maybe a subdirectory)
    in dotted form plus the classes; the file attribute names where the function is defined,
    which for an inherited test is another module, so the given files are tried first.
    """
    candidates = files + ([file_attr] if file_attr else [])
    for depth in range(max((len(f.split("/")) for f in candidates), default=0)):
        for file in candidates:
            suffixes = path_suffixes(file)
            if depth >= len(suffixes):
                continue
            module = module_of(suffixes[depth])
            if classname == module or classname.startswith(module + "."):
                rest = classname[len(module) + 1:]
                return suffix_match(file, files) or file, rest.split(".") if rest else []
    parts = classname.split(".")
    classes = []
    while parts and parts[-1][:1].isupper():  # test classes are capitalised; modules rarely are
        classes.insert(0, parts.pop())
    return "/".join(parts) + ".py", classes


def _pytest_case(case: ET.Element, files: list[str]) -> TestCase:
    classname, name, file_attr = case.get("classname", ""), case.get("name", ""), case.get("file", "")
    child = failure_child(case)
    if child is not None and child.tag == "error" and (
            not classname or child.get("message", "") == "collection failure"):
        file = suffix_match(file_attr, files) or file_attr or name.replace(".", "/") + ".py"
        return TestCase(id=file, file=file, outcome="error", phase="collection", message=junit_message(child))
    file, classes = _pytest_location(classname, file_attr, files)
    test_id = "::".join([file, *classes, name])
    if child is None:
        return TestCase(id=test_id, file=file, outcome="passed")
    if child.tag == "skipped":
        return TestCase(id=test_id, file=file, outcome="skipped", message=short(child.get("message", "")))
    if child.tag == "failure":
        return TestCase(id=test_id, file=file, outcome="failed", message=junit_message(child))
    phase = "teardown" if child.get("message", "").startswith("failed on teardown") else "setup"
    return TestCase(id=test_id, file=file, outcome="error", phase=phase, message=junit_message(child))


def parse_pytest_junit(root: ET.Element, files: list[str]) -> list[TestCase]:
    return merge([_pytest_case(case, files) for case in root.iter("testcase")])


class PytestRunner:
    """`python -m pytest` with an xunit1 JUnit report; the repository's addopts stay in force."""

    name = "pytest"

    def __init__(self, python: str = "python"):
        # -B: RED must leave no bytecode that a GREEN run of a same-size fix could reuse
        self.base = [python, "-B", "-m", "pytest", "-p", "no:cacheprovider"]

    def _junit(self, out_dir: str, name: str) -> list[str]:
        return ["-o", "junit_family=xunit1", f"--junitxml={out_path(out_dir, name)}"]

    @staticmethod
    def candidates(files: list[str]) -> list[str]:
        return [f for f in files if f.endswith(".py")]

    def collect_argv(self, files: list[str], out_dir: str) -> list[str]:
        candidates = self.candidates(files)
        if not candidates:
            return []
        # --verbosity=-1 after addopts: a repository's `-q`/`-v` would change the listing format
        return [*self.base, "--collect-only", "--verbosity=-1", "--continue-on-collection-errors",
                *self._junit(out_dir, "collect.xml"), "--", *candidates]

    def parse_collected(self, files: list[str], exit_code: int, output: str, out_dir: Path) -> Collected:
        candidates = self.candidates(files)
        collected = Collected(tests_by_file={f: [] for f in files})
        for line in (output or "").splitlines():
            path, sep, _ = line.strip().partition("::")
            file = suffix_match(path, candidates) if sep else None
            if file:  # anything else is noise: coverage tables, warnings, summaries
                collected.tests_by_file[file].append(file + line.strip()[len(path):])
        root = read_xml(out_dir / "collect.xml")
        for case in parse_pytest_junit(root, candidates) if root is not None else []:
            if case.phase == "collection" and case.file in collected.tests_by_file:
                collected.errors[case.file] = case.message
        if root is None and exit_code not in (0, 5):
            for file in candidates:
                if not collected.tests_by_file[file]:
                    collected.errors[file] = tail(output) or f"pytest exited {exit_code}"
        return collected

    def run_argv(self, files: list[str], out_dir: str) -> list[str]:
        return [*self.base, *self._junit(out_dir, "junit.xml"), "--", *files]

    def suite_argv(self, out_dir: str) -> list[str]:
        return [*self.base, *self._junit(out_dir, "junit.xml")]

    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport:
        root = read_xml(out_dir / "junit.xml")
        if root is None:
            return report_missing(self.name, argv, exit_code, output)
        tests = parse_pytest_junit(root, files_after_dashes(argv))
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=tests)


# ---------------------------------------------------------------- unittest

class UnittestRunner:
    """unittest through sandbox_helpers/unittest_report.py, which writes unittest.json."""

    name = "unittest"

    def __init__(self, python: str = "python", helpers_mount: str = HELPERS_MOUNT):
        self.base = [python, "-B", f"{helpers_mount.rstrip('/')}/unittest_report.py"]

    def _argv(self, mode: str, out_dir: str, files: list[str] | None) -> list[str]:
        argv = [*self.base, f"--{mode}", "--out", out_path(out_dir, "unittest.json")]
        return argv if files is None else [*argv, "--", *files]

    def collect_argv(self, files: list[str], out_dir: str) -> list[str]:
        candidates = PytestRunner.candidates(files)
        return self._argv("collect", out_dir, candidates) if candidates else []

    def parse_collected(self, files: list[str], exit_code: int, output: str, out_dir: Path) -> Collected:
        data = read_json(out_dir / "unittest.json")
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

    def run_argv(self, files: list[str], out_dir: str) -> list[str]:
        return self._argv("run", out_dir, files)

    def suite_argv(self, out_dir: str) -> list[str]:
        return self._argv("discover", out_dir, None)

    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport:
        data = read_json(out_dir / "unittest.json")
        if not isinstance(data, dict):
            return report_missing(self.name, argv, exit_code, output)
        tests = merge([TestCase.model_validate(t) for t in data.get("tests", [])])
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=tests)


# ---------------------------------------------------------------- JavaScript: the test script
