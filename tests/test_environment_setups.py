"""Real repositories set up the way their developers set them up, for real, in the sandbox.

Each repository is made here with the real tools: its lockfile written by uv, pnpm or yarn on
the host, then committed to a throwaway remote. The platform detects how to set it up, builds
the environment in the sandbox with only the registries reachable (packages downloaded for
real), and the repository's tests run there with the command the plan names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from fixfleet.workspace.env_cache import EnvCache
from fixfleet.workspace.environments import Environment, EnvironmentBuilder
from fixfleet.workspace.mirrors import WorkspaceManager
from fixfleet.workspace.sandbox import RunResult, Sandbox
from fixfleet.workspace.verify import CommandRun, Verifier
from tests.gitrepos import Upstream, make_upstream, own_git_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

VITEST_TEST = 'import { expect, test } from "vitest";\n\ntest("adds", () => {\n  expect(1 + 2).toBe(3);\n});\n'


@pytest.fixture(scope="module", autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with own_git_config(tmp_path_factory.mktemp("gitconfig")):
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("setups")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workspaces(root: Path) -> AsyncIterator[WorkspaceManager]:
    manager = WorkspaceManager(root / "ws", 10**12, warm_spares=0)
    yield manager
    await manager.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def builder(root: Path, workspaces: WorkspaceManager) -> EnvironmentBuilder:
    sandbox = Sandbox(root / "sandbox")
    await sandbox.check()
    return EnvironmentBuilder(workspaces, sandbox, cache=EnvCache(root / "node-cache"))


async def repository(workspaces: WorkspaceManager, directory: Path, files: dict[str, str]) -> tuple[Upstream, str]:
    upstream = make_upstream(directory, files)
    await workspaces.resolve(upstream.url)
    return upstream, upstream.sha("main")


async def run_tests(builder: EnvironmentBuilder, env: Environment, upstream: Upstream, sha: str,
                    command: list[str]) -> RunResult:
    """`command` in a fresh checkout, in the environment's sandbox, as a session would run it."""
    checkout = await builder.workspaces.checkout(upstream.url, sha, f"tests-{env.hash[:8]}")
    try:
        builder.prepare(env, checkout)
        return await builder.sandbox.run(builder.spec(env, checkout), command, timeout_s=300)
    finally:
        await builder.workspaces.discard(checkout)


