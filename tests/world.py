"""The whole platform for end-to-end tests: real Ray, Postgres, Redis, git, the claude CLI and
bubblewrap; GitHub, Slack, Jira (and, when asked, Sentry's REST API) and the model are local
stand-ins. One world per test module.

    with platform_world(root, database_url, redis_url, Credentials(...)) as world:
        key = world.post_alert()
        task = world.wait_for(key, {"AWAITING_APPROVAL"})
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fixfleet.config import Settings
from fixfleet.demo import make_sample_repo, sentry_alert
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.ports import free_port
from fixfleet.replay import ReplayServer
from fixfleet.replay.scenario import Scenario
from fixfleet.intake.signatures import sentry_headers, sign_github, sign_jira
from tests.slate import clean_slate
from tests.fakes.github import FakeGitHub
from tests.fakes.jira import FakeJira
from tests.fakes.sentry import FakeSentry
from tests.fakes.slack import FakeSlack

REPO_NAME, CHANNEL = "acme/statskit", "C0PLANS"
SENTRY_ORG, SENTRY_TOKEN = "acme", "sntrys_e2e_token"
SCENARIOS = Path(__file__).parent / "scenarios"


@dataclass(frozen=True)
class Credentials:
    """What the platform and the stand-ins share: tokens, webhook secrets, the operator's API token."""

    github_token: str
    slack_token: str
    jira_token: str
    model_key: str
    api_token: str
    secrets: dict[str, str] = field(default_factory=dict)  # github, sentry, jira webhook secrets
    jira_email: str = "bot@acme.test"


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
    credentials: Credentials
    sentry: FakeSentry | None = None  # platform_world(..., sentry=True): Sentry's REST API too

    def script(self, planner: str | dict = "demo_planner", executor: str | dict = "demo_executor") -> None:
        for server, scenario in ((self.planner_model, planner), (self.executor_model, executor)):
            path = SCENARIOS / f"{scenario}.yaml" if isinstance(scenario, str) else None
            server.scenario = Scenario.load(path if path and path.exists() else scenario)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs,
                               headers={"Authorization": f"Bearer {self.credentials.api_token}"})
        assert answer.status_code < 300, answer.text
        return answer.json()

    def events(self, key: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/tasks/{key}/events")

    def wait_for(self, key: str, statuses: set[str], timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = self.api("GET", f"/tasks/{key}")
            if task["status"] in statuses:
                return task
            if task["status"] in {"FAILED", "COMPLETED", "REJECTED", "CANCELLED"}:
                break  # ended elsewhere: no use waiting
            time.sleep(0.5)
        events = self.events(key)
        health = httpx.get(f"{self.url}/health", timeout=30).json()  # queue depths and agents: where it stopped
        raise AssertionError(f"{key} stuck at {task['status']}: {[(e['to_status'], e['reason']) for e in events[-5:]]}; "
                             f"agents {self.platform.agents()}; health {health}")

    def post_alert(self, alert: dict[str, Any] | None = None, *, resource: str = "event_alert") -> str:
        """A signed Sentry webhook (`resource`: its Sentry-Hook-Resource) that makes a task; its key."""
        body = json.dumps(alert or sentry_alert(self.remote)).encode()
        answer = httpx.post(f"{self.url}/webhooks/sentry", content=body, timeout=30,
                            headers=sentry_headers(self.credentials.secrets["sentry"], body, os.urandom(8).hex(), resource))
        assert answer.status_code == 202, answer.text
        return answer.json()["task"]

    def post_jira_story(self, issue: str, summary: str) -> str:
        """A Jira ticket of project STAT (made on the Jira stand-in too) and its signed
        `jira:issue_created` webhook; the task's key."""
        self.jira.add_issue(issue, summary=summary)
        payload = {"webhookEvent": "jira:issue_created", "timestamp": int(time.time() * 1000),
                   "issue": {"key": issue, "id": issue.split("-")[1], "fields": {
                       "summary": summary, "project": {"key": "STAT"}, "labels": [], "priority": {"name": "High"},
                       "issuetype": {"name": "Bug"}, "description": {"type": "doc", "version": 1, "content": [
                           {"type": "paragraph", "content": [{"type": "text", "text": "statskit.mean([]) raises"}]}]}}}}
        body = json.dumps(payload).encode()
        answer = httpx.post(f"{self.url}/webhooks/jira", content=body, timeout=30, headers={
            "Content-Type": "application/json", "X-Atlassian-Webhook-Identifier": f"jira-delivery-{issue}",
            "X-Hub-Signature": sign_jira(self.credentials.secrets["jira"], body)})
        assert answer.status_code == 202, answer.text
        return answer.json()["task"]

    def merged(self, number: int, by: str) -> httpx.Response:
        """`by` merges pull request `number` on GitHub, which sends its `pull_request` closed webhook."""
        pull = self.github.merge(REPO_NAME, number, by=by)
        payload = {"action": "closed", "number": number, "pull_request": pull, "sender": {"login": by, "type": "User"},
                   "repository": {"full_name": REPO_NAME, "clone_url": f"file://{self.remote}",
                                  "html_url": f"{self.github.url}/{REPO_NAME}"}}
        body = json.dumps(payload).encode()
        return httpx.post(f"{self.url}/webhooks/github", content=body, timeout=30, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": os.urandom(8).hex(),
            "X-Hub-Signature-256": sign_github(self.credentials.secrets["github"], body)})

    def log_lines(self, task: str | None = None) -> list[dict[str, Any]]:
        """The platform's JSON log lines (every Ray worker's stderr: ingress, relay, agents), those
        logged while `task` (a key) was in hand when it is given."""
        assert self.platform.ray_temp_dir is not None
        found = []
        for path in sorted((self.platform.ray_temp_dir / "ray" / "session_latest" / "logs").glob("worker-*.err")):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with suppress(ValueError):
                        found.append(json.loads(line))
        return [line for line in found if task is None or line.get("task") == task]

    def last_log_lines(self, count: int = 80) -> list[str]:
        """The platform's last log lines in time order, without the HTTP clients' request lines:
        what a failed test's report shows."""
        lines = sorted((line for line in self.log_lines() if line.get("logger") != "httpx"),
                       key=lambda line: line.get("time") or "")
        return [f"{line.get('time')} {line.get('level')} {line.get('agent') or line.get('component')} "
                f"[{line.get('task') or '-'}] {line.get('message', '')[:400]}" for line in lines[-count:]]

    def comment(self, number: int, author: str, text: str, *, repo: str = REPO_NAME) -> httpx.Response:
        """A comment on pull request `number` of `repo` (another repository sends its webhooks here too)."""
        clone = f"file://{self.remote}" if repo == REPO_NAME else f"https://github.com/{repo}.git"
        payload = {
            "action": "created",
            "issue": {"number": number, "pull_request": {"url": "x"}, "title": "plan", "user": {"login": "fixfleet[bot]"}},
            "comment": {"id": int(time.time() * 1000), "body": text, "user": {"login": author, "type": "User"},
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))},
            "repository": {"full_name": repo, "clone_url": clone,
                           "html_url": f"{self.github.url}/{repo}"},  # the GitHub the platform talks to
            "sender": {"login": author, "type": "User"},
        }
        body = json.dumps(payload).encode()
        return httpx.post(f"{self.url}/webhooks/github", content=body, timeout=30, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": os.urandom(8).hex(),
            "X-Hub-Signature-256": sign_github(self.credentials.secrets["github"], body)})

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(self.remote), *args], capture_output=True, text=True,
                              check=True).stdout

    def branch_log(self, branch: str) -> list[str]:
        run = subprocess.run(["git", "--git-dir", str(self.remote), "log", "--format=%s", f"main..{branch}"],
                             capture_output=True, text=True)
        return run.stdout.split("\n")[:-1] if run.returncode == 0 else []

    def branch_file(self, branch: str, path: str) -> str:
        return self.git("show", f"{branch}:{path}")


