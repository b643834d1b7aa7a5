"""The notebook's charts of a backlog run (matplotlib, from the notebook extra): tasks finished
over time, the executor pool beside its queue, cost per task, success rate by repository, and
time per stage. Each function takes the run's tables and returns its figure."""

from __future__ import annotations

from typing import Any

STAGE_COLUMNS = ["queued_s", "planning_s", "waiting_for_approval_s", "executing_s"]


def _figure(title: str, width: float = 8, height: float = 3.5) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height))
    axes.set_title(title)
    return figure, axes


def finished_over_time(results: Any) -> Any:
    """Tasks ended, cumulative, against the minutes since the first task was created."""
    import pandas

    ended = pandas.to_datetime(results["ended_at"], utc=True).dropna().sort_values()
    figure, axes = _figure("Tasks finished over time")
    if len(ended):
        minutes = (ended - pandas.to_datetime(results["created_at"], utc=True).min()).dt.total_seconds() / 60
        axes.step(minutes, range(1, len(ended) + 1), where="post")
    axes.set_xlabel("minutes since the first task")
    axes.set_ylabel("tasks ended")
    return figure


def pool_and_queue(pool: Any) -> Any:
    """Live executors beside the execution queue's depth: the pool following the backlog."""
    figure, axes = _figure("Executor pool and its queue")
    if len(pool):
        minutes = (pool["at"] - pool["at"].min()).dt.total_seconds() / 60
        axes.step(minutes, pool["executors"], where="post", label="executors")
        axes.step(minutes, pool["busy_executors"], where="post", label="busy executors", linestyle=":")
        axes.plot(minutes, pool["execution_queue"], label="execution queue", alpha=0.7)
        axes.legend()
    axes.set_xlabel("minutes")
    return figure


def cost_per_task(results: Any) -> Any:
    figure, axes = _figure("Cost per task (USD)")
    axes.bar(results["task"], results["cost_usd"])
    axes.tick_params(axis="x", rotation=45)
    return figure


def success_by_repository(results: Any) -> Any:
    rate = (results.assign(ok=results["status"] == "COMPLETED")
            .groupby(results["repository"].str.rsplit("/", n=1).str[-1])["ok"].mean() * 100)
    figure, axes = _figure("Success rate by repository (%)")
    axes.bar(rate.index, rate.values)
    axes.set_ylim(0, 100)
    return figure


def time_per_stage(results: Any) -> Any:
    figure, axes = _figure("Time per stage (s)", height=max(2.5, 0.4 * len(results) + 1))
    results.set_index("task")[STAGE_COLUMNS].plot.barh(stacked=True, ax=axes)
    axes.set_xlabel("seconds")
    return figure
