"""The durable store: Postgres is the truth (tasks, their audit trail, deliveries, the outbox,
the records of Claude sessions)."""

from fixfleet.store.agent_figures import AgentFigures
from fixfleet.store.creation import Outcome
from fixfleet.store.errors import (
           IllegalTransition,
           Refusal,
           StaleVersion,
           StoreError,
           TaskNotFound,
)
from fixfleet.store.outcomes import MERGE_BUCKETS, OutcomeFigures
from fixfleet.store.reads import TaskFilter
from fixfleet.store.records import Delivery, OutboxItem, TaskState, parse_ref
from fixfleet.store.sessions import SessionNotFound
from fixfleet.store.tasks import OUTBOX_CHANNEL, Hold, Store

__all__ = [
           "AgentFigures",
           "MERGE_BUCKETS",
           "OUTBOX_CHANNEL",
           "Delivery",
           "Hold",
           "IllegalTransition",
           "OutboxItem",
           "Outcome",
           "OutcomeFigures",
           "Refusal",
           "SessionNotFound",
           "StaleVersion",
           "Store",
           "StoreError",
           "TaskFilter",
           "TaskNotFound",
           "TaskState",
           "parse_ref",
]
