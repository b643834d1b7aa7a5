"""Webhook signature checks: the published GitHub vector, refusals with reasons, rotation, and
Slack's replay window."""

from __future__ import annotations

import pytest

from fixfleet.intake.signatures import (
    SignatureError,
    sign_github,
    sign_jira,
    sign_sentry,
    sign_slack,
    verify_github,
    verify_jira,
    verify_sentry,
    verify_slack,
)

# From GitHub's "Validating webhook deliveries" documentation.
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

BODY = b'{"action":"created","data":{"issue":{"id":"1"}}}'
NOW = 1_700_000_000


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(SignatureError) as caught:
        call(*args, **kwargs)
    return caught.value.reason


# --- GitHub --------------------------------------------------------------------------------


def test_github_vector_from_the_docs():
    assert sign_github(GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIGNATURE
    verify_github([GITHUB_SECRET], GITHUB_BODY, GITHUB_SIGNATURE)


def test_github_wrong_signature_is_refused():
    wrong = GITHUB_SIGNATURE[:-1] + ("0" if GITHUB_SIGNATURE[-1] != "0" else "1")
    assert refusal(verify_github, [GITHUB_SECRET], GITHUB_BODY, wrong) == "signature does not match"


def test_github_tampered_body_is_refused():
    assert refusal(verify_github, [GITHUB_SECRET], b"Hello, World?", GITHUB_SIGNATURE) == "signature does not match"


def test_github_wrong_secret_is_refused():
    assert refusal(verify_github, ["another secret"], GITHUB_BODY, GITHUB_SIGNATURE) == "signature does not match"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_github_missing_signature_is_refused(header):
    assert refusal(verify_github, [GITHUB_SECRET], GITHUB_BODY, header) == "missing X-Hub-Signature-256 header"


@pytest.mark.parametrize("header", [GITHUB_SIGNATURE.removeprefix("sha256="), "sha1=" + "0" * 40])
def test_github_other_schemes_are_refused_with_a_reason(header):
    assert "sha256=<hex>" in refusal(verify_github, [GITHUB_SECRET], GITHUB_BODY, header)


def test_github_rotation_accepts_the_second_secret():
    verify_github(["the new secret", GITHUB_SECRET], GITHUB_BODY, GITHUB_SIGNATURE)
    verify_github([GITHUB_SECRET, "the new secret"], GITHUB_BODY, GITHUB_SIGNATURE)


def test_github_uppercase_hex_is_accepted():
    verify_github([GITHUB_SECRET], GITHUB_BODY, "sha256=" + GITHUB_SIGNATURE.removeprefix("sha256=").upper())


def test_non_ascii_signature_is_a_refusal_not_a_crash():
    # hmac.compare_digest raises TypeError on non-ASCII str: the check must not reach it so.
    assert refusal(verify_github, [GITHUB_SECRET], GITHUB_BODY, "sha256=é" * 8) == "signature does not match"


# --- every source --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verify", "setting"),
    [
        (lambda s: verify_github(s, BODY, sign_github("x", BODY)), "FIXFLEET_GITHUB_WEBHOOK_SECRET"),
        (lambda s: verify_sentry(s, BODY, sign_sentry("x", BODY)), "FIXFLEET_SENTRY_CLIENT_SECRET"),
        (lambda s: verify_jira(s, BODY, sign_jira("x", BODY)), "FIXFLEET_JIRA_WEBHOOK_SECRET"),
        (lambda s: verify_slack(s, BODY, str(NOW), sign_slack("x", BODY, NOW), now=NOW), "FIXFLEET_SLACK_SIGNING_SECRET"),
    ],
)
@pytest.mark.parametrize("secrets", [[], [""]])
def test_no_secret_means_no_webhook(verify, setting, secrets):
    reason = refusal(verify, secrets)
    assert reason.startswith("no secret configured for ") and setting in reason


# --- Sentry --------------------------------------------------------------------------------


