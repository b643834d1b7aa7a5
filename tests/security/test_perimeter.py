"""The sandbox's perimeter against the repository's own code and a hostile agent (issue #20), on
the whole platform: real Ray, Postgres, Redis, git, bubblewrap and the claude CLI; the scripted
model plays the agent, which does what an attacker would: it hides its commands from the
permission tripwire (awk's system() running a base64 script: the tripwire is not the boundary),
so every attempt reaches the perimeter itself.

- The repository's `.fixfleet.yml` allows its tests this node (by address and by a name that
  resolves to it, at the port of the Ray head listening there), a private address and pypi.org:
  the planner curls them all through the egress proxy. Only pypi.org is reached.
- The planner sends the model proxy what the CLI never needs (files, batches, admin paths,
  `..`, `\\`, an absolute-form request line, garbage): all answered by the proxy; the scripted
  model server sees none of them.
- The planner starts a fork storm: it is capped by the sandbox's process limit.
- The executor writes a 570 MB change (300 files of 1.9 MB) and a 2,000-deep tree: both are
  refused, the executor process's peak memory stays flat, and the checkout is deleted.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from fixfleet.replay import ReplayServer
from fixfleet.replay.scenario import Scenario
from fixfleet.workspace.egress import node_addresses
from fixfleet.workspace.model_proxy import ENDPOINTS
from tests.memory import MiB, peak, reset_peak
from tests.world import Credentials, World, platform_world

pytestmark = pytest.mark.e2e
CREDENTIALS = Credentials(github_token="ghp_perimeterCANARY0123456789abcdefghij", slack_token="xoxb-perimeter-canary-31",
                          jira_token="jira-perimeter-canary-32", model_key="sk-ant-api03-perimeter-canary-model-key",
                          api_token="api-perimeter-canary-33",
                          secrets={"github": "gh-hook-perimeter-34", "sentry": "sentry-hook-perimeter-35",
                                   "jira": "jira-hook-perimeter-36"})
PRIVATE = "10.255.255.1"
PLAN = {"repository": "acme/statskit", "confidence": 0.9, "risk": "low",
        "affected_files": [{"path": "statskit/mean.py", "reason": "divides by len(values)"}],
        "root_cause": "mean() divides by zero for an empty list", "steps": ["Return 0.0 for an empty list"],
        "tests_to_add": [{"path": "tests/test_mean_empty.py", "description": "mean([]) == 0.0"}],
        "test_command": "python -m pytest -q"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[World]:
    with platform_world(tmp_path_factory.mktemp("perimeter"), database_url, redis_url, CREDENTIALS) as world:
        yield world


@pytest.fixture(scope="module")
def node_service(world: World) -> tuple[str, int]:
    """A platform service listening on this node's own address: the Ray head (GCS) the platform
    started. The repository names it in its `.fixfleet.yml`, with a private address and pypi.org."""
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    node = ipaddress.ip_address(host)
    assert any(node in network for network in node_addresses()), f"the Ray head {host} is not on this node"
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # it is there: the attack has a real target
    allow = [f"{node}:{port}", f"{int(node)}:{port}", f"{PRIVATE}:80", "pypi.org"]
    commit_file(world, ".fixfleet.yml", "network:\n  test: " + json.dumps(allow) + "\n")
    return str(node), int(port)


def commit_file(world: World, path: str, content: str) -> None:
    work = world.root / "statskit"
    (work / path).write_text(content)
    git = ["git", "-C", str(work), "-c", "user.name=statskit", "-c", "user.email=dev@statskit.invalid"]
    subprocess.run([*git, "add", path], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", f"add {path}"], check=True, capture_output=True)
    subprocess.run([*git, "push", "-q", str(world.remote), "HEAD:main"], check=True, capture_output=True)


def hidden(script: str) -> dict[str, Any]:
    """A Bash call that runs `script` out of the permission tripwire's sight, as an attacker would."""
    encoded = base64.b64encode(script.encode()).decode()
    command = f"awk 'BEGIN{{system(\"echo {encoded} | base64 -d > /tmp/a.sh; bash /tmp/a.sh\")}}'"
    return {"content": [{"tool_use": {"name": "Bash", "input": {"command": command, "description": "look around"}}}]}


def planner_doing(*scripts: str) -> Scenario:
    turns = [hidden(script) for script in scripts]
    turns.append({"content": [{"tool_use": {"name": "mcp__fixfleet__submit_plan", "input": PLAN}}]})
    return Scenario.load({"name": "hostile-planner", "model": "claude-sonnet-4-5", "turns": turns, "final_text": "done"})


