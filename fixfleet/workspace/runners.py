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

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field

HELPERS_DIR = Path(__file__).parent / "sandbox_helpers"
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

def _short(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(output: str, lines: int = 15) -> str:
    return _short("\n".join((output or "").strip().splitlines()[-lines:]))


def _files_after_dashes(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1:] if "--" in argv else []


def _out(out_dir: str, name: str) -> str:
    return f"{out_dir.rstrip('/')}/{name}"


# Worst first: one entry per id survives (pytest writes a second testcase for a teardown error).
_SEVERITY = {("error", "collection"): 6, ("failed", "call"): 5, ("error", "call"): 5,
             ("failed", "setup"): 4, ("error", "setup"): 4, ("failed", "teardown"): 3,
             ("error", "teardown"): 3, ("failed", "collection"): 6}


def _rank(test: TestCase) -> int:
    return _SEVERITY.get((test.outcome, test.phase), 1 if test.outcome == "skipped" else 0)


def _merge(tests: list[TestCase]) -> list[TestCase]:
    merged: dict[str, TestCase] = {}
    for test in tests:
        if test.id not in merged or _rank(test) > _rank(merged[test.id]):
            merged[test.id] = test
    return list(merged.values())


def _report_missing(runner: str, argv: list[str], exit_code: int, output: str) -> TestReport:
    """A run that left no report: a non-zero exit means nothing could even be loaded."""
    tests = []
    if exit_code != 0:
        message = _tail(output) or f"{runner} exited {exit_code} without writing its report"
        tests = [TestCase(id=SESSION_ID, outcome="error", phase="collection", message=message)]
    return TestReport(runner=runner, argv=argv, exit_code=exit_code, tests=tests)


def _read_xml(path: Path) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None


def _read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _suffix_match(path: str, files: list[str]) -> str | None:
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


def _relative(path: str, files: list[str], workspace: str) -> str:
    """Repository-relative form of a path from a JS report."""
    rel = path.removeprefix(workspace.rstrip("/") + "/").removeprefix("./")
    return _suffix_match(rel, files) or rel


def _failure_child(case: ET.Element) -> ET.Element | None:
    for tag in ("failure", "error", "skipped"):
        child = case.find(tag)
        if child is not None:
            return child
    return None


def _junit_message(element: ET.Element) -> str:
    """The `E   ` lines of a pytest traceback, else the message attribute, else the text."""
    text = element.text or ""
    e_lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    message = element.get("message") or ""
    if e_lines and (message in ("", "collection failure") or message.startswith("failed on")):
        return _short("\n".join(e_lines))
    return _short(message or text)


# ---------------------------------------------------------------- pytest

def _module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _suffixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _pytest_location(classname: str, file_attr: str, files: list[str]) -> tuple[str, list[str]]:
    """(repository-relative module file, class names) of an xunit1 classname.

    The classname is the node id's path (relative to pytest's rootdir, maybe a subdirectory)
    in dotted form plus the classes; the file attribute names where the function is defined,
    which for an inherited test is another module, so the given files are tried first.
    """
    candidates = files + ([file_attr] if file_attr else [])
    for depth in range(max((len(f.split("/")) for f in candidates), default=0)):
        for file in candidates:
            suffixes = _suffixes(file)
            if depth >= len(suffixes):
                continue
            module = _module_of(suffixes[depth])
            if classname == module or classname.startswith(module + "."):
                rest = classname[len(module) + 1:]
                return _suffix_match(file, files) or file, rest.split(".") if rest else []
    parts = classname.split(".")
    classes = []
    while parts and parts[-1][:1].isupper():  # test classes are capitalised; modules rarely are
        classes.insert(0, parts.pop())
    return "/".join(parts) + ".py", classes


def _pytest_case(case: ET.Element, files: list[str]) -> TestCase:
    classname, name, file_attr = case.get("classname", ""), case.get("name", ""), case.get("file", "")
    child = _failure_child(case)
    if child is not None and child.tag == "error" and (
            not classname or child.get("message", "") == "collection failure"):
        file = _suffix_match(file_attr, files) or file_attr or name.replace(".", "/") + ".py"
        return TestCase(id=file, file=file, outcome="error", phase="collection", message=_junit_message(child))
    file, classes = _pytest_location(classname, file_attr, files)
    test_id = "::".join([file, *classes, name])
    if child is None:
        return TestCase(id=test_id, file=file, outcome="passed")
    if child.tag == "skipped":
        return TestCase(id=test_id, file=file, outcome="skipped", message=_short(child.get("message", "")))
    if child.tag == "failure":
        return TestCase(id=test_id, file=file, outcome="failed", message=_junit_message(child))
    phase = "teardown" if child.get("message", "").startswith("failed on teardown") else "setup"
    return TestCase(id=test_id, file=file, outcome="error", phase=phase, message=_junit_message(child))


def parse_pytest_junit(root: ET.Element, files: list[str]) -> list[TestCase]:
    return _merge([_pytest_case(case, files) for case in root.iter("testcase")])


class PytestRunner:
    """`python -m pytest` with an xunit1 JUnit report; the repository's addopts stay in force."""

    name = "pytest"

    def __init__(self, python: str = "python"):
        # -B: RED must leave no bytecode that a GREEN run of a same-size fix could reuse
        self.base = [python, "-B", "-m", "pytest", "-p", "no:cacheprovider"]

    def _junit(self, out_dir: str, name: str) -> list[str]:
        return ["-o", "junit_family=xunit1", f"--junitxml={_out(out_dir, name)}"]

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
            file = _suffix_match(path, candidates) if sep else None
            if file:  # anything else is noise: coverage tables, warnings, summaries
                collected.tests_by_file[file].append(file + line.strip()[len(path):])
        root = _read_xml(out_dir / "collect.xml")
        for case in parse_pytest_junit(root, candidates) if root is not None else []:
            if case.phase == "collection" and case.file in collected.tests_by_file:
                collected.errors[case.file] = case.message
        if root is None and exit_code not in (0, 5):
            for file in candidates:
                if not collected.tests_by_file[file]:
                    collected.errors[file] = _tail(output) or f"pytest exited {exit_code}"
        return collected

    def run_argv(self, files: list[str], out_dir: str) -> list[str]:
        return [*self.base, *self._junit(out_dir, "junit.xml"), "--", *files]

    def suite_argv(self, out_dir: str) -> list[str]:
        return [*self.base, *self._junit(out_dir, "junit.xml")]

    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport:
        root = _read_xml(out_dir / "junit.xml")
        if root is None:
            return _report_missing(self.name, argv, exit_code, output)
        tests = parse_pytest_junit(root, _files_after_dashes(argv))
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=tests)


