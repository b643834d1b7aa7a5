"""Real upstream bugs through the whole platform: `python -m bench.realbugs [--only NAME ...]`.

Each bug under tests/realbugs/ is the buggy commit of a public repository (a tarball), the
upstream test change and the upstream fix (patches), and bug.yaml (see tests/realbugs/README.md).
For each one this builds a local git remote from the tarball, then drives the real platform
(Ray, Serve, a planner and an executor, the real claude CLI in the sandbox) with scripted
model sessions that apply the upstream test and then the upstream fix. The platform must set
the repository up by itself and prove the change (RED, GREEN, suite) before it pushes. How a bug
goes through is tests/upstream_bugs.py, which tests/test_realbugs.py drives too.

Printed per bug: status, RED/GREEN/suite exit codes, the tests that went red to green, the
environment's build time cold and warm (measured apart, with the same builder the agents
use), and the platform's own time for the task: planning and execution stages minus the
time inside Claude sessions. The last line is one JSON object:
{"bugs", "completed", "evidence_ok", "env_cold_s", "env_warm_s", "overhead_p50_s"}.
Goal: every bug completed with its evidence; a warm environment ready in under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fixfleet.ports import free_port
from tests.upstream_bugs import Bug, load_bugs, make_remote, platform_env, run_bug


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.realbugs")
    parser.add_argument("--only", nargs="*", help="bug names (default: all)")
    args = parser.parse_args()

    from fixfleet.config import Settings
    from fixfleet.platform import Platform, PlatformOptions
    from fixfleet.replay import ReplayServer

    bugs = load_bugs(args.only)
    root = Path(tempfile.mkdtemp(prefix="bench-realbugs-"))
    outcomes = []
    planner, executor = ReplayServer("one_turn").start(), ReplayServer("one_turn").start()
    settings = Settings(home=root / "home", database_url=os.environ.get("DATABASE_URL"),
                        redis_url=os.environ.get("REDIS_URL"))
    options = PlatformOptions(http_port=free_port(), executors=1, env=platform_env(root),
                              planner_overrides={"anthropic_base_url": planner.url},
                              executor_overrides={"anthropic_base_url": executor.url})
    platform = Platform(settings, options)
    try:
        platform.start(progress=lambda line: print(f"  {line}", file=sys.stderr))
        for bug in bugs:
            remote = make_remote(bug, root / "remotes")
            outcome = run_bug(bug, platform.url, remote, planner, executor)
            outcome.env_cold_s, outcome.env_warm_s = asyncio.run(environment_times(bug, remote, root / f"env-{bug.name}"))
            outcomes.append(outcome)
            print(f"{bug.name:24} {outcome.status:10} RED {outcome.red} GREEN {outcome.green} suite {outcome.suite}  "
                  f"env cold {outcome.env_cold_s}s warm {outcome.env_warm_s}s  platform {outcome.platform_s}s  "
                  f"red->green {len(outcome.red_to_green)}" + ("" if outcome.evidence_ok else f"  ({outcome.reason[:200]})"))
    finally:
        platform.stop()
        planner.stop()
        executor.stop()
        shutil.rmtree(root, ignore_errors=True)
    overheads = [o.platform_s for o in outcomes if o.platform_s is not None]
    print(json.dumps({
        "bugs": len(outcomes), "completed": sum(o.status == "COMPLETED" for o in outcomes),
        "evidence_ok": sum(o.evidence_ok for o in outcomes),
        "env_cold_s": round(statistics.median([o.env_cold_s for o in outcomes]), 2) if outcomes else None,
        "env_warm_s": round(max(o.env_warm_s for o in outcomes), 4) if outcomes else None,
        "overhead_p50_s": round(statistics.median(overheads), 2) if overheads else None,
    }))


if __name__ == "__main__":
    main()
