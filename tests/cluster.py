"""A local autoscaling Ray cluster for the scale test and `bench.scale`.

`ray.cluster_utils.AutoscalingCluster` starts a head with the fake multi-node provider: the
Ray autoscaler adds and removes real raylet processes on this machine as worker "nodes". Three
things differ here: the pip wheel lacks the provider's `example.yaml`, so the base config is
written below; the head listens on a free port (Ray's default, 6379, is Redis's); and the
cluster is started and stopped by itself, not with `ray stop --force`, which would stop every
Ray process on the machine. Its processes are found from its own temp dir and reaped.

Worker node types: one offering executor slots (no CPU: nothing else is placed there, so a node
without an executor is idle and removed), one offering the planning slot. The head offers none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil

from fixfleet.ports import free_port

BASE_CONFIG: dict[str, Any] = {  # python/ray/autoscaler/_private/fake_multi_node/example.yaml, without node types
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "docker": {},
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [],
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [],
}


AUTH = {"RAY_AUTH_MODE": "token"}  # Ray's token authentication, explicitly: the head and its drivers agree




def agent_node_types(*, executor_nodes: int, slots_per_node: int, planner_nodes: int = 1) -> dict[str, Any]:
    return {
        "executor_node": {"resources": {"CPU": 0, "executor_slot": slots_per_node}, "node_config": {},
                          "min_workers": 0, "max_workers": executor_nodes},
        "planner_node": {"resources": {"CPU": 0, "planning_slot": 1}, "node_config": {},
                         "min_workers": 0, "max_workers": planner_nodes},
    }


class LocalAutoscalingCluster:
    """`with LocalAutoscalingCluster(...) as cluster:` then `ray.init(cluster.address)`."""

    def __init__(self, worker_node_types: dict[str, Any], *, head_cpus: float = 2, env: dict[str, str] | None = None,
                 idle_timeout_minutes: float = 0.1) -> None:
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = env or {}
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ff-cluster-"))
        from ray._private.services import get_node_ip_address

        self.address = f"{get_node_ip_address()}:{self.port}"  # where the fake worker nodes find the head
        self.head_cpus = head_cpus
        self.config = {
            **BASE_CONFIG,
            "provider": {**BASE_CONFIG["provider"], "gcs_address": self.address},
            "idle_timeout_minutes": idle_timeout_minutes,
            "max_workers": sum(t["max_workers"] for t in worker_node_types.values()),
            "available_node_types": {**worker_node_types, "ray.head.default": {
                "resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}},
        }

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        config = self.temp_dir / "autoscaling.json"
        config.write_text(json.dumps(self.config))
        env = os.environ | self.env | {"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", **AUTH}
        subprocess.run(
            ["ray", "start", "--head", f"--autoscaling-config={config}", f"--port={self.port}",
             f"--num-cpus={self.head_cpus}", f"--temp-dir={self.temp_dir / 'ray'}",
             "--include-dashboard=true", f"--dashboard-port={self.dashboard_port}",
             f"--ray-client-server-port={free_port()}", "--disable-usage-stats"],
            env=env, check=True, capture_output=True, text=True)

    def shutdown(self) -> None:
        """Stop every process of this cluster (head, fake worker nodes, their workers) and only those."""
        pids = self._pids()
        for pid in pids:
            with suppress(psutil.NoSuchProcess):
                psutil.Process(pid).terminate()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        for pid in pids:
            with suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _pids(self) -> set[int]:
        """Processes whose command line names this cluster's temp dir or port, and their descendants."""
        marks = (str(self.temp_dir), f":{self.port}")
        roots = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(process.info.get("cmdline") or [])
            if any(mark in cmdline for mark in marks) and process.pid != os.getpid():
                roots.append(process)
        pids = {p.pid for p in roots}
        for process in roots:
            with suppress(psutil.NoSuchProcess):
                pids |= {child.pid for child in process.children(recursive=True)}
        return pids

    def connect(self) -> None:
        """Make this process a driver of the cluster: the head requires Ray's token (~/.ray/auth_token).
        Ray reads the mode once per process; re-read it, as ray.init does when it enables the token."""
        from ray._raylet import Config

        os.environ.update(AUTH)
        Config.initialize("")

    def __enter__(self) -> LocalAutoscalingCluster:
        self.start()
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
