"""The sandbox's own behaviour: what it mounts, how it starts, what it says when it cannot.

The attacks from inside it are in tests/security/test_sandbox.py.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from fixfleet.workspace.sandbox import Sandbox, SandboxSpec, SandboxUnavailable


def run(sandbox: Sandbox, spec: SandboxSpec, command: list[str], timeout_s: float = 30):  # noqa: ANN201
    return asyncio.run(sandbox.run(spec, command, timeout_s=timeout_s))


def test_only_the_checkout_is_writable_and_the_environment_is_what_was_set(tmp_path: Path) -> None:
    sandbox, tree = Sandbox(tmp_path / "state"), tmp_path / "tree"
    tree.mkdir()
    spec = SandboxSpec(workspace=tree, env={"TZ": "UTC"})
    result = run(sandbox, spec, ["bash", "-c", "id -u; pwd; echo x > /workspace/out; touch /opt/x /usr/x 2>&1; "
                                            "env | sort; cat /proc/1/environ | wc -c"])
    lines = result.output_tail.splitlines()
    assert lines[:2] == ["1000", "/workspace"] and (tree / "out").read_text() == "x\n"
    assert "Read-only file system" in result.output_tail
    names = {line.split("=", 1)[0] for line in lines if "=" in line}
    assert names <= {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR", "SHELL", "PYTHONDONTWRITEBYTECODE", "CI",
                     "TZ", "PWD", "SHLVL", "_", "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
                     "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "GIT_SSL_CAINFO", "OLDPWD"}, names
    assert lines[-1] == "0"  # bubblewrap itself started with an empty environment


def test_a_read_only_checkout_is_read_only(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    result = run(Sandbox(tmp_path / "state"), SandboxSpec(workspace=tree, workspace_writable=False),
                 ["bash", "-c", "echo x > /workspace/out"])
    assert result.exit_code != 0 and not (tree / "out").exists()


def test_the_platforms_interpreter_is_there_without_its_packages(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    prefix = Path(sys.base_prefix)
    python = prefix / "bin" / "python3"
    result = run(Sandbox(tmp_path / "state"), SandboxSpec(workspace=tree, python_prefix=prefix),
                 [str(python), "-c", "import sys, json; print(json.dumps(sys.version_info[:2])); import pydantic"])
    assert "[3, 11]" in result.output_tail and "No module named 'pydantic'" in result.output_tail


def test_a_timeout_kills_the_whole_sandbox(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    started = time.monotonic()
    result = run(Sandbox(tmp_path / "state"), SandboxSpec(workspace=tree),
                 ["bash", "-c", "sleep 300 & sleep 301"], timeout_s=1)
    assert result.timed_out and result.exit_code == 124 and time.monotonic() - started < 60  # not the 300 s
    assert "timed out after 1s" in result.output_tail


def test_missing_bubblewrap_is_refused_with_what_to_install(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "state")
    sandbox.bwrap = None
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as refused:
        asyncio.run(sandbox.check())
    assert "FIXFLEET_SANDBOX=off" in str(refused.value)


def test_a_container_without_user_namespaces_is_refused_with_the_reason(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"  # what bubblewrap says in a container that forbids namespaces
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    sandbox = Sandbox(tmp_path / "state")
    sandbox.bwrap = str(fake)
    with pytest.raises(SandboxUnavailable) as refused:
        asyncio.run(sandbox.check())
    message = str(refused.value)
    assert "cannot create its namespaces" in message and "No permissions to create a new namespace" in message
    assert "cluster/GUIDE.md" in message


def test_off_runs_the_same_command_without_bubblewrap(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    sandbox = Sandbox(tmp_path / "state", enabled=False)
    asyncio.run(sandbox.check())  # nothing to check: the operator chose
    result = run(sandbox, SandboxSpec(workspace=tree, env={"TZ": "UTC"}), ["bash", "-c", "pwd; echo $TZ"])
    assert result.output_tail.split() == [str(tree), "UTC"]
