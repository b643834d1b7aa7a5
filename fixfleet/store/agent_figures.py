"""The agents' work as the audit trail tells it, in the seed's terms (`agent` planning|executor,
`status` success|failed): steps begun, steps ended and how long they took, failures by kind.
Read by one query over `task_events`, so every ingress replica serves the same figures; counted
over the tasks the store keeps (retention deletes a closed task with its events).

A step begins with a transition into PLANNING or EXECUTING from another state (a takeover,
the same state again, continues the step). It ends in success on AWAITING_APPROVAL (planning)
or COMPLETED (executor), in failure on FAILED; a pause or a cancellation ends it unscored.
Errors are the failed attempts: the retried ones (their "attempt N failed; retry in" row) and
the last one (the FAILED transition), each of a kind read from its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

AGENTS = ("planning", "executor")
STATUSES = ("success", "failed")
# The kinds of failure, first match wins (on the error's type and the reason, case-insensitive).
ERROR_KINDS = (("timeout", "timeout|timed out"), ("session", "session"),
               ("setup", "setup|setting up|environment"),
               ("verification", "verif|evidence|red check|green check|change refused|breaks tests"))
ERROR_TYPES = (*(kind for kind, _ in ERROR_KINDS), "other")
# Seconds: the step-duration histogram's buckets (the agents' own Ray histogram, actors/metrics.py, too).
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

_KIND = "CASE " + " ".join(f"WHEN detail ~* '{pattern}' THEN '{kind}'" for kind, pattern in ERROR_KINDS) + " ELSE 'other' END"
_BUCKETS = ", ".join(f"count(*) FILTER (WHERE seconds <= {b}) AS b{i}" for i, b in enumerate(DURATION_BUCKETS))
_FIGURES = f"""
WITH moves AS (  -- state changes only, with when the task entered the state it leaves
    SELECT from_status, to_status, reason, data, created_at,
           lag(created_at) OVER (PARTITION BY task_id ORDER BY id) AS entered_at
    FROM task_events WHERE to_status IS NOT NULL AND from_status IS DISTINCT FROM to_status
), rows AS (
    SELECT 'started' AS kind, CASE to_status WHEN 'PLANNING' THEN 'planning' ELSE 'executor' END AS agent,
           NULL::text AS status, NULL::float8 AS seconds, NULL::text AS detail
    FROM moves WHERE to_status IN ('PLANNING', 'EXECUTING')
    UNION ALL
    SELECT 'ended', CASE from_status WHEN 'PLANNING' THEN 'planning' ELSE 'executor' END,
           CASE to_status WHEN 'FAILED' THEN 'failed' ELSE 'success' END,
           greatest(0, extract(epoch FROM created_at - entered_at))::float8,
           CASE to_status WHEN 'FAILED' THEN coalesce(data->>'error_type', '') || ' ' || reason END
    FROM moves WHERE (from_status = 'PLANNING' AND to_status IN ('AWAITING_APPROVAL', 'FAILED'))
                  OR (from_status = 'EXECUTING' AND to_status IN ('COMPLETED', 'FAILED'))
    UNION ALL
    SELECT 'retried', CASE from_status WHEN 'PLANNING' THEN 'planning' ELSE 'executor' END, 'failed', NULL,
           coalesce(data->>'error', '') || ' ' || reason
    FROM task_events WHERE to_status IS NULL AND from_status IN ('PLANNING', 'EXECUTING')
                       AND reason LIKE 'attempt % failed; retry in %'
)
SELECT kind, agent, status, CASE WHEN detail IS NULL THEN NULL ELSE {_KIND} END AS error_type,
       count(*) AS n, coalesce(sum(seconds), 0) AS total, {_BUCKETS}
FROM rows GROUP BY 1, 2, 3, 4
"""


@dataclass
class Durations:
    """One (agent, status)'s step durations: count, sum and cumulative bucket counts."""

    count: int = 0
    seconds_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))


@dataclass
class AgentFigures:
    started: dict[str, int]  # agent -> steps begun
    completed: dict[tuple[str, str], int]  # (agent, status) -> steps ended so
    durations: dict[tuple[str, str], Durations]
    errors: dict[tuple[str, str], int]  # (agent, error_type) -> failed attempts


class AgentRecords:
    pool: asyncpg.Pool

    async def agent_figures(self) -> AgentFigures:
        """Steps begun and ended, their durations and the failed attempts by kind, from the audit trail;
        every label value the seed documents is present (zero when nothing happened)."""
        figures = AgentFigures(started=dict.fromkeys(AGENTS, 0),
                               completed={(a, s): 0 for a in AGENTS for s in STATUSES},
                               durations={(a, s): Durations() for a in AGENTS for s in STATUSES},
                               errors={(a, e): 0 for a in AGENTS for e in ERROR_TYPES})
        for row in await self.pool.fetch(_FIGURES):
            agent, status, n = row["agent"], row["status"], row["n"]
            if row["kind"] == "started":
                figures.started[agent] += n
                continue
            if row["error_type"] is not None:
                figures.errors[(agent, row["error_type"])] += n
            if row["kind"] == "ended":
                figures.completed[(agent, status)] += n
                durations = figures.durations[(agent, status)]
                durations.count += n
                durations.seconds_sum += float(row["total"])
                durations.buckets = [b + row[f"b{i}"] for i, b in enumerate(durations.buckets)]
        return figures
