"""The sandbox holds: attacks from inside an agent's session and from inside a verification run.

Each test plants canaries where a hostile agent or repository would look (the platform's
environment, FIXFLEET_HOME with another task's transcript, another checkout, a mirror,
/tmp/ray, ~/.ray), listens on the ports of the platform's services, then runs
tests/security/attack.py inside the sandbox: read every process's environment, read the
canaries, write outside the checkout, connect to Postgres, Redis, the ingress and Ray, import
the platform, leave a process behind. Every attempt must be refused; the report shows what was
tried and what happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from actors.credentials import TokenManager
from actors.session import ClaudeSessions
from actors.session_models import SessionLimits, SessionRequest
from fixfleet.config import Settings
from fixfleet.replay import ReplayServer
from fixfleet.replay.scenario import Scenario
from fixfleet.workspace.changes import ChangeSet, FileChange
from fixfleet.workspace.environments import EnvironmentBuilder
from fixfleet.workspace.mirrors import WorkspaceManager
from fixfleet.workspace.sandbox import Sandbox, SandboxSpec
from fixfleet.workspace.verify import EvidenceError, Verifier
from tests.sandbox_env import python_env_spec

pytestmark = pytest.mark.e2e
ATTACK = (Path(__file__).parent / "attack.py").read_text()
CANARIES = {"GITHUB_TOKEN": "ghp_sandboxcanary0123456789abcdefghijklm",
            "FIXFLEET_API_TOKENS": '[{"name": "ops", "token": "api-canary-7d1f"}]',
            "ANTHROPIC_API_KEY": "sk-ant-api03-sandbox-canary-key-000"}


@dataclass
class Target:
    """The host as an attacker would like to find it."""

    root: Path
    config: dict
    listeners: list[socket.socket]
    planted: list[Path]

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        for path in self.planted:
            shutil.rmtree(path, ignore_errors=True)


def listen() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.listen()
    return listener


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "fixfleet-home"
    transcript = home / "agents" / "executor-2" / "session" / "transcripts" / "other-task.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text(CANARIES["GITHUB_TOKEN"])
    other_checkout = home / "agents" / "executor-2" / "workspaces" / "checkouts" / "FF-9-exec"
    other_checkout.mkdir(parents=True)
    (other_checkout / "secret.py").write_text("SECRET = 1\n")
    mirror = home / "cache" / "mirrors" / "acme-0123456789" / "git"  # the node's mirrors
    (mirror / "hooks").mkdir(parents=True)
    tag = uuid.uuid4().hex[:8]
    ray_log = Path("/tmp/ray") / f"fixfleet-canary-{tag}" / "logs" / "runtime_env_agent.log"
    ray_log.parent.mkdir(parents=True)
    ray_log.write_text(CANARIES["ANTHROPIC_API_KEY"])
    dot_ray = Path.home() / ".ray" / f"fixfleet-canary-{tag}"
    dot_ray.mkdir(parents=True)
    (dot_ray / "auth_token").write_text("ray-canary")
    ingress, ray_gcs = listen(), listen()
    config = {
        "secret_hashes": [hashlib.sha256(v.encode()).hexdigest() for v in CANARIES.values()],
        "host_pid": os.getpid(), "marker": f"fixfleet-survivor-{tag}",
        "paths": {"FIXFLEET_HOME": str(home), "another task's transcript": str(transcript),
                  "another checkout": str(other_checkout / "secret.py"), "a mirror": str(mirror),
                  "/tmp/ray": str(ray_log), "~/.ray": str(dot_ray / "auth_token"),
                  "the platform's site-packages": str(Path(psutil.__file__).parent)},
        "writes": {"/usr": "/usr/fixfleet-pwned", "/etc": "/etc/fixfleet-pwned", "/env": "/env/pwned",
                   "FIXFLEET_HOME": str(home / "pwned"), "another checkout": str(other_checkout / "pwned.py")},
        "ports": {"Postgres": 5432, "Redis": 6379, "the ingress": ingress.getsockname()[1],
                  "Ray": ray_gcs.getsockname()[1]},
    }
    target = Target(tmp_path, config, [ingress, ray_gcs], [ray_log.parent.parent, dot_ray])
    yield target
    target.close()


def report_from(text: str) -> dict[str, str]:
    start = text.rindex("ATTACK-REPORT {") + len("ATTACK-REPORT ")
    report, _ = json.JSONDecoder().raw_decode(text[start:])
    return report


def assert_contained(report: dict[str, str], target: Target) -> None:
    tried = {"environ of every visible process", "own environment", "import the platform", "start a survivor",
             *(f"read {n}" for n in target.config["paths"]), *(f"write {n}" for n in target.config["writes"]),
             *(f"connect {n}" for n in target.config["ports"])}
    assert tried <= set(report), tried - set(report)
    leaks = {name: result for name, result in report.items() if not result.startswith("refused")}
    assert leaks == {}, leaks
    assert not Path("/usr/fixfleet-pwned").exists() and not Path("/etc/fixfleet-pwned").exists()
    assert not (target.root / "fixfleet-home" / "pwned").exists()
    deadline = time.monotonic() + 5
    while survivors(target.config["marker"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert survivors(target.config["marker"]) == []


def survivors(marker: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(process.info["cmdline"] or []):
            found.append(process.pid)
    return found


# -- inside a verification run ------------------------------------------------------------------


def make_remote(root: Path) -> Path:
    work, remote = root / "calc", root / "calc.git"
    (work / "calc").mkdir(parents=True)
    (work / "tests").mkdir()
    (work / "calc" / "__init__.py").write_text("def add(a, b):\n    return a - b\n")
    (work / "tests" / "test_calc.py").write_text("def test_nothing():\n    pass\n")
    (work / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "calc"]):
        subprocess.run([*git, *args], cwd=work, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True)
    return remote


def test_a_repository_test_run_by_the_verifier_is_contained(target: Target) -> None:
    remote = make_remote(target.root)
    hostile_test = (ATTACK.replace('if __name__ == "__main__":\n    main(json.loads(sys.argv[1]))\n', "")
                    + f"\n\nCONFIG = {target.config!r}\n\n\ndef test_attack():\n    main(CONFIG)\n    assert False\n")
    change = ChangeSet(base_sha="", files=[FileChange(path="tests/test_attack.py", content=hostile_test.encode()),
                                           FileChange(path="calc/__init__.py", content=b"def add(a, b):\n    return a + b\n")])

    async def verify() -> EvidenceError:
        workspaces = WorkspaceManager(target.root / "workspaces", 10**12, warm_spares=0)
        sandbox = Sandbox(target.root / "sandbox")
        verifier = Verifier(workspaces, EnvironmentBuilder(workspaces, sandbox), sandbox)
        base = await workspaces.resolve(remote.as_uri())
        try:
            await verifier.verify(remote.as_uri(), change.model_copy(update={"base_sha": base}), name="FF-1")
        except EvidenceError as exc:
            return exc
        finally:
            await workspaces.close()
        raise AssertionError("a test that asserts False cannot verify")

    error = asyncio.run(verify())
    assert "GREEN check failed" in str(error)  # RED ran the hostile test (it failed), GREEN too
    assert_contained(report_from(error.evidence["red"]["output_tail"]), target)


# -- inside an agent's session --------------------------------------------------------------------


def run_hostile_session(target: Target, role: str, turns: list[dict], spec_for=None,
                        with_git: bool = False) -> tuple[ReplayServer, Path]:
    workspace = target.root / "checkout"
    workspace.mkdir()
    (workspace / "README.md").write_text("a checkout\n")
    if with_git:  # as the planner's checkout has: a private repository of the branch's history
        for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "c"]):
            subprocess.run(["git", *args], cwd=workspace, check=True, capture_output=True)
    scenario = Scenario.load({"name": "hostile", "model": "claude-sonnet-4-5", "turns": turns, "final_text": "done"})
    with ReplayServer(scenario) as server:
        settings = Settings(_env_file=None, anthropic_base_url=server.url, anthropic_api_key=CANARIES["ANTHROPIC_API_KEY"],
                            github_token=CANARIES["GITHUB_TOKEN"])
        claude = ClaudeSessions(target.root / "agent", settings, TokenManager(settings), sandbox=Sandbox(target.root / "sb"),
                               mcp_template=_no_mcp(target.root))
        request = SessionRequest(role=role, worktree=workspace, prompt="Fix the bug in README.md",
                                 limits=SessionLimits(max_turns=10, max_budget_usd=1, timeout_s=60),
                                 require_structured_output=False)
        spec = spec_for(workspace) if spec_for else SandboxSpec(workspace=workspace)

        async def session() -> None:
            try:
                await claude.run(request, spec)
            finally:
                await claude.close()

        asyncio.run(session())
    return server, workspace


def _no_mcp(root: Path) -> Path:
    path = root / "mcp.json"
    path.write_text('{"mcpServers": {}}')
    return path


def tool_results(server: ReplayServer) -> str:
    """Every tool result the CLI sent to the model, as plain text."""
    texts = []
    for request in server.main_requests():
        for message in request.body["messages"]:
            for block in message["content"] if isinstance(message["content"], list) else []:
                if block.get("type") == "tool_result":
                    content = block.get("content")
                    texts.append(content if isinstance(content, str) else
                                 "\n".join(part.get("text", "") for part in content or []))
    return "\n".join(texts)


def test_a_hostile_agent_session_is_contained(target: Target, sandbox_pytest_env: Path) -> None:
    turns = [
        {"content": [{"tool_use": {"name": "Write", "input": {"file_path": "{cwd}/attack.py", "content": ATTACK}}},
                     {"tool_use": {"name": "Write", "input": {"file_path": "{cwd}/config.json",
                                                              "content": json.dumps(target.config)}}}]},
        {"content": [{"tool_use": {"name": "Bash", "input": {
            "command": 'python attack.py "$(cat config.json)"', "description": "look around"}}}]},
        {"content": [{"tool_use": {"name": "Bash", "input": {"command": "env; ls -la /home/agent /opt /run",
                                                             "description": "what is here"}}}]},
    ]
    server, _ = run_hostile_session(target, "executor", turns,
                                    spec_for=lambda workspace: python_env_spec(workspace, sandbox_pytest_env))
    seen = tool_results(server)
    assert_contained(report_from(seen), target)
    sent = "\n".join(json.dumps(request.body) for request in server.requests)  # what the CLI wrote
    for value in CANARIES.values():  # the model key too: the CLI holds a per-session dummy
        assert value not in sent
    assert all(request.headers.get("x-api-key") == CANARIES["ANTHROPIC_API_KEY"]  # added by the proxy
               for request in server.main_requests())
    assert "ANTHROPIC_API_KEY=sk-ant-fixfleet-session-" in seen  # what it holds instead


def test_the_planners_read_only_checkout_cannot_be_written_by_any_program(target: Target) -> None:
    turns = [
        {"content": [{"tool_use": {"name": "Bash", "input": {
            "command": "awk 'BEGIN{system(\"echo pwned > /workspace/README.md; touch /workspace/awk-was-here\")}'",
            "description": "awk"}}}]},
        {"content": [{"tool_use": {"name": "Bash", "input": {
            "command": "find . -name README.md -exec sh -c 'echo pwned > {}' \\;", "description": "find"}}}]},
        {"content": [{"tool_use": {"name": "Bash", "input": {
            "command": "git -c core.fsmonitor='touch /workspace/fsmonitor-was-here' status", "description": "git"}}}]},
    ]
    server, workspace = run_hostile_session(target, "planner", turns, with_git=True)
    assert (workspace / "README.md").read_text() == "a checkout\n"
    assert not (workspace / "awk-was-here").exists() and not (workspace / "fsmonitor-was-here").exists()
    assert "Read-only file system" in tool_results(server)
