"""fixfleet as a user installs it: a wheel built from this checkout, installed (not editable) in a
fresh virtual environment with the image's locked dependencies, runs `fixfleet demo` to COMPLETED
from a directory that is not the repository. Everything it reads (skills, the Serve config,
migrations, the command definitions, the scripted model's scenarios, the sandbox helpers, the
console's templates) has to come from the installed package; the benchmarks are not in it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from redis import Redis

from fixfleet.ports import free_port

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "cluster" / "image" / "requirements.txt"
# What a build does not need from the checkout (and must not pick up: a stale build/ of an
# earlier layout would put its files in the wheel).
NOT_COPIED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "node_modules", ".venv", "tests", "notebooks", "docs")


def run(args: list[str | Path], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    assert Path(found).exists(), "uv is not installed"
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a clean copy of this checkout (its links into skills/ and cluster/ kept)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_COPIED)
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", root / "dist"], cwd=source,
        timeout=300)
    (built,) = (root / "dist").glob("fixfleet-*.whl")
    return built


def test_the_wheel_ships_the_packages_and_their_data_but_not_the_benchmarks(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"fixfleet", "serve_app", "actors"}, "the three packages are installed, and nothing else"
    for needed in ("fixfleet/data/skills/mcp.json", "fixfleet/data/skills/planning/plan-changes/SKILL.md",
                   "fixfleet/data/serve_config.yaml", "fixfleet/commands/definitions.yaml",
                   "fixfleet/store/migrations/0001_tasks.sql", "fixfleet/replay/scenarios/demo_planner.yaml",
                   "fixfleet/workspace/sandbox_helpers/jest_run.js", "serve_app/console/templates/base.html",
                   "serve_app/console/static/htmx.min.js"):
        assert needed in names, f"{needed} is not in the wheel"
    shipped = {name for name in names if name.startswith("fixfleet/data/skills/")}
    in_checkout = {f"fixfleet/data/skills/{path.relative_to(ROOT / 'skills')}"
                   for path in (ROOT / "skills").rglob("*") if path.is_file()}
    assert shipped == in_checkout, "every skill file, and only those"


def test_installed_wheel_runs_the_demo_to_completed(wheel: Path, tmp_path: Path, database_url: str,
                                                    redis_url: str) -> None:
    venv = tmp_path / "venv"
    run([uv(), "venv", "--quiet", "--python", sys.executable, venv], timeout=120)
    python = venv / "bin" / "python"
    # The image's way: the locked dependencies, then fixfleet itself from its wheel.
    run([uv(), "pip", "sync", "--quiet", "--python", python, LOCK], timeout=600)
    run([uv(), "pip", "install", "--quiet", "--python", python, "--no-deps", wheel], timeout=120)

    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing may be found through the working directory
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FIXFLEET_", "ANTHROPIC_", "GITHUB_", "SLACK_", "JIRA_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "DATABASE_URL": database_url,
            "REDIS_URL": redis_url, "FIXFLEET_HOME": str(tmp_path / "home")}
    where = run([python, "-c", "import actors, fixfleet, serve_app; from actors.skills import SKILLS_ROOT; "
                 "print(fixfleet.__file__, serve_app.__file__, actors.__file__, SKILLS_ROOT)"],
                cwd=elsewhere, env=env, timeout=120).stdout.split()
    assert all(Path(path).is_relative_to(venv) for path in where), f"not the installed package: {where}"
    assert run([python, "-c", "import importlib.util; print(importlib.util.find_spec('bench'))"], cwd=elsewhere,
               env=env, timeout=60).stdout.strip() == "None", "bench is installed"

    Redis.from_url(redis_url).flushdb()
    try:
        demo = run([venv / "bin" / "fixfleet", "demo", "--json", "--http-port", str(free_port())], cwd=elsewhere,
                   env=env, timeout=600)
    finally:
        Redis.from_url(redis_url).flushdb()
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["status"] == "COMPLETED", summary
    assert (summary["red_exit_code"], summary["green_exit_code"], summary["suite_exit_code"]) == (1, 0, 0)