def eventually(check: Callable[[], Any], timeout_s: float = 30) -> Any:
    """`check()`'s first truthy answer within `timeout_s` (what the platform does after it answered)."""
    deadline = time.monotonic() + timeout_s
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert found, "not within the time allowed"
    return found


def pr_number(task: dict[str, Any]) -> int:
    return int(task["pr_url"].rstrip("/").rsplit("/", 1)[1])


@contextmanager
def platform_world(root: Path, database_url: str, redis_url: str, credentials: Credentials,
                   extra_env: dict[str, str] | None = None, *, executors: int = 1, sentry: bool = False) -> Iterator[World]:
    """The sample repository behind a git remote, the stand-ins, and the platform configured for them
    (`sentry`: Sentry's REST API too, so the platform reads events and resolves issues there)."""
    clean_slate(database_url, redis_url)
    remote = make_sample_repo(root)
    saved_env = dict(os.environ)
    c = credentials
    with FakeGitHub(c.github_token) as github, FakeSlack(c.slack_token, channels=(CHANNEL,)) as slack, \
            FakeJira(c.jira_email, c.jira_token) as jira, ExitStack() as more:
        fake_sentry = more.enter_context(FakeSentry(SENTRY_TOKEN, SENTRY_ORG)) if sentry else None
        github.add_repo(REPO_NAME)
        github.link_git_remote(REPO_NAME, remote)  # the branches are pushed to the git remote
        github.grant(REPO_NAME, "maintainer", "write")
        github.grant(REPO_NAME, "visitor", "read")
        planner_model, executor_model = ReplayServer("demo_planner").start(), ReplayServer("demo_executor").start()
        env = world_env(root, remote, github, slack, jira, credentials, extra_env) | sentry_env(fake_sentry)
        settings = Settings(database_url=database_url, redis_url=redis_url, home=root / "home")
        options = PlatformOptions(http_port=free_port(), executors=executors, env=env,
                                  planner_overrides={"anthropic_base_url": planner_model.url},
                                  executor_overrides={"anthropic_base_url": executor_model.url})
        platform = Platform(settings, options)
        try:
            platform.start(progress=lambda line: None)
            yield World(platform.url, remote, root, github, slack, jira, planner_model, executor_model, platform,
                        credentials, fake_sentry)
        finally:
            platform.stop()
            planner_model.stop()
            executor_model.stop()
            os.environ.clear()
            os.environ.update(saved_env)


