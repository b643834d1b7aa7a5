"""fixfleet's pytest reporter: the platform's own record of a run, sent on the report channel.

Loaded by the platform with `-p fixfleet_pytest` (its directory on PYTHONPATH), so it is
registered before the repository's conftest files and plugins. It runs INSIDE the sandbox with
the repository's interpreter: standard library only, Python 3.8 compatible. Each record is one
JSON line written to the report channel FIXFLEET_REPORT names, a FIFO whose other end the
platform reads as the run goes; nothing is written to a file the tests could rewrite.

    {"event": "start", ...}                 when pytest is configured, before any collection
    {"event": "collected", "id", "file"}    each item (collect-only runs)
    {"event": "collect_error", "file", "message"}
    {"event": "test", "id", "file", "when", "outcome", "message"}   each phase of each test
    {"event": "end", "exitstatus"}          when the session finishes

The platform refuses a stream that is not exactly that: a second record for the same test and
phase, anything after "end", or no "start"/"end" (something else wrote to the channel, or stopped
this reporter).

Outcomes are read from the report the test's own phase produced, as close to pytest's runner as a
plugin can sit (an innermost hook wrapper), before wrappers of conftest files see it; xfail marks are
applied from pytest's own evaluation.
"""

from __future__ import annotations

import json
import os

import pytest

MESSAGE_LIMIT = 2000
_channel = os.environ.get("FIXFLEET_REPORT")
_fd = os.open(_channel, os.O_WRONLY) if _channel else -1
_root = os.getcwd()  # the repository: the platform starts every run there
_rootdir = _root  # pytest's rootdir, which node ids are relative to


def _emit(record: dict) -> None:
    if _fd < 0:
        return
    data = (json.dumps(record) + "\n").encode("utf-8", "replace")
    while data:
        written = os.write(_fd, data)
        data = data[written:]


def _short(text: str) -> str:
    text = (text or "").strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _relative(path) -> str:
    return os.path.relpath(str(path), _root).replace(os.sep, "/")


def _test_id(item) -> tuple:
    """(repository-relative file, id): the file as the repository names it, then the node id's
    names after the path (classes, function, parameters)."""
    file = _relative(item.path if hasattr(item, "path") else item.fspath)
    names = item.nodeid.split("::")[1:]
    return file, "::".join([file, *names])


def _message(report) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        return _short(str(longrepr[2]))
    crash = getattr(getattr(longrepr, "reprcrash", None), "message", None)
    if crash:
        return _short(crash)
    text = str(longrepr)  # a collection error: pytest's own text, whose `E   ` lines say what broke
    raised = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return _short("\n".join(raised) if raised else text)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config) -> None:
    global _rootdir
    _rootdir = str(getattr(config, "rootpath", None) or config.rootdir)
    _emit({"event": "start", "pytest": pytest.__version__, "rootdir": _relative(_rootdir)})


def pytest_collectreport(report) -> None:
    if report.failed:
        path = report.nodeid.split("::")[0]
        _emit({"event": "collect_error", "file": _relative(os.path.join(_rootdir, path)) if path else ".",
               "message": _message(report)})


def pytest_collection_finish(session) -> None:
    if session.config.option.collectonly:
        for item in session.items:
            file, test_id = _test_id(item)
            _emit({"event": "collected", "id": test_id, "file": file})


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    file, test_id = _test_id(item)
    result = report.outcome
    xfailed = _xfailed(item)
    if xfailed is not None and call.when == "call" and not getattr(report, "wasxfail", None):
        if result == "failed" and call.excinfo is not None and _raises_expected(xfailed, call.excinfo):
            result = "skipped"  # xfail: an expected failure is no failure
        elif result == "passed" and getattr(xfailed, "strict", False):
            result = "failed"  # an unexpected pass of a strict xfail fails the run
    _emit({"event": "test", "id": test_id, "file": file, "when": call.when, "outcome": result,
           "message": _message(report)})


def _xfailed(item):
    try:
        from _pytest.skipping import xfailed_key
    except ImportError:  # older pytest: the report's wasxfail decides
        return None
    store = getattr(item, "stash", None) or getattr(item, "_store", None)
    return store.get(xfailed_key, None) if store is not None else None


def _raises_expected(xfailed, excinfo) -> bool:
    raises = getattr(xfailed, "raises", None)
    return raises is None or isinstance(excinfo.value, raises)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    _emit({"event": "end", "exitstatus": int(exitstatus)})
