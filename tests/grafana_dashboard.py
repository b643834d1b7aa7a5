"""cluster/grafana/fixfleet.json and the metric names its queries use: read by tests/test_grafana.py
(each name is defined somewhere) and the scale run (each name is really exported)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent.parent / "cluster" / "grafana" / "fixfleet.json"
METRIC = re.compile(r"\b((?:fixfleet|ray|ai_agent)_[a-zA-Z0-9_:]+)")  # ai_agent_*: the ingress's own
# Recorded only when something goes wrong (or with a credential that expires): a healthy run
# exports no series for them, so the live comparison cannot see them.
FAILURE_ONLY = {
    "ray_ai_agent_errors_total",
    "fixfleet_model_credential_seconds_left",
    "ray_serve_health_check_failures_total",
    "ray_serve_deployment_error_counter_total",
}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_metric_names() -> set[str]:
    exprs = [t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]
    return {name for expr in exprs for name in METRIC.findall(expr)}
