"""Issue #22 end to end on the whole platform (real Ray, Postgres, Redis, git, the claude CLI,
bubblewrap; GitHub, Jira, Slack, Sentry's REST API and the model are stand-ins): a Sentry issue
webhook without a trace is planned from the event the platform fetched, and resolved in the next
release when its pull request is merged; each integration down in turn leaves the task to
complete, its failure logged once with its cause.

One platform serves the module. Each outage is of its own service: a failure of one kind is
warned about once an hour per process (fixfleet/logs.py's log_once), so a second outage of the
same service would be told at debug level only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixfleet.demo import sentry_alert
from tests.fakes.faults import FakeAPI
from tests.fakes.sentry import FakeSentry
from tests.world import Credentials, World, eventually, platform_world, pr_number

pytestmark = pytest.mark.e2e
CREDENTIALS = Credentials(github_token="ghp_loops_token", slack_token="xoxb-loops-token", jira_token="jira-loops-token",
                          model_key="loops-model-key", api_token="loops-approver-token",
                          secrets={"github": "gh-loops", "sentry": "sentry-loops", "jira": "jira-loops"})
JIRA_TRANSITIONS = {"PLANNING": "Start Progress", "COMPLETED": "Ready for Review", "MERGED": "Done"}
ISSUE_WEBHOOK = Path(__file__).parent / "data" / "corpus" / "sentry-webhooks" / "issue.created.json"
# The latest event as only Sentry's API has it: the issue webhook carries no frame.
CALLER = {"filename": "app/billing/totals.py", "abs_path": "/srv/app/billing/totals.py", "function": "nightly_totals_rollup",
          "lineno": 88, "in_app": True, "context_line": "    average_invoice = mean(invoice_amounts)",
          "pre_context": ["    invoice_amounts = [i.amount for i in unpaid]"], "post_context": ["    return average_invoice"]}
BUG = {"filename": "statskit/mean.py", "abs_path": "/srv/venv/statskit/mean.py", "function": "mean", "lineno": 6,
       "in_app": True, "context_line": "    return sum(values) / len(values)"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[World]:
    with platform_world(tmp_path_factory.mktemp("loops"), database_url, redis_url, CREDENTIALS,
                        {"FIXFLEET_SUITE_COMMAND": "python -m pytest -q",
                         "FIXFLEET_JIRA_TRANSITIONS": json.dumps(JIRA_TRANSITIONS)}, sentry=True) as world:
        yield world


def sentry(world: World) -> FakeSentry:
    assert world.sentry is not None
    return world.sentry


def post_sentry_issue(world: World, issue_id: str) -> str:
    """Sentry's `issue` webhook (a real payload, renumbered) for an issue whose latest event raised
    ZeroDivisionError through CALLER and BUG; the task's key."""
    sentry(world).add_issue(issue_id, "ZeroDivisionError: division by zero", [CALLER, BUG], project="statskit")
    payload = json.loads(ISSUE_WEBHOOK.read_text())
    payload["data"]["issue"] |= {"id": issue_id, "title": "ZeroDivisionError: division by zero", "platform": "python",
                                 "shortId": f"STATSKIT-{issue_id}", "culprit": "statskit.mean in mean",
                                 "project": {"id": "2", "name": "statskit", "slug": "statskit", "platform": "python"},
                                 "metadata": {"type": "ZeroDivisionError", "value": "division by zero"}}
    assert "exception" not in json.dumps(payload)  # no trace: the platform has to fetch it
    return world.post_alert(payload, resource="issue")


def planner_prompt(world: World, key: str) -> str:
    """The first request the model stand-in received for `key`'s plan: the planner's prompt as sent."""
    found = [r for r in world.planner_model.main_requests() if f"Plan the fix for {key}" in r.text()]
    assert found, f"the model was never asked to plan {key}"
    return json.dumps(found[0].body)


def approved_to_completion(world: World, key: str) -> dict[str, Any]:
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    return world.wait_for(key, {"COMPLETED"})


# --- Sentry: context before planning, resolved on merge --------------------------------------