def world_env(root: Path, remote: Path, github: FakeGitHub, slack: FakeSlack, jira: FakeJira, credentials: Credentials,
              extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The platform's environment for the stand-ins: secrets, repository, tokens, their URLs."""
    c = credentials
    (root / "no-mcp.json").write_text('{"mcpServers": {}}')
    return {
        "FIXFLEET_GITHUB_WEBHOOK_SECRET": c.secrets["github"], "FIXFLEET_SENTRY_CLIENT_SECRET": c.secrets["sentry"],
        "FIXFLEET_JIRA_WEBHOOK_SECRET": c.secrets["jira"],
        "FIXFLEET_API_TOKENS": json.dumps([{"name": "lead", "token": c.api_token, "scopes": ["read", "submit", "approve"]}]),
        "FIXFLEET_DEFAULT_REPO": f"file://{remote}", "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]),
        "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{root}/*"]),
        "FIXFLEET_GITHUB_REPOS": json.dumps({f"file://{remote}": REPO_NAME}),
        "FIXFLEET_JIRA_PROJECTS": '["STAT"]', "FIXFLEET_JIRA_PROJECT_REPOS": json.dumps({"STAT": f"file://{remote}"}),
        "GITHUB_TOKEN": c.github_token, "FIXFLEET_GITHUB_API_URL": github.url,
        "SLACK_BOT_TOKEN": c.slack_token, "FIXFLEET_SLACK_API_URL": slack.api_url, "FIXFLEET_SLACK_CHANNEL": CHANNEL,
        "JIRA_BASE_URL": jira.url, "JIRA_EMAIL": c.jira_email, "JIRA_API_TOKEN": c.jira_token,
        "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"), "FIXFLEET_MAX_ATTEMPTS": "1", "FIXFLEET_LEASE_S": "4",
        "ANTHROPIC_API_KEY": c.model_key, **(extra_env or {}),
    }


def sentry_env(sentry: FakeSentry | None) -> dict[str, str]:
    """The platform's settings for Sentry's REST API on the stand-in (none without one)."""
    if sentry is None:
        return {}
    return {"SENTRY_AUTH_TOKEN": SENTRY_TOKEN, "FIXFLEET_SENTRY_API_URL": f"{sentry.url}/api/0",
            "FIXFLEET_SENTRY_ORG": SENTRY_ORG}
