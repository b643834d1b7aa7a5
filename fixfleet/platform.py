"""Start and stop the whole platform: the one Serve application (serve_app/deployment.py).

Used by `fixfleet up` and `fixfleet demo`; `serve run cluster/serve_config.yaml` deploys the same
application. Locally this starts a one-node Ray cluster (with its dashboard) that advertises the
agent slots the pools may take (Ray picks free ports; Redis keeps 6379); with `address` it joins
an existing cluster. Postgres and Redis come from the environment or the embedded default,
resolved once here and handed to every process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from redis.asyncio import Redis

from fixfleet.config import Settings
from fixfleet.embedded import EmbeddedServers
from fixfleet.overview import Heartbeat, heartbeats
from fixfleet.processes import ProcessRef
from fixfleet.services import resolve_urls
from fixfleet.workspace.limits import SandboxLimits
from fixfleet.workspace.sandbox import Sandbox, SandboxUnavailable

SANDBOX_OFF_WARNING = ("FIXFLEET_SANDBOX=off: agents and repository code run WITHOUT the sandbox, with this "
                       "user's rights and files; only for trusted local experiments")

APP_NAME = "fixfleet"


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


def ray_log_rotation(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """Ray's own logs and every worker's stdout/stderr (the platform's JSON lines) rotate at
    FIXFLEET_LOG_MAX_BYTES, FIXFLEET_LOG_BACKUPS kept (measured with Ray 2.60: a worker that wrote
    600 kB to stderr with a 100 kB limit left 100 + 100 + 6 kB); an operator's own values win.
    The files of workers that are gone are the sweeper's (fixfleet/workspace/sweeper.py)."""
    wanted = {"RAY_ROTATION_MAX_BYTES": str(settings.log_max_bytes), "RAY_ROTATION_BACKUP_COUNT": str(settings.log_backups)}
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
        env = ray_log_rotation(self.settings, os.environ) | env
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
        serve.start(http_options={"host": self.options.http_host, "port": self.options.http_port})
        from serve_app.deployment import build_app

        serve.run(build_app(self._app_args()), name=APP_NAME, route_prefix="/", blocking=False)
        self._wait_running()
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

    def _app_args(self) -> dict[str, Any]:
        return {"executors_max": self.options.executors,
                "executors_min": min(self.settings.executors_min, self.options.executors),
                "tasks_per_executor": self.settings.tasks_per_executor,
                "planner_overrides": self.options.planner_overrides,
                "executor_overrides": self.options.executor_overrides}

    def _wait_running(self, timeout_s: float = 180) -> None:
        """Until Serve says the application runs (every replica constructed: its agent started)."""
        from ray.serve.schema import ApplicationStatus

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            app = serve.status().applications.get(APP_NAME)
            if app is not None and app.status == ApplicationStatus.RUNNING:
                return
            if app is not None and app.status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
                raise RuntimeError(f"the application did not start: {app.message}")
            time.sleep(0.5)
        raise RuntimeError(f"the application did not start within {timeout_s:.0f}s")

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
