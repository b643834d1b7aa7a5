"""The executor pool follows the queue: `python -m bench.scale [--tasks 64] [--min 2] [--max 8]`.

On a local autoscaling Ray cluster (tests/cluster.py: a head with no agent slots, worker node
types offering executor slots and the planning slot, added and removed by the Ray autoscaler)
this deploys cluster/serve_config.yaml, the whole application, and puts N approved tasks of the
demo scenario (statskit's ZeroDivisionError: the real claude CLI against the scripted model,
the real sandbox, the platform's own RED/GREEN/suite proof, a push) on the execution queue at
once. The executor pool grows from its minimum with the queue, the Ray autoscaler adds nodes
for the replicas, and after the queue has been empty for `--scale-down-after` seconds both
shrink back.

Printed: the makespan (first enqueue to last completion), the ideal makespan (the tasks' total
execution time / max executors + the measured scale-up time), their ratio, the time from the
first enqueue to the first added executor, the time from the last completion to the pool back at
its minimum, and lost (not completed) and duplicated (completed more than once) tasks. The last
line is one JSON object: {"makespan_s", "ideal_s", "ratio", "first_scale_up_s", "scale_down_s",
"lost", "duplicated"}. Goal: ratio <= 1.2, nothing lost or duplicated.

The experiment itself is tests/scaling.py: tests/test_scale.py runs it with fewer tasks, through the planner.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from tests.scaling import REDIS_DB, ScaleRun, run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--min", dest="executors_min", type=int, default=2)
    parser.add_argument("--max", dest="executors_max", type=int, default=8)
    parser.add_argument("--slots-per-node", type=int, default=2)
    parser.add_argument("--scale-down-after", type=float, default=10.0,
                        help="seconds of empty queue before the pool shrinks (the platform's default is 300)")
    args = parser.parse_args()
    postgres = os.environ.get("DATABASE_URL")
    redis = os.environ.get("REDIS_URL")
    if not postgres or not redis:
        sys.exit("bench.scale needs DATABASE_URL and REDIS_URL (a server: it makes a throwaway database and uses "
                 f"Redis db {REDIS_DB})")
    settings = ScaleRun(tasks=args.tasks, executors_min=args.executors_min, executors_max=args.executors_max,
                        slots_per_node=args.slots_per_node, scale_down_after_s=args.scale_down_after,
                        progress=lambda line: print(f"[{datetime.now():%H:%M:%S}] {line}", file=sys.stderr))
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        seen = run(settings, root, postgres, redis)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = seen.summary(settings)
    print(f"tasks {settings.tasks} · executors {settings.executors_min}-{settings.executors_max} "
          f"({settings.slots_per_node} per node) · peak {seen.max_replicas} replicas on {seen.max_nodes} nodes")
    print(f"makespan {summary['makespan_s']}s · ideal {summary['ideal_s']}s "
          f"(work {seen.work_s:.0f}s / {settings.executors_max} + scale-up {summary['first_scale_up_s']}s) · "
          f"ratio {summary['ratio']} · scale-down {summary['scale_down_s']}s after the last completion · "
          f"lost {summary['lost']} · duplicated {summary['duplicated']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
