"""Call test functions directly, without a test runner: fixfleet's cross-check of a runner's report.

A runner's report is written by the process the repository's code controls: a conftest hook, a
plugin or an exit handler can make a failing test look passed. This helper takes no part of the
runner's machinery: no conftest, no plugins, no configuration. It imports each test's module as
pytest's default import mode would (its first directory without `__init__.py` on sys.path, the
repository's root too, as `python -m pytest` has it) and
calls the test itself: a plain function or method with no arguments (setup_method/teardown_method
and setup_module/teardown_module around it), or a unittest.TestCase method through `debug()`
(setUp and tearDown included). A test that needs fixtures or parameters cannot be called this way
and is reported "unchecked", with why; so is one whose module cannot be imported without the
runner's set-up (a conftest that extends sys.path).

Runs INSIDE the sandbox with the repository's interpreter: standard library only, Python 3.8
compatible. The report (one JSON document {"tests": [{id, outcome, message}]}) goes to the
report channel FIXFLEET_REPORT names, after every test has been called.

    python direct_call.py -- tests/test_x.py::test_a tests/test_x.py::TestY::test_b
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
import traceback
import unittest

MESSAGE_LIMIT = 1000
SKIP_NAMES = ("Skipped", "SkipTest")  # pytest.skip's exception and unittest's


def module_name(path: str) -> tuple:
    """(directory to put on sys.path, dotted module name) for a test file, as pytest's
    `prepend` import mode finds them: up through the directories that are packages."""
    directory, filename = os.path.split(os.path.abspath(path))
    parts = [filename[:-3]]
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        parts.insert(0, package)
    return directory, ".".join(parts)


def load(path: str):
    directory, name = module_name(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module(name)


def short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def call(function) -> None:
    result = function()
    if inspect.iscoroutine(result):
        asyncio.run(result)


def needs_arguments(function) -> list:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return []
    return [name for name, p in parameters.items()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def run_one(test_id: str) -> dict:
    path, *names = test_id.split("::")
    if not names or "[" in names[-1]:
        return unchecked(test_id, "a parametrised test needs the runner")
    try:
        module = load(path)
    except Exception as exc:  # noqa: BLE001 - it may need what the runner's configuration sets up
        return unchecked(test_id, "cannot be imported without the runner: " + short(repr(exc)))
    owner, target = module, None
    for name in names:
        owner, target = target or owner, getattr(target or owner, name)
    if inspect.isclass(owner) and issubclass(owner, unittest.TestCase):
        return outcome(test_id, lambda: owner(names[-1]).debug())
    instance = owner() if inspect.isclass(owner) else None
    function = getattr(instance, names[-1]) if instance is not None else target
    missing = needs_arguments(function)
    if missing:
        return unchecked(test_id, "uses fixtures or arguments: " + ", ".join(missing))

    def body():
        around(module, "setup_module", (module,))
        around(instance, "setup_method", (function,))
        try:
            call(function)
        finally:
            around(instance, "teardown_method", (function,))
            around(module, "teardown_module", (module,))

    return outcome(test_id, body)


def around(owner, name: str, arguments: tuple) -> None:
    hook = getattr(owner, name, None) if owner is not None else None
    if callable(hook):
        hook(*arguments[: len(needs_arguments(hook))])


def outcome(test_id: str, body) -> dict:
    try:
        body()
    except BaseException as exc:  # noqa: BLE001 - whatever the test raises is its outcome
        if type(exc).__name__ in SKIP_NAMES:
            return unchecked(test_id, "skipped: " + short(str(exc)))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return {"id": test_id, "outcome": "error", "message": "the test exited: " + short(repr(exc))}
        lines = traceback.format_exception_only(type(exc), exc)
        return {"id": test_id, "outcome": "failed", "message": short("".join(lines))}
    return {"id": test_id, "outcome": "passed", "message": ""}


def unchecked(test_id: str, why: str) -> dict:
    return {"id": test_id, "outcome": "unchecked", "message": why}


def main(argv: list) -> int:
    sys.dont_write_bytecode = True
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.getcwd())  # what `python -m pytest` and `python -m unittest` do
    ids = argv[argv.index("--") + 1:] if "--" in argv else argv
    results = []
    for test_id in ids:
        try:
            results.append(run_one(test_id))
        except BaseException as exc:  # noqa: BLE001 - an import that fails: the test cannot run
            results.append({"id": test_id, "outcome": "error", "message": short(repr(exc))})
    data = (json.dumps({"tests": results}) + "\n").encode("utf-8", "replace")
    descriptor = os.open(os.environ["FIXFLEET_REPORT"], os.O_WRONLY)
    while data:
        data = data[os.write(descriptor, data):]
    os.close(descriptor)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
