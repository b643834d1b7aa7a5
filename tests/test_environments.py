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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from fixfleet.errors import PermanentError
from fixfleet.workspace.environments import Environment, EnvironmentBuilder, SetupFailed
from tests.gitrepos import Upstream, make_upstream, own_git_config
from fixfleet.workspace.mirrors import Checkout, WorkspaceManager
from fixfleet.workspace.sandbox import RunResult, Sandbox

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


def env_dirs(workspaces: WorkspaceManager, url: str) -> list[str]:
    """The environment directories of a repository (not its cache or lock files)."""
    directory = workspaces.envs_dir / workspaces.mirror_key(url)
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and p.name != "cache")


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
    before = env_dirs(workspaces, upstream.url)

    one, two = await asyncio.gather(builder.ensure(upstream.url, sha), builder.ensure(upstream.url, sha))

    assert one.path == two.path
    assert sorted([one.reused, two.reused]) == [False, True]
    assert env_dirs(workspaces, upstream.url) == sorted([*before, one.hash])  # no .partial-* left


PROCESS_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from fixfleet.workspace.environments import EnvironmentBuilder
from fixfleet.workspace.mirrors import WorkspaceManager
from fixfleet.workspace.sandbox import Sandbox

async def main(root, url, sha):
    workspaces = WorkspaceManager(Path(root) / "ws", 10**12, warm_spares=0)
    builder = EnvironmentBuilder(workspaces, Sandbox(Path(root) / "sandbox"))
    env = await builder.ensure(url, sha)
    print(json.dumps({"path": str(env.path), "reused": env.reused}))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_processes_on_one_root_build_once(root: Path, workspaces: WorkspaceManager) -> None:
    config = ("setup:\n  - uv venv --allow-existing --quiet --python \"$FIXFLEET_PYTHON\" /env\n"
              "  - sleep 1.5\ntest_runner: unittest\n")
    upstream, sha = make_repo(root / "procs", {".fixfleet.yml": config, "test_x.py": "import unittest\n"})
    await workspaces.resolve(upstream.url)  # the mirror exists before the two processes start

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    processes = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROCESS_SCRIPT, str(root), upstream.url, sha, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for _ in range(2)]
    outputs = await asyncio.gather(*(p.communicate() for p in processes))

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()[-2000:]
    results = [json.loads(stdout.decode().strip().splitlines()[-1]) for stdout, _ in outputs]
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert len(env_dirs(workspaces, upstream.url)) == 1


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
    assert env_dirs(workspaces, upstream.url) == []  # no partial directory, no environment
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
    assert env_dirs(workspaces, upstream.url) == []


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


# -- eviction ----------------------------------------------------------------------------


async def test_evicting_the_mirror_removes_its_environments(root: Path, sandbox: Sandbox) -> None:
    workspaces = WorkspaceManager(root / "evict", BIG_BUDGET, warm_spares=0)
    builder = EnvironmentBuilder(workspaces, sandbox)
    try:
        upstream, sha = make_repo(root / "evict-repo", {"test_x.py": "import unittest\n"})
        await workspaces.resolve(upstream.url)
        env = await builder.ensure(upstream.url, sha)
        assert (env.path / "bin/python").exists()
        checkout = await workspaces.checkout(upstream.url, sha, "in-use")
        workspaces.disk_budget_bytes = 1

        assert await workspaces.enforce_budget() == []  # a checkout is out: the mirror is in use
        assert env.path.is_dir()

        await workspaces.discard(checkout)
        evicted = await workspaces.enforce_budget()

        assert [p.name for p in evicted] == [workspaces.mirror_key(upstream.url)]
        assert not env.path.exists() and list(workspaces.envs_dir.iterdir()) == []
        assert list(workspaces.trash_dir.iterdir()) == []
    finally:
        await workspaces.close()


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
