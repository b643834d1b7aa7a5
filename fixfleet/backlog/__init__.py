"""Batch backlogs: turn a CSV export, a JQL search or a Sentry project's unresolved issues into
fixfleet tasks, preview them, submit them through a running fixfleet's task API within a cap and
a budget, and follow them to a table of results.

In a notebook (Jupyter runs an event loop: `await` directly)::

    from fixfleet import backlog
    items = backlog.read_csv("issues.csv", repos={"backend": "https://github.com/acme/api.git"})
    api = backlog.TaskApi("http://fixfleet:8000", token)
    plan = await backlog.preview(items, api)       # skips duplicates, unmapped, resolved
    plan.table()                                   # a DataFrame when pandas is installed
    result = await backlog.submit(plan, api, budget_usd=50, max_in_flight=3, approve_above=0.9)
    print(result.message); result.table()

Without `await` (scripts, or a notebook that prefers it), `fixfleet.backlog.sync` has the same
functions. `fixfleet backlog FILE.csv` does it all from the shell.
"""

from fixfleet.backlog.api import ApiError, RemoteEvent, RemoteTask, TaskApi
from fixfleet.backlog.exports import BacklogFormatError, parse_csv, read_csv
from fixfleet.backlog.items import BacklogItem, repository_for, with_repositories
from fixfleet.backlog.preview import Action, Entry, Plan, preview
from fixfleet.backlog.results import TaskResult
from fixfleet.backlog.runner import Progress, RunEvent, RunOptions, RunResult, ScopeError, submit
from fixfleet.backlog.sources import SourceNotConfigured, load_jira, load_sentry

__all__ = ["Action", "ApiError", "BacklogFormatError", "BacklogItem", "Entry", "Plan", "Progress", "RemoteEvent",
           "RemoteTask", "RunEvent", "RunOptions", "RunResult", "ScopeError", "SourceNotConfigured", "TaskApi",
           "TaskResult", "load_jira", "load_sentry", "parse_csv", "preview", "read_csv", "repository_for", "submit",
           "with_repositories"]
