"""The five vendored real upstream bug fixes through the whole platform, each in its own repository's environment.

The repositories (tests/realbugs/) cover a package with runtime dependencies and a coverage
gate in its pytest addopts (arrow), a `src/` layout built with hatch-vcs and no `.git`
(humanize), a repository tested with unittest from a root-level `tests.py` (python-json-patch),
one with over a thousand tests (marshmallow) and a JavaScript package tested with jest
(commander). Nothing tells the platform how to set them up: it detects it, builds each
environment in the sandbox, and proves the scripted agent's change on its own. The fixtures that
are metadata only (materialised from a fetched upstream snapshot) run in `python -m bench.realbugs`,
not here: this module must not depend on snapshots a CI machine does not have.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixfleet.config import Settings
from fixfleet.platform import Platform, PlatformOptions
from fixfleet.ports import free_port
from fixfleet.replay import ReplayServer
from tests.slate import clean_slate
from tests.upstream_bugs import Bug, load_bugs, make_remote, platform_env, run_bug

pytestmark = pytest.mark.e2e
BUGS = load_bugs(vendored_only=True)


@dataclass
class World:
    platform: Platform
    planner: ReplayServer
    executor: ReplayServer
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[World]:
    clean_slate(database_url, redis_url)
    root = tmp_path_factory.mktemp("realbugs")
    saved_env = dict(os.environ)
    planner, executor = ReplayServer("one_turn").start(), ReplayServer("one_turn").start()
    settings = Settings(database_url=database_url, redis_url=redis_url, home=root / "home")
    options = PlatformOptions(http_port=free_port(), executors=1, env=platform_env(root),
                              planner_overrides={"anthropic_base_url": planner.url},
                              executor_overrides={"anthropic_base_url": executor.url})
    platform = Platform(settings, options)
    try:
        platform.start(progress=lambda line: None)
        yield World(platform, planner, executor, root)
    finally:
        platform.stop()
        planner.stop()
        executor.stop()
        os.environ.clear()
        os.environ.update(saved_env)


def git(remote: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(remote), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("bug", BUGS, ids=[bug.name for bug in BUGS])
def test_upstream_fix_is_proven_and_pushed(world: World, bug: Bug) -> None:
    remote = make_remote(bug, world.root / "remotes")
    outcome = run_bug(bug, world.platform.url, remote, world.planner, world.executor)

    assert outcome.status == "COMPLETED", outcome.reason
    assert outcome.red != 0 and outcome.suite == 0 and outcome.evidence_ok
    for failing in bug.meta["failing_tests"]:  # the upstream regression tests went red, then green
        name = failing.split("::")[-1].split(".")[-1].split(" › ")[-1]
        assert any(name in test for test in outcome.fail_to_pass), (failing, outcome.fail_to_pass)

    branch = git(remote, "for-each-ref", "--format=%(refname:short)", "refs/heads/fixfleet/").split()[0]
    subjects = git(remote, "log", "--format=%s", f"main..{branch}").splitlines()
    assert [s.split(":")[0] for s in subjects] == ["fix", "test", "docs"]
    tests_commit, fix_commit = f"{branch}~1", branch
    assert sorted(git(remote, "diff", "--name-only", f"{branch}~2", tests_commit).split()) == sorted(bug.meta["test_files"])
    assert sorted(git(remote, "diff", "--name-only", tests_commit, fix_commit).split()) == sorted(bug.meta["fix_files"])
    for path, text in {**bug.tests_after, **bug.fix_after}.items():
        assert git(remote, "show", f"{branch}:{path}") == text  # exactly the upstream change, nothing more
