"""The durable store: Postgres is the truth (tasks, their audit trail, deliveries, the outbox)."""

from fixfleet.store.errors import IllegalTransition, StaleVersion, StoreError, TaskNotFound
from fixfleet.store.records import Delivery, OutboxItem, TaskState, parse_ref
from fixfleet.store.tasks import OUTBOX_CHANNEL, Store

__all__ = ["OUTBOX_CHANNEL", "Delivery", "IllegalTransition", "OutboxItem", "StaleVersion", "Store", "StoreError",
           "TaskNotFound", "TaskState", "parse_ref"]
