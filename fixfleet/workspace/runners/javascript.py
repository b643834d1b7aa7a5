"""node --test, mocha, jest and vitest: their commands, with the repository's own options, and
their reports (JUnit XML, xunit, jest's JSON), each written by the runner's own reporter to the
report channel (reports.CHANNEL), not to a file the tests could rewrite."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from fixfleet.workspace.runners.reports import (
    CHANNEL,
    HELPERS_MOUNT,
    WORKSPACE_MOUNT,
    Collected,
    TestCase,
    TestReport,
    failure_child,
    files_after_dashes,
    json_document,
    merge,
    relative,
    report_missing,
    short,
    tail,
    xml_document,
)
from fixfleet.workspace.runners.scripts import (
    MOCHA_DEFAULTS,
    NODE_TEST_DEFAULTS,
    SCRIPT_FILE,
    VITEST_DEFAULTS,
    find_invocation,
    glob_match,
    spec_patterns,
    split_options,
)


class JsRunner:
    """Shared parts: options reused from the test script, spec-based collection."""

    name = ""
    bin: tuple[str, ...] = ()
    valued: frozenset[str] = frozenset()
    dropped: frozenset[str] = frozenset()
    positional_options: frozenset[str] = frozenset()
    defaults: tuple[str, ...] = ()

    def __init__(self, test_script: str | None = None, scripts: dict[str, str] | None = None,
                 workspace: str = WORKSPACE_MOUNT, patterns: list[str] | None = None):
        found = find_invocation(test_script or "", scripts)
        args = found[1] if found and found[0] == self.name else []
        self.options, positional = split_options(args, self.valued, self.dropped, self.positional_options)
        self.positional = self.script_paths(positional)
        self.workspace = workspace
        self.patterns = patterns or self.script_patterns()

    def script_paths(self, positional: list[str]) -> list[str]:
        return positional

    def script_patterns(self) -> list[str]:
        """Test-file globs: the script's positional paths, else the runner's defaults."""
        return spec_patterns(self.positional) or list(self.defaults)

    def is_test_file(self, path: str) -> bool:
        if "node_modules/" in f"/{path}":
            return False
        return any(glob_match(path, p) for p in self.patterns)

    def env(self) -> dict[str, str]:
        return {}

    def _argv(self) -> list[str]:  # the runner with the repository's options and the platform's reporter
        raise NotImplementedError

    def run_argv(self, files: list[str]) -> list[str]:
        return [*self._argv(), "--", *files]

    def suite_argv(self) -> list[str]:
        return [*self._argv(), *(["--", *self.positional] if self.positional else [])]

    def collect_argv(self, files: list[str]) -> list[str]:
        return []

    def parse_collected(self, files: list[str], exit_code: int, output: str, report: bytes) -> Collected:
        return Collected(tests_by_file={f: [f] if self.is_test_file(f) else [] for f in files})

    def _report(self, argv: list[str], exit_code: int, tests: list[TestCase]) -> TestReport:
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=merge(tests))

    def _relative(self, path: str, files: list[str]) -> str:
        return relative(path, files, self.workspace)


def js_id(*parts: str | None) -> str:
    return " > ".join(p for p in parts if p)


class NodeTestRunner(JsRunner):
    """`node --test` with the built-in JUnit reporter (plus spec on stdout for the log)."""

    name = "node"
    valued = frozenset({"--require", "-r", "--import", "--loader", "--experimental-loader", "--test-concurrency",
              "--test-timeout", "--test-name-pattern", "--test-skip-pattern", "--test-reporter",
              "--test-reporter-destination", "--test-shard", "--env-file", "--conditions", "-C",
              "--input-type", "--test-coverage-include", "--test-coverage-exclude"})
    dropped = frozenset({"--test", "--test-reporter", "--test-reporter-destination", "--watch", "--test-only",
               "--test-name-pattern", "--test-skip-pattern", "--experimental-test-coverage",
               "--test-coverage-include", "--test-coverage-exclude", "--test-coverage-lines",
               "--test-coverage-branches", "--test-coverage-functions", "--test-shard"})
    defaults = NODE_TEST_DEFAULTS

    def _argv(self) -> list[str]:
        return ["node", *self.options, "--test", "--test-reporter=junit", f"--test-reporter-destination={CHANNEL}",
                "--test-reporter=spec", "--test-reporter-destination=stdout"]

    def parse_run(self, argv: list[str], exit_code: int, output: str, report: bytes) -> TestReport:
        root = xml_document(report)
        if root is None:
            return report_missing(self.name, argv, exit_code, output)
        files = files_after_dashes(argv)
        return self._report(argv, exit_code, list(self._walk(root, [], files)))

    def _walk(self, element: ET.Element, suites: list[str], files: list[str]):
        for child in element:
            if child.tag == "testsuite":
                yield from self._walk(child, [*suites, child.get("name", "")], files)
            elif child.tag == "testcase":
                yield self._case(child, suites, files)

    def _case(self, case: ET.Element, suites: list[str], files: list[str]) -> TestCase:
        name = case.get("name", "")
        # node 20 has no file attribute: with a single file every test is that file's
        file = case.get("file") or (files[0] if len(files) == 1 else None)
        file = self._relative(file, files) if file else None
        child = failure_child(case)
        load_failure = not suites and name.startswith("/") and SCRIPT_FILE.search(name)
        if load_failure and child is not None:  # the file itself is the failed "test"
            file = self._relative(name, files)
            return TestCase(id=file, file=file, outcome="error", phase="collection",
                            message=short(child.get("message", "")))
        test_id = js_id(file, *suites, name)
        if child is None:
            return TestCase(id=test_id, file=file, outcome="passed")
        if child.tag == "skipped":
            return TestCase(id=test_id, file=file, outcome="skipped", message=short(child.get("type", "")))
        kind = child.get("type", "")
        if kind in ("hookFailure", "cancelledByParent"):
            return TestCase(id=test_id, file=file, outcome="error", phase="setup",
                            message=short(child.get("message", "")))
        return TestCase(id=test_id, file=file, outcome="failed", message=short(child.get("message", "")))


MOCHA_HOOK = re.compile(r'^"(before|after) (all|each)" hook')


class MochaRunner(JsRunner):
    """node_modules/.bin/mocha with the script's options and the xunit reporter."""

    name = "mocha"
    bin = ("node_modules/.bin/mocha",)
    valued = frozenset({"--require", "-r", "--ui", "-u", "--timeout", "-t", "--slow", "-s", "--reporter", "-R",
              "--reporter-option", "--reporter-options", "-O", "--grep", "-g", "--fgrep", "-f", "--config",
              "--package", "--extension", "--file", "--ignore", "--exclude", "--spec", "--retries",
              "--jobs", "-j", "--global", "--globals", "--node-option", "-n", "--watch-files",
              "--watch-ignore", "--opts"})
    dropped = frozenset({"--bail", "-b", "--reporter", "-R", "--reporter-option", "--reporter-options", "-O",
               "--watch", "-w", "--watch-files", "--watch-ignore", "--grep", "-g", "--fgrep", "-f",
               "--invert", "-i", "--parallel", "-p", "--jobs", "-j", "--list-files", "--list-reporters",
               "--list-interfaces", "--dry-run"})
    positional_options = frozenset({"--spec"})

    def script_patterns(self) -> list[str]:
        if self.positional:
            return spec_patterns(self.positional)
        return ["test/**/*.{js,cjs,mjs}"] if "--recursive" in self.options else list(MOCHA_DEFAULTS)

    def _argv(self) -> list[str]:
        return [*self.bin, *self.options, "--reporter", "xunit", "--reporter-option", f"output={CHANNEL}"]

    def parse_run(self, argv: list[str], exit_code: int, output: str, report: bytes) -> TestReport:
        root = xml_document(report)
        if root is None:  # mocha writes nothing when a spec file fails to load
            return report_missing(self.name, argv, exit_code, output)
        files = files_after_dashes(argv)
        return self._report(argv, exit_code, [self._case(c, files) for c in root.iter("testcase")])

    def _case(self, case: ET.Element, files: list[str]) -> TestCase:
        file = case.get("file") or (files[0] if len(files) == 1 else None)
        file = self._relative(file, files) if file else None
        name = case.get("name", "")
        test_id = js_id(file, case.get("classname"), name)
        child = failure_child(case)
        if child is None:
            return TestCase(id=test_id, file=file, outcome="passed")
        if child.tag == "skipped":
            return TestCase(id=test_id, file=file, outcome="skipped")
        message = short(child.get("message") or (child.text or "").split("\n    at ", 1)[0])
        hook = MOCHA_HOOK.match(name)
        if hook:
            phase = "setup" if hook.group(1) == "before" else "teardown"
            return TestCase(id=test_id, file=file, outcome="error", phase=phase, message=message)
        return TestCase(id=test_id, file=file, outcome="failed", message=message)


