"""Real upstream bugs through the whole platform: `python -m bench.realbugs [--only NAME ...]`.

Each bug under tests/realbugs/ is a buggy commit of a public repository, the upstream test
change and the upstream fix, and bug.yaml (see tests/realbugs/README.md). Five are vendored
(a tarball and two patches); the others are metadata only and are materialised here from a
fetched upstream snapshot ($REALBUGS_SNAPSHOTS, default /work/.mirror). How a bug goes through
is tests/upstream_bugs.py, which tests/test_realbugs.py drives too. For each bug present this builds a local git remote from the buggy tree, then
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
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fixfleet.ports import free_port
from tests.upstream_bugs import (Bug, Outcome, fetch_line, load_all, make_remote, platform_env, run_bug,
                                 snapshots_root, summary, with_contents)


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
    options = PlatformOptions(http_port=free_port(), executors=1, env=platform_env(root, bugs),
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


if __name__ == "__main__":
    main()