# ---------------------------------------------------------------- unittest

class UnittestRunner:
    """unittest through sandbox_helpers/unittest_report.py, which writes unittest.json."""

    name = "unittest"

    def __init__(self, python: str = "python", helpers_mount: str = HELPERS_MOUNT):
        self.base = [python, "-B", f"{helpers_mount.rstrip('/')}/unittest_report.py"]

    def _argv(self, mode: str, out_dir: str, files: list[str] | None) -> list[str]:
        argv = [*self.base, f"--{mode}", "--out", _out(out_dir, "unittest.json")]
        return argv if files is None else [*argv, "--", *files]

    def collect_argv(self, files: list[str], out_dir: str) -> list[str]:
        candidates = PytestRunner.candidates(files)
        return self._argv("collect", out_dir, candidates) if candidates else []

    def parse_collected(self, files: list[str], exit_code: int, output: str, out_dir: Path) -> Collected:
        data = _read_json(out_dir / "unittest.json")
        collected = Collected(tests_by_file={f: [] for f in files})
        if not isinstance(data, dict):
            if PytestRunner.candidates(files):
                reason = _tail(output) or f"unittest helper exited {exit_code} without a report"
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
        data = _read_json(out_dir / "unittest.json")
        if not isinstance(data, dict):
            return _report_missing(self.name, argv, exit_code, output)
        tests = _merge([TestCase.model_validate(t) for t in data.get("tests", [])])
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=tests)


