"""Prometheus metrics of the ingress: counters as things happen, gauges read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fixfleet.queue import Queue
from fixfleet.store import Store


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "fixfleet_webhooks", "Webhook deliveries by source and outcome", ["source", "outcome"], registry=self.registry
        )
        self.api_calls = Counter("fixfleet_api_requests", "Task API calls by operation", ["operation"], registry=self.registry)
        self.queue_depth = Gauge(
            "fixfleet_queue_depth", "Queue entries by queue and state", ["queue", "state"], registry=self.registry
        )
        self.tasks = Gauge("fixfleet_tasks", "Tasks by status", ["status"], registry=self.registry)
        self.credential_seconds_left = Gauge(
            "fixfleet_model_credential_seconds_left", "Seconds until the model credential expires", registry=self.registry
        )

    async def render(self, store: Store, queues: dict[str, Queue]) -> bytes:
        for name, queue in queues.items():
            depth = await queue.depth()
            for state in ("waiting", "pending", "delayed", "dead"):
                self.queue_depth.labels(name, state).set(getattr(depth, state))
        for row in await store.pool.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status"):
            self.tasks.labels(row["status"]).set(row["n"])
        return generate_latest(self.registry)
