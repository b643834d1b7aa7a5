"""Real upstream bugs through the whole platform: `python -m bench.realbugs [--only NAME ...]`.

Each bug under tests/realbugs/ is a buggy commit of a public repository, the upstream test
change and the upstream fix, and bug.yaml (see tests/realbugs/README.md). Five are vendored
(a tarball and two patches); the others are metadata only and are materialised here from a
fetched upstream snapshot (bench/realbug_sources.py; $REALBUGS_SNAPSHOTS, default
/work/.mirror). For each bug present this builds a local git remote from the buggy tree, then
drives the real platform (Ray, Serve, a planner and an executor, the real claude CLI in the
sandbox) with scripted model sessions that apply the upstream test and then the upstream fix.
The platform must set the repository up by itself and prove the change (RED, GREEN, suite)
before it pushes. A bug whose snapshot is absent is listed with the line that gets it.

Printed: one JSON object per bug (status; the evidence: fail_to_pass, new_failures,
preexisting_failures, flaky, the RED/GREEN/suite exit codes; the environment's build time cold
and warm, measured apart with the builder the agents use; the platform's own time for the
task, `overhead_s`: planning and execution stages minus the time inside Claude sessions, the
environments' builds and the repository's own test runs), then
one summary object: {"bugs", "completed", "evidence_ok", "missing", "preexisting", "flaky",
"env_cold_s", "env_warm_s", "overhead_p50_s"} ("preexisting"/"flaky": how many bugs' evidence
named pre-existing failures / flaky tests). Evidence written before fail_to_pass existed is read
through `red_to_green`. Goal: every bug completed with fail_to_pass non-empty and new_failures
empty; a warm environment ready in under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.realbug_sources import Bug, fetch_line, load_all, snapshots_root, with_contents
from fixfleet.ports import free_port

API_TOKEN = "realbugs-operator-token"


def load_bugs(only: list[str] | None = None, *, vendored_only: bool = False) -> list[Bug]:
    """The bugs whose code is here, with the files their scripted sessions write."""
    return [with_contents(b) for b in load_all(only) if b.available and (b.vendored or not vendored_only)]


def make_remote(bug: Bug, root: Path) -> Path:
    """A bare git remote whose main branch is the buggy commit's tree."""
    work, remote = root / bug.name, root / f"{bug.name}.git"
    work.mkdir(parents=True)
    bug.extract(work)
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
        return [block for path, text in files.items() for block in _write(path, text)]

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


def _write(path: str, text: str) -> list[dict[str, Any]]:
    """The tool calls that write `text` to `path`. The CLI's Write tool strips trailing whitespace
    from the lines it writes, and some upstream tests compare against output with trailing spaces
    (cleo): such a file goes through Bash, byte for byte, in pieces a command line takes."""
    if not any(line != line.rstrip() for line in text.splitlines()):
        return [{"tool_use": {"name": "Write", "input": {"file_path": f"{{cwd}}/{path}", "content": text}}}]
    encoded = base64.b64encode(text.encode()).decode()
    pieces = [encoded[i:i + 48_000] for i in range(0, len(encoded), 48_000)]
    commands = [f"mkdir -p \"$(dirname '{path}')\" && : > '{path}.b64'",
                *(f"printf %s '{piece}' >> '{path}.b64'" for piece in pieces),
                f"base64 -d '{path}.b64' > '{path}' && rm '{path}.b64'"]
    return [{"tool_use": {"name": "Bash", "input": {"command": command, "description": f"Write {path}"}}}
            for command in commands]


# -- one bug through the platform ----------------------------------------------------------


