"""Batch backlogs: turn a CSV export, a JQL search or a Sentry project's unresolved issues into
fixfleet tasks, preview them, submit them through a running fixfleet's task API within a cap and
a budget, and follow them to a table of results.
"""

from fixfleet.backlog.api import ApiError, RemoteEvent, RemoteTask, TaskApi
from fixfleet.backlog.exports import BacklogFormatError, parse_csv, read_csv
from fixfleet.backlog.items import BacklogItem, repository_for, with_repositories
from fixfleet.backlog.preview import Action, Entry, Plan, preview
from fixfleet.backlog.sources import SourceNotConfigured, load_jira, load_sentry

__all__ = ["Action", "ApiError", "BacklogFormatError", "BacklogItem", "Entry", "Plan", "RemoteEvent", "RemoteTask",
           "SourceNotConfigured", "TaskApi", "load_jira", "load_sentry", "parse_csv", "preview", "read_csv",
           "repository_for", "with_repositories"]
