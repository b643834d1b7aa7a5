"""The sandbox's own behaviour: what it mounts, how it starts, what it says when it cannot.

The attacks from inside it are in tests/security/test_sandbox.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fixfleet.workspace.limits import AUX_TMPFS_BYTES, SandboxLimits
from fixfleet.workspace.sandbox import Sandbox, SandboxSpec, SandboxUnavailable
from fixfleet.workspace.trees import remove_tree


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


# -- limits ------------------------------------------------------------------------------------

STORM = """
import os, time
started, failure = 0, "none"
for _ in range(400):
    try:
        pid = os.fork()
    except OSError as error:
        failure = error.strerror
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    started += 1
print(f"STORM started={started} failure={failure}", flush=True)
"""


def storm(sandbox: Sandbox, tree: Path) -> tuple[int, str]:
    spec = SandboxSpec(workspace=tree, python_prefix=Path(sys.base_prefix))
    result = run(sandbox, spec, [str(Path(sys.base_prefix) / "bin" / "python3"), "-c", STORM], timeout_s=120)
    line = next(line for line in result.output_tail.splitlines() if line.startswith("STORM "))
    started, failure = (part.split("=", 1)[1] for part in line.split(" ", 2)[1:])
    return int(started), failure


def run_groups(sandbox: Sandbox) -> list[str]:
    base = sandbox.processes.base
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base is not None else []


def test_a_process_storm_is_capped_and_its_cgroup_goes_with_the_run(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    sandbox = Sandbox(tmp_path / "state", limits=SandboxLimits(max_processes=64))
    if sandbox.processes.mode == "rlimit" and os.geteuid() == 0:
        pytest.skip("no pids cgroup can be made here and RLIMIT_NPROC does not bind root: no cap applies "
                    "(the platform says so at start)")
    caplog.set_level(logging.INFO)
    asyncio.run(sandbox.check())
    started, failure = storm(sandbox, tree)
    print(f"fork storm of 400 in a sandbox limited to 64 ({sandbox.processes.mode}): {started} started, "
          f"then: {failure}")
    assert started < 64 and failure == "Resource temporarily unavailable"
    assert "sandbox process limit: 64 processes per sandbox" in caplog.text
    assert run_groups(sandbox) == []  # the run's cgroup is gone


def test_the_rlimit_fallback_caps_a_platform_that_is_not_root(tmp_path: Path) -> None:
    """Where no cgroup can be made: RLIMIT_NPROC, set inside the sandbox. Run as another user
    (RLIMIT_NPROC does not bind root), with 100 processes of that user running elsewhere: set
    outside the sandbox, the limit would count those too and refuse to start it at all."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    home = Path(tempfile.mkdtemp(prefix="ffnproc-"))
    home.chmod(0o777)
    script = (f"import sys, asyncio; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "from pathlib import Path\nfrom fixfleet.workspace.limits import ProcessLimit, SandboxLimits\n"
              "from fixfleet.workspace.sandbox import Sandbox, SandboxSpec\n"
              f"home = Path({str(home)!r}); (home / 'tree').mkdir()\n"
              "sandbox = Sandbox(home / 'state', limits=SandboxLimits(max_processes=64))\n"
              "sandbox.processes = ProcessLimit(None)\n"
              "print(sandbox.processes.describe(64))\n"
              f"spec = SandboxSpec(workspace=home / 'tree', python_prefix=Path({sys.base_prefix!r}))\n"
              f"result = asyncio.run(sandbox.run(spec, [{str(Path(sys.base_prefix) / 'bin' / 'python3')!r}, '-c', "
              f"{STORM!r}], timeout_s=120))\n"
              "print(result.output_tail)\n")
    others = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
                               "for i in $(seq 100); do sleep 60 & done; wait"], start_new_session=True)
    try:
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               script], capture_output=True, text=True, timeout=180, cwd=home, check=False)
    finally:
        os.killpg(others.pid, signal.SIGKILL)
        others.wait()
        remove_tree(home)
    print(done.stdout, done.stderr[-2000:])
    line = next(line for line in done.stdout.splitlines() if line.startswith("STORM "))
    assert "RLIMIT_NPROC inside the sandbox" in done.stdout
    started = int(line.split()[1].split("=")[1])
    assert started < 64 and "failure=Resource temporarily unavailable" in line


def test_temporary_space_is_limited(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    sandbox = Sandbox(tmp_path / "state", limits=SandboxLimits(tmp_bytes=8 * 1024**2))
    result = run(sandbox, SandboxSpec(workspace=tree), ["bash", "-c", """
        for place in /tmp /home/agent /run /opt; do
            head -c 64M /dev/zero > $place/fill
            echo "$place: wrote $(stat -c %s $place/fill) bytes"
        done
    """])
    print(result.output_tail)
    written = dict(re.findall(r"^(/\S+): wrote (\d+) bytes", result.output_tail, re.MULTILINE))
    assert {place: int(size) for place, size in written.items()} == {
        "/tmp": 8 * 1024**2, "/home/agent": 8 * 1024**2, "/run": AUX_TMPFS_BYTES, "/opt": AUX_TMPFS_BYTES}
    assert result.output_tail.count("No space left on device") == 4


def test_no_file_outgrows_the_checkouts_quota(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    sandbox = Sandbox(tmp_path / "state", limits=SandboxLimits(checkout_bytes=4 * 1024**2))
    result = run(sandbox, SandboxSpec(workspace=tree), ["bash", "-c", "head -c 8M /dev/zero > /workspace/big; echo exit $?"])
    print(result.output_tail)
    assert "File size limit exceeded" in result.output_tail and "exit 153" in result.output_tail  # SIGXFSZ
    assert (tree / "big").stat().st_size == 4 * 1024**2


def test_a_checkout_growing_past_its_quota_kills_the_run_with_the_reason(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    sandbox = Sandbox(tmp_path / "state", limits=SandboxLimits(checkout_bytes=8 * 1024**2))
    result = run(sandbox, SandboxSpec(workspace=tree), ["bash", "-c",
                 "i=0; while true; do head -c 1M /dev/urandom > /workspace/f$i; i=$((i+1)); sleep 0.05; done"],
                 timeout_s=120)
    print(result.killed_for, f"after {result.seconds}s; {len(list(tree.iterdir()))} MiB written")
    assert not result.timed_out
    assert result.killed_for and "the checkout grew by more than 8388608 bytes" in result.killed_for
    assert result.killed_for in result.output_tail
    assert run_groups(sandbox) == []
