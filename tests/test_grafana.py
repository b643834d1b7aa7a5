"""cluster/grafana/fixfleet.json: a dashboard Grafana imports, whose every query names a metric
that exists. The names a running platform really exports are compared in tests/test_scale.py
(an autoscaling run exports all but the failure-only ones); here, each name is traced to the
code that defines it (ours or Ray Serve's)."""

from __future__ import annotations

import re
from pathlib import Path

import ray

from tests.grafana_dashboard import (
    FAILURE_ONLY,
    dashboard,
    dashboard_metric_names,
    panels,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_dashboard_is_importable_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    found = list(panels(board["panels"]))
    ids = [p["id"] for p in found]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in found:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_it_shows_what_a_user_watches() -> None:
    names = dashboard_metric_names()
    for wanted in ("fixfleet_tasks", "ray_ai_agent_tasks_completed_total", "ray_ai_agent_task_duration_seconds_bucket",
                   "fixfleet_queue_depth", "ray_ai_agent_pool_target_replicas", "ray_ai_agent_scale_decisions_total",
                   "ray_ai_agent_cost_usd_total", "ray_ai_agent_tokens_total", "fixfleet_webhooks_total",
                   "ray_ai_agent_errors_total", "ray_serve_deployment_replica_healthy",
                   # the seed's names, as the ingress serves them (agent planning|executor)
                   "ai_agent_tasks_started_total", "ai_agent_tasks_completed_total",
                   "ai_agent_task_duration_seconds_bucket", "ai_agent_errors_total", "ai_agent_queue_length",
                   "ai_agent_outcomes_total"):
        assert wanted in names, wanted


def defined_names() -> str:
    """The source text where metrics are defined: ours, and Ray Serve's."""
    ours = [ROOT / "fixfleet" / "metrics.py", ROOT / "actors" / "metrics.py", ROOT / "serve_app" / "autoscaling.py"]
    serve = Path(ray.__file__).parent / "serve" / "_private"
    text = "\n".join(path.read_text() for path in [*ours, *serve.glob("*.py")])
    return text.replace("{protocol_name}", "http")  # f"serve_num_{protocol_name}_requests", per protocol


def test_every_queried_metric_is_defined_by_the_platform_or_ray_serve() -> None:
    source = defined_names()
    missing = []
    for name in sorted(dashboard_metric_names()):
        base = re.sub(r"_(bucket|sum|count)$", "", name.removeprefix("ray_"))
        candidates = {base, base.removesuffix("_total")}
        if not any(re.search(rf"[\"']{re.escape(c)}[\"']", source) for c in candidates):
            missing.append(name)
    assert missing == []
    assert FAILURE_ONLY <= dashboard_metric_names()