def executor_doing(script: str) -> Scenario:
    return Scenario.load({"name": "hostile-executor", "model": "claude-sonnet-4-5", "final_text": "done", "turns": [
        hidden(script),
        {"content": [{"tool_use": {"name": "mcp__fixfleet__report_result", "input": {
            "files_changed": ["statskit/mean.py"], "tests_added": ["tests/test_mean.py::test_mean"],
            "test_command": "python -m pytest -q", "summary": "mean() no longer divides by zero"}}}]}]})


def planned(world: World, scenario: Scenario) -> tuple[str, str]:
    """Run a task's planner on `scenario`; (task key, what its tools printed)."""
    world.planner_model.clear()
    world.planner_model.scenario = scenario
    key = world.post_alert()
    world.wait_for(key, {"AWAITING_APPROVAL"}, timeout_s=600)
    return key, tool_output(world.planner_model)


def tool_output(server: ReplayServer) -> str:
    """What the agent's tools printed: the tool results in the session's last request (it
    carries the whole conversation), each once."""
    texts = []
    for message in server.main_requests()[-1].body["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "tool_result":
                content = block.get("content")
                texts.append(content if isinstance(content, str) else
                             "\n".join(part.get("text", "") for part in content or []))
    return "\n".join(texts)


def lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


def test_the_egress_proxy_never_reaches_the_node_or_a_private_address(world: World,
                                                                       node_service: tuple[str, int]) -> None:
    host, port = node_service
    targets = [f"http://{host}:{port}/", f"http://{int(ipaddress.ip_address(host))}:{port}/", f"http://{PRIVATE}/",
               "https://pypi.org/simple/pip/"]
    script = "\n".join(f"printf 'EGRESS {t} -> '; curl -sS -m 20 -o /tmp/body -w '%{{http_code}} ' {t} 2>&1; "
                       "head -c 200 /tmp/body | tr '\\n' ' '; echo" for t in targets)
    key, output = planned(world, planner_doing("echo proxy=$HTTPS_PROXY", script))
    print("\n".join(lines(output, "EGRESS ")))
    tried = {line.split(" ")[1]: line for line in lines(output, "EGRESS ")}
    assert set(tried) == set(targets)
    for target in targets[:2]:
        assert " -> 403 " in tried[target] and ("this node's own address" in tried[target]
                                                or "platform service" in tried[target]), tried[target]
    assert " -> 403 " in tried[targets[2]] and "a private address" in tried[targets[2]]
    assert re.search(r" -> [1-5]\d\d ", tried[targets[3]]) and " -> 403 " not in tried[targets[3]]  # the way out works
    world.api("POST", f"/tasks/{key}/cancel", json={"reason": "test done"})


MODEL_ATTEMPTS = r"""
B=$ANTHROPIC_BASE_URL; K="x-api-key: $ANTHROPIC_API_KEY"
try() { what=$1; shift; printf 'MODEL %s -> ' "$what"; curl -s -m 10 -o /tmp/b -w '%{http_code} ' "$@"; head -c 150 /tmp/b | tr '\n' ' '; echo; }
try 'GET /v1/files' -H "$K" "$B/v1/files"
try 'POST /v1/files' -H "$K" -d '{}' "$B/v1/files"
try 'POST /v1/messages/batches' -H "$K" -d '{}' "$B/v1/messages/batches"
try 'GET /v1/organizations/api_keys' -H "$K" "$B/v1/organizations/api_keys"
try 'POST /v1/messages/../files' --path-as-is -H "$K" -d '{}' "$B/v1/messages/../files"
try 'POST /v1/messages/..%2ffiles' -H "$K" -d '{}' "$B/v1/messages/..%2ffiles"
try 'POST /v1/messages%5c..%5cfiles' -H "$K" -d '{}' "$B/v1/messages%5c..%5cfiles"
try 'GET http://api.anthropic.com/v1/files (absolute form)' -H "$K" --request-target http://api.anthropic.com/v1/files "$B/"
raw() { what=$1; printf 'MODEL %s -> ' "$what"; exec 3<>/dev/tcp/127.0.0.1/${B##*:}; printf "$2" "$ANTHROPIC_API_KEY" >&3; head -1 <&3 | tr -d '\r'; exec 3>&-; }
raw 'POST /v1/messages\..\files (raw)' 'POST /v1/messages\\..\\files HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'
raw 'garbage request line' 'GARBAGE %s\r\n\r\n'
"""


def test_the_model_proxy_forwards_nothing_but_the_clis_endpoints(world: World) -> None:
    key, output = planned(world, planner_doing(MODEL_ATTEMPTS))
    attempts = lines(output, "MODEL ")
    print("\n".join(attempts))
    assert len(attempts) == 10
    for attempt in attempts:
        expected = "400" if "absolute form" in attempt or "garbage" in attempt else "403"
        assert re.search(rf" -> (HTTP/1\.[01] )?{expected}\b", attempt), attempt
    seen = {(r.method, r.path) for r in world.planner_model.requests}
    print(f"the scripted model server saw: {sorted(seen)}")
    assert seen <= ENDPOINTS  # the CLI's own requests only: not one of the attempts reached it
    assert CREDENTIALS.model_key not in output
    world.api("POST", f"/tasks/{key}/cancel", json={"reason": "test done"})


STORM = """
import os, signal, time
started, failure, children = 0, "none", []
for _ in range(2000):
    try:
        pid = os.fork()
    except OSError as error:
        failure = error.strerror
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    children.append(pid)
print(f"STORM tried=2000 started={len(children)} failure={failure}", flush=True)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


def test_a_fork_storm_is_capped(world: World) -> None:
    script = f"echo {base64.b64encode(STORM.encode()).decode()} | base64 -d > /tmp/storm.py; python3 /tmp/storm.py"
    key, output = planned(world, planner_doing(script))
    [line] = lines(output, "STORM ")
    print(line)
    started = int(re.search(r"started=(\d+)", line)[1])
    limit = world.platform.settings.sandbox_max_processes
    assert started < limit and "failure=Resource temporarily unavailable" in line, (line, limit)
    world.api("POST", f"/tasks/{key}/cancel", json={"reason": "test done"})


def executor_pid(world: World) -> int:
    [executor] = [agent for agent in world.platform.agents() if agent.role == "executor"]
    assert executor.pid is not None
    return executor.pid


def refused_change(world: World, script: str) -> tuple[str, str, int]:
    """Approve a task whose executor runs `script`; (its key, why the change was refused, how far
    the executor process's resident memory peaked above where it was before)."""
    world.planner_model.scenario = Scenario.load("demo_planner")
    world.executor_model.clear()
    world.executor_model.scenario = executor_doing(script)
    key = world.post_alert()
    task = world.wait_for(key, {"AWAITING_APPROVAL"}, timeout_s=600)
    pid = executor_pid(world)
    before = reset_peak(pid)
    world.api("POST", f"/tasks/{key}/approve", json={"plan_version": task["plan_version"]})
    world.wait_for(key, {"FAILED"}, timeout_s=600)
    grew = peak(pid) - before
    reasons = [e["reason"] for e in world.events(key) if e["reason"].startswith("change refused")]
    assert reasons, "\n".join(e["reason"][:300] for e in world.events(key))
    return key, reasons[0], grew


def checkouts_of(world: World, key: str) -> list[Path]:
    return list(world.platform.settings.home.glob(f"agents/*/workspaces/checkouts/{key}-*"))


def test_a_570_mb_change_is_refused_with_the_executors_memory_flat(world: World) -> None:
    script = "mkdir -p data; for i in $(seq 300); do truncate -s 1900000 data/blob$i.bin; done; du -sh --apparent-size data"
    key, reason, grew = refused_change(world, script)
    print(f"wrote 300 files of 1.9 MB (570 MB): {reason}; the executor's peak memory grew by {grew / MiB:.1f} MiB")
    assert re.search(r"\b544M\s+data\b", tool_output(world.executor_model))  # the agent did write it all
    assert "the limit is 10485760" in reason
    assert grew < 150 * MiB  # far below the 570 MB written (the walk used to read it all)
    assert checkouts_of(world, key) == []


DEEP = """import os
fd = os.open(".", os.O_RDONLY)
for depth in range(1, 2001):
    os.mkdir("d", dir_fd=fd)
    inner = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = inner
os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
print("depth", depth)
"""


def test_a_2000_deep_tree_is_refused_and_its_checkout_deleted(world: World) -> None:
    script = "python3 - <<'EOF'\n" + DEEP + "EOF\n"
    key, reason, grew = refused_change(world, script)
    print(f"wrote a tree 2,000 directories deep: {reason}; the executor's peak memory grew by {grew / MiB:.1f} MiB")
    assert "depth 2000" in tool_output(world.executor_model)  # the agent did make it that deep
    assert "more than 128 directories deep" in reason
    assert grew < 150 * MiB
    assert checkouts_of(world, key) == []  # removed, whatever its depth
