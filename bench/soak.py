"""Nothing grows without bound: `python -m bench.soak [--tasks 500] [--min 1] [--max 3]`.

The whole platform on this one node (fixfleet/platform.py: Ray, the Serve application, the
planner, the executor pool, the relay; Postgres and Redis from DATABASE_URL / REDIS_URL, a
throwaway database and one Redis database), driven for N tasks of the demo scenario (statskit's
ZeroDivisionError: the real claude CLI against the scripted model, the real sandbox, the
platform's own RED/GREEN/suite proof, a push): approved tasks arrive in bursts of random size,
each followed by an idle gap long enough for the executor pool to shrink back to its minimum,
so the pool scales between its bounds again and again and replicas come and go.

Every few seconds it samples the disk used under FIXFLEET_HOME and the platform's temporary
directories (Ray's, the model and egress sockets'), the resident memory and open descriptors of
every process the platform runs (Ray's, the replicas', the sandboxes'), and the connections to
the Postgres database. Growth is measured at the end of each idle gap (nothing in flight) after
the first 100 tasks (a third of them when fewer than 300 run): the slope per 100 tasks. Printed:
each figure's growth, the pool's scale-ups and scale-downs, a plot of the samples
(bench/out/soak-<time>.png), and last one JSON line: {"tasks", "disk_mb_per_100",
"rss_mb_per_100", "fds_per_100", "pg_conns_max", "lost", "duplicated"} (plus the run's length and
the pool's moves). Goal: disk under 5 MB and memory under 20 MB per 100 tasks, nothing lost or
done twice.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from tests.scaling import PLAN  # what the demo planner submits: the executor's prompt quotes it

OUT_DIR = Path(__file__).resolve().parent / "out"
REDIS_DB = 15  # unless REDIS_URL names a database of its own (the suite uses 13, bench.scale 14)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "REJECTED"}


@dataclass
class Sample:
    at: float  # seconds since the start
    ended: int  # tasks ended so far
    disk_mb: float
    rss_mb: float
    fds: int
    pg_conns: int
    executors: int
    homes: int  # agent homes on disk (a replica that is gone leaves one until the sweeper takes it)
    idle: bool = False  # taken at the end of an idle gap: nothing in flight
    disk_parts: dict[str, float] = field(default_factory=dict)  # MB per place: where growth comes from
    rss_parts: dict[str, float] = field(default_factory=dict)  # MB per kind of process
    fds_parts: dict[str, float] = field(default_factory=dict)  # open descriptors per kind of process


@dataclass
class Soak:
    tasks: int
    executors_min: int
    executors_max: int
    sample_s: float
    scale_down_after_s: float
    seed: int
    samples: list[Sample] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def say(self, line: str) -> None:
        print(f"[{datetime.now():%H:%M:%S}] {line}", file=sys.stderr, flush=True)


# --- measuring -------------------------------------------------------------------------------


def temp_dirs(ray_temp: Path | None) -> list[Path]:
    """The platform's temporary directories now: Ray's and the socket directories of sessions."""
    found = [ray_temp] if ray_temp else []
    temp = tempfile.gettempdir()
    return found + [Path(p) for pattern in ("ff-model-*", "ff-egress-*") for p in glob.glob(f"{temp}/{pattern}")]


def disk_parts(home: Path, ray_temp: Path | None) -> dict[str, float]:
    """MB on disk per place: the node cache's mirrors and the rest of it, the agents' homes, the
    rest of the home, Ray's logs and the rest of its temp dir, the sessions' socket directories."""
    from fixfleet.workspace.trees import disk_usage

    def mb(path: Path) -> float:
        return disk_usage(path).bytes / 1e6

    cache, agents = home / "cache", home / "agents"
    parts = {"mirrors": mb(cache / "mirrors"), "cache_other": mb(cache) - mb(cache / "mirrors"),
             "agent_homes": mb(agents)}
    parts["home_other"] = mb(home) - parts["mirrors"] - parts["cache_other"] - parts["agent_homes"]
    if ray_temp is not None:
        logs = sum(mb(p) for p in ray_temp.glob("ray/session_*/logs"))
        parts |= {"ray_logs": logs, "ray_other": mb(ray_temp) - logs}
    parts["sockets"] = sum(mb(p) for p in temp_dirs(None))
    return {name: round(value, 3) for name, value in parts.items()}


def kind_of(process: psutil.Process) -> str:
    """What a process of the platform is, for the memory breakdown."""
    try:
        title = " ".join(process.cmdline())[:300]
        name = process.name()
    except psutil.Error:
        return "gone"
    for marker in ("ServeReplica:fixfleet:executor", "ServeReplica:fixfleet:planner", "ServeReplica:fixfleet:relay",
                   "ServeReplica:fixfleet:ingress", "ServeController", "ProxyActor", "gcs_server", "raylet",
                   "dashboard", "log_monitor", "runtime_env", "monitor.py", "claude", "bwrap", "pytest"):
        if marker in title:
            return marker.removeprefix("ServeReplica:fixfleet:")
    return "ray::IDLE" if "ray::IDLE" in title else name


def processes_figures() -> tuple[float, int, dict[str, float], dict[str, float]]:
    """Resident memory (MB) and open descriptors of every process this one started: the
    platform (Ray's processes, the replicas, their sessions); the bench's own process is left out.
    Also both per kind of process."""
    rss, fds, parts, fd_parts = 0, 0, {}, {}
    for process in psutil.Process().children(recursive=True):
        try:
            mine, open_fds = process.memory_info().rss, process.num_fds()
        except psutil.Error:
            continue
        rss, fds = rss + mine, fds + open_fds
        kind = kind_of(process)
        parts[kind] = round(parts.get(kind, 0.0) + mine / 1e6, 1)
        fd_parts[kind] = fd_parts.get(kind, 0) + open_fds
    return rss / 1e6, fds, parts, fd_parts


def executor_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get("fixfleet")
    executor = app.deployments.get("executor") if app else None
    return executor.replica_states.get("RUNNING", 0) if executor else 0


async def sample(soak: Soak, store: Any, home: Path, ray_temp: Path | None, *, idle: bool = False) -> Sample:
    statuses = await task_statuses(store, soak)
    disks = await asyncio.to_thread(disk_parts, home, ray_temp)
    disk = sum(disks.values())
    rss, fds, rss_parts, fds_parts = await asyncio.to_thread(processes_figures)
    conns = await store.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    executors = await asyncio.to_thread(executor_replicas)
    homes = sum(1 for p in (home / "agents").glob("*") if p.is_dir())
    taken = Sample(round(time.monotonic() - soak.started, 1), sum(s in ENDED for s in statuses.values()),
                   round(disk, 2), round(rss, 1), fds, int(conns), executors, homes, idle, disks, rss_parts, fds_parts)
    soak.samples.append(taken)
    return taken


async def task_statuses(store: Any, soak: Soak) -> dict[str, str]:
    rows = await store.pool.fetch("SELECT key, status FROM tasks WHERE key = ANY($1::text[])", soak.keys)
    return {row["key"]: row["status"] for row in rows}


def per_100(samples: list[Sample], figure: str, warmup: int, part: str | None = None) -> float | None:
    """The least-squares slope of `figure` (or its `part`) against tasks ended, per 100 tasks,
    over the idle samples after `warmup` tasks (all samples after it when fewer than two were idle)."""
    chosen = [s for s in samples if s.idle and s.ended >= warmup]
    if len({s.ended for s in chosen}) < 2:
        chosen = [s for s in samples if s.ended >= warmup]
    value = (lambda s: getattr(s, figure)) if part is None else (lambda s: getattr(s, figure).get(part, 0.0))
    xs, ys = [s.ended for s in chosen], [float(value(s)) for s in chosen]
    if len(set(xs)) < 2:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return round(slope * 100, 2)


# --- driving ---------------------------------------------------------------------------------


async def enqueue(store: Any, repo: str, count: int, first: int) -> list[str]:
    """`count` tasks straight to execution: the plan a planner would have written, approved."""
    from fixfleet.models import NewTask, Source, TaskStatus

    keys = []
    for n in range(first, first + count):
        task, _ = await store.create_task(NewTask(
            source=Source.CLI, repo=repo, title=f"ZeroDivisionError in statskit.mean ({n + 1})",
            body="Traceback: statskit/mean.py line 6, in mean: ZeroDivisionError: division by zero"))
        await store.transition(task.id, TaskStatus.PLANNING, actor="bench", reason="seeded")
        await store.transition(task.id, TaskStatus.AWAITING_APPROVAL, actor="bench", reason="plan v1 seeded",
                               changes={"plan": PLAN, "plan_version": 1})
        await store.transition(task.id, TaskStatus.APPROVED, actor="bench", reason="approved",
                               data={"plan_version": 1})
        keys.append(task.key)
    return keys


async def drive(soak: Soak, store: Any, repo: str, home: Path, ray_temp: Path | None) -> None:
    rng = random.Random(soak.seed)
    low, high = soak.executors_max, 3 * soak.executors_max * 2  # bursts that fill the pool and more
    while len(soak.keys) < soak.tasks:
        burst = min(rng.randint(low, high), soak.tasks - len(soak.keys))
        soak.keys += await enqueue(store, repo, burst, len(soak.keys))
        soak.say(f"burst of {burst} (submitted {len(soak.keys)}/{soak.tasks})")
        last = await wait_until(soak, store, home, ray_temp, lambda s: s.ended >= len(soak.keys), 600 + 60 * burst)
        soak.say(f"queue drained: {last.ended} ended, {last.executors} executors; idle gap")
        await wait_until(soak, store, home, ray_temp, lambda s: s.executors <= soak.executors_min,
                         soak.scale_down_after_s + 120)
        await asyncio.sleep(2)  # the retired replicas' last clean-up
        idle = await sample(soak, store, home, ray_temp, idle=True)
        soak.say(f"idle: disk {idle.disk_mb} MB, rss {idle.rss_mb} MB, fds {idle.fds}, pg {idle.pg_conns}, "
                 f"executors {idle.executors}, agent homes {idle.homes}")


async def wait_until(soak: Soak, store: Any, home: Path, ray_temp: Path | None, done: Any, timeout_s: float) -> Sample:
    deadline = time.monotonic() + timeout_s
    while True:
        taken = await sample(soak, store, home, ray_temp)
        if done(taken) or time.monotonic() > deadline:
            if not done(taken):
                soak.say(f"gave up waiting after {timeout_s:.0f}s")
            return taken
        await asyncio.sleep(soak.sample_s)


async def account(store: Any, soak: Soak) -> tuple[int, int]:
    """Lost (not completed) and duplicated (completed, or pushed, more than once) from the audit trail."""
    lost = duplicated = 0
    for key in soak.keys:
        completions = [e for e in await store.events(key) if e.to_status == "COMPLETED"]
        lost += not completions
        duplicated += len(completions) > 1
    return lost, duplicated


# --- the run ---------------------------------------------------------------------------------


def run(soak: Soak, postgres: str, redis_server: str) -> dict[str, Any]:
    from fixfleet.config import Settings
    from fixfleet.demo import make_sample_repo
    from fixfleet.platform import Platform, PlatformOptions
    from fixfleet.ports import free_port
    from fixfleet.replay import ReplayServer
    from fixfleet.scratch import create_database, drop_database, flush_redis, named_redis_db, redis_db_url

    root = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    remote = make_sample_repo(root)
    database = asyncio.run(create_database(postgres, prefix="fixfleet_soak"))
    redis_url = redis_db_url(redis_server, named_redis_db(redis_server) or REDIS_DB)
    asyncio.run(flush_redis(redis_url))
    planner_model, executor_model = ReplayServer("demo_planner").start(), ReplayServer("demo_executor").start()
    (root / "no-mcp.json").write_text('{"mcpServers": {}}')
    env = {"FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]), "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{root}/*"]),
           "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"), "ANTHROPIC_API_KEY": "bench-soak-model-key",
           "FIXFLEET_SCALE_DOWN_AFTER_S": str(soak.scale_down_after_s), "FIXFLEET_EXECUTORS_MIN": str(soak.executors_min),
           "FIXFLEET_TASKS_PER_EXECUTOR": "2", "FIXFLEET_MAX_ATTEMPTS": "2", "FIXFLEET_SWEEP_EVERY_S": "60"}
    settings = Settings(database_url=database, redis_url=redis_url, home=root / "home",
                        executors_min=soak.executors_min, scale_down_after_s=soak.scale_down_after_s)
    platform = Platform(settings, PlatformOptions(
        http_port=free_port(), executors=soak.executors_max, env=env,
        planner_overrides={"anthropic_base_url": planner_model.url},
        executor_overrides={"anthropic_base_url": executor_model.url}))
    saved_env = dict(os.environ)
    try:
        soak.say(f"starting the platform (executors {soak.executors_min}-{soak.executors_max}) under {root}")
        platform.start(progress=lambda line: None)
        soak.started = time.monotonic()
        return asyncio.run(_drive_and_account(soak, database, f"file://{remote}", root / "home", platform.ray_temp_dir))
    finally:
        platform.stop()
        planner_model.stop()
        executor_model.stop()
        os.environ.clear()
        os.environ.update(saved_env)
        asyncio.run(flush_redis(redis_url))
        asyncio.run(drop_database(postgres, database))
        shutil.rmtree(root, ignore_errors=True)


async def _drive_and_account(soak: Soak, database: str, repo: str, home: Path, ray_temp: Path | None) -> dict[str, Any]:
    from fixfleet.store import Store

    store = await Store.connect(database, migrate=False, min_size=1, max_size=2)
    try:
        await sample(soak, store, home, ray_temp, idle=True)  # the platform up, before any task
        await drive(soak, store, repo, home, ray_temp)
        lost, duplicated = await account(store, soak)
    finally:
        await store.close()
    return summarize(soak, lost, duplicated)


def summarize(soak: Soak, lost: int, duplicated: int) -> dict[str, Any]:
    warmup = min(100, soak.tasks // 3)
    moves = [b.executors - a.executors for a, b in zip(soak.samples, soak.samples[1:]) if b.executors != a.executors]
    return {"tasks": soak.tasks, "disk_mb_per_100": per_100(soak.samples, "disk_mb", warmup),
            "rss_mb_per_100": per_100(soak.samples, "rss_mb", warmup), "fds_per_100": per_100(soak.samples, "fds", warmup),
            "pg_conns_max": max((s.pg_conns for s in soak.samples), default=0), "lost": lost, "duplicated": duplicated,
            "warmup_tasks": warmup, "wall_s": round(time.monotonic() - soak.started),
            "scale_ups": sum(m > 0 for m in moves), "scale_downs": sum(m < 0 for m in moves),
            "executors_seen": sorted({s.executors for s in soak.samples}),
            "agent_homes_max": max((s.homes for s in soak.samples), default=0),
            "disk_mb_per_100_by_place": breakdown(soak, "disk_parts", warmup),
            "rss_mb_per_100_by_process": breakdown(soak, "rss_parts", warmup),
            "fds_per_100_by_process": breakdown(soak, "fds_parts", warmup)}


def breakdown(soak: Soak, figure: str, warmup: int) -> dict[str, float | None]:
    names = sorted({name for s in soak.samples if s.idle for name in getattr(s, figure)})
    slopes = {name: per_100(soak.samples, figure, warmup, name) for name in names}
    return dict(sorted(slopes.items(), key=lambda item: -abs(item[1] or 0)))


def plot(soak: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [("disk_mb", "disk MB (home + temp)"), ("rss_mb", "platform RSS MB"), ("fds", "open fds"),
               ("pg_conns", "Postgres connections"), ("executors", "executor replicas"), ("homes", "agent homes on disk")]
    fig, axes = plt.subplots(len(figures) + 1, 1, figsize=(10, 13), sharex=True)
    xs = [s.at for s in soak.samples]
    for axis, (name, label) in zip(axes, figures):
        axis.plot(xs, [getattr(s, name) for s in soak.samples], lw=1)
        axis.scatter([s.at for s in soak.samples if s.idle], [getattr(s, name) for s in soak.samples if s.idle],
                     s=12, color="red", zorder=3, label="idle (growth measured here)")
        axis.set_ylabel(label, fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    axes[-1].plot(xs, [s.ended for s in soak.samples], lw=1, color="green")
    axes[-1].set_ylabel("tasks ended", fontsize=8)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"bench.soak: {soak.tasks} tasks, executors {soak.executors_min}-{soak.executors_max}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--min", dest="executors_min", type=int, default=1)
    parser.add_argument("--max", dest="executors_max", type=int, default=3)
    parser.add_argument("--sample-s", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--scale-down-after", type=float, default=5.0,
                        help="seconds of empty queue before the pool shrinks (the platform's default is 300)")
    parser.add_argument("--seed", type=int, default=24)
    args = parser.parse_args()
    postgres, redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not postgres or not redis:
        sys.exit(f"bench.soak needs DATABASE_URL and REDIS_URL (servers: it makes a throwaway database and uses "
                 f"the Redis database REDIS_URL names, else {REDIS_DB})")
    if not 0 <= args.executors_min < args.executors_max or args.tasks < 3:
        sys.exit("bench.soak needs --min < --max and at least 3 tasks")
    soak = Soak(args.tasks, args.executors_min, args.executors_max, args.sample_s, args.scale_down_after, args.seed)
    summary = run(soak, postgres, redis)
    picture = OUT_DIR / f"soak-{datetime.now():%Y%m%d-%H%M%S}.png"
    plot(soak, picture)
    (picture.with_suffix(".json")).write_text(json.dumps({"summary": summary, "samples": [s.__dict__ for s in soak.samples]}))
    first, last = soak.samples[0], soak.samples[-1]
    print(f"{soak.tasks} tasks in {summary['wall_s']}s · executors {soak.executors_min}-{soak.executors_max} "
          f"(scaled up {summary['scale_ups']}x, down {summary['scale_downs']}x; seen {summary['executors_seen']})")
    print(f"growth per 100 tasks after the first {summary['warmup_tasks']}: disk {summary['disk_mb_per_100']} MB, "
          f"rss {summary['rss_mb_per_100']} MB, fds {summary['fds_per_100']}; Postgres connections at most "
          f"{summary['pg_conns_max']}")
    print(f"from start to end: disk {first.disk_mb} -> {last.disk_mb} MB, rss {first.rss_mb} -> {last.rss_mb} MB, "
          f"fds {first.fds} -> {last.fds}, agent homes {first.homes} -> {last.homes} (at most {summary['agent_homes_max']})")
    print(f"disk growth per 100 tasks by place (MB): {summary['disk_mb_per_100_by_place']}")
    print(f"memory growth per 100 tasks by process (MB): {summary['rss_mb_per_100_by_process']}")
    print(f"open descriptors' growth per 100 tasks by process: {summary['fds_per_100_by_process']}")
    print(f"lost {summary['lost']} · duplicated {summary['duplicated']} · plot {picture}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