def test_a_sentry_issue_without_a_trace_is_planned_from_the_fetched_event_and_resolved_when_merged(
        world: World) -> None:
    world.script()
    key = post_sentry_issue(world, "5150")
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    fetches = sentry(world).calls_to(r"/issues/5150/events/latest/$", "GET")
    assert len(fetches) == 1, [c.path for c in sentry(world).calls]
    prompt = planner_prompt(world, key)
    for seen in ("app/billing/totals.py:88 in nightly_totals_rollup", "average_invoice = mean(invoice_amounts)",
                 "statskit/mean.py:6 in mean", "return sum(values) / len(values)", "release api@1.4.2",
                 "environment production", "GET /totals?count=0"):
        assert seen in prompt, (seen, prompt[:3000])
    assert any(e["reason"] == "Sentry's latest event fetched" for e in world.events(key))

    done = approved_to_completion(world, key)
    assert done["pr_url"] == task["pr_url"]
    answer = world.merged(pr_number(done), by="alice")
    assert answer.json()["detail"] == "merged", answer.text
    shown = world.api("GET", f"/tasks/{key}")
    assert (shown["outcome"], shown["outcome_by"]) == ("merged", "alice")
    eventually(lambda: sentry(world).issues["5150"]["status"] == "resolved")
    assert sentry(world).issues["5150"]["statusDetails"] == {"inNextRelease": True}
    resolutions = [c.body for c in sentry(world).calls_to(r"/organizations/acme/issues/5150/$", "PUT")]
    assert resolutions == [{"status": "resolvedInNextRelease"}]
    notes = [n["data"]["text"] for n in eventually(lambda: [n for n in sentry(world).notes.get("5150", [])
                                                             if "merged" in n["data"]["text"]])]
    assert len(notes) == 1 and f"{key}: the fix was merged by alice: {done['pr_url']}" in notes[0], notes


# --- each integration down in turn -------------------------------------------------------------


def outage(world: World, service: str) -> tuple[FakeAPI, str]:
    """The stand-in to take down for `service`, and the path its failures answer (GitHub: its
    comments, labels and review requests only: the pull request itself is the core path)."""
    if service == "github":
        return world.github, r"/issues/(\d+/)?(comments|labels)|/requested_reviewers"
    return {"sentry": sentry(world), "jira": world.jira, "slack": world.slack}[service], r"."


def start_task(world: World, service: str) -> str:
    if service == "sentry":
        return post_sentry_issue(world, "5151")
    if service == "jira":
        return world.post_jira_story("STAT-31", "mean() of no values")
    alert = sentry_alert(world.remote)  # an alert with its trace, on an issue Sentry knows
    sentry(world).add_issue(alert["data"]["event"]["issue_id"], "ZeroDivisionError: division by zero", [BUG])
    return world.post_alert(alert)


@pytest.mark.parametrize("service", ["sentry", "jira", "slack", "github"])
def test_with_an_integration_down_the_task_completes_and_the_failure_is_logged_once(world: World,
                                                                                   service: str) -> None:
    world.script()
    fake, paths = outage(world, service)
    fault = fake.fail_next(paths, 503, times=None)
    try:
        key = start_task(world, service)
        done = approved_to_completion(world, key)
    finally:
        fake.clear_faults()
    assert fault.hits >= 2, f"{service} was not asked anything"
    assert done["pr_url"] and [m.split(":")[0] for m in world.branch_log(done["branch"])] == ["fix", "test", "docs"]
    if service == "sentry":  # planned without the trace, and the prompt says so
        assert "Sentry could not be reached for this issue's latest event" in planner_prompt(world, key)
        assert any(e["reason"] == "Sentry's latest event could not be fetched" for e in world.events(key))

    said = [line for line in world.log_lines(key) if line["level"] in ("WARNING", "ERROR", "CRITICAL")
            and re.search(rf"\b{service}\b", line["message"], re.I)]
    print(json.dumps({"service_down": service, "warnings": len(said), "injected_failures": fault.hits}))
    assert said, f"the {service} outage was not logged: {world.log_lines(key)[-20:]}"
    assert all("503" in line["message"] for line in said), said  # the cause: what the service answered
    assert not [line for line in said if "error" in line], said  # no traceback
    # once: no process says the same thing twice (the retries of one call and the steps that
    # fail the same way included), whatever the numbers in it
    repeated = Counter((line["agent"], re.sub(r"\d+(\.\d+)?", "N", line["message"])) for line in said)
    assert max(repeated.values()) == 1, [entry for entry, count in repeated.items() if count > 1]
