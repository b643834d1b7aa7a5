"""Run or collect unittest tests and write a JSON report: fixfleet's unittest bridge.

Runs INSIDE the sandbox with the repository's own interpreter, so it uses the standard
library only and stays Python 3.8 compatible. The current directory is the repository.

    python unittest_report.py --collect|--run -- FILE...
    python unittest_report.py --discover [--start .] [--pattern test*.py] [--top .]

The report goes to the report channel FIXFLEET_REPORT names (a FIFO the platform reads: nothing
the tests do can rewrite it), or to `--out FILE` when given.

Each FILE becomes the module `python -m unittest FILE` would import (tests/test_x.py ->
tests.test_x). The JSON holds {"mode", "tests": [{id, file, outcome, phase, message}],
"collected": {file: [ids]}, "errors": {file: reason}}. Exit 0 iff nothing failed or errored.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
import unittest

MESSAGE_LIMIT = 500
# unittest's own frames tell which phase raised: the first one found from the outside wins.
PHASE_FRAMES = {
    "_callSetUp": "setup", "setUp": "setup", "asyncSetUp": "setup",
    "_callTestMethod": "call",
    "_callTearDown": "teardown", "tearDown": "teardown", "asyncTearDown": "teardown",
    "doCleanups": "teardown", "_callCleanup": "teardown",
}
FAILED_IMPORT_CLASSES = ("_FailedTest", "ModuleImportFailure")
SEVERITY = {"passed": 0, "skipped": 1, "failed": 3, "error": 3}


def module_name(path: str) -> str:
    """The module `python -m unittest PATH` imports, or ValueError."""
    rel = os.path.relpath(os.path.abspath(path))
    if not rel.endswith(".py") or rel.startswith(os.pardir):
        raise ValueError(f"not a Python module inside the repository: {path}")
    return rel[:-3].replace(os.sep, ".").replace("/", ".")


def module_file(name: str) -> str:
    """Repository-relative path of a module name, for tests found by discovery."""
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path:
        return os.path.relpath(path).replace(os.sep, "/")
    base = name.replace(".", "/")
    return base + "/__init__.py" if os.path.isdir(base) else base + ".py"


def short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def exception_message(err) -> str:
    return short("".join(traceback.format_exception_only(err[0], err[1])))


def import_failure(exc) -> str:
    """The exception and the innermost repository frame that raised it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and os.path.abspath(f.filename) != os.path.abspath(__file__)]
    where = ""
    if frames:
        where = f" (at {os.path.relpath(frames[-1].filename).replace(os.sep, '/')}:{frames[-1].lineno})"
    return short(exception_message((type(exc), exc, None)) + where)


def phase_of(err) -> str:
    tb = err[2]
    while tb is not None:
        phase = PHASE_FRAMES.get(tb.tb_frame.f_code.co_name)
        if phase:
            return phase
        tb = tb.tb_next
    return "call"


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def is_failed_import(test) -> bool:
    return type(test).__name__ in FAILED_IMPORT_CLASSES


class Recorder:
    """Test outcomes keyed by id; the worst outcome of a test wins (subtests, teardown)."""

    def __init__(self, files_by_id):
        self.files_by_id = files_by_id
        self.records = {}

    def file_of(self, test) -> str:
        if test.id() in self.files_by_id:
            return self.files_by_id[test.id()]
        if is_failed_import(test):
            return module_file(test._testMethodName)
        return module_file(type(test).__module__)

    def record(self, test, outcome, phase="call", message=""):
        test_id, file = self.identify(test)
        entry = {"id": test_id, "file": file, "outcome": outcome, "phase": phase, "message": message}
        old = self.records.get(test_id)
        if old is None or SEVERITY[outcome] > SEVERITY[old["outcome"]]:
            self.records[test_id] = entry

    def identify(self, test):
        if is_failed_import(test):
            name = test._testMethodName
            return name, self.files_by_id.get(name) or module_file(name)
        if type(test).__name__ == "_ErrorHolder":
            # setUpClass/setUpModule failures: the description names the class or module
            description = test.description
            target = description.split("(", 1)[-1].rstrip(")")
            module = target if target in sys.modules else target.rsplit(".", 1)[0]
            return description, module_file(module)
        return test.id(), self.file_of(test)


