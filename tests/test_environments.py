"""Repository environments built for real: git mirrors, bubblewrap, uv and npm through the egress proxy.

Each repository is a throwaway bare remote (file://). Environments are built in the sandbox
with only the registries the plan names reachable; every check runs a command in the sandbox
the way a session or a verification run would. One WorkspaceManager and EnvironmentBuilder
serve the module, so uv's per-repository cache stays warm between tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from fixfleet.errors import PermanentError
from fixfleet.workspace.env_cache import Entry, EnvCache
from fixfleet.workspace.environments import Environment, EnvironmentBuilder, SetupFailed
from fixfleet.workspace.mirrors import Checkout, FileContent, WorkspaceManager
from fixfleet.workspace.repo_config import detect_node, resolve
from fixfleet.workspace.sandbox import RunResult, Sandbox
from tests.gitrepos import Upstream, make_upstream, own_git_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIG_BUDGET = 10**12
REPO_ROOT = Path(__file__).resolve().parent.parent

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "ffdemo"
version = "0.1.0"
dependencies = [{deps}]

[project.optional-dependencies]
tests = ["pytest"]
"""
DEMO = {
    "pyproject.toml": PYPROJECT.format(deps='"six"'),
    "src/ffdemo/__init__.py": "VALUE = 1\n",
    "tests/test_demo.py": "import ffdemo\n\n\ndef test_value():\n    assert ffdemo.VALUE == 1\n",
}


# -- helpers ------------------------------------------------------------------------------


def make_repo(directory: Path, files: dict[str, str | bytes | None]) -> tuple[Upstream, str]:
    upstream = make_upstream(directory, files)
    return upstream, upstream.sha("main")


async def run_in(builder: EnvironmentBuilder, env: Environment, checkout: Checkout, script: str) -> RunResult:
    return await builder.sandbox.run(builder.spec(env, checkout), ["/bin/bash", "-c", script], timeout_s=60)


def env_dirs(builder: EnvironmentBuilder, url: str) -> list[str]:
    """The environment directories of a repository on the node (not its lock files)."""
    directory = builder.cache.envs_dir / builder.workspaces.mirror_key(url)
    return sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []


