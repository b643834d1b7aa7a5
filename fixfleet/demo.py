"""`fixfleet demo`: watch a real bug get fixed, offline, with no credentials.

A sample package with a real bug sits behind a local git remote; the platform starts (Ray,
Serve, the planner, an executor) with the scripted model server playing the model; a signed
Sentry alert points at the bug; the demo waits for the plan, approves it as an authorised
user, waits for the fix, and prints what happened. `--live` uses the real model instead.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fixfleet.config import Settings
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.intake.signatures import sentry_headers

BUGGY_MEAN = '''"""Averages."""


def mean(values):
    """The arithmetic mean of a list of numbers."""
    return sum(values) / len(values)
'''
TEST_MEAN = '''from statskit.mean import mean


def test_mean_of_numbers():
    assert mean([1, 2, 3]) == 2
'''
SUITE_COMMAND = "python -m pytest -q"


class DemoFailed(RuntimeError):
    pass


@dataclass
class DemoResult:
    task: str
    status: str
    branch: str | None
    remote: str
    red_exit_code: int | None
    green_exit_code: int | None
    suite_exit_code: int | None
    commits: list[str]
    cost_usd: float
    seconds: float
    root_cause: str


def make_sample_repo(root: Path) -> Path:
    """statskit: mean([]) raises ZeroDivisionError. Returns the bare remote."""
    work, remote = root / "statskit", root / "statskit-remote.git"
    (work / "statskit").mkdir(parents=True)
    (work / "tests").mkdir()
    (work / "statskit" / "__init__.py").write_text('"""A tiny statistics package."""\n')
    (work / "statskit" / "mean.py").write_text(BUGGY_MEAN)
    (work / "tests" / "__init__.py").write_text("")
    (work / "tests" / "test_mean.py").write_text(TEST_MEAN)
    (work / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    git = ["git", "-c", "user.name=statskit", "-c", "user.email=dev@statskit.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "statskit: mean()"]):
        subprocess.run([*git, *args], cwd=work, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True, capture_output=True)
    return remote


def sentry_alert(repo_dir: Path) -> dict[str, Any]:
    """A Sentry `event_alert` whose stack trace ends in the bug."""
    frame = {"filename": "statskit/mean.py", "abs_path": str(repo_dir / "statskit/mean.py"), "function": "mean",
             "lineno": 6, "in_app": True, "context_line": "    return sum(values) / len(values)"}
    caller = {"filename": "app/report.py", "abs_path": "/srv/app/report.py", "function": "daily_report",
              "lineno": 41, "in_app": True, "context_line": "    average = mean(latencies)"}
    issue_id = str(uuid.uuid4().int % 10**10)
    return {
        "action": "triggered",
        "installation": {"uuid": str(uuid.uuid4())},
        "data": {
            "event": {
                "event_id": uuid.uuid4().hex, "issue_id": issue_id, "level": "error",
                "title": "ZeroDivisionError: division by zero", "culprit": "statskit.mean in mean",
                "url": f"https://sentry.io/api/0/projects/demo/statskit/events/{uuid.uuid4().hex}/",
                "web_url": f"https://sentry.io/organizations/demo/issues/{issue_id}/",
                "exception": {"values": [{"type": "ZeroDivisionError", "value": "division by zero",
                                          "stacktrace": {"frames": [caller, frame]}}]},
            },
            "triggered_rule": "statskit errors",
        },
    }


class Demo:
    def __init__(self, settings: Settings, *, live: bool, http_port: int, progress: Callable[[str], None]) -> None:
        self.settings, self.live, self.http_port, self.say = settings, live, http_port, progress
        self.root = Path(tempfile.mkdtemp(prefix="fixfleet-demo-"))
        self.sentry_secret = secrets.token_hex(16)
        self.api_token = secrets.token_hex(16)
        self.replays: list[Any] = []

    def run(self) -> DemoResult:
        started = time.monotonic()
        remote = make_sample_repo(self.root)
        self.say(f"sample repository with a bug: {remote}")
        platform = Platform(self.settings, self._options(remote))
        try:
            platform.start(progress=self.say)
            key = self._post_alert(platform.url)
            task = self._wait(platform.url, key, {"AWAITING_APPROVAL"}, "the plan")
            root_cause = (task.get("plan") or {}).get("root_cause", "")
            self.say(f"plan v{task['plan_version']} ready on {task['branch']}: {root_cause}")
            self._approve(platform.url, key, task["plan_version"])
            task = self._wait(platform.url, key, {"COMPLETED"}, "the fix")
            return self._result(platform.url, key, task, remote, root_cause, time.monotonic() - started)
        finally:
            self.say("stopping the platform")
            platform.stop()
            for replay in self.replays:
                replay.stop()

    def _options(self, remote: Path) -> PlatformOptions:
        (self.root / "no-mcp.json").write_text('{"mcpServers": {}}')
        env = {
            "FIXFLEET_SENTRY_CLIENT_SECRET": self.sentry_secret,
            "FIXFLEET_API_TOKENS": json.dumps([{"name": "demo-approver", "token": self.api_token,
                                                "scopes": ["read", "submit", "approve"]}]),
            "FIXFLEET_DEFAULT_REPO": f"file://{remote}",
            "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(self.root)]),
            "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{remote}"]),
            "FIXFLEET_MCP_CONFIG": str(self.root / "no-mcp.json"),
            "FIXFLEET_SUITE_COMMAND": SUITE_COMMAND,
        }
        planner, executor = {}, {}
        if not self.live:
            from fixfleet.replay import ReplayServer

            self.replays = [ReplayServer("demo_planner").start(), ReplayServer("demo_executor").start()]
            env["ANTHROPIC_API_KEY"] = "offline-demo-key"
            planner = {"anthropic_base_url": self.replays[0].url}
            executor = {"anthropic_base_url": self.replays[1].url}
        return PlatformOptions(http_port=self.http_port, executors=1, env=env,
                               planner_overrides=planner, executor_overrides=executor)

    def _post_alert(self, url: str) -> str:
        body = json.dumps(sentry_alert(self.root / "statskit")).encode()
        answer = httpx.post(f"{url}/webhooks/sentry", content=body, timeout=30,
                            headers=sentry_headers(self.sentry_secret, body, uuid.uuid4().hex))
        if answer.status_code != 202:
            raise DemoFailed(f"the Sentry alert was not accepted: {answer.status_code} {answer.text[:300]}")
        key = answer.json()["task"]
        self.say(f"signed Sentry alert accepted: task {key}")
        return key

    def _wait(self, url: str, key: str, wanted: set[str], what: str, timeout_s: float = 600) -> dict[str, Any]:
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            task = self._get(url, f"/tasks/{key}")
            if task["status"] != last:
                last = task["status"]
                self.say(f"{key} is {last}")
            if task["status"] in wanted:
                return task
            if task["status"] in {"FAILED", "REJECTED", "CANCELLED"}:
                events = self._get(url, f"/tasks/{key}/events")
                raise DemoFailed(f"{key} ended {task['status']} while waiting for {what}: {events[-1]['reason']}")
            time.sleep(0.5)
        raise DemoFailed(f"{key} did not reach {'/'.join(wanted)} within {timeout_s:.0f}s (it is {last})")

    def _approve(self, url: str, key: str, version: int) -> None:
        answer = httpx.post(f"{url}/tasks/{key}/approve", json={"plan_version": version}, headers=self._auth(), timeout=30)
        if answer.status_code != 200:
            raise DemoFailed(f"approval refused: {answer.status_code} {answer.text[:300]}")
        self.say(f"approved plan v{version} as demo-approver")

    def _get(self, url: str, path: str) -> Any:
        answer = httpx.get(f"{url}{path}", headers=self._auth(), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    def _result(self, url: str, key: str, task: dict[str, Any], remote: Path, root_cause: str, seconds: float) -> DemoResult:
        evidence = self._evidence(url, key)
        log = subprocess.run(["git", "--git-dir", str(remote), "log", "--format=%h %s", f"main..{task['branch']}"],
                             capture_output=True, text=True, check=False).stdout.strip().splitlines()
        return DemoResult(
            task=key, status=task["status"], branch=task["branch"], remote=str(remote),
            red_exit_code=evidence.get("red", {}).get("exit_code"),
            green_exit_code=evidence.get("green", {}).get("exit_code"),
            suite_exit_code=evidence.get("suite", {}).get("exit_code"),
            commits=log, cost_usd=round(task["cost_usd"], 6), seconds=round(seconds, 1), root_cause=root_cause,
        )

    def _evidence(self, url: str, key: str) -> dict[str, Any]:
        """RED, GREEN and suite runs, as the executor recorded them when it completed the task."""
        completed = [e for e in self._get(url, f"/tasks/{key}/events") if e["to_status"] == "COMPLETED"]
        return completed[-1]["data"].get("evidence", {}) if completed else {}
