"""The one redactor: every configured secret in every form, common token shapes, and the places
it guards (log records, the store, what integration clients send)."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote

import pytest

from fixfleet.config import Settings
from fixfleet.models import NewTask, Source, TaskStatus
from fixfleet.redact import REDACTED, Redactor, redact_logs
from fixfleet.store import Store

API_TOKEN = "tok-ops-5f3b2a9c81"
SETTINGS = dict(
    github_token="ghp_" + "A" * 36,
    slack_bot_token="xoxb-1111-2222-canaryslack",
    anthropic_api_key="sk-ant-api03-canary-model-key",
    api_tokens=json.dumps([{"name": "ops", "token": API_TOKEN, "scopes": ["read", "approve"]}]),
    database_url="postgresql://fixfleet:pg-canary-pw@db:5432/fixfleet",
    redis_url="redis://:redis-canary-pw@cache:6379/0",
    github_webhook_secret="new-hook-secret,old-hook-secret",
    jira_email="bot@acme.test",
    jira_api_token="jira-canary-token",
)


@pytest.fixture
def redactor() -> Redactor:
    return Redactor.from_settings(Settings(_env_file=None, **SETTINGS))


def test_every_configured_secret_in_every_form_is_replaced(redactor: Redactor) -> None:
    github = SETTINGS["github_token"]
    leaks = [
        API_TOKEN,  # inside FIXFLEET_API_TOKENS' JSON
        "pg-canary-pw", "redis-canary-pw",  # a URL's password on its own
        "old-hook-secret",  # one part of a rotating secret
        base64.b64encode(github.encode()).decode(),
        base64.b64encode(f"x-access-token:{github}".encode()).decode(),  # git's Basic header
        base64.b64encode(b"bot@acme.test:jira-canary-token").decode(),  # Jira's Basic auth
        quote("xoxb-1111-2222-canaryslack", safe=""),
        json.dumps("sk-ant-api03-canary-model-key")[1:-1],
    ]
    for leak in leaks:
        text = redactor.text(f"before {leak} after")
        assert leak not in text and REDACTED in text, leak
    assert redactor.value({"a": [f"x {API_TOKEN}"], "b": 3}) == {"a": [f"x {REDACTED}"], "b": 3}


def test_token_shapes_nobody_configured_are_replaced_too() -> None:
    text = Redactor().text("ghp_" + "b" * 36 + " xoxb-9-9-abcdef sk-ant-oat01-zzzzzzzzzz AKIAABCDEFGHIJKLMNOP "
                           "Authorization: Bearer abc.def.ghi123 https://user:hunter2@example.com/x "
                           "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----")
    for leak in ("bbbbbbbb", "abcdef", "zzzzzzzz", "AKIAABCD", "abc.def.ghi123", "hunter2", "MIIE"):
        assert leak not in text, leak


def test_token_names_and_scopes_are_not_secrets(redactor: Redactor) -> None:
    assert redactor.text("the ops token may read") == "the ops token may read"


def test_log_records_are_redacted_where_they_are_made(redactor: Redactor, caplog: pytest.LogCaptureFixture) -> None:
    factory = logging.getLogRecordFactory()
    try:
        redact_logs(redactor)
        log = logging.getLogger("fixfleet.test")
        with caplog.at_level(logging.INFO):
            log.info("pushing with %s", SETTINGS["github_token"])
            try:
                raise RuntimeError(f"connect failed: {SETTINGS['database_url']}")
            except RuntimeError:
                log.exception("store down")
        text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
        assert SETTINGS["github_token"] not in text and "pg-canary-pw" not in text
        assert "pushing with [REDACTED]" in caplog.text
    finally:
        logging.setLogRecordFactory(factory)


async def test_the_store_keeps_no_secret_an_alert_or_an_agent_quoted(store: Store, redactor: Redactor) -> None:
    store.redactor = redactor
    task, _ = await store.create_task(NewTask(
        source=Source.SENTRY, repo="https://github.com/acme/api.git", title=f"KeyError {API_TOKEN}",
        body=f"config dump: GITHUB_TOKEN={SETTINGS['github_token']}", context={"env": {"SLACK": "xoxb-1111-2222-canaryslack"}}))
    await store.transition(task.id, TaskStatus.PLANNING, actor="planner", reason=f"uses {API_TOKEN}")
    await store.transition(task.id, TaskStatus.AWAITING_APPROVAL, actor="planner", data={"quoted": "pg-canary-pw"},
                           changes={"plan": {"root_cause": f"token {SETTINGS['github_token']} expired"}})
    await store.record_event(task.id, actor="executor", reason="note", data={"tail": "old-hook-secret"})
    stored = await store.get_task(task.id)
    everything = stored.model_dump_json() + json.dumps([e.model_dump(mode="json") for e in await store.events(task.id)])
    for leak in (API_TOKEN, SETTINGS["github_token"], "xoxb-1111-2222-canaryslack", "pg-canary-pw", "old-hook-secret"):
        assert leak not in everything, leak
    assert stored.title == f"KeyError {REDACTED}"