def test_sentry_good_signature():
    signature = sign_sentry("client-secret", BODY)
    assert len(signature) == 64 and int(signature, 16) >= 0  # bare hex, no prefix
    verify_sentry(["client-secret"], BODY, signature)
    verify_sentry(["old", "client-secret"], BODY, signature)


def test_sentry_bad_or_missing_signature():
    assert refusal(verify_sentry, ["client-secret"], BODY, sign_sentry("other", BODY)) == "signature does not match"
    assert refusal(verify_sentry, ["client-secret"], BODY + b" ", sign_sentry("client-secret", BODY)) == (
        "signature does not match"
    )
    assert refusal(verify_sentry, ["client-secret"], BODY, None) == "missing Sentry-Hook-Signature header"


# --- Jira ----------------------------------------------------------------------------------


def test_jira_good_signature():
    signature = sign_jira("jira-secret", BODY)
    assert signature.startswith("sha256=")
    verify_jira(["jira-secret"], BODY, signature)


def test_jira_bad_or_missing_signature():
    assert refusal(verify_jira, ["jira-secret"], BODY, sign_jira("other", BODY)) == "signature does not match"
    assert refusal(verify_jira, ["jira-secret"], BODY, None) == "missing X-Hub-Signature header"
    bare = sign_jira("jira-secret", BODY).removeprefix("sha256=")
    assert "sha256=<hex>" in refusal(verify_jira, ["jira-secret"], BODY, bare)


# --- Slack ---------------------------------------------------------------------------------


def slack_check(timestamp: int | str, *, now: float = NOW, secret: str = "signing", signed_ts: int | str | None = None):
    signature = sign_slack("signing", BODY, timestamp if signed_ts is None else signed_ts)
    verify_slack([secret], BODY, str(timestamp), signature, now=now)


def test_slack_good_signature():
    slack_check(NOW)
    assert sign_slack("signing", BODY, NOW).startswith("v0=")


@pytest.mark.parametrize("offset", [-300, 300, -299, 299])
def test_slack_window_edges_are_accepted(offset):
    slack_check(NOW + offset)  # exactly 300 s either way is still inside


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_slack_outside_the_window_is_refused_both_ways(offset):
    with pytest.raises(SignatureError) as caught:
        slack_check(NOW + offset)
    assert caught.value.reason == f"timestamp is {abs(offset)} s from now; the limit is 300 s"


@pytest.mark.parametrize("timestamp", ["abc", "1e9", "nan", "-1700000000", "1700000000.5", "0x10"])
def test_slack_non_numeric_timestamp_is_refused(timestamp):
    with pytest.raises(SignatureError) as caught:
        slack_check(timestamp)
    assert "not a number" in caught.value.reason


def test_slack_missing_headers_are_refused():
    signature = sign_slack("signing", BODY, NOW)
    assert refusal(verify_slack, ["signing"], BODY, None, signature, now=NOW) == "missing X-Slack-Request-Timestamp header"
    assert refusal(verify_slack, ["signing"], BODY, str(NOW), None, now=NOW) == "missing X-Slack-Signature header"


def test_slack_signature_binds_the_timestamp():
    # A valid signature replayed with a fresh timestamp header must fail.
    with pytest.raises(SignatureError, match="does not match"):
        slack_check(NOW, signed_ts=NOW - 3600)


def test_slack_wrong_secret_and_rotation():
    with pytest.raises(SignatureError, match="does not match"):
        slack_check(NOW, secret="another")
    verify_slack(["new", "signing"], BODY, str(NOW), sign_slack("signing", BODY, NOW), now=NOW)


def test_slack_window_uses_the_clock_by_default():
    import time

    now = int(time.time())
    verify_slack(["signing"], BODY, str(now), sign_slack("signing", BODY, now))
    with pytest.raises(SignatureError, match="from now"):
        verify_slack(["signing"], BODY, str(now - 3600), sign_slack("signing", BODY, now - 3600))