def make_result_class(recorder):
    class RecordingResult(unittest.TextTestResult):
        def addSuccess(self, test):
            super().addSuccess(test)
            recorder.record(test, "passed")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            recorder.record(test, "failed", phase_of(err), exception_message(err))

        def addError(self, test, err):
            super().addError(test, err)
            if is_failed_import(test):
                recorder.record(test, "error", "collection", exception_message(err))
            elif type(test).__name__ == "_ErrorHolder":
                phase = "teardown" if "tearDown" in test.description else "setup"
                recorder.record(test, "error", phase, exception_message(err))
            else:
                recorder.record(test, "error", phase_of(err), exception_message(err))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            recorder.record(test, "skipped", "call", short(str(reason)))

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            recorder.record(test, "skipped", "call", "expected failure: " + exception_message(err))

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            recorder.record(test, "failed", "call", "unexpected success")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                outcome = "failed" if issubclass(err[0], test.failureException) else "error"
                recorder.record(test, outcome, "call", short(subtest.id() + ": " + exception_message(err)))

    return RecordingResult


def load_file(loader, path):
    """(tests, error) for one file; importing it ourselves catches every import-time exception."""
    try:
        name = module_name(path)
    except ValueError as exc:
        return [], str(exc)
    try:
        module = importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken test module must not stop the others
        return [], import_failure(exc)
    tests = list(flatten(loader.loadTestsFromModule(module)))
    broken = [t for t in tests if is_failed_import(t)]
    if broken:
        return [], short(loader.errors[-1] if loader.errors else "failed to load tests")
    return tests, None


def collect(files):
    loader = unittest.TestLoader()
    collected, errors, tests, files_by_id = {}, {}, [], {}
    for path in files:
        found, error = load_file(loader, path)
        if error is not None:
            errors[path] = error
            continue
        collected[path] = [t.id() for t in found]
        tests.extend(found)
        files_by_id.update((t.id(), path) for t in found)
    return collected, errors, tests, files_by_id


def run_tests(tests, recorder):
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=make_result_class(recorder))
    runner.run(unittest.TestSuite(tests))


def collection_entries(errors):
    entries = []
    for path, reason in errors.items():
        name = path[:-3].replace("/", ".") if path.endswith(".py") else path
        entries.append({"id": name, "file": path, "outcome": "error", "phase": "collection", "message": reason})
    return entries


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    for flag in ("--collect", "--run", "--discover"):
        mode.add_argument(flag, dest="mode", action="store_const", const=flag[2:])
    parser.add_argument("--out")
    parser.add_argument("--start", default=".")
    parser.add_argument("--pattern", default="test*.py")
    parser.add_argument("--top", default=".")
    parser.add_argument("files", nargs="*")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.dont_write_bytecode = True  # RED and GREEN must never share stale bytecode
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.getcwd())  # what `python -m unittest` does
    report = {"mode": args.mode, "tests": [], "collected": {}, "errors": {}}
    if args.mode == "discover":
        tests = list(flatten(unittest.TestLoader().discover(args.start, args.pattern, args.top)))
        errors, files_by_id = {}, {}
    else:
        report["collected"], errors, tests, files_by_id = collect(args.files)
        report["errors"] = errors
    if args.mode != "collect":
        recorder = Recorder(files_by_id)
        run_tests(tests, recorder)
        report["tests"] = collection_entries(errors) + list(recorder.records.values())
    write_report(args.out, report)
    bad = errors or [t for t in report["tests"] if t["outcome"] in ("failed", "error")]
    return 1 if bad else 0


def write_report(path, report):
    data = (json.dumps(report) + "\n").encode("utf-8", "replace")
    if path is None:
        descriptor = os.open(os.environ["FIXFLEET_REPORT"], os.O_WRONLY)
        while data:
            data = data[os.write(descriptor, data):]
        os.close(descriptor)
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent)
    with open(path, "wb") as handle:
        handle.write(data)


if __name__ == "__main__":
    sys.exit(main())
