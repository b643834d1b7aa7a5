"""The agents' metrics, through `ray.util.metrics`: Ray exports them from every worker process on
its nodes' metrics endpoints (with the Ray dashboard's Prometheus and Grafana), which a worker's own
prometheus_client registry never reaches. Ray prefixes the exported names with `ray_`.

Labels stay few on purpose: `agent` is the role (planner, executor), not the replica's name,
which changes with every replica Serve starts. Outside Ray (unit tests) the calls do nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from fixfleet.store.agent_figures import DURATION_BUCKETS

log = logging.getLogger(__name__)
DURATION_BOUNDARIES = list(DURATION_BUCKETS)  # the ingress's ai_agent_task_duration_seconds uses the same


class AgentMetrics:
    def __init__(self, role: str) -> None:
        self.tags = {"agent": role}
        self._metrics: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any] | None:
        if self._metrics is None:
            try:
                import ray
                from ray.util.metrics import Counter, Histogram

                if not ray.is_initialized():
                    return None
                self._metrics = {
                    "started": Counter("ai_agent_tasks_started_total", "Tasks an agent began", tag_keys=("agent",)),
                    "completed": Counter("ai_agent_tasks_completed_total", "Tasks an agent finished, by outcome",
                                         tag_keys=("agent", "status")),
                    "duration": Histogram("ai_agent_task_duration_seconds", "Time an agent spent on a task",
                                          boundaries=DURATION_BOUNDARIES, tag_keys=("agent", "status")),
                    "errors": Counter("ai_agent_errors_total", "Failures in an agent's work, by exception",
                                      tag_keys=("agent", "error_type")),
                    "cost": Counter("ai_agent_cost_usd_total", "Model cost of the agents' sessions", tag_keys=("agent",)),
                    "tokens": Counter("ai_agent_tokens_total", "Model tokens of the agents' sessions",
                                      tag_keys=("agent", "kind")),
                }
            except Exception:  # noqa: BLE001 - metrics must never stop an agent
                log.debug("agent metrics unavailable", exc_info=True)
                return None
        return self._metrics

    def started(self) -> None:
        if metrics := self._get():
            metrics["started"].inc(tags=self.tags)

    def finished(self, status: str, seconds: float, error: BaseException | None = None) -> None:
        if metrics := self._get():
            tags = {**self.tags, "status": status}
            metrics["completed"].inc(tags=tags)
            metrics["duration"].observe(seconds, tags=tags)
            if error is not None:
                metrics["errors"].inc(tags={**self.tags, "error_type": type(error).__name__})

    def session(self, cost_usd: float, input_tokens: int, output_tokens: int) -> None:
        if metrics := self._get():
            if cost_usd > 0:
                metrics["cost"].inc(cost_usd, tags=self.tags)
            for kind, count in (("input", input_tokens), ("output", output_tokens)):
                if count > 0:
                    metrics["tokens"].inc(count, tags={**self.tags, "kind": kind})