@dataclass
class Outcome:
    name: str
    status: str
    red: int | None = None
    green: int | None = None
    suite: int | None = None
    fail_to_pass: list[str] = field(default_factory=list)  # failed without the fix, pass with it
    new_failures: list[str] = field(default_factory=list)  # suite failures the base commit did not have
    preexisting_failures: list[str] = field(default_factory=list)  # failing on the base commit already
    flaky: list[str] = field(default_factory=list)  # flipped between runs of the same tree
    reason: str = ""
    overhead_s: float | None = None
    env_cold_s: float | None = None
    env_warm_s: float | None = None

    @property
    def evidence_ok(self) -> bool:
        return self.status == "COMPLETED" and bool(self.fail_to_pass) and not self.new_failures

    def line(self) -> dict[str, Any]:
        return {"bug": self.name, **{k: v for k, v in asdict(self).items() if k != "name"},
                "evidence_ok": self.evidence_ok}


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
        read_evidence(outcome, evidence)
    outcome.overhead_s = platform_seconds(events)
    return outcome


def read_evidence(outcome: Outcome, evidence: dict[str, Any]) -> None:
    """The platform's evidence, as written now (fail_to_pass, new_failures, ...) or before
    (red_to_green only; a failing suite then counts as a new failure)."""
    outcome.red, outcome.green, outcome.suite = ((evidence.get(k) or {}).get("exit_code") for k in ("red", "green", "suite"))
    outcome.fail_to_pass = _names(evidence.get("fail_to_pass", evidence.get("red_to_green")))
    if "new_failures" in evidence:
        outcome.new_failures = _names(evidence["new_failures"])
    elif outcome.suite not in (0, None):
        outcome.new_failures = [f"(the suite exited {outcome.suite})"]
    outcome.preexisting_failures = _names(evidence.get("preexisting_failures"))
    outcome.flaky = _names(evidence.get("flaky"))


def _names(value: Any) -> list[str]:
    """Test ids from a list, or from a mapping keyed by test id."""
    if isinstance(value, dict):
        return sorted(str(k) for k in value)
    return [str(v) for v in value or []]


def platform_seconds(events: list[dict[str, Any]]) -> float | None:
    """The platform's own time: the planning and executing stages, minus the time inside Claude
    sessions (the model's), the environments' builds and the repository's own test runs (the
    evidence's test_seconds: collection, RED, GREEN, the suite, reruns, cross-checks)."""
    stages, entered = 0.0, None
    for event in events:
        at = _timestamp(event["created_at"])
        if event["to_status"] in ("PLANNING", "EXECUTING"):
            entered = at
        elif event["to_status"] is not None and entered is not None:
            stages += at - entered
            entered = None
    sessions = sum(e["data"].get("seconds", 0.0) for e in events if e["reason"].endswith("session: success"))
    builds = sum(e["data"].get("built_s", 0.0) for e in events if e["reason"] == "environment built")
    tests = sum((e["data"].get("evidence") or {}).get("test_seconds", 0.0) for e in events
                if e["to_status"] == "COMPLETED")
    return round(stages - sessions - builds - tests, 2) if stages else None


def _timestamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- environments measured apart --------------------------------------------------------------


async def environment_times(bug: Bug, remote: Path, root: Path) -> tuple[float, float]:
    """Cold: a new builder with empty caches; warm: the same repository again."""
    from fixfleet.workspace.environments import EnvironmentBuilder
    from fixfleet.workspace.mirrors import WorkspaceManager
    from fixfleet.workspace.sandbox import Sandbox

    workspaces = WorkspaceManager(root / "workspaces", 50 * 2**30, warm_spares=0)
    builder = EnvironmentBuilder(workspaces, Sandbox(root / "sandbox"))
    url = f"file://{remote}"
    sha = await workspaces.resolve(url)
    started = time.monotonic()
    await builder.ensure(url, sha)
    cold = time.monotonic() - started
    started = time.monotonic()
    env = await builder.ensure(url, sha)
    warm = time.monotonic() - started
    assert env.reused
    await workspaces.close()
    return round(cold, 2), round(warm, 4)


# -- the platform ------------------------------------------------------------------------------




