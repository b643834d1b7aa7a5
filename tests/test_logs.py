"""The JSON log lines of the platform's Ray processes: fields, task context, no secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from fixfleet import logs
from fixfleet.redact import Redactor, redact_logs

SECRET = "ghp_logline_secret_0123456789"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    before_handlers, before_level, before_factory = list(root.handlers), root.level, logging.getLogRecordFactory()
    logs.configure("executor", agent="executor-abc123", stream=stream)
    redact_logs(Redactor([SECRET]))
    yield stream
    root.handlers[:] = before_handlers
    root.setLevel(before_level)
    logging.setLogRecordFactory(before_factory)


def read(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_names_the_component_agent_task_and_repository(lines: io.StringIO) -> None:
    log = logging.getLogger("actors.executor")

    async def one_task() -> None:
        with logs.task_context("#7"):
            log.info("claimed")
            logs.bind_task("FF-7", "https://github.com/acme/api")
            await asyncio.sleep(0)
            log.warning("RED check: %d test(s) fail", 1)
        log.info("idle again")

    asyncio.run(one_task())
    first, second, third = read(lines)
    assert {k: first[k] for k in ("level", "component", "agent", "task", "repo", "logger", "message")} == {
        "level": "INFO", "component": "executor", "agent": "executor-abc123", "task": "#7", "repo": None,
        "logger": "actors.executor", "message": "claimed"}
    assert (second["task"], second["repo"], second["message"]) == ("FF-7", "https://github.com/acme/api",
                                                                   "RED check: 1 test(s) fail")
    assert (third["task"], third["repo"]) == (None, None)
    assert first["time"].endswith("+00:00")


def test_a_secret_in_a_message_or_traceback_never_reaches_the_line(lines: io.StringIO) -> None:
    log = logging.getLogger("fixfleet.integrations")
    log.error("push failed for https://x-access-token:%s@github.com/acme/api", SECRET)
    try:
        raise RuntimeError(f"token {SECRET} refused")
    except RuntimeError:
        log.exception("GitHub said no")
    text = lines.getvalue()
    assert SECRET not in text
    assert [line["level"] for line in read(lines)] == ["ERROR", "ERROR"]
    assert "RuntimeError" in read(lines)[1]["error"]


def test_a_failure_of_one_kind_is_warned_once_an_hour_and_counted_meanwhile(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    monkeypatch.setattr(logs, "_clock", lambda: now[0])
    logs.reset_log_once()
    log = logging.getLogger("fixfleet.test_once")
    caplog.set_level(logging.DEBUG, logger="fixfleet.test_once")

    def say(step: str) -> None:
        logs.log_once(log, ("jira", step, "UnavailableError"), "jira %s failed: 503", step)

    for _ in range(3):  # an outage: every call fails alike
        say("comment")
    say("move")  # another step: its own warning
    now[0] += logs.LOUD_EVERY_S  # the next outage, an hour later, is told again
    say("comment")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "jira comment failed: 503"), ("DEBUG", "jira comment failed: 503"),
        ("DEBUG", "jira comment failed: 503"), ("WARNING", "jira move failed: 503"),
        ("WARNING", "jira comment failed: 503 (2 more like it since the last warning)")]
    logs.reset_log_once()
