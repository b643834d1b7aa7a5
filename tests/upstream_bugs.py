"""Real upstream bug fixes (tests/realbugs/, see its README) and how one goes through the platform:
a local git remote from the buggy commit, scripted planner and executor sessions that apply the
upstream test and then the upstream fix, and the evidence read back from the task API.

tests/test_realbugs.py asserts each bug's outcome; `python -m bench.realbugs` prints the figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUGS_DIR = Path(__file__).resolve().parent / "realbugs"
API_TOKEN = "realbugs-operator-token"


@dataclass
class Bug:
    """One vendored upstream bug and the contents its scripted sessions write."""

    name: str
    meta: dict[str, Any]
    directory: Path
    tests_after: dict[str, str] = field(default_factory=dict)  # test files with the upstream test applied
    fix_after: dict[str, str] = field(default_factory=dict)  # code files with the upstream fix applied

    @property
    def language(self) -> str:
        return self.meta["language"]


def load_bugs(only: list[str] | None = None) -> list[Bug]:
    bugs = []
    for directory in sorted(p for p in BUGS_DIR.iterdir() if (p / "bug.yaml").is_file()):
        meta = yaml.safe_load((directory / "bug.yaml").read_text())
        if not only or meta["name"] in only:
            bugs.append(_with_contents(Bug(meta["name"], meta, directory)))
    return bugs


def _with_contents(bug: Bug) -> Bug:
    """Apply the patches once in a scratch tree and keep the resulting files."""
    with tempfile.TemporaryDirectory(prefix="realbug-") as scratch:
        tree = Path(scratch)
        extract(bug, tree)
        _patch(tree, bug.directory / "test.patch")
        bug.tests_after = {p: (tree / p).read_text() for p in bug.meta["test_files"]}
        _patch(tree, bug.directory / "fix.patch")
        bug.fix_after = {p: (tree / p).read_text() for p in bug.meta["fix_files"]}
    return bug


def extract(bug: Bug, target: Path) -> None:
    with tarfile.open(bug.directory / "source.tar.gz") as archive:
        archive.extractall(target, filter="data")


def _patch(tree: Path, patch: Path) -> None:
    subprocess.run(["patch", "-s", "-p1", "-i", str(patch)], cwd=tree, check=True)


def make_remote(bug: Bug, root: Path) -> Path:
    """A bare git remote whose main branch is the buggy commit's tree."""
    work, remote = root / bug.name, root / f"{bug.name}.git"
    work.mkdir(parents=True)
    extract(bug, work)
    git = ["git", "-c", "user.name=upstream", "-c", "user.email=upstream@example.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", f"{bug.name}: the buggy commit"]):
        subprocess.run([*git, *args], cwd=work, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True, capture_output=True)
    shutil.rmtree(work)
    return remote


# -- scripted sessions ---------------------------------------------------------------------


def planner_scenario(bug: Bug) -> dict[str, Any]:
    meta = bug.meta
    return {"name": f"{bug.name}-planner", "model": "claude-sonnet-4-5",
            "usage": {"input_tokens": 3000, "output_tokens": 200},
            "turns": [
                {"name": "read", "content": [
                    {"text": "Reading the code the report points at."},
                    *({"tool_use": {"name": "Read", "input": {"file_path": f"{{cwd}}/{path}"}}}
                      for path in meta["fix_files"])]},
                {"name": "submit", "content": [{"tool_use": {"name": "mcp__fixfleet__submit_plan", "input": {
                    "repository": meta["upstream"].removeprefix("https://github.com/"),
                    "confidence": 0.9,
                    "affected_files": [{"path": p, "reason": "the code the report points at"} for p in meta["fix_files"]],
                    "root_cause": f"{meta['title']} (upstream fix {meta['fix_commit'][:10]})",
                    "steps": ["Add the upstream regression test", "Apply the upstream fix"],
                    "tests_to_add": [{"path": p, "description": "the upstream regression test"} for p in meta["test_files"]],
                    "test_command": meta["test_command"].replace(".venv/bin/", ""),
                    "risk": "low"}}}]}],
            "final_text": "Plan submitted."}