@pytest.fixture(scope="module", autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with own_git_config(tmp_path_factory.mktemp("gitconfig")):
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envs")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(root: Path) -> Sandbox:
    box = Sandbox(root / "sandbox")
    await box.check()
    return box


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workspaces(root: Path) -> AsyncIterator[WorkspaceManager]:
    manager = WorkspaceManager(root / "ws", BIG_BUDGET, warm_spares=0)
    yield manager
    await manager.close()


@pytest.fixture(scope="module")
def builder(workspaces: WorkspaceManager, sandbox: Sandbox) -> EnvironmentBuilder:
    return EnvironmentBuilder(workspaces, sandbox)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo(root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder
               ) -> tuple[Upstream, str, Environment]:
    """The Python repository with its first environment built."""
    upstream, sha = make_repo(root / "demo", DEMO)
    await workspaces.resolve(upstream.url)
    env = await builder.ensure(upstream.url, sha)
    return upstream, sha, env


# -- Python ------------------------------------------------------------------------------


async def test_python_repository_gets_a_venv_with_its_dependencies_and_an_editable_install(
        demo: tuple[Upstream, str, Environment], workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, sha, env = demo
    assert not env.reused and env.built_s > 0
    assert env.plan.language == "python" and env.plan.test_runner == "pytest"
    checkout = await workspaces.checkout(upstream.url, sha, "env-python")
    try:
        builder.prepare(env, checkout)
        result = await run_in(builder, env, checkout, "python -c 'import six, pytest, ffdemo, sys; "
                                                      "print(sys.prefix, ffdemo.__file__, ffdemo.VALUE)'")
        assert result.exit_code == 0, result.output_tail
        assert result.output_tail.split() == ["/env", "/workspace/src/ffdemo/__init__.py", "1"]

        (checkout.path / "src/ffdemo/__init__.py").write_text("VALUE = 2\n")  # the agent edits the checkout
        result = await run_in(builder, env, checkout, "python -c 'import ffdemo; print(ffdemo.VALUE)'")
        assert result.output_tail.strip() == "2", result.output_tail

        result = await run_in(builder, env, checkout, "touch /env/x")  # runs never change the environment
        assert result.exit_code != 0
        assert not (env.path / "x").exists()
    finally:
        await workspaces.discard(checkout)


async def test_environment_is_reused_until_the_dependency_files_change(
        demo: tuple[Upstream, str, Environment], workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, sha, first = demo
    again = await builder.ensure(upstream.url, sha)  # how fast: bench.realbugs' env_warm_s
    assert again.reused and again.path == first.path and again.hash == first.hash

    test_only = upstream.commit({"tests/test_more.py": "def test_more():\n    assert True\n"})
    await workspaces.resolve(upstream.url)
    same = await builder.ensure(upstream.url, test_only)
    assert same.reused and same.hash == first.hash

    new_deps = upstream.commit({"pyproject.toml": PYPROJECT.format(deps='"six>=1.10"')})
    await workspaces.resolve(upstream.url)
    rebuilt = await builder.ensure(upstream.url, new_deps)
    assert not rebuilt.reused and rebuilt.hash != first.hash
    assert first.path.is_dir() and rebuilt.path.is_dir()  # the old one stays for commits that use it


async def test_concurrent_ensures_build_once(
        demo: tuple[Upstream, str, Environment], workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, _, _ = demo
    sha = upstream.commit({"pyproject.toml": PYPROJECT.format(deps='"six"') + "# concurrent\n"})
    await workspaces.resolve(upstream.url)
    before = env_dirs(builder, upstream.url)

    one, two = await asyncio.gather(builder.ensure(upstream.url, sha), builder.ensure(upstream.url, sha))

    assert one.path == two.path
    assert sorted([one.reused, two.reused]) == [False, True]
    assert env_dirs(builder, upstream.url) == sorted([*before, one.hash])  # no .partial-* left


AGENT_SCRIPT = """
import asyncio, json, sys, time
from pathlib import Path
from fixfleet.workspace.env_cache import EnvCache
from fixfleet.workspace.environments import EnvironmentBuilder
from fixfleet.workspace.mirrors import WorkspaceManager
from fixfleet.workspace.sandbox import Sandbox

async def main(root, agent, url, sha, hold_s):
    workspaces = WorkspaceManager(Path(root) / agent, 10**12, warm_spares=0)
    builder = EnvironmentBuilder(workspaces, Sandbox(Path(root) / f"sandbox-{agent}"),
                                 cache=EnvCache(Path(root) / "node-cache"), holder=agent)
    await workspaces.resolve(url)  # its own mirror, as every agent has
    env = await builder.ensure(url, sha)
    print(json.dumps({"path": str(env.path), "reused": env.reused}), flush=True)
    time.sleep(float(hold_s))  # holding the environment

asyncio.run(main(*sys.argv[1:]))
"""


async def start_agent(root: Path, agent: str, url: str, sha: str, hold_s: float = 0) -> asyncio.subprocess.Process:
    """An agent process of its own (its own workspaces and sandbox) on the node at `root`."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, str(root), agent, url, sha, str(hold_s),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


def quick_config(variant: str, setup: str = "sleep 0") -> str:
    """A Python repository set up without the network: a virtualenv, and `setup`."""
    return json.dumps({"setup": [setup], "test_runner": "unittest", "env": {"VARIANT": variant}})


async def test_two_agent_processes_on_one_node_build_one_environment_once(root: Path) -> None:
    node = root / "node"
    upstream, sha = make_repo(root / "procs", {".fixfleet.yml": quick_config("procs", "sleep 1.5"),
                                               "test_x.py": "import unittest\n"})

    agents = [await start_agent(node, name, upstream.url, sha) for name in ("executor-1", "executor-2")]
    outputs = await asyncio.gather(*(a.communicate() for a in agents))

    for agent, (_, stderr) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, stderr.decode()[-2000:]
    results = [json.loads(stdout.decode().strip().splitlines()[-1]) for stdout, _ in outputs]
    assert results[0]["path"] == results[1]["path"]  # one environment on the node...
    assert sorted(r["reused"] for r in results) == [False, True]  # ...built once: the second waited
    built = [p for p in (node / "node-cache/envs").glob("*/*") if p.is_dir()]
    assert [str(p / "env") for p in built] == [results[0]["path"]]
    assert not (node / "executor-1/env-cache").exists() and not (node / "executor-2/env-cache").exists()


async def test_failed_setup_raises_with_uvs_error_and_leaves_nothing(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, sha = make_repo(root / "broken", {
        "requirements.txt": "fixfleet-no-such-package-0000\npytest\n",
        "tests/test_x.py": "def test_x():\n    assert True\n"})
    await workspaces.resolve(upstream.url)

    with pytest.raises(SetupFailed) as raised:
        await builder.ensure(upstream.url, sha)

    assert "fixfleet-no-such-package-0000" in raised.value.log_tail
    assert "not found in the package registry" in raised.value.log_tail  # uv's own words
    assert "requirements.txt" in raised.value.message  # names the step that failed, not the last one
    assert env_dirs(builder, upstream.url) == []  # no partial directory, no environment
    assert list(workspaces.checkouts_dir.iterdir()) == []  # the setup's checkout is gone


@pytest.mark.parametrize("files", [
    {".fixfleet.yml": "test_runner: karma\n", "test_x.py": "import unittest\n"},
    {"package.json": '{"scripts": {"test": "echo no test specified && exit 1"}, "devDependencies": {"is-number": "7"}}'},
], ids=["bad-fixfleet-yml", "js-without-a-runner"])
async def test_a_repository_that_cannot_be_planned_fails_setup_with_the_reason(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder, files: dict[str, str]) -> None:
    upstream, sha = make_repo(root / f"unplannable-{len(files)}", files)
    await workspaces.resolve(upstream.url)

    with pytest.raises(SetupFailed) as raised:  # what the executor records in the task's audit trail
        await builder.ensure(upstream.url, sha)

    message = raised.value.message
    assert "test_runner" in message or "no supported JavaScript test runner" in message, message
    assert ".fixfleet.yml" in message
    assert isinstance(raised.value, PermanentError)  # the task fails at once: the file must change first


@pytest.mark.parametrize("command", [
    """python -c 'import urllib.request as u; u.urlopen("https://example.com")'""",
    "curl -sSf https://example.com/",
], ids=["python", "curl"])
async def test_setup_reaching_an_unlisted_host_is_refused_by_the_proxy(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder, command: str) -> None:
    config = json.dumps({"setup": [command], "test_runner": "unittest"})  # JSON is YAML
    upstream, sha = make_repo(root / f"egress-{command[:4]}", {".fixfleet.yml": config})
    await workspaces.resolve(upstream.url)

    with pytest.raises(SetupFailed) as raised:
        await builder.ensure(upstream.url, sha)

    tail = raised.value.log_tail
    assert "example.com:443" in tail and "not in network.setup" in tail, tail
    assert "403" in tail  # what the program itself was told by the proxy
    assert env_dirs(builder, upstream.url) == []


async def test_fixfleet_yml_setup_and_env_are_honoured(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    config = ("setup:\n"  # as repo_config's documentation shows it: no venv of its own
              "  - uv pip install -e .\n"
              "  - echo \"$GREETING from setup\" > /env/greeting.txt\n"
              "test_runner: unittest\n"
              "env: {GREETING: hello-fixfleet}\n")
    upstream, sha = make_repo(root / "custom", {
        ".fixfleet.yml": config,
        "pyproject.toml": PYPROJECT.format(deps=""),
        "src/ffdemo/__init__.py": "VALUE = 7\n"})
    await workspaces.resolve(upstream.url)

    env = await builder.ensure(upstream.url, sha)

    assert env.plan.source == "file" and env.plan.test_runner == "unittest"
    assert env.plan.steps == ["uv pip install -e .", "echo \"$GREETING from setup\" > /env/greeting.txt"]
    assert (env.path / "greeting.txt").read_text() == "hello-fixfleet from setup\n"
    checkout = await workspaces.checkout(upstream.url, sha, "env-custom")
    try:
        builder.prepare(env, checkout)
        result = await run_in(builder, env, checkout, "echo $GREETING; python -c 'import ffdemo; print(ffdemo.VALUE)'"
                                                      "; python -c 'import pytest'")
        lines = result.output_tail.splitlines()
        assert lines[:2] == ["hello-fixfleet", "7"], result.output_tail
        assert "No module named 'pytest'" in result.output_tail  # the detected steps did not run
    finally:
        await workspaces.discard(checkout)


async def test_setuptools_scm_package_without_git_builds_and_its_version_file_is_laid_in(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, sha = make_repo(root / "scm", {
        "pyproject.toml": ('[build-system]\nrequires = ["setuptools>=64", "setuptools-scm>=8"]\n'
                           'build-backend = "setuptools.build_meta"\n\n[project]\nname = "scmpkg"\n'
                           'dynamic = ["version"]\n\n[tool.setuptools_scm]\nversion_file = "src/scmpkg/_version.py"\n'),
        ".gitignore": "src/scmpkg/_version.py\n",
        "src/scmpkg/__init__.py": "from scmpkg._version import version\n",
        "test_scm.py": "import unittest\n"})
    await workspaces.resolve(upstream.url)

    env = await builder.ensure(upstream.url, sha)

    assert "src/scmpkg/_version.py" in env.generated
    checkout = await workspaces.checkout(upstream.url, sha, "env-scm")
    try:
        assert not (checkout.path / "src/scmpkg/_version.py").exists()
        placed = builder.prepare(env, checkout)
        assert "src/scmpkg/_version.py" in placed
        assert (checkout.path / "src/scmpkg/_version.py").is_file()
        result = await run_in(builder, env, checkout, "python -c 'import scmpkg; print(scmpkg.version)'")
        assert result.exit_code == 0 and result.output_tail.strip() == "0.0.0", result.output_tail
    finally:
        await workspaces.discard(checkout)


async def test_uv_bound_into_the_sandbox_is_the_platforms_binary_not_a_shim_on_path(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker runs the interpreter by its path, so PATH starts with pyenv's shims: a
    script that runs pyenv, which the sandbox does not have."""
    shims = root / "shims"
    shims.mkdir()
    (shims / "uv").write_text('#!/bin/sh\nexec /nonexistent/pyenv exec uv "$@"\n')
    (shims / "uv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    upstream, sha = make_repo(root / "shimmed", {"test_x.py": "import unittest\n"})
    await workspaces.resolve(upstream.url)

    env = await builder.ensure(upstream.url, sha)

    assert (env.path / "bin/python").exists()


# -- JavaScript --------------------------------------------------------------------------


async def test_javascript_repository_gets_node_modules_mounted(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    package = {"name": "jsdemo", "version": "1.0.0", "scripts": {"test": "node --test"},
               "devDependencies": {"is-number": "^7.0.0"}}
    scratch = root / "js-lock"
    scratch.mkdir()
    (scratch / "package.json").write_text(json.dumps(package, indent=2))
    subprocess.run(["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"], cwd=scratch,
                   check=True, capture_output=True, timeout=120)
    upstream, sha = make_repo(root / "js", {
        "package.json": (scratch / "package.json").read_text(),
        "package-lock.json": (scratch / "package-lock.json").read_text(),
        "index.js": "module.exports = require('is-number');\n"})
    await workspaces.resolve(upstream.url)

    env = await builder.ensure(upstream.url, sha)

    assert env.plan.language == "node" and env.plan.steps[0].startswith("npm ci")
    assert env.mounts_node_modules and (env.path / "node_modules/is-number/package.json").is_file()
    checkout = await workspaces.checkout(upstream.url, sha, "env-js")
    try:
        assert "node_modules" in builder.prepare(env, checkout)
        assert builder.spec(env, checkout).read_only["/workspace/node_modules"] == env.path / "node_modules"
        result = await run_in(builder, env, checkout, "node -e \"console.log(require('is-number')(5), "
                                                      "require('./index.js')('x'))\"")
        assert result.exit_code == 0 and result.output_tail.split() == ["true", "false"], result.output_tail
        assert list((checkout.path / "node_modules").iterdir()) == []  # a mount point, nothing copied in
    finally:
        await workspaces.discard(checkout)


# -- sharing and eviction ----------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def lru(root: Path, workspaces: WorkspaceManager, sandbox: Sandbox, request: pytest.FixtureRequest
              ) -> tuple[EnvironmentBuilder, Upstream, list[str]]:
    """A builder on a node cache of its own, and three commits whose setups differ."""
    name = request.node.name[:40]
    cache = EnvCache(root / f"cache-{name}")  # no budget while the test builds
    builder = EnvironmentBuilder(workspaces, sandbox, cache=cache, holder="executor-1")
    upstream, first = make_repo(root / f"repo-{name}", {".fixfleet.yml": quick_config("a"),
                                                        "test_x.py": "import unittest\n"})
    shas = [first] + [upstream.commit({".fixfleet.yml": quick_config(v)}) for v in ("b", "c")]
    await workspaces.resolve(upstream.url)
    return builder, upstream, shas


def entry_of(builder: EnvironmentBuilder, url: str, env: Environment) -> Entry:
    return builder.cache.entry(builder.workspaces.mirror_key(url), env.hash)


async def test_eviction_removes_the_least_recently_used_idle_environment_never_a_held_one(
        lru: tuple[EnvironmentBuilder, Upstream, list[str]]) -> None:
    builder, upstream, shas = lru
    held = await builder.ensure(upstream.url, shas[0])  # the oldest use, held throughout
    older = await builder.ensure(upstream.url, shas[1])
    older.release()
    newer = await builder.ensure(upstream.url, shas[2])
    newer.release()
    entries = [entry_of(builder, upstream.url, env) for env in (held, older, newer)]
    for age, entry in zip((300, 200, 100), entries, strict=True):  # last used: held, then older, then newer
        os.utime(entry.directory / "last_used", (time.time() - age, time.time() - age))
    sizes = [entry.meta()["bytes"] for entry in entries]
    builder.cache.max_bytes = sum(sizes) - 1  # one environment has to go

    evicted = await asyncio.to_thread(builder.cache.evict)

    assert [e.digest for e in evicted] == [older.hash]  # the least recently used idle one
    assert not older.path.exists() and held.path.is_dir() and newer.path.is_dir()
    assert [h["holder"] for h in builder.cache.holders(entries[0])] == ["executor-1"]

    builder.cache.max_bytes = 1  # far over budget: still never the held one
    assert [e.digest for e in await asyncio.to_thread(builder.cache.evict)] == [newer.hash]
    assert held.path.is_dir()
    held.release()
    assert [e.digest for e in await asyncio.to_thread(builder.cache.evict)] == [held.hash]
    assert list(builder.cache.tmp_dir.iterdir()) == []  # no trash, no scratch left


async def test_a_dependency_change_builds_a_new_environment_while_the_old_one_serves_its_holder(
        lru: tuple[EnvironmentBuilder, Upstream, list[str]], workspaces: WorkspaceManager) -> None:
    builder, upstream, shas = lru
    old = await builder.ensure(upstream.url, shas[0])  # an agent's session uses it
    builder.cache.max_bytes = 1  # every build evicts what it can

    new = await builder.ensure(upstream.url, shas[1])  # another task, after the setup changed

    assert not new.reused and new.hash != old.hash and new.held
    assert old.path.is_dir() and old.held  # over budget, yet kept: it is in use
    checkout = await workspaces.checkout(upstream.url, shas[0], "old-env-user")
    try:
        result = await run_in(builder, old, checkout, "echo $VARIANT; python -c 'import sys; print(sys.prefix)'")
        assert result.output_tail.split() == ["a", "/env"], result.output_tail
    finally:
        await workspaces.discard(checkout)
    old.release()
    new.release()
    async with builder.use(upstream.url, shas[2]) as third:  # held for the block only
        assert third.held and third.path.is_dir()
        assert not old.path.exists() and not new.path.exists()  # released: this build evicted them
        assert await asyncio.to_thread(builder.cache.evict) == []
    assert not third.held
    assert [e.digest for e in await asyncio.to_thread(builder.cache.evict)] == [third.hash]


async def test_a_dead_agents_lease_does_not_pin_its_environment(
        lru: tuple[EnvironmentBuilder, Upstream, list[str]], root: Path) -> None:
    builder, upstream, shas = lru
    agent = await start_agent(root / "dying", "executor-9", upstream.url, shas[0], hold_s=600)
    try:
        assert agent.stdout is not None
        line = json.loads(await asyncio.wait_for(agent.stdout.readline(), 120))  # it holds the environment now
        cache = EnvCache(root / "dying/node-cache", max_bytes=1)
        entry = cache.entry(builder.workspaces.mirror_key(upstream.url), Path(line["path"]).parent.name)
        assert [h["holder"] for h in cache.holders(entry)] == ["executor-9"]
        assert await asyncio.to_thread(cache.evict) == []  # in use
    finally:
        agent.kill()  # SIGKILL: no cleanup of its own runs
        await agent.wait()

    assert cache.holders(entry) == []  # its lock died with it; the stale lease file is gone
    assert [e.digest for e in await asyncio.to_thread(cache.evict)] == [entry.digest]


async def test_the_interpreter_is_a_version_the_machine_has_and_a_path_only_from_the_operator() -> None:
    from fixfleet.workspace.environments import find_interpreter
    from fixfleet.workspace.repo_config import RepoConfig, resolve

    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert find_interpreter(resolve({".fixfleet.yml": f"python: '{own}'".encode()})) == \
        (Path(sys.base_prefix) / "bin" / f"python{own}").resolve()
    with pytest.raises(SetupFailed, match="python 3.99 is not installed here"):
        find_interpreter(resolve({".fixfleet.yml": b"python: '3.99'"}))
    with pytest.raises(SetupFailed, match="only be set by the operator"):  # a repository may not pick a host path to mount
        find_interpreter(resolve({".fixfleet.yml": b"python: /root/.ssh/x/bin/python"}))
    operator = RepoConfig(python=str(Path(sys.base_prefix) / "bin" / f"python{own}"))
    assert find_interpreter(resolve({}, operator)).name == f"python{own}"


# -- attacks: nothing the repository's setup makes is trusted by path -------------------------


@pytest.mark.parametrize(("setup", "refusal"), [
    ("ln -s / node_modules", "the setup left node_modules as a symbolic link to /: refused, nothing is mounted"),
    ("ln -s / /env/node_modules", "the setup made /env/node_modules itself (a symbolic link to /): refused"),
    ("echo x > node_modules", "the setup left node_modules as a file: refused"),
], ids=["checkout-link", "env-link", "file"])
async def test_a_setup_that_makes_node_modules_a_link_to_the_root_is_refused_and_nothing_is_bound(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder, setup: str, refusal: str) -> None:
    config = json.dumps({"language": "node", "setup": [setup], "test_runner": "node"})
    upstream, sha = make_repo(root / f"nm-{setup[:12].replace('/', '_')}", {".fixfleet.yml": config})
    await workspaces.resolve(upstream.url)
    print(f"attack: a setup step `{setup}`, hoping the host's / gets bound inside every later run")

    with pytest.raises(SetupFailed) as raised:
        await builder.ensure(upstream.url, sha)

    print(f"held: {raised.value.message}")
    assert refusal in raised.value.message
    assert env_dirs(builder, upstream.url) == []  # nothing kept that a run could mount


async def test_an_environment_whose_node_modules_became_a_link_is_never_bound(root: Path, builder: EnvironmentBuilder,
                                                                             workspaces: WorkspaceManager) -> None:
    """Defence in depth: the check is made again when a sandbox is assembled."""
    planted = root / "planted-env"
    planted.mkdir()
    (planted / "node_modules").symlink_to("/")
    plan = detect_node({"package.json": b'{"scripts": {"test": "node --test"}}'})
    env = Environment(path=planted, hash="planted", plan=plan)
    upstream, sha = make_repo(root / "planted-repo", {"index.js": "1\n"})
    await workspaces.resolve(upstream.url)
    checkout = await workspaces.checkout(upstream.url, sha, "planted")
    try:
        with pytest.raises(SetupFailed, match="node_modules is not a real directory .a symbolic link to /."):
            builder.spec(env, checkout)
        with pytest.raises(SetupFailed, match="not a real directory"):
            builder.prepare(env, checkout)
        assert not (checkout.path / "node_modules").exists()
    finally:
        await workspaces.discard(checkout)


POISON_SETUP_PY = """\
import pathlib
poisoned = []
for path in pathlib.Path("/cache").rglob("six.py"):  # the download cache the setup was given
    path.write_text("raise SystemExit('poisoned six')\\n")
    poisoned.append(str(path))
pathlib.Path("/cache/POISONED").write_text("\\n".join(poisoned))
pathlib.Path("/env/attack-ran").write_text("\\n".join(poisoned) or "no six in this cache")
from setuptools import setup
setup()
"""


async def test_a_changes_dependency_files_never_write_the_shared_package_cache(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, sha = make_repo(root / "poison", {**DEMO, "pyproject.toml": PYPROJECT.format(deps='"six"')})
    await workspaces.resolve(upstream.url)
    base = await builder.ensure(upstream.url, sha)  # the platform's build of the base: fills the shared cache
    shared = builder.cache.package_cache(workspaces.mirror_key(upstream.url))
    sixes = sorted(shared.rglob("six.py"))
    assert sixes, "the base build cached six"
    before = {path: path.read_bytes() for path in sixes}
    print("attack: a change whose setup.py rewrites six.py in every package cache it can reach")

    change = {"setup.py": FileContent(content=POISON_SETUP_PY.encode())}
    attacked = await builder.ensure(upstream.url, sha, overlay=change)

    assert (attacked.path / "attack-ran").read_text().strip()  # the attack ran, in the change's own cache
    assert {path: path.read_bytes() for path in sorted(shared.rglob("six.py"))} == before
    assert not (shared / "POISONED").exists()
    print(f"held: the shared cache's {len(before)} six.py are unchanged; the change had a private cache")
    assert attacked.hash != base.hash

    honest = upstream.commit({"pyproject.toml": PYPROJECT.format(deps='"six>=1.0"')})  # later, an honest task
    await workspaces.resolve(upstream.url)
    env = await builder.ensure(upstream.url, honest)
    checkout = await workspaces.checkout(upstream.url, honest, "after-poison")
    try:
        builder.prepare(env, checkout)
        result = await run_in(builder, env, checkout, "python -c 'import six; print(six.PY3)'")
        assert result.exit_code == 0 and result.output_tail.strip() == "True", result.output_tail
    finally:
        await workspaces.discard(checkout)


GENERATING_SETUP = [
    "printf 'import os\\nos.system(\"touch /workspace/pwned\")\\n' > conftest.py",
    "echo 'import os; os.system(\"touch /workspace/pwned\")' > zz_evil.pth",
    "echo 'print(1)' > sitecustomize.py",
    "mkdir -p src/pkg && echo 'version = \"0.0.0\"' > src/pkg/_version.py",
    "echo '[pytest]' > pytest.ini",
]


async def test_files_a_setup_generates_are_laid_only_where_the_config_names_them_and_never_code_that_runs(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    config = json.dumps({"setup": GENERATING_SETUP, "test_runner": "unittest", "generated": ["src/pkg/_version.py"]})
    pyproject = '[tool.setuptools_scm]\nwrite_to = "conftest.py"\n\n[tool.hatch.build.hooks.vcs]\nversion-file = "zz_evil.pth"\n'
    upstream, sha = make_repo(root / "generating", {".fixfleet.yml": config, "pyproject.toml": pyproject,
                                                    "test_x.py": "import unittest\n"})
    await workspaces.resolve(upstream.url)
    print("attack: a setup that generates conftest.py, a .pth, sitecustomize.py and pytest.ini, "
          "and a pyproject naming conftest.py and the .pth as version files")

    env = await builder.ensure(upstream.url, sha)

    assert env.generated == ["src/pkg/_version.py"]
    assert any("conftest.py ([tool.setuptools_scm] write_to) is never laid" in r for r in env.plan.reasons)
    assert any("zz_evil.pth ([tool.hatch.build.hooks.vcs] version-file) is never laid" in r for r in env.plan.reasons)
    checkout = await workspaces.checkout(upstream.url, sha, "generated")
    try:
        placed = builder.prepare(env, checkout)
        assert placed == ["src/pkg/_version.py"]
        for name in ("conftest.py", "zz_evil.pth", "sitecustomize.py", "pytest.ini"):
            assert not (checkout.path / name).exists(), name
        print(f"held: only {placed} reached the checkout")
        result = await run_in(builder, env, checkout, "python -c 'import sys; sys.path.insert(0, \"src\"); "
                                                      "import pkg._version as v; print(v.version)'; ls /workspace")
        assert "0.0.0" in result.output_tail and "pwned" not in result.output_tail
    finally:
        await workspaces.discard(checkout)


async def test_a_generated_file_the_config_names_is_not_kept_when_the_setup_made_it_a_link(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    config = json.dumps({"setup": ["mkdir -p src && ln -s /etc/passwd src/_version.py"], "test_runner": "unittest",
                         "generated": ["src/_version.py"]})
    upstream, sha = make_repo(root / "generated-link", {".fixfleet.yml": config, "test_x.py": "import unittest\n"})
    await workspaces.resolve(upstream.url)

    env = await builder.ensure(upstream.url, sha)

    assert env.generated == []  # a link is no generated file: nothing to copy from the host
    assert not (env.path.parent / "generated").exists()


# -- the toolchain the repository pins --------------------------------------------------------


def other_python() -> str:
    """A Python version the toolchain has that is not the platform's own."""
    from fixfleet.workspace.environments import toolchain_pythons

    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    others = sorted((v for v in toolchain_pythons() if v != own and v >= "3.9"), key=lambda v: int(v.split(".")[1]))
    if not others:
        pytest.fail("this machine has one Python only: install another (pyenv, uv python install, apt)")
    return others[-1]


async def test_the_python_version_the_repository_pins_is_the_environments(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    version = other_python()
    upstream, sha = make_repo(root / "pinned", {".python-version": f"{version}\n",
                                                "test_x.py": "import unittest\n"})
    await workspaces.resolve(upstream.url)

    env = await builder.ensure(upstream.url, sha)

    assert f"python {version}, as .python-version pins" in env.plan.reasons
    checkout = await workspaces.checkout(upstream.url, sha, "pinned")
    try:
        result = await run_in(builder, env, checkout, "python -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
        assert result.output_tail.strip() == version, result.output_tail
    finally:
        await workspaces.discard(checkout)

    unknown = upstream.commit({".python-version": "3.4\n"})  # a pin the toolchain lacks: said, not fatal
    await workspaces.resolve(upstream.url)
    env = await builder.ensure(upstream.url, unknown)
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f".python-version pins python 3.4, which the toolchain lacks; python {own} is used" in env.plan.reasons


async def test_requires_python_picks_the_newest_interpreter_it_accepts() -> None:
    from fixfleet.workspace.environments import choose_interpreter, toolchain_pythons

    version = other_python()
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    plan = resolve({"pyproject.toml": f'[project]\nname = "x"\nrequires-python = "=={version}.*"\n'.encode()})
    path, reasons = choose_interpreter(plan)
    assert path == toolchain_pythons()[version]
    assert reasons == [f"python {version}: the newest here that requires-python =={version}.* accepts"]
    fits = resolve({"pyproject.toml": b'[project]\nname = "x"\nrequires-python = ">=3.8"\n'})
    assert choose_interpreter(fits)[1] == [f"python {own} (requires-python >=3.8)"]  # the platform's own fits
    nothing = resolve({"pyproject.toml": b'[project]\nname = "x"\nrequires-python = ">=4"\n'})
    assert choose_interpreter(nothing)[1] == [f"no python here satisfies requires-python >=4; python {own} is used"]


async def test_a_node_engines_mismatch_is_said_in_the_reasons_not_fatal(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    from fixfleet.workspace.environments import toolchain_node_version

    package = {"name": "engines", "version": "1.0.0", "engines": {"node": ">=99"}, "scripts": {"test": "node --test"}}
    upstream, sha = make_repo(root / "engines", {"package.json": json.dumps(package), ".nvmrc": "lts/krypton\n",
                                                 "test/a.test.js": "require('node:test')('ok', () => {});\n"})
    await workspaces.resolve(upstream.url)

    env = await builder.ensure(upstream.url, sha)  # built all the same

    node = toolchain_node_version()
    assert (f"node {node} does not satisfy package.json's engines.node >=99 (the only node here): "
            "setup and tests run with it") in env.plan.reasons
    assert f".nvmrc/.node-version pins node lts/krypton; the toolchain has {node}, which is used" in env.plan.reasons
    assert "engines.node >=99" in env.plan.describe()
    checkout = await workspaces.checkout(upstream.url, sha, "engines")
    try:
        builder.prepare(env, checkout)
        result = await run_in(builder, env, checkout, "node --test")
        assert result.exit_code == 0, result.output_tail
    finally:
        await workspaces.discard(checkout)
