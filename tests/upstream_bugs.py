"""Real upstream bug fixes (tests/realbugs/, see its README) and how one goes through the platform.

Where a fixture's code comes from: a vendored tarball, or a fetched upstream snapshot.

A fixture directory under tests/realbugs/ holds bug.yaml. Either it also holds `source.tar.gz`,
`test.patch` and `fix.patch` (vendored), or it holds only bug.yaml (metadata only) and its code
is materialised on this machine from a bare git snapshot of the upstream repository: the buggy
commit's tree (every file, checked out through a scratch index), and the upstream diff from the
buggy to the fix commit restricted to bug.yaml's test files, then to its fix files. Snapshots are
looked up under $REALBUGS_SNAPSHOTS (default /work/.mirror), in `<owner>+<name>/` at any depth up
to three, and must hold both commits.

How a bug goes through the platform: a local git remote from the buggy tree, scripted planner
and executor sessions that apply the upstream test and then the upstream fix, and the outcome
read back from the task API. tests/test_realbugs.py asserts each vendored bug's outcome;
`python -m bench.realbugs` runs them all and prints the figures.

Also a command for tests/realbugs/verify_fixture.sh (needs only PyYAML):
    python -m tests.upstream_bugs tree <slug> <target-dir> [test] [fix]
    python -m tests.upstream_bugs status
"""

from __future__ import annotations

import base64
import json
import statistics
from collections import Counter
import shutil
import time
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUGS_DIR = Path(__file__).resolve().parents[1] / "tests" / "realbugs"
SNAPSHOTS_ENV = "REALBUGS_SNAPSHOTS"
DEFAULT_SNAPSHOTS = Path("/work/.mirror")
GITHUB_URL = re.compile(r"https://github\.com/(?P<repo>[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+?)(?:\.git)?/?")


class SnapshotMissing(RuntimeError):
    """The upstream snapshot a metadata-only fixture needs is not on this machine."""


def snapshots_root() -> Path:
    return Path(os.environ.get(SNAPSHOTS_ENV) or DEFAULT_SNAPSHOTS)


def repository_of(upstream: str) -> str:
    """'https://github.com/owner/name' -> 'owner/name' (names as GitHub allows them, no '..')."""
    match = GITHUB_URL.fullmatch(upstream)
    if not match or ".." in match["repo"]:
        raise ValueError(f"upstream is not a GitHub repository URL: {upstream!r}")
    return match["repo"]


def fetch_line(upstream: str) -> str:
    return f"fetch github:{repository_of(upstream)}"


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def find_git_dir(upstream: str, commits: list[str], root: Path | None = None) -> Path | None:
    """The bare (or non-bare) git directory of `upstream`'s snapshot that holds every commit."""
    owner, name = repository_of(upstream).split("/")
    base = (root or snapshots_root()) / f"{owner}+{name}"
    if not base.is_dir():
        return None
    candidates = [base] + sorted(p for depth in ("*", "*/*", "*/*/*") for p in base.glob(depth) if p.is_dir())
    for candidate in candidates:
        if _is_git_dir(candidate) and all(_has_commit(candidate, c) for c in commits):
            return candidate
    return None


def _has_commit(git_dir: Path, commit: str) -> bool:
    probe = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def checkout_tree(git_dir: Path, commit: str, target: Path) -> None:
    """Every file of `commit` into `target`, through a scratch index: unlike `git archive` this
    keeps the files `.gitattributes` marks export-ignore and leaves export-subst text alone."""
    with tempfile.TemporaryDirectory(prefix="realbug-index-") as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index")}
        for args in (["read-tree", commit], ["--work-tree", str(target), "checkout-index", "--all", "--force"]):
            done = subprocess.run(["git", "--git-dir", str(git_dir), *args], env=env, capture_output=True, text=True,
                                  check=False)
            if done.returncode:  # e.g. a blob the snapshot lacks (files of 4 MiB and more are left out)
                raise RuntimeError(f"cannot check out {commit[:12]} from {git_dir}: {done.stderr.strip()[-500:]}")


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, check=True).stdout


@dataclass
class Bug:
    """One real upstream bug: its metadata, where its code comes from, and the files after each patch."""

    name: str
    meta: dict[str, Any]
    directory: Path
    git_dir: Path | None = None  # the snapshot, for a metadata-only fixture that has one here
    tests_after: dict[str, str] = field(default_factory=dict)  # test files with the upstream test applied
    fix_after: dict[str, str] = field(default_factory=dict)  # code files with the upstream fix applied

    @property
    def language(self) -> str:
        return self.meta["language"]

    @property
    def vendored(self) -> bool:
        return (self.directory / "source.tar.gz").is_file()

    @property
    def available(self) -> bool:
        return self.vendored or self.git_dir is not None

    @property
    def missing_line(self) -> str:
        """What to do to get this bug's code, when it is not here."""
        return f"{fetch_line(self.meta['upstream'])}  (snapshot looked up under {snapshots_root()})"

    def extract(self, target: Path) -> None:
        """The buggy commit's tree into `target` (no .git)."""
        target.mkdir(parents=True, exist_ok=True)
        if self.vendored:
            with tarfile.open(self.directory / "source.tar.gz") as archive:
                archive.extractall(target, filter="data")
            return
        checkout_tree(self._snapshot(), self.meta["buggy_commit"], target)

    def patch(self, kind: str) -> bytes:
        """The upstream change to the test files (kind 'test') or to the fix files ('fix')."""
        if self.vendored:
            return (self.directory / f"{kind}.patch").read_bytes()
        paths = self.meta["test_files" if kind == "test" else "fix_files"]
        return _git(self._snapshot(), "diff", "--no-color", "--no-ext-diff", "--no-renames",
                    self.meta["buggy_commit"], self.meta["fix_commit"], "--", *paths)

    def materialise(self, target: Path, *kinds: str) -> None:
        """The buggy tree in `target`, with the named patches ('test', 'fix') applied in order."""
        self.extract(target)
        for kind in kinds:
            apply_patch(target, self.patch(kind), f"{self.name}: {kind} patch")

    def _snapshot(self) -> Path:
        if self.git_dir is None:
            raise SnapshotMissing(f"{self.name}: no snapshot of {self.meta['upstream']}; {self.missing_line}")
        return self.git_dir