class JestRunner(JsRunner):
    """The repository's jest --json with exact paths (--runTestsByPath); --listTests collects.
    Started through sandbox_helpers/jest_run.js, so that the platform's options are not in the
    arguments of the process that runs the tests in band."""

    name = "jest"
    bin = ("node", f"{HELPERS_MOUNT}/jest_run.js")
    valued = frozenset({"--config", "-c", "--rootDir", "--roots", "--testEnvironment", "--env", "--maxWorkers", "-w",
              "--testTimeout", "--outputFile", "--reporters", "--testNamePattern", "-t", "--testPathPattern",
              "--testPathPatterns", "--testPathIgnorePatterns", "--selectProjects", "--ignoreProjects",
              "--projects", "--coverageDirectory", "--coverageProvider", "--collectCoverageFrom",
              "--coverageReporters", "--coverageThreshold", "--changedSince", "--shard", "--seed",
              "--testRunner", "--testMatch", "--testRegex", "--setupFiles", "--setupFilesAfterEnv",
              "--globalSetup", "--globalTeardown", "--moduleDirectories", "--moduleFileExtensions",
              "--modulePaths", "--moduleNameMapper", "--transform", "--cacheDirectory", "--testSequencer",
              "--workerIdleMemoryLimit", "--maxConcurrency", "--resolver", "--testResultsProcessor",
              "--filter", "--globals", "--preset"})
    # coverage of a few files would miss the repository's thresholds
    dropped = frozenset({"--watch", "--watchAll", "--json", "--outputFile", "--ci", "--coverage", "--collectCoverage",
               "--collectCoverageFrom", "--coverageDirectory", "--coverageReporters", "--coverageThreshold",
               "--coverageProvider", "--reporters", "--testNamePattern", "-t", "--testPathPattern",
               "--testPathPatterns", "--findRelatedTests", "--onlyChanged", "-o", "--changedSince",
               "--changedFilesWithAncestor", "--lastCommit", "--listTests", "--runTestsByPath", "--bail",
               "-b", "--shard"})

    def collect_argv(self, files: list[str]) -> list[str]:
        return [*self.bin, *self.options, "--listTests", "--json", "--runTestsByPath", "--", *files]

    def parse_collected(self, files: list[str], exit_code: int, output: str, report: bytes) -> Collected:
        listed = json_list_line(output)
        collected = Collected(tests_by_file={f: [] for f in files})
        if listed is None:
            reason = tail(output) or f"jest --listTests exited {exit_code}"
            collected.errors = {f: reason for f in files}
            return collected
        for path in listed:
            file = self._relative(str(path), files)
            if file in collected.tests_by_file:
                collected.tests_by_file[file] = [file]
        return collected

    def _argv(self) -> list[str]:
        return [*self.bin, *self.options, "--ci", "--json", f"--outputFile={CHANNEL}"]

    def run_argv(self, files: list[str]) -> list[str]:
        return [*self._argv(), "--runTestsByPath", "--", *files]

    def parse_run(self, argv: list[str], exit_code: int, output: str, report: bytes) -> TestReport:
        data = json_document(report)
        if not isinstance(data, dict):
            return report_missing(self.name, argv, exit_code, output)
        files = files_after_dashes(argv)
        tests = [case for suite in data.get("testResults", []) for case in self._suite(suite, files)]
        return self._report(argv, exit_code, tests)

    def _suite(self, suite: dict, files: list[str]) -> list[TestCase]:
        file = self._relative(suite.get("name", ""), files)
        results = suite.get("assertionResults") or []
        if not results and (suite.get("status") == "failed" or suite.get("testExecError")):
            message = suite.get("message") or (suite.get("testExecError") or {}).get("message", "")
            return [TestCase(id=file, file=file, outcome="error", phase="collection", message=short(message))]
        return [self._assertion(file, result) for result in results]

    @staticmethod
    def _assertion(file: str, result: dict) -> TestCase:
        test_id = js_id(file, *result.get("ancestorTitles", []), result.get("title", ""))
        status = result.get("status")
        outcome = {"passed": "passed", "failed": "failed"}.get(status, "skipped")
        message = (result.get("failureMessages") or [""])[0].split("\n    at ", 1)[0]
        return TestCase(id=test_id, file=file, outcome=outcome, message=short(message))


