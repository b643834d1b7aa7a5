"""Start and stop the whole platform on Ray: the Serve ingress, the planner and the executors.

Used by `fixfleet up` and `fixfleet demo`. Locally it starts a one-node Ray cluster that
advertises both agent slots (Ray picks free ports; Redis keeps 6379); with `address` it
joins an existing cluster. Postgres and Redis come from the environment or the embedded
default, resolved once here and handed to every process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from fixfleet.config import Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.services import resolve_urls
from fixfleet.workspace.sandbox import Sandbox, SandboxUnavailable

SANDBOX_OFF_WARNING = ("FIXFLEET_SANDBOX=off: agents and repository code run WITHOUT the sandbox, with this "
                       "user's rights and files; only for trusted local experiments")

APP_NAME = "fixfleet"


@dataclass
class PlatformOptions:
    address: str | None = None  # join this Ray cluster; None: start a local one
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    executors: int = 1
    env: dict[str, str] = field(default_factory=dict)  # for every process (Serve replicas, agents)
    planner_overrides: dict[str, Any] = field(default_factory=dict)  # Settings fields for the planner only
    executor_overrides: dict[str, Any] = field(default_factory=dict)


class Platform:
    def __init__(self, settings: Settings, options: PlatformOptions) -> None:
        self.settings, self.options = settings, options
        self.embedded = EmbeddedServers(settings.home)
        self.agents: dict[str, Any] = {}
        self.url = f"http://{options.http_host}:{options.http_port}"
        self.ray_temp_dir: Path | None = None

    def start(self, progress=print) -> None:  # noqa: ANN001 - any callable taking a line
        if self.options.address is None:  # agents run here: refuse to start them where they cannot be contained
            self.check_machine(progress)
        database_url, redis_url = resolve_urls(self.settings, self.embedded)
        env = self.options.env | {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                                  "FIXFLEET_HOME": str(self.settings.home)}
        # Local Ray workers inherit the driver's environment: secrets reach them that way, never
        # through runtime_env, whose env_vars Ray writes in clear into its world-readable logs. A
        # cluster's nodes take theirs from the cluster (a Kubernetes Secret), not from this process.
        os.environ.update(env)
        progress("starting Ray")
        local = self.options.address is None
        # Ray makes its temp dir world-writable; inside a 0700 parent nobody else reaches its logs.
        self.ray_temp_dir = Path(tempfile.mkdtemp(prefix="ff-ray-")) if local else None
        ray.init(
            address=self.options.address or "local",  # "local": never attach to a cluster `ray start` left running
            namespace=APP_NAME,
            resources={"planning_slot": 1, "executor_slot": self.options.executors} if local else None,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
            _temp_dir=str(self.ray_temp_dir / "ray") if self.ray_temp_dir else None,
        )
        progress("deploying the Serve ingress")
        serve.start(http_options={"host": self.options.http_host, "port": self.options.http_port})
        from serve_app.deployment import build_app

        serve.run(build_app({}), name=APP_NAME, route_prefix="/", blocking=False)
        self._wait_healthy()
        progress("starting the agents (agents ask for no CPU: they wait on the model and git, and their slots gate them)")
        self._start_agents()

    def check_machine(self, progress) -> None:  # noqa: ANN001 - any callable taking a line
        """What the agents need on this machine: the sandbox (bubblewrap, socat) and uv."""
        if not self.settings.sandbox_enabled:
            progress(f"WARNING: {SANDBOX_OFF_WARNING}")
            return
        asyncio.run(Sandbox(self.settings.home / "sandbox").check())
        if not (shutil.which("uv") or (Path(sys.executable).parent / "uv").exists()):
            raise SandboxUnavailable("uv is not installed (pip install uv): it builds each repository's environment")
        progress("sandbox ready (bubblewrap): agents and repository code run isolated")

    def _start_agents(self) -> None:
        from actors.executor import ExecutorAgent
        from actors.planner import PlanningAgent

        planner = PlanningAgent.options(name="planner", num_cpus=0, resources={"planning_slot": 1}).remote(
            "planner", self.options.planner_overrides
        )
        self.agents["planner"] = planner
        for n in range(1, self.options.executors + 1):
            name = f"executor-{n}"
            self.agents[name] = ExecutorAgent.options(name=name, num_cpus=0, resources={"executor_slot": 1}).remote(
                name, self.options.executor_overrides
            )
        ray.get([agent.start.remote() for agent in self.agents.values()], timeout=120)

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

    def agent_status(self) -> list[dict[str, Any]]:
        refs = {name: agent.status.remote() for name, agent in self.agents.items()}
        statuses = []
        for name, ref in refs.items():
            try:
                statuses.append(ray.get(ref, timeout=5))
            except Exception as exc:  # a restarting actor: show it, don't crash the status line
                statuses.append({"name": name, "error": type(exc).__name__})
        return statuses

    def stop(self) -> None:
        for agent in self.agents.values():
            try:
                ray.get(agent.stop.remote(), timeout=20)
            except Exception:  # noqa: S110 - stopping: an agent already gone is fine
                pass
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        self.embedded.stop()
        if self.ray_temp_dir is not None:
            shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
