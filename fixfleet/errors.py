"""How a job can end other than by success, as the worker loop needs to tell them apart.

- `PermanentError`: trying again cannot help (no model credential, the repository does not
  exist, the plan is invalid, the repository cannot be set up): the task fails at once with
  the reason, instead of being retried like a transient failure.
- `Interrupted`: a person stopped the task (cancel, pause) or another agent took it over while
  this agent worked on it; the agent stops without a word and the job is finished, not retried.
"""

from __future__ import annotations


class PermanentError(Exception):
    """A failure that the same attempt would meet again; the message is the reason shown."""


class Interrupted(Exception):
    """The task was cancelled, paused or taken over while an agent worked on it."""

    def __init__(self, task_id: int, status: str, detail: str = "") -> None:
        self.task_id, self.status = task_id, status
        super().__init__(detail or f"task {task_id} is now {status}")