def json_list_line(output: str) -> list | None:
    """The JSON array jest --listTests prints, among whatever else reached the output."""
    for line in reversed((output or "").splitlines()):
        line = line.strip()
        if line.startswith("["):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, list):
                return value
    return None


class VitestRunner(JsRunner):
    """node_modules/.bin/vitest run with the JUnit reporter; file arguments are path filters."""

    name = "vitest"
    bin = ("node_modules/.bin/vitest", "run")
    valued = frozenset({"--config", "-c", "--root", "-r", "--dir", "--environment", "--pool", "--reporter",
              "--outputFile", "--project", "--testNamePattern", "-t", "--shard", "--maxWorkers",
              "--minWorkers", "--testTimeout", "--hookTimeout", "--mode", "--exclude"})
    dropped = frozenset({"--reporter", "--outputFile", "--watch", "-w", "--run", "--coverage", "--coverage.",
               "--ui", "--open", "--testNamePattern", "-t", "--changed", "--shard", "--bail",
               "--update", "-u", "--outputFile."})
    defaults = VITEST_DEFAULTS
    subcommands = frozenset({"run", "watch", "dev", "related", "bench", "typecheck", "list"})

    def script_paths(self, positional: list[str]) -> list[str]:
        return positional[1:] if positional[:1] and positional[0] in self.subcommands else positional

    def script_patterns(self) -> list[str]:
        return list(self.defaults)  # positional arguments are filters, they name no files

    def is_test_file(self, path: str) -> bool:
        # the script's positional arguments are substring filters over the include globs
        filters = [p.removeprefix("./") for p in self.positional]
        return super().is_test_file(path) and (not filters or any(f in path for f in filters))

    def _argv(self) -> list[str]:
        return [*self.bin, *self.options, "--reporter=junit", f"--outputFile={CHANNEL}"]

    def run_argv(self, files: list[str]) -> list[str]:
        # vitest reads arguments after `--` as nothing at all: the files go in plainly
        return [*self._argv(), *files]

    def suite_argv(self) -> list[str]:
        return [*self._argv(), *self.positional]

    def parse_run(self, argv: list[str], exit_code: int, output: str, report: bytes) -> TestReport:
        root = xml_document(report)
        if root is None:
            return report_missing(self.name, argv, exit_code, output)
        files = [a for a in argv[len(self._argv()):] if not a.startswith("-")]
        return self._report(argv, exit_code, [self._case(c, files) for c in root.iter("testcase")])

    def _case(self, case: ET.Element, files: list[str]) -> TestCase:
        classname, name = case.get("classname", ""), case.get("name", "")
        file = self._relative(case.get("file") or classname, files) if (case.get("file") or classname) else None
        child = failure_child(case)
        message = short(child.get("message", "")) if child is not None else ""
        if child is not None and child.tag != "skipped" and name == classname:  # the file failed to load
            return TestCase(id=file or name, file=file, outcome="error", phase="collection", message=message)
        test_id = js_id(file, name)
        if child is None:
            return TestCase(id=test_id, file=file, outcome="passed")
        if child.tag == "skipped":
            return TestCase(id=test_id, file=file, outcome="skipped")
        return TestCase(id=test_id, file=file, outcome="failed", message=message)


# ---------------------------------------------------------------- factory and verdicts

JS_RUNNERS = {"node": NodeTestRunner, "mocha": MochaRunner, "jest": JestRunner, "vitest": VitestRunner}