def platform_env(root: Path) -> dict[str, str]:
    (root / "no-mcp.json").write_text('{"mcpServers": {}}')
    return {"FIXFLEET_API_TOKENS": json.dumps([{"name": "operator", "token": API_TOKEN,
                                               "scopes": ["read", "submit", "approve"]}]),
            "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]), "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"),
            "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{root}/*"]),
            "FIXFLEET_MAX_ATTEMPTS": "1", "ANTHROPIC_API_KEY": "realbugs-model-key"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.realbugs")
    parser.add_argument("--only", nargs="*", help="bug names (default: all)")
    args = parser.parse_args()

    everything = load_all(args.only)
    missing = [b for b in everything if not b.available]
    for bug in missing:
        print(json.dumps({"bug": bug.name, "status": "SNAPSHOT_MISSING", "get": fetch_line(bug.meta["upstream"]),
                          "looked_in": str(snapshots_root())}), flush=True)
    bugs = [b for b in everything if b.available]
    if not bugs:
        print(json.dumps(summary([], len(missing))))
        return
    from fixfleet.config import Settings
    from fixfleet.platform import Platform, PlatformOptions
    from fixfleet.replay import ReplayServer

    root = Path(tempfile.mkdtemp(prefix="bench-realbugs-"))
    outcomes: list[Outcome] = []
    planner, executor = ReplayServer("one_turn").start(), ReplayServer("one_turn").start()
    settings = Settings(home=root / "home", database_url=os.environ.get("DATABASE_URL"),
                        redis_url=os.environ.get("REDIS_URL"))
    options = PlatformOptions(http_port=free_port(), executors=1, env=platform_env(root),
                              planner_overrides={"anthropic_base_url": planner.url},
                              executor_overrides={"anthropic_base_url": executor.url})
    platform = Platform(settings, options)
    try:
        platform.start(progress=lambda line: print(f"  {line}", file=sys.stderr))
        for bug in bugs:
            outcome = run_one(bug, platform.url, root, planner, executor)
            outcomes.append(outcome)
            print(json.dumps(outcome.line()), flush=True)
    finally:
        platform.stop()
        planner.stop()
        executor.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary(outcomes, len(missing))))


def run_one(bug: Bug, url: str, root: Path, planner: Any, executor: Any) -> Outcome:
    """One bug through the platform; a bug that cannot be materialised or run is an ERROR line."""
    print(f"{bug.name}: {'vendored' if bug.vendored else bug.git_dir}", file=sys.stderr)
    try:
        with_contents(bug)
        remote = make_remote(bug, root / "remotes")
        outcome = run_bug(bug, url, remote, planner, executor)
        outcome.env_cold_s, outcome.env_warm_s = asyncio.run(environment_times(bug, remote, root / f"env-{bug.name}"))
    except Exception as error:  # noqa: BLE001 - one bug's failure is reported, the others still run
        return Outcome(bug.name, "ERROR", reason=f"{type(error).__name__}: {error}"[:500])
    return outcome


def summary(outcomes: list[Outcome], missing: int) -> dict[str, Any]:
    overheads = [o.overhead_s for o in outcomes if o.overhead_s is not None]
    colds = [o.env_cold_s for o in outcomes if o.env_cold_s is not None]
    warms = [o.env_warm_s for o in outcomes if o.env_warm_s is not None]
    return {
        "bugs": len(outcomes), "completed": sum(o.status == "COMPLETED" for o in outcomes),
        "evidence_ok": sum(o.evidence_ok for o in outcomes), "missing": missing,
        "preexisting": sum(bool(o.preexisting_failures) for o in outcomes),
        "flaky": sum(bool(o.flaky) for o in outcomes),
        "env_cold_s": round(statistics.median(colds), 2) if colds else None,
        "env_warm_s": round(max(warms), 4) if warms else None,
        "overhead_p50_s": round(statistics.median(overheads), 2) if overheads else None,
    }


if __name__ == "__main__":
    main()