# ---------------------------------------------------------------- JavaScript: the test script

_SHELL_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_RUNNER_BINS = {"mocha": "mocha", "_mocha": "mocha", "jest": "jest", "vitest": "vitest"}
_SCRIPT_FILE = re.compile(r"\.[cm]?[jt]sx?$")


def _segments(script: str) -> list[list[str]]:
    """The simple commands of a package.json script, each as tokens."""
    lexer = shlex.shlex(script or "", posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to plain words
        tokens = (script or "").split()
    segments, current = [], []
    for token in tokens:
        if token in _SHELL_SEPARATORS:
            segments.append(current)
            current = []
        elif not (not current and _ENV_ASSIGNMENT.match(token)):
            current.append(token)
    return [s for s in segments + [current] if s]


def _npm_run_target(tokens: list[str], i: int) -> str | None:
    """The script name of `npm run x`, `yarn x`, `pnpm run x` starting at tokens[i]."""
    tool, rest = tokens[i].rsplit("/", 1)[-1], tokens[i + 1:]
    if tool not in ("npm", "yarn", "pnpm") or not rest:
        return None
    if rest[0] in ("run", "run-script") and len(rest) > 1:
        return rest[1]
    if rest[0] in ("test", "t"):
        return "test"
    return rest[0] if tool in ("yarn", "pnpm") else None


def _node_runs_tests(args: list[str]) -> bool:
    if "--test" not in args:
        return False
    scripts = [i for i, a in enumerate(args) if _SCRIPT_FILE.search(a) or "node_modules/" in a]
    return not scripts or args.index("--test") < scripts[0]


def find_invocation(script: str, scripts: dict[str, str] | None = None,
                    _depth: int = 0) -> tuple[str, list[str]] | None:
    """(runner, the runner's own arguments) of the first test-runner command in a script.

    Wrappers (nyc, c8, cross-env, npx, env assignments) are skipped by scanning each command
    for the runner word; `npm run x` is followed one level through `scripts`.
    """
    for tokens in _segments(script):
        for i, token in enumerate(tokens):
            base = token.rsplit("/", 1)[-1]
            if base in _RUNNER_BINS:
                return _RUNNER_BINS[base], tokens[i + 1:]
            if base == "node" and _node_runs_tests(tokens[i + 1:]):
                return "node", tokens[i + 1:]
            target = _npm_run_target(tokens, i)
            if target and _depth == 0 and scripts and target in scripts and scripts[target] != script:
                found = find_invocation(scripts[target], scripts, _depth + 1)
                if found:
                    return found
    return None


def detect_js_runner(test_script: str, dev_dependencies: dict | None = None,
                     scripts: dict[str, str] | None = None) -> str:
    """'mocha' | 'jest' | 'vitest' | 'node' from the test script, else from devDependencies."""
    found = find_invocation(test_script or "", scripts)
    if found:
        return found[0]
    for runner in ("vitest", "jest", "mocha"):
        if runner in (dev_dependencies or {}):
            return runner
    raise ValueError(f"no supported JavaScript test runner in {test_script!r} or devDependencies")


def _split_options(args: list[str], valued: frozenset[str], dropped: frozenset[str],
                   positional_options: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(options kept, positional arguments) of a runner's arguments from the test script."""
    keep, positional, i = [], [], 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value = arg.split("=", 1)[0], "=" in arg
        value = [args[i]] if name in valued and not has_value and i < len(args) else []
        i += len(value)
        if name in positional_options:
            positional += value or arg.split("=", 1)[1:]
        elif name not in dropped and not any(name.startswith(p) for p in dropped if p.endswith(".")):
            keep += [arg, *value]
    return keep, positional


# ---------------------------------------------------------------- JavaScript: globs

def _closing(text: str, start: int, opening: str, closing: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] == opening
        depth -= text[i] == closing
        if depth == 0:
            return i
    return -1


def _split_top(text: str, separator: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "({"
        depth -= char in ")}"
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def _glob_regex(pattern: str) -> str:
    """Regex source of a minimatch-style glob: **, *, ?, [..], {a,b}, ?(a|b) and friends."""
    out, i = [], 0
    while i < len(pattern):
        char, nxt = pattern[i], pattern[i + 1:i + 2]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char in "?*+@!" and nxt == "(" and _closing(pattern, i + 1, "(", ")") > 0:
            end = _closing(pattern, i + 1, "(", ")")
            alternatives = "|".join(_glob_regex(a) for a in _split_top(pattern[i + 2:end], "|"))
            out.append(f"(?!(?:{alternatives}))[^/]*" if char == "!" else
                       f"(?:{alternatives}){ {'@': '', '?': '?', '*': '*', '+': '+'}[char]}")
            i = end + 1
        elif char == "{" and _closing(pattern, i, "{", "}") > 0:
            end = _closing(pattern, i, "{", "}")
            out.append("(?:" + "|".join(_glob_regex(a) for a in _split_top(pattern[i + 1:end], ",")) + ")")
            i = end + 1
        elif char == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            i += 1
    return "".join(out)


def glob_match(path: str, pattern: str) -> bool:
    pattern = pattern.removeprefix("./")
    return re.fullmatch(_glob_regex(pattern), path) is not None


def _spec_patterns(positional: list[str]) -> list[str]:
    """Globs of a script's positional paths: a directory means every script file under it."""
    patterns = []
    for arg in positional:
        arg = arg.removeprefix("./")
        if any(c in arg for c in "*?[{") or _SCRIPT_FILE.search(arg):
            patterns.append(arg)
        else:
            patterns.append(f"{arg.rstrip('/')}/**/*.{{{','.join(JS_EXTENSIONS)}}}")
    return patterns


NODE_TEST_DEFAULTS = ("**/*.test.?(c|m)js", "**/*-test.?(c|m)js", "**/*_test.?(c|m)js",
                      "**/test-*.?(c|m)js", "**/test.?(c|m)js", "**/test/**/*.?(c|m)js")
MOCHA_DEFAULTS = ("test/*.{js,cjs,mjs}",)
VITEST_DEFAULTS = ("**/*.{test,spec}.?(c|m)[jt]s?(x)",)


# ---------------------------------------------------------------- JavaScript: runners

class _JsRunner:
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
        self.options, positional = _split_options(args, self.valued, self.dropped, self.positional_options)
        self.positional = self.script_paths(positional)
        self.workspace = workspace
        self.patterns = patterns or self.script_patterns()

    def script_paths(self, positional: list[str]) -> list[str]:
        return positional

    def script_patterns(self) -> list[str]:
        """Test-file globs: the script's positional paths, else the runner's defaults."""
        return _spec_patterns(self.positional) or list(self.defaults)

    def is_test_file(self, path: str) -> bool:
        if "node_modules/" in f"/{path}":
            return False
        return any(glob_match(path, p) for p in self.patterns)

    def collect_argv(self, files: list[str], out_dir: str) -> list[str]:
        return []

    def parse_collected(self, files: list[str], exit_code: int, output: str, out_dir: Path) -> Collected:
        return Collected(tests_by_file={f: [f] if self.is_test_file(f) else [] for f in files})

    def _report(self, argv: list[str], exit_code: int, tests: list[TestCase]) -> TestReport:
        return TestReport(runner=self.name, argv=argv, exit_code=exit_code, tests=_merge(tests))

    def _relative(self, path: str, files: list[str]) -> str:
        return _relative(path, files, self.workspace)


def _js_id(*parts: str | None) -> str:
    return " > ".join(p for p in parts if p)


class NodeTestRunner(_JsRunner):
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

    def _argv(self, out_dir: str) -> list[str]:
        return ["node", *self.options, "--test", "--test-reporter=junit",
                f"--test-reporter-destination={_out(out_dir, 'junit.xml')}",
                "--test-reporter=spec", "--test-reporter-destination=stdout"]

    def run_argv(self, files: list[str], out_dir: str) -> list[str]:
        return [*self._argv(out_dir), "--", *files]

    def suite_argv(self, out_dir: str) -> list[str]:
        return [*self._argv(out_dir), *(["--", *self.positional] if self.positional else [])]

    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport:
        root = _read_xml(out_dir / "junit.xml")
        if root is None:
            return _report_missing(self.name, argv, exit_code, output)
        files = _files_after_dashes(argv)
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
        child = _failure_child(case)
        load_failure = not suites and name.startswith("/") and _SCRIPT_FILE.search(name)
        if load_failure and child is not None:  # the file itself is the failed "test"
            file = self._relative(name, files)
            return TestCase(id=file, file=file, outcome="error", phase="collection",
                            message=_short(child.get("message", "")))
        test_id = _js_id(file, *suites, name)
        if child is None:
            return TestCase(id=test_id, file=file, outcome="passed")
        if child.tag == "skipped":
            return TestCase(id=test_id, file=file, outcome="skipped", message=_short(child.get("type", "")))
        kind = child.get("type", "")
        if kind in ("hookFailure", "cancelledByParent"):
            return TestCase(id=test_id, file=file, outcome="error", phase="setup",
                            message=_short(child.get("message", "")))
        return TestCase(id=test_id, file=file, outcome="failed", message=_short(child.get("message", "")))


_MOCHA_HOOK = re.compile(r'^"(before|after) (all|each)" hook')


class MochaRunner(_JsRunner):
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
            return _spec_patterns(self.positional)
        return ["test/**/*.{js,cjs,mjs}"] if "--recursive" in self.options else list(MOCHA_DEFAULTS)

    def _argv(self, out_dir: str) -> list[str]:
        return [*self.bin, *self.options, "--reporter", "xunit",
                "--reporter-option", f"output={_out(out_dir, 'xunit.xml')}"]

    def run_argv(self, files: list[str], out_dir: str) -> list[str]:
        return [*self._argv(out_dir), "--", *files]

    def suite_argv(self, out_dir: str) -> list[str]:
        return [*self._argv(out_dir), *(["--", *self.positional] if self.positional else [])]

    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport:
        root = _read_xml(out_dir / "xunit.xml")
        if root is None:  # mocha writes nothing when a spec file fails to load
            return _report_missing(self.name, argv, exit_code, output)
        files = _files_after_dashes(argv)
        return self._report(argv, exit_code, [self._case(c, files) for c in root.iter("testcase")])

    def _case(self, case: ET.Element, files: list[str]) -> TestCase:
        file = case.get("file") or (files[0] if len(files) == 1 else None)
        file = self._relative(file, files) if file else None
        name = case.get("name", "")
        test_id = _js_id(file, case.get("classname"), name)
        child = _failure_child(case)
        if child is None:
            return TestCase(id=test_id, file=file, outcome="passed")
        if child.tag == "skipped":
            return TestCase(id=test_id, file=file, outcome="skipped")
        message = _short(child.get("message") or (child.text or "").split("\n    at ", 1)[0])
        hook = _MOCHA_HOOK.match(name)
        if hook:
            phase = "setup" if hook.group(1) == "before" else "teardown"
            return TestCase(id=test_id, file=file, outcome="error", phase=phase, message=message)
        return TestCase(id=test_id, file=file, outcome="failed", message=message)


class JestRunner(_JsRunner):
    """node_modules/.bin/jest --json with exact paths (--runTestsByPath); --listTests collects."""

    name = "jest"
    bin = ("node_modules/.bin/jest",)
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

    def collect_argv(self, files: list[str], out_dir: str) -> list[str]:
        return [*self.bin, *self.options, "--listTests", "--json", "--runTestsByPath", "--", *files]

    def parse_collected(self, files: list[str], exit_code: int, output: str, out_dir: Path) -> Collected:
        listed = _json_list_line(output)
        collected = Collected(tests_by_file={f: [] for f in files})
        if listed is None:
            reason = _tail(output) or f"jest --listTests exited {exit_code}"
            collected.errors = {f: reason for f in files}
            return collected
        for path in listed:
            file = self._relative(str(path), files)
            if file in collected.tests_by_file:
                collected.tests_by_file[file] = [file]
        return collected

    def _argv(self, out_dir: str) -> list[str]:
        return [*self.bin, *self.options, "--ci", "--json", f"--outputFile={_out(out_dir, 'jest.json')}"]

    def run_argv(self, files: list[str], out_dir: str) -> list[str]:
        return [*self._argv(out_dir), "--runTestsByPath", "--", *files]

    def suite_argv(self, out_dir: str) -> list[str]:
        return [*self._argv(out_dir), *(["--", *self.positional] if self.positional else [])]

    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport:
        data = _read_json(out_dir / "jest.json")
        if not isinstance(data, dict):
            return _report_missing(self.name, argv, exit_code, output)
        files = _files_after_dashes(argv)
        tests = [case for suite in data.get("testResults", []) for case in self._suite(suite, files)]
        return self._report(argv, exit_code, tests)

    def _suite(self, suite: dict, files: list[str]) -> list[TestCase]:
        file = self._relative(suite.get("name", ""), files)
        results = suite.get("assertionResults") or []
        if not results and (suite.get("status") == "failed" or suite.get("testExecError")):
            message = suite.get("message") or (suite.get("testExecError") or {}).get("message", "")
            return [TestCase(id=file, file=file, outcome="error", phase="collection", message=_short(message))]
        return [self._assertion(file, result) for result in results]

    @staticmethod
    def _assertion(file: str, result: dict) -> TestCase:
        test_id = _js_id(file, *result.get("ancestorTitles", []), result.get("title", ""))
        status = result.get("status")
        outcome = {"passed": "passed", "failed": "failed"}.get(status, "skipped")
        message = (result.get("failureMessages") or [""])[0].split("\n    at ", 1)[0]
        return TestCase(id=test_id, file=file, outcome=outcome, message=_short(message))


def _json_list_line(output: str) -> list | None:
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


class VitestRunner(_JsRunner):
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

    def _argv(self, out_dir: str) -> list[str]:
        return [*self.bin, *self.options, "--reporter=junit", f"--outputFile={_out(out_dir, 'junit.xml')}"]

    def run_argv(self, files: list[str], out_dir: str) -> list[str]:
        # vitest reads arguments after `--` as nothing at all: the files go in plainly
        return [*self._argv(out_dir), *files]

    def suite_argv(self, out_dir: str) -> list[str]:
        return [*self._argv(out_dir), *self.positional]

    def parse_run(self, argv: list[str], exit_code: int, output: str, out_dir: Path) -> TestReport:
        root = _read_xml(out_dir / "junit.xml")
        if root is None:
            return _report_missing(self.name, argv, exit_code, output)
        files = [a for a in argv[len(self._argv("x")):] if not a.startswith("-")]
        return self._report(argv, exit_code, [self._case(c, files) for c in root.iter("testcase")])

    def _case(self, case: ET.Element, files: list[str]) -> TestCase:
        classname, name = case.get("classname", ""), case.get("name", "")
        file = self._relative(case.get("file") or classname, files) if (case.get("file") or classname) else None
        child = _failure_child(case)
        message = _short(child.get("message", "")) if child is not None else ""
        if child is not None and child.tag != "skipped" and name == classname:  # the file failed to load
            return TestCase(id=file or name, file=file, outcome="error", phase="collection", message=message)
        test_id = _js_id(file, name)
        if child is None:
            return TestCase(id=test_id, file=file, outcome="passed")
        if child.tag == "skipped":
            return TestCase(id=test_id, file=file, outcome="skipped")
        return TestCase(id=test_id, file=file, outcome="failed", message=message)


# ---------------------------------------------------------------- factory and verdicts

_JS_RUNNERS = {"node": NodeTestRunner, "mocha": MochaRunner, "jest": JestRunner, "vitest": VitestRunner}


def make_runner(name: str, *, test_script: str | None = None, python: str = "python",
                scripts: dict[str, str] | None = None, helpers_mount: str = HELPERS_MOUNT,
                workspace: str = WORKSPACE_MOUNT, patterns: list[str] | None = None) -> TestRunner:
    """A runner by name. JS runners reuse the options of `test_script` (package.json scripts.test,
    `npm run x` resolved through `scripts`); `patterns` overrides their test-file globs."""
    if name == "pytest":
        return PytestRunner(python)
    if name == "unittest":
        return UnittestRunner(python, helpers_mount)
    if name in _JS_RUNNERS:
        return _JS_RUNNERS[name](test_script, scripts, workspace, patterns)
    raise ValueError(f"unknown test runner {name!r}")


def _in_files(test: TestCase, files: list[str]) -> bool:
    # a runner that cannot say which file a test came from ran only `files` anyway
    return test.file is None or test.file in files


def red_verdict(report: TestReport, files: list[str]) -> Verdict:
    """RED: at least one test of `files` failed in its body, and every file loaded."""
    broken = report.collection_errors()
    if broken:
        where = ", ".join(sorted({t.file or t.id for t in broken}))
        return Verdict(ok=False, reason=f"collection error in {where}: {broken[0].message}")
    ours = [t for t in report.tests if _in_files(t, files)]
    red = [t.id for t in ours if t.phase == "call" and t.outcome in ("failed", "error")]
    if red:
        return Verdict(ok=True, reason=f"{len(red)} test(s) fail on the base code", test_ids=red)
    if not ours:
        return Verdict(ok=False, reason=f"no test from {', '.join(files)} ran (exit {report.exit_code})")
    counts = {o: sum(t.outcome == o for t in ours) for o in ("passed", "skipped", "error")}
    setup = [t for t in ours if t.outcome == "error"]
    detail = f"; setup/teardown errors do not count: {setup[0].id}: {setup[0].message}" if setup else ""
    return Verdict(ok=False, reason=f"no test failed on the base code ({counts['passed']} passed, "
                                    f"{counts['skipped']} skipped, {counts['error']} errors){detail}")


def green_verdict(report: TestReport, red_ids: list[str]) -> Verdict:
    """GREEN: every RED test is present and passed, and no test of the run failed. Read from the
    report, not the exit code alone: a coverage minimum in the repository's addopts fails any
    run of a few files even when all of them pass (the whole suite still answers by exit code)."""
    by_id = {t.id: t for t in report.tests}
    missing = [i for i in red_ids if i not in by_id]
    not_passed = [i for i in red_ids if i in by_id and by_id[i].outcome != "passed"]
    passed = [i for i in red_ids if i in by_id and by_id[i].outcome == "passed"]
    problems = []
    if missing:
        problems.append(f"red tests missing from the run: {', '.join(missing)}")
    if not_passed:
        problems.append("red tests not passing: " + ", ".join(f"{i} ({by_id[i].outcome})" for i in not_passed))
    failing = report.failed() + report.collection_errors()
    if failing:
        problems.append(f"runner exited {report.exit_code}; {failing[0].id}: {failing[0].message}")
    if problems:
        return Verdict(ok=False, reason="; ".join(problems), test_ids=passed)
    note = f" (the runner exited {report.exit_code} with every test passing)" if report.exit_code else ""
    return Verdict(ok=True, reason=f"{len(passed)} red test(s) pass with the fix{note}", test_ids=passed)