def host_tool(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A package manager on the host, as the repository's developers ran it to write their lockfile."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, **env})


def corepack_env(scratch: Path) -> dict[str, str]:
    # the registry here serves no signatures: corepack's key check would refuse every download
    return {"COREPACK_HOME": str(scratch / "corepack"), "COREPACK_INTEGRITY_KEYS": "0",
            "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0", "COREPACK_NPM_REGISTRY": "https://registry.npmjs.org"}


# -- Python ------------------------------------------------------------------------------


UV_PROJECT = """\
[project]
name = "locked"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = []

[dependency-groups]
test = ["pytest"]
"""


def uv_lock(directory: Path, exclude_newer: str | None) -> str:
    """Lock UV_PROJECT with uv; the pytest version the lock pins."""
    directory.mkdir()
    (directory / "pyproject.toml").write_text(UV_PROJECT)
    argv = [sys.executable, "-m", "uv", "lock", "--quiet"] + (["--exclude-newer", exclude_newer] if exclude_newer else [])
    done = host_tool(argv, directory, UV_CACHE_DIR=str(directory.parent / "uv-cache"))
    assert done.returncode == 0, done.stderr
    lock = (directory / "uv.lock").read_text()
    return re.search(r'name = "pytest"\nversion = "([^"]+)"', lock).group(1)


async def test_a_uv_lock_is_synced_frozen_with_the_locked_pytest_not_the_newest(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    locked = uv_lock(root / "uv-old", "2024-01-01T00:00:00Z")
    newest = uv_lock(root / "uv-new", None)
    assert tuple(map(int, locked.split(".")[:2])) < tuple(map(int, newest.split(".")[:2])), (locked, newest)
    upstream, sha = await repository(workspaces, root / "uv-repo", {
        "pyproject.toml": UV_PROJECT, "uv.lock": (root / "uv-old/uv.lock").read_text(),
        "tests/test_it.py": "def test_it():\n    assert True\n"})

    env = await builder.ensure(upstream.url, sha)

    assert env.plan.steps[1] == 'uv sync --frozen --python "$FIXFLEET_PYTHON" --group test'
    assert "uv.lock committed: a frozen uv sync installs the locked versions with the group(s) test" in env.plan.describe()
    result = await run_tests(builder, env, upstream, sha, ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
    assert result.exit_code == 0 and "1 passed" in result.output_tail, result.output_tail
    version = await run_tests(builder, env, upstream, sha, ["python", "-m", "pytest", "--version"])
    assert f"pytest {locked}" in version.output_tail, (locked, newest, version.output_tail)


POETRY_PROJECT = """\
[tool.poetry]
name = "poetrydemo"
version = "0.1.0"
description = ""
authors = ["Dev <dev@example.com>"]

[tool.poetry.dependencies]
python = "^3.9"

[tool.poetry.group.dev.dependencies]
pytest = "^8"
pytest-mock = "^3.12"

[build-system]
requires = ["poetry-core"]
build-backend = "poetry.core.masonry.api"
"""
MOCKER_TEST = """\
import poetrydemo


def test_the_mocker_fixture_patches(mocker):
    mocker.patch.object(poetrydemo, "answer", return_value=42)
    assert poetrydemo.answer() == 42
"""


async def test_a_poetry_projects_dev_group_is_installed_so_its_fixtures_work(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, sha = await repository(workspaces, root / "poetry-repo", {
        "pyproject.toml": POETRY_PROJECT, "poetrydemo/__init__.py": "def answer():\n    return 1\n",
        "tests/test_mocker.py": MOCKER_TEST})

    env = await builder.ensure(upstream.url, sha)

    assert "poetry install --no-interaction --with dev" in env.plan.steps[1]
    assert env.plan.package_manager == "poetry" and env.plan.test_runner == "pytest"
    result = await run_tests(builder, env, upstream, sha, ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
    assert result.exit_code == 0 and "1 passed" in result.output_tail, result.output_tail


PDM_PROJECT = """\
[project]
name = "pdmdemo"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = []

[tool.pdm]
distribution = false

[tool.pdm.dev-dependencies]
test = ["pytest"]
"""
# what `pdm lock` writes, cut to what installing reads: pytest 8.3.3 and its dependencies
PDM_LOCK = "[metadata]\ngroups = [\"default\", \"test\"]\nlock_version = \"4.5.0\"\n" + "".join(
    f'\n[[package]]\nname = "{name}"\nversion = "{version}"\ngroups = ["test"]\n'
    for name, version in (("pytest", "8.3.3"), ("iniconfig", "2.0.0"), ("packaging", "24.1"), ("pluggy", "1.5.0")))


async def test_a_pdm_lock_installs_exactly_the_locked_versions(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    upstream, sha = await repository(workspaces, root / "pdm-repo", {
        "pyproject.toml": PDM_PROJECT, "pdm.lock": PDM_LOCK, "tests/test_it.py": "def test_it():\n    assert True\n"})

    env = await builder.ensure(upstream.url, sha)

    assert env.plan.package_manager == "pdm"
    result = await run_tests(builder, env, upstream, sha, ["python", "-m", "pytest", "-p", "no:cacheprovider"])
    assert result.exit_code == 0 and "pytest-8.3.3, pluggy-1.5.0" in result.output_tail, result.output_tail


# -- JavaScript ---------------------------------------------------------------------------


async def suite_verdicts(builder: EnvironmentBuilder, upstream: Upstream, sha: str, broken: dict[str, str]
                         ) -> tuple[CommandRun, CommandRun]:
    """The platform's own run of the whole suite (what verification and rerun-tests run) on `sha`,
    and on a commit where `broken` makes a test fail: the second fails only if the tests ran."""
    verifier = Verifier(builder.workspaces, builder, builder.sandbox)
    passing = await verifier.rerun_suite(upstream.url, sha, name=f"suite-{sha[:8]}")
    failing_sha = upstream.commit(broken)
    await builder.workspaces.resolve(upstream.url)
    failing = await verifier.rerun_suite(upstream.url, failing_sha, name=f"suite-{failing_sha[:8]}")
    return passing, failing


PNPM_PACKAGE = {
    "name": "pnpmdemo", "version": "1.0.0", "private": True, "type": "module", "packageManager": "pnpm@9.15.0",
    "scripts": {"test": "pnpm lint && pnpm typecheck && vitest run", "lint": "eslint .", "typecheck": "tsc --noEmit"},
    "devDependencies": {"vitest": "^3.2.0"},
}


async def test_a_pnpm_project_installs_with_pnpm_and_its_vitest_suite_runs_without_the_lint_chain(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    scratch = root / "pnpm-lock"
    scratch.mkdir()
    (scratch / "package.json").write_text(json.dumps(PNPM_PACKAGE, indent=2))
    done = host_tool(["corepack", "pnpm", "install", "--lockfile-only", "--store-dir", str(scratch / "store")],
                     scratch, **corepack_env(scratch))
    assert done.returncode == 0, done.stdout + done.stderr
    upstream, sha = await repository(workspaces, root / "pnpm-repo", {
        "package.json": json.dumps(PNPM_PACKAGE, indent=2), "pnpm-lock.yaml": (scratch / "pnpm-lock.yaml").read_text(),
        "test/sum.test.ts": VITEST_TEST})

    env = await builder.ensure(upstream.url, sha)

    assert env.plan.steps == ["corepack pnpm install --frozen-lockfile"]
    assert env.plan.test_script == "vitest run" and env.plan.suite_command is None
    assert "package.json's packageManager is pnpm@9.15.0" in env.plan.reasons
    passing, failing = await suite_verdicts(builder, upstream, sha,
                                            {"test/sum.test.ts": VITEST_TEST.replace("toBe(3)", "toBe(4)")})
    assert passing.exit_code == 0 and "pnpm: not found" not in passing.output_tail, passing.output_tail
    assert "vitest run" in passing.command and "pnpm" not in passing.command and "lint" not in passing.command
    assert failing.exit_code != 0, failing.output_tail  # the suite really ran the test
    pnpm = await run_tests(builder, env, upstream, sha, ["pnpm", "--version"])  # for sessions: offline, from /env
    assert pnpm.exit_code == 0 and pnpm.output_tail.strip().endswith("9.15.0"), pnpm.output_tail


YARN_PACKAGE = {
    "name": "yarndemo", "version": "1.0.0", "private": True,
    "scripts": {"test": "vitest --ui"},
    # react-dom 17 wants react 17 as its peer: yarn classic warns, npm refuses (ERESOLVE)
    "dependencies": {"react": "18.2.0", "react-dom": "17.0.2"},
    "devDependencies": {"vitest": "^3.2.0"},
}


async def test_a_yarn_classic_project_installs_with_yarn_despite_a_peer_conflict_and_tests_with_vitest_run(
        root: Path, workspaces: WorkspaceManager, builder: EnvironmentBuilder) -> None:
    scratch = root / "yarn-lock"
    scratch.mkdir()
    (scratch / "package.json").write_text(json.dumps(YARN_PACKAGE, indent=2))
    npm = host_tool(["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"], scratch,
                    npm_config_cache=str(scratch / "npm-cache"))
    assert npm.returncode != 0 and "ERESOLVE" in npm.stdout + npm.stderr  # what `npm install` does with it
    (scratch / "package-lock.json").unlink(missing_ok=True)
    done = host_tool(["corepack", "yarn@1.22.22", "install", "--ignore-scripts", "--cache-folder",
                      str(scratch / "yarn-cache")], scratch, **corepack_env(scratch))
    assert done.returncode == 0, done.stdout + done.stderr
    upstream, sha = await repository(workspaces, root / "yarn-repo", {
        "package.json": json.dumps(YARN_PACKAGE, indent=2), "yarn.lock": (scratch / "yarn.lock").read_text(),
        "test/sum.test.js": VITEST_TEST})

    env = await builder.ensure(upstream.url, sha)

    assert env.plan.steps == ["corepack yarn@1.22.22 install --non-interactive --ignore-engines --frozen-lockfile"]
    assert env.plan.test_script == "vitest run"
    assert "package.json's test script (`vitest --ui`) is interactive: `vitest run` instead (--ui dropped)" \
        in env.plan.reasons
    passing, failing = await suite_verdicts(builder, upstream, sha,  # --ui would serve a page and never end
                                            {"test/sum.test.js": VITEST_TEST.replace("toBe(3)", "toBe(4)")})
    assert passing.exit_code == 0 and not passing.timed_out, passing.output_tail
    assert "vitest run" in passing.command and "--ui" not in passing.command
    assert failing.exit_code != 0 and not failing.timed_out, failing.output_tail

