"""The scale experiment: the whole application on a local autoscaling Ray cluster (tests/cluster.py),
N tasks of the demo scenario put on the execution queue at once, the executor pool and the
cluster's nodes sampled every half second until both are back at their minimum.

tests/test_scale.py runs it with a few tasks through the planner and asserts what it saw;
`python -m bench.scale` runs it at full size and prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import LocalAutoscalingCluster, agent_node_types

PLAN = {  # what the demo planner submits: the executor's prompt quotes it
    "repository": "statskit", "confidence": 0.92,
    "affected_files": [{"path": "statskit/mean.py", "reason": "mean() divides by len(values), 0 for an empty list"}],
    "root_cause": "statskit.mean.mean() divides by len(values); for an empty list that is 0.",
    "steps": ["Add a test asserting mean([]) returns 0.0", "Return 0.0 from mean() when values is empty"],
    "tests_to_add": [{"path": "tests/test_mean.py::test_mean_of_empty_list", "description": "mean([]) == 0.0"}],
    "test_command": "python -m pytest -q tests/test_mean.py", "risk": "low",
}
REDIS_DB = 14  # the suite uses 13 and the Serve test 12


@dataclass
class ScaleRun:
    tasks: int = 64
    executors_min: int = 2
    executors_max: int = 8
    slots_per_node: int = 2  # executor slots each executor node offers
    scale_down_after_s: float = 10.0
    through_planner: bool = False  # submit the tasks and approve each plan (else: approved tasks straight away)
    timeout_s: float = 1200.0
    progress: Any = None  # a callable taking a line, or None


@dataclass
class Observed:
    """What the run saw, sampled every half second."""

    started: float = 0.0  # first enqueue (time.time())
    replicas: list[tuple[float, int]] = field(default_factory=list)  # executor replicas RUNNING
    nodes: list[tuple[float, int]] = field(default_factory=list)  # alive nodes offering executor slots
    statuses: dict[str, str] = field(default_factory=dict)  # task key -> status
    replica_actors: list[dict[str, Any]] = field(default_factory=list)  # the State API's view, at the peak
    first_scale_up_s: float | None = None
    scale_down_s: float | None = None
    makespan_s: float | None = None
    ideal_s: float | None = None
    work_s: float = 0.0
    completed: int = 0
    duplicated: int = 0
    metric_names: set[str] = field(default_factory=set)  # exported by the nodes and the ingress at the end

    @property
    def max_replicas(self) -> int:
        return max((n for _, n in self.replicas), default=0)

    @property
    def executor_actors(self) -> int:
        return sum(a["class_name"] == "ServeReplica:fixfleet:executor" for a in self.replica_actors)

    @property
    def max_nodes(self) -> int:
        return max((n for _, n in self.nodes), default=0)

    def summary(self, run: ScaleRun) -> dict[str, Any]:
        ratio = round(self.makespan_s / self.ideal_s, 3) if self.makespan_s and self.ideal_s else None
        return {"makespan_s": _round(self.makespan_s), "ideal_s": _round(self.ideal_s), "ratio": ratio,
                "first_scale_up_s": _round(self.first_scale_up_s), "scale_down_s": _round(self.scale_down_s),
                "lost": run.tasks - self.completed, "duplicated": self.duplicated}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run(settings: ScaleRun, root: Path, postgres_url: str, redis_server_url: str) -> Observed:
    """The whole experiment; every process it started is gone when it returns."""
    from fixfleet.demo import make_sample_repo
    from fixfleet.replay import ReplayServer
    from fixfleet.scratch import (
        create_database,
        drop_database,
        flush_redis,
        redis_db_url,
    )

    say = settings.progress or (lambda line: None)
    remote = make_sample_repo(root)
    database = asyncio.run(create_database(postgres_url))
    redis_url = redis_db_url(redis_server_url, REDIS_DB)
    asyncio.run(flush_redis(redis_url))
    planner_model, executor_model = ReplayServer("demo_planner").start(), ReplayServer("demo_executor").start()
    env = _platform_env(root, database, redis_url, settings)
    nodes = agent_node_types(executor_nodes=math.ceil(settings.executors_max / settings.slots_per_node),
                             slots_per_node=settings.slots_per_node, planner_nodes=2)
    try:
        with LocalAutoscalingCluster(nodes, env=env) as cluster:
            say(f"autoscaling cluster up at {cluster.address} (dashboard {cluster.dashboard_url})")
            return _experiment(settings, cluster, f"file://{remote}", database, planner_model.url,
                               executor_model.url, say)
    finally:
        planner_model.stop()
        executor_model.stop()
        asyncio.run(flush_redis(redis_url))
        asyncio.run(drop_database(postgres_url, database))


def _experiment(settings: ScaleRun, cluster: Any, repo: str, database: str, planner_url: str, executor_url: str,
                say: Any) -> Observed:
    from fixfleet.ports import free_port
    from fixfleet.platform import CONFIG_PATH, load_config, running_config

    config = load_config(CONFIG_PATH, http_host="127.0.0.1", http_port=free_port(), num_replicas=1, args={
        "planners_min": 1, "planners_max": 2 if settings.through_planner else 1,
        "executors_min": settings.executors_min, "executors_max": settings.executors_max,
        "planner_overrides": {"anthropic_base_url": planner_url},
        "executor_overrides": {"anthropic_base_url": executor_url}})
    config.proxy_location = "HeadOnly"  # the agent nodes serve no HTTP: idle, they can be removed
    with running_config(config, address=cluster.address, timeout_s=300) as local:
        say("application RUNNING: ingress, planner, executor pool at its minimum, relay")
        seen = asyncio.run(_drive(settings, repo, database, cluster.dashboard_url, say))
        seen.metric_names = exported_metric_names(local.url)
        return seen


def exported_metric_names(ingress_url: str) -> set[str]:
    """Every metric name the platform exports now: the ingress's /metrics and Ray's metrics
    endpoint of each live node (the agents', the policy's and Ray Serve's own). A refused
    request first, so that the error counters exist too."""
    import httpx
    import ray

    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.M)
    declared = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ", re.M)  # a counter nothing has counted yet
    names: set[str] = set()
    with httpx.Client(timeout=10) as client:
        client.post(f"{ingress_url}/tasks", json={})  # 401: no token
        ingress = client.get(f"{ingress_url}/metrics").text
        names |= set(sample.findall(ingress)) | set(declared.findall(ingress))
        time.sleep(12)  # Ray's metrics agents export every few seconds
        for node in ray.nodes():
            if node["Alive"] and node.get("MetricsExportPort"):
                url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
                with contextlib.suppress(httpx.HTTPError):
                    names |= set(sample.findall(client.get(url).text))
    return names


async def _drive(settings: ScaleRun, repo: str, database: str, state_api: str, say: Any) -> Observed:
    """`state_api`: the cluster's dashboard, which serves Ray's State API (named, never looked up:
    another Ray cluster on this machine would make the lookup join it or refuse)."""
    from fixfleet.store import Store

    seen = Observed()
    store = await Store.connect(database, migrate=False)
    try:
        seen.started = time.time()
        keys = await _enqueue(store, repo, settings)
        say(f"{len(keys)} tasks enqueued")
        deadline = time.monotonic() + settings.timeout_s
        last_done: float | None = None
        while time.monotonic() < deadline:
            await _sample(seen)
            seen.statuses = {t.key: t.status.value for t in await store.list_tasks(limit=10 * settings.tasks)}
            if settings.through_planner:
                await _approve_waiting(store, seen.statuses)
            if seen.first_scale_up_s is None and seen.replicas and seen.replicas[-1][1] > settings.executors_min:
                seen.first_scale_up_s = seen.replicas[-1][0] - seen.started
                say(f"first executor added after {seen.first_scale_up_s:.1f}s")
            if seen.replicas[-1][1] > seen.executor_actors:  # a new peak: what the State API lists now
                seen.replica_actors = await asyncio.to_thread(_replica_actors, state_api)
            ended = [s for s in seen.statuses.values() if s in ("COMPLETED", "FAILED", "CANCELLED")]
            if len(ended) == settings.tasks and last_done is None:
                last_done = time.time()
                say(f"all {settings.tasks} tasks ended ({ended.count('COMPLETED')} completed); waiting for scale-down")
            if last_done is not None and seen.replicas[-1][1] <= settings.executors_min and _nodes_shrunk(seen, settings):
                break
            await asyncio.sleep(0.5)
        await _account(store, seen, settings, last_done)
    finally:
        await store.close()
    return seen


async def _enqueue(store: Any, repo: str, settings: ScaleRun) -> list[str]:
    from fixfleet.models import NewTask, Source, TaskStatus

    created = await asyncio.gather(*(store.create_task(NewTask(
        source=Source.CLI, repo=repo, title=f"ZeroDivisionError in statskit.mean ({n + 1})",
        body="Traceback: statskit/mean.py line 6, in mean: ZeroDivisionError: division by zero"))
        for n in range(settings.tasks)))
    keys = [task.key for task, _ in created]
    if settings.through_planner:
        return keys
    for task, _ in created:  # straight to execution: the plan a planner would have written, approved
        await store.transition(task.id, TaskStatus.PLANNING, actor="bench", reason="seeded")
        await store.transition(task.id, TaskStatus.AWAITING_APPROVAL, actor="bench", reason="plan v1 seeded",
                               changes={"plan": PLAN, "plan_version": 1})
        await store.transition(task.id, TaskStatus.APPROVED, actor="bench", reason="approved",
                               data={"plan_version": 1})
    return keys


async def _approve_waiting(store: Any, statuses: dict[str, str]) -> None:
    """The human: approves every plan waiting for it, all at once when all are waiting (so that
    the execution queue fills in one go, as after a review round)."""
    from fixfleet.models import TaskStatus

    if statuses and all(s == "AWAITING_APPROVAL" for s in statuses.values()):
        for key in statuses:
            task = await store.get_task(key)
            await store.transition(task.id, TaskStatus.APPROVED, actor="reviewer", reason="approved",
                                   data={"plan_version": task.plan_version}, expected_version=task.version)


async def _sample(seen: Observed) -> None:
    replicas, nodes = await asyncio.to_thread(_pool_now)
    now = time.time()
    seen.replicas.append((now, replicas))
    seen.nodes.append((now, nodes))


def _pool_now() -> tuple[int, int]:
    import ray
    from ray import serve

    app = serve.status().applications.get("fixfleet")
    executor = app.deployments.get("executor") if app else None
    replicas = executor.replica_states.get("RUNNING", 0) if executor else 0
    nodes = sum(1 for node in ray.nodes() if node["Alive"] and node["Resources"].get("executor_slot"))
    return replicas, nodes


def _replica_actors(state_api: str) -> list[dict[str, Any]]:
    from ray.util.state import list_actors

    return [{"name": a.name, "class_name": a.class_name, "state": a.state}
            for a in list_actors(address=state_api, filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name.startswith("ServeReplica:fixfleet:")]


def _nodes_shrunk(seen: Observed, settings: ScaleRun) -> bool:
    return seen.nodes[-1][1] <= math.ceil(settings.executors_min / settings.slots_per_node)


async def _account(store: Any, seen: Observed, settings: ScaleRun, last_done: float | None) -> None:
    """Makespan, work and duplicates from the tasks' own audit trail."""
    completed_at, work = [], 0.0
    for key in seen.statuses:
        events = await store.events(key)
        completions = [e for e in events if e.to_status == "COMPLETED"]
        seen.duplicated += len(completions) > 1
        claims = [e for e in events if e.to_status == "EXECUTING"]
        if completions and claims:
            seen.completed += 1
            done = completions[-1].created_at.timestamp()
            completed_at.append(done)
            work += done - claims[0].created_at.timestamp()
    seen.work_s = work
    approved = [e.created_at.timestamp() for key in seen.statuses for e in await store.events(key)
                if e.to_status == "APPROVED"]
    start = min(approved) if approved else seen.started
    if completed_at:
        seen.makespan_s = max(completed_at) - start
        scale_up = seen.first_scale_up_s or 0.0
        seen.ideal_s = work / settings.executors_max + scale_up
    back = [t for t, n in seen.replicas if last_done and t >= last_done and n <= settings.executors_min]
    if back and completed_at:
        seen.scale_down_s = back[0] - max(completed_at)


def _platform_env(root: Path, database: str, redis_url: str, settings: ScaleRun) -> dict[str, str]:
    """The environment of every node of the cluster (what a pod's env is in Kubernetes)."""
    (root / "no-mcp.json").write_text('{"mcpServers": {}}')
    return {"DATABASE_URL": database, "REDIS_URL": redis_url, "FIXFLEET_HOME": str(root / "home"),
            "FIXFLEET_LOCAL_REPO_ROOTS": json.dumps([str(root)]), "FIXFLEET_REPO_ALLOWLIST": json.dumps([f"file://{root}/*"]),
            "FIXFLEET_MCP_CONFIG": str(root / "no-mcp.json"), "ANTHROPIC_API_KEY": "bench-scale-model-key",
            "FIXFLEET_SCALE_DOWN_AFTER_S": str(settings.scale_down_after_s), "FIXFLEET_MAX_ATTEMPTS": "2",
            "FIXFLEET_TASKS_PER_EXECUTOR": "2"}