def apply_patch(tree: Path, patch: bytes, what: str) -> None:
    if not patch.strip():
        raise ValueError(f"{what} is empty: check bug.yaml's commits and file lists")
    done = subprocess.run(["patch", "-s", "-p1", "--no-backup-if-mismatch"], cwd=tree, input=patch,
                          capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{what} does not apply: {done.stdout.decode()[-500:]}{done.stderr.decode()[-500:]}")


def load_bug(directory: Path, snapshots: Path | None = None) -> Bug:
    meta = yaml.safe_load((directory / "bug.yaml").read_text())
    bug = Bug(meta["name"], meta, directory)
    if not bug.vendored:
        bug.git_dir = find_git_dir(meta["upstream"], [meta["buggy_commit"], meta["fix_commit"]], snapshots)
    return bug


def load_all(only: list[str] | None = None, bugs_dir: Path = BUGS_DIR, snapshots: Path | None = None) -> list[Bug]:
    """Every fixture (or those named), available or not, in name order."""
    directories = sorted(p for p in bugs_dir.iterdir() if (p / "bug.yaml").is_file())
    bugs = [load_bug(d, snapshots) for d in directories]
    unknown = set(only or ()) - {b.name for b in bugs}
    if unknown:
        raise SystemExit(f"no such real bug: {', '.join(sorted(unknown))} (known: {', '.join(b.name for b in bugs)})")
    return [b for b in bugs if not only or b.name in only]


def with_contents(bug: Bug) -> Bug:
    """Apply the patches once in a scratch tree and keep the files they touch."""
    with tempfile.TemporaryDirectory(prefix="realbug-") as scratch:
        tree = Path(scratch)
        bug.materialise(tree, "test")
        bug.tests_after = {p: (tree / p).read_text() for p in bug.meta["test_files"]}
        apply_patch(tree, bug.patch("fix"), f"{bug.name}: fix patch")
        bug.fix_after = {p: (tree / p).read_text() for p in bug.meta["fix_files"]}
    return bug


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
    cross_check: str | None = None  # the path the RED->GREEN tests were run again by
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
    outcome.cross_check = (evidence.get("cross_check") or {}).get("method")


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


def remote_of(bug: Bug, root: Path) -> Path:
    """Where make_remote(bug, root / "remotes") puts the bug's remote."""
    return root / "remotes" / f"{bug.name}.git"


def platform_env(root: Path, bugs: list[Bug] = ()) -> dict[str, str]:
    """The platform's settings for the bench: an operator token, local remotes under `root`, and
    the operator's word for a repository that needs one (bug.yaml `repo_config`: what
    FIXFLEET_REPO_CONFIGS says for a repository its operator cannot change)."""
    (root / "no-mcp.json").write_text('{"mcpServers": {}}')
    configs = {f"file://{remote_of(b, root)}": b.meta["repo_config"] for b in bugs if b.meta.get("repo_config")}
    return {"FIXFLEET_API_TOKENS": json.dumps([{"name": "operator", "token": API_TOKEN,
                                               "scopes": ["read", "submit", "approve"]}]),
            "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]), "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"),
            "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{root}/*"]),
            "FIXFLEET_REPO_CONFIGS": json.dumps(configs),
            "FIXFLEET_MAX_ATTEMPTS": "1", "ANTHROPIC_API_KEY": "realbugs-model-key"}


def summary(outcomes: list[Outcome], missing: int) -> dict[str, Any]:
    overheads = [o.overhead_s for o in outcomes if o.overhead_s is not None]
    colds = [o.env_cold_s for o in outcomes if o.env_cold_s is not None]
    warms = [o.env_warm_s for o in outcomes if o.env_warm_s is not None]
    return {
        "bugs": len(outcomes), "completed": sum(o.status == "COMPLETED" for o in outcomes),
        "evidence_ok": sum(o.evidence_ok for o in outcomes), "missing": missing,
        "preexisting": sum(bool(o.preexisting_failures) for o in outcomes),
        "flaky": sum(bool(o.flaky) for o in outcomes),
        "cross_check": dict(Counter(o.cross_check for o in outcomes if o.cross_check)),
        "env_cold_s": round(statistics.median(colds), 2) if colds else None,
        "env_warm_s": round(max(warms), 4) if warms else None,
        "overhead_p50_s": round(statistics.median(overheads), 2) if overheads else None,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["tree"] and len(argv) >= 3:
        bug = load_bug(BUGS_DIR / argv[1])
        if not bug.available:
            print(f"{bug.name}: snapshot missing; get it with: {bug.missing_line}", file=sys.stderr)
            return 3
        bug.materialise(Path(argv[2]), *argv[3:])
        return 0
    if argv == ["status"]:
        for bug in load_all():
            where = "vendored" if bug.vendored else (str(bug.git_dir) if bug.git_dir else f"MISSING: {bug.missing_line}")
            print(f"{bug.name:28} {where}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
