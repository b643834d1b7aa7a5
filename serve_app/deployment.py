"""The Ray Serve application graph of the whole platform, and nothing else: `build_app()`.

Serve imports it by its path, `serve_app.deployment:build_app`: `serve run cluster/serve_config.yaml`,
a RayService, and the launcher (fixfleet/platform.py: `fixfleet up`, `fixfleet demo`, tests) all
deploy it that way. The app's settings come from the replica's environment (`Settings()` reads
it): in a cluster the pod's env (a Kubernetes Secret and a ConfigMap); the Serve config sets no
env_vars, which would override the pod's.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

from fixfleet import logs
from fixfleet.config import Settings, load_settings
from serve_app import replica_http
from serve_app.agents import (
    DRAIN_MARGIN_S,
    ExecutorReplica,
    PlannerReplica,
    RelayReplica,
)
from serve_app.app import create_app
from serve_app.autoscaling import QueueDepthPolicy

DEPLOYMENT_NAME = "ingress"


def ingress_app() -> FastAPI:
    """The ingress replicas' FastAPI app, built on each replica: it relays what it commits; the
    Relay deployment runs the platform's once-only jobs and relays the other processes' commits.
    The replica's HTTP server hands it webhooks directly (serve_app/replica_http.py)."""
    logs.configure("ingress")
    app = create_app(singletons=False)
    replica_http.serve_webhooks_with(app)
    return app


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
