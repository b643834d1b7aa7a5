"""End to end on real Ray, Postgres, Redis, git and the claude CLI; SaaS APIs and the model are stand-ins.

One platform (Serve ingress, a planner, an executor) serves the whole module; each test
swaps the model's script for its story.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from fixfleet.ports import free_port
from fixfleet.scratch import create_database, drop_database, redis_db_url
from fixfleet.formats.adf import adf_to_text
from tests.world import REPO_NAME, Credentials, World, eventually, platform_world, pr_number

pytestmark = pytest.mark.e2e
CREDENTIALS = Credentials(github_token="ghp_e2e_token", slack_token="xoxb-e2e-token", jira_token="jira-e2e-token",
                          model_key="e2e-model-key", api_token="e2e-approver-token",
                          secrets={"github": "gh-e2e", "sentry": "sentry-e2e", "jira": "jira-e2e"})
JIRA_TRANSITIONS = {"PLANNING": "Start Progress", "COMPLETED": "Ready for Review", "MERGED": "Done"}
DEMO_REDIS_DB = 10  # the suite has 13, the Serve test 12, bench.scale 14


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[World]:
    with platform_world(tmp_path_factory.mktemp("e2e"), database_url, redis_url, CREDENTIALS,
                        {"FIXFLEET_SUITE_COMMAND": "python -m pytest -q",
                         "FIXFLEET_JIRA_TRANSITIONS": json.dumps(JIRA_TRANSITIONS)}) as world:
        yield world


# --- the stories ------------------------------------------------------------------------------


def test_sentry_alert_to_a_ready_pull_request(world: World) -> None:
    world.script()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    number = pr_number(task)
    pull = world.github.pull(REPO_NAME, number)
    assert pull["draft"] and pull["head"]["ref"] == f"fixfleet/{key}"
    assert "ZeroDivisionError" in world.branch_file(task["branch"], "PLAN.md")
    assert any(key in json.dumps(m) for m in world.slack.messages), "Slack was not asked to approve"

    assert world.comment(number, "maintainer", "Plan looks right. @agent approve").status_code == 200
    task = world.wait_for(key, {"COMPLETED"})
    pull = world.github.pull(REPO_NAME, number)
    assert not pull["draft"] and "RED" in pull["body"] and "exit 1" in pull["body"]
    log = world.branch_log(task["branch"])  # newest first
    assert [m.split(":")[0] for m in log] == ["fix", "test", "docs"]
    assert log[1:] == [f"test: reproduce {key}", f"docs: plan v1 for {key}"]
    completed = [e for e in world.events(key) if e["to_status"] == "COMPLETED"][0]
    evidence = completed["data"]["evidence"]
    assert (evidence["red"]["exit_code"], evidence["green"]["exit_code"], evidence["suite"]["exit_code"]) == (1, 0, 0)
    assert any("fixed and tested" in json.dumps(m) for m in world.slack.messages)


def test_jira_ticket_to_the_same_end(world: World) -> None:
    world.script()
    key = world.post_jira_story("STAT-7", "mean() crashes on empty input")
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    world.wait_for(key, {"COMPLETED"})
    comments = " ".join(json.dumps(c) for c in world.jira.comments("STAT-7"))
    assert "fixfleet analysis of" in comments and "tested fix" in comments
    assert world.jira.status("STAT-7") != "To Do"


def test_reject_and_merge_close_the_loops_with_github_jira_and_slack(world: World) -> None:
    """Issue #22: a rejected task's draft PR is closed and its branch deleted, the Slack buttons
    replaced by the decision, the Jira ticket commented; a merged one's outcome is recorded from
    the webhook and moves the ticket to Done, with a reply in the Slack thread. Each Jira story
    gets its analysis, a remote link to the PR and the label, and exactly the transitions
    FIXFLEET_JIRA_TRANSITIONS maps, in the order of the steps."""
    world.script()
    rejected = world.post_jira_story("STAT-8", "mean() crashes on an empty list")
    task = world.wait_for(rejected, {"AWAITING_APPROVAL"})
    number = pr_number(task)
    assert {label["name"] for label in world.github.pull(REPO_NAME, number)["labels"]} >= {"fixfleet"}
    assert world.jira.remote_links["STAT-8"][0]["object"]["url"] == task["pr_url"]
    assert "fixfleet" in world.jira.issues["STAT-8"]["fields"]["labels"] and world.jira.status("STAT-8") == "In Progress"
    world.api("POST", f"/tasks/{rejected}/reject", json={"reason": "empty input is the caller's bug"})
    eventually(lambda: world.github.pull(REPO_NAME, number)["state"] == "closed")
    eventually(lambda: world.git("branch", "--list", f"fixfleet/{rejected}").strip() == "")  # deleted after the close
    plan_message = eventually(lambda: next((m for m in world.slack.messages if not m["thread_ts"]
                                            and f"{rejected} rejected by lead" in m["text"]), None))
    assert not any(block["type"] == "actions" for block in plan_message["blocks"])  # no more buttons
    assert "empty input is the caller's bug" in json.dumps(world.jira.comments("STAT-8")[-1])
    assert transitions(world, "STAT-8") == ["In Progress"]  # PLANNING; REJECTED is not mapped

    merged = world.post_jira_story("STAT-9", "mean() of nothing")
    task = world.wait_for(merged, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{merged}/approve", json={"plan_version": task["plan_version"]})
    task = world.wait_for(merged, {"COMPLETED"})
    assert world.jira.status("STAT-9") == "In Review"  # COMPLETED -> "Ready for Review"
    number = pr_number(task)
    answer = world.merged(number, by="alice")
    assert answer.json()["detail"] == "merged", answer.text
    shown = world.api("GET", f"/tasks/{merged}")
    assert (shown["outcome"], shown["outcome_by"]) == ("merged", "alice")
    eventually(lambda: world.jira.status("STAT-9") == "Done")
    eventually(lambda: any(m["thread_ts"] and "merged by alice" in m["text"] for m in world.slack.messages))
    # PLANNING -> "Start Progress", COMPLETED -> "Ready for Review", MERGED -> "Done": in that order, once each
    assert transitions(world, "STAT-9") == ["In Progress", "In Review", "Done"], world.jira.transition_log
    said = [adf_to_text(c["body"]) for c in world.jira.comments("STAT-9")]
    assert [text.split(" ", 3)[:3] for text in said] == [["fixfleet", "analysis", "of"], ["fixfleet", "pushed", "a"]], said
    assert "Root cause:" in said[0] and task["pr_url"] in said[0] and task["pr_url"] in said[1]
    assert [link["object"]["url"] for link in world.jira.remote_links["STAT-9"]] == [task["pr_url"]]
    assert "fixfleet" in world.jira.issues["STAT-9"]["fields"]["labels"]


def transitions(world: World, issue: str) -> list[str]:
    """The statuses the Jira stand-in moved `issue` to, in the order it was asked."""
    return [to for key, _, to in world.jira.transition_log if key == issue]


def test_revise_makes_a_new_plan_version(world: World) -> None:
    world.script()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.comment(pr_number(task), "maintainer", "@agent revise add a regression test for empty input")
    task = wait_until_plan_version(world, key, 2)
    planner_requests = json.dumps([r.body for r in world.planner_model.main_requests()[-3:]])
    assert "add a regression test for empty input" in planner_requests  # the feedback reached the planner
    assert "Plan version: **v2**" in world.branch_file(task["branch"], "PLAN.md")
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": 2})
    world.wait_for(key, {"COMPLETED"})


def wait_until_plan_version(world: World, key: str, version: int) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        task = world.api("GET", f"/tasks/{key}")
        if task["status"] == "AWAITING_APPROVAL" and task["plan_version"] == version:
            return task
        time.sleep(0.5)
    raise AssertionError(f"{key} never reached plan v{version}")


def test_a_question_about_the_plan_is_answered_from_the_code(world: World) -> None:
    """`explain <question>` while the plan waits: the planner reads the code in a read-only
    session, its answer lands on the PR quoting the question and in `explain`; the task waits on."""
    world.script()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    asked = world.api("POST", "/commands", json={"text": f"explain {key} why not fix the caller instead?"})
    assert "The planner is reading the code" in asked["text"], asked
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [e for e in world.events(key) if e["reason"].startswith("explain:")]:
        time.sleep(0.5)
    answers = [e for e in world.events(key) if e["reason"].startswith("explain:")]
    assert answers and answers[-1]["reason"] == "explain: the planner answered", world.events(key)[-3:]
    assert answers[-1]["data"]["answer"]["files"] == ["statskit/mean.py"]
    posted = [c["body"] for c in world.github.comments if "the planner's answer" in c["body"]]
    assert posted and "> why not fix the caller instead?" in posted[0] and "guard belongs there" in posted[0]
    shown = world.api("POST", "/commands", json={"text": f"explain {key}"})["text"]
    assert "The planner's last answer" in shown and "guard belongs there" in shown
    after = world.api("GET", f"/tasks/{key}")
    assert after["status"] == "AWAITING_APPROVAL" and after["plan_version"] == task["plan_version"]
    assert len([e for e in world.events(key) if e["reason"].startswith("planner session")]) == 2  # plan, answer


def test_reader_cannot_approve_and_the_task_waits(world: World) -> None:
    world.script()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.comment(pr_number(task), "visitor", "@agent approve")
    time.sleep(1)
    assert world.api("GET", f"/tasks/{key}")["status"] == "AWAITING_APPROVAL"
    assert any("refused" in e["reason"] for e in world.events(key))
    world.api("POST", f"/tasks/{key}/cancel", json={"reason": "test done"})


def test_test_that_passes_before_the_fix_is_not_pushed(world: World) -> None:
    world.script(executor="executor_green_before_fix")
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    failed = world.wait_for(key, {"FAILED"})
    assert world.branch_log(failed["branch"]) == [f"docs: plan v1 for {key}"]  # nothing pushed
    assert "RED check failed" in world.events(key)[-1]["reason"]


def test_fix_that_breaks_another_test_is_not_pushed_and_the_retry_is_told_why(world: World) -> None:
    world.script(executor="executor_breaks_suite")
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    failed = world.wait_for(key, {"FAILED"})
    assert world.branch_log(failed["branch"]) == [f"docs: plan v1 for {key}"]
    verification = [e for e in world.events(key) if e["reason"].startswith("verification failed")]
    assert verification and "breaks tests that passed on the base commit: tests/test_mean.py::test_mean_of_numbers" \
        in verification[-1]["reason"], world.events(key)[-3:]
    assert verification[-1]["data"]["stage"] == "suite"

    world.script()  # the next attempt fixes it properly, knowing why the first was refused
    world.executor_model.clear()
    assert world.api("POST", "/commands", json={"text": f"retry {key}"})["task"]["status"] == "APPROVED"
    world.wait_for(key, {"COMPLETED"})
    prompt = json.dumps(world.executor_model.main_requests()[0].body)
    assert "Your previous attempt was refused" in prompt and "REFUSED at suite" in prompt


def test_the_executor_verifies_in_its_session_and_mends_its_fix_in_one_attempt(world: World) -> None:
    """A first wrong fix is told by verify_change that it breaks a test; the mended one is
    VERIFIED; the final check takes that proof: one session, one attempt, COMPLETED."""
    world.script(executor="executor_verifies")
    world.executor_model.clear()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    world.wait_for(key, {"COMPLETED"})
    reasons = [e["reason"] for e in world.events(key)]
    assert "verify_change 1/3: refused (suite)" in reasons and "verify_change 2/3: verified" in reasons, reasons
    assert "verified: the final change is the one proven during the session" in reasons
    assert len([r for r in reasons if r.startswith("executor session")]) == 1 and reasons.count("executing") == 1
    told = json.dumps([r.body for r in world.executor_model.main_requests()])
    assert "breaks tests that passed on the base commit" in told  # the agent read the platform's verdict
    evidence = world.api("GET", f"/tasks/{key}/evidence")["text"]
    assert "tests/test_mean_empty.py::test_mean_of_empty_list" in evidence


def test_killed_executor_task_completes_once_elsewhere(world: World) -> None:
    """kill -9 of the executor replica mid-session: the task completes once elsewhere, and the
    killed session's records survive their replica: its messages up to the kill, marked cut
    short, beside the retry's session (read through Serve, the live stream included)."""
    world.script(executor="executor_stalls_after_reading")
    world.executor_model.clear()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    world.wait_for(key, {"EXECUTING"})
    running = wait_for_session(world, key, "executor", "running")
    live = stream_until(world, running["id"], lambda event: event["data"].get("kind") == "tool_result")
    assert [e["event"] for e in live][:2] == ["session", "message"] and live[0]["data"]["status"] == "running"
    before_kill = world.api("GET", f"/sessions/{running['id']}")["messages"]
    deadline = time.monotonic() + 10  # the agent's heartbeat says what it holds every lease/3 seconds
    while not (busy := [a for a in world.platform.agents() if (a.role, a.busy_with) == ("executor", task["id"])]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert busy, world.platform.agents()
    os.kill(busy[0].pid, signal.SIGKILL)  # the executor replica, mid-session: Serve starts another
    world.script()
    task = world.wait_for(key, {"COMPLETED"}, timeout_s=240)
    log = world.branch_log(task["branch"])
    assert [m.split(":")[0] for m in log] == ["fix", "test", "docs"]  # one set of commits
    pulls = [p for p in world.github.pulls.values() if p["head_ref"] == task["branch"]]
    assert len(pulls) == 1 and not pulls[0]["draft"]
    takeovers = [e for e in world.events(key) if e["reason"] == "takeover"]
    assert len(takeovers) == 1

    killed, retry = [s for s in world.api("GET", f"/tasks/{key}/sessions") if s["role"] == "executor"]
    assert (killed["id"], killed["status"], retry["status"], retry["outcome"]) == (
        running["id"], "cut_short", "ended", "success")
    assert retry["attempt"] > killed["attempt"] and retry["agent"] != killed["agent"]
    assert killed["error"].startswith("superseded: attempt") and killed["ended_at"]
    kept = world.api("GET", f"/sessions/{killed['id']}")["messages"]
    assert kept[:len(before_kill)] == before_kill  # everything written before the kill is still there
    reads = [m for m in kept if m["kind"] == "tool_result"]
    assert len(reads) >= 2 and any("def mean" in m["content"] for m in reads)
    assert not [m for m in kept if m["kind"] == "result"]  # it never finished
    assert world.api("GET", f"/sessions/{retry['id']}")["messages"][-1]["kind"] == "result"


def wait_for_session(world: World, key: str, role: str, status: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [s for s in world.api("GET", f"/tasks/{key}/sessions") if (s["role"], s["status"]) == (role, status)]
        if found:
            return found[-1]
        time.sleep(0.2)
    raise AssertionError(f"no {status} {role} session of {key}: {world.api('GET', f'/tasks/{key}/sessions')}")


def stream_until(world: World, session_id: int, wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Read the session's live stream through the platform's ingress until an event is `wanted`."""
    seen: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {world.credentials.api_token}"}
    with httpx.stream("GET", f"{world.url}/sessions/{session_id}/stream", headers=headers, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(("event: ", "data: ")):
                field, _, value = line.partition(": ")
                event[field] = json.loads(value) if field == "data" else value
            elif not line and event:
                seen.append(event)
                if wanted(event) or event["event"] == "end":
                    return seen
                event = {}
    raise AssertionError(f"the stream ended without it: {seen}")


def start_slow_execution(world: World) -> dict[str, Any]:
    """A task whose executor is mid-session (the model's first answer takes 30 s)."""
    world.script(executor="executor_slow")
    world.executor_model.clear()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    return wait_mid_session(world, key)


def wait_mid_session(world: World, key: str) -> dict[str, Any]:
    task = world.wait_for(key, {"EXECUTING"})
    deadline = time.monotonic() + 60
    while not world.executor_model.main_requests() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert world.executor_model.main_requests(), "the executor's session never asked the model"
    return task


def seconds_until_sessions_cut_short(world: World, key: str, count: int, since: float) -> float:
    """Seconds from `since` until `count` of the task's executor sessions are recorded cut short
    (the platform killed them), at most 30. Not the agents' heartbeats: they come every lease/3
    seconds, so an agent not yet seen busy would look as if it had let go at once."""
    deadline = since + 30
    while time.monotonic() < deadline:
        sessions = world.api("GET", f"/tasks/{key}/sessions")
        if len([s for s in sessions if (s["role"], s["status"]) == ("executor", "cut_short")]) >= count:
            break
        time.sleep(0.2)
    return time.monotonic() - since


def test_pause_and_cancel_stop_a_running_executor_and_nothing_is_pushed(world: World) -> None:
    """Pause mid-session: the session stops; resume: a new session starts from the plan; cancel
    mid-session: it stops again, and nothing is pushed, commented or moved afterwards."""
    task = start_slow_execution(world)
    key, branch = task["key"], task["branch"]
    asked = time.monotonic()
    paused = world.api("POST", f"/tasks/{key}/pause", json={"reason": "release freeze"})
    assert paused["status"] == "PAUSED"
    pause_s = seconds_until_sessions_cut_short(world, key, 1, asked)
    world.executor_model.clear()
    assert world.api("POST", f"/tasks/{key}/resume")["status"] == "APPROVED"
    wait_mid_session(world, key)
    calls_before = len(world.github.calls)
    asked = time.monotonic()
    assert world.api("POST", f"/tasks/{key}/cancel", json={"reason": "wrong approach"})["status"] == "CANCELLED"
    cancel_s = seconds_until_sessions_cut_short(world, key, 2, asked)
    time.sleep(max(0.0, asked + 35 - time.monotonic()))  # past the slow answer: a session left running would push now
    print(json.dumps({"pause_stopped_s": round(pause_s, 2), "cancel_stopped_s": round(cancel_s, 2)}))
    assert pause_s < 25 and cancel_s < 25  # let go before the slow answer (30 s) came: stopped, not finished
    assert world.api("GET", f"/tasks/{key}")["status"] == "CANCELLED"
    # nothing was pushed after the plan, and the cancel closed the loop: the reason on the thread,
    # the draft closed, its branch (the plan alone) deleted. No ready-for-review, no body with
    # evidence, no other comment.
    assert world.branch_log(branch) == []
    writes = [c for c in world.github.calls[calls_before:] if c.method != "GET"]
    comments = [c.body["body"] for c in writes if c.method == "POST" and c.path.endswith("/comments")]
    assert len(comments) == 1 and f"{key} was cancelled" in comments[0], comments
    patches = [c.body for c in writes if c.method == "PATCH" and "/pulls/" in c.path]
    assert patches == [{"state": "closed"}], patches
    deleted = [c.path for c in writes if c.method == "DELETE" and "/git/refs/" in c.path]
    assert deleted == [f"/repos/{REPO_NAME}/git/refs/heads/{branch}"], deleted
    others = [(c.method, c.path) for c in writes if c.path.split("/")[-1] not in ("comments", "labels")
              and "/pulls/" not in c.path and "/git/refs/" not in c.path and "/labels/" not in c.path]
    assert others == [], others
    stops = [e for e in world.events(key) if e["reason"].startswith("stopped:")]
    assert [e["actor"].split("-")[0] for e in stops] == ["executor", "executor"], world.events(key)
    sessions = [s for s in world.api("GET", f"/tasks/{key}/sessions") if s["role"] == "executor"]
    assert [(s["status"], s["error"]) for s in sessions] == [  # each session says why it was cut short
        ("cut_short", f"stopped: {key} was PAUSED"), ("cut_short", f"stopped: {key} was CANCELLED")]
    left = [p for p in (world.root / "home" / "agents").glob(f"*/workspaces/checkouts/{key}-exec-*")]
    assert left == [], left  # the worktree was released


def test_a_plan_pushed_by_an_attempt_that_stopped_is_published_without_a_second_plan(world: World) -> None:
    """The plan was pushed but its draft PR could not be opened, so the attempt ended before the
    plan was recorded (as when a planner is killed there): the next attempt publishes the plan
    that is on the branch instead of stacking a second plan commit on it."""
    world.script()
    world.github.fail_next(r"/pulls$", 422, method="POST", times=1)
    key = world.post_alert()
    failed = world.wait_for(key, {"FAILED"})
    assert world.branch_log(failed["branch"]) == [f"docs: plan v1 for {key}"]  # pushed, not recorded
    assert world.api("POST", "/commands", json={"text": f"retry {key}"})["task"]["status"] == "RECEIVED"
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    assert task["plan_version"] == 1 and task["pr_url"]
    assert world.branch_log(task["branch"]) == [f"docs: plan v1 for {key}"]  # one plan commit
    events = world.events(key)
    assert len([e for e in events if e["reason"].startswith("planner session")]) == 1
    assert any(e["reason"] == "the plan is already on the branch; finishing" for e in events)


def test_a_retry_after_a_lost_completion_finishes_without_a_second_session(world: World) -> None:
    """The fix was pushed but the PR could not be marked ready, so the task failed: `retry`
    publishes and completes from what is on the branch, without running the agent again."""
    world.script()
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"})
    world.github.fail_next(r"graphql", 422, times=1)  # marking the PR ready fails once
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    failed = world.wait_for(key, {"FAILED"})
    assert [m.split(":")[0] for m in world.branch_log(failed["branch"])] == ["fix", "test", "docs"], \
        [(e["to_status"], e["reason"]) for e in world.events(key)[-4:]]  # pushed
    retried = world.api("POST", "/commands", json={"text": f"retry {key}"})
    assert retried["task"]["status"] == "APPROVED", retried
    done = world.wait_for(key, {"COMPLETED"})
    assert [m.split(":")[0] for m in world.branch_log(done["branch"])] == ["fix", "test", "docs"]  # one set
    events = world.events(key)
    assert len([e for e in events if e["reason"].startswith("executor session")]) == 1
    assert any(e["reason"] == "the fix is already on the branch; finishing" for e in events)
    assert not world.github.pull(REPO_NAME, pr_number(done))["draft"]
    diff = world.api("GET", f"/tasks/{key}/diff")["text"]
    assert "+++ b/statskit/mean.py" in diff and "+++ b/tests/test_mean.py" in diff
    # rerun-tests: the suite runs again on the pushed branch, in the sandbox; the PR is told
    assert world.api("POST", f"/tasks/{key}/rerun-tests")["status"] == "COMPLETED"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [e for e in world.events(key) if e["reason"].startswith("rerun-tests:")]:
        time.sleep(0.5)
    rerun = [e for e in world.events(key) if e["reason"].startswith("rerun-tests:")]
    assert rerun and rerun[-1]["reason"] == "rerun-tests: the suite passes", world.events(key)[-3:]
    assert rerun[-1]["data"]["rerun"]["sha"] == world.git("rev-parse", done["branch"]).strip()
    assert any("the test suite passes" in c["body"] for c in world.github.comments)
    assert "suite rerun" in world.api("GET", f"/tasks/{key}/evidence")["text"]


def test_the_agents_start_their_processes_from_asyncios_own_loop(world: World) -> None:
    """uvloop starts a child with libuv's fork and waits for its exec on the loop's thread; in a
    Ray worker's threaded process that wait held an agent's loop (once its heartbeat stopped for
    minutes and its task stuck). The agents' git, sandbox and CLI start from asyncio's loop."""
    started = [line["message"] for line in world.log_lines() if " consumes the " in line.get("message", "")]
    assert {message.split("-")[0] for message in started} == {"planner", "executor"}, started
    assert all("(event loop: asyncio." in message for message in started), started


def test_status_shows_the_agents_queues_and_last_tasks(world: World) -> None:
    shown = subprocess.run([sys.executable, "-m", "fixfleet.cli", "status", "--json"], env=dict(os.environ),
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert {role: sum(states.values()) - states.get("lost", 0) for role, states in view["pools"].items()} == {
        "planner": 1, "executor": 1}
    assert {a["name"].split("-")[0] for a in view["agents"]} == {"planner", "executor"}
    assert {"planning", "execution"} <= set(view["queues"])
    assert view["tasks"] and all(t["key"].startswith("FF-") for t in view["tasks"])  # the earlier stories' tasks
    table = subprocess.run([sys.executable, "-m", "fixfleet.cli", "status"], env=dict(os.environ) | {"COLUMNS": "200"},
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "agents by role" in table.stdout and "last tasks" in table.stdout, table.stderr


@pytest.fixture
def demo_stores(postgres_server_url: str, redis_server_url: str) -> Iterator[tuple[str, str]]:
    """A database and a Redis db of the demo's own: the world's platform above is still running
    on the suite's, and its agents would take the demo's tasks."""
    database = asyncio.run(create_database(postgres_server_url))
    redis = redis_db_url(redis_server_url, DEMO_REDIS_DB)
    Redis.from_url(redis).flushdb()
    yield database, redis
    Redis.from_url(redis).flushdb()
    asyncio.run(drop_database(postgres_server_url, database))


def test_demo_exits_zero(tmp_path: Path, demo_stores: tuple[str, str]) -> None:
    database_url, redis_url = demo_stores
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIXFLEET_", "ANTHROPIC_", "GITHUB_", "SLACK_", "JIRA_"))}
    env |= {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FIXFLEET_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "fixfleet.cli", "demo", "--json", "--http-port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "COMPLETED"
    assert (summary["red_exit_code"], summary["green_exit_code"], summary["suite_exit_code"]) == (1, 0, 0)
    assert len(summary["commits"]) == 3 and Path(summary["remote"]).is_dir()
