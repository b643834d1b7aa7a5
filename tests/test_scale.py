"""The executor pool follows its queue on a real autoscaling Ray cluster (tests/cluster.py).

A head with no agent slots; worker node types offering one executor slot (0 to 4 nodes) and the
planning slot. The whole application (cluster/serve_config.yaml) is deployed; 8 tasks of the
demo scenario are submitted, planned by the planner pool and approved together. Executor
replicas and nodes are added, never past the maximum; every task completes exactly once (one
set of commits on its branch); then the replicas retire and the nodes go. The cluster's own
processes are stopped at the end (not `ray stop --force`: other Ray nodes on the machine live on).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.grafana_dashboard import FAILURE_ONLY, dashboard_metric_names
from tests.scaling import ScaleRun, run

pytestmark = pytest.mark.cluster
TASKS, MINIMUM, MAXIMUM = 8, 1, 4


def test_executor_pool_and_nodes_follow_the_queue(tmp_path: Path, postgres_server_url: str,
                                                  redis_server_url: str) -> None:
    lines: list[str] = []
    settings = ScaleRun(tasks=TASKS, executors_min=MINIMUM, executors_max=MAXIMUM, slots_per_node=1,
                        scale_down_after_s=5, through_planner=True, timeout_s=600, progress=lines.append)
    seen = run(settings, tmp_path, postgres_server_url, redis_server_url)

    assert seen.statuses and set(seen.statuses.values()) == {"COMPLETED"}, (seen.statuses, lines)
    assert (seen.completed, seen.duplicated) == (TASKS, 0)
    assert MINIMUM < seen.max_replicas <= MAXIMUM, seen.replicas  # grew with the queue, never past the maximum
    assert seen.max_nodes > 1 and seen.max_nodes <= MAXIMUM, seen.nodes  # the autoscaler added nodes
    assert seen.first_scale_up_s is not None
    assert seen.scale_down_s is not None, lines  # back at the minimum after the queue emptied
    assert seen.replicas[-1][1] <= MINIMUM and seen.nodes[-1][1] <= MINIMUM, (seen.replicas[-5:], seen.nodes[-5:])
    # The State API listed the named replicas at the peak.
    executors = [a for a in seen.replica_actors if a["class_name"] == "ServeReplica:fixfleet:executor"]
    assert len(executors) == seen.max_replicas and all(a["state"] == "ALIVE" for a in executors), seen.replica_actors
    assert all(a["name"].startswith("SERVE_REPLICA::fixfleet#executor#") for a in executors)
    assert {a["class_name"] for a in seen.replica_actors} >= {
        "ServeReplica:fixfleet:ingress", "ServeReplica:fixfleet:planner", "ServeReplica:fixfleet:relay"}
    # Each task's branch holds one test and one fix commit over its plan: done once.
    remote = tmp_path / "statskit-remote.git"
    for key in seen.statuses:
        log = subprocess.run(["git", "-C", str(remote), "log", "--format=%s", f"fixfleet/{key}"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        assert [line.split(":")[0] for line in log[:3]] == ["fix", "test", "docs"], (key, log)
    # The Grafana dashboard queries only what this platform really exported (but for the series
    # that only a failure creates).
    unseen = dashboard_metric_names() - FAILURE_ONLY - seen.metric_names
    assert not unseen, (sorted(unseen), sorted(seen.metric_names))