def executor_scenario(bug: Bug) -> dict[str, Any]:
    meta = bug.meta
    run = meta["test_command"].replace(".venv/bin/", "")

    def writes(files: dict[str, str]) -> list[dict[str, Any]]:
        return [{"tool_use": {"name": "Write", "input": {"file_path": f"{{cwd}}/{path}", "content": text}}}
                for path, text in files.items()]

    return {"name": f"{bug.name}-executor", "model": "claude-sonnet-4-5",
            "usage": {"input_tokens": 6000, "output_tokens": 400},
            "turns": [
                {"name": "write-test", "content": [{"text": "The upstream regression test first."},
                                                   *writes(bug.tests_after)]},
                {"name": "run-red", "content": [{"tool_use": {"name": "Bash", "input": {
                    "command": f"{run} 2>&1 | tail -15", "description": "Run the new test"}}}]},
                {"name": "fix", "content": [{"text": "Applying the fix."}, *writes(bug.fix_after)]},
                {"name": "run-green", "content": [{"tool_use": {"name": "Bash", "input": {
                    "command": f"{run} 2>&1 | tail -15", "description": "Run the tests again"}}}]},
                {"name": "report", "content": [{"tool_use": {"name": "mcp__fixfleet__report_result", "input": {
                    "files_changed": sorted([*bug.tests_after, *bug.fix_after]),
                    "tests_added": list(meta["test_files"]),
                    "test_command": run,
                    "summary": f"Fix: {meta['title']}"[:200]}}}]}],
            "final_text": "Done."}


# -- one bug through the platform ----------------------------------------------------------


@dataclass
class Outcome:
    name: str
    status: str
    red: int | None = None
    green: int | None = None
    suite: int | None = None
    red_to_green: list[str] = field(default_factory=list)
    reason: str = ""
    platform_s: float | None = None
    env_cold_s: float | None = None
    env_warm_s: float | None = None

    @property
    def evidence_ok(self) -> bool:
        return self.status == "COMPLETED" and self.red not in (None, 0) and self.green is not None \
            and self.suite == 0 and bool(self.red_to_green)


def run_bug(bug: Bug, url: str, remote: Path, planner: Any, executor: Any, timeout_s: float = 900) -> Outcome:
    """Submit the bug as a task, approve the plan, wait for the end; read the evidence."""
    import httpx

    from fixfleet.replay.scenario import Scenario

    planner.scenario = Scenario.load(planner_scenario(bug))
    executor.scenario = Scenario.load(executor_scenario(bug))
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    body = {"repo": f"file://{remote}", "title": bug.meta["title"], "body": bug.meta["report"]}
    answer = httpx.post(f"{url}/tasks", json=body, headers=headers, timeout=30)
    answer.raise_for_status()
    key = answer.json()["key"]
    task = wait(url, key, {"AWAITING_APPROVAL"}, timeout_s)
    if task["status"] == "AWAITING_APPROVAL":
        httpx.post(f"{url}/tasks/{key}/approve", json={"plan_version": task["plan_version"]}, headers=headers,
                   timeout=30).raise_for_status()
        task = wait(url, key, {"COMPLETED"}, timeout_s)
    events = httpx.get(f"{url}/tasks/{key}/events", headers=headers, timeout=30).json()
    return outcome_of(bug, task, events)


def wait(url: str, key: str, wanted: set[str], timeout_s: float) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        task = httpx.get(f"{url}/tasks/{key}", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30).json()
        if task["status"] in wanted | {"FAILED", "REJECTED", "CANCELLED"} or time.monotonic() > deadline:
            return task
        time.sleep(0.5)


def outcome_of(bug: Bug, task: dict[str, Any], events: list[dict[str, Any]]) -> Outcome:
    outcome = Outcome(bug.name, task["status"], reason=events[-1]["reason"] if events else "")
    completed = [e for e in events if e["to_status"] == "COMPLETED"]
    failed = [e["data"].get("evidence") for e in events if e["reason"].startswith("verification failed")]
    evidence = completed[-1]["data"]["evidence"] if completed else (failed[-1] if failed else None) or {}
    if evidence:
        outcome.red, outcome.green, outcome.suite = (evidence[k]["exit_code"] for k in ("red", "green", "suite"))
        outcome.red_to_green = evidence.get("red_to_green", [])
    outcome.platform_s = platform_seconds(events)
    return outcome


def platform_seconds(events: list[dict[str, Any]]) -> float | None:
    """Time in the planning and executing stages, minus the time inside Claude sessions."""
    stages, entered = 0.0, None
    for event in events:
        at = _timestamp(event["created_at"])
        if event["to_status"] in ("PLANNING", "EXECUTING"):
            entered = at
        elif event["to_status"] is not None and entered is not None:
            stages += at - entered
            entered = None
    sessions = sum(e["data"].get("seconds", 0.0) for e in events if e["reason"].endswith("session: success"))
    return round(stages - sessions, 2) if stages else None


def _timestamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def platform_env(root: Path) -> dict[str, str]:
    (root / "no-mcp.json").write_text('{"mcpServers": {}}')
    return {"FIXFLEET_API_TOKENS": json.dumps([{"name": "operator", "token": API_TOKEN,
                                               "scopes": ["read", "submit", "approve"]}]),
            "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]), "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"),
            "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{root}/*"]),
            "FIXFLEET_MAX_ATTEMPTS": "1", "ANTHROPIC_API_KEY": "realbugs-model-key"}
