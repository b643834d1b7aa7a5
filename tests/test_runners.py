"""Test runners: argv building and report parsing for the platform's RED/GREEN proof.

pytest, unittest and node --test run for real in throwaway repositories (the current
interpreter stands in for the repository's environment, the helpers are used from the source
tree), each with the report channel on descriptor 3 as the sandbox gives it; mocha, jest and
vitest reports are small recorded samples, so the file stays offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fixfleet.workspace.runners import (
    CHANNEL,
    HELPERS_DIR,
    HELPERS_MOUNT,
    SESSION_ID,
    ForgedReport,
    TestCase,
    TestReport,
    detect_js_runner,
    find_invocation,
    glob_match,
    green_verdict,
    make_runner,
    red_verdict,
)
from fixfleet.workspace.runners.verdicts import failing, new_failures, preexisting_failures


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


class Sandbox:
    """Runs argv in a repository the way the sandbox would: cwd = repo, the report channel a FIFO
    named by FIXFLEET_REPORT (the runners' argv name it by its path inside the sandbox), the
    platform's helpers importable."""

    def __init__(self, repo: Path):
        self.repo = repo

    def run(self, argv: list[str]) -> tuple[int, str, bytes]:
        channel = self.repo.parent / "report"
        channel.unlink(missing_ok=True)
        os.mkfifo(channel)
        read = os.open(channel, os.O_RDONLY | os.O_NONBLOCK)
        hold = os.open(channel, os.O_WRONLY)  # the stream ends when this is closed, after the run
        os.set_blocking(read, True)
        # The stand-in environment loads none of this interpreter's pytest plugins (hypothesis,
        # schemathesis, ...: 2 s a run), as a repository's own holds only what it asks for.
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
               "FIXFLEET_REPORT": str(channel), "PYTHONPATH": str(HELPERS_DIR)}
        env.pop("PYTEST_ADDOPTS", None)
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read, 65536), b"")))
        reader.start()
        done = subprocess.run([part.replace(CHANNEL, str(channel)) for part in argv], cwd=self.repo, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        os.close(hold)
        reader.join(timeout=10)
        os.close(read)
        return done.returncode, done.stdout + done.stderr, b"".join(chunks)

    def collect(self, runner, files):
        argv = runner.collect_argv(files)
        code, output, report = self.run(argv) if argv else (0, "", b"")
        return runner.parse_collected(files, code, output, report)

    def run_files(self, runner, files) -> TestReport:
        argv = runner.run_argv(files)
        code, output, report = self.run(argv)
        return runner.parse_run(argv, code, output, report)

    def suite(self, runner) -> TestReport:
        argv = runner.suite_argv()
        code, output, report = self.run(argv)
        return runner.parse_run(argv, code, output, report)


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    (tmp_path / "repo").mkdir()
    return Sandbox(tmp_path / "repo")


def by_id(report: TestReport) -> dict[str, TestCase]:
    return {t.id: t for t in report.tests}


# ------------------------------------------------------------------ pytest, for real

CALC_BUGGY = "def add(a, b):\n    return a - b\n"
CALC_FIXED = "def add(a, b):\n    return a + b\n"
CALC_TEST = """\
import pytest
from calc import add

def test_add():
    assert add(2, 3) == 5

class TestAdd:
    @pytest.mark.parametrize("a", [0, 1])
    def test_identity(self, a):
        assert add(a, 0) == a

def test_skipped():
    pytest.skip("not today")
"""


def pytest_repo(box: Sandbox, ini: str = "[pytest]\n", **files: str) -> Sandbox:
    write(box.repo, {"pytest.ini": ini, "calc.py": CALC_BUGGY, "tests/test_calc.py": CALC_TEST, **files})
    return box


def test_pytest_failing_assertion_is_red_then_green(box: Sandbox):
    pytest_repo(box)
    runner = make_runner("pytest", python=sys.executable)
    files = ["tests/test_calc.py"]

    collected = box.collect(runner, files)
    assert collected.tests_by_file["tests/test_calc.py"] == [
        "tests/test_calc.py::test_add", "tests/test_calc.py::TestAdd::test_identity[0]",
        "tests/test_calc.py::TestAdd::test_identity[1]", "tests/test_calc.py::test_skipped"]
    assert collected.errors == {}

    red = box.run_files(runner, files)
    tests = by_id(red)
    assert red.exit_code == 1
    assert tests["tests/test_calc.py::test_add"].outcome == "failed"
    assert tests["tests/test_calc.py::test_add"].phase == "call"
    assert "assert -1 == 5" in tests["tests/test_calc.py::test_add"].message
    assert tests["tests/test_calc.py::TestAdd::test_identity[1]"].outcome == "passed"
    assert tests["tests/test_calc.py::test_skipped"].outcome == "skipped"
    verdict = red_verdict(red, files)
    assert verdict.ok and verdict.test_ids == ["tests/test_calc.py::test_add"]

    (box.repo / "calc.py").write_text(CALC_FIXED)
    green = box.run_files(runner, files)
    assert green_verdict(green, verdict.test_ids, files).ok
    assert box.suite(runner).exit_code == 0


def test_pytest_import_error_is_a_collection_error_not_red(box: Sandbox):
    pytest_repo(box, **{"tests/test_new.py": "from calc import subtract\n\ndef test_sub():\n    assert subtract(3, 1) == 2\n"})
    runner = make_runner("pytest", python=sys.executable)
    files = ["tests/test_new.py", "tests/test_calc.py"]

    collected = box.collect(runner, files)
    assert "cannot import name 'subtract'" in collected.errors["tests/test_new.py"]
    assert collected.tests_by_file["tests/test_new.py"] == []
    assert len(collected.tests_by_file["tests/test_calc.py"]) == 4  # the others still collected

    red = box.run_files(runner, ["tests/test_new.py"])
    [broken] = red.collection_errors()
    assert (broken.id, broken.file, broken.outcome) == ("tests/test_new.py", "tests/test_new.py", "error")
    verdict = red_verdict(red, ["tests/test_new.py"])
    assert not verdict.ok and "collection error in tests/test_new.py" in verdict.reason


def test_pytest_fixture_error_is_setup_not_red(box: Sandbox):
    pytest_repo(box, **{"tests/test_fix.py": (
        "import pytest\n\n@pytest.fixture\ndef db():\n    raise ConnectionError('no db')\n\n"
        "def test_query(db):\n    assert db\n")})
    runner = make_runner("pytest", python=sys.executable)

    red = box.run_files(runner, ["tests/test_fix.py"])
    [case] = red.tests
    assert (case.id, case.outcome, case.phase) == ("tests/test_fix.py::test_query", "error", "setup")
    assert "ConnectionError: no db" in case.message
    verdict = red_verdict(red, ["tests/test_fix.py"])
    assert not verdict.ok and "setup/teardown errors do not count" in verdict.reason


def test_pytest_collects_root_test_py_and_ignores_plain_modules(box: Sandbox):
    pytest_repo(box, **{"test.py": "from calc import add\n\ndef test_root():\n    assert add(1, 1) == 0\n",
                        "util.py": "VALUE = 1\n"})
    runner = make_runner("pytest", python=sys.executable)

    collected = box.collect(runner, ["test.py", "util.py", "README.md"])
    assert collected.tests_by_file == {"test.py": ["test.py::test_root"], "util.py": [], "README.md": []}
    report = box.run_files(runner, ["test.py"])
    assert by_id(report)["test.py::test_root"].outcome == "passed"


def test_pytest_keeps_the_repository_addopts(box: Sandbox):
    # -q in addopts plus our own would print per-file counts instead of ids; -p no:doctest
    # must survive untouched
    pytest_repo(box, ini="[pytest]\naddopts = -p no:doctest -q\n")
    runner = make_runner("pytest", python=sys.executable)
    argv = runner.run_argv(["tests/test_calc.py"])
    assert "addopts" not in " ".join(argv) and argv[-2:] == ["--", "tests/test_calc.py"]

    collected = box.collect(runner, ["tests/test_calc.py"])
    assert len(collected.tests_by_file["tests/test_calc.py"]) == 4
    report = box.run_files(runner, ["tests/test_calc.py"])
    assert red_verdict(report, ["tests/test_calc.py"]).ok


def test_pytest_ids_are_repository_relative_under_a_subdirectory_rootdir(box: Sandbox):
    write(box.repo, {"backend/pytest.ini": "[pytest]\n", "backend/tests/test_x.py": "def test_x():\n    assert 0\n"})
    runner = make_runner("pytest", python=sys.executable)
    files = ["backend/tests/test_x.py"]
    assert box.collect(runner, files).tests_by_file[files[0]] == ["backend/tests/test_x.py::test_x"]
    assert red_verdict(box.run_files(runner, files), files).test_ids == ["backend/tests/test_x.py::test_x"]


def test_pytest_without_a_report_is_a_session_error(box: Sandbox):
    pytest_repo(box, **{"conftest.py": "raise RuntimeError('conftest boom')\n"})
    runner = make_runner("pytest", python=sys.executable)
    report = box.run_files(runner, ["tests/test_calc.py"])
    assert report.exit_code == 4
    [case] = report.collection_errors()
    assert case.id == SESSION_ID and "conftest boom" in case.message
    assert not red_verdict(report, ["tests/test_calc.py"]).ok
    collected = box.collect(runner, ["tests/test_calc.py"])
    assert "conftest boom" in collected.errors["tests/test_calc.py"]


# ------------------------------------------------------------------ unittest, for real

UNIT_TEST = """\
import unittest
from calc import add

class TestAdd(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)

    def test_add_strings(self):
        add("a", None).upper()  # raises inside the code under test: an unittest error

    def test_zero(self):
        self.assertEqual(add(0, 0), 0)

class TestBrokenSetUp(unittest.TestCase):
    def setUp(self):
        raise OSError("no fixture")

    def test_never(self):
        pass
"""


def unittest_runner():
    return make_runner("unittest", python=sys.executable, helpers_mount=str(HELPERS_DIR))


def test_unittest_failure_and_error_are_red_then_green(box: Sandbox):
    write(box.repo, {"calc.py": CALC_BUGGY, "tests/__init__.py": "", "tests/test_calc.py": UNIT_TEST})
    runner = unittest_runner()
    files = ["tests/test_calc.py"]
    assert runner.run_argv(files)[-2:] == ["--", "tests/test_calc.py"]

    collected = box.collect(runner, files + ["calc.py", "notes.txt"])
    assert collected.tests_by_file["tests/test_calc.py"] == [
        "tests.test_calc.TestAdd.test_add", "tests.test_calc.TestAdd.test_add_strings",
        "tests.test_calc.TestAdd.test_zero", "tests.test_calc.TestBrokenSetUp.test_never"]
    assert collected.tests_by_file["calc.py"] == [] and collected.tests_by_file["notes.txt"] == []

    red = box.run_files(runner, files)
    tests = by_id(red)
    assert red.exit_code == 1
    assert (tests["tests.test_calc.TestAdd.test_add"].outcome, tests["tests.test_calc.TestAdd.test_add"].phase) == (
        "failed", "call")
    assert tests["tests.test_calc.TestAdd.test_add_strings"].outcome == "error"
    assert tests["tests.test_calc.TestAdd.test_add_strings"].phase == "call"
    assert "TypeError" in tests["tests.test_calc.TestAdd.test_add_strings"].message
    assert tests["tests.test_calc.TestAdd.test_zero"].outcome == "passed"
    assert tests["tests.test_calc.TestBrokenSetUp.test_never"].phase == "setup"
    assert all(t.file == "tests/test_calc.py" for t in red.tests)
    verdict = red_verdict(red, files)
    assert verdict.ok and sorted(verdict.test_ids) == [
        "tests.test_calc.TestAdd.test_add", "tests.test_calc.TestAdd.test_add_strings"]

    write(box.repo, {"calc.py": "def add(a, b):\n    return a + b if b is not None else a\n",
                     "tests/test_calc.py": UNIT_TEST.replace('raise OSError("no fixture")', "pass")})
    green = box.run_files(runner, files)
    assert green.exit_code == 0
    assert green_verdict(green, verdict.test_ids, files).ok


def test_unittest_import_failure_is_collection_and_refused(box: Sandbox):
    write(box.repo, {"calc.py": CALC_BUGGY, "test_new.py": (
        "import unittest\nfrom calc import subtract\n\nclass T(unittest.TestCase):\n"
        "    def test_sub(self):\n        self.assertEqual(subtract(3, 1), 2)\n")})
    runner = unittest_runner()
    assert "cannot import name 'subtract'" in box.collect(runner, ["test_new.py"]).errors["test_new.py"]
    red = box.run_files(runner, ["test_new.py"])
    [broken] = red.tests
    assert (broken.id, broken.file, broken.phase) == ("test_new", "test_new.py", "collection")
    assert not red_verdict(red, ["test_new.py"]).ok


def test_unittest_discovery_suite(box: Sandbox):
    write(box.repo, {"calc.py": CALC_FIXED, "tests/__init__.py": "",
                     "tests/test_ok.py": UNIT_TEST.replace('raise OSError("no fixture")', "pass").replace(
                         'add("a", None).upper()', 'add("a", "b").upper()'),
                     "tests/test_broken.py": "import missing_module\n", "tests/helpers.py": "X = 1\n"})
    runner = unittest_runner()
    assert runner.suite_argv()[2:] == [f"{HELPERS_DIR}/unittest_report.py", "--discover"]
    report = box.suite(runner)
    tests = by_id(report)
    assert report.exit_code == 1
    assert tests["tests.test_broken"].phase == "collection"
    assert tests["tests.test_broken"].file == "tests/test_broken.py"
    assert tests["tests.test_ok.TestAdd.test_add"].outcome == "passed"
    assert tests["tests.test_ok.TestAdd.test_add"].file == "tests/test_ok.py"
    assert len(report.passed()) == 4

    (box.repo / "tests/test_broken.py").unlink()
    assert box.suite(runner).exit_code == 0


# ------------------------------------------------------------------ node --test, for real

NODE_TEST = """\
const test = require('node:test');
const assert = require('node:assert');
const { add } = require('../lib/calc');
test('adds', () => { assert.strictEqual(add(2, 3), 5); });
test('zero', () => { assert.strictEqual(add(0, 0), 0); });
test.describe('calc', () => {
  test.it('identity', () => { assert.strictEqual(add(4, 0), 4); });
});
"""


def test_node_test_runner_with_the_junit_reporter(box: Sandbox):
    write(box.repo, {"lib/calc.js": "exports.add = (a, b) => a - b;\n", "test/calc.test.js": NODE_TEST,
                     "test/broken.test.js": "require('./missing');\n"})
    runner = make_runner("node", test_script="node --test test/", workspace=str(box.repo))
    files = ["test/calc.test.js"]
    assert runner.collect_argv(files) == []
    collected = box.collect(runner, files + ["lib/calc.js"])
    assert collected.tests_by_file == {"test/calc.test.js": ["test/calc.test.js"], "lib/calc.js": []}

    red = box.run_files(runner, files)
    tests = by_id(red)
    assert tests["test/calc.test.js > adds"].outcome == "failed"
    assert "5" in tests["test/calc.test.js > adds"].message
    assert tests["test/calc.test.js > zero"].outcome == "passed"
    assert tests["test/calc.test.js > calc > identity"].outcome == "passed"
    verdict = red_verdict(red, files)
    assert verdict.ok and verdict.test_ids == ["test/calc.test.js > adds"]

    broken = box.run_files(runner, ["test/broken.test.js"])
    assert [(t.file, t.phase) for t in broken.tests] == [("test/broken.test.js", "collection")]
    assert not red_verdict(broken, ["test/broken.test.js"]).ok

    (box.repo / "lib/calc.js").write_text("exports.add = (a, b) => a + b;\n")
    assert green_verdict(box.run_files(runner, files), verdict.test_ids, files).ok


# ------------------------------------------------------------------ mocha, jest, vitest: recorded reports

MOCHA_XUNIT = """\
<testsuite name="Mocha Tests" tests="5" failures="0" errors="3" skipped="1" timestamp="Sun, 29 Nov 2026 21:46:21 GMT" time="0.004">
<testcase classname="" name="top level throws" file="/workspace/test/a.spec.js" time="0.001"><failure>tboom
TypeError: tboom
    at Context.&#x3C;anonymous&#x3E; (test/a.spec.js:11:44)</failure></testcase>
<testcase classname="math" name="adds" file="/workspace/test/a.spec.js" time="0"/>
<testcase classname="math" name="fails" file="/workspace/test/a.spec.js" time="0.001"><failure>Expected values to be strictly equal:

2 !== 3

AssertionError [ERR_ASSERTION]: Expected values to be strictly equal:
    at Context.&#x3C;anonymous&#x3E; (test/a.spec.js:4:36)</failure></testcase>
<testcase classname="math" name="skipped" file="/workspace/test/a.spec.js" time="0"><skipped/></testcase>
<testcase classname="math inner" name="&#x22;before each&#x22; hook for &#x22;never&#x22;" file="/workspace/test/a.spec.js" time="0"><failure>hook boom
Error: hook boom
    at Context.&#x3C;anonymous&#x3E; (test/a.spec.js:7:36)</failure></testcase>
</testsuite>
"""


def test_mocha_argv_reuses_the_script_options():
    script = "nyc --reporter=lcov mocha --reporter spec --bail --check-leaks --require test/setup.js --ui bdd --timeout 5000 test/"
    runner = make_runner("mocha", test_script=script)
    tail = ["--check-leaks", "--require", "test/setup.js", "--ui", "bdd", "--timeout", "5000",
            "--reporter", "xunit", "--reporter-option", f"output={CHANNEL}"]
    assert runner.run_argv(["test/a.spec.js"]) == ["node_modules/.bin/mocha", *tail, "--", "test/a.spec.js"]
    assert runner.suite_argv() == ["node_modules/.bin/mocha", *tail, "--", "test/"]
    assert runner.collect_argv(["test/a.spec.js"]) == []


def test_mocha_report_parsing():
    runner = make_runner("mocha", test_script="mocha")
    argv = runner.run_argv(["test/a.spec.js"])
    report = runner.parse_run(argv, 3, "", MOCHA_XUNIT.encode())
    tests = by_id(report)
    assert tests["test/a.spec.js > top level throws"].outcome == "failed"
    assert tests["test/a.spec.js > math > fails"].message.startswith("Expected values to be strictly equal")
    assert tests["test/a.spec.js > math > adds"].outcome == "passed"
    assert tests["test/a.spec.js > math > skipped"].outcome == "skipped"
    hook = tests['test/a.spec.js > math inner > "before each" hook for "never"']
    assert (hook.outcome, hook.phase) == ("error", "setup")
    assert sorted(red_verdict(report, ["test/a.spec.js"]).test_ids) == [
        "test/a.spec.js > math > fails", "test/a.spec.js > top level throws"]

    # a spec file that cannot load stops mocha before any report is written
    broken = runner.parse_run(argv, 1, "Exception during run: Error: Cannot find module './nope'", b"")
    assert broken.collection_errors()[0].id == SESSION_ID
    assert "Cannot find module" in red_verdict(broken, ["test/a.spec.js"]).reason


JEST_JSON = """{"numFailedTestSuites": 2, "success": false, "testResults": [
 {"name": "/workspace/src/math.test.js", "status": "failed", "message": "", "assertionResults": [
  {"ancestorTitles": ["math"], "title": "adds", "fullName": "math adds", "status": "passed", "failureMessages": []},
  {"ancestorTitles": ["math"], "title": "fails", "fullName": "math fails", "status": "failed",
   "failureMessages": ["Error: expect(received).toBe(expected) // Object.is equality\\n\\nExpected: 3\\nReceived: 2\\n    at Object.toBe (/workspace/src/math.test.js:3:39)"]},
  {"ancestorTitles": ["math"], "title": "sk", "status": "pending", "failureMessages": []},
  {"ancestorTitles": ["math"], "title": "later", "status": "todo", "failureMessages": []}]},
 {"name": "/workspace/src/bad.test.js", "status": "failed", "assertionResults": [],
  "message": "  \\u25cf Test suite failed to run\\n\\n    Cannot find module './nope' from 'src/bad.test.js'"}]}
"""


def test_jest_argv_collection_and_report():
    runner = make_runner("jest", test_script="cross-env NODE_ENV=test jest --config jest.unit.js --coverage --watch -i src")
    files = ["src/math.test.js", "src/math.js"]
    assert runner.run_argv(files) == [
        "node", f"{HELPERS_MOUNT}/jest_run.js", "--config", "jest.unit.js", "-i", "--ci", "--json",
        f"--outputFile={CHANNEL}",
        "--runTestsByPath", "--", *files]
    assert runner.collect_argv(files) == [
        "node", f"{HELPERS_MOUNT}/jest_run.js", "--config", "jest.unit.js", "-i", "--listTests", "--json",
        "--runTestsByPath",
        "--", *files]
    assert runner.suite_argv()[-2:] == ["--", "src"]

    output = 'Browserslist: caniuse-lite is outdated.\n["/workspace/src/math.test.js"]\n'
    collected = runner.parse_collected(files, 0, output, b"")
    assert collected.tests_by_file == {"src/math.test.js": ["src/math.test.js"], "src/math.js": []}
    assert set(runner.parse_collected(files, 1, "Error: bad config", b"").errors) == set(files)

    report = runner.parse_run(runner.run_argv(["src/math.test.js", "src/bad.test.js"]), 1, "", JEST_JSON.encode())
    tests = by_id(report)
    assert tests["src/math.test.js > math > fails"].outcome == "failed"
    assert tests["src/math.test.js > math > fails"].message.endswith("Received: 2")
    assert tests["src/math.test.js > math > sk"].outcome == tests["src/math.test.js > math > later"].outcome == "skipped"
    assert (tests["src/bad.test.js"].phase, tests["src/bad.test.js"].file) == ("collection", "src/bad.test.js")
    assert red_verdict(report, ["src/math.test.js"]).reason.startswith("collection error in src/bad.test.js")


VITEST_JUNIT = """<?xml version="1.0" encoding="UTF-8" ?>
<testsuites name="vitest tests" tests="4" failures="2" errors="0" time="0.01">
    <testsuite name="sum.test.js" tests="3" failures="1" errors="0" skipped="1" time="0.006">
        <testcase classname="sum.test.js" name="sum &gt; ok" time="0.001"></testcase>
        <testcase classname="sum.test.js" name="sum &gt; bad" time="0.004">
            <failure message="expected 1 to be 2 // Object.is equality" type="AssertionError">AssertionError: expected 1 to be 2</failure>
        </testcase>
        <testcase classname="sum.test.js" name="sum &gt; sk" time="0"><skipped/></testcase>
    </testsuite>
    <testsuite name="sub/sum.test.js" tests="1" failures="0" errors="0" skipped="0" time="0.006">
        <testcase classname="sub/sum.test.js" name="sum &gt; ok" time="0.001"></testcase>
    </testsuite>
    <testsuite name="bad.test.js" tests="1" failures="1" errors="0" skipped="0" time="0">
        <testcase classname="bad.test.js" name="bad.test.js" time="0">
            <failure message="Cannot find module &apos;./nope.js&apos; imported from /workspace/bad.test.js" type="Error">Error</failure>
        </testcase>
    </testsuite>
</testsuites>
"""


def test_vitest_argv_and_report():
    runner = make_runner("vitest", test_script="vitest run --config vite.config.ts --coverage.enabled --reporter=dot")
    argv = runner.run_argv(["sum.test.js"])
    # vitest reads nothing after `--`, so the files follow the options directly
    assert argv == ["node_modules/.bin/vitest", "run", "--config", "vite.config.ts", "--reporter=junit",
                    f"--outputFile={CHANNEL}", "sum.test.js"]
    report = runner.parse_run(argv, 1, "", VITEST_JUNIT.encode())
    tests = by_id(report)
    assert tests["sum.test.js > sum > bad"].outcome == "failed"
    assert tests["sum.test.js > sum > ok"].outcome == "passed"
    assert tests["sub/sum.test.js > sum > ok"].file == "sub/sum.test.js"  # a filter also matched it
    assert tests["bad.test.js"].phase == "collection"
    assert red_verdict(report, ["sum.test.js"]).reason.startswith("collection error in bad.test.js")
    report.tests = [t for t in report.tests if t.file != "bad.test.js"]
    assert red_verdict(report, ["sum.test.js"]).test_ids == ["sum.test.js > sum > bad"]


# ------------------------------------------------------------------ JS detection and collection

@pytest.mark.parametrize("script, dev, expected", [
    ("mocha --reporter spec test/", {}, "mocha"),
    ("nyc --reporter lcov mocha", {}, "mocha"),
    ("c8 mocha 'test/**/*.spec.js'", {"c8": "1"}, "mocha"),
    ("npm run build && jest --ci", {}, "jest"),
    ("cross-env NODE_ENV=test jest", {}, "jest"),
    ("vitest run", {}, "vitest"),
    ("node --test", {}, "node"),
    ("node --import tsx --test test/", {}, "node"),
    ("node scripts/check.js --test", {"jest": "29"}, "jest"),
    ("npm run unit", {}, "vitest"),
    ("eslint . && echo done", {"mocha": "10"}, "mocha"),
    ("", {"vitest": "1", "jest": "29"}, "vitest"),
])
def test_detect_js_runner(script, dev, expected):
    scripts = {"test": script, "unit": "vitest run --dir src"}
    assert detect_js_runner(script, dev, scripts) == expected


def test_detect_js_runner_refuses_the_unknown():
    with pytest.raises(ValueError):
        detect_js_runner("karma start", {"karma": "6"})
    assert find_invocation("npm run unit", {"unit": "npm run other", "other": "jest"}) is None  # one level only


def test_js_collection_follows_the_runner_spec():
    files = ["test/a.js", "test/unit/b.spec.mjs", "test/fixture.json", "lib/x.test.js", "src/y.test.ts",
             "node_modules/m/test/z.js", "test.cjs"]
    tests = lambda runner: [f for f, ids in runner.parse_collected(files, 0, "", Path("/nonexistent")).tests_by_file.items() if ids]
    assert tests(make_runner("mocha", test_script="mocha")) == ["test/a.js"]
    assert tests(make_runner("mocha", test_script="mocha --recursive")) == ["test/a.js", "test/unit/b.spec.mjs"]
    assert tests(make_runner("mocha", test_script="mocha test/")) == ["test/a.js", "test/unit/b.spec.mjs"]
    assert tests(make_runner("mocha", test_script="mocha 'lib/**/*.test.{js,ts}'")) == ["lib/x.test.js"]
    assert tests(make_runner("node", test_script="node --test")) == [
        "test/a.js", "test/unit/b.spec.mjs", "lib/x.test.js", "test.cjs"]
    assert tests(make_runner("vitest", test_script="vitest")) == ["test/unit/b.spec.mjs", "lib/x.test.js", "src/y.test.ts"]
    assert tests(make_runner("vitest", test_script="vitest run src")) == ["src/y.test.ts"]
    assert tests(make_runner("mocha", test_script="mocha", patterns=["src/**/*.ts"])) == ["src/y.test.ts"]


@pytest.mark.parametrize("path, pattern, expected", [
    ("a/b/c.test.js", "**/*.test.?(c|m)js", True),
    ("c.test.mjs", "**/*.test.?(c|m)js", True),
    ("c.test.xjs", "**/*.test.?(c|m)js", False),
    ("test/deep/x.js", "**/test/**/*.?(c|m)js", True),
    ("test/x.js", "./test/*.{js,cjs,mjs}", True),
    ("test/deep/x.js", "test/*.{js,cjs,mjs}", False),
    ("src/App.spec.tsx", "**/*.{test,spec}.?(c|m)[jt]s?(x)", True),
])
def test_glob_match(path, pattern, expected):
    assert glob_match(path, pattern) is expected


# ------------------------------------------------------------------ verdicts

def report(exit_code: int, *tests: TestCase) -> TestReport:
    return TestReport(runner="pytest", argv=["pytest"], exit_code=exit_code, tests=list(tests))


def case(test_id: str, outcome: str, phase: str = "call", file: str | None = "t.py") -> TestCase:
    return TestCase(id=test_id, file=file, outcome=outcome, phase=phase)


def test_red_verdicts():
    assert red_verdict(report(1, case("a", "failed"), case("b", "passed")), ["t.py"]).test_ids == ["a"]
    assert not red_verdict(report(0, case("a", "passed")), ["t.py"]).ok
    assert not red_verdict(report(1, case("a", "failed", file="other.py")), ["t.py"]).ok
    assert not red_verdict(report(5), ["t.py"]).ok
    refused = red_verdict(report(1, case("a", "failed"), case("u.py", "error", "collection", "u.py")), ["t.py", "u.py"])
    assert not refused.ok and refused.reason.startswith("collection error in u.py")
    assert not red_verdict(report(1, case("a", "error", "teardown")), ["t.py"]).ok
    assert red_verdict(report(1, case("a", "failed", file=None)), ["t.py"]).ok  # runner could not name the file


def test_green_verdicts():
    assert green_verdict(report(0, case("a", "passed"), case("b", "passed")), ["a"], ["t.py"]).ok
    vanished = green_verdict(report(0, case("b", "passed")), ["a"], ["t.py"])
    assert not vanished.ok and "missing" in vanished.reason
    still_red = green_verdict(report(1, case("a", "failed")), ["a"], ["t.py"])
    assert not still_red.ok and "not passing" in still_red.reason
    skipped = green_verdict(report(0, case("a", "skipped")), ["a"], ["t.py"])
    assert not skipped.ok and "(skipped" in skipped.reason
    other_broken = green_verdict(report(1, case("a", "passed"), case("b", "failed")), ["a"], ["t.py"])
    assert not other_broken.ok and "b" in other_broken.reason  # the fix broke a neighbour in the same file
    excused = green_verdict(report(1, case("a", "passed"), case("b", "failed")), ["a"], ["t.py"], excused=["b"])
    assert excused.ok  # b failed on the base commit already (or flips): not the change's doing
    assert green_verdict(report(1, case("a", "passed")), ["a"], ["t.py"]).ok  # e.g. --cov-fail-under in addopts


def test_pre_existing_failures_and_new_failures_against_the_base_run():
    base = {"t.py::old_bad": "failed", "t.py::old_ok": "passed", "t.py::edited": "failed"}
    run = report(1, case("t.py::old_bad", "failed"), case("t.py::old_ok", "failed"), case("t.py::edited", "failed"),
                 case("t.py::new", "failed"), case("t.py::fine", "passed"))
    assert preexisting_failures(failing(run), base, edited={"t.py::edited"}) == ["t.py::old_bad"]
    assert preexisting_failures(failing(run), base) == ["t.py::edited", "t.py::old_bad"]  # edits unknown (JS)
    assert new_failures(run, base) == ["t.py::old_ok", "t.py::new"]
    assert new_failures(run, base, excused=["t.py::new"]) == ["t.py::old_ok"]
    assert new_failures(run, None) == failing(run)  # no base run: every failure is new
    with_pre = red_verdict(report(1, case("t.py::old_bad", "failed")), ["t.py"], preexisting=["t.py::old_bad"])
    assert not with_pre.ok and "already failing on the base commit" in with_pre.reason
    flaky = red_verdict(report(1, case("t.py::x", "failed")), ["t.py"], flaky=["t.py::x"])
    assert not flaky.ok and "flaky" in flaky.reason


def test_a_report_channel_written_twice_is_forged():
    runner = make_runner("vitest", test_script="vitest run")
    with pytest.raises(ForgedReport):
        runner.parse_run(runner.run_argv(["sum.test.js"]), 0, "", (VITEST_JUNIT + VITEST_JUNIT).encode())
    jest = make_runner("jest", test_script="jest")
    with pytest.raises(ForgedReport):
        jest.parse_run(jest.run_argv(["a.test.js"]), 0, "", (JEST_JSON + '{"testResults": []}').encode())
