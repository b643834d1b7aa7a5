"""End to end on real Ray, Postgres, Redis, git and the claude CLI; SaaS APIs and the model are stand-ins.

One platform (Serve ingress, a planner, an executor) serves the whole module; each test
swaps the model's script for its story.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from fixfleet.config import Settings
from fixfleet.demo import make_sample_repo, sentry_alert
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.replay import ReplayServer
from fixfleet.replay.scenario import Scenario
from serve_app.signatures import sign_github, sign_jira, sign_sentry
from tests.conftest import clean_slate
from tests.fakes.github import FakeGitHub
from tests.fakes.jira import FakeJira
from tests.fakes.slack import FakeSlack
from tests.ingress_server import free_port

pytestmark = pytest.mark.slow
SECRETS = {"github": "gh-e2e", "sentry": "sentry-e2e", "jira": "jira-e2e"}
GITHUB_TOKEN, SLACK_TOKEN, JIRA_EMAIL, JIRA_TOKEN = "ghp_e2e_token", "xoxb-e2e-token", "bot@acme.test", "jira-e2e-token"
API_TOKEN = "e2e-approver-token"
REPO_NAME, CHANNEL = "acme/statskit", "C0PLANS"
SCENARIOS = Path(__file__).parent / "scenarios"


@dataclass
class World:
    url: str
    remote: Path
    root: Path
    github: FakeGitHub
    slack: FakeSlack
    jira: FakeJira
    planner_model: ReplayServer
    executor_model: ReplayServer
    platform: Platform

    def script(self, planner: str = "demo_planner", executor: str = "demo_executor") -> None:
        for server, name in ((self.planner_model, planner), (self.executor_model, executor)):
            path = SCENARIOS / f"{name}.yaml"
            server.scenario = Scenario.load(path if path.exists() else name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[World]:
    clean_slate(database_url, redis_url)
    root = tmp_path_factory.mktemp("e2e")
    remote = make_sample_repo(root)
    saved_env = dict(os.environ)
    with FakeGitHub(GITHUB_TOKEN) as github, FakeSlack(SLACK_TOKEN, channels=(CHANNEL,)) as slack, \
            FakeJira(JIRA_EMAIL, JIRA_TOKEN) as jira:
        github.add_repo(REPO_NAME)
        github.link_git_remote(REPO_NAME, remote)  # the branches are pushed to the git remote
        github.grant(REPO_NAME, "maintainer", "write")
        github.grant(REPO_NAME, "visitor", "read")
        planner_model, executor_model = ReplayServer("demo_planner").start(), ReplayServer("demo_executor").start()
        (root / "no-mcp.json").write_text('{"mcpServers": {}}')
        env = {
            "FIXFLEET_GITHUB_WEBHOOK_SECRET": SECRETS["github"], "FIXFLEET_SENTRY_CLIENT_SECRET": SECRETS["sentry"],
            "FIXFLEET_JIRA_WEBHOOK_SECRET": SECRETS["jira"],
            "FIXFLEET_API_TOKENS": json.dumps([{"name": "lead", "token": API_TOKEN, "scopes": ["read", "submit", "approve"]}]),
            "FIXFLEET_DEFAULT_REPO": f"file://{remote}", "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]),
            "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{root}/*"]),
            "FIXFLEET_GITHUB_REPOS": json.dumps({f"file://{remote}": REPO_NAME}),
            "FIXFLEET_JIRA_PROJECTS": '["STAT"]', "FIXFLEET_JIRA_PROJECT_REPOS": json.dumps({"STAT": f"file://{remote}"}),
            "GITHUB_TOKEN": GITHUB_TOKEN, "FIXFLEET_GITHUB_API_URL": github.url,
            "SLACK_BOT_TOKEN": SLACK_TOKEN, "FIXFLEET_SLACK_API_URL": slack.api_url, "FIXFLEET_SLACK_CHANNEL": CHANNEL,
            "JIRA_BASE_URL": jira.url, "JIRA_EMAIL": JIRA_EMAIL, "JIRA_API_TOKEN": JIRA_TOKEN,
            "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"), "FIXFLEET_SUITE_COMMAND": "python -m pytest -q",
            "FIXFLEET_MAX_ATTEMPTS": "1", "FIXFLEET_LEASE_S": "4", "ANTHROPIC_API_KEY": "e2e-model-key",
        }
        settings = Settings(database_url=database_url, redis_url=redis_url, home=root / "home")
        options = PlatformOptions(http_port=free_port(), executors=1, env=env,
                                  planner_overrides={"anthropic_base_url": planner_model.url},
                                  executor_overrides={"anthropic_base_url": executor_model.url})
        platform = Platform(settings, options)
        try:
            platform.start(progress=lambda line: None)
            yield World(platform.url, remote, root, github, slack, jira, planner_model, executor_model, platform)
        finally:
            platform.stop()
            planner_model.stop()
            executor_model.stop()
            os.environ.clear()
            os.environ.update(saved_env)


# --- helpers ----------------------------------------------------------------------------------


def api(world: World, method: str, path: str, **kwargs: Any) -> Any:
    answer = httpx.request(method, f"{world.url}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30, **kwargs)
    assert answer.status_code < 300, answer.text
    return answer.json()


def wait_for(world: World, key: str, statuses: set[str], timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = api(world, "GET", f"/tasks/{key}")
        if task["status"] in statuses:
            return task
        if task["status"] in {"FAILED", "COMPLETED", "REJECTED", "CANCELLED"}:
            break  # ended elsewhere: no use waiting
        world.platform.agent_status()  # also restarts the loop of an actor Ray brought back
        time.sleep(0.5)
    events = api(world, "GET", f"/tasks/{key}/events")
    health = httpx.get(f"{world.url}/health", timeout=30).json()  # queue depths and agents: where it stopped
    raise AssertionError(
        f"{key} stuck at {task['status']}: {[(e['to_status'], e['reason']) for e in events[-5:]]}; "
        f"agents {world.platform.agent_status()}; health {health}"
    )


def post_alert(world: World) -> str:
    body = json.dumps(sentry_alert(world.remote)).encode()
    answer = httpx.post(f"{world.url}/webhooks/sentry", content=body, timeout=30, headers={
        "Content-Type": "application/json", "Sentry-Hook-Resource": "event_alert", "Request-ID": os.urandom(8).hex(),
        "Sentry-Hook-Signature": sign_sentry(SECRETS["sentry"], body)})
    assert answer.status_code == 202, answer.text
    return answer.json()["task"]


def comment_on_pr(world: World, number: int, author: str, text: str) -> httpx.Response:
    payload = {
        "action": "created",
        "issue": {"number": number, "pull_request": {"url": "x"}, "title": "plan", "user": {"login": "fixfleet[bot]"}},
        "comment": {"id": int(time.time() * 1000), "body": text, "user": {"login": author, "type": "User"},
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))},
        "repository": {"full_name": REPO_NAME, "clone_url": f"file://{world.remote}",
                       "html_url": f"{world.github.url}/{REPO_NAME}"},  # the GitHub the platform talks to
        "sender": {"login": author, "type": "User"},
    }
    body = json.dumps(payload).encode()
    return httpx.post(f"{world.url}/webhooks/github", content=body, timeout=30, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": os.urandom(8).hex(),
        "X-Hub-Signature-256": sign_github(SECRETS["github"], body)})


def branch_log(world: World, branch: str) -> list[str]:
    run = subprocess.run(["git", "--git-dir", str(world.remote), "log", "--format=%s", f"main..{branch}"],
                         capture_output=True, text=True)
    return run.stdout.split("\n")[:-1] if run.returncode == 0 else []


def pr_number(task: dict[str, Any]) -> int:
    return int(task["pr_url"].rstrip("/").rsplit("/", 1)[1])


def events(world: World, key: str) -> list[dict[str, Any]]:
    return api(world, "GET", f"/tasks/{key}/events")


# --- the stories ------------------------------------------------------------------------------


def test_sentry_alert_to_a_ready_pull_request(world: World) -> None:
    world.script()
    key = post_alert(world)
    task = wait_for(world, key, {"AWAITING_APPROVAL"})
    number = pr_number(task)
    pull = world.github.pull(REPO_NAME, number)
    assert pull["draft"] and pull["head"]["ref"] == f"fixfleet/{key}"
    assert "ZeroDivisionError" in branch_file(world, task["branch"], "PLAN.md")
    assert any(key in json.dumps(m) for m in world.slack.messages), "Slack was not asked to approve"

    assert comment_on_pr(world, number, "maintainer", "Plan looks right. @agent approve").status_code == 200
    task = wait_for(world, key, {"COMPLETED"})
    pull = world.github.pull(REPO_NAME, number)
    assert not pull["draft"] and "RED" in pull["body"] and "exit 1" in pull["body"]
    log = branch_log(world, task["branch"])  # newest first
    assert [m.split(":")[0] for m in log] == ["fix", "test", "docs"]
    assert log[1:] == [f"test: reproduce {key}", f"docs: plan v1 for {key}"]
    completed = [e for e in events(world, key) if e["to_status"] == "COMPLETED"][0]
    evidence = completed["data"]["evidence"]
    assert (evidence["red"]["exit_code"], evidence["green"]["exit_code"], evidence["suite"]["exit_code"]) == (1, 0, 0)
    assert any("fixed and tested" in json.dumps(m) for m in world.slack.messages)


def branch_file(world: World, branch: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(world.remote), "show", f"{branch}:{path}"],
                          capture_output=True, text=True, check=True).stdout


def test_jira_ticket_to_the_same_end(world: World) -> None:
    world.script()
    world.jira.add_issue("STAT-7", summary="mean() crashes on empty input")
    payload = {"webhookEvent": "jira:issue_created", "timestamp": int(time.time() * 1000),
               "issue": {"key": "STAT-7", "id": "10007", "fields": {
                   "summary": "mean() crashes on empty input", "project": {"key": "STAT"}, "labels": [],
                   "priority": {"name": "High"}, "issuetype": {"name": "Bug"},
                   "description": {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
                       {"type": "text", "text": "statskit.mean([]) raises ZeroDivisionError"}]}]}}}}
    body = json.dumps(payload).encode()
    answer = httpx.post(f"{world.url}/webhooks/jira", content=body, timeout=30, headers={
        "Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": "jira-delivery-7",
        "X-Hub-Signature": sign_jira(SECRETS["jira"], body)})
    assert answer.status_code == 202, answer.text
    key = answer.json()["task"]
    task = wait_for(world, key, {"AWAITING_APPROVAL"})
    api(world, "POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    wait_for(world, key, {"COMPLETED"})
    comments = " ".join(json.dumps(c) for c in world.jira.comments("STAT-7"))
    assert "planned a fix" in comments and "tested fix" in comments
    assert world.jira.status("STAT-7") != "To Do"


def test_revise_makes_a_new_plan_version(world: World) -> None:
    world.script()
    key = post_alert(world)
    task = wait_for(world, key, {"AWAITING_APPROVAL"})
    comment_on_pr(world, pr_number(task), "maintainer", "@agent revise add a regression test for empty input")
    task = wait_until_plan_version(world, key, 2)
    planner_requests = json.dumps([r.body for r in world.planner_model.main_requests()[-3:]])
    assert "add a regression test for empty input" in planner_requests  # the feedback reached the planner
    assert "Plan version: **v2**" in branch_file(world, task["branch"], "PLAN.md")
    api(world, "POST", f"/tasks/{key}/approve", json={"plan_version": 2})
    wait_for(world, key, {"COMPLETED"})


def wait_until_plan_version(world: World, key: str, version: int) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        task = api(world, "GET", f"/tasks/{key}")
        if task["status"] == "AWAITING_APPROVAL" and task["plan_version"] == version:
            return task
        time.sleep(0.5)
    raise AssertionError(f"{key} never reached plan v{version}")


def test_reader_cannot_approve_and_the_task_waits(world: World) -> None:
    world.script()
    key = post_alert(world)
    task = wait_for(world, key, {"AWAITING_APPROVAL"})
    comment_on_pr(world, pr_number(task), "visitor", "@agent approve")
    time.sleep(1)
    assert api(world, "GET", f"/tasks/{key}")["status"] == "AWAITING_APPROVAL"
    assert any("refused" in e["reason"] for e in events(world, key))
    api(world, "POST", f"/tasks/{key}/cancel", json={"reason": "test done"})


def test_test_that_passes_before_the_fix_is_not_pushed(world: World) -> None:
    world.script(executor="executor_green_before_fix")
    key = post_alert(world)
    task = wait_for(world, key, {"AWAITING_APPROVAL"})
    api(world, "POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    failed = wait_for(world, key, {"FAILED"})
    assert branch_log(world, failed["branch"]) == [f"docs: plan v1 for {key}"]  # nothing pushed
    assert "RED check failed" in events(world, key)[-1]["reason"]


def test_fix_that_breaks_another_test_is_not_pushed(world: World) -> None:
    world.script(executor="executor_breaks_suite")
    key = post_alert(world)
    task = wait_for(world, key, {"AWAITING_APPROVAL"})
    api(world, "POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    failed = wait_for(world, key, {"FAILED"})
    assert branch_log(world, failed["branch"]) == [f"docs: plan v1 for {key}"]
    verification = [e for e in events(world, key) if e["reason"].startswith("verification failed")]
    assert "full test suite fails" in events(world, key)[-1]["reason"], verification


def test_killed_executor_task_completes_once_elsewhere(world: World) -> None:
    world.script(executor="executor_slow")
    world.executor_model.clear()
    key = post_alert(world)
    task = wait_for(world, key, {"AWAITING_APPROVAL"})
    api(world, "POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    wait_for(world, key, {"EXECUTING"})
    deadline = time.monotonic() + 60
    while not world.executor_model.main_requests() and time.monotonic() < deadline:
        time.sleep(0.2)
    executor = world.platform.agents["executor-1"]
    os.kill(ray.get(executor.pid.remote()), signal.SIGKILL)  # mid-session
    world.script()
    task = wait_for(world, key, {"COMPLETED"}, timeout_s=240)
    log = branch_log(world, task["branch"])
    assert [m.split(":")[0] for m in log] == ["fix", "test", "docs"]  # one set of commits
    pulls = [p for p in world.github.pulls.values() if p["head_ref"] == task["branch"]]
    assert len(pulls) == 1 and not pulls[0]["draft"]
    takeovers = [e for e in events(world, key) if e["reason"] == "takeover"]
    assert len(takeovers) == 1


def test_demo_exits_zero(tmp_path: Path, database_url: str, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIXFLEET_", "ANTHROPIC_", "GITHUB_", "SLACK_", "JIRA_"))}
    env |= {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FIXFLEET_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "fixfleet.cli", "demo", "--json", "--http-port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "COMPLETED"
    assert (summary["red_exit_code"], summary["green_exit_code"], summary["suite_exit_code"]) == (1, 0, 0)
    assert len(summary["commits"]) == 3 and Path(summary["remote"]).is_dir()
